"""A server process that runs out of file descriptors: it pauses accepting
(the connections wait in the backlog), says so once, serves the clients
it has, and takes the waiting ones once descriptors are free again.
Before, accept() failed, the listener stayed readable, and the I/O thread
tried again at once: a spin that logged a line per try (150,000 a second
here) until the descriptors came back."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from support import Recorder, wait_until

from missioncommander import Client, Message

ECHO_SERVER = Path(__file__).parent.parent / "support" / "echo_server.py"


class Lines:
    """A process's stderr, read line by line on a thread of its own."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line)

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def done(self, timeout: float) -> None:
        self._thread.join(timeout)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_server_out_of_descriptors_pauses_accepting_and_takes_the_waiting_ones_later(
    make_client: Callable[..., Client],
) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, str(ECHO_SERVER), "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    hogs: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = proc.stdout.readline().split()
        assert ready[0] == "READY", "echo server did not start"
        port = int(ready[1])
        log = Lines(proc.stderr)
        inside = make_client(address="127.0.0.1", port=port, client_id="inside")
        echoes = Recorder().attach(inside, "message")
        inside.connect()
        # Room for no more than a couple of connections.
        _, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (open_fds(proc.pid) + 2, hard))
        for _ in range(8):  # the kernel completes each handshake into the backlog
            hogs.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        wait_until(lambda: log.having("cannot accept connections"), what="the server to say it cannot accept")
        inside.send(Message("still served"))  # those already in go on
        assert echoes.wait_count("message", 1)[0][0].subject == "still served"
        assert len(log.having("cannot accept connections")) == 1
        for hog in hogs:
            hog.close()
        hogs.clear()
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (hard, hard))
        later = make_client(address="127.0.0.1", port=port, client_id="later")
        later_echoes = Recorder().attach(later, "message")
        later.connect()
        later.send(Message("in at last"))
        assert later_echoes.wait_count("message", 1)[0][0].subject == "in at last"
        wait_until(lambda: log.having("accepting connections on port"), what="the server to say it accepts again")
    finally:
        for hog in hogs:
            hog.close()
        proc.kill()
        proc.wait(10)
    log.done(10)
    assert len(log.having("cannot accept connections")) == 1, "".join(log.lines[:5])
    assert not log.having("Traceback")


ASYNC_ECHO = """
import asyncio
from missioncommander import Message
from missioncommander.aio import AsyncServer

async def main():
    async with AsyncServer(interface="127.0.0.1", port=0, heartbeat_interval=0.5) as server:
        print("READY", server.port, flush=True)
        async for client_id, message in server.messages():
            await server.send(client_id, Message(message.subject, dict(message.payload)))

asyncio.run(main())
"""


def test_an_asyncio_server_out_of_descriptors_says_so_once_a_second(make_client: Callable[..., Client]) -> None:
    """asyncio stops accepting for a second after accept() fails with EMFILE,
    but (before CPython's fix, gh-151615: 3.11 and 3.13.0 here) went on
    accepting in the same wake-up up to its backlog: 8,192 tracebacks a
    second from an AsyncServer, and as many retries scheduled. The
    listening socket now says no connection waits meanwhile: one line a
    second, as on a fixed CPython."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-c", ASYNC_ECHO], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    hogs: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = proc.stdout.readline().split()
        assert ready and ready[0] == "READY", "the asyncio echo server did not start"
        port = int(ready[1])
        log = Lines(proc.stderr)
        _, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (open_fds(proc.pid) + 2, hard))
        for _ in range(8):
            hogs.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        wait_until(lambda: log.having("out of system resource"), what="asyncio to say it cannot accept")
        for hog in hogs:
            hog.close()
        hogs.clear()
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (hard, hard))
        later = make_client(address="127.0.0.1", port=port, client_id="later")
        echoes = Recorder().attach(later, "message")
        later.connect()
        later.send(Message("in at last"))
        assert echoes.wait_count("message", 1)[0][0].subject == "in at last"
    finally:
        for hog in hogs:
            hog.close()
        proc.kill()
        proc.wait(10)
    log.done(10)
    # One a second while descriptors ran out (a few seconds at most here).
    assert 1 <= len(log.having("out of system resource")) <= 5, len(log.having("out of system resource"))
