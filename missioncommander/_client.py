"""``Client``: connects, keeps its session across broken connections, reconnects."""

from __future__ import annotations

import atexit
import functools
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from . import _config as cfg
from . import _resolver
from ._auth import auth_proof, new_nonce, proof_matches
from ._callbacks import Callbacks
from ._delivery import deliver
from ._errors import (
    ConnectError,
    ConnectionRefusedByServer,
    ConnectTimeout,
    MessageTooLarge,
    QueueFullError,
    StateError,
    loop_blocked,
)
from ._events import (
    TERMINAL_CODES,
    AckReceived,
    ByeReceived,
    Challenge,
    ErrorCode,
    ErrorReceived,
    Event,
    MessageReceived,
    PingReceived,
    PongReceived,
    Role,
    ShutdownReceived,
    Welcome,
)
from ._frames import (
    DEFAULT_MAX_FRAME_SIZE,
    MESSAGE_OVERHEAD,
    MIN_MAX_FRAME_SIZE,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    REQUEST_VERSION,
)
from ._inbox import Inbox
from ._link import Link, route_locked
from ._loop import Cancellable, Connecting, Driver, Loop, WriteTarget, check_not_forked, get_loop, host_port
from ._message import Message, not_a_message
from ._quiet import Chorus
from ._reconnect import Step, after_failure, reconnect_delay, retry_hint
from ._requests import Answers, ReplyWaiter, Requests, of_its_session, reply_body
from ._session import SendSession
from ._state import ClientState, ClientStateTransition
from ._stats import Counters, session_figures
from ._stray import warn_stray_attributes
from ._streams import refuse_unqueueable
from ._tls import client_context

log = logging.getLogger("missioncommander.client")

# What each client of a process says when its server comes and goes: said
# by the first few, counted for the rest (``Chorus``), so that mcd hosting
# a thousand clients does not write a thousand lines of each.
_SAY_CONNECT_FAILED = Chorus(log, "connect failed")
_SAY_ATTEMPT_FAILED = Chorus(log, "connect attempt failed")
_SAY_RETRYING = Chorus(log, "reconnecting in ...")
_SAY_GAVE_UP = Chorus(log, "giving up reconnecting")
_SAY_SESSION_LOST = Chorus(log, "the server no longer knows our session")
_SAY_CONNECTED = Chorus(log, "connected")
_SAY_ENDED = Chorus(log, "ended by the server")
_SAY_UNSENT = Chorus(log, "unsent messages dropped")
_SAY_LOST = Chorus(log, "connection lost; reconnecting")


def acknowledged_nothing(waited: float) -> str:
    """What a send that waited ``waited`` seconds for room in a full queue
    in vain says (both APIs)."""
    return f"send queue full: the server acknowledged nothing for {waited:g} s"


#: A Client's events and what their callbacks are called with.
CLIENT_EVENTS: dict[str, tuple[str, ...]] = {
    "connect": (),
    "disconnect": (),
    "reconnect": ("client_id",),
    "message": ("message",),
    "servershutdown": (),
    "statechange": ("transition",),
    "request": ("message",),
    "sessionlost": ("reason",),
}

S = ClientState
NEEDS_INIT = S.STATE_NEEDS_INIT | S.STATE_NOT_CONNECTED
IDLE = S.STATE_OK | S.STATE_NOT_CONNECTED
CONNECTING = S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTING
CONNECTED = S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTED
CONNECT_FAILED = S.STATE_OK | S.STATE_NOT_CONNECTED | S.STATE_CONNECT_FAILED
RECONNECTING = S.STATE_OK | S.STATE_RUNNING | S.STATE_UNEXP_CLOSED | S.STATE_RECONNECTING
RECONNECT_FAILED = S.STATE_OK | S.STATE_NOT_CONNECTED | S.STATE_RECONNECT_FAILED
DISCONNECTING = S.STATE_OK | S.STATE_RUNNING | S.STATE_DISCONNECTING
DISCONNECT_FAILED = S.STATE_OK | S.STATE_NOT_CONNECTED | S.STATE_DISCONNECT_FAILED
CLOSED_BY_PEER = S.STATE_OK | S.STATE_NOT_CONNECTED | S.STATE_UNEXP_CLOSED
# Plain ints for tests against ``_state_bits``: IntFlag's operators cost
# microseconds each, on paths that run per send and per connection.
_RUNNING = int(S.STATE_RUNNING)
_CONNECTED = int(S.STATE_CONNECTED)
_CONNECTING = int(S.STATE_CONNECTING)
_RECONNECTING = int(S.STATE_RECONNECTING)
_CAN_SEND = _CONNECTED | _RECONNECTING
_DISCONNECTING = int(S.STATE_DISCONNECTING)

#: How long disconnect() waits for its goodbye to be written and for the
#: server to close first.
DISCONNECT_WAIT = 5.0


