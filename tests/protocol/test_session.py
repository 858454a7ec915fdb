"""The sending half of a session (one copy for Client and Server), with bytes and a fake clock."""

from __future__ import annotations

import threading

import pytest
from support.fake_driver import FakeDriver

from missioncommander._errors import RemoteProtocolError
from missioncommander._frames import FrameDecoder, parse_frame, with_id
from missioncommander._link import route_locked
from missioncommander._requests import of_its_session
from missioncommander._session import BATCH, BURST_GAP, SendSession


def written(chunks: list[bytes]) -> list[tuple[int, str]]:
    """The (seq, subject) of each MESSAGE frame in ``chunks``."""
    decoder = FrameDecoder()
    events = [parse_frame(t, b) for t, b in decoder.feed(b"".join(chunks))]
    return [(e.seq, e.subject) for e in events]  # type: ignore[union-attr]


def queue(session: SendSession, *subjects: str) -> None:
    for subject in subjects:
        assert session.out.offer(f'["{subject}",{{}}]'.encode())


def test_each_message_is_written_once_in_order() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a", "b")
    assert written(session.take_unsent()) == [(1, "a"), (2, "b")]
    assert session.take_unsent() == []
    queue(session, "c")
    assert session.unwritten == 1
    assert written(session.take_unsent()) == [(3, "c")]
    assert session.unwritten == 0


def test_an_ack_drops_what_it_names_and_never_moves_the_writing_back() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a", "b", "c")
    session.take_unsent()
    session.acked(2)
    assert len(session.out) == 1 and session.sent_seq == 3
    session.acked(1)  # an old ack, reordered by nothing but harmless
    assert len(session.out) == 1 and session.sent_seq == 3
    with pytest.raises(RemoteProtocolError, match="only 3 were sent"):
        session.acked(4)


def test_a_resume_writes_again_what_the_peer_did_not_get() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a", "b", "c", "d")
    session.take_unsent()  # all four written; the connection breaks
    session.resumed(2)  # the peer's HELLO or WELCOME: it had 1 and 2
    assert written(session.take_unsent()) == [(3, "c"), (4, "d")]


def test_a_restart_numbers_the_unacknowledged_again_from_one() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a", "b", "c")
    session.take_unsent()
    session.acked(1)
    session.restarted()  # the server forgot us: a new session
    assert written(session.take_unsent()) == [(1, "b"), (2, "c")]


def test_a_restart_leaves_out_the_old_sessions_requests_and_replies() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a")
    session.out.offer(with_id(b'["ask",{}]', "request", 1))
    session.out.offer(b'["plain",{"request":1}]')  # a payload of that shape is a plain message
    session.take_unsent()  # the three written; then the server restarts
    session.out.offer(with_id(b'["answer",{}]', "reply", 9))
    queue(session, "b")
    bytes_before = session.out.queued_bytes
    assert session.restarted(drop=of_its_session) == 2
    assert written(session.take_unsent()) == [(1, "a"), (2, "plain"), (3, "b")]
    assert session.resent == 2  # of the three written before, the request is not written again
    assert session.out.queued_bytes == bytes_before - len(with_id(b'["ask",{}]', "request", 1)) - len(
        with_id(b'["answer",{}]', "reply", 9)
    )


def test_ending_says_how_many_were_never_written() -> None:
    session = SendSession(100, 1 << 20)
    queue(session, "a", "b", "c")
    session.take_unsent()
    queue(session, "d", "e")
    assert session.end() == 2
    assert len(session.out) == 0 and session.unwritten == 0
    queue(session, "f")
    assert written(session.take_unsent()) == [(1, "f")]


def test_the_limits_bound_the_queue_and_can_change() -> None:
    session = SendSession(2, 1 << 20)
    queue(session, "a", "b")
    assert not session.out.offer(b'["c",{}]')
    session.set_limits(3, 1 << 20)
    assert session.out.offer(b'["c",{}]')


