"""Lines a peer can cause over and over are said now and then, with a
count; lines every client of a process says at once are said by a few."""

from __future__ import annotations

import errno
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from support import DEFAULT_WAIT, Recorder, wait_until

from missioncommander import Client, ConnectionRefusedByServer, Message, Server
from missioncommander._loop import AcceptTrouble
from missioncommander._quiet import Chorus, Quiet, more


def test_a_line_is_said_at_most_every_period_and_counts_what_went_unsaid() -> None:
    now = [100.0]
    quiet = Quiet(5.0, clock=lambda: now[0])
    assert quiet.due() == 0  # the first is said
    assert [quiet.due() for _ in range(3)] == [None, None, None]
    now[0] += 4.9
    assert quiet.due() is None
    now[0] += 0.1
    assert quiet.due() == 4  # said again, with the four kept back
    now[0] += 60
    assert quiet.due() == 0
    assert more(0) == "" and more(4) == " (4 more since the last said)"


def test_accept_trouble_says_when_it_starts_while_it_lasts_and_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    trouble = AcceptTrouble(logging.getLogger("test.accept"), "connections on port 1", clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.accept")
    emfile = OSError(errno.EMFILE, "Too many open files")
    for _ in range(30):  # a try a second for half a minute
        trouble.failed(emfile)
        now[0] += 1.0
    now[0] = 61.0
    trouble.failed(emfile)
    trouble.accepted()
    trouble.accepted()  # nothing to say: it works
    trouble.failed(emfile)  # a new spell of trouble is said at once
    assert [r.getMessage() for r in caplog.records] == [
        "cannot accept connections on port 1: [Errno 24] Too many open files; trying again every 1 s"
        " (those already connected go on)",
        "still cannot accept connections on port 1 after 61 s: [Errno 24] Too many open files"
        " (29 more since the last said)",
        "accepting connections on port 1 again, after 61.0 s",
        "cannot accept connections on port 1: [Errno 24] Too many open files; trying again every 1 s"
        " (those already connected go on)",
    ]


class _Timers:
    """Calls scheduled for later, run when the test says."""

    def __init__(self) -> None:
        self.later: list[tuple[float, Callable[[], None]]] = []

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> object:
        self.later.append((delay, lambda: fn(*args)))
        return None


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records]


def test_a_chorus_says_its_first_voices_and_counts_the_rest_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    now = [10.0]
    timers = _Timers()
    chorus = Chorus(logging.getLogger("test.chorus"), "lost", every=5.0, voices=2, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="test.chorus")
    for n in range(6):
        chorus.log(timers, f"c{n % 3}", logging.INFO if n == 3 else logging.WARNING, "client %s lost", n)
        now[0] += 0.5
    assert _lines(caplog) == [
        (logging.WARNING, "client 0 lost"),
        (logging.WARNING, "client 1 lost"),
        (logging.DEBUG, "client 2 lost"),
        (logging.DEBUG, "client 3 lost"),
        (logging.DEBUG, "client 4 lost"),
        (logging.DEBUG, "client 5 lost"),
    ]
    # One call is asked for, at the window's end (5 s after its first line).
    assert [delay for delay, _ in timers.later] == [4.0]
    caplog.clear()
    timers.later[0][1]()
    assert _lines(caplog) == [
        # The most severe level of those counted, from c2, c0, c1 and c2.
        (logging.WARNING, '4 more line(s) like "lost" from 3 client(s) within 5 s (logged at DEBUG level)')
    ]
    caplog.clear()
    chorus.flush()  # nothing more to say
    now[0] += 5.0
    chorus.log(timers, "c9", logging.WARNING, "client %s lost", 9)  # a new window: said again
    assert _lines(caplog) == [(logging.WARNING, "client 9 lost")]


