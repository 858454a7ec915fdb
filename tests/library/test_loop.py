"""The I/O loop: its timers, and the ``selectors`` fallback where there is no
epoll (macOS, the BSDs)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from missioncommander._loop import get_loop

SCRIPT = textwrap.dedent(
    """
    import select, socket, threading
    del select.epoll
    from missioncommander import Client, Message, Server
    from missioncommander._loop import Transport, get_loop

    assert type(get_loop()._poller).__name__ == "_SelectorPoller"
    done = threading.Event()
    got = []
    # No heartbeat during the test: its writes would move a stalled queue on.
    quiet = {"heartbeat_interval": 60, "heartbeat_timeout": 180}
    with Server(interface="127.0.0.1", port=0, **quiet) as server:
        server.subscribe("message", lambda cid, m: server.send(cid, m))
        port = server.port

        def on_message(m):
            got.append(len(m.payload["pad"]))
            if len(got) == 101:
                done.set()

        client = Client(address="127.0.0.1", port=server.port, client_id="c", **quiet)
        client.subscribe("message", on_message)
        client.connect()
        for i in range(100):
            client.send(Message("m", {"pad": "x" * i}))
        client.send(Message("m", {"pad": "y" * 1_000_000}))
        assert done.wait(30), f"{len(got)} of 101 echoes"
        assert got == [*range(100), 1_000_000]
        client.disconnect()

    # A write larger than the socket buffers, read only later: the queue
    # moves on by writability alone (nothing else is written after it).
    class Owner:
        def data_received(self, data): pass
        def connection_lost(self, reason, exc): pass

    mine, peer = socket.socketpair()
    for sock in (mine, peer):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    mine.setblocking(False)
    loop = get_loop()
    blob = bytes(range(256)) * 8192  # 2 MiB
    transport = loop.run_sync(lambda: Transport(loop, mine, Owner()))
    loop.run_sync(transport.write, blob)
    peer.settimeout(30)
    received = bytearray()
    while len(received) < len(blob):
        chunk = peer.recv(65536)
        assert chunk, "closed early"
        received += chunk
    assert received == blob
    loop.run_sync(transport.close)
    peer.close()

    # A refused connect is told by writability too.
    refused = Client(address="127.0.0.1", port=port, client_id="r", connect_timeout=5)
    try:
        refused.connect()
    except Exception as exc:
        print("refused:", exc)
    print("OK")
    """
)


def test_client_and_server_work_on_the_selectors_fallback() -> None:
    # A fresh interpreter with select.epoll removed: the process's one loop
    # is built on the fallback from the start.
    proc = subprocess.run([sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "refused" in proc.stdout.split("refused:", 1)[1].lower()
    assert proc.stdout.rstrip().endswith("OK")


def test_cancelled_timers_do_not_pile_up_or_hold_their_callbacks() -> None:
    loop = get_loop()

    class Target:
        def fire(self) -> None:
            raise AssertionError("a cancelled timer fired")

    target = Target()
    ref = weakref.ref(target)

    def churn(fire: Callable[[], None]) -> int:
        # Like connections coming and going: each leaves a long timer cancelled.
        for _ in range(20_000):
            loop.call_later(3600, fire).cancel()
        return len(loop._timers)

    size = loop.run_sync(churn, target.fire)
    assert size < 20_000 // 2  # dropped along the way, not kept for an hour
    del target
    gc.collect()
    assert ref() is None


LONG_TIMER = textwrap.dedent(
    """
    import sys
    from missioncommander import Client, Message, Server
    from missioncommander._loop import get_loop

    {fallback}
    loop = get_loop()
    # The loop's only timer, 30 days away (a session_expiry of 30 days and one
    # detached client): epoll's wait, in milliseconds in a C int, overflowed
    # and the I/O thread died with OverflowError.
    loop.run_sync(lambda: loop.call_later(30 * 86400, print, "never"))
    assert loop.run_sync(lambda: 42, timeout=10) == 42, "the loop stopped"
    with Server(interface="127.0.0.1", port=0, session_expiry=30 * 86400) as server:
        server.subscribe("request", lambda client_id, message: message.payload)
        with Client(address="127.0.0.1", port=server.port, connect_timeout=10) as client:
            print(client.request(Message("q", {{"n": 7}}), timeout=10).payload["n"])
    """
)


@pytest.mark.parametrize("poller", ["epoll", "selectors"])
def test_a_timer_weeks_away_does_not_stop_the_loop(poller: str) -> None:
    fallback = "import select; del select.epoll" if poller == "selectors" else ""
    script = LONG_TIMER.format(fallback=fallback)
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["7"]


#: A process frozen in its wait (SIGSTOP, a frozen virtual machine), told
#: by a poller that sleeps once and reports nothing, as a wait whose time
#: ran out while the process stood still: a HELLO sent meanwhile must be
#: read before the handshake's timer, long overdue, is run.
FROZEN_IN_THE_WAIT = textwrap.dedent(
    """
    import select, socket, sys, threading, time
    sys.path.insert(0, {tests!r})
    real = select.epoll
    freeze, frozen = threading.Event(), threading.Event()

    class Freezing:
        def __init__(self):
            self.epoll = real()
        def poll(self, timeout=-1, maxevents=-1):
            if freeze.is_set():
                freeze.clear()
                frozen.set()
                time.sleep(1.5)  # three handshake timeouts
                return []
            return self.epoll.poll(timeout, maxevents)
        def __getattr__(self, name):
            return getattr(self.epoll, name)

    select.epoll = Freezing
    from support import server_frames
    from missioncommander import Server
    from missioncommander._events import Challenge, Welcome
    from missioncommander._frames import FrameType, encode_json_frame
    from missioncommander._loop import get_loop

    with Server(interface="127.0.0.1", port=0, handshake_timeout=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            frames = server_frames(sock)
            assert isinstance(next(frames), Challenge)  # accepted: its handshake's 0.5 s run
            freeze.set()
            get_loop().call_soon(lambda: None)  # out of its wait, into the frozen one
            assert frozen.wait(10)
            hello = {{"version": 1, "client_id": "late", "session": None, "last_seq": 0, "max_frame_size": 65536}}
            sock.sendall(encode_json_frame(FrameType.HELLO, hello | {{"heartbeat_timeout": 60}}))
            print(type(next(frames)).__name__)
    """
)


def test_a_loop_frozen_in_its_wait_reads_before_it_runs_the_timers_that_fell_due() -> None:
    script = FROZEN_IN_THE_WAIT.format(tests=str(Path(__file__).parent.parent))
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Welcome"]
