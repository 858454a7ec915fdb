"""A server process (threaded or asyncio) that runs out of file
descriptors: it pauses accepting (the connections wait in the backlog),
says so once without a traceback, serves the clients
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from support import Recorder, wait_until

from missioncommander import Client, Message

ECHO_SERVER = Path(__file__).parent.parent / "support" / "echo_server.py"

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

MakeClient = Callable[..., Client]


class EchoProcess:
    """An echo server in a process of its own (it prints ``READY port``),
    its stderr read line by line on a thread, and a way to starve it of
    file descriptors and give them back."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        ready = proc.stdout.readline().split()
        assert ready and ready[0] == "READY", "the echo server did not start"
        self.port = int(ready[1])
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self.lines.extend, args=(proc.stderr,), daemon=True)
        self._reader.start()
        self._hogs: list[socket.socket] = []
        self._hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)[1]

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def starve(self) -> None:
        """Leave it room for a couple of descriptors, and connect more
        clients than that (the kernel completes each handshake into the
        backlog, whether the server accepts or not)."""
        pid = self.proc.pid
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 2, self._hard))
        for _ in range(8):
            self._hogs.append(socket.create_connection(("127.0.0.1", self.port), timeout=10))

    def release(self) -> None:
        for hog in self._hogs:
            hog.close()
        self._hogs.clear()
        resource.prlimit(self.proc.pid, resource.RLIMIT_NOFILE, (self._hard, self._hard))

    def echoes(self, client: Client, subject: str) -> bool:
        """Whether ``client`` (not connected yet) gets in and has ``subject`` echoed."""
        echoed = Recorder().attach(client, "message")
        client.connect()
        client.send(Message(subject))
        return bool(echoed.wait_count("message", 1)[0][0].subject == subject)


@contextmanager
def echo_process(*args: str) -> Iterator[EchoProcess]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    server: EchoProcess | None = None
    try:
        server = EchoProcess(proc)
        yield server
    finally:
        if server is not None:
            server.release()
        proc.kill()
        proc.wait(10)
        if server is not None:
            server._reader.join(10)  # the last lines are in
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_a_server_out_of_descriptors_pauses_accepting_and_takes_the_waiting_ones_later(make_client: MakeClient) -> None:
    with echo_process(str(ECHO_SERVER), "0") as server:
        inside = make_client(address="127.0.0.1", port=server.port, client_id="inside")
        inside_echoes = Recorder().attach(inside, "message")
        inside.connect()
        server.starve()
        wait_until(lambda: server.having("cannot accept connections"), what="the server to say it cannot accept")
        inside.send(Message("still served"))  # those already in go on
        assert inside_echoes.wait_count("message", 1)[0][0].subject == "still served"
        server.release()
        assert server.echoes(make_client(address="127.0.0.1", port=server.port, client_id="later"), "in at last")
        wait_until(lambda: server.having("accepting connections on port"), what="the server to say it accepts again")
    assert len(server.having("cannot accept connections")) == 1, "".join(server.lines[:5])
    assert not server.having("Traceback")


def test_an_asyncio_server_out_of_descriptors_says_so_once_in_its_own_words(make_client: MakeClient) -> None:
    """asyncio stops accepting for a second after accept() fails with EMFILE,
    but (before CPython's fix, gh-151615: 3.11 and 3.13.0 here) went on
    accepting in the same wake-up up to its backlog: 8,192 tracebacks a
    second from an AsyncServer, and as many retries scheduled. The
    listening socket now says no connection waits meanwhile, and the
    trouble is said as the threaded server says it: once, without asyncio's
    traceback a second, and again when accepting works."""
    with echo_process("-c", ASYNC_ECHO) as server:
        server.starve()
        wait_until(lambda: server.having("cannot accept connections"), what="the server to say it cannot accept")
        server.release()
        assert server.echoes(make_client(address="127.0.0.1", port=server.port, client_id="later"), "in at last")
        wait_until(lambda: server.having("accepting connections on port"), what="the server to say it accepts again")
    assert len(server.having("cannot accept connections")) == 1, "".join(server.lines[:5])
    assert not server.having("Traceback"), "".join(server.lines[:20])
    assert not server.having("out of system resource")