def test_a_chorus_whose_window_call_never_came_says_its_count_with_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    timers = _Timers()
    chorus = Chorus(logging.getLogger("test.chorus"), "lost", every=5.0, voices=1, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.chorus")
    for n in range(3):
        chorus.log(timers, n, logging.INFO, "client %s lost", n)
    now[0] = 60.0  # the loop that was to run the call stopped
    chorus.log(timers, 3, logging.INFO, "client %s lost", 3)
    assert _lines(caplog) == [
        (logging.INFO, "client 0 lost"),
        (logging.INFO, '2 more line(s) like "lost" from 2 client(s) within 5 s (logged at DEBUG level)'),
        (logging.INFO, "client 3 lost"),
    ]
    timers.later[0][1]()  # a call that comes late has nothing left to say
    assert len(caplog.records) == 3


def test_a_chorus_whose_loop_has_closed_does_not_raise_and_says_its_count_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Closed(_Timers):
        def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
            raise RuntimeError("Event loop is closed")  # as asyncio's call_soon says it

    now = [0.0]
    chorus = Chorus(logging.getLogger("test.chorus"), "lost", every=5.0, voices=1, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.chorus")
    for n in range(3):
        chorus.log(Closed(), n, logging.INFO, "client %s lost", n)
    now[0] = 10.0
    chorus.log(Closed(), 3, logging.INFO, "client %s lost", 3)
    assert [m for _, m in _lines(caplog)] == [
        "client 0 lost",
        '2 more line(s) like "lost" from 2 client(s) within 5 s (logged at DEBUG level)',
        "client 3 lost",
    ]


def test_a_chorus_restarted_says_its_count_and_lets_the_next_line_be_said(caplog: pytest.LogCaptureFixture) -> None:
    timers = _Timers()
    chorus = Chorus(logging.getLogger("test.chorus"), "lost", voices=1, clock=lambda: 0.0)
    caplog.set_level(logging.INFO, logger="test.chorus")
    for n in range(2):
        chorus.log(timers, n, logging.INFO, "client %s lost", n)
    chorus.restart()
    chorus.log(timers, 2, logging.INFO, "client %s lost", 2)  # the same instant, a new window
    assert _lines(caplog) == [
        (logging.INFO, "client 0 lost"),
        (logging.INFO, '1 more line(s) like "lost" from 1 client(s) within 5 s (logged at DEBUG level)'),
        (logging.INFO, "client 2 lost"),
    ]


def test_a_chorus_at_a_level_nobody_logs_counts_nothing(caplog: pytest.LogCaptureFixture) -> None:
    timers = _Timers()
    chorus = Chorus(logging.getLogger("test.chorus"), "retrying", voices=1)
    caplog.set_level(logging.WARNING, logger="test.chorus")
    for n in range(5):
        chorus.log(timers, n, logging.INFO, "client %s retrying", n)
    chorus.flush()
    assert caplog.records == [] and timers.later == []


def test_a_server_gone_from_many_clients_is_said_by_a_few_and_counted(
    server: Server, make_client: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    """Each client of a process says it lost its connection, and the server
    that each one's session ended; past the first three in five seconds
    they say it at DEBUG, and one line counts them."""
    ids = [f"chorus-{n}" for n in range(12)]
    clients = [make_client(server, client_id=i, reconnect_on_shutdown=True, reconnect_delay=30) for i in ids]
    for client in clients:
        client.connect()
    caplog.set_level(logging.DEBUG, logger="missioncommander")
    server.stop()
    wait_until(lambda: all(not c.connected for c in clients), what="every client to see the server go")
    lost = re.compile(r"client '(chorus-\d+)': connection lost \(server shut down")
    counted = re.compile(r'(\d+) more line\(s\) like "connection lost; reconnecting" from (\d+) client')

    def summaries() -> list[int]:
        return [int(m[1]) for r in caplog.records if (m := counted.match(r.getMessage()))]

    # The count comes when the five seconds are up, without another line.
    wait_until(lambda: bool(summaries()), timeout=15, what="the count of the lines said at DEBUG")
    said = [r for r in caplog.records if lost.match(r.getMessage())]
    assert sorted(lost.match(r.getMessage())[1] for r in said) == sorted(ids)  # type: ignore[index]
    loud = [r for r in said if r.levelno == logging.WARNING]
    quiet = [r for r in said if r.levelno == logging.DEBUG]
    assert len(loud) <= 3 and len(loud) + len(quiet) == 12
    # Lines of other tests' clients may share the window: at least ours.
    assert sum(summaries()) >= len(quiet) >= 9
    ended = [
        r
        for r in caplog.records
        if re.match(r"client 'chorus-\d+' session ended: server shutting down", r.getMessage())
    ]
    assert len(ended) == 12 and sum(r.levelno == logging.INFO for r in ended) == 3
    wait_until(
        lambda: any(
            r.name == "missioncommander.server"
            and r.getMessage().startswith('9 more line(s) like "session ended" from 9 client(s)')
            for r in caplog.records
        ),
        what="the server's count",
    )


def test_a_broadcast_that_cuts_many_slow_clients_says_three_and_counts_the_rest(
    make_client: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    """The documented burst case (docs/SECURITY.md): each client cut had
    its warning, a thousand for a thousand clients."""
    release = threading.Event()
    caplog.set_level(logging.DEBUG, logger="missioncommander.server")
    with Server(interface="127.0.0.1", port=0, max_queued=2) as server:
        gone = Recorder().attach(server, "clientdisconnect")
        try:
            for n in range(8):
                slow = make_client(server, client_id=f"slow-{n}")
                slow.subscribe("message", lambda m: release.wait(DEFAULT_WAIT))
                slow.connect()
            for n in range(20):
                server.send("*", Message("burst", {"n": n}))
            gone.wait_count("clientdisconnect", 8)
            wait_until(
                lambda: any('5 more line(s) like "too slow: send queue full' in r.getMessage() for r in caplog.records),
                what="the count of the clients cut",
            )
        finally:
            release.set()
    cut = [r for r in caplog.records if re.match(r"client 'slow-\d' is too slow", r.getMessage())]
    assert len(cut) == 8 and sum(r.levelno == logging.WARNING for r in cut) == 3


def test_clients_a_full_server_turns_away_are_said_by_a_few_and_counted(
    make_client: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    """Each client over ``max_clients`` is refused, and retries every few
    seconds: 10,000 of them were 300 warnings a second. A refusal that ends
    the client's trying (a wrong token) stays one line each."""
    caplog.set_level(logging.DEBUG, logger="missioncommander.server")
    with Server(interface="127.0.0.1", port=0, max_clients=1, auth_token="s") as server:
        make_client(server, client_id="in", auth_token="s").connect()
        turned_away = [make_client(server, client_id=f"away-{n}", auth_token="s") for n in range(8)]
        for client in turned_away:
            client.connect(wait=False)
        counted = re.compile(
            r'(\d+) more line\(s\) like "refusing \.\.\. for now \(the client retries\)" from (\d+) client'
        )
        wait_until(
            lambda: any(counted.match(r.getMessage()) for r in caplog.records),
            timeout=15,
            what="the count of the refusals said at DEBUG",
        )
        for n in range(4):
            wrong = make_client(server, client_id="wrong", auth_token=f"not it {n}")
            with pytest.raises(ConnectionRefusedByServer, match="wrong token"):
                wrong.connect()
    # The first window: up to its count, at most three said and the rest counted.
    end = next(i for i, r in enumerate(caplog.records) if counted.match(r.getMessage()))
    first = caplog.records[:end]
    full = [r for r in first if re.match(r"refusing client 'away-\d' .*max_clients=1", r.getMessage())]
    assert len(full) >= 8 and sum(r.levelno == logging.WARNING for r in full) == 3
    count = counted.match(caplog.records[end].getMessage())
    assert count is not None and int(count[1]) >= 5
    assert 1 <= int(count[2]) <= 8  # counted by client, not by connection
    wrong_token = [r for r in caplog.records if re.match(r"refusing client 'wrong' .*wrong token", r.getMessage())]
    assert [r.levelno for r in wrong_token] == [logging.WARNING] * 4


def test_a_process_that_exits_within_the_window_still_says_the_count() -> None:
    """mcd stopping with a thousand hosted clients logged three 'left'
    lines and exited before the 5 s window's end: the 997 others went
    unsaid. The counts left are said at exit."""
    code = (
        "import logging, sys\n"
        "from missioncommander import Client, Server\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(name)s %(message)s')\n"
        "with Server(interface='127.0.0.1', port=0) as server:\n"
        "    clients = [Client(address='127.0.0.1', port=server.port, client_id=f'c{n}') for n in range(8)]\n"
        "    for client in clients:\n"
        "        client.connect()\n"
        "    for client in clients:\n"
        "        client.disconnect()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(" connected from " in line for line in lines) == 3, out.stdout
    for summary in ("connected (new session)", "left", "session ended"):
        assert f'missioncommander.server 5 more line(s) like "{summary}" from 5 client(s)' in out.stdout, out.stdout
