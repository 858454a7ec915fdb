"""The engine: one I/O thread per process owns every socket.

Clients and servers hand it work with :meth:`Loop.call_soon` (thread-safe,
wakes the selector through a socketpair) and it runs their handlers on its
own thread, so connection state needs no locks.  Writes are coalesced: a
transport queues chunks and is flushed once per loop iteration with a single
``sendmsg`` of many buffers.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import math
import os
import select
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar, cast

from ._callbacks import mark_callback_thread
from ._errors import StateError
from ._quiet import Quiet, more

log = logging.getLogger("missioncommander.loop")

T = TypeVar("T")

_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
_RECV_SIZE = 256 * 1024
#: Reads per readiness event before the loop serves others, so one chatty
#: peer cannot starve the rest.
_READS_PER_EVENT = 16
#: The least size of the timer heap at which cancelled timers are dropped.
_COMPACT_MIN = 4096
#: Readiness events taken per wait (more wait for the next turn).
_MAX_EVENTS = 1024
#: Seconds a wait may end late (or a timer fire late, on the asyncio
#: driver) before the loop reads again ahead of its timers: far more than
#: scheduling delays, far less than any timeout.
OVERSLEPT = 0.1
#: The longest single wait for the next timer: epoll takes milliseconds in
#: a C int (under 25 days), and a 30-day session_expiry, the only timer of a
#: server with one detached client, killed the I/O thread with OverflowError.
#: An hour is as long as asyncio's own loop waits at a time.
_MAX_WAIT = 3600.0


class Timer:
    """A cancellable call scheduled on the loop."""

    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        # It stays in the loop's heap until its time: it must not keep what
        # it would have called (a closed connection, its client) alive.
        self.fn = _nothing
        self.args = ()


def _nothing() -> None:
    pass


class Handler(Protocol):
    def handle_io(self, mask: int) -> None:
        """``mask`` holds epoll's bits: test it with ``READABLE`` and ``WRITABLE``."""


#: What the loop waits for, and what ``handle_io`` is told: epoll's bits on
#: every platform.  An error or a hang-up counts as both readable and
#: writable, so whichever side is waiting meets it.
WANT_READ: int = getattr(select, "EPOLLIN", 0x001)
WANT_WRITE: int = getattr(select, "EPOLLOUT", 0x004)
_ERR_HUP: int = getattr(select, "EPOLLERR", 0x008) | getattr(select, "EPOLLHUP", 0x010)
READABLE = WANT_READ | _ERR_HUP
WRITABLE = WANT_WRITE | _ERR_HUP


class _SelectorPoller:
    """``select.epoll``'s interface over ``selectors``, where there is no epoll."""

    #: epoll's bits for each ``selectors`` mask (EVENT_READ 1, EVENT_WRITE 2).
    _BITS = (0, WANT_READ, WANT_WRITE, WANT_READ | WANT_WRITE)

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        #: Registered with no events (a transport that paused reading and
        #: has nothing to write): epoll keeps such fds, selectors refuses them.
        self._parked: set[int] = set()

    @staticmethod
    def _events(bits: int) -> int:
        return (selectors.EVENT_READ if bits & WANT_READ else 0) | (selectors.EVENT_WRITE if bits & WANT_WRITE else 0)

    def register(self, fd: int, bits: int) -> None:
        if self._events(bits):
            self._selector.register(fd, self._events(bits))
        else:
            self._parked.add(fd)

    def modify(self, fd: int, bits: int) -> None:
        if fd in self._parked:
            self._parked.discard(fd)
            self.register(fd, bits)
        elif not self._events(bits):
            self._selector.unregister(fd)
            self._parked.add(fd)
        else:
            self._selector.modify(fd, self._events(bits))

    def unregister(self, fd: int) -> None:
        if fd in self._parked:
            self._parked.discard(fd)
        else:
            self._selector.unregister(fd)

    def close(self) -> None:
        self._selector.close()

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        ready = self._selector.select(None if timeout < 0 else timeout)
        return [(key.fd, self._BITS[mask]) for key, mask in ready]