@functools.lru_cache(maxsize=64)
def _literal_family(host: str) -> int | None:
    """AF_INET or AF_INET6 for an IP address literal, None for a name to
    resolve (cached: thousands of clients of one process share a few hosts)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


#: A resolved address: the socket family and the address to connect to.
Target = tuple[int, tuple[Any, ...]]


class _Attempt(Exception):
    """Why one connection attempt failed; ``terminal`` ends all retrying."""

    def __init__(
        self, reason: str, terminal: bool = False, error: ConnectError | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.terminal = terminal
        self.error = error
        #: The server's word on when its reason is over at the latest (seconds).
        self.retry_after = retry_after
        #: The server said "busy, come back shortly": too many connections
        #: from here, or (id_in_use, not terminal) the id is being checked
        #: or moving between cluster nodes.  A connect() that waits retries.
        self.rate_limited = isinstance(error, ConnectionRefusedByServer) and (
            error.code == ErrorCode.RATE_LIMITED or (error.code == ErrorCode.ID_IN_USE and not terminal)
        )


class _ClientLink(Link):
    """One TCP connection attempt and, once welcomed, the live connection."""

    def __init__(self, client: Client, loop: Driver, generation: int) -> None:
        super().__init__(loop, Role.CLIENT, client.max_frame_size, client.heartbeat_interval, client.heartbeat_timeout)
        self.client = client
        # Only an open connection receives messages (the protocol refuses
        # them before the WELCOME): they are the client's from the start.
        self.on_messages = client._messages
        self.generation = generation
        self.connecting: Connecting | None = None
        self.timer: Cancellable | None = None
        self.welcomed = False
        #: The attempt failed or was closed on purpose: later losses are not news.
        self._dead = False
        #: Called once the transport has closed (``disconnect()`` waits for it).
        self.on_closed: Callable[[], None] | None = None
        self.expected_server_proof: str | None = None
        #: The server closed this connection asking us to come back (a
        #: cluster node handing its clients over): news, not a fault.
        self.asked_to_retry = False
        #: The name's other addresses, tried in turn while TCP fails (a
        #: "localhost" that is ::1 first and a server on 127.0.0.1 only).
        self._fallbacks: tuple[Target, ...] = ()
        self._bind_to: tuple[str, int] | None = None

    def describe(self) -> str:
        return f"client {self.client.client_id!r}"

    def start(self, targets: tuple[Target, ...], bind: tuple[str, int] | None, timeout: float) -> None:
        """Connect to the first of ``targets``, the next when TCP fails,
        all within ``timeout``."""
        self.timer = self.loop.call_later(timeout, self._timed_out, timeout)
        self._bind_to = bind
        self._dial(targets)

    def _dial(self, targets: tuple[Target, ...]) -> None:
        client = self.client
        (family, addr), self._fallbacks = targets[0], targets[1:]
        hostname = client.tls_hostname or client.address if client._tls_context is not None else None
        self.connecting = self.loop.connect(
            family,
            addr,
            self._bind_to,
            self,
            tls=client._tls_context,
            server_hostname=hostname,
            name=host_port(client.address, client.port),
        )

    def connection_made(self, transport: WriteTarget) -> None:
        self.connecting = None
        self.transport = transport
        # Then wait for the server's CHALLENGE: it speaks first.

    def connect_failed(self, reason: str) -> None:
        self.connecting = None
        if self._fallbacks and not self._dead:
            # On the next turn: an address that fails at once fails inside
            # loop.connect, before _dial has kept what it returned.
            self.loop.call_soon(self._dial_next)
            return
        self._fail(_Attempt(reason))

    def _dial_next(self) -> None:
        if not self._dead:
            self._dial(self._fallbacks)

    def _send_hello(self, challenge: Challenge) -> None:
        client = self.client
        with client._lock:
            token, last_seq = client._token, client._inbox.stream.taken_seq
            window = client._inbox.window()
        secret = client.auth_token
        cnonce = proof = None
        if challenge.auth and secret is None:
            self._fail(_Attempt("the server requires a token: set auth_token", terminal=True))
            return
        if secret is not None:
            cnonce = new_nonce()
            proof = auth_proof(secret, "client", challenge.nonce, cnonce, client.client_id)
            self.expected_server_proof = auth_proof(secret, "server", challenge.nonce, cnonce, client.client_id)
        self.write(
            self.proto.send_hello(
                client.client_id,
                token,
                last_seq,
                client.max_frame_size,
                client.heartbeat_timeout,
                self.loop.time(),
                cnonce=cnonce,
                proof=proof,
                window=window,
            )
        )

    def _timed_out(self, timeout: float) -> None:
        self.timer = None
        reason = f"no answer from {host_port(self.client.address, self.client.port)} within {timeout:g} s"
        if self.transport is not None and self.proto.challenge is None and self.client._tls_context is None:
            # The server speaks first, but a TLS server waits for the TLS
            # handshake of a client that will never send one.
            reason += " (connected, but the server said nothing: if it wants TLS, set tls)"
        self._fail(_Attempt(reason, error=ConnectTimeout(reason)))

    def _fail(self, why: _Attempt) -> None:
        """The attempt failed before the server welcomed us."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.welcomed = False
        self._dead = True
        if self.transport is not None:
            self.transport.close(why.reason)  # connection_lost sees _dead and stays quiet
        elif self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self.client._attempt_failed(self, why)

    def handle_event(self, event: Event) -> None:
        if isinstance(event, Challenge):
            self._send_hello(event)
        elif isinstance(event, Welcome):
            if self.expected_server_proof is not None and not proof_matches(self.expected_server_proof, event.proof):
                # Whoever answered does not hold our token: do not talk to it.
                self._fail(_Attempt("the server did not prove it knows the token (wrong server?)", terminal=True))
                return
            if not MIN_PROTOCOL_VERSION <= event.version <= PROTOCOL_VERSION:
                self._fail(_Attempt(f"the server answered in protocol version {event.version}", terminal=True))
                return
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.welcomed = True
            # From now on every event is the client's: straight to it.
            self.on_event = functools.partial(self.client._handle, self)
            self.client._welcomed(self, event)
        elif isinstance(event, ErrorReceived) and not self.welcomed:
            refusal = ConnectionRefusedByServer(event.code, event.message)
            terminal = event.code in TERMINAL_CODES or not event.retry
            self._fail(_Attempt(str(refusal), terminal, refusal, event.retry_after))
        else:
            self.client._handle(self, event)

    def connection_lost(self, reason: str, exc: BaseException | None) -> None:
        self.stop_timers()
        self.client._inbox.detach(self)
        if self.on_closed is not None:
            self.on_closed()
        if self._dead:
            return
        self._dead = True
        if not self.welcomed:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.client.tls and exc is None:
                # asyncio's TLS takes the server's alert for a plain close.
                reason += " (a TLS server closes so when it wants a client certificate or does not trust this one)"
            self.client._attempt_failed(self, _Attempt(f"connection closed during the handshake: {reason}"))
        else:
            self.client._link_lost(self, reason)


class ClientSettings(cfg.Settings):
    """Every setting of a client, validated when set: ``Client``'s, and
    ``AsyncClient``'s (which reads and writes its ``Client``'s)."""

    address = cfg.Setting[str]("", cfg.host, doc="server host name or IP address")
    servers = cfg.Setting["tuple[tuple[str, int], ...] | None"](
        None,
        cfg.server_list,
        doc="several servers (a cluster's nodes: docs/CLUSTER.md), tried in turn:"
        " ['host:port', ...]; address and port then name the one in use",
    )
    port = cfg.Setting[int](0, cfg.int_range(1, 65535), doc="server TCP port")
    client_id = cfg.Setting[str]("", cfg.client_id, doc="this client's id, unique per server (not '*')")
    interface = cfg.Setting[str]("", cfg.interface, doc="local interface to connect from: '' or '*' for any")
    bind_port = cfg.Setting["int | None"](None, cfg.int_range(0, 65535, optional=True), doc="local port to bind")
    max_frame_size = cfg.Setting[int](DEFAULT_MAX_FRAME_SIZE, cfg.int_range(MIN_MAX_FRAME_SIZE, 2**32 - 1))
    connect_timeout = cfg.Setting[float](10.0, cfg.positive_number(), locked=False)
    reconnect_delay = cfg.Setting[float](0.5, cfg.positive_number(), locked=False)
    reconnect_max_delay = cfg.Setting[float](30.0, cfg.positive_number(), locked=False)
    reconnect_attempts = cfg.Setting["int | None"](
        None, cfg.int_range(1, optional=True, none="try for ever"), locked=False
    )
    heartbeat_interval = cfg.Setting[float](5.0, cfg.positive_number(), locked=False)
    heartbeat_timeout = cfg.Setting[float](15.0, cfg.positive_number(), locked=False)
    max_queued = cfg.Setting[int](10_000, cfg.int_range(1), locked=False)
    max_queued_bytes = cfg.Setting[int](64 * 1024 * 1024, cfg.int_range(1), locked=False)
    send_timeout = cfg.Setting[float](10.0, cfg.positive_number(), locked=False)
    max_inbound = cfg.Setting[int](
        10_000, cfg.int_range(1), locked=False, doc="messages that may wait for the message callbacks"
    )
    max_inbound_bytes = cfg.Setting[int](
        16 * 1024 * 1024, cfg.int_range(1), locked=False, doc="bytes that may wait for the message callbacks"
    )
    tls = cfg.Setting[bool](False, cfg.boolean, doc="connect with TLS")
    tls_ca = cfg.Setting["str | None"](
        None, cfg.optional_str, doc="CA file to verify the server (default: the system's)"
    )
    tls_verify = cfg.Setting[bool](True, cfg.boolean, doc="verify the server's certificate and host name")
    tls_cert = cfg.Setting["str | None"](None, cfg.optional_str, doc="client certificate, for mutual TLS")
    tls_key = cfg.Setting["str | None"](None, cfg.optional_str, doc="client key (if not in tls_cert)")
    tls_hostname = cfg.Setting["str | None"](None, cfg.optional_str, doc="name to check (default: address)")
    auth_token = cfg.Setting["str | None"](None, cfg.optional_str, doc="shared secret to prove to the server")
    inline_callbacks = cfg.Setting[bool](
        False, cfg.boolean, locked=False, doc="run message callbacks on the I/O thread (fast; they must not block)"
    )
    max_requests = cfg.Setting[int](
        1000, cfg.int_range(1), locked=False, doc="requests that may wait for their reply at once"
    )
    reply_tracebacks = cfg.Setting[bool](
        False, cfg.boolean, locked=False, doc="send a responder's traceback with its error (debugging)"
    )
    concurrent_requests = cfg.Setting[int](
        1,
        cfg.int_range(1),
        locked=False,
        doc="request callbacks that may run at once, beside the other callbacks (1: in turn with them)",
    )
    reconnect_on_shutdown = cfg.Setting[bool](
        False,
        cfg.boolean,
        locked=False,
        doc="keep reconnecting after the server shuts down (a new session starts when one takes this client)",
    )


