"""``Server``: accepts clients, keeps a session per client id, sends and broadcasts."""

from __future__ import annotations

import atexit
import collections
import functools
import logging
import os
import secrets
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, overload

from . import _config as cfg
from ._admission import Admit, ConnectionRate, Known, admit, in_use_message, probe_timeout
from ._auth import new_nonce
from ._callbacks import Callbacks
from ._cluster import ClusterNode, default_node_id
from ._cluster_store import DEFAULT_LEASE_TTL, cluster_url
from ._connection import Connection
from ._delivery import deliver
from ._errors import (
    BindError,
    ClusterUnavailable,
    MessageTooLarge,
    QueueFullError,
    RemoteProtocolError,
    StateError,
    TLSConfigError,
    UnknownClient,
)
from ._events import (
    AckReceived,
    ByeReceived,
    ErrorCode,
    ErrorReceived,
    Event,
    Hello,
    MessageReceived,
    PingReceived,
    PongReceived,
    Role,
)
from ._frames import (
    DEFAULT_MAX_FRAME_SIZE,
    MESSAGE_OVERHEAD,
    MIN_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    REQUEST_VERSION,
)
from ._inbox import Budget, Inbox
from ._link import Link, route_locked
from ._loop import Cancellable, Driver, Incoming, Listener, Loop, check_not_forked, get_loop, host_port
from ._message import Message, not_a_message
from ._quiet import Chorus, Quiet, more
from ._requests import Answers, ReplyWaiter, Requests, no_requests, reply_body
from ._session import SendSession
from ._stats import TRAFFIC, Counters, session_figures, traffic
from ._stray import warn_stray_attributes
from ._streams import refuse_unqueueable
from ._tls import server_context
from ._transitions import ConnState

log = logging.getLogger("missioncommander.server")

# What a server says of each of its clients as they come and go: said of
# the first few, counted for the rest (``Chorus``), so that a blip that
# cuts a thousand clients, and their return, make a handful of lines.
_SAY_NEW = Chorus(log, "connected (new session)")
_SAY_RESUMED = Chorus(log, "resumed its session")
_SAY_LEFT = Chorus(log, "left")
_SAY_DETACHED = Chorus(log, "connection lost; session kept")
_SAY_LET_GO = Chorus(log, "let go")
_SAY_DROPPED = Chorus(log, "session ended with messages dropped")
_SAY_ENDED = Chorus(log, "session ended")
_SAY_TOO_SLOW = Chorus(log, "too slow: send queue full; session ended")
# A refusal that asks the client to retry (a full server, an id being
# checked) comes again from each client every few seconds: 10,000 clients
# over max_clients were 300 lines a second.  The refusals that end a
# client's trying (a wrong token) stay one line each, for tools that read
# them per address.
_SAY_TURNED_AWAY = Chorus(log, "refusing ... for now (the client retries)")

#: A Server's events and what their callbacks are called with.
SERVER_EVENTS: dict[str, tuple[str, ...]] = {
    "clientconnect": ("client_id",),
    "clientdisconnect": ("client_id",),
    "clientdetach": ("client_id", "reason"),
    "clientresume": ("client_id",),
    "message": ("client_id", "message"),
    "request": ("client_id", "message"),
}


class _PortSetting(cfg.Setting[int]):
    """``port`` reads back the real port while listening (``port=0`` picks one)."""

    @overload
    def __get__(self, obj: None, owner: type) -> _PortSetting: ...
    @overload
    def __get__(self, obj: cfg.HasSettings, owner: type) -> int: ...
    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        if obj._bound_port is not None:
            return obj._bound_port
        return obj.requested_port


class _Session(SendSession):
    """A client id's session: survives broken connections until it expires."""

    __slots__ = ("client_id", "cut_off", "expiry", "inbox", "link", "stats", "token", "version")

    def __init__(self, client_id: str, max_items: int, max_bytes: int, inbox: Inbox) -> None:
        super().__init__(max_items, max_bytes)
        self.client_id = client_id
        self.token = secrets.token_urlsafe(24)
        self.inbox = inbox
        self.link: _ServerLink | None = None
        self.expiry: Cancellable | None = None
        #: The protocol version the client speaks (its HELLO).
        self.version = PROTOCOL_VERSION
        self.stats = Counters()
        #: Too slow for a broadcast: its end is on its way.
        self.cut_off = False


class _ServerLink(Link):
    """One accepted TCP connection (loop thread only)."""

    def __init__(self, server: Server, loop: Driver, incoming: Incoming) -> None:
        super().__init__(loop, Role.SERVER, server.max_frame_size, server.heartbeat_interval, server.heartbeat_timeout)
        self.liveness.max_pending_bytes = server.max_pending_bytes
        self.server = server
        self.peer = incoming.peer
        self.host = incoming.host
        self.session: _Session | None = None
        #: A newcomer waiting for this link to prove it is alive (PONG) or dead.
        self.probe_waiter: _ServerLink | None = None
        self.probe_timer: Cancellable | None = None
        #: Another cluster node has a newcomer for this link's client id.
        self.probed_for_cluster = False
        self.hello: Hello | None = None
        self.nonce = new_nonce()
        self.server_proof: str | None = None
        self.handshake_timer: Cancellable | None = loop.call_later(server.handshake_timeout, self._handshake_timeout)
        self.on_event = functools.partial(server._handle, self)
        self.on_messages = functools.partial(server._messages, self)
        self.transport = incoming.open(self, server._tls_context)
        self.write(self.proto.send_challenge(self.nonce, server._auth_required()))

    def describe(self) -> str:
        who = self.session.client_id if self.session else (self.hello.client_id if self.hello else "?")
        return f"client {who!r} from {self.peer}"

    def ack_taken(self) -> None:
        """Acknowledge now what was taken, before a SHUTDOWN: a client that
        goes on to another server (``reconnect_on_shutdown``) sends none of
        it again."""
        if self.session is not None:
            self.session.inbox.send_ack()

    def protocol_error(self, exc: RemoteProtocolError) -> None:
        self.server._refusals[exc.code] += 1
        super().protocol_error(exc)

    def not_reading(self) -> None:
        self.server._slow_cut += 1

    def _handshake_timeout(self) -> None:
        self.handshake_timer = None
        if self.proto.state is ConnState.HANDSHAKE and self.transport is not None:
            log.info("%s: no handshake within %g s; closing", self.describe(), self.server.handshake_timeout)
            self.send_final(
                self.proto.send_error(ErrorCode.HANDSHAKE_TIMEOUT, "no HELLO within the handshake timeout", retry=True),
                "handshake timeout",
            )

    def handle_event(self, event: Event) -> None:
        self.server._handle(self, event)

    def connection_lost(self, reason: str, exc: BaseException | None) -> None:
        self.stop_timers()
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
        if isinstance(exc, ssl.SSLError) and self.hello is None:
            self.server._tls_refused(self.peer, reason)
        self.server._link_lost(self, reason)