class _WakeupReader:
    """Empties the wake-up socket that ``call_soon`` writes to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def handle_io(self, mask: int) -> None:
        try:
            while self.sock.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass


def _make_poller() -> select.epoll | _SelectorPoller:
    # epoll driven directly: the selectors wrapper costs more interpreted
    # work per wake-up than the rest of a small message's way through the loop.
    return select.epoll() if hasattr(select, "epoll") else _SelectorPoller()


class Loop:
    """An epoll (or ``selectors``) loop on a daemon thread; see the module docstring."""

    def __init__(self, name: str = "missioncommander-io") -> None:
        #: The clock of every timer and deadline of this loop's links: a
        #: driver's clock, so that a fake driver can run them in fake time.
        self.time: Callable[[], float] = time.monotonic
        self._poller = _make_poller()
        #: The process this loop's thread runs in (a forked child has none).
        self.pid = os.getpid()
        #: The handler of each registered fd.
        self._handlers: dict[int, Handler] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.register(self._wake_r, WANT_READ, _WakeupReader(self._wake_r))
        self._lock = threading.Lock()
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake_pending = False
        self._timers: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        #: The heap's size at which cancelled timers are next dropped.
        self._compact_at = _COMPACT_MIN
        self._dirty: dict[Transport, None] = {}
        # Every socket of this loop reads into this one buffer (reads happen
        # on the loop thread only) and copies out what arrived: recv(256 KiB)
        # would have malloc map, shrink and unmap a fresh block for each read,
        # three system calls and page faults per message.
        self.read_buffer = bytearray(_RECV_SIZE)
        self.read_view = memoryview(self.read_buffer)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- thread-safe entry points --------------------------------------------

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def running(self) -> bool:
        """Whether the loop's thread runs (not in a forked child, say)."""
        return self._thread.is_alive()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread, after calls already queued."""
        with self._lock:
            self._calls.append((fn, args))
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # a wakeup byte is already waiting

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn(*args)`` on the loop thread and return its result (or raise
        its exception) in the calling thread."""
        if self.in_loop():
            return fn(*args)
        return call_and_wait(self.call_soon, fn, args, timeout)

    # -- loop-thread API -----------------------------------------------------

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        timers = self._timers
        if len(timers) >= self._compact_at:
            # Cancelled timers wait in the heap until their time (a minute,
            # for a connect timeout): with many connections coming and going
            # they would pile up.  Dropped here, at amortised constant cost.
            timers[:] = [entry for entry in timers if not entry[2].cancelled]
            heapq.heapify(timers)
            self._compact_at = max(_COMPACT_MIN, 2 * len(timers))
        timer = Timer(self.time() + delay, fn, args)
        heapq.heappush(timers, (timer.when, next(self._counter), timer))
        return timer

    def register(self, sock: socket.socket, events: int, handler: Handler) -> None:
        """Call ``handler.handle_io`` when ``sock`` is ready for ``events``
        (``WANT_READ`` and/or ``WANT_WRITE``)."""
        fd = sock.fileno()
        self._poller.register(fd, events)
        self._handlers[fd] = handler

    def modify(self, sock: socket.socket, events: int, handler: Handler) -> None:
        fd = sock.fileno()
        self._poller.modify(fd, events)
        self._handlers[fd] = handler

    def unregister(self, sock: socket.socket) -> None:
        """Forget ``sock`` (before it is closed: its fd number may be reused)."""
        fd = sock.fileno()
        if fd < 0:
            return
        self._handlers.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._poller.unregister(fd)

    def close_in_child(self) -> None:
        """In a forked child, close its copies of this (the parent's) loop's
        sockets and epoll: kept, a listening socket stayed bound as long as
        the child lived (a multiprocessing pool's workers kept the parent
        from listening on its port again), and a connection the parent
        closed sent no FIN. The parent's own copies are untouched. (A
        connection accepted in the instant of the fork, not yet registered,
        stays open in the child.)"""
        for handler in list(self._handlers.values()):
            sock = getattr(handler, "sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.close()
        self._handlers.clear()
        with contextlib.suppress(OSError):
            self._wake_w.close()
            self._poller.close()

    def mark_dirty(self, transport: Transport) -> None:
        self._dirty[transport] = None

    # -- connections -----------------------------------------------------------

    def connect(
        self,
        family: int,
        addr: tuple[Any, ...],
        bind: tuple[str, int] | None,
        owner: ConnectOwner,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        name: str | None = None,
    ) -> Connecting:
        """Open a TCP connection to ``addr`` (loop thread).  ``owner`` hears
        ``connection_made(transport)`` or ``connect_failed(reason)``, once;
        an attempt that fails at once fails before this returns.  ``name``:
        the target as its user knows it, for the reason a connect failed."""
        connecting = _Connector(self, owner, addr, tls, server_hostname, name or format_address(addr))
        connecting.start(family, bind)
        return connecting

    def listen(
        self, host: str, port: int, accept: Callable[[Incoming], None], tls: ssl.SSLContext | None = None
    ) -> Listener:
        """Bind and listen on ``host``:``port`` (any thread; ``OSError`` when it
        cannot); once ``start()``-ed, ``accept`` is called on the loop thread
        for each connection (those that come sooner wait in the backlog).
        ``tls``: the context every connection will be opened with; the
        handshake starts in ``Incoming.open``, once the server has let the
        connection in (memory BIOs here, ``start_tls`` on the asyncio
        driver; on uvloop, which reads an accepted socket at once, asyncio
        does it before ``accept``)."""
        return _Listener(self, _listen(host, port), accept)

    # -- the loop ------------------------------------------------------------

    def _run(self) -> None:
        # Inline callbacks run here: waiting for callbacks from this thread
        # would wait for itself.
        mark_callback_thread()
        poll = self._poller.poll
        handlers = self._handlers
        monotonic = self.time
        timers = self._timers
        never = math.inf
        while True:
            timeout: float = -1
            wake = never  # when the wait should end at the latest
            if self._calls or self._dirty:
                timeout = 0
            elif timers:
                before = monotonic()
                timeout = timers[0][0] - before  # epoll rounds it up to its milliseconds
                if timeout < 0.0:
                    timeout = 0.0
                elif timeout > _MAX_WAIT:
                    timeout = _MAX_WAIT  # woken early, the loop finds no timer due and waits again
                if timeout:  # after a wait of 0 the timers run, so they are never put off twice running
                    wake = before + timeout
            events = poll(timeout, _MAX_EVENTS)
            # The timers due as the wait ended run this turn, as in asyncio;
            # one that falls due while the handlers run (an inline callback
            # that holds the thread) waits for the next turn's poll, so that
            # what came meanwhile is read before a handshake or a session
            # times out.
            now = monotonic()
            for fd, mask in events:
                handler = handlers.get(fd)
                if handler is None:
                    continue  # unregistered by a handler earlier in this batch
                try:
                    handler.handle_io(mask)
                except Exception:
                    log.exception("I/O handler %r failed", handler)
            # Tested here, not in the callees: most turns have nothing to do.
            # Calls queued after the test wake the poller (call_soon).
            # A wait that ended long after it should have (the process did
            # not run: SIGSTOP, a frozen virtual machine) may have read
            # nothing of what came meanwhile: its timers wait for the next
            # turn too, whose wait of 0 reads first.
            if timers and timers[0][0] <= now and now - wake < OVERSLEPT:
                self._run_timers(now)
            if self._calls:
                self._run_calls()
            if self._dirty:
                self._flush_dirty()

    def _run_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            if timer.cancelled:
                continue
            try:
                timer.fn(*timer.args)
            except Exception:
                log.exception("timer callback %r failed", timer.fn)

    def _run_calls(self) -> None:
        with self._lock:
            calls = self._calls
            self._calls = deque()
            self._wake_pending = False
        for fn, args in calls:
            try:
                fn(*args)
            except Exception:
                log.exception("loop call %r failed", fn)

    def _flush_dirty(self) -> None:
        while self._dirty:
            dirty = self._dirty
            self._dirty = {}
            for transport in dirty:
                transport.flush()


class Cancellable(Protocol):
    """A call scheduled with ``Driver.call_later``: ``Timer`` on ``Loop``,
    an ``asyncio.TimerHandle`` on the asyncio driver."""

    def cancel(self) -> None: ...


class Driver(Protocol):
    """What the protocol's drivers (Client, Server, their links and inboxes)
    need from an event loop: a clock, calls on its thread now and later, and
    connections.  ``Loop`` is the real one (epoll on a thread of its own);
    ``tests/support/fake_driver.py`` is one with a fake clock and scripted
    peers, which runs every timer without waiting and without sockets."""

    time: Callable[[], float]

    def in_loop(self) -> bool:
        """Whether the caller runs on the driver's thread."""

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the driver's thread (thread-safe)."""

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Cancellable:
        """Run ``fn(*args)`` after ``delay`` seconds of ``time()`` (driver's thread)."""

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn(*args)`` on the driver's thread and return its result."""

    def connect(
        self,
        family: int,
        addr: tuple[Any, ...],
        bind: tuple[str, int] | None,
        owner: ConnectOwner,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        name: str | None = None,
    ) -> Connecting:
        """See ``Loop.connect``."""

    def listen(
        self, host: str, port: int, accept: Callable[[Incoming], None], tls: ssl.SSLContext | None = None
    ) -> Listener:
        """See ``Loop.listen``."""


class WriteTarget(Protocol):
    """What the drivers write to and ask of a connection's transport."""

    lock: threading.Lock
    closed: bool
    direct_ok: bool
    reading_paused: bool
    last_progress: float
    writes: int

    @property
    def out_bytes(self) -> int:
        """Bytes written and not yet taken by the kernel."""

    def write(self, data: bytes) -> None: ...
    def write_many(self, chunks: list[bytes]) -> None: ...
    def send_and_unlock(self, chunks: list[bytes]) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self, reason: str = "closed", exc: BaseException | None = None) -> None: ...
    def close_after_flush(self, linger: float = 1.0, reason: str = "closed", peer_first: bool = False) -> None: ...
    def abort(self, reason: str = "aborted") -> None: ...