class Client(ClientSettings):
    """A MissionCommander client.

    Configure with attributes or constructor keywords (each validated when
    set), then ``connect()``.  The client keeps a *session* with the server:
    when the TCP connection breaks it reconnects by itself (exponential
    backoff with full jitter) and resumes the session, so every message sent
    in either direction arrives exactly once and in order.

    States (``client.state``, a :class:`ClientState`):

    ================================  =========================================
    new, not configured               NEEDS_INIT | NOT_CONNECTED
    configured (address and port set) OK | NOT_CONNECTED
    connecting                        OK | RUNNING | CONNECTING
    connected                         OK | RUNNING | CONNECTED
    first connect failed              OK | NOT_CONNECTED | CONNECT_FAILED
    connection broke, retrying        OK | RUNNING | UNEXP_CLOSED | RECONNECTING
    retries exhausted or refused      OK | NOT_CONNECTED | RECONNECT_FAILED
    disconnecting                     OK | RUNNING | DISCONNECTING
    disconnected                      OK | NOT_CONNECTED
    kicked by the server              OK | NOT_CONNECTED
    closed by a server's error        OK | NOT_CONNECTED | UNEXP_CLOSED
    ================================  =========================================

    Events (``subscribe``): ``connect()``, ``disconnect()`` (before a manual
    disconnect), ``reconnect(client_id)``, ``message(message)``,
    ``servershutdown()`` (the server is stopping: the client stops too, or
    with ``reconnect_on_shutdown`` keeps trying, as after a crash),
    ``statechange(transition)``, ``sessionlost(reason)``
    (the server no longer knew this client's session when it came back: a
    restart, an expiry, or a cluster's Redis that lost it; a new session
    starts, and what the server had not yet delivered is gone; what this
    client had not had acknowledged is sent again).  Callbacks run in event
    order on a callback thread, never under a library lock, so they may call
    ``send()`` or ``disconnect()``.  They never run on the I/O thread unless
    ``inline_callbacks`` is set: then ``message`` callbacks run on it (when no
    earlier callback is pending), which spares two thread hand-offs per
    request but stalls every connection of the process while one runs; such
    a callback must not block, and library calls that would wait (a full
    ``send()``, ``connect(wait=True)``) raise instead.
    """

    def __init__(self, *, _driver: Driver | None = None, _api: str = "Client", **settings: Any) -> None:
        # _driver: the event loop to run on (tests pass a fake one); the process's own by default.
        # _api: the class the user called, for errors (the asyncio API wraps this one).
        self._settings: dict[str, Any]  # the settings set explicitly (cfg.init_settings)
        cfg.init_settings(self)
        if "client_id" not in settings:
            cfg.assign(self, "client_id", self.generate_id())
        self._lock = threading.Lock()
        #: Made when a send() first waits for room (a Condition costs
        #: microseconds to build, and most clients never wait).
        self._room: threading.Condition | None = None
        self._room_waiters = 0
        #: Made when wait_state() or wait_connected() first waits.
        self._state_waits: threading.Condition | None = None
        #: Called too where waiting send() calls are woken (the asyncio API's
        #: senders wait on the loop, not on ``_room``).
        self._on_room: Callable[[], None] | None = None
        self._state = NEEDS_INIT
        #: The state as a plain int, for checks on the send path (IntFlag
        #: operators cost microseconds).
        self._state_bits = int(NEEDS_INIT)
        self._callbacks = Callbacks("client", CLIENT_EVENTS)
        self._loop: Driver = _driver if _driver is not None else get_loop()
        self._generation = 0
        #: The generation a server's shutdown ended, while the client waits
        #: for its servershutdown callbacks to stop it: a connect() meanwhile
        #: (from one of them, say) starts anew instead of doing nothing.
        self._shut_down: int | None = None
        self._link: _ClientLink | None = None
        self._connect_future: Future[None] | None = None
        self._retry_timer: Cancellable | None = None
        #: Which of ``servers`` is in use, and how many failed since one welcomed us.
        self._server_index = 0
        self._servers_failed = 0
        #: When a refusal's cause is over at the latest (its retry_after), if it said.
        self._free_at: float | None = None
        self._connect_deadline = 0.0
        self._retries = 0
        self._persistent = False
        self._tls_context: ssl.SSLContext | None = None
        self._token: str | None = None
        self._session = SendSession(self.max_queued, self.max_queued_bytes)
        self._requests = Requests()
        self._answers = Answers(log, server=False)
        self._stats = Counters()
        #: The protocol version of the session (the server's WELCOME).
        self._peer_version = PROTOCOL_VERSION
        self._inbox = Inbox(self._loop, self.max_inbound, self.max_inbound_bytes)
        self._last_close_reason: str | None = None
        #: Why and when the last welcomed connection closed (see ``_closed_locked``).
        self._last_connection_close: tuple[str | None, float | None] = (None, None)
        cfg.apply_settings(self, settings, _api)

    # -- settings and state ----------------------------------------------------

    def _check_settable(self, name: str) -> None:
        if self._state_bits & _RUNNING:
            raise StateError(
                f"cannot change {name} while the client is {ClientState.get_name(self._state)}; disconnect() first"
            )

    def _setting_changed(self, name: str) -> None:
        self._callbacks.setting_changed(name, self)
        if name in cfg.QUEUE_BOUNDS:
            # Live, as the GUI's Apply and `mcctl client set` promise: the
            # next send() is held to it, and one waiting may have room now.
            with self._lock:
                self._session.set_limits(self.max_queued, self.max_queued_bytes)
                if self._room_waiters:
                    self._loop.call_soon(self._wake_senders)
        if name == "servers" and self.servers is not None:
            self._server_index = -1
            self._next_server()
            name = "address"
        # Setting address and port is what configures a new client.
        if (
            name in ("address", "port")
            and self._state == NEEDS_INIT
            and "address" in self._settings
            and "port" in self._settings
        ):
            with self._lock:
                self._set_state(IDLE)

    def _next_server(self) -> None:
        """Aim at the next of ``servers`` (after a failed attempt or a lost
        connection; no-op without them)."""
        servers = self.servers
        if servers is not None:
            self._server_index = (self._server_index + 1) % len(servers)
            # Directly: address and port are locked while running, and this
            # is the client itself moving on, not a caller reconfiguring it.
            address, port = servers[self._server_index]
            cfg.assign(self, "address", address)
            cfg.assign(self, "port", port)

    @staticmethod
    def generate_id() -> str:
        """A fresh random client id."""
        return uuid.uuid4().hex

    def generate_new_id(self) -> str:
        """Give this client a fresh random id, and return it."""
        new_id = self.generate_id()
        self.client_id = new_id
        return new_id

    @property
    def state(self) -> ClientState:
        """The current state (a :class:`ClientState` bitfield)."""
        return self._state

    @property
    def last_close_reason(self) -> str | None:
        """Why the last connection closed; while (re)connecting, why the
        last attempt failed.  Once connected again it is the last
        connection's reason again: the attempts that failed in between are
        over.  (Until a connection has closed, the last failed attempt's.)"""
        return self._last_close_reason

    @property
    def connected(self) -> bool:
        return bool(self._state_bits & _CONNECTED)

    @property
    def failed_attempts(self) -> int:
        """Connection attempts that failed since the last ``connect()`` or
        since the connection broke (0 once connected again)."""
        return self._retries

    def stats(self) -> dict[str, Any]:
        """Live figures, cheap to read at any time (docs/STATS.md says what
        each one means): traffic, queues against their limits, resends,
        connects and resumes, the last close, the heartbeat round trip."""
        with self._lock:
            figures: dict[str, Any] = {
                "state": ClientState.get_name(self._state),
                "connected": bool(self._state_bits & _CONNECTED),
                **session_figures(self._session, self._inbox),
                "requests_in_flight": self._requests.in_flight(""),
                "senders_waiting": self._room_waiters,
                "last_close_reason": self._last_close_reason,
            }
        figures.update(self._stats.figures())
        return figures

    @property
    def queued(self) -> int:
        """Messages sent but not yet acknowledged by the server."""
        with self._lock:
            return len(self._session.out)

    def _wake_senders(self) -> None:
        with self._lock:
            self._wake_senders_locked()

    def _wake_senders_locked(self) -> None:
        """Wake send() calls waiting for room or for the session's end (lock held)."""
        if self._room_waiters:
            if self._room is not None:
                self._room.notify_all()
            if self._on_room is not None:
                self._on_room()

    def _set_state(self, new: ClientState) -> None:
        """Change state and queue the statechange event (caller holds the lock)."""
        old = self._state
        if old == new:
            return
        self._state = new
        self._state_bits = int(new)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("client %r: %s -> %s", self.client_id, ClientState.get_name(old), ClientState.get_name(new))
        if self._callbacks.wants("statechange"):
            self._callbacks.emit("statechange", ClientStateTransition(old, new))
        if self._state_waits is not None:
            self._state_waits.notify_all()

    # -- public operations -----------------------------------------------------

    def connect(self, wait: bool = True) -> None:
        """Connect to the server.

        With ``wait`` (the default) this blocks until the server accepts this
        client, or raises ``ConnectError`` (``ConnectTimeout`` after
        ``connect_timeout``, ``ConnectionRefusedByServer`` when the server
        refuses, e.g. a wrong ``auth_token``) and leaves the state
        CONNECT_FAILED.  An address that cannot be resolved raises
        ``ConnectError`` before any attempt, the state unchanged
        (``ConnectTimeout`` when the resolver says nothing for
        ``connect_timeout``).  A TLS file that cannot be loaded raises
        ``TLSConfigError`` before anything is sent.

        With ``wait=False`` it returns at once and keeps trying in the
        background, with the same backoff as a reconnect, until it connects
        (the ``connect`` event fires), ``reconnect_attempts`` run out or the
        server refuses (state CONNECT_FAILED either way): for a client that
        may start before its server.  Until it first connects there is no
        session: ``send()`` and ``request()`` raise ``StateError``, and
        ``wait_connected()`` waits for it.

        Does nothing when already running (but after a server's shutdown,
        which stops the client once its ``servershutdown`` callbacks have
        returned, it starts anew: from one of them, say); ``StateError`` while a
        ``disconnect()`` is under way (from a ``disconnect`` callback, say:
        it would do nothing, and the client would end disconnected all the
        same).  Once connected, a broken connection is repaired in the
        background.
        """
        self._check_connectable()
        warn_stray_attributes(self, cfg.setting_names(self), CLIENT_EVENTS, self._callbacks.subscribed)
        if wait and self._loop.in_loop():
            raise StateError("connect(wait=True) on the I/O thread (an inline callback) would block it; use wait=False")
        started = self._start_connect(wait, self._targets_in_time() if wait else None)
        if started is None:
            return
        generation, future = started
        if future is None:  # wait=False
            return
        timeout = self.connect_timeout
        try:
            future.result(timeout + 5.0)
        except ConnectTimeout as exc:  # first: it is a TimeoutError, as FutureTimeout is
            if blocked := loop_blocked():
                raise ConnectTimeout(f"{exc}; {blocked}") from None
            raise
        except FutureTimeout:  # the loop's own timer should have fired first
            self._loop.call_soon(self._abandon, generation)
            raise ConnectTimeout(f"no answer from {host_port(self.address, self.port)} within {timeout:g} s") from None

    def wait_state(self, state: ClientState, timeout: float | None = None) -> ClientState:
        """Block until the state has any of the flags of ``state`` (e.g.
        ``ClientState.STATE_CONNECTED``) and return it; ``TimeoutError``
        after ``timeout`` seconds (None: as long as it takes)."""
        wanted = int(state)
        with self._lock:
            self._wait_for_state(lambda: bool(self._state_bits & wanted), timeout)
            return self._state

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until connected (again): after ``connect(wait=False)``, or
        through a reconnect.  ``StateError`` once the client has stopped
        trying (disconnected, refused, out of reconnect attempts), at once
        if it is not trying; ``TimeoutError`` after ``timeout`` seconds."""
        with self._lock:
            self._wait_for_state(self._connected_or_stopped, timeout)
            if not self._state_bits & _CONNECTED:
                state = ClientState.get_name(self._state)
                raise StateError(f"client is {state}; it will not connect by itself (connect() first)")

    def _connected_or_stopped(self) -> bool:
        bits = self._state_bits
        return bool(bits & _CONNECTED or not bits & _RUNNING)

    def _wait_for_state(self, done: Callable[[], bool], timeout: float | None) -> None:
        """Wait under the lock until ``done()`` (the state changes on the I/O thread)."""
        timeout = cfg.wait_timeout(timeout)
        if done():
            return
        if self._loop.in_loop():
            raise StateError("waiting for a state on the I/O thread (an inline callback) would block it")
        if self._state_waits is None:
            self._state_waits = threading.Condition(self._lock)
        if not self._state_waits.wait_for(done, timeout):
            state = ClientState.get_name(self._state)
            blocked = loop_blocked()
            still = f"client {self.client_id!r} still {state} after {timeout:g} s"
            raise TimeoutError(f"{still}; {blocked}" if blocked else still)

    def _check_connectable(self) -> None:
        """What connect() refuses before anything starts (any driver)."""
        check_not_forked(self._loop, "Client")
        if self._state == NEEDS_INIT:
            raise StateError("set address and port before connect()")
        if not cfg.is_any_interface(self.interface) and self.bind_port is None:
            raise StateError(f"bind_port is required when interface is {self.interface!r}")

    def _start_connect(self, wait: bool, targets: tuple[Target, ...] | None) -> tuple[int, Future[None] | None] | None:
        """Start connecting (the part of connect() that does not wait);
        returns the attempt's generation and, with ``wait``, the future its
        outcome sets, or None when already running.  ``targets``: the
        addresses, resolved."""
        self._bind()  # an interface that vanished fails here, in the caller
        tls_context = client_context(self.tls_ca, self.tls_verify, self.tls_cert, self.tls_key) if self.tls else None
        with self._lock:
            if self._state_bits & _RUNNING:
                if self._state_bits & _DISCONNECTING:
                    # It would do nothing, and the client would end disconnected all the same.
                    raise StateError(
                        "the client is disconnecting: connect() once disconnect() has returned"
                        " (a broken connection the client repairs by itself)"
                    )
                if self._shut_down != self._generation:
                    return None
            self._shut_down = None
            self._generation += 1
            generation = self._generation
            self._retries = 0
            self._persistent = not wait
            self._connect_deadline = self._loop.time() + self.connect_timeout
            self._tls_context = tls_context
            # Only a connect() that waits has a future (building one costs
            # a Condition: microseconds per client of a fleet).
            future: Future[None] | None = Future() if wait else None
            self._connect_future = future
            self._inbox.set_limits(self.max_inbound, self.max_inbound_bytes)
            self._set_state(CONNECTING)
        if isinstance(self._loop, Loop):
            _STARTED.add(self)
        self._loop.call_soon(self._start_attempt, generation, targets)
        return generation, future

    def disconnect(self) -> None:
        """Say goodbye to the server and close; ends the session.

        Idempotent, and safe to call from a callback.  Everything sent before
        is written before the goodbye; then the server closes first (waited
        for up to a second), which keeps TIME_WAIT off this side.  When
        called outside a callback, it returns once the callbacks of earlier
        events have run.
        """
        if self._begin_disconnect():
            done = threading.Event()
            if self._loop.in_loop():
                # From an inline callback: the goodbye is queued now and written
                # when the callback returns; waiting here would stall the loop.
                self._disconnect_on_loop(done.set)
                ok = True
            else:
                self._loop.call_soon(self._disconnect_on_loop, done.set)
                ok = done.wait(DISCONNECT_WAIT)
            self._finish_disconnect(ok)
        # Callbacks of the events up to now have run when disconnect() returns,
        # connected or not: a never-connected client has events too (setting
        # its address emits a statechange), and mcd publishes `removed` after
        # disconnect() on the promise that no event of the client follows it.
        # (Not from a callback: that would wait for itself.)
        self._callbacks.wait_idle(DISCONNECT_WAIT)

    def _begin_disconnect(self) -> bool:
        """disconnect()'s first step, any driver: False when there is nothing to do."""
        with self._lock:
            if not self._state_bits & _RUNNING and self._retry_timer is None:
                return False
            self._generation += 1
            self._callbacks.emit("disconnect")
            self._set_state(DISCONNECTING)
            future = self._connect_future
            self._connect_future = None
        if future is not None and not future.done():
            future.set_exception(ConnectError("disconnect() was called while connecting"))
        return True

    def _finish_disconnect(self, closed: bool) -> None:
        """disconnect()'s last step, once the connection closed (``closed``)
        or the wait for it ran out."""
        with self._lock:
            self._closed_locked("disconnected by this client", connection=True)
            self._end_session_locked("disconnected")
            self._set_state(IDLE if closed else DISCONNECT_FAILED)
            self._wake_senders_locked()

    def send(self, message: Message, timeout: float | None = None) -> None:
        """Send ``message`` to the server.

        While connected it waits up to ``send_timeout`` for room when
        ``max_queued``/``max_queued_bytes`` unacknowledged messages are
        outstanding (``timeout``: less, for this call; 0 does not wait);
        while reconnecting it queues (the message goes out on resume) and
        raises ``QueueFullError`` at once when full.  Raises
        ``StateError`` when the client is not connected or reconnecting and
        ``MessageTooLarge`` when the message exceeds the server's frame limit.
        """
        if not isinstance(message, Message):
            raise not_a_message(message)
        if timeout is not None:
            timeout = cfg.wait_timeout(timeout)
        self._send_body(message.encode(), timeout)

    def _send_body(self, body: bytes, timeout: float | None = None) -> None:
        """send()'s way for an encoded body (a message, a request, a reply);
        a full queue holds it up to ``send_timeout`` (or ``timeout``, if less)."""
        session = self._session
        if len(body) + MESSAGE_OVERHEAD > session.peer_max_frame_size:
            raise MessageTooLarge(
                f"message of {len(body) + MESSAGE_OVERHEAD} bytes exceeds the server's limit"
                f" of {session.peer_max_frame_size}"
            )
        with self._lock:
            if not self._state_bits & _CAN_SEND:
                self._check_can_send()  # raises, saying why
            out = session.out
            if not out.offer(body):
                refuse_unqueueable(body, out.max_bytes)
                if not self._state_bits & _CONNECTED:
                    raise QueueFullError(f"send queue full while reconnecting ({len(out)} messages queued)")
                if self._loop.in_loop():  # the acks that make room arrive on this very thread
                    raise QueueFullError(f"send queue full ({len(out)} messages unacknowledged)")
                limit = self.send_timeout if timeout is None else min(timeout, self.send_timeout)
                deadline = time.monotonic() + limit
                while not out.offer(body):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        if not limit:
                            raise QueueFullError(f"send queue full ({len(out)} messages unacknowledged)")
                        raise QueueFullError(acknowledged_nothing(limit))
                    if self._room is None:
                        self._room = threading.Condition(self._lock)
                    self._room_waiters += 1
                    try:
                        self._room.wait(left)
                    finally:
                        self._room_waiters -= 1
                    self._check_can_send()
            direct = route_locked(session, self._loop, self._schedule_pump)
        if direct is not None:
            direct[0].send_and_unlock(direct[1])

    def request(self, message: Message, timeout: float | None = 10.0) -> Message:
        """Send ``message`` as a request and return the server's reply.

        The request and its reply travel in the session, so a connection
        that breaks and resumes meanwhile delivers each exactly once.
        Raises ``RequestTimeout`` when no reply came within ``timeout``
        seconds (a late one is dropped), ``SessionLost`` at once when the
        session ends for good, ``RemoteError`` when the server's responder
        raised (``NoResponder`` when it has none), ``QueueFullError`` past
        ``max_requests`` requests in flight, and what ``send()`` raises.
        Not from an inline callback, which would block the I/O thread.
        """
        if not isinstance(message, Message):
            raise not_a_message(message)
        if self._loop.in_loop():
            raise StateError("request() on the I/O thread (an inline callback) would block it; send() instead")
        timeout = cfg.wait_timeout(timeout)
        request_id, waiter = self._start_request(message)
        return self._requests.wait(request_id, waiter, timeout, self._why_no_reply)

    def _why_no_reply(self) -> str:
        """What a request that timed out is told, besides the timeout."""
        return "" if self._state_bits & _CONNECTED else "the connection to the server is down; reconnecting"

    def _check_requests(self) -> None:
        """Raise unless the server can answer requests (protocol 2)."""
        if self._peer_version < REQUEST_VERSION:
            raise StateError(
                f"the server speaks protocol version {self._peer_version}, which has no request/reply"
                " (upgrade the server)"
            )

    def _start_request(self, message: Message) -> tuple[int, ReplyWaiter]:
        """Send ``message`` as a request: its id and what its reply sets."""
        self._check_requests()
        waiter = ReplyWaiter()
        request_id, body = self._requests.open("", self.max_requests, message, waiter)
        try:
            self._send_body(body)
        except BaseException:
            self._requests.forget(request_id)
            raise
        return request_id, waiter

    def _answer(self, request_id: int, request: Message, result: object, exc: BaseException | None) -> None:
        """Send the reply to the server's request ``request_id``."""
        body, exc = reply_body(request_id, request, result, exc, self.reply_tracebacks)
        if exc is not None:
            self._answers.raised(exc, self.client_id)
        try:
            self._send_body(body)
        except (StateError, QueueFullError) as lost:
            self._answers.unsent(request_id, self.client_id, lost)

    def _schedule_pump(self, session: SendSession) -> None:
        self._loop.call_soon(self._pump)

    def _check_can_send(self) -> None:
        bits = self._state_bits
        if bits & _CAN_SEND:
            return
        state = ClientState.get_name(self._state)
        if bits & _RUNNING:
            # Before the first handshake there is no session to queue in.
            raise StateError(
                f"cannot send yet: the client has no session until it first connects ({state});"
                " wait_connected() waits for it"
            )
        raise StateError(f"cannot send: the client is not connected ({state}); connect() first")

    def subscribe(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback`` on ``event``: ``connect``, ``disconnect``,
        ``reconnect``, ``message``, ``servershutdown`` or ``statechange``.
        Names are case-insensitive and may carry ``on``, ``-`` and ``_``
        (``on_connect``, ``onCon-nect``); an unknown name raises ``ValueError``."""
        self._callbacks.subscribe(event, callback)

    def unsubscribe(self, event: str, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback`` on ``event``."""
        self._callbacks.unsubscribe(event, callback)

    def wait_callbacks(self, timeout: float | None = None) -> bool:
        """Wait until the callbacks of events so far have run (not from a callback)."""
        return self._callbacks.wait_idle(timeout)

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        return (
            f"<Client {self.client_id!r} -> {host_port(self.address or '?', self.port or '?')} "
            f"{ClientState.get_name(self._state)}>"
        )

    # -- address resolution ----------------------------------------------------

    def _literal_target(self) -> tuple[Target] | None:
        host, port = self.address, self.port
        family = _literal_family(host)
        if family is None:
            return None
        if family == socket.AF_INET6:
            return ((family, (host, port, 0, 0)),)
        return ((family, (host, port)),)

    def _resolve(self) -> tuple[Target, ...]:
        """The address's targets, in the resolver's order (at least one)."""
        literal = self._literal_target()
        if literal is not None:
            return literal
        host, port = self.address, self.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve {host!r}: {exc.strerror}") from exc
        except (UnicodeError, OSError) as exc:  # the resolver refuses some names outright; same answer
            raise ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        targets = tuple(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
        if not targets:
            raise ConnectError(f"cannot resolve {host!r}: no address")
        return targets

    def _resolve_soon(self) -> Future[tuple[Target, ...]]:
        """``_resolve`` on a resolving thread (``_resolver``): a resolver
        that does not answer must hold neither the I/O loop nor a caller
        longer than ``connect_timeout``."""
        return _resolver.soon(
            self._resolve,
            lambda exc: ConnectError(f"cannot resolve {self.address!r}: no thread to do it on ({exc})"),
        )

    def _resolver_silent(self) -> ConnectTimeout:
        """What ``connect()`` raises when resolving took all of ``connect_timeout``."""
        return ConnectTimeout(
            f"cannot resolve {self.address!r}: the resolver did not answer within {self.connect_timeout:g} s"
        )

    def _targets_in_time(self) -> tuple[Target, ...]:
        """The address's targets for ``connect()``, within ``connect_timeout``."""
        literal = self._literal_target()
        if literal is not None:
            return literal
        resolving = self._resolve_soon()
        try:
            return resolving.result(self.connect_timeout)
        except FutureTimeout:
            resolving.cancel()  # still queued for a thread (others hold them all): it need not start
            raise self._resolver_silent() from None

    # -- loop thread ---------------------------------------------------------

    def _start_attempt(self, generation: int, targets: tuple[Target, ...] | None) -> None:
        self._retry_timer = None
        if generation != self._generation:
            return
        if targets is None:
            targets = self._literal_target()
        if targets is None:
            # Attempts after the first resolve again (the address may have
            # moved), off the I/O loop.
            resolving = self._resolve_soon()
            resolving.add_done_callback(lambda done: self._loop.call_soon(self._resolved, generation, done))
            return
        try:
            bind = self._bind()
        except ValueError as exc:
            self._attempt_failed(None, _Attempt(str(exc)))
            return
        link = _ClientLink(self, self._loop, generation)
        self._link = link
        link.start(targets, bind, self.connect_timeout)

    def _resolved(self, generation: int, resolving: Future[tuple[Target, ...]]) -> None:
        error = resolving.exception()
        if error is not None:
            self._attempt_failed_early(generation, str(error))
        else:
            self._start_attempt(generation, resolving.result())

    def _attempt_failed_early(self, generation: int, reason: str) -> None:
        if generation == self._generation:
            self._attempt_failed(None, _Attempt(reason))

    def _abandon(self, generation: int) -> None:
        if generation == self._generation and self._link is not None and not self._link.welcomed:
            self._link._fail(_Attempt("connect() gave up waiting"))

    def _attempt_failed(self, link: _ClientLink | None, why: _Attempt) -> None:
        if link is not None:
            if link is self._link:
                self._link = None
            if link.generation != self._generation:
                return
        with self._lock:
            self._closed_locked(why.reason, connection=False)
            bits = self._state_bits
            if not bits & (_CONNECTING | _RECONNECTING):
                return
            self._servers_failed += 1
            untried = self.servers is not None and self._servers_failed < len(self.servers)
            self._next_server()
            step, self._retries = after_failure(
                self._retries,
                reconnecting=not bits & _CONNECTING,
                persistent=self._persistent,
                terminal=why.terminal,
                rate_limited=why.rate_limited,
                untried=untried,
                limit=self.reconnect_attempts,
                before_deadline=self._loop.time() < self._connect_deadline,
            )
            if step is Step.FAIL:
                future = self._connect_future
                self._connect_future = None
                self._set_state(CONNECT_FAILED)
                # A connect() that waits raises the reason to its caller, who
                # decides what to say; only a connect nobody waits for logs it.
                waited = future is not None and not future.done()
                _SAY_CONNECT_FAILED.log(
                    self._loop,
                    self.client_id,
                    logging.INFO if waited else logging.WARNING,
                    "client %r: connect failed: %s",
                    self.client_id,
                    why.reason,
                )
                if future is not None and not future.done():
                    future.set_exception(why.error or ConnectError(why.reason))
                return
            if step is Step.GIVE_UP:
                self._stats.sessions_lost += 1
                self._requests.lose(None, why.reason)
                self._set_state(RECONNECT_FAILED)
                self._wake_senders_locked()
                _SAY_GAVE_UP.log(
                    self._loop,
                    self.client_id,
                    logging.WARNING,
                    "client %r: giving up reconnecting after %d attempt(s): %s",
                    self.client_id,
                    self._retries,
                    why.reason,
                )
                return
            if bits & _CONNECTING:
                _SAY_ATTEMPT_FAILED.log(
                    self._loop,
                    self.client_id,
                    logging.INFO,
                    "client %r: connect attempt failed: %s",
                    self.client_id,
                    why.reason,
                )
            if why.retry_after is not None:
                self._free_at = self._loop.time() + why.retry_after
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        servers = self.servers
        retry_after, self._free_at = retry_hint(self._free_at, self._loop.time())
        delay = reconnect_delay(
            self._retries,
            self.reconnect_delay,
            self.reconnect_max_delay,
            servers=len(servers) if servers else 1,
            retry_after=retry_after,
        )
        _SAY_RETRYING.log(
            self._loop,
            self.client_id,
            logging.INFO,
            "client %r: reconnecting in %.2f s (attempt %d)",
            self.client_id,
            delay,
            self._retries + 1,
        )
        self._retry_timer = self._loop.call_later(delay, self._start_attempt, self._generation, None)

    def _bind(self) -> tuple[str, int] | None:
        if cfg.is_any_interface(self.interface):
            return None
        return (cfg.resolve_interface(self.interface), self.bind_port or 0)

    def _welcomed(self, link: _ClientLink, welcome: Welcome) -> None:
        if link.generation != self._generation:
            if link.transport is not None:
                link.transport.close("stale connection")
            return
        with self._lock:
            resumed_session = welcome.resumed
            session = self._session
            if resumed_session:
                session.resumed(welcome.last_seq)
            elif self._token is None:
                # A new session, asked for: the first, or the next after a
                # shutdown (which already let go of the last one); what was
                # sent since is its own.
                session.restarted()
            else:
                dropped = self._forget_session_locked(
                    "the server started a new session (a restart, an expiry, or a cluster's Redis that lost it)"
                )
                _SAY_SESSION_LOST.log(
                    self._loop,
                    self.client_id,
                    logging.WARNING,
                    "client %r: the server no longer knows our session (a restart, an expiry, or a cluster's Redis "
                    "that lost it); "
                    "starting a new one and resending %d unacknowledged message(s)%s",
                    self.client_id,
                    len(session.out),
                    f", leaving out the old session's {dropped} request or reply message(s)" if dropped else "",
                )
                self._stats.sessions_lost += 1
                self._callbacks.emit(
                    "sessionlost",
                    "the server no longer knows this client's session (a restart, an expiry, or a cluster's Redis"
                    " that lost it)",
                )
            self._token = welcome.session
            self._peer_version = welcome.version
            session.peer_max_frame_size = welcome.max_frame_size
            session.set_window(welcome.window)
            first = bool(self._state_bits & _CONNECTING)
            stats = self._stats
            if first:
                stats.connects += 1
            else:
                stats.reconnects += 1
            if resumed_session:
                stats.resumes += 1
            future = self._connect_future
            self._connect_future = None
            self._retries = 0
            self._servers_failed = 0
            self._free_at = None
            if self._last_connection_close[0] is not None:
                # The attempts that failed are over: what shows is why the
                # last connection closed again.  (A first connection keeps
                # its last refusal: no connection had closed before it.)
                self._last_close_reason, stats.last_close_time = self._last_connection_close
            self._set_state(CONNECTED)
            self._callbacks.emit("connect") if first else self._callbacks.emit("reconnect", self.client_id)
            session.pump_pending = False
            session.live = link.transport
        _SAY_CONNECTED.log(
            self._loop,
            self.client_id,
            logging.INFO,
            "client %r connected to %s%s",
            self.client_id,
            host_port(self.address, self.port),
            " (resumed)" if resumed_session else "",
        )
        link.start_heartbeat()
        self._inbox.attach(link)
        self._pump()
        if future is not None and not future.done():
            future.set_result(None)

    def _pump(self) -> None:
        with self._lock:
            self._session.pump_pending = False
        self._pump_to(self._link)

    def _pump_to(self, link: _ClientLink | None) -> None:
        with self._lock:
            if link is None or not link.is_open or link.transport is None:
                return
            chunks = self._session.take_unsent()
            # Written under the lock: send() writes from other threads, and
            # the frames must reach the socket in sequence order.
            if chunks:
                link.transport.write_many(chunks)

    def _messages(self, events: list[MessageReceived]) -> None:
        deliver(self._callbacks, self._requests, self._inbox, events, (), self._answer)

    def _handle(self, link: _ClientLink, event: Event) -> None:
        if isinstance(event, AckReceived):
            with self._lock:
                more = self._session.acked(event.seq)
                self._wake_senders_locked()
            if more:
                self._pump_to(link)  # the window has room again
        elif isinstance(event, PingReceived):
            link.answer_ping()
        elif isinstance(event, PongReceived):
            # Liveness is noted on every frame received; a PONG also times the round trip.
            self._stats.round_trip(link.liveness.pong(self._loop.time()))
        elif isinstance(event, ShutdownReceived):
            self._closed_by_server(link, f"server shut down: {event.reason}", shutdown=True)
        elif isinstance(event, ByeReceived):
            self._closed_by_server(link, f"disconnected by the server: {event.reason}", shutdown=False)
        elif isinstance(event, ErrorReceived):
            if event.retry and event.code not in TERMINAL_CODES:
                link.asked_to_retry = True
                if link.transport is not None:
                    link.transport.close(f"server reported an error ({event.code}): {event.message}")
            else:
                self._closed_by_server(
                    link, f"server reported an error ({event.code}): {event.message}", shutdown=False, clean=False
                )

    def _closed_by_server(self, link: _ClientLink, reason: str, shutdown: bool, clean: bool = True) -> None:
        """The server ended our session: no reconnecting (but see ``reconnect_on_shutdown``)."""
        if shutdown and self.reconnect_on_shutdown:
            self._reconnect_after_shutdown(link, reason)
            return
        link._dead = True
        link.stop_timers()
        if link.transport is not None:
            link.transport.close(reason)
        self._link = None
        generation = self._generation
        with self._lock:
            self._generation += 1
            if shutdown:
                self._shut_down = self._generation
            self._closed_locked(reason, connection=True)
            self._stats.sessions_lost += 1
            self._end_session_locked(reason)
            self._wake_senders_locked()
            if not shutdown:
                self._set_state(IDLE if clean else CLOSED_BY_PEER)
        _SAY_ENDED.log(self._loop, self.client_id, logging.WARNING, "client %r: %s", self.client_id, reason)
        if shutdown:
            self._callbacks.emit("servershutdown")
            # The client stops once the servershutdown callbacks have returned.
            self._callbacks.serial.submit(self._stopped_after_shutdown, generation + 1)

    def _reconnect_after_shutdown(self, link: _ClientLink, reason: str) -> None:
        """The server is going away and our session with it; the client
        carries on as after a server restart (a new session when a server
        takes it back, with what was not acknowledged sent again), except
        that it knows now, not at the next WELCOME, what is lost."""
        link._dead = True
        link.stop_timers()
        with self._lock:
            self._stats.sessions_lost += 1
            self._session.live = None  # no send() writes to the old server once its session is forgotten
            self._forget_session_locked(reason)
            self._token = None  # the next HELLO asks for a new session
        self._callbacks.emit("servershutdown")
        if link.transport is not None:
            link.transport.close(reason)
        self._link_lost(link, reason)

    def _forget_session_locked(self, reason: str) -> int:
        """The server's side of the session is gone: our requests fail now,
        and neither they nor our replies to its requests go to the next
        session; the rest will be sent again in it.  Returns how many were dropped."""
        self._requests.lose(None, reason)
        dropped = self._session.restarted(drop=of_its_session)
        self._inbox.new_stream()
        return dropped

    def _stopped_after_shutdown(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation and self._state_bits & _RUNNING:
                self._shut_down = None
                self._set_state(IDLE)

    def _end_session_locked(self, reason: str) -> None:
        self._requests.lose(None, reason)
        self._session.live = None
        unsent = self._session.end()
        if unsent:
            _SAY_UNSENT.log(
                self._loop,
                self.client_id,
                logging.WARNING,
                "client %r: %d message(s) never sent were dropped (%s)",
                self.client_id,
                unsent,
                reason,
            )
        self._token = None
        self._inbox.new_stream()

    def _closed_locked(self, reason: str, *, connection: bool) -> None:
        """Note why a connection (``connection``: a welcomed one) or an
        attempt ended, as ``last_close_reason``: while (re)connecting, a
        wrong CA shows as a certificate error, not as an endless
        "connecting".  Once connected again, "connection refused" beside
        "connected" misled: ``_welcomed`` shows the last connection's again."""
        self._last_close_reason = reason
        self._stats.closed()
        if connection:
            self._last_connection_close = (reason, self._stats.last_close_time)

    def _link_lost(self, link: _ClientLink, reason: str) -> None:
        if link is self._link:
            self._link = None
        with self._lock:
            if self._session.live is link.transport:
                self._session.live = None
        if link.generation != self._generation:
            return
        with self._lock:
            self._closed_locked(reason, connection=True)
            if not self._state_bits & _CONNECTED:
                return
            self._retries = 0
            self._next_server()
            self._set_state(RECONNECTING)
        _SAY_LOST.log(
            self._loop,
            self.client_id,
            logging.INFO if link.asked_to_retry else logging.WARNING,
            "client %r: connection lost (%s); reconnecting",
            self.client_id,
            reason,
        )
        self._schedule_retry()

    def _disconnect_on_loop(self, done: Callable[[], None]) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        link, self._link = self._link, None
        with self._lock:
            self._session.live = None
        if link is None or link.transport is None or link.transport.closed:
            if link is not None:
                link._fail(_Attempt("disconnect() was called"))
            done()
            return
        link._dead = True
        link.stop_timers()
        transport = link.transport
        said_bye = link.is_open
        if said_bye:
            # Write whatever is queued first: TCP delivers it before the BYE.
            self._pump_to(link)
            self._inbox.send_ack()
            transport.write(link.proto.send_bye("client disconnecting"))
        link.on_closed = done
        # After a BYE the server closes: let it, so that TIME_WAIT stays there.
        transport.close_after_flush(reason="disconnected by this client", peer_first=said_bye)


#: Threaded clients that have started connecting (the asyncio API's end
#: with their loop, in ``async with`` or ``disconnect()``).
_STARTED: weakref.WeakSet[Client] = weakref.WeakSet()


def _disconnect_at_exit() -> None:
    """At interpreter exit, a connected client disconnects as ``disconnect()``
    does, so that what the program sent before it ended reaches the server
    (as a file's buffer is flushed at exit) and the server ends the session
    at once instead of keeping it for a resume that cannot come.  Runs while
    the library's daemon threads still do."""
    waits = []
    for client in list(_STARTED):
        loop = client._loop
        if client._state_bits & _CONNECTED and isinstance(loop, Loop) and loop.running() and client._begin_disconnect():
            done = threading.Event()
            loop.call_soon(client._disconnect_on_loop, done.set)
            waits.append((client, done))
    deadline = time.monotonic() + cfg.EXIT_WAIT
    for client, done in waits:
        client._finish_disconnect(done.wait(max(0.0, deadline - time.monotonic())))


atexit.register(_disconnect_at_exit)
# A forked child has none of its parent's connections' threads: its exit
# must not try to close them.
os.register_at_fork(after_in_child=_STARTED.clear)