class ServerSettings(cfg.Settings):
    """Every setting of a server, validated when set: ``Server``'s, and
    ``AsyncServer``'s (which reads and writes its ``Server``'s)."""

    interface = cfg.Setting[str](
        "", cfg.interface, doc="'' or '*' for every interface, an IP address, or an interface name"
    )
    port = _PortSetting(0, cfg.int_range(0, 65535), doc="TCP port; 0 picks a free one (read it back after start())")
    handshake_timeout = cfg.Setting[float](10.0, cfg.positive_number(), locked=False)
    heartbeat_interval = cfg.Setting[float](5.0, cfg.positive_number(), locked=False)
    heartbeat_timeout = cfg.Setting[float](15.0, cfg.positive_number(), locked=False)
    max_frame_size = cfg.Setting[int](DEFAULT_MAX_FRAME_SIZE, cfg.int_range(MIN_MAX_FRAME_SIZE, 2**32 - 1))
    max_clients = cfg.Setting["int | None"](10_000, cfg.int_range(1, optional=True, none="no limit"), locked=False)
    session_expiry = cfg.Setting[float](60.0, cfg.positive_number(), locked=False)
    max_queued = cfg.Setting[int](10_000, cfg.int_range(1), locked=False)
    max_queued_bytes = cfg.Setting[int](64 * 1024 * 1024, cfg.int_range(1), locked=False)
    max_pending_bytes = cfg.Setting[int](8 * 1024 * 1024, cfg.int_range(1), locked=False)
    max_inbound = cfg.Setting[int](
        10_000, cfg.int_range(1), doc="messages one client may have waiting for the message callbacks"
    )
    max_inbound_bytes = cfg.Setting[int](
        16 * 1024 * 1024, cfg.int_range(1), doc="bytes one client may have waiting for the message callbacks"
    )
    max_inbound_total_bytes = cfg.Setting[int](
        256 * 1024 * 1024, cfg.int_range(1), doc="bytes all clients together may have waiting for the callbacks"
    )
    max_connection_rate = cfg.Setting["float | None"](1000.0, cfg.positive_number(optional=True), locked=False)
    tls_cert = cfg.Setting["str | None"](None, cfg.optional_str, doc="PEM certificate (chain): enables TLS")
    tls_key = cfg.Setting["str | None"](None, cfg.optional_str, doc="PEM private key (if not in tls_cert)")
    tls_ca = cfg.Setting["str | None"](None, cfg.optional_str, doc="CA file: require client certificates it signed")
    # Tokens may change while the server runs (a client added, a secret
    # rotated): each handshake reads them, so a change applies to the next
    # connection and resume; a session already in goes on (kick it to cut it off).
    auth_token = cfg.Setting["str | None"](
        None, cfg.optional_str, locked=False, doc="shared secret every client must prove"
    )
    auth_tokens = cfg.Setting["dict[str, str] | None"](None, cfg.token_map, locked=False, doc="per-client-id secrets")
    inline_callbacks = cfg.Setting[bool](
        False, cfg.boolean, locked=False, doc="run message callbacks on the I/O thread (fast; they must not block)"
    )
    max_requests = cfg.Setting[int](
        1000, cfg.int_range(1), locked=False, doc="requests to one client that may wait for their reply at once"
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
    cluster = cfg.Setting["str | None"](
        None, cluster_url, doc="Redis URL: act as one server with every node on it (docs/CLUSTER.md)"
    )
    node_id = cfg.Setting["str | None"](
        None, cfg.optional_str, doc="this node's name in its cluster (default: host, process and random bits)"
    )
    lease_ttl = cfg.Setting[float](
        DEFAULT_LEASE_TTL, cfg.positive_number(), doc="how long a cluster node's hold on its clients outlives it"
    )


class Server(ServerSettings):
    """A MissionCommander server: many clients, one session per client id.

    Configure with attributes or constructor keywords (each is validated on
    assignment), then ``start()``; ``stop()`` tells every client it is shutting
    down.  A stopped server can be started again.  Use it as a context
    manager to start and stop it::

        with Server(interface="127.0.0.1", port=0) as server:
            server.subscribe("message", lambda client_id, msg: ...)
            server.send("*", Message("hello"))

    Events (``subscribe``): ``clientconnect(client_id)`` when a client's
    session starts, ``clientdisconnect(client_id)`` when it ends (clean
    disconnect, kick, expiry, shutdown), ``clientdetach(client_id, reason)``
    when its connection breaks and its session waits ``session_expiry`` for
    it, ``clientresume(client_id)`` when it comes back to that session (here,
    or in a cluster on the node it came back to), ``message(client_id,
    message)``, ``request(client_id, message)``.
    Callbacks run in event order on a callback thread, never under a library
    lock; with ``inline_callbacks`` the ``message`` callbacks run on the I/O
    thread when none is pending (lower latency; they must not block, since
    every connection of the process waits while one runs).
    """

    def __init__(self, *, _driver: Driver | None = None, _api: str = "Server", **settings: Any) -> None:
        # _driver: the event loop to run on (tests pass a fake one); the process's own by default.
        # _api: the class the user called, for errors (the asyncio API wraps this one).
        self._settings: dict[str, Any]  # the settings set explicitly (cfg.init_settings)
        cfg.init_settings(self)
        self._lock = threading.Lock()
        self._callbacks = Callbacks("server", SERVER_EVENTS)
        self._loop: Driver = _driver if _driver is not None else get_loop()
        self._listener: Listener | None = None
        self._bound_port: int | None = None
        self._sessions: dict[str, _Session] = {}
        self._links: set[_ServerLink] = set()
        self._to_pump: set[_Session] = set()
        self._running = False
        self._stopped = threading.Event()
        self._stopped.set()
        #: Called too when ``_stopped`` is set (the asyncio API awaits it).
        self._on_stopped: Callable[[], None] | None = None
        #: Called with a client id when its send queue may have room (an ACK,
        #: or its session ended): the asyncio API's senders wait for it.
        self._on_room: Callable[[str], None] | None = None
        #: Threads in ``send(..., timeout=)`` waiting for room (notified
        #: under ``_lock`` where ``_on_room`` is called).
        self._room = threading.Condition(self._lock)
        self._room_waiters = 0
        self._tls_context: ssl.SSLContext | None = None
        self._rates = ConnectionRate()
        self._requests = Requests()
        self._answers = Answers(log, server=True)
        self._rate_logged: dict[str, float] = {}
        #: Failed TLS handshakes are logged now and then (the others counted).
        self._tls_quiet = Quiet(TLS_LOG_EVERY, self._loop.time)
        self._quiet_skips = Quiet()
        #: Statistics: connections refused, by the ERROR code they got (or TLS_HANDSHAKE).
        self._refusals: collections.Counter[str] = collections.Counter()
        #: Statistics: clients cut off for not keeping up (broadcast queue
        #: full, or not reading).
        self._slow_cut = 0
        #: Statistics: the traffic of sessions that ended (those alive count their own).
        self._ended_traffic: collections.Counter[str] = collections.Counter()
        self._inbound_budget = Budget(type(self).max_inbound_total_bytes.default)
        #: Cluster mode (``cluster`` set): this node's part, while running.
        self._cluster: ClusterNode | None = None
        cfg.apply_settings(self, settings, _api)

    # -- settings ------------------------------------------------------------

    def _setting_changed(self, name: str) -> None:
        # A server needs no settings to start (port 0, every interface).
        self._callbacks.setting_changed(name, self)
        if name in cfg.QUEUE_BOUNDS and self._cluster is None:  # a cluster's are Redis's, read at each send
            # Live, as the GUI's Apply and `mcctl server set` promise: every
            # session's next send() is held to it, and one waiting may have room.
            with self._lock:
                for session in self._sessions.values():
                    session.set_limits(self.max_queued, self.max_queued_bytes)
                self._room_made_locked()
                waiting = list(self._sessions) if self._on_room is not None else []
            if waiting:
                self._loop.call_soon(self._rooms_made, waiting)

    def _rooms_made(self, client_ids: list[str]) -> None:
        on_room = self._on_room
        if on_room is not None:
            for client_id in client_ids:
                on_room(client_id)

    def _check_settable(self, name: str) -> None:
        if self._running:
            raise StateError(f"cannot change {name} while the server is running; stop() it first")

    # -- lifecycle -------------------------------------------------------------

    @property
    def requested_port(self) -> int:
        """The port as set, before start() bound it: 0 stays 0 (a free
        port each start) while ``port`` reads the one bound."""
        value: int = self._settings.get("port", 0)
        return value

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._running

    def start(self, *, prefer_port: int | None = None) -> None:
        """Listen on ``interface``:``port``; raises ``BindError`` if it cannot.

        ``prefer_port``: with ``port=0``, try that port first and a free one
        only if it is taken, so that a server restarted with ``port=0``
        comes back where its clients look for it (give it the ``port`` read
        after the last start).  Ignored when ``port`` is set."""
        if prefer_port is not None and not (type(prefer_port) is int and 0 <= prefer_port <= 65535):
            raise ValueError(f"prefer_port must be a port number (0 to 65535), not {prefer_port!r}")
        check_not_forked(self._loop, "Server")
        warn_stray_attributes(self, cfg.setting_names(self), SERVER_EVENTS, self._callbacks.subscribed)
        with self._lock:
            if self._running:
                raise StateError("the server is already running")
            if not self._stopped.is_set():
                raise StateError("the server is still stopping")
            host = cfg.resolve_interface(self.interface)
            port = self.requested_port
            if self.tls_ca and not self.tls_cert:
                raise TLSConfigError("tls_ca (client certificates) needs tls_cert and tls_key too")
            self._tls_context = server_context(self.tls_cert, self.tls_key, self.tls_ca) if self.tls_cert else None
            try:
                listener = self._listen(host, port, prefer_port)
            except OSError as exc:
                where = host_port(host or "*", port)
                # socket.create_server's strerror repeats the address; the errno's own text suffices.
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise BindError(exc.errno, f"cannot listen on {where}: {reason}") from exc
            if self.cluster is not None:
                try:
                    self._cluster = ClusterNode(self, self.cluster, self.node_id or default_node_id(), self.lease_ttl)
                except BaseException:
                    listener.close()
                    raise
            self._listener = listener
            self._bound_port = listener.port
            self._inbound_budget = Budget(self.max_inbound_total_bytes)
            self._running = True
            self._stopped.clear()
        for warning in self.warnings:
            log.warning("server on port %d: %s", self._bound_port, warning)
        cluster = self._cluster
        if cluster is not None:
            _CLUSTER_NODES.add(self)
            cluster.start()
            # Most starts find Redis up: have the node ready when start()
            # returns.  Without Redis the node listens and refuses newcomers
            # (retry) until it gets there.  (The asyncio API waits for it
            # without blocking its loop.)
            joined = self._loop.in_loop() or cluster.wait_joined(min(2.0, self.lease_ttl))
            if not joined and not cluster.unreachable_said:  # a Redis that refused has said why already
                log.warning("cluster node %s: Redis at %s does not answer yet", cluster.node_id, cluster.url)
        listener.start()
        log.info("server listening on %s", host_port(host or "*", self._bound_port))

    def _listen(self, host: str, port: int, prefer_port: int | None) -> Listener:
        if port == 0 and prefer_port:
            try:
                return self._loop.listen(host, prefer_port, self._accept, self._tls_context)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                # Its clients will not find it there: worth a warning.
                log.warning("server: port %d, preferred, is not free (%s): listening on another", prefer_port, reason)
        return self._loop.listen(host, port, self._accept, self._tls_context)

    def stop(self, timeout: float = 5.0) -> None:
        """Announce shutdown to every client, end every session, stop listening.

        Waits up to ``timeout`` seconds for the clients to have read the
        goodbye (each closes its end as it reads it; one that does not
        within a second is closed) and, outside a callback, for the
        callbacks of earlier events to run.
        Safe to call when not running, and from a callback.
        """
        with self._lock:
            running, self._running = self._running, False
        if not running:
            self._callbacks.wait_idle(timeout)  # the same promise when there is nothing to stop
            return
        self._loop.run_sync(self._stop_on_loop)
        if not self._loop.in_loop():  # from an inline callback the loop must run on to finish
            self._stopped.wait(timeout)
        with self._lock:
            self._bound_port = None
        self._callbacks.wait_idle(timeout)
        if self._cluster is not None:
            # After the callbacks: the last of them hand the node's clients over.
            self._cluster.stop(timeout)
            self._cluster = None

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        # This node's sessions only: a repr must never wait on Redis.  Nor on
        # the server's lock, which is not reentrant (a repr may be asked for
        # under it, by a log line or a debugger); len() of a dict is atomic.
        where = host_port(self.interface or "*", self.port)
        if not self._running:
            return f"<Server {where} stopped>"
        held = len(self._sessions)
        node = f" node {self._cluster.node_id}," if self._cluster is not None else ""
        return f"<Server {where} listening,{node} {held} client(s)>"

    # -- public operations -----------------------------------------------------

    @property
    def clients(self) -> list[str]:
        """Ids of the clients with a live session (including detached ones,
        whose connection broke and which may still resume); in a cluster,
        every node's (``ClusterUnavailable`` without Redis)."""
        return list(self.client_nodes)

    @property
    def held_clients(self) -> list[str]:
        """Ids of the clients whose session this server holds: ``clients``
        outside a cluster; in one, this node's alone (no round trip to
        Redis, so it answers while Redis is away)."""
        with self._lock:
            return list(self._sessions)

    @property
    def detached_clients(self) -> list[str]:
        """Ids of this server's clients whose connection broke and which
        have not come back yet: their sessions wait up to
        ``session_expiry`` for them to resume (messages sent to them are
        queued meanwhile)."""
        with self._lock:
            return [client_id for client_id, session in self._sessions.items() if session.link is None]

    @property
    def cluster_status(self) -> dict[str, Any] | None:
        """In a cluster, while running: this node's ``node`` id, whether it
        is ``ready`` (it reaches Redis and takes newcomers), the Redis
        ``url``, ``takeovers`` (clients it took over from a node that
        died), ``resubscribes`` (times it found its pub/sub connection
        to Redis dead, broken or silent, while Redis answered, and
        subscribed again) and
        ``same_node_id`` (while another node runs with this node's id, a
        misconfiguration: its ``holder`` and ``address``; else None); None
        outside a cluster."""
        cluster = self._cluster
        return cluster.status() if cluster is not None else None

    @property
    def client_nodes(self) -> dict[str, str]:
        """Each client id with a live session and the node that holds it:
        this node's id (``cluster_status["node"]``: the ``node_id`` setting,
        or the one made up when it is None; ``''`` outside a cluster),
        another node's, or ``''`` while no node holds it (its connection broke)."""
        cluster = self._cluster
        if cluster is not None:
            return cluster.clients()
        with self._lock:
            return {client_id: "" for client_id in self._sessions}

    def send(self, target: str, message: Message, timeout: float | None = 0.0) -> None:
        """Send ``message`` to the client ``target``, or to every client for ``'*'``.

        Raises ``UnknownClient`` (a ``KeyError`` too) for an unknown client id, ``QueueFullError`` when
        that client's queue is full, and ``MessageTooLarge`` when the message
        exceeds its frame limit.  A broadcast never raises for one client: a
        client whose queue is full is too slow, and its session ends (logged,
        ``clientdisconnect`` fires); one with a smaller frame limit is skipped.

        ``timeout``: how long a full queue may hold the caller before that
        (seconds; None: as long as it takes).  The default, 0, never waits,
        so one client that stops reading cannot stall the callbacks of all
        the others; a thread of the application's that streams or
        broadcasts a burst passes one to be held back to the clients' pace
        instead (a detached client's full queue, and a cluster's, still
        raise at once).  Not from an inline callback (``StateError``).
        """
        if not isinstance(message, Message):
            raise not_a_message(message)
        if not isinstance(target, str):
            raise TypeError(f"target must be a client id or '*', not {type(target).__name__}")
        if timeout != 0.0 or type(timeout) is not float:  # the default passes unchecked: this runs per send
            timeout = cfg.wait_timeout(timeout)
            if timeout != 0.0 and self._loop.in_loop():
                raise StateError("send(timeout=...) on the I/O thread (an inline callback) would block it")
        body = message.encode()
        if target == cfg.EVERY_CLIENT:
            self._broadcast(body, timeout)
        else:
            self._send_to(target, body, timeout=timeout)

    def request(self, client_id: str, message: Message, timeout: float | None = 10.0) -> Message:
        """Send ``message`` to ``client_id`` as a request and return its reply.

        As ``Client.request``: exactly once through cuts and resumes;
        ``RequestTimeout``, ``SessionLost`` (at once, when the client's
        session ends), ``RemoteError``/``NoResponder``, ``QueueFullError``
        past ``max_requests`` to that client, ``UnknownClient``, and what
        ``send()`` raises.  A full queue holds it, within ``timeout``, until
        the client makes room (as a client's request waits for room).  Not
        from an inline callback.
        """
        if not isinstance(message, Message):
            raise not_a_message(message)
        if self._loop.in_loop():
            raise StateError("request() on the I/O thread (an inline callback) would block it; send() instead")
        timeout = cfg.wait_timeout(timeout)
        began = time.monotonic()
        request_id, waiter = self._start_request(client_id, message, timeout)
        why = functools.partial(self._why_no_reply, client_id)
        return self._requests.wait(request_id, waiter, timeout, why, time.monotonic() - began)

    def _why_no_reply(self, client_id: str) -> str:
        """What a request to ``client_id`` that timed out is told, besides
        the timeout (from what this node knows: no Redis call, since the
        asyncio API asks on its loop)."""
        with self._lock:
            session = self._sessions.get(client_id)
        if session is not None and session.link is None:
            return f"client {client_id!r} is detached: its connection broke and it has not come back"
        if session is None and self._cluster is not None:
            return (
                f"client {client_id!r} is not held by this node: its reply comes through Redis from the node"
                " that holds it, and is lost if that node or Redis fails"
            )
        return ""

    def _check_requests(self, client_id: str) -> None:
        """Raise unless ``client_id`` can answer requests (protocol 2)."""
        with self._lock:
            session = self._sessions.get(client_id)
            version = session.version if session is not None else PROTOCOL_VERSION
        # A client another cluster node holds: Redis knows its version,
        # and checks it as it stores the request (``_send_to``).
        if version < REQUEST_VERSION:
            raise no_requests(client_id, version)

    def _start_request(self, client_id: str, message: Message, timeout: float | None) -> tuple[int, ReplyWaiter]:
        """Open and send a request; a full queue holds it within ``timeout``
        (the request's: it waits for its reply anyway), as a client's
        request waits for room."""
        self._check_requests(client_id)
        waiter = ReplyWaiter()
        request_id, body = self._requests.open(client_id, self.max_requests, message, waiter)
        try:
            self._send_to(client_id, body, request_id, timeout=timeout)
        except BaseException:
            self._requests.forget(request_id)
            raise
        return request_id, waiter

    def _answer(
        self, client_id: str, request_id: int, request: Message, result: object, exc: BaseException | None
    ) -> None:
        """Send the reply to client ``client_id``'s request ``request_id``."""
        body, exc = reply_body(request_id, request, result, exc, self.reply_tracebacks)
        if exc is not None:
            self._answers.raised(exc, client_id)
        try:
            self._send_to(client_id, body)
        except (StateError, UnknownClient, QueueFullError) as lost:
            self._answers.unsent(request_id, client_id, lost)

    def _send_to(
        self, target: str, body: bytes, request_id: int = 0, timeout: float | None = 0.0, waited: float = 0.0
    ) -> None:
        """Queue ``body`` for ``target``; a request (``request_id``) only if
        its protocol has them (in a cluster, Redis checks); a full queue
        holds the caller up to ``timeout`` (``send()``'s).  ``waited``: how
        long the caller has waited for room already (the asyncio API's
        last try), for the error's words."""
        size = len(body) + MESSAGE_OVERHEAD
        if self._cluster is not None:
            self._check_running()
            self._cluster.send_to(target, body, REQUEST_VERSION if request_id else 0, request_id)
            return
        with self._lock:
            self._check_running_locked()
            session = self._sessions.get(target)
            if session is None:
                raise UnknownClient(f"no client {target!r} is connected")
            if size > session.peer_max_frame_size:
                raise MessageTooLarge(
                    f"message of {size} bytes exceeds client {target!r}'s limit of {session.peer_max_frame_size}"
                )
            out = session.out
            if not out.offer(body):
                refuse_unqueueable(body, out.max_bytes)
                if timeout == 0.0 or session.link is None or not self._wait_for_room_locked(session, body, timeout):
                    if session.link is not None and timeout:
                        waited = timeout  # this call's own wait
                    raise QueueFullError(
                        f"send queue of client {target!r} is full ({len(out)} messages, "
                        f"{out.queued_bytes} bytes unacknowledged"
                        + (f" after {waited:g} s" if waited else "")
                        + (", and it is detached" if session.link is None else "")
                        + ")"
                    )
            direct = route_locked(session, self._loop, self._schedule_pump_locked)
        if direct is not None:
            direct[0].send_and_unlock(direct[1])

    def _wait_for_room_locked(self, session: _Session, body: bytes, timeout: float | None) -> bool:
        """Wait (``_lock`` held, released meanwhile) until ``session``'s
        queue takes ``body``: True once it did, False after ``timeout``;
        ``UnknownClient`` when the session ends meanwhile (the message has
        nowhere to go).  A session that detaches meanwhile is waited for:
        it may resume within ``session_expiry``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._room_wait_locked(deadline):
            if self._sessions.get(session.client_id) is not session:
                raise UnknownClient(f"client {session.client_id!r}'s session ended while the send waited for room")
            if session.out.offer(body):
                return True
        return False

    def _room_made_locked(self) -> None:
        """Wake the threads in ``send(..., timeout=)``: a session may have
        room (an ACK, a raised bound) or be gone.  Under ``_lock``."""
        if self._room_waiters:
            self._room.notify_all()

    def _room_wait_locked(self, deadline: float | None) -> bool:
        """Wait once for room made in any session (an ACK, a raised bound,
        a session ended), ``_lock`` held and released meanwhile; False,
        without waiting, once ``deadline`` has passed."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        self._room_waiters += 1
        try:
            self._room.wait(left)
        finally:
            self._room_waiters -= 1
        return True

    def _broadcast(self, body: bytes, timeout: float | None = 0.0) -> None:
        if self._cluster is not None:
            self._check_running()
            self._cluster.broadcast(body)
            return
        with self._lock:
            full, skipped = self._offer_everyone_locked(body)
            if full and timeout != 0.0:
                full = self._wait_for_rooms_locked(full, body, timeout)
            cut = self._cut_off_locked(full)
        self._broadcast_said(skipped, cut)

    def _offer_everyone_locked(self, body: bytes) -> tuple[list[_Session], list[str]]:
        """A broadcast's first step (``_lock`` held): queue ``body`` for
        every session that takes it, and send it on.  Returns the sessions
        whose queues are full, and the ids of the clients skipped for a
        frame limit below the message."""
        size = len(body) + MESSAGE_OVERHEAD
        refuse_unqueueable(body, self.max_queued_bytes)  # before any client is cut for it
        self._check_running_locked()
        full: list[_Session] = []
        skipped: list[str] = []
        for session in self._sessions.values():
            if size > session.peer_max_frame_size:
                skipped.append(session.client_id)
                continue
            if not session.out.offer(body) and not session.cut_off:
                full.append(session)
            if not session.pump_pending:
                # What they have goes out (meanwhile, if the broadcast waits for
                # room); a session between links is skipped there.
                self._schedule_pump_locked(session)
        return full, skipped

    def _wait_for_rooms_locked(self, full: list[_Session], body: bytes, timeout: float | None) -> list[_Session]:
        """A broadcast's wait (``_lock`` held, released meanwhile): queue
        ``body`` in each of the ``full`` sessions as it makes room, and
        send it on at once; those still full after ``timeout``, and those
        detached when it began (nothing reads them), are returned: the
        ones too slow."""
        slow, waiting = split_detached(full)
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiting and self._room_wait_locked(deadline):
            waiting = self._offer_again_locked(waiting, body)
        return slow + waiting

    def _offer_again_locked(self, waiting: list[_Session], body: bytes) -> list[_Session]:
        """Offer a waiting broadcast's ``body`` again to the sessions whose
        queues were full (``_lock`` held); those still full are returned.
        Sessions that ended meanwhile are dropped; one that detached
        meanwhile is waited for, as ``send()`` to one waits."""
        still: list[_Session] = []
        for session in waiting:
            if self._sessions.get(session.client_id) is not session or session.cut_off:
                continue
            if session.out.offer(body):
                if not session.pump_pending:
                    self._schedule_pump_locked(session)
            else:
                still.append(session)
        return still

    def _cut_off_locked(self, slow: list[_Session]) -> list[_Session]:
        """Mark the sessions a broadcast found too slow (``_lock`` held),
        and return them, less those already marked or ended: a session is
        cut once, though it stays in the table until the loop ends it
        (``_broadcast_said``) and broadcasts may wait on it together."""
        cut = [s for s in slow if not s.cut_off and self._sessions.get(s.client_id) is s]
        for session in cut:
            session.cut_off = True
        return cut

    def _broadcast_said(self, skipped: list[str], slow: list[_Session]) -> None:
        """A broadcast's last step, ``_lock`` released: say which clients
        it skipped, and end the sessions it found too slow
        (``_cut_off_locked``).  A broadcast does not fail for everyone
        because one client is too slow: that client's session ends instead
        (bounded memory, logged)."""
        if skipped:
            self._say_skipped(skipped)
        for session in slow:
            _SAY_TOO_SLOW.log(
                self._loop,
                session.client_id,
                logging.WARNING,
                "client %r is too slow: its send queue is full (%d messages); ending its session"
                " (broadcasts sent faster than a client reads fill its queue in a burst larger than"
                " max_queued: raise max_queued, or give send() a timeout to wait for room)",
                session.client_id,
                len(session.out),
            )
            self._slow_cut += 1
            self._loop.call_soon(self._end_session, session, "send queue full: the client did not keep up")

    def _say_skipped(self, skipped: list[str]) -> None:
        """The clients a broadcast skipped, its message being over the frame
        limit they announced: said now and then (clients choose their
        limits, and the server may broadcast often)."""
        unsaid = self._quiet_skips.due()
        if unsaid is not None:
            others = f" and {len(skipped) - 1} other(s)" if len(skipped) > 1 else ""
            log.warning(
                "broadcast skips client %r%s: message over the frame limit it announced%s",
                skipped[0],
                others,
                more(unsaid),
            )

    def _check_running(self) -> None:
        with self._lock:
            self._check_running_locked()

    def _check_running_locked(self) -> None:
        if not self._running:
            raise StateError("the server is not running; start() it first")

    def _schedule_pump_locked(self, session: _Session) -> None:
        """Have the loop write what ``session`` has unwritten (lock held);
        one wake-up of the loop serves every session pumped meanwhile."""
        session.pump_pending = True
        wake = not self._to_pump
        self._to_pump.add(session)
        if wake:
            self._loop.call_soon(self._pump)

    def stats(self, client_id: str | None = None) -> dict[str, Any]:
        """Live figures (docs/STATS.md says what each means): the server's
        (clients, traffic, refusals by code, slow clients cut off), or with
        ``client_id`` that client's session's (``UnknownClient`` for an
        unknown id)."""
        if client_id is not None:
            with self._lock:
                session = self._sessions.get(client_id)
                if session is not None:
                    return self._session_stats(session)
            raise self._unknown(client_id, "its figures are that node's")
        with self._lock:
            sessions = list(self._sessions.values())
            totals = collections.Counter(self._ended_traffic)
            for session in sessions:
                totals.update(traffic(session, session.inbox))
            connected = sum(1 for session in sessions if session.link is not None)
            return {
                "running": self._running,
                "clients": len(sessions),
                "connected": connected,
                "detached": len(sessions) - connected,
                "max_clients": self.max_clients,
                **{figure: totals[figure] for figure in TRAFFIC},
                "refusals": dict(self._refusals),
                "slow_clients_cut": self._slow_cut,
                # To every client, those of other cluster nodes too.
                "requests_in_flight": self._requests.total(),
                "senders_waiting": self._room_waiters,
                "cluster": self.cluster_status,
            }

    def _session_stats(self, session: _Session) -> dict[str, Any]:
        link = session.link
        figures: dict[str, Any] = {
            "client_id": session.client_id,
            "connected": link is not None,
            "peer": link.peer if link is not None else None,
            **session_figures(session, session.inbox),
            "requests_in_flight": self._requests.in_flight(session.client_id),
        }
        if self._cluster is not None:
            # Redis holds the bound, not the local queue (set unbounded by
            # _create_session): this node's max_queued and max_queued_bytes
            # at each of its sends.
            figures["max_queued"], figures["max_queued_bytes"] = self.max_queued, self.max_queued_bytes
        figures.update(session.stats.figures())
        del figures["sessions_lost"]  # a session is its own: it is lost once, and gone
        return figures

    def queued(self, client_id: str) -> int:
        """Messages sent to ``client_id`` that it has not acknowledged yet
        (``UnknownClient`` for an unknown id)."""
        with self._lock:
            session = self._sessions.get(client_id)
        if session is None:
            raise self._unknown(client_id, "ask that node")
        return len(session.out)

    def _unknown(self, client_id: str, there: str) -> UnknownClient:
        """The error for ``client_id`` having no session here; in a cluster,
        one that another node holds is named (``there``: what to do); on
        the driver's thread, which must not wait on Redis, it is not looked
        up, and the error says the node has no session of that id."""
        if self._cluster is not None:
            if self._loop.in_loop():
                return UnknownClient(f"client {client_id!r} has no session on this node (if another holds it: {there})")
            try:
                node = self._cluster.clients().get(client_id)
            except ClusterUnavailable:
                node = None
            if node:
                return UnknownClient(f"client {client_id!r} is held by node {node}, not this one: {there}")
        return UnknownClient(f"no client {client_id!r} is connected")

    def disconnect_client(self, client_id: str, reason: str = "disconnected by the server") -> None:
        """End ``client_id``'s session and close its connection, telling it
        ``reason``; the client does not reconnect by itself.  ``UnknownClient``
        for an unknown id.  In a cluster, on whichever node holds it."""
        if self._cluster is not None:
            self._check_running()
            self._cluster.disconnect(client_id, reason)
            return
        with self._lock:
            if client_id not in self._sessions:
                raise UnknownClient(f"no client {client_id!r} is connected")
        self._loop.run_sync(self._kick, client_id, reason)

    def subscribe(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback`` on ``event`` (``clientconnect``, ``clientdisconnect``,
        ``message``; ``on_message``, ``Message`` and ``on-message`` work too)."""
        self._callbacks.subscribe(event, callback)

    def unsubscribe(self, event: str, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback`` on ``event``."""
        self._callbacks.unsubscribe(event, callback)

    def wait_callbacks(self, timeout: float | None = None) -> bool:
        """Wait until the callbacks of events so far have run (not from a callback)."""
        return self._callbacks.wait_idle(timeout)

    # -- loop thread ---------------------------------------------------------

    def _accept(self, incoming: Incoming) -> None:
        if not self._rate_ok(incoming.host):
            # A plain-TCP client is told why (it retries with backoff); a TLS
            # one is reset at once (a handshake is what a flood must not cost
            # us) and retries as after any failed attempt.
            self._refusals[ErrorCode.RATE_LIMITED] += 1
            incoming.refuse(_RATE_LIMITED_FRAME if self._tls_context is None else None)
            return
        try:
            link = _ServerLink(self, self._loop, incoming)
        except OSError as exc:  # e.g. the peer reset before we got to it
            log.debug("connection from %s lost at once: %s", incoming.peer, exc)
            return
        self._links.add(link)

    def _rate_ok(self, host: str) -> bool:
        """``max_connection_rate`` (``_admission.ConnectionRate``)."""
        rate = self.max_connection_rate
        if rate is None or self._rates.take(host, rate, self._loop.time(), self.handshake_timeout):
            return True
        now = self._loop.time()
        if now - self._rate_logged.get(host, 0.0) > 5:
            self._rate_logged[host] = now
            log.warning("too many connections from %s (over %g per second): refusing some", host, rate)
        return False

    def _tls_refused(self, peer: str, reason: str) -> None:
        """A TLS handshake failed: counted, and logged now and then (a
        misconfigured fleet or a scanner must not flood the log), since the
        client's side alone tells its owner why."""
        self._refusals[TLS_HANDSHAKE] += 1
        unsaid = self._tls_quiet.due()
        if unsaid is not None:
            log.warning(
                "TLS handshake with %s failed: %s%s", peer, reason.removeprefix("TLS handshake failed: "), more(unsaid)
            )

    @property
    def warnings(self) -> list[str]:
        """What is unsafe about how this server is set up (empty when nothing):
        e.g. listening on every interface with neither TLS nor a token.
        ``start()`` logs these too; mcd shows them to whoever started it."""
        found = []
        if cfg.listens_everywhere(self.interface) and not self.tls_cert and not self._auth_required():
            found.append(
                "listening on every interface with neither TLS nor a token: anyone who can reach the port can "
                "connect and read what is sent. Set auth_token (and tls_cert/tls_key), or interface 127.0.0.1 "
                "to keep it local (docs/SECURITY.md)"
            )
        return found

    def _auth_required(self) -> bool:
        return self.auth_token is not None or self.auth_tokens is not None

    def _secret_for(self, client_id: str) -> str | None:
        tokens = self.auth_tokens
        if tokens is not None and client_id in tokens:
            return tokens[client_id]
        return self.auth_token

    def _stop_on_loop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        handed_over: set[_ServerLink] = set()
        if self._cluster is not None:
            # The cluster goes on without this node: its clients resume on
            # another, once the ERROR that tells them so is written.
            with self._lock:
                held = list(self._sessions.values())
            for session in held:
                if session.link is not None:
                    handed_over.add(session.link)
                self._cluster.let_go(
                    session.client_id, "this node is leaving the cluster; resume on another", release=True
                )
        for link in list(self._links):
            if link in handed_over:
                continue
            if link.is_open:
                link.ack_taken()
                # A client closes as it reads the SHUTDOWN: waiting for that
                # (a dead one is closed after a second) has stop() return
                # once its clients have heard it, not while they still take
                # themselves for connected, so that a connect() made just
                # after stop() (mcd's next command) is not undone by it.
                link.send_final(
                    link.proto.send_shutdown("server shutting down"), "server shutting down", peer_first=True
                )
            elif link.transport is not None:
                link.transport.close("server shutting down")
        with self._lock:
            sessions = list(self._sessions.values())
        # One line for them all: a server with thousands of detached clients
        # would otherwise log one warning per client as it stops.
        dropped = [self._end_session(session, "server shutting down", quiet=True) for session in sessions]
        # Those to clients this node handed over, or that another node holds:
        # their replies could reach this node only while it runs.
        self._requests.lose(None, "the server stopped")
        if any(map(any, dropped)):
            unsent, in_flight = (sum(counts) for counts in zip(*dropped, strict=True))
            clients = sum(1 for counts in dropped if any(counts))
            log.warning("server stopped: %s", _dropped_text(unsent, in_flight, f" to {clients} client(s)"))
        if not self._links:
            self._set_stopped()

    def _messages(self, link: _ServerLink, events: list[MessageReceived]) -> None:
        session = link.session
        if session is None:
            return  # the session just ended; the link is closing
        deliver(self._callbacks, self._requests, session.inbox, events, (session.client_id,), self._answer)

    def _handle(self, link: _ServerLink, event: Event) -> None:
        session = link.session
        if isinstance(event, AckReceived):
            if session is None:
                return
            with self._lock:
                more = session.acked(event.seq)
                self._room_made_locked()
            if more:
                self._pump_session(session)  # the window has room again
            if self._cluster is not None:
                self._cluster.acked(session.client_id, event.seq)
            if self._on_room is not None:
                self._on_room(session.client_id)
        elif isinstance(event, PingReceived):
            link.answer_ping()
        elif isinstance(event, PongReceived):
            rtt = link.liveness.pong(self._loop.time())
            if session is not None:
                session.stats.round_trip(rtt)
            if link.probe_waiter is not None or link.probed_for_cluster:
                self._probe_done(link, alive=True)
        elif isinstance(event, Hello):
            self._on_hello(link, event)
        elif isinstance(event, ByeReceived):
            who = link.describe()  # not the link: counted, it would be kept for 5 s
            _SAY_LEFT.log(self._loop, who, logging.INFO, "%s left: %s", who, event.reason)
            if session is not None:
                self._end_session(session, f"client disconnected: {event.reason}")
            if link.transport is not None:
                link.transport.close(f"client said bye: {event.reason}")
        elif isinstance(event, ErrorReceived):
            log.warning("%s reported an error (%s): %s", link.describe(), event.code, event.message)
            if link.transport is not None:
                link.transport.close(f"client reported an error: {event.message}")

    def _refuse(
        self, link: _ServerLink, code: ErrorCode, message: str, retry: bool = False, retry_after: float | None = None
    ) -> None:
        # "Retry shortly" while an id is checked or moves between cluster
        # nodes is routine (a client retries it many times): not a warning.
        level = logging.INFO if code is ErrorCode.ID_IN_USE and retry else logging.WARNING
        who = link.describe()
        if retry:
            # Counted by client id: each retry is a new connection, from a new port.
            speaker = link.hello.client_id if link.hello is not None else who
            _SAY_TURNED_AWAY.log(self._loop, speaker, level, "refusing %s: %s", who, message)
        else:
            log.log(level, "refusing %s: %s", who, message)
        self._refusals[code] += 1
        link.send_final(link.proto.send_error(code, message, retry, retry_after), f"refused: {message}")

    def _on_hello(self, link: _ServerLink, hello: Hello) -> None:
        link.hello = hello
        with self._lock:
            session = self._sessions.get(hello.client_id)
        old = session.link if session is not None else None
        known = Known(
            token=session.token if session is not None else None,
            attached=old is not None,
            probing=old is not None and old.probe_waiter is not None,
        )
        auth = self._auth_required()
        decision = admit(
            hello,
            known,
            running=self._running,
            auth_required=auth,
            secret=self._secret_for(hello.client_id) if auth else None,
            nonce=link.nonce,
        )
        action = decision.action
        if action is Admit.REFUSE or action is Admit.BUSY:
            assert decision.code is not None
            self._refuse(link, decision.code, decision.message, decision.retry)
            return
        link.server_proof = decision.server_proof
        if session is None and self._cluster is not None:
            # Let in (version, token) as by a lone server: whether the id's
            # session is elsewhere in the cluster is Redis's to say.
            self._cluster.admit(link, hello)
            return
        if action is Admit.RESUME:
            assert session is not None
            if old is not None:
                # The client is back before we noticed its old connection
                # die: that one is half-open; the new one takes over.
                old.session = None
                session.link = None
                if old.transport is not None:
                    old.transport.abort("replaced by the client's resumed connection")
            self._attach(link, session, resumed=True)
        elif action is Admit.PROBE:
            assert old is not None
            old.probe_waiter = link
            if link.handshake_timer is not None:
                # The wait is ours now, and the probe's timer ends it with a
                # WELCOME or an ERROR: a short handshake_timeout must not cut
                # the newcomer off first.
                link.handshake_timer.cancel()
                link.handshake_timer = None
            self._start_probe(old)
        else:
            if action is Admit.REPLACE:
                assert session is not None
                log.info("client %r started a new session; its detached one ends", hello.client_id)
                self._end_session(session, "replaced by a new session of the same client id")
            self._new_session(link, hello.client_id)

    def _start_probe(self, old: _ServerLink) -> None:
        """Ask ``old`` whether its client is alive (a PING; ``_probe_done``
        has the answer, or the silence), unless it is being asked already."""
        if old.probe_timer is None:
            old.write(old.proto.send_ping(self._loop.time()))
            old.probe_timer = self._loop.call_later(probe_timeout(self.heartbeat_timeout), self._probe_done, old, False)

    def _probe_done(self, old: _ServerLink, alive: bool) -> None:
        newcomer, old.probe_waiter = old.probe_waiter, None
        for_cluster, old.probed_for_cluster = old.probed_for_cluster, False
        if old.probe_timer is not None:
            old.probe_timer.cancel()
            old.probe_timer = None
        if for_cluster and self._cluster is not None:
            self._cluster.probed(old, alive)
        if newcomer is None or newcomer.transport is None or newcomer.transport.closed:
            return
        assert newcomer.hello is not None
        if alive:
            self._refuse(newcomer, ErrorCode.ID_IN_USE, in_use_message(newcomer.hello.client_id))
            return
        if old.transport is not None:
            old.transport.abort("did not answer a liveness probe")
        session = old.session
        if session is not None:
            self._end_session(session, "replaced by a new session of the same client id")
        self._new_session(newcomer, newcomer.hello.client_id)

    def _new_session(self, link: _ServerLink, client_id: str) -> None:
        if self._cluster is not None and link.hello is not None:
            self._cluster.admit(link, link.hello)  # the cluster numbers and names it
            return
        self._create_session(link, client_id, None, None)

    def _create_session(
        self,
        link: _ServerLink,
        client_id: str,
        token: str | None,
        restore: Callable[[_Session], None] | None,
    ) -> None:
        """Open ``client_id``'s session on ``link``: a new one, or (with
        ``restore``, which fills it in) one that goes on from another node."""
        with self._lock:
            if self.max_clients is not None and len(self._sessions) >= self.max_clients:
                full = True
            else:
                full = False
                cluster = self._cluster
                inbox = (
                    cluster.make_inbox(client_id)
                    if cluster is not None
                    else Inbox(self._loop, self.max_inbound, self.max_inbound_bytes, self._inbound_budget)
                )
                session = _Session(client_id, self.max_queued, self.max_queued_bytes, inbox)
                if token is not None:
                    session.token = token
                if cluster is not None:
                    # Redis bounds the queue (max_queued, max_queued_bytes) before a message gets here.
                    session.set_limits(2**62, 2**62)
                if restore is not None:
                    restore(session)
                self._sessions[client_id] = session
        if full:
            self._refuse(link, ErrorCode.SERVER_FULL, f"server has reached max_clients={self.max_clients}", retry=True)
            return
        if restore is None:
            _SAY_NEW.log(
                self._loop, client_id, logging.INFO, "client %r connected from %s (new session)", client_id, link.peer
            )
        self._attach(link, session, resumed=restore is not None)
        if restore is None:
            self._callbacks.emit("clientconnect", client_id)

    def _attach(self, link: _ServerLink, session: _Session, resumed: bool) -> None:
        assert link.hello is not None
        rate = self.max_connection_rate
        if rate is not None:
            self._rates.give_back(link.host, rate, self.handshake_timeout)
        if link.handshake_timer is not None:
            link.handshake_timer.cancel()
            link.handshake_timer = None
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        with self._lock:
            if resumed:
                session.resumed(link.hello.last_seq)
                session.stats.reconnects += 1
                session.stats.resumes += 1
            else:
                session.stats.connects += 1
            session.peer_max_frame_size = link.hello.max_frame_size
            session.set_window(link.hello.window)
            session.version = link.hello.version
        session.link = link
        link.session = session
        link.write(
            link.proto.send_welcome(
                session.token,
                resumed,
                session.inbox.stream.taken_seq,
                self.max_frame_size,
                self.heartbeat_timeout,
                self._loop.time(),
                proof=link.server_proof,
                window=session.inbox.window(),
            )
        )
        with self._lock:
            session.live = link.transport
        if resumed:
            _SAY_RESUMED.log(
                self._loop,
                session.client_id,
                logging.INFO,
                "client %r resumed its session from %s",
                session.client_id,
                link.peer,
            )
            self._callbacks.emit("clientresume", session.client_id)
        link.start_heartbeat()
        session.inbox.attach(link)
        self._pump_session(session)

    def _pump(self) -> None:
        with self._lock:
            sessions, self._to_pump = self._to_pump, set()
            for session in sessions:
                session.pump_pending = False
        for session in sessions:
            self._pump_session(session)

    def _pump_session(self, session: _Session) -> None:
        link = session.link
        if link is None or not link.is_open or link.transport is None:
            return
        with self._lock:
            chunks = session.take_unsent()
            # Under the lock: send() writes from other threads too, and the
            # frames must reach the socket in sequence order.
            if chunks:
                link.transport.write_many(chunks)

    def _kick(self, client_id: str, reason: str) -> None:
        with self._lock:
            session = self._sessions.get(client_id)
        if session is None:
            return
        link = session.link
        if link is not None and link.is_open:
            link.send_final(link.proto.send_bye(reason), f"disconnected by the server: {reason}")
        self._end_session(session, f"disconnected by the server: {reason}")

    def _end_session(
        self, session: _Session, reason: str, *, for_good: bool = True, quiet: bool = False
    ) -> tuple[int, int]:
        """End ``session`` here; how many messages it dropped, never sent
        and sent in vain, as :func:`_dropped_text` takes them (logged,
        unless ``quiet``: the caller says them).  ``for_good=False`` (a
        cluster node letting a client go): the session goes on elsewhere,
        so the cluster keeps it and ``clientdisconnect`` does not fire."""
        with self._lock:
            if self._sessions.get(session.client_id) is not session:
                return 0, 0
            del self._sessions[session.client_id]
            self._room_made_locked()  # a send waiting for its room gives up
            self._to_pump.discard(session)
            session.pump_pending = False
            session.live = None
            self._ended_traffic.update(traffic(session, session.inbox))
            # Written to a connection that broke (the session is detached):
            # lost as surely as the unsent, unless they arrived just before.
            # On a connection still open they are on their way.
            in_flight = session.in_flight if session.link is None else 0
            dropped = (session.end(), in_flight)
        session.stats.closed()
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        if self._cluster is not None and for_good:
            self._cluster.ended(session.client_id, reason)
        if for_good:
            # Let go in a cluster, the client answers on the node it resumes
            # on, which passes the reply on to this one.
            self._requests.lose(session.client_id, reason)
        link = session.link
        session.link = None
        session.inbox.close()
        if link is not None:
            link.session = None
            if link.transport is not None and not link.transport.closed and not link.is_open:
                link.transport.close_after_flush(reason=reason)
        if not for_good:
            _SAY_LET_GO.log(
                self._loop, session.client_id, logging.INFO, "client %r let go: %s", session.client_id, reason
            )
            return dropped
        if any(dropped) and not quiet:
            # A client that said goodbye chose not to get them: not a warning.
            level = logging.INFO if reason.startswith("client disconnected") else logging.WARNING
            _SAY_DROPPED.log(
                self._loop,
                session.client_id,
                level,
                "session of client %r ended; %s",
                session.client_id,
                _dropped_text(*dropped),
            )
        _SAY_ENDED.log(
            self._loop, session.client_id, logging.INFO, "client %r session ended: %s", session.client_id, reason
        )
        self._callbacks.emit("clientdisconnect", session.client_id)
        if self._on_room is not None:
            self._on_room(session.client_id)
        return dropped

    def _set_stopped(self) -> None:
        self._stopped.set()
        if self._on_stopped is not None:
            self._on_stopped()

    def _link_lost(self, link: _ServerLink, reason: str) -> None:
        self._links.discard(link)
        if link.probe_waiter is not None or link.probed_for_cluster:
            self._probe_done(link, alive=False)
        session = link.session
        if session is not None and session.link is link:
            with self._lock:
                session.live = None
            session.link = None
            session.inbox.detach(link)
            session.stats.closed()
            link.session = None
            _SAY_DETACHED.log(
                self._loop,
                session.client_id,
                logging.INFO,
                "client %r connection lost (%s); session kept for %g s",
                session.client_id,
                reason,
                self.session_expiry,
            )
            session.expiry = self._loop.call_later(self.session_expiry, self._expire, session)
            self._callbacks.emit("clientdetach", session.client_id, reason)
        elif link.proto.state is not ConnState.HANDSHAKE or link.hello is not None:
            log.debug("%s closed: %s", link.describe(), reason)
        if not self._running and not self._links:
            self._set_stopped()

    def _expire(self, session: _Session) -> None:
        session.expiry = None
        if session.link is None:
            self._end_session(session, f"session expired after {self.session_expiry:g} s detached")


#: How often, at most, a failed TLS handshake is logged (the others are counted).
TLS_LOG_EVERY = 5.0
#: A failed TLS handshake's key in ``stats()["refusals"]`` (it gets no ERROR
#: frame: the TLS alert is what the client hears).
TLS_HANDSHAKE = "tls_handshake"

_RATE_LIMITED_FRAME = Connection(Role.SERVER).send_error(
    ErrorCode.RATE_LIMITED, "too many connections from this address; retrying after a pause", retry=True
)


#: Threaded cluster nodes that have started (the asyncio API's stop with
#: their loop, in ``async with`` or ``stop()``).
_CLUSTER_NODES: weakref.WeakSet[Server] = weakref.WeakSet()


def split_detached(full: list[_Session]) -> tuple[list[_Session], list[_Session]]:
    """The sessions a broadcast found full, split: those detached (nothing
    reads their queues, so a broadcast does not wait for them: too slow at
    once) and those it may wait for."""
    return [s for s in full if s.link is None], [s for s in full if s.link is not None]


def _dropped_text(unsent: int, in_flight: int, to: str = "") -> str:
    """What a log line says a session's end dropped: the messages never
    written and those written to a connection that broke, which nobody
    acknowledged (a client that comes back gets none of them)."""
    if not in_flight:
        return f"{unsent} message(s) never sent{to} were dropped"
    return (
        f"{unsent + in_flight} message(s){to} were dropped: {unsent} never sent, {in_flight} sent on a"
        " connection that broke and never acknowledged"
    )


def _hand_over_at_exit() -> None:
    """At interpreter exit, a cluster node still running hands its clients
    over as ``stop()`` does, so that they resume on another node at once
    (else they wait for its lease to run out, and the message in its
    callbacks comes again, marked redelivered).  A lone server is left as it
    is: its clients take the end for a crash and keep trying, as they would
    if the process were killed.  Runs while the library's threads still do."""
    deadline = time.monotonic() + cfg.EXIT_WAIT
    for server in list(_CLUSTER_NODES):
        loop = server._loop
        if server.running and isinstance(loop, Loop) and loop.running() and not loop.in_loop():
            server.stop(max(0.1, deadline - time.monotonic()))


atexit.register(_hand_over_at_exit)
# A forked child has none of its parent's nodes' threads: its exit must not stop them.
os.register_at_fork(after_in_child=_CLUSTER_NODES.clear)