class ConnectOwner(Protocol):
    """Who asked ``Loop.connect`` for a connection, and hears how it went."""

    def connection_made(self, transport: WriteTarget) -> None: ...

    def connect_failed(self, reason: str) -> None: ...

    def data_received(self, data: memoryview) -> None: ...

    def connection_lost(self, reason: str, exc: BaseException | None) -> None: ...


class Connecting(Protocol):
    """A connection attempt under way."""

    def cancel(self) -> None:
        """Abandon it (loop thread); the owner hears nothing more."""


class Listener(Protocol):
    """A listening socket on the loop."""

    port: int

    def start(self) -> None:
        """Accept from now on (any thread)."""

    def close(self) -> None:
        """Stop listening (loop thread)."""


class Incoming(Protocol):
    """A connection just accepted, before anyone owns it."""

    host: str
    peer: str

    def open(self, owner: TransportOwner, tls: ssl.SSLContext | None) -> WriteTarget:
        """Own it: a transport on the driver (``OSError`` if it is already gone)."""

    def refuse(self, frame: bytes | None) -> None:
        """Close it unowned: write ``frame`` first (plain TCP), or reset (None)."""


class _Connector:
    """A non-blocking connect on the loop: writable means it finished."""

    def __init__(
        self,
        loop: Loop,
        owner: ConnectOwner,
        addr: tuple[Any, ...],
        tls: ssl.SSLContext | None,
        server_hostname: str | None,
        name: str,
    ) -> None:
        self.loop = loop
        self.owner = owner
        self.addr = addr
        self.name = name
        self.tls = tls
        self.server_hostname = server_hostname
        self.sock: socket.socket | None = None

    def start(self, family: int, bind: tuple[str, int] | None) -> None:
        try:
            sock = self.sock = client_socket(family, bind)
            err = sock.connect_ex(self.addr)
        except OSError as exc:
            self._failed(f"cannot bind or connect: {exc.strerror or exc}")
            return
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            why = f"{errno.errorcode.get(err, err)} {os.strerror(err)}"
            self._failed(f"cannot connect to {format_address(self.addr)}: {why}")
            return
        self.loop.register(sock, WANT_WRITE, self)

    def handle_io(self, mask: int) -> None:
        sock = self.sock
        if sock is None:
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._failed(connect_failure(self.name, err))
            return
        self.sock = None  # the transport's now
        transport = Transport(
            self.loop, sock, self.owner, tls=self.tls, server_hostname=self.server_hostname, registered=True
        )
        self.owner.connection_made(transport)

    def _failed(self, reason: str) -> None:
        self.cancel()
        self.owner.connect_failed(reason)

    def cancel(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            self.loop.unregister(sock)
            sock.close()


#: How long a listener stops accepting when accept() fails for want of file
#: descriptors or memory (asyncio waits as long): the connection stays in
#: the backlog and the listener stays readable, so trying again at once
#: spins and floods the log.  Connections already in go on.
ACCEPT_PAUSE = 1.0
#: While accepts keep failing, the error is logged again this often at most.
ACCEPT_LOG_EVERY = 60.0
#: accept() errors that concern one connection, gone before it was taken
#: (accept(2): Linux passes pending network errors on): the next may be fine.
_ONE_CONNECTION_ERRORS = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
        getattr(errno, "ENONET", errno.EHOSTUNREACH),
    }
)


