"""A fake driver: a fake clock, no sockets, no I/O thread.

``FakeDriver`` implements ``missioncommander._loop.Driver``.  Nothing runs
by itself: a test calls ``run()`` to run what was queued, and ``advance(s)``
to move the clock and run the timers that fall due, in order.  Connections
are scripted: the peer is played by the test with a sans-IO ``Connection``
of the other role, reading what the library wrote (``FakeTransport.take``)
and feeding it bytes (``FakeTransport.feed``).

So every timer of ``Client`` and ``Server`` (heartbeat, backoff, session
expiry, ack batching, the liveness probe, connect and handshake timeouts)
runs in a test without waiting and without a socket.
"""

from __future__ import annotations

import heapq
import itertools
import ssl
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from missioncommander import Client
from missioncommander._connection import Connection
from missioncommander._events import Hello, Role, Window
from missioncommander._loop import ConnectOwner, Incoming, Timer, TransportOwner

T = TypeVar("T")


class FakeTransport:
    """A connection's transport in memory: written bytes wait for ``take``."""

    direct_ok = True

    def __init__(self, driver: FakeDriver, owner: TransportOwner, peer: str) -> None:
        self.driver = driver
        self.owner = owner
        self.peer = peer
        self.lock = threading.Lock()
        self.closed = False
        self.close_reason: str | None = None
        self.reading_paused = False
        self.out_bytes = 0
        self.last_progress = driver.now
        self.writes = 0
        self._written = bytearray()

    # -- what the library calls --------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.writes += 1
            self._written += data

    def write_many(self, chunks: list[bytes]) -> None:
        if not self.closed:
            self.writes += 1
            self._written += b"".join(chunks)

    def send_and_unlock(self, chunks: list[bytes]) -> None:
        try:
            if not self.closed:
                self.writes += 1
                self._written += b"".join(chunks)
        finally:
            self.lock.release()

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def close(self, reason: str = "closed", exc: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.owner.connection_lost(reason, exc)

    def close_after_flush(self, linger: float = 1.0, reason: str = "closed", peer_first: bool = False) -> None:
        self.close(reason)  # everything written is "flushed" at once here

    def abort(self, reason: str = "aborted") -> None:
        self.close(reason)

    # -- what the test calls -------------------------------------------------------

    def take(self) -> bytes:
        """What the library wrote since the last ``take``."""
        data = bytes(self._written)
        self._written.clear()
        return data

    def feed(self, data: bytes) -> None:
        """Bytes from the peer (on the driver's 'thread': the test's)."""
        assert not self.closed, "feeding a closed transport"
        with self.driver.running():
            self.owner.data_received(memoryview(data))

    def drop(self, reason: str = "connection reset by peer") -> None:
        """The peer vanished (an RST): the library hears the loss."""
        with self.driver.running():
            self.close(reason)


class FakeConnecting:
    """A client's connection attempt, waiting for the test to answer it."""

    def __init__(self, driver: FakeDriver, owner: ConnectOwner, addr: tuple[Any, ...]) -> None:
        self.driver = driver
        self.owner = owner
        self.addr = addr
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def accept(self) -> FakeTransport:
        """The server accepted: the owner gets its transport."""
        assert not self.cancelled
        transport = FakeTransport(self.driver, self.owner, f"{self.addr[0]}:{self.addr[1]}")
        with self.driver.running():
            self.owner.connection_made(transport)
        return transport

    def refuse(self, reason: str = "cannot connect: Connection refused") -> None:
        assert not self.cancelled
        with self.driver.running():
            self.owner.connect_failed(reason)


class FakeIncoming:
    def __init__(self, driver: FakeDriver, host: str, port: int) -> None:
        self.driver = driver
        self.host = host
        self.peer = f"{host}:{port}"
        self.transport: FakeTransport | None = None
        self.refused: bytes | bool | None = False

    def open(self, owner: TransportOwner, tls: ssl.SSLContext | None) -> FakeTransport:
        self.transport = FakeTransport(self.driver, owner, self.peer)
        return self.transport

    def refuse(self, frame: bytes | None) -> None:
        self.refused = frame


class FakeListener:
    def __init__(self, driver: FakeDriver, port: int, accept: Callable[[Incoming], None]) -> None:
        self.driver = driver
        self.port = port
        self.accept = accept
        self.started = False
        self.closed = False

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True

    def connect(self, host: str = "127.0.0.1", port: int = 40000) -> FakeIncoming:
        """A client connects; the server's transport is ``.transport``."""
        assert self.started and not self.closed
        incoming = FakeIncoming(self.driver, host, port)
        with self.driver.running():
            self.accept(incoming)
        return incoming


class FakeDriver:
    """The fake event loop (see the module's docstring)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._depth = 0
        self._thread = threading.current_thread()
        #: Every connect() so far, newest last.
        self.connects: list[FakeConnecting] = []
        self.listeners: list[FakeListener] = []

    # -- the Driver interface ------------------------------------------------------

    def time(self) -> float:
        return self.now

    def in_loop(self) -> bool:
        return self._depth > 0 and threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._calls.append((fn, args))

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(self.now + delay, fn, args)
        heapq.heappush(self._timers, (timer.when, next(self._counter), timer))
        return timer

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        with self.running():
            return fn(*args)

    def connect(
        self,
        family: int,
        addr: tuple[Any, ...],
        bind: tuple[str, int] | None,
        owner: ConnectOwner,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        name: str | None = None,
    ) -> FakeConnecting:
        connecting = FakeConnecting(self, owner, addr)
        self.connects.append(connecting)
        return connecting

    def listen(
        self, host: str, port: int, accept: Callable[[Incoming], None], tls: ssl.SSLContext | None = None
    ) -> FakeListener:
        listener = FakeListener(self, port or 40_000 + len(self.listeners), accept)
        self.listeners.append(listener)
        return listener

    # -- driving it ------------------------------------------------------------------

    def running(self) -> _Running:
        """Within it, the caller counts as the driver's thread."""
        return _Running(self)

    def run(self) -> None:
        """Run every queued call (and those they queue), then the timers due now."""
        with self.running():
            for _ in range(10_000):  # bounded: a call that re-queues itself forever is a bug
                with self._lock:
                    if not self._calls:
                        break
                    fn, args = self._calls.popleft()
                fn(*args)
            else:
                raise AssertionError("calls kept queueing more calls")
            self._run_timers()

    def advance(self, seconds: float) -> None:
        """Move the clock on, running calls and timers in time order on the way."""
        self.run()
        end = self.now + seconds
        for _ in range(100_000):
            self._drop_cancelled()
            if not self._timers or self._timers[0][0] > end:
                break
            self.now = max(self.now, self._timers[0][0])
            self.run()
        else:
            raise AssertionError("timers kept falling due")
        self.now = end
        self.run()

    def next_deadline(self) -> float | None:
        """When the next live timer falls due (None: none is set)."""
        self._drop_cancelled()
        return self._timers[0][0] if self._timers else None

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)

    def _run_timers(self) -> None:
        while self._timers and self._timers[0][0] <= self.now:
            timer = heapq.heappop(self._timers)[2]
            if not timer.cancelled:
                timer.fn(*timer.args)


class _Running:
    def __init__(self, driver: FakeDriver) -> None:
        self.driver = driver

    def __enter__(self) -> None:
        self.driver._depth += 1

    def __exit__(self, *exc: object) -> None:
        self.driver._depth -= 1


def connected_client(
    driver: FakeDriver, window: Window | None = None, **settings: Any
) -> tuple[Client, FakeTransport, Connection, Hello]:
    """A ``Client`` on ``driver``, welcomed by a scripted server (played by
    the returned ``Connection``) that announces ``window``; with the HELLO
    the client sent.  What the handshake wrote has been taken."""
    client = Client(_driver=driver, address="127.0.0.1", port=5000, client_id="c1", **settings)
    client.connect(wait=False)
    driver.run()
    transport = driver.connects[-1].accept()
    peer = Connection(Role.SERVER, now=driver.now)
    transport.feed(peer.send_challenge("n" * 32, auth=False))
    (hello,) = peer.receive_data(transport.take(), driver.now)
    assert isinstance(hello, Hello)
    transport.feed(peer.send_welcome("token", False, 0, 65536, 15.0, driver.now, window=window))
    driver.run()
    transport.take()
    return client, transport, peer, hello