class _Live:
    """A transport as the write path sees it."""

    def __init__(self, direct_ok: bool = True) -> None:
        self.direct_ok = direct_ok
        self.lock = threading.Lock()
        self.written: list[list[bytes]] = []

    def write_many(self, chunks: list[bytes]) -> None:
        self.written.append(chunks)


def test_the_write_route_of_a_message_depends_on_the_link_and_the_pace() -> None:
    driver = FakeDriver()
    pumps: list[SendSession] = []
    session = SendSession(1000, 1 << 20)

    def send(in_driver: bool = False) -> tuple[object, list[bytes]] | None:
        queue(session, "m")
        if not in_driver:
            return route_locked(session, driver, pumps.append)
        with driver.running():
            return route_locked(session, driver, pumps.append)

    assert send() is None and session.unwritten == 1  # no connection: it waits for the resume
    session.take_unsent()
    live = _Live()
    session.live = live
    driver.now += 1
    direct = send()  # a lone send: straight out, the transport's lock taken for the caller
    assert direct is not None and direct[0] is live and written(direct[1]) == [(2, "m")]
    assert live.lock.locked()
    live.lock.release()
    driver.now += BURST_GAP / 2
    assert send(in_driver=True) is None and written(live.written.pop()) == [(3, "m")]  # a burst, written now
    driver.now += BURST_GAP / 2
    assert send() is None and pumps == [session] and session.pump_pending  # a burst elsewhere: one pump
    assert send() is None and pumps == [session]  # the pump takes it too
    for _ in range(BATCH - 3):
        assert send() is None
    direct = send()  # a long burst while the pump is pending: a batch from here
    assert direct is not None and len(written(direct[1])) == BATCH
    live.lock.release()
    session.pump_pending = False
    session.live = _Live(direct_ok=False)  # TLS: only the driver's thread writes
    driver.now += 1
    assert send() is None and pumps == [session, session]


def test_a_burst_on_the_drivers_thread_goes_out_in_batches() -> None:
    # An asyncio coroutine (or an inline callback) that sends many messages
    # without awaiting: a short burst is written message by message (no
    # pump to pay for); from BATCH on, the rest waits for the pump at the
    # end of the driver's turn, written BATCH at a time should the turn go
    # on (a coroutine that never waits ends it only once its queue is full).
    driver = FakeDriver()
    pumps: list[SendSession] = []
    session = SendSession(1000, 1 << 20)
    live = _Live()
    session.live = live

    def send() -> tuple[object, list[bytes]] | None:
        queue(session, "m")
        with driver.running():
            return route_locked(session, driver, pumps.append)

    driver.now += 1
    direct = send()  # a lone send: straight out
    assert direct is not None and written(direct[1]) == [(1, "m")]
    live.lock.release()
    for seq in range(2, 2 + BATCH):
        assert send() is None and written(live.written.pop()) == [(seq, "m")]  # a short burst: one by one
    assert pumps == [] and not session.pump_pending
    assert send() is None and written(live.written.pop()) == [(BATCH + 2, "m")]
    assert pumps == [session] and session.pump_pending  # a long burst: the rest is the pump's
    for _ in range(BATCH - 1):
        assert send() is None
    assert live.written == [] and session.unwritten == BATCH - 1
    assert send() is None  # BATCH unwritten: one batch into the transport's buffer
    assert written(live.written.pop()) == [(seq, "m") for seq in range(BATCH + 3, 2 * BATCH + 3)]
    assert session.unwritten == 0 and pumps == [session]
    assert send() is None and live.written == [] and session.unwritten == 1  # the pump takes the rest
    session.pump_pending = False  # the pump ran
    assert send() is None and pumps == [session, session]  # the burst goes on: the pump's at once
    written(live.written.pop())
    session.pump_pending = False  # the pump ran
    driver.now += 1
    direct = send()  # a lone send again: straight out, and the next burst starts short
    assert direct is not None
    live.lock.release()
    assert send() is None and written(live.written.pop()) and pumps == [session, session]