#: accept() errors that concern the listener: out of descriptors or memory.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def out_of_resources(exc: OSError) -> bool:
    """Whether accept() failed for want of descriptors or memory (a pause
    of ``ACCEPT_PAUSE`` is due), as asyncio's own rule says."""
    return exc.errno in _OUT_OF_RESOURCES


def one_connections_error(exc: OSError) -> bool:
    """Whether accept() failed for one connection only (the next may be
    taken), rather than for the listener (EMFILE, ENFILE, ENOBUFS, ENOMEM:
    pause ``ACCEPT_PAUSE``)."""
    return exc.errno in _ONE_CONNECTION_ERRORS


class AcceptTrouble:
    """What a listener whose accept() fails for want of resources says: the
    first failure, then at most every ``ACCEPT_LOG_EVERY`` s while they go
    on, and when an accept works again (the library's listener, mcd's
    control socket)."""

    def __init__(self, logger: logging.Logger, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._what = what
        self._clock = clock
        #: Since when accepts fail (None: they work).
        self._since: float | None = None
        self._quiet = Quiet(ACCEPT_LOG_EVERY, clock)

    def failed(self, exc: OSError) -> None:
        unsaid = self._quiet.due()
        if unsaid is None:
            return
        if self._since is None:
            self._since = self._clock()
            self._log.error(
                "cannot accept %s: %s; trying again every %g s (those already connected go on)",
                self._what,
                exc,
                ACCEPT_PAUSE,
            )
        else:
            self._log.error(
                "still cannot accept %s after %.0f s: %s%s", self._what, self._clock() - self._since, exc, more(unsaid)
            )

    def accepted(self) -> None:
        if self._since is not None:
            self._log.warning("accepting %s again, after %.1f s", self._what, self._clock() - self._since)
            self._since = None
            self._quiet = Quiet(ACCEPT_LOG_EVERY, self._clock)  # the next trouble is said at once


class _Listener:
    def __init__(self, loop: Loop, sock: socket.socket, accept: Callable[[Incoming], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.accept = accept
        self.port: int = sock.getsockname()[1]
        self._closed = False
        #: While paused after an accept() failed: the timer that resumes.
        self._paused: Timer | None = None
        self._trouble = AcceptTrouble(log, f"connections on port {self.port}", loop.time)

    def start(self) -> None:
        self.loop.call_soon(self._watch)

    def _watch(self) -> None:
        self._paused = None
        if not self._closed:
            self.loop.register(self.sock, WANT_READ, self)

    def handle_io(self, mask: int) -> None:
        for _ in range(256):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if one_connections_error(exc):
                    log.debug("a connection failed before it was accepted: %s", exc)
                    continue
                self._trouble.failed(exc)
                self.loop.unregister(self.sock)
                self._paused = self.loop.call_later(ACCEPT_PAUSE, self._watch)
                return
            self._trouble.accepted()
            self.accept(_Accepted(self.loop, sock, addr))

    def close(self) -> None:
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        self.loop.unregister(self.sock)
        self.sock.close()


class _Accepted:
    def __init__(self, loop: Loop, sock: socket.socket, addr: Any) -> None:
        self.loop = loop
        self.sock = sock
        self.host, self.peer = peer_names(addr)

    def open(self, owner: TransportOwner, tls: ssl.SSLContext | None) -> Transport:
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Transport(self.loop, self.sock, owner, tls=tls, server_side=True)

    def refuse(self, frame: bytes | None) -> None:
        sock = self.sock
        if frame is not None:
            try:
                sock.send(frame, socket.MSG_DONTWAIT)
                sock.shutdown(socket.SHUT_WR)  # the frame goes out before the close
            except OSError:
                pass
            sock.close()
            return
        reset_on_close(sock)  # a refused flood costs us no TIME_WAIT state
        sock.close()


#: Connections waiting to be accepted.  A full backlog drops SYNs, and each
#: dropped one costs its client a 1 s retransmit: thousands of clients that
#: start together (a fleet after a server restart) need room.  The kernel
#: caps it at net.core.somaxconn.
_BACKLOG = 8192


def _listen(host: str, port: int) -> socket.socket:
    if not host:
        if socket.has_dualstack_ipv6():
            sock = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=_BACKLOG)
        else:
            sock = socket.create_server(("", port), backlog=_BACKLOG)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=_BACKLOG)
    sock.setblocking(False)
    return sock


def client_socket(family: int, bind: tuple[str, int] | None) -> socket.socket:
    """A non-blocking TCP socket to connect from, bound to ``bind`` if
    given (``OSError`` when it cannot be; the socket is closed then)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if bind is not None:
            # A fixed bind_port must be reusable at once after a reconnect.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(bind)
    except OSError:
        sock.close()
        raise
    return sock


def reset_on_close(sock: socket.socket) -> None:
    """Make the coming close a reset (no FIN, no TIME_WAIT), whatever is unsent."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def peer_names(addr: Any) -> tuple[str, str]:
    """An accepted connection's peer address as (host, ``host:port``)."""
    if isinstance(addr, tuple):
        return str(addr[0]), host_port(addr[0], addr[1])
    return str(addr), str(addr)


def call_and_wait(
    call_soon: Callable[..., object], fn: Callable[..., T], args: tuple[Any, ...], timeout: float | None
) -> T:
    """Run ``fn(*args)`` on a loop's thread through its ``call_soon`` and
    wait for the result (or its exception) here: a driver's ``run_sync``."""
    future: Future[T] = Future()

    def call() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the caller, not lost
            future.set_exception(exc)

    call_soon(call)
    return future.result(timeout)


def host_port(host: object, port: object) -> str:
    """``host:port``, an IPv6 host in brackets (``[::1]:30000``): without
    them the port reads as one more group of the address."""
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def format_address(addr: tuple[Any, ...]) -> str:
    """A socket address as ``host_port`` writes it."""
    return host_port(addr[0], addr[1])


_loop: Loop | None = None
_loop_lock = threading.Lock()


def get_loop() -> Loop:
    """The process-wide loop, started on first use."""
    global _loop
    if _loop is None:
        with _loop_lock:
            if _loop is None:
                _loop = Loop()
    return _loop


def _forget_loop() -> None:
    # A forked child has its parent's loop but not the loop's thread, and
    # must not share its epoll and sockets: the child's first client or
    # server starts a loop of its own (multiprocessing's default on Linux).
    global _loop, _loop_lock
    parents, _loop, _loop_lock = _loop, None, threading.Lock()
    if parents is not None:
        parents.close_in_child()


os.register_at_fork(after_in_child=_forget_loop)


def made_before_fork(kind: str) -> StateError:
    """The error of an instance made in a parent process and used in a
    forked child: its loop, connections and threads are the parent's."""
    return StateError(
        f"this {kind} was made before the process forked and belongs to the parent; make a new {kind} in the child"
    )


def check_not_forked(driver: object, kind: str) -> None:
    """``made_before_fork`` for a threaded instance used in a forked child."""
    if isinstance(driver, Loop) and driver.pid != os.getpid():
        raise made_before_fork(kind)


class TransportOwner(Protocol):
    def data_received(self, data: memoryview) -> None:
        """``data`` views the loop's read buffer: valid during this call only."""

    def connection_lost(self, reason: str, exc: BaseException | None) -> None: ...


class Transport:
    """A connected non-blocking TCP socket driven by the loop.

    Loop thread only, but for :meth:`send_and_unlock`.  ``write`` queues; the loop
    flushes dirty transports once per iteration.  ``close_after_flush``
    closes once everything queued has been written (or ``linger`` seconds
    have passed).  The owner hears ``connection_lost`` exactly once, however
    the transport closed.

    ``lock`` guards the outgoing side (the queue, the socket's writes and its
    close) so that another thread may write straight to an idle socket
    instead of waking the loop: a request then costs one thread hand-off
    fewer.  It is never held while the owner is called.
    """

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        owner: TransportOwner,
        tls: ssl.SSLContext | None = None,
        server_side: bool = False,
        server_hostname: str | None = None,
        registered: bool = False,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.owner = owner
        self.closed = False
        self.lock = threading.Lock()
        self._out: deque[bytes | memoryview] = deque()
        self.out_bytes = 0
        self._want_write = False
        #: Reading paused by the owner (its application is behind): the
        #: peer's sends then wait in TCP, not in our memory.
        self.reading_paused = False
        self._closing = False
        self._peer_first = False
        self._linger_timer: Timer | None = None
        self._close_reason = ""
        #: Calls that handed bytes over (``write``, ``write_many``,
        #: ``send_and_unlock``): the heartbeat reads it to tell a busy link from an
        #: idle one, MESSAGE frames included.
        self.writes = 0
        self._tls: _TLS | None = None
        #: When the queued bytes last moved into the kernel (or started queueing).
        self.last_progress = self.loop.time()
        # A socket already registered (for its connect to finish) is switched
        # over: one epoll_ctl instead of two.
        (loop.modify if registered else loop.register)(sock, WANT_READ, self)
        #: Whether other threads may write with :meth:`send_and_unlock` (not over
        #: TLS, whose state belongs to the loop).
        self.direct_ok = tls is None
        if tls is not None:
            self._tls = _TLS(tls, server_side, server_hostname)
            self._tls_step()  # a client's ClientHello goes out now

    def write(self, data: bytes) -> None:
        if self.closed or self._closing or not data:
            return
        self.writes += 1
        if self._tls is not None:
            self._tls_write(data)
            return
        self._queue([data], len(data))
        self.loop.mark_dirty(self)

    def write_many(self, chunks: list[bytes]) -> None:
        if self.closed or self._closing:
            return
        self.writes += 1
        if self._tls is not None:
            self._tls_write(b"".join(chunks))
            return
        self._queue(chunks, sum(map(len, chunks)))
        self.loop.mark_dirty(self)

    def _queue(self, chunks: list[bytes] | list[bytes | memoryview], size: int) -> None:
        with self.lock:
            if not self._out:
                self.last_progress = self.loop.time()
            self._out.extend(chunks)
            self.out_bytes += size

    def send_and_unlock(self, chunks: list[bytes]) -> None:
        """Write ``chunks`` from any thread that took ``lock`` (and release
        it): straight into the socket when nothing else is queued, else
        behind what is.  Nothing is written once the transport is closing
        (a session's resend buffer still has the messages)."""
        try:
            if self.closed or self._closing:
                return
            self.writes += 1
            if self._out or len(chunks) > _IOV_MAX:  # bytes ahead of ours wait: keep the order
                self._out.extend(chunks)
                self.out_bytes += sum(map(len, chunks))
                if len(self._out) == len(chunks):
                    self.loop.call_soon(self.flush)
                return
            try:
                sent = self.sock.sendmsg(chunks)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the loop's flush meets the error again and closes
            size = len(chunks[0]) if len(chunks) == 1 else sum(map(len, chunks))
            if sent == size:
                return  # the usual case: all of it
            # The kernel is full: the rest waits in the queue, as flush() leaves
            # it, and the loop waits for room.
            self.last_progress = self.loop.time()
            self._out.extend(chunks)
            self.out_bytes += size
            self._consumed(sent)
            self.loop.call_soon(self.flush)
        finally:
            self.lock.release()

    # -- TLS, through memory BIOs: the socket stays plain and non-blocking --------

    @property
    def tls_peer_certificate(self) -> dict[str, Any] | None:
        if self._tls is None or not self._tls.ready:
            return None
        return self._tls.obj.getpeercert()

    def _tls_write(self, data: bytes) -> None:
        tls = self._tls
        assert tls is not None
        if not tls.ready:
            tls.backlog.append(data)
            return
        try:
            tls.obj.write(data)
        except ssl.SSLError as exc:
            self.close(f"TLS error: {_tls_reason(exc, not tls.obj.server_side)}", exc)
            return
        self._tls_flush()

    def _tls_flush(self) -> None:
        tls = self._tls
        assert tls is not None
        raw = tls.outgoing.read()
        if raw:
            self._queue([raw], len(raw))
            self.loop.mark_dirty(self)

    def _tls_step(self) -> bool:
        """Drive the handshake; False when the transport closed."""
        tls = self._tls
        assert tls is not None
        if not tls.ready:
            try:
                tls.obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLError, ssl.CertificateError) as exc:
                self._tls_flush()  # the alert, if any, tells the peer why
                self.flush()
                self.close(f"TLS handshake failed: {_tls_reason(exc, not tls.obj.server_side)}", exc)
                return False
            else:
                tls.ready = True
                backlog, tls.backlog = tls.backlog, []
                for data in backlog:
                    tls.obj.write(data)
        self._tls_flush()
        return True

    def _tls_received(self, data: bytes | memoryview) -> None:
        tls = self._tls
        assert tls is not None
        tls.incoming.write(data)
        if not self._tls_step() or not tls.ready:
            return
        buf = self.loop.read_buffer
        while not self.closed:
            try:
                # The ciphertext is in the BIO by now, so the buffer is free.
                # With a buffer, read() returns a count (typeshed says bytes).
                n = cast(int, tls.obj.read(_RECV_SIZE, buf))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.close("connection closed by peer (TLS close_notify)")
                return
            except ssl.SSLError as exc:
                self.close(f"TLS error: {_tls_reason(exc, not tls.obj.server_side)}", exc)
                return
            if not n:
                break
            self.owner.data_received(self.loop.read_view[:n])
        if not self.closed:
            self._tls_flush()  # e.g. TLS 1.3 session tickets, key updates

    def handle_io(self, mask: int) -> None:
        if mask & READABLE and not self.closed:
            self._read()
        if mask & WRITABLE and not self.closed:
            self.flush()

    def _read(self) -> None:
        buf = self.loop.read_buffer
        view = self.loop.read_view
        for _ in range(_READS_PER_EVENT):
            try:
                n = self.sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lost(_describe_oserror(exc), exc)
                return
            if not n:
                self._lost("connection closed by peer", None)
                return
            if self._closing:
                continue  # we are leaving; what the peer says no longer matters
            if self._tls is not None:
                self._tls_received(view[:n])
            else:
                self.owner.data_received(view[:n])
            if self.closed or self.reading_paused:
                return
            if n < _RECV_SIZE:
                return

    def pause_reading(self) -> None:
        """Stop reading until :meth:`resume_reading` (loop thread)."""
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.loop.modify(self.sock, self._interest(), self)

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.loop.modify(self.sock, self._interest(), self)

    def _interest(self) -> int:
        return (0 if self.reading_paused else WANT_READ) | (WANT_WRITE if self._want_write else 0)

    def flush(self) -> None:
        out = self._out
        error: OSError | None = None
        with self.lock:
            while out and not self.closed:
                chunks = list(itertools.islice(out, _IOV_MAX))
                try:
                    sent = self.sock.sendmsg(chunks)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    error = exc
                    break
                if sent:
                    self.last_progress = self.loop.time()
                    self._consumed(sent)
        if error is not None:
            self._lost(_describe_oserror(error), error)
            return
        if self.closed:
            return
        if out and not self._want_write:
            self._want_write = True
            self.loop.modify(self.sock, self._interest(), self)
        elif not out:
            if self._want_write:
                self._want_write = False
                self.loop.modify(self.sock, self._interest(), self)
            if self._closing and not self._peer_first:
                self.close(self._close_reason)

    def _consumed(self, sent: int) -> None:
        """``sent`` bytes from the head of the queue went into the kernel (lock held)."""
        self.out_bytes -= sent
        out = self._out
        while sent:
            head = out[0]
            if sent >= len(head):
                sent -= len(head)
                out.popleft()
            else:
                out[0] = memoryview(head)[sent:]
                sent = 0

    def close_after_flush(self, linger: float = 1.0, reason: str = "closed", peer_first: bool = False) -> None:
        """Close once the queued bytes are written, or after ``linger`` seconds.

        With ``peer_first``, once they are written wait (up to ``linger``)
        for the peer to close first: the side that closes first keeps the
        connection in TIME_WAIT for a minute, and a client that leaves it on
        its side uses up local ports when it connects often.
        """
        if self.closed or self._closing:
            return
        self._closing = True
        self._close_reason = reason
        self._peer_first = peer_first
        if not self._out and not peer_first:
            self.close(reason)
            return
        self.loop.mark_dirty(self)
        self._linger_timer = self.loop.call_later(linger, self.close, reason)

    def close(self, reason: str = "closed", exc: BaseException | None = None) -> None:
        """Close now; the owner hears ``connection_lost(reason, exc)`` once."""
        if self.closed:
            return
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self.loop.unregister(self.sock)
        with self.lock:  # not while another thread is in send_now: the fd could be reused
            self.closed = True
            self._out.clear()
            self.out_bytes = 0
            try:
                self.sock.close()
            except OSError:  # pragma: no cover - close of a socket cannot usefully fail
                pass
        self.owner.connection_lost(reason, exc)

    def abort(self, reason: str = "aborted") -> None:
        """Close at once with a reset (no FIN), dropping what is queued."""
        if not self.closed:
            reset_on_close(self.sock)
            self.close(reason)

    def _lost(self, reason: str, exc: BaseException | None) -> None:
        self.close(self._close_reason if self._closing else reason, exc)


