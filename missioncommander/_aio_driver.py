"""A driver on the running asyncio loop: the core's timers and connections
through ``asyncio.Protocol`` (no thread, no ``add_reader``), so it runs on
every event loop, uvloop included.

``AsyncioDriver`` is the ``_loop.Driver`` the asyncio API (``aio.py``) hands
to a ``Client`` or ``Server``: their links, sessions and rules are the same
code as with the threaded driver; only the transport below differs.
``_AioTransport`` is a ``WriteTarget`` over an asyncio transport: writes of
one loop turn are coalesced into one ``writelines`` (every ``FLUSH_AT``
bytes while the turn lasts); TLS is asyncio's own
(the handshake done by ``create_connection`` and ``create_server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ._loop import (
    _BACKLOG,
    ACCEPT_PAUSE,
    OVERSLEPT,
    AcceptTrouble,
    Connecting,
    ConnectOwner,
    Incoming,
    Listener,
    TransportOwner,
    _describe_oserror,
    _listen,
    _tls_reason,
    call_and_wait,
    client_socket,
    connect_failure,
    format_address,
    made_before_fork,
    out_of_resources,
    peer_names,
    reset_on_close,
)

log = logging.getLogger("missioncommander.aio")


def _task_of_loop() -> Callable[[asyncio.AbstractEventLoop], Any] | None:
    """Python 3.11's ``asyncio.get_running_loop()`` makes a ``getpid()``
    system call each time (to notice a fork), a few percent of a streamed
    ``send()``; 3.12 dropped it.  On 3.11 this is asyncio's map of the task
    each loop runs right now (C), which ``bind`` asks first; elsewhere, and
    in a forked child, None (``bind`` asks asyncio)."""
    if sys.version_info >= (3, 12):
        return None
    tasks: dict[asyncio.AbstractEventLoop, Any] = getattr(asyncio.tasks, "_current_tasks", {})
    return tasks.get


_task_of = _task_of_loop()


def _forked() -> None:
    global _task_of
    _task_of = None  # a task the parent ran at the fork is no task of the child's


os.register_at_fork(after_in_child=_forked)

T = TypeVar("T")


class _LateTimer:
    """A timer that, fired far late, fires again a moment later instead.

    asyncio's loop runs the timers due after a wait before it reads what
    the wait brought, so after the process stood still (SIGSTOP, a frozen
    virtual machine) a handshake or a session would time out with its
    HELLO unread.  Put off once by a millisecond (a positive delay, so
    that on uvloop too a poll comes between), the timer runs after the
    next read, as the threaded loop's do."""

    __slots__ = ("handle",)

    handle: asyncio.TimerHandle

    def fire(self, loop: asyncio.AbstractEventLoop, due: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if loop.time() - due > OVERSLEPT:
            self.handle = loop.call_later(0.001, fn, *args)
        else:
            fn(*args)

    def cancel(self) -> None:
        self.handle.cancel()


class AsyncioDriver:
    """The driver of one asyncio loop (see the module docstring).

    Made outside the loop, it binds to the running loop on first use
    (``bind``); every object it drives belongs to that loop from then on."""

    def __init__(self, kind: str) -> None:
        #: What the driver serves (``AsyncClient``, ``AsyncServer``), for errors.
        self.kind = kind
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._pid = 0
        #: asyncio's loops run on ``time.monotonic``; the driver's clock is
        #: that one even before it is bound, so deadlines taken early hold.
        self.time: Callable[[], float] = time.monotonic
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Calls made before the first use bound a loop (a new client's
        #: settings emit a statechange for its subscribers): run, in order,
        #: on the loop it binds to.  Setting a setting does not bind: the
        #: object may be configured outside any loop and used in one later.
        self._parked: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._parking = threading.Lock()

    # -- binding ------------------------------------------------------------------

    def bind(self) -> asyncio.AbstractEventLoop:
        """Bind to the running loop (from a coroutine); ``RuntimeError`` if
        this driver already runs on another loop (``StateError`` in a child
        forked since)."""
        loop, task_of = self._loop, _task_of
        if (
            task_of is not None
            and loop is not None
            and task_of(loop) is not None
            and threading.get_ident() == self._thread
        ):
            # A task of the bound loop runs, on the thread the loop ran on
            # when bound: this call is in it (a loop runs on one thread).
            return loop
        running = asyncio.get_running_loop()
        if self._loop is None:
            with self._parking:
                if self._loop is None:
                    self._loop = running
                    self._thread = threading.get_ident()
                    self._pid = os.getpid()
                parked, self._parked = self._parked, []
            for fn, args in parked:
                running.call_soon(fn, *args)
        if self._loop is not running:
            if self._pid != os.getpid():
                # A child forked while the loop ran, on a loop of its own.
                raise made_before_fork(self.kind)
            if self._loop.is_closed():
                # The common way here: a second asyncio.run() (a notebook, a
                # test per run) with an object the first one used.
                raise RuntimeError(
                    "this object was used on an event loop that has closed (an earlier asyncio.run()?): it lives "
                    "and ends on one loop; make a new one on this loop (and leave it with async with)"
                )
            raise RuntimeError("this object belongs to another event loop")
        return running

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("not bound to an event loop yet: use it from a coroutine first")
        return self._loop

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the driver keeps a reference to until it ends."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the Driver protocol ---------------------------------------------------------

    def in_loop(self) -> bool:
        return threading.get_ident() == self._thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            with self._parking:
                if self._loop is None:
                    self._parked.append((fn, args))
                    return
            loop = self._loop
        if self.in_loop():
            loop.call_soon(fn, *args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> _LateTimer:
        loop = self.loop
        timer = _LateTimer()
        due = loop.time() + delay
        timer.handle = loop.call_at(due, timer.fire, loop, due, fn, args)
        return timer

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        if self.in_loop():
            return fn(*args)
        return call_and_wait(self.loop.call_soon_threadsafe, fn, args, timeout)

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
        return _Connector(self, family, addr, bind, owner, tls, server_hostname, name or format_address(addr))

    def listen(
        self, host: str, port: int, accept: Callable[[Incoming], None], tls: ssl.SSLContext | None = None
    ) -> Listener:
        sock = _listen(host, port)
        return _AioListener(self, _PausingSocket(sock.family, sock.type, sock.proto, fileno=sock.detach()), accept, tls)


class _OutOfResources(OSError):
    """accept() failed for want of descriptors or memory, and the listener
    has said so in its own words (``AcceptTrouble``)."""


def _not_said_already(record: logging.LogRecord) -> bool:
    """asyncio's default exception handler logs each accept() failure with
    a traceback, once a second while descriptors are out: for an expected
    trouble the listener reports cleanly itself.  Only records carrying
    the listener's own ``_OutOfResources`` are dropped, so nothing else
    asyncio says is hidden; a loop's own exception handler still sees them."""
    exc_info = record.exc_info
    return not (exc_info and isinstance(exc_info[1], _OutOfResources))


#: Bytes written in one loop turn that go out at once rather than at the
#: turn's end: enough for few system calls, little enough that the peer
#: starts on a burst while the rest of it is being made.
FLUSH_AT = 64 * 1024


class _AioTransport(asyncio.Protocol):
    """A ``WriteTarget`` over an asyncio transport, and the asyncio protocol
    that feeds its owner.  Loop thread only."""

    def __init__(self, driver: AsyncioDriver, owner: TransportOwner | None = None) -> None:
        self.driver = driver
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        #: Only for the ``WriteTarget`` contract: nothing writes from another thread here.
        self.lock = threading.Lock()
        self.closed = False
        #: A lone message may be written at once (``send_and_unlock``); a
        #: burst is queued and written at the end of the loop's turn (or
        #: every ``FLUSH_AT`` bytes while the turn lasts).
        #: Both happen on the loop: ``send()`` runs there.
        self.direct_ok = True
        self.reading_paused = False
        self.writes = 0
        self.last_progress = driver.time()
        #: Written during this loop turn (or before the transport is ready):
        #: one ``writelines`` at the end of the turn (or at ``FLUSH_AT``
        #: bytes) takes them all.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_scheduled = False
        self._closing = False
        self._peer_first = False
        self._close_reason = ""
        self._linger: asyncio.TimerHandle | None = None
        #: Told of ``connection_made`` (once): the connector's owner, or the
        #: listener, which finds the connection its owner.
        self.on_made: Callable[[_AioTransport], None] | None = None
        #: Accepted by a TLS listener: nothing is read until the server has
        #: let the connection in and ``start_tls`` takes over (so a refused
        #: flood costs no handshakes, as on the threaded driver).
        self.tls_later = False
        #: While the TLS handshake runs: the plain transport under it, and
        #: the task that upgrades it (``transport`` is None meanwhile, so
        #: what is written waits in ``_pending``).
        self._raw: asyncio.Transport | None = None
        self._handshake: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the methods but not the base class.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets TCP_NODELAY only on sockets made with proto
            # IPPROTO_TCP, not on ours (proto 0): without it, Nagle holds
            # each small write back until the peer's delayed ACK (20 ms and more).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.reading_paused or self.tls_later:
            self.transport.pause_reading()
        # The owner hears of it now, before any data_received: uvloop may
        # deliver the peer's first bytes before create_connection returns.
        made, self.on_made = self.on_made, None
        if made is not None:
            made(self)

    def data_received(self, data: bytes) -> None:
        if self._closing or self.closed or self.owner is None:
            return  # we are leaving; what the peer says no longer matters
        self.owner.data_received(memoryview(data))

    def eof_received(self) -> bool:
        self._lost("connection closed by peer", None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._lost("connection closed by peer", None)
        else:
            self._lost(_describe(exc), exc)

    def pause_writing(self) -> None:
        pass  # the buffer's size is read as out_bytes; the heartbeat judges a peer that does not read

    def resume_writing(self) -> None:
        self.last_progress = self.driver.time()

    # -- TLS on an accepted connection ------------------------------------------------

    def start_tls(self, context: ssl.SSLContext) -> None:
        """Do the server's side of the TLS handshake; what the owner writes
        meanwhile is sent once it is done."""
        raw, self.transport = self.transport, None
        self._raw = raw
        self._handshake = self.driver.spawn(self._upgrade(raw, context))

    async def _upgrade(self, raw: asyncio.Transport | None, context: ssl.SSLContext) -> None:
        assert raw is not None
        try:
            # No timeout of asyncio's own: the server's handshake_timeout
            # closes a connection that takes too long (and cancels this).
            upgraded = await self.driver.loop.start_tls(raw, self, context, server_side=True)
        except asyncio.CancelledError:
            return  # closed meanwhile: start_tls closed the transport
        except Exception as exc:  # a failed handshake: the owner hears why
            self._raw = self._handshake = None
            self._lost(_describe(exc), exc)
            return
        self._raw = self._handshake = None
        if upgraded is None or self.closed:
            return
        self.transport = upgraded
        if self.reading_paused:
            upgraded.pause_reading()
        if self._pending:
            self._flush()
        elif self._closing and not self._peer_first:
            self._close_transport()

    # -- WriteTarget ----------------------------------------------------------------

    @property
    def out_bytes(self) -> int:
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return self._pending_bytes + buffered

    def write(self, data: bytes) -> None:
        if data:
            self.write_many([data])

    def write_many(self, chunks: list[bytes]) -> None:
        if self.closed or self._closing:
            return
        self.writes += 1
        self._pending.extend(chunks)
        self._pending_bytes += sum(map(len, chunks))
        if self._pending_bytes >= FLUSH_AT and self.transport is not None:
            # A coroutine that sends without awaiting anything that waits
            # ends the loop's turn only once the send queue is full: its
            # peer would get nothing until then, and then everything at once.
            self._write_pending()
        else:
            self._schedule_flush()

    def send_and_unlock(self, chunks: list[bytes]) -> None:
        """A lone message (``_link.route_locked``): into the socket now,
        sparing a loop turn, unless bytes ahead of it wait (order holds)."""
        try:
            if self.closed or self._closing:
                return
            transport = self.transport
            if transport is None or self._pending:
                self.write_many(chunks)
                return
            self.writes += 1
            if not transport.get_write_buffer_size():
                self.last_progress = self.driver.time()
            if len(chunks) == 1:
                transport.write(chunks[0])  # a lone frame: asyncio's writelines would join a copy of it
            else:
                transport.writelines(chunks)
        finally:
            self.lock.release()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.driver.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.transport is None or self.closed:
            return
        if self._pending:
            self._write_pending()
        if self._closing and not self._peer_first:
            self._close_transport()

    def _write_pending(self) -> None:
        transport = self.transport
        assert transport is not None
        if not transport.get_write_buffer_size():
            self.last_progress = self.driver.time()
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        transport.writelines(pending)

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def close_after_flush(self, linger: float = 1.0, reason: str = "closed", peer_first: bool = False) -> None:
        """Close once what is queued is written (asyncio's own close flushes
        its buffer first), or after ``linger`` seconds; with ``peer_first``
        wait that long for the peer to close first (TIME_WAIT stays there)."""
        if self.closed or self._closing:
            return
        self._closing = True
        self._close_reason = reason
        self._peer_first = peer_first
        self._linger = self.driver.loop.call_later(linger, self._linger_over)
        if self._pending:
            self._schedule_flush()
        elif not peer_first:
            self._close_transport()

    def _linger_over(self) -> None:
        self._linger = None
        if not self.closed:
            if self.transport is not None:
                self.transport.abort()
            self._lost(self._close_reason, None)

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close(self, reason: str = "closed", exc: BaseException | None = None) -> None:
        """Close now (what asyncio still buffers is written first); the owner
        hears ``connection_lost`` at once."""
        if self.closed:
            return
        if self._pending and self.transport is not None:
            self._flush()
        self._close_transport()
        self._lost(reason, exc)

    def abort(self, reason: str = "aborted") -> None:
        """Close at once with a reset (no FIN), dropping what is queued."""
        if self.closed:
            return
        self._pending.clear()
        self._pending_bytes = 0
        target = self.transport or self._raw
        if target is not None:
            _reset(target)
        self._lost(reason, None)

    def _lost(self, reason: str, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        handshake, self._handshake = self._handshake, None
        if handshake is not None and not handshake.done():
            handshake.cancel()  # start_tls closes the plain transport
        self._raw = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.connection_lost(self._close_reason if self._closing else reason, exc)


class _Connector:
    """A connection attempt on the loop: TCP, then TLS if asked."""

    def __init__(
        self,
        driver: AsyncioDriver,
        family: int,
        addr: tuple[Any, ...],
        bind: tuple[str, int] | None,
        owner: ConnectOwner,
        tls: ssl.SSLContext | None,
        server_hostname: str | None,
        name: str,
    ) -> None:
        self.driver = driver
        self.owner = owner
        self.name = name
        self.sock: socket.socket | None = None
        self.task = driver.spawn(self._run(family, addr, bind, tls, server_hostname))

    async def _run(
        self,
        family: int,
        addr: tuple[Any, ...],
        bind: tuple[str, int] | None,
        tls: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> None:
        loop = self.driver.loop
        protocol = _AioTransport(self.driver, self.owner)
        protocol.on_made = self._made
        tcp_up = False
        try:
            sock = self.sock = client_socket(family, bind)
            await loop.sock_connect(sock, addr)
            tcp_up = True
            await loop.create_connection(
                lambda: protocol, sock=sock, ssl=tls, server_hostname=server_hostname if tls is not None else None
            )
        except asyncio.CancelledError:
            self._close_sock()
            raise
        except (OSError, ssl.SSLError) as exc:
            self._close_sock()
            if tcp_up:
                self.owner.connect_failed(_describe(exc, client_side=True))
            else:
                # asyncio's own text ("Connect call failed ('127.0.0.1', 1)")
                # names the address, not the cause: the errno does.
                err = getattr(exc, "errno", None)
                self.owner.connect_failed(
                    connect_failure(self.name, err) if err else f"cannot connect to {self.name}: {exc}"
                )
            return

    def _made(self, protocol: _AioTransport) -> None:
        self.sock = None  # the transport's now
        self.owner.connection_made(protocol)

    def _close_sock(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def cancel(self) -> None:
        """The owner hears nothing more; the socket closes as the task ends
        (closing it under a pending ``sock_connect`` would leave asyncio a
        stale descriptor)."""
        self.task.cancel()


class _PausingSocket(socket.socket):
    """The listening socket asyncio serves, with an accept() that, once it
    has failed for want of descriptors or memory, says no connection waits
    until ``ACCEPT_PAUSE`` is half over.  asyncio then stops accepting and
    tries again after ``ACCEPT_PAUSE`` (1 s), but until CPython fixed it
    (gh-151615) it went on accepting in that same wake-up, up to its backlog
    (8,192 here) times: a traceback logged and a retry scheduled for each, a
    spin of thousands of lines a second while descriptors ran out.  The
    trouble is said as the threaded listener says it (``AcceptTrouble``:
    once, then once a minute, and when accepting works again) rather than
    by asyncio's traceback a second.  uvloop accepts in libuv and never
    calls this."""

    __slots__ = ("_failed_at", "trouble")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failed_at = -ACCEPT_PAUSE
        self.trouble = AcceptTrouble(log, f"connections on port {self.getsockname()[1]}")
        logging.getLogger("asyncio").addFilter(_not_said_already)  # once: a Filterer keeps no duplicates

    def accept(self) -> tuple[socket.socket, Any]:
        now = time.monotonic()
        if now - self._failed_at < ACCEPT_PAUSE / 2:
            raise BlockingIOError(errno.EAGAIN, "accepting paused after running out of resources")
        try:
            accepted = super().accept()
        except OSError as exc:
            if not out_of_resources(exc):
                raise
            # the same errno, on which asyncio pauses accepting
            self._failed_at = now
            self.trouble.failed(exc)
            raise _OutOfResources(exc.errno, exc.strerror) from None
        self.trouble.accepted()
        return accepted


class _AioListener:
    """A listening socket served by ``loop.create_server`` once started."""

    def __init__(
        self,
        driver: AsyncioDriver,
        sock: socket.socket,
        accept: Callable[[Incoming], None],
        tls: ssl.SSLContext | None,
    ) -> None:
        self.driver = driver
        self.sock = sock
        self.accept = accept
        self.tls = tls
        self.port: int = sock.getsockname()[1]
        self._server: asyncio.AbstractServer | None = None
        self._closed = False
        #: The TLS handshake waits for the server's admission (see ``_serve``).
        self.tls_later = False

    def start(self) -> None:
        self.driver.call_soon(self._start)

    def _start(self) -> None:
        if not self._closed:
            self.driver.spawn(self._serve())

    async def _serve(self) -> None:
        # create_server listens again with its own backlog (100 unless told):
        # a fleet of clients arriving at once would overflow it, and each
        # dropped SYN costs its client a retransmit (1 s, then 3, 7, 15, 31).
        loop = self.driver.loop
        # Plain TCP even for TLS where the loop reads nothing before it is
        # asked to: the handshake then starts once the server has let the
        # connection in (``_AioIncoming.open``), so a flood refused by the
        # rate limit costs no handshakes.  uvloop reads an accepted socket
        # even when connection_made paused it, and the ClientHello would be
        # lost to start_tls: there asyncio does the handshake first.
        self.tls_later = self.tls is not None and isinstance(loop, asyncio.BaseEventLoop)
        ssl_now = None if self.tls_later else self.tls
        server = await loop.create_server(self._protocol, sock=self.sock, ssl=ssl_now, backlog=_BACKLOG)
        self._server = server
        if self._closed:  # closed while create_server ran
            server.close()

    def _protocol(self) -> _AioTransport:
        protocol = _AioTransport(self.driver)
        protocol.tls_later = self.tls_later
        protocol.on_made = lambda made: self.accept(_AioIncoming(self.driver, made))
        return protocol

    def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        else:
            self.sock.close()


class _AioIncoming:
    """A connection just accepted: its protocol is ready, nobody owns it yet."""

    def __init__(self, driver: AsyncioDriver, protocol: _AioTransport) -> None:
        self.driver = driver
        self.protocol = protocol
        assert protocol.transport is not None
        self.host, self.peer = peer_names(protocol.transport.get_extra_info("peername"))

    def open(self, owner: TransportOwner, tls: ssl.SSLContext | None) -> _AioTransport:
        """Own it, and start the TLS handshake with ``tls`` (the listener's)
        unless asyncio did it before the connection was accepted."""
        protocol = self.protocol
        protocol.owner = owner
        if tls is not None and protocol.tls_later:
            protocol.start_tls(tls)
        return protocol

    def refuse(self, frame: bytes | None) -> None:
        transport = self.protocol.transport
        assert transport is not None
        if frame is not None:
            transport.write(frame)
            transport.close()  # the frame goes out before the FIN
            return
        _reset(transport)  # a refused flood costs us no TIME_WAIT state


def _reset(transport: asyncio.Transport) -> None:
    """Close ``transport`` at once with a reset (no FIN, no TIME_WAIT)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        reset_on_close(sock)
    transport.abort()


def _describe(exc: BaseException, client_side: bool = False) -> str:
    """The reason a connection failed, in the threaded driver's words."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {_tls_reason(exc, client_side)}"
    if isinstance(exc, OSError):
        return _describe_oserror(exc)
    return str(exc) or type(exc).__name__
