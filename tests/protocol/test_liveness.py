"""The heartbeat rules with a fake clock and a made-up transport reading."""

from __future__ import annotations

from missioncommander._connection import Connection
from missioncommander._events import Role
from missioncommander._liveness import Act, Liveness, Verdict


def idle(
    live: Liveness,
    proto: Connection,
    now: float,
    writes: int = 0,
    *,
    reading_paused: bool = False,
    out_bytes: int = 0,
    last_progress: float | None = None,
) -> Verdict:
    return live.check(
        proto,
        now,
        reading_paused=reading_paused,
        writes=writes,
        out_bytes=out_bytes,
        last_progress=now if last_progress is None else last_progress,
    )


def test_an_idle_link_pings_every_interval_and_a_silent_peer_times_out() -> None:
    proto = Connection(Role.CLIENT, now=0.0)
    live = Liveness(interval=5.0, timeout=15.0)
    first = live.start(proto, 0.0, writes=0)
    assert first == 5.0
    verdict = idle(live, proto, 5.0)
    assert verdict.act is Act.PING
    assert 5.0 < verdict.next_check <= 12.5
    idle(live, proto, verdict.next_check)  # checked when asked, as the drivers do
    silent = idle(live, proto, 15.0)
    assert silent.act is Act.SILENT
    assert "nothing received for 15 s" in silent.reason


def test_writes_since_the_last_check_make_the_link_busy_so_no_ping() -> None:
    proto = Connection(Role.CLIENT, now=0.0)
    live = Liveness(interval=5.0, timeout=15.0)
    live.start(proto, 0.0, writes=3)
    assert idle(live, proto, 5.0, writes=9).act is Act.NOTHING
    # Nothing more written by the next interval: idle again.
    assert idle(live, proto, 10.0, writes=9).act is Act.PING


def test_the_heartbeats_own_ping_is_not_traffic() -> None:
    proto = Connection(Role.CLIENT, now=0.0)
    live = Liveness(interval=5.0, timeout=60.0)
    live.start(proto, 0.0, writes=0)
    assert idle(live, proto, 5.0).act is Act.PING
    proto.last_sent = 5.0  # what writing the PING notes
    live.pinged(writes=1)
    proto.last_received = 9.0
    assert idle(live, proto, 10.0, writes=1).act is Act.PING


def test_silence_while_we_paused_reading_is_ours() -> None:
    proto = Connection(Role.SERVER, now=0.0)
    live = Liveness(interval=5.0, timeout=15.0)
    live.start(proto, 0.0, writes=0)
    assert idle(live, proto, 20.0, reading_paused=True).act is not Act.SILENT
    assert idle(live, proto, 34.0).act is not Act.SILENT
    assert idle(live, proto, 35.0).act is Act.SILENT


def test_a_peer_that_stops_reading_is_cut_off_once_over_the_limit_for_the_timeout() -> None:
    proto = Connection(Role.SERVER, now=0.0)
    live = Liveness(interval=5.0, timeout=15.0, max_pending_bytes=1000)
    live.start(proto, 0.0, writes=0)
    proto.last_received = 14.0  # it pings: alive
    assert idle(live, proto, 14.0, out_bytes=5000, last_progress=0.0).act is Act.PING
    proto.last_received = 16.0
    verdict = idle(live, proto, 16.0, writes=1, out_bytes=5000, last_progress=0.0)
    assert verdict.act is Act.NOT_READING
    assert "max_pending_bytes=1000" in verdict.reason
    # Under the limit, or progressing: left alone.
    assert idle(live, proto, 16.0, writes=1, out_bytes=900, last_progress=0.0).act is Act.NOTHING


def test_a_check_that_comes_late_reads_before_it_cuts_a_silent_peer() -> None:
    """This process stood still for 20 s (a pause, a frozen virtual
    machine): the peer's PINGs wait unread, and cutting it now would cut
    every connection at once.  The verdict waits half an interval, once."""
    proto = Connection(Role.SERVER, now=0.0)
    live = Liveness(interval=5.0, timeout=15.0)
    assert live.start(proto, 0.0, writes=0) == 5.0
    later = idle(live, proto, 25.0)  # due at 5
    assert later.act is Act.NOTHING and later.next_check == 27.5
    proto.last_received = 25.1  # read meanwhile: the peer was there all along
    assert idle(live, proto, 27.5).act is Act.PING


def test_a_late_check_puts_off_a_real_silence_only_once() -> None:
    proto = Connection(Role.SERVER, now=0.0)
    live = Liveness(interval=5.0, timeout=15.0)
    live.start(proto, 0.0, writes=0)
    assert idle(live, proto, 25.0).act is Act.NOTHING
    # Nothing came: gone.  Late again (a loop that is always behind): gone all the same.
    assert idle(live, proto, 40.0).act is Act.SILENT


def test_a_late_check_reads_before_it_cuts_a_peer_off_for_not_reading() -> None:
    proto = Connection(Role.SERVER, now=0.0)
    live = Liveness(interval=5.0, timeout=15.0, max_pending_bytes=1000)
    live.start(proto, 0.0, writes=0)
    proto.last_received = 24.0
    deferred = idle(live, proto, 25.0, out_bytes=5000, last_progress=0.0)
    assert deferred.act is Act.NOTHING
    assert idle(live, proto, deferred.next_check, out_bytes=5000, last_progress=0.0).act is Act.NOT_READING


def test_a_check_a_little_late_is_on_time() -> None:
    """Scheduling jitter (well under a tenth of the timeout) changes nothing."""
    proto = Connection(Role.SERVER, now=0.0)
    live = Liveness(interval=5.0, timeout=15.0)
    live.start(proto, 0.0, writes=0)
    assert idle(live, proto, 5.0).next_check == 10.0
    assert idle(live, proto, 10.0).next_check == 15.0
    assert idle(live, proto, 16.4).act is Act.SILENT