class _TLS:
    """One connection's TLS state: an SSLObject between two memory BIOs."""

    def __init__(self, context: ssl.SSLContext, server_side: bool, server_hostname: str | None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.ready = False
        self.backlog: list[bytes] = []


#: What OpenSSL says of a certificate that strict checking refuses (Python
#: 3.13 turned it on by default: VERIFY_X509_STRICT), in lower case.
_STRICT_REFUSALS = (
    "key usage extension",
    "authority key identifier",
    "subject key identifier",
    "not marked critical",
    "must be x.509 v3",
)


#: What a failed handshake most likely means, for whoever reads it on each
#: side, by OpenSSL's reason and ``client_side``: the alert names the
#: symptom, not the setting to change.
_TLS_HINTS = {
    ("WRONG_VERSION_NUMBER", True): (
        # What came back is no TLS record: the commonest cause by far.
        "the server does not speak TLS: turn tls off, or give the server tls_cert and tls_key"
    ),
    ("TLSV13_ALERT_CERTIFICATE_REQUIRED", True): "the server requires a client certificate: set tls_cert and tls_key",
    ("PEER_DID_NOT_RETURN_A_CERTIFICATE", False): (
        "this server's tls_ca requires a client certificate: give the client tls_cert and tls_key"
    ),
    ("TLSV1_ALERT_UNKNOWN_CA", True): (
        "the server does not trust this client's certificate: the CA in the server's tls_ca must have signed tls_cert"
    ),
    ("TLSV1_ALERT_UNKNOWN_CA", False): (
        "the client does not trust this server's certificate: its tls_ca must be the CA that signed tls_cert here"
    ),
}
#: What a certificate no CA of ours signed means, by ``client_side``.
_UNKNOWN_ISSUER = ("self-signed certificate in certificate chain", "unable to get local issuer certificate")
_UNKNOWN_ISSUER_HINTS = {
    True: "tls_ca must be the CA that signed the server's certificate",
    False: "the client's certificate is not signed by the CA in this server's tls_ca",
}


def _tls_reason(exc: BaseException, client_side: bool = False) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = str(exc.verify_message)
        failed = f"certificate verify failed: {message}"
        if any(words in message.lower() for words in _STRICT_REFUSALS):
            # Certificates made by hand often lack these; the fix is theirs.
            return (
                f"{failed} (Python 3.13 and later check certificates strictly: docs/SECURITY.md,"
                ' "Certificates", says what a CA and a certificate need)'
            )
        return f"{failed} ({_UNKNOWN_ISSUER_HINTS[client_side]})" if message in _UNKNOWN_ISSUER else failed
    reason = getattr(exc, "reason", None)
    said = str(reason or exc).lower().replace("_", " ")
    hint = _TLS_HINTS.get((str(reason), client_side))
    return f"{said} ({hint})" if hint else said


def connect_failure(name: str, err: int) -> str:
    """Why a connection to ``name`` was not made, from its errno (both drivers)."""
    return f"cannot connect to {name}: {os.strerror(err)}"


def _describe_oserror(exc: OSError) -> str:
    if exc.errno == errno.ECONNRESET:
        return "connection reset by peer"
    if exc.errno == errno.EPIPE:
        return "broken pipe (peer closed the connection)"
    if exc.errno == errno.ETIMEDOUT:
        return "connection timed out"
    return f"socket error: {exc.strerror or exc}"
