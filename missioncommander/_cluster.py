"""A server's membership of a cluster: several servers acting as one through Redis.

``ClusterNode`` is what a ``Server`` with ``cluster=`` set does differently
(docs/CLUSTER.md); the shared state and its rules are ``_cluster_store``.
The node keeps the sessions of the clients connected to it in memory as a
lone server does (what the wire needs at once), and Redis holds the
cluster's copy, written before it counts:

- a message to a client is numbered and stored in Redis before it is queued
  on any node (``send`` returns once it is stored), so whichever node the
  client resumes on has everything it has not acknowledged;
- a message from a client is acknowledged to it only once Redis has the
  number of the last one whose callbacks returned, so the node that takes
  the client over goes on from there.

Two threads per node: ``missioncommander-cluster`` listens on the node's
pub/sub channel (messages for its clients sent on other nodes; requests to
let a client go; replies to its requests to clients of other nodes) and on
the one that tells of sessions ended for good, renews the node's leases,
and trims what clients acknowledged; an I/O worker
(``missioncommander-cluster-io``) makes the Redis calls the driver's thread
needs (claims, ends, hand-overs, records of messages taken on that thread,
replies passed on), which must never wait on Redis itself.
When Redis cannot be reached the node refuses newcomers,
keeps its clients while its leases would still be valid, lets them go after
that (they resume on another node), and rejoins by itself.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ._admission import in_use_message
from ._cluster_store import Claim, ClusterStore, notice, parse_notice
from ._errors import ClusterUnavailable, MessageTooLarge, QueueFullError, RemoteProtocolError, UnknownClient
from ._events import ErrorCode, Hello
from ._frames import MAX_REQUEST_ID, MESSAGE_OVERHEAD, message_event, with_meta
from ._inbox import Budget, Inbox
from ._loop import Driver, host_port
from ._message import FrozenDict, Message
from ._quiet import Chorus, Quiet, more
from ._requests import no_requests
from ._streams import refuse_unqueueable

if TYPE_CHECKING:
    from ._server import Server, _ServerLink, _Session

log = logging.getLogger("missioncommander.cluster")

# What a node says of each of many clients at once (a broadcast burst, a
# Redis that restarted, leases lost in a stall): said of the first few,
# counted for the rest (``Chorus``).
_SAY_TOO_SLOW = Chorus(log, "too slow: send queue full; session ended")
_SAY_LEASE_LOST = Chorus(log, "lost its lease on a client; letting it go")
_SAY_SESSION_GONE = Chorus(log, "Redis lost (part of) a client's session")

#: A node's request ids start at a random number below this (its ids then
#: differ from every other node's, with room below MAX_REQUEST_ID).
REQUEST_IDS = MAX_REQUEST_ID // 2

#: Why a node lets a client go whose lease another node has taken.
NOT_HELD = "this node no longer holds the client"

#: How often a node trims acknowledged messages and looks for gaps.
FLUSH_EVERY = 0.05
#: A message from another node that arrives ahead of one before it waits
#: this long for it before the node reads the stream itself.
GAP_WAIT = 0.1
#: How long a newcomer is told that a live client holds an id.
IN_USE_FOR = 5.0
#: Pauses between attempts to reach a lost Redis (seconds).
RETRY_PAUSE = 0.5
#: What a node publishes to its own channel at every renewal: a pub/sub
#: connection that did not hear it (nor anything else) by the next one has
#: died without a word (a NAT or firewall that forgot it while idle, which
#: sends no FIN or RST), and the node would stay deaf to its clients'
#: messages from other nodes for ever: it subscribes again instead.
PROBE = notice("p", "", 0, b"")
#: Sessions that ended for good lately, remembered for a request stored in
#: one just before it ended whose sender learns its token after the news.
ENDED_KEPT = 1024
#: Bytes of replies being passed on to other nodes (waiting for the I/O
#: worker) past which more are dropped, with a warning: a client that
#: sends replies faster than Redis takes them (to requests nobody sent, at
#: worst) must not grow the node's memory without bound.
FORWARD_BUDGET = 64 * 2**20


class _PubSubBroke(Exception):
    """Reading the pub/sub connection failed: that connection is broken,
    and Redis itself may still answer on the others."""


def _next_notice(pubsub: Any, timeout: float) -> Any:
    """``pubsub.get_message``, its failures as ``_PubSubBroke``."""
    try:
        return pubsub.get_message(timeout=timeout)
    except Exception as exc:  # redis-py's errors, and OSError, from its socket
        raise _PubSubBroke(exc) from exc


def _closed(pubsub: Any) -> None:
    """Close a pub/sub connection (None: there is none) that may be broken."""
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception:  # redis-py's errors, or OSError: it is dropped either way
            pass


def node_of(holder: str) -> str:
    """The node id in a holder's name (``ClusterNode.holder``)."""
    return holder.partition("#")[0]


def default_node_id() -> str:
    """A node id unique enough for one cluster: host, process, and random bits."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class ClusterInbox(Inbox):
    """A client's inbox on a cluster node: acknowledges only what Redis has.

    The number of the last message whose callbacks returned is written to
    Redis before the callback thread goes on (so a node that dies has handed
    at most one message to its application that Redis does not know of);
    where callbacks run on the driver's thread (the asyncio API, inline
    callbacks), and for messages nobody subscribed to, the node's I/O worker
    writes it as soon as it can (``ClusterNode.record_taken``).
    """

    def __init__(
        self, loop: Driver, max_count: int, max_bytes: int, budget: Budget | None, node: ClusterNode, client_id: str
    ) -> None:
        super().__init__(loop, max_count, max_bytes, budget)
        self.node = node
        self.client_id = client_id
        #: The last message from the client that Redis records as taken.
        self.recorded = 0
        #: The last message handed to the application before one ahead of it
        #: was taken, for the I/O worker to write (``record_handed``).
        self.handed_upto = 0

    def taken(self, stream: Any, seq: int, size: int) -> None:
        # Recorded even when the node let the client go while this message's
        # callbacks ran: they did run, and the lease is handed back only
        # after this (``ClusterNode.let_go``), so the next node skips it.
        if stream is self.stream:
            self.node.record_taken(self, seq)
        super().taken(stream, seq, size)

    def take_now(self, size: int, count: int = 1) -> None:
        super().take_now(size, count)
        self.node.record_soon(self)

    def handing(self, seq: int) -> None:
        self.node.record_handed(self, seq)

    def ackable(self) -> int:
        return min(self.stream.taken_seq, self.recorded)


class _Soon:
    """Writes for the node's I/O worker to make soon, one per client
    however many were asked for meanwhile (``write(inbox)``, False once
    Redis cannot be reached: the rest wait for the next)."""

    def __init__(self, background: Callable[[Callable[[], None]], None], write: Callable[[ClusterInbox], bool]) -> None:
        self._background = background
        self._write = write
        self._lock = threading.Lock()
        self._due: dict[str, ClusterInbox] = {}
        self._queued = False

    def add(self, inbox: ClusterInbox) -> None:
        with self._lock:
            self._due[inbox.client_id] = inbox
            if self._queued:
                return
            self._queued = True
        self._background(self._flush)

    def _flush(self) -> None:
        with self._lock:
            due, self._due = self._due, {}
            self._queued = False
        for inbox in due.values():
            if not self._write(inbox):
                return


class ClusterNode:
    """One server's part in a cluster (see the module docstring)."""

    def __init__(self, server: Server, url: str, node_id: str, lease_ttl: float) -> None:
        self.server = server
        self.node_id = node_id
        #: What Redis knows this node by: its id and this run's own random
        #: part, so that a node restarted under the same id is a different
        #: holder (it must not take the dead run's leases for its own, and
        #: the clients it takes over learn that run died).
        self.holder = f"{node_id}#{secrets.token_hex(4)}"
        self.lease_ttl = lease_ttl
        self.store = ClusterStore(url)
        #: For logs and status: the store's, without the password the URL may carry.
        self.url = self.store.url
        #: Redis answers and the node listens on its channel: newcomers welcome.
        self.ready = False
        #: Clients resumed here after the node holding them lost them without
        #: letting go (docs/CLUSTER.md: their last message may come twice).
        self.takeovers = 0
        #: Times this node found its pub/sub connection dead while Redis
        #: answered (broken, or silent: its probe did not come back) and
        #: subscribed again.
        self.resubscribes = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._joined = threading.Event()
        #: Redis calls the driver's thread needs (admission, ends, hand-overs)
        #: run here, one at a time and in order, so that thread never waits
        #: on Redis: every connection of the process would wait with it.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="missioncommander-cluster-io")
        #: Client ids whose claim is on its way to Redis (driver's thread only).
        self._claiming: set[str] = set()
        #: Client ids let go whose lease is not released yet.
        self._releases_due: set[str] = set()
        #: Of those, the ones whose release may go now, in one pipeline (the
        #: first added schedules it): a node leaving with thousands of
        #: clients hands them over in a few round trips, not one each.
        self._ready_to_release: list[str] = []
        self._release_lock = threading.Lock()
        self._last_renewed = 0.0
        self._lost_logged = False
        # Guarded by the server's lock: messages from other nodes that came
        # ahead of one before them, per client, and since when.
        self._ahead: dict[str, dict[int, bytes]] = {}
        self._ahead_since: dict[str, float] = {}
        # Guarded by _marks_lock: what to write on the next flush.
        self._marks_lock = threading.Lock()
        self._acked: dict[str, int] = {}
        # What the driver's thread (which must not wait on Redis) has the
        # I/O worker write soon: how far each inbox took, and handed.
        self._records_soon = _Soon(self._background, self._write_record)
        # Guarded by _ended_lock: (client id, token) -> why, for the last
        # ENDED_KEPT sessions that ended for good (oldest first).
        self._ended_lock = threading.Lock()
        self._ended: dict[tuple[str, str], str] = {}
        # Guarded by _forward_lock: bytes of replies waiting to be passed on.
        self._forward_lock = threading.Lock()
        self._forwarding = 0
        self._quiet_over = Quiet()
        self._quiet_nobody = Quiet()
        self._quiet_pubsub = Quiet()
        # A node given another's id stays so until someone fixes a
        # configuration: once a minute is enough to be found.
        self._quiet_twin = Quiet(60.0)
        #: The last node seen renewing under this node's id: (its holder,
        #: where it listens, when seen).  Read by status() on any thread.
        self._twin_seen: tuple[str, str | None, float] | None = None
        self._handed_soon = _Soon(self._background, lambda inbox: self._write_handed(inbox, inbox.handed_upto))

    # -- lifecycle ---------------------------------------------------------------

    @property
    def keep(self) -> float:
        """How long Redis keeps a session nobody renews: the server's
        ``session_expiry`` after the holder's lease ran out."""
        return self.server.session_expiry + self.lease_ttl

    def start(self) -> None:
        self._stopping.clear()
        requests = self.server._requests
        # Ids from a random point: a client's reply names the id alone, and
        # a node passes on one it did not ask (a request from another node,
        # or one whose client moved here before answering) to the node Redis
        # records for that id: no two nodes' ids may meet.
        requests.number_from(secrets.randbelow(REQUEST_IDS))
        requests.elsewhere = self._forward_reply
        requests.forgotten = self._forgotten
        self._thread = threading.Thread(target=self._run, name="missioncommander-cluster", daemon=True)
        self._thread.start()

    def _background(self, fn: Any, *args: Any) -> None:
        """Run ``fn`` on the I/O worker; after ``stop()`` there is none, and
        Redis forgets what was left by the leases' expiry."""
        try:
            self._io.submit(fn, *args)
        except RuntimeError:
            log.debug("cluster node %s stopped: %s not sent to Redis", self.node_id, getattr(fn, "__name__", fn))

    def wait_joined(self, timeout: float) -> bool:
        """Wait until the node has reached Redis once (True), or ``timeout``."""
        return self._joined.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.server._requests.elsewhere = None
        self.server._requests.forgotten = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None
        self.ready = False
        # Hand-overs still waiting for callbacks that will not run now (the
        # asyncio API's run on the loop that is stopping us): release them,
        # so the next node need not wait out the leases.
        for client_id in list(self._releases_due):
            self._release_now(client_id)
        self._io.shutdown(wait=True)  # the last hand-overs reach Redis first
        # At interpreter exit the worker takes nothing new (concurrent.futures
        # refuses once the interpreter is shutting down): release them here.
        with self._release_lock:
            self._ready_to_release = list(self._releases_due)
        self._release_ready()
        self.store.close()

    def status(self) -> dict[str, Any]:
        """For ``Server.stats()``: this node and its view of the cluster."""
        return {
            "node": self.node_id,
            "ready": self.ready,
            "url": self.url,
            "takeovers": self.takeovers,
            "resubscribes": self.resubscribes,
            "same_node_id": self._same_node_id(),
        }

    def _same_node_id(self) -> dict[str, str | None] | None:
        """Another node running with this node's id, while one is seen (it
        renews every third of its lease: unseen for a whole lease, it is gone)."""
        seen = self._twin_seen
        if seen is None or time.monotonic() - seen[2] > self.lease_ttl:
            return None
        return {"holder": seen[0], "address": seen[1]}

    # -- the loop thread: who gets in ------------------------------------------------

    def admit(self, link: _ServerLink, hello: Hello) -> None:
        """A HELLO for an id with no session on this node: ask Redis."""
        server = self.server
        if not self.ready:
            server._refuse(
                link, ErrorCode.SERVER_FULL, "this node cannot reach the cluster's Redis; try another", retry=True
            )
            return
        if server.max_clients is not None and len(server._sessions) >= server.max_clients:
            server._refuse(
                link, ErrorCode.SERVER_FULL, f"server has reached max_clients={server.max_clients}", retry=True
            )
            return
        client_id = hello.client_id
        if client_id in self._claiming:
            server._refuse(link, ErrorCode.ID_IN_USE, f"client id {client_id!r} is being checked; retry", retry=True)
            return
        self._claiming.add(client_id)
        self._background(self._claim, link, hello)

    def _claim(self, link: _ServerLink, hello: Hello) -> None:
        """Ask Redis for the HELLO's client id (the I/O worker), then go on
        on the driver's thread."""
        client_id = hello.client_id
        result: Claim | ClusterUnavailable
        try:
            result = self.store.claim(
                client_id,
                self.holder,
                hello.session,
                secrets.token_urlsafe(24),
                hello.last_seq,
                self.lease_ttl,
                self.keep,
                hello.max_frame_size,
                hello.version,
            )
            if result.outcome in ("moving", "held"):
                # Ask the holder to let go (it checks the token; a detached
                # session without one ends, a live client keeps its id).
                token = hello.session.encode() if result.outcome == "moving" and hello.session else b""
                self.store.publish(result.node, notice("t", client_id, 0, token))
        except ClusterUnavailable as exc:
            result = exc
        self.server._loop.call_soon(self._admitted, link, hello, result)

    def _admitted(self, link: _ServerLink, hello: Hello, claim: Claim | ClusterUnavailable) -> None:
        """What Redis said to a HELLO's claim: carry it out (driver's thread)."""
        server = self.server
        client_id = hello.client_id
        self._claiming.discard(client_id)
        if isinstance(claim, ClusterUnavailable):
            self._lost(claim)
            server._refuse(link, ErrorCode.SERVER_FULL, "this node cannot reach the cluster's Redis", retry=True)
            return
        got_it = claim.outcome not in ("in_use", "moving", "held")
        if not server._running or link.transport is None or link.transport.closed:
            if got_it:  # nobody here to hold it: the next node need not wait for the lease
                self._release_soon(client_id)
            if server._running:
                return
            server._refuse(link, ErrorCode.SERVER_FULL, "server is shutting down", retry=True)
            return
        if claim.outcome == "in_use":
            server._refuse(link, ErrorCode.ID_IN_USE, in_use_message(client_id))
        elif claim.outcome in ("moving", "held"):
            server._refuse(
                link,
                ErrorCode.ID_IN_USE,
                f"client id {client_id!r} is held by node {node_of(claim.node)}; retry",
                retry=True,
                # The holder lets go at once if it is alive; if it died, the
                # id is free when its lease runs out: the client need not
                # guess with its backoff past that.
                retry_after=claim.free_in,
            )
        elif claim.outcome == "resume":
            if claim.node not in ("", self.holder):
                self.takeovers += 1
                which = (
                    f"messages {claim.suspect} to {claim.suspect_to} of this session may have reached that"
                    " node's callbacks already; they come"
                    if claim.suspect_to > claim.suspect
                    else f"message number {claim.suspect} of this session may have reached that node's"
                    " callbacks already; it comes"
                )
                log.warning(
                    "client %r resumes here after node %s lost it without letting go: the client's %s"
                    " marked redelivered (docs/CLUSTER.md)",
                    client_id,
                    node_of(claim.node),
                    which,
                )
            server._create_session(link, client_id, claim.token, lambda session: self._restore(session, claim))
        else:
            if claim.outcome in ("stale", "unknown"):
                log.warning(
                    "client %r named a session the cluster no longer has (Redis lost it, or it expired):"
                    " it gets a new one, and is told so",
                    client_id,
                )
            server._create_session(link, client_id, claim.token, None)

    def _restore(self, session: _Session, claim: Claim) -> None:
        """Give ``session`` (new on this node) what Redis holds of it (server
        lock held), with the messages a holder that died may have handed to
        its callbacks already (``Claim.suspect`` to ``suspect_to``: they come
        ``redelivered``)."""
        out = session.out
        for body in claim.bodies:
            out.offer(body)
        out.next_seq = claim.out_seq + 1
        session.sent_seq = claim.first - 1
        inbox = session.inbox
        assert isinstance(inbox, ClusterInbox)
        stream = inbox.stream
        stream.last_seq = stream.taken_seq = stream.acked_seq = inbox.recorded = claim.in_taken
        inbox.redelivered_upto = claim.suspect_to

    def make_inbox(self, client_id: str) -> ClusterInbox:
        server = self.server
        return ClusterInbox(
            server._loop, server.max_inbound, server.max_inbound_bytes, server._inbound_budget, self, client_id
        )

    def ended(self, client_id: str, reason: str) -> None:
        """This node ended ``client_id``'s session: so does the cluster."""
        with self.server._lock:
            self._ahead.pop(client_id, None)
            self._ahead_since.pop(client_id, None)
        self._background(self._end, client_id, reason)

    def _end(self, client_id: str, reason: str) -> None:
        try:
            self.store.end(client_id, self.holder, reason)
        except ClusterUnavailable as exc:
            # Redis forgets it by itself (its expiry); a resume then starts anew.
            log.warning("could not end client %r's session in Redis: %s", client_id, exc)

    def let_go(self, client_id: str, reason: str, release: bool) -> None:
        """Drop ``client_id``'s session here without ending it (loop thread):
        the client is told to retry, and resumes on whichever node it
        reaches.  ``release`` hands the lease back at once."""
        server = self.server
        with server._lock:
            session = server._sessions.get(client_id)
            self._ahead.pop(client_id, None)
            self._ahead_since.pop(client_id, None)
        if session is not None:
            # Its messages still waiting for callbacks come again, unacknowledged, on the next node.
            session.inbox.dropped = True
            link = session.link
            if link is not None and link.is_open:
                link.send_final(link.proto.send_error(ErrorCode.SERVER_FULL, reason, retry=True), reason)
            server._end_session(session, reason, for_good=False)
        if release:
            # After the callback running now, if any, has returned and
            # recorded its message: the next node starts after it.
            self._releases_due.add(client_id)
            server._callbacks.serial.submit(self._release_now, client_id)
        else:
            # Its lease is gone: another node may hold the client already.
            self._background(self._record_asks, client_id)

    def _release_soon(self, client_id: str) -> None:
        self._releases_due.add(client_id)
        self._release_now(client_id)

    def _release_now(self, client_id: str) -> None:
        """Hand ``client_id``'s lease back, with the others ready (any thread)."""
        with self._release_lock:
            first = not self._ready_to_release
            self._ready_to_release.append(client_id)
        if first:
            self._background(self._release_ready)

    def _release_ready(self) -> None:
        with self._release_lock:
            ready, self._ready_to_release = self._ready_to_release, []
        client_ids = [c for c in dict.fromkeys(ready) if c in self._releases_due]  # not released already (by stop())
        self._releases_due.difference_update(client_ids)
        if not client_ids:
            return
        for client_id in client_ids:
            self._record_asks(client_id)  # before the next holder can take the client and its replies
        try:
            self.store.release_many(client_ids, self.holder)
        except ClusterUnavailable as exc:
            log.warning(
                "could not hand %d client(s) over (%s): %s (their leases run out instead)",
                len(client_ids),
                ", ".join(map(repr, client_ids[:3])) + (", ..." if len(client_ids) > 3 else ""),
                exc,
            )

    def _record_asks(self, client_id: str) -> None:
        """Record this node's requests to ``client_id``, which it lets go,
        as its own in Redis: the next holder passes their replies on here."""
        pending = self.server._requests.ids_for(client_id)
        if not pending:
            return
        try:
            self.store.asked(client_id, pending, self.holder)
        except ClusterUnavailable as exc:
            log.warning(
                "could not record this node's %d request(s) to client %r, which it lets go: %s (they time out)",
                len(pending),
                client_id,
                exc,
            )

    def _asked_for(self, client_id: str, token: str) -> None:
        """Another node has a newcomer for ``client_id`` (loop thread)."""
        server = self.server
        with server._lock:
            session = server._sessions.get(client_id)
        if session is None:
            if client_id not in self._claiming:
                self._release_soon(client_id)
        elif token and token == session.token:
            self.let_go(client_id, "the client resumed on another node", release=True)
        elif session.link is None:
            server._end_session(session, "replaced by a new session of the same client id")
        else:
            # Attached: to a live client, or to a dead half-open connection
            # however recently it spoke.  Ask it, as a lone server does.
            session.link.probed_for_cluster = True
            server._start_probe(session.link)

    def probed(self, link: _ServerLink, alive: bool) -> None:
        """The answer to a probe for a newcomer on another node (driver's
        thread): a live holder keeps its id (the newcomer's next try is
        refused for good); a dead one's session ends, so the next try gets in."""
        session = link.session
        if session is None:
            return
        if alive:
            self._background(self._mark_in_use, session.client_id)
            return
        if link.transport is not None:
            link.transport.abort("did not answer a liveness probe")
        self.server._end_session(session, "replaced by a new session of the same client id")

    def _mark_in_use(self, client_id: str) -> None:
        try:
            self.store.mark_in_use(client_id, IN_USE_FOR)
        except ClusterUnavailable as exc:
            log.warning("could not tell the cluster that client %r is in use: %s", client_id, exc)

    # -- callers' threads: sending ----------------------------------------------------

    def send_to(self, client_id: str, body: bytes, min_version: int = 0, request_id: int = 0) -> None:
        """Store ``body`` for ``client_id`` and queue it if this node holds
        it; a request (``min_version``, ``request_id``) only to a client that
        has them, and it fails when the session it is stored in ends."""
        server = self.server
        refuse_unqueueable(body, server.max_queued_bytes)
        appended = self.store.append(
            client_id, body, server.max_queued, self.holder, min_version, request_id, server.max_queued_bytes
        )
        if isinstance(appended, tuple):
            why, limit = appended
            if why == "unknown":
                raise UnknownClient(f"no client {client_id!r} is connected to the cluster")
            if why == "old":
                raise no_requests(client_id, limit)
            if why == "too_large":
                raise MessageTooLarge(
                    f"message of {len(body) + MESSAGE_OVERHEAD} bytes exceeds client {client_id!r}'s limit of {limit}"
                )
            if limit:
                raise QueueFullError(
                    f"send queue of client {client_id!r} is full ({limit} bytes queued,"
                    f" max_queued_bytes={server.max_queued_bytes})"
                )
            raise QueueFullError(f"send queue of client {client_id!r} is full ({server.max_queued} messages)")
        if request_id and server._requests.stored_in(request_id, appended.session):
            with self._ended_lock:
                ended = self._ended.get((client_id, appended.session))
            if ended is not None:  # ended as it was stored: the news came first
                server._loop.call_soon(self._session_ended, client_id, appended.session, ended)
        if appended.node == self.holder:
            self.deliver(client_id, appended.seq, body)

    def broadcast(self, body: bytes) -> None:
        refuse_unqueueable(body, self.server.max_queued_bytes)
        mine, full, skipped = self.store.broadcast(
            body, self.server.max_queued, self.holder, self.server.max_queued_bytes
        )
        if skipped:
            self.server._say_skipped(skipped)
        for client_id, seq in mine:
            self.deliver(client_id, seq, body)
        for client_id in full:
            _SAY_TOO_SLOW.log(
                self.server._loop,
                client_id,
                logging.WARNING,
                "client %r is too slow: its send queue is full; ending its session",
                client_id,
            )
            self.server._slow_cut += 1
            try:
                self.disconnect(client_id, "send queue full: the client did not keep up")
            except UnknownClient:
                pass

    def deliver(self, client_id: str, seq: int, body: bytes) -> None:
        """Message ``seq`` to ``client_id``, numbered and stored in Redis:
        queue it here, in order, if this node holds the client."""
        server = self.server
        with server._lock:
            session = server._sessions.get(client_id)
            if session is None:
                return  # not ours (any more): it waits in Redis for the holder
            out = session.out
            if seq < out.next_seq:
                return  # already here (our own send, or read from the stream)
            if seq > out.next_seq:
                self._ahead.setdefault(client_id, {})[seq] = body
                self._ahead_since.setdefault(client_id, time.monotonic())
                return
            out.offer(body)
            ahead = self._ahead.get(client_id)
            if ahead:
                while out.next_seq in ahead:
                    out.offer(ahead.pop(out.next_seq))
                if not ahead:
                    del self._ahead[client_id]
                    self._ahead_since.pop(client_id, None)
            if not session.pump_pending:
                server._schedule_pump_locked(session)

    def clients(self) -> dict[str, str]:
        return {client_id: node_of(holder) for client_id, holder in self.store.clients().items()}

    def disconnect(self, client_id: str, reason: str) -> None:
        holder = self.store.clients().get(client_id)
        if holder is None:
            raise UnknownClient(f"no client {client_id!r} is connected to the cluster")
        if holder == self.holder:
            self.server._loop.run_sync(self.server._kick, client_id, reason)
        elif holder:
            self.store.publish(holder, notice("k", client_id, 0, reason.encode()))
        else:
            self.store.end(client_id, self.holder, f"disconnected by the server: {reason}")

    # -- the driver's and callback threads: what clients sent -----------------------------

    def acked(self, client_id: str, seq: int) -> None:
        with self._marks_lock:
            self._acked[client_id] = seq

    def record_taken(self, inbox: ClusterInbox, seq: int) -> None:
        """Write that message ``seq`` from the client was taken.  On a
        callback thread, before the next callback starts (so a node that
        dies has handed at most this one message to its application
        unrecorded); on the driver's thread (the asyncio API, inline
        callbacks), which must not wait on Redis, soon (``record_soon``)."""
        if self.server._loop.in_loop():
            self.record_soon(inbox)
            return
        try:
            held = self.store.taken(inbox.client_id, self.holder, seq)
        except ClusterUnavailable as exc:
            self._lost(exc)
            return
        if held:
            inbox.recorded = seq
        else:
            self._not_held(inbox.client_id)

    def record_handed(self, inbox: ClusterInbox, seq: int) -> None:
        """Write that messages up to ``seq`` from the client reach their
        callbacks before one ahead of them is taken (a request answered
        beside them), before they do: a node that dies then has them marked
        ``redelivered`` on the next, however many there are.  On a callback
        thread; on the driver's (the asyncio API, ``inline_callbacks``),
        which must not wait on Redis, the I/O worker writes it soon, as
        ``record_soon`` does: one write per client however many runs were
        handed meanwhile."""
        if not self.server._loop.in_loop():
            self._write_handed(inbox, seq)
            return
        inbox.handed_upto = seq
        self._handed_soon.add(inbox)

    def _write_handed(self, inbox: ClusterInbox, seq: int) -> bool:
        """False when Redis cannot be reached."""
        try:
            held = self.store.handed(inbox.client_id, self.holder, seq)
        except ClusterUnavailable as exc:
            self._lost(exc)
            return False
        if not held:
            self._not_held(inbox.client_id)
        return True

    def record_soon(self, inbox: ClusterInbox) -> None:
        """Have the I/O worker write what ``inbox`` took so far: one write
        per client however many were taken meanwhile."""
        self._records_soon.add(inbox)

    def _write_record(self, inbox: ClusterInbox) -> bool:
        """Write how far ``inbox`` took (I/O worker); False when Redis cannot be reached."""
        seq = inbox.stream.taken_seq
        try:
            held = self.store.taken(inbox.client_id, self.holder, seq)
        except ClusterUnavailable as exc:
            self._lost(exc)
            return False
        if held:
            inbox.recorded = max(inbox.recorded, seq)
        else:  # as record_taken does: the write from the driver's thread found the lease gone too
            self._not_held(inbox.client_id)
        return True

    def _not_held(self, client_id: str) -> None:
        """A write found another node holding ``client_id``: let it go here."""
        self.server._loop.call_soon(self.let_go, client_id, NOT_HELD, False)

    # -- the node's thread ---------------------------------------------------------------

    def _run(self) -> None:
        pubsub: Any = None
        next_renew = 0.0
        # The last PROBE is out: nothing heard on the pub/sub connection since.
        probe_out = False
        # Why the pub/sub connection alone broke, until Redis is found answering.
        broke: BaseException | None = None
        subscribed_at = 0.0
        # The Redis run subscribed to: a pub/sub connection that broke in
        # another run's time broke with Redis, which restarted.
        redis_run_id: str | None = None
        while not self._stopping.is_set():
            try:
                if pubsub is None:
                    run_id = self.store.run_id()  # Redis down: _lost, below, as for any other call
                    if broke is not None:
                        if run_id is not None and run_id == redis_run_id:
                            self._pubsub_died(f"broke ({broke}), while Redis answers")
                        else:  # Redis restarted meanwhile (or will not say): a loss of Redis, as ever
                            self._lost(broke)
                        broke = None
                    redis_run_id = run_id
                    pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.store.channel + self.holder, self.store.ended)
                    subscribed_at = time.monotonic()
                    self._renew()
                    self._catch_up()
                    next_renew = time.monotonic() + self.lease_ttl / 3
                    probe_out = False
                    # Ready before it is said: whoever reads the line and then
                    # the status finds them agreeing.
                    was_ready, self.ready = self.ready, True
                    if not was_ready:
                        again = "is back" if self._joined.is_set() else "joined"
                        log.info("cluster node %s %s (Redis at %s)", self.node_id, again, self.url)
                    self._joined.set()
                    self._lost_logged = False
                message = _next_notice(pubsub, FLUSH_EVERY)
                if message is not None:
                    probe_out = False
                while message is not None:
                    self._on_notice(message["data"])
                    message = _next_notice(pubsub, 0)
                now = time.monotonic()
                if now >= next_renew:
                    self._renew()
                    next_renew = now + self.lease_ttl / 3
                    if probe_out:
                        # Read just above: the probe had a whole renewal's time to come.
                        self._pubsub_died(
                            f"heard nothing for {self.lease_ttl / 3:.1f} s, not even its own probe"
                            " (a NAT or firewall may have dropped the idle connection)"
                        )
                        _closed(pubsub)
                        pubsub = None
                        continue
                    probe_out = True
                    self.store.publish(self.holder, PROBE)
                self._flush()
                self._fill_gaps(now)
            except _PubSubBroke as exc:
                # Not yet "lost Redis": the next turn pings it first, and only
                # a Redis that does not answer makes this node refuse newcomers.
                broke = exc.__cause__
                _closed(pubsub)
                pubsub = None
                if time.monotonic() - subscribed_at < RETRY_PAUSE:
                    # Broken again as soon as made: no spinning on it.
                    self._stopping.wait(RETRY_PAUSE)
            except Exception as exc:  # redis-py raises its own errors, and OSError, from its sockets
                broke = None
                self._lost(exc)
                _closed(pubsub)
                pubsub = None
                self._stopping.wait(RETRY_PAUSE)
        _closed(pubsub)

    def _pubsub_died(self, how: str) -> None:
        """The pub/sub connection is dead while Redis answers (``how``): the
        node subscribes again, on a new one, and reads what it missed."""
        self.resubscribes += 1
        if (unsaid := self._quiet_pubsub.due()) is not None:
            log.warning(
                "cluster node %s: its pub/sub connection to Redis at %s %s: "
                "subscribing again and reading what it missed%s",
                self.node_id,
                self.url,
                how,
                more(unsaid),
            )

    def _twin(self, holder: str, where: str | None) -> None:
        """Another node renews under this node's id."""
        self._twin_seen = (holder, where, time.monotonic())
        if (unsaid := self._quiet_twin.due()) is not None:
            log.warning(
                "cluster node %s: another node runs with the same node_id (%s, listening on %s): "
                "logs, client_nodes and statuses cannot tell the two apart; give each node its own node_id%s",
                self.node_id,
                holder,
                where or "an unknown address",
                more(unsaid),
            )

    @property
    def unreachable_said(self) -> bool:
        """Whether the node has said, since it last reached Redis, that it cannot."""
        return self._lost_logged

    def _lost(self, exc: BaseException) -> None:
        """Redis did not answer: refuse newcomers; past the leases, let go."""
        self.ready = False
        if not self._lost_logged:
            self._lost_logged = True
            # A node that never reached it has not lost it (a Redis not up
            # yet, a wrong URL): said so, the first of the start's lines.
            lost = "lost Redis" if self._joined.is_set() else "cannot reach Redis"
            log.warning(
                "cluster node %s %s at %s (%s): refusing new clients until it is back",
                self.node_id,
                lost,
                self.url,
                # The store's own words name the URL again: the cause they wrap.
                exc.__cause__ if isinstance(exc, ClusterUnavailable) and exc.__cause__ is not None else exc,
            )
        if self._last_renewed and time.monotonic() - self._last_renewed > self.lease_ttl:
            self._let_go_all("this node lost the cluster's Redis; resume on another node")

    def _let_go_all(self, reason: str) -> None:
        with self.server._lock:
            held = list(self.server._sessions)
        for client_id in held:
            self.server._loop.call_soon(self.let_go, client_id, reason, False)

    def _renew(self) -> None:
        server = self.server
        with server._lock:
            held = list(server._sessions)
        presence = host_port(server.interface or "*", server.port)
        renewal = self.store.renew(self.holder, self.node_id, held, self.lease_ttl, self.keep, presence)
        if renewal.named_before is not None and self._last_renewed:
            # Not at the first renewal: then it may be this id's previous
            # run, dead (its mark outlives it by up to lease_ttl).  Later,
            # only a live node renewing under the same id writes it.
            self._twin(renewal.named_before, renewal.named_before_at)
        self._last_renewed = time.monotonic()
        for client_id in renewal.lost:
            _SAY_LEASE_LOST.log(
                server._loop,
                client_id,
                logging.WARNING,
                "cluster node %s lost its lease on client %r; letting it go",
                self.node_id,
                client_id,
            )
            server._loop.call_soon(self.let_go, client_id, NOT_HELD, False)

    def _catch_up(self) -> None:
        """After (re)joining: notices may have been lost, and Redis may have
        lost data.  Read each held client's stream past what is queued here.
        A session Redis no longer has, or has behind what this node queued or
        recorded (a Redis that restarted without its last writes), is ended
        there and let go: resuming it would lose or repeat messages, so the
        client's next HELLO gets a new session and the client hears
        ``sessionlost``."""
        server = self.server
        with server._lock:
            held = [
                (
                    client_id,
                    session.out.next_seq - 1,
                    session.inbox.recorded if isinstance(session.inbox, ClusterInbox) else 0,
                )
                for client_id, session in server._sessions.items()
            ]
        whole: list[tuple[str, int]] = []
        found = self.store.numbers_many([client_id for client_id, _, _ in held])
        for (client_id, last, recorded), numbers in zip(held, found, strict=True):
            if numbers is None or numbers[0] < last or numbers[1] < recorded:
                _SAY_SESSION_GONE.log(
                    server._loop,
                    client_id,
                    logging.WARNING,
                    "Redis lost (part of) client %r's session; the client gets a new one",
                    client_id,
                )
                if numbers is not None:
                    self.store.end(client_id, self.holder, "the cluster lost this session")
                server._loop.call_soon(self.let_go, client_id, "the cluster lost this session", False)
            else:
                whole.append((client_id, last))
        # In pipelines, not a round trip per client: 3,000 clients took the
        # node's thread 0.8 s one by one (0.25 s so), deaf to notices meanwhile.
        for (client_id, _), entries in zip(whole, self.store.read_many(whole), strict=True):
            for seq, body in entries:
                self.deliver(client_id, seq, body)

    def _fill_gaps(self, now: float) -> None:
        sessions = self.server._sessions
        with self.server._lock:
            late = [client_id for client_id, since in self._ahead_since.items() if now - since > GAP_WAIT]
            wanted = {c: sessions[c].out.next_seq - 1 for c in late if c in sessions}
        for client_id, last in wanted.items():
            for seq, body in self.store.read(client_id, last):
                self.deliver(client_id, seq, body)

    def _flush(self) -> None:
        with self._marks_lock:
            acked, self._acked = self._acked, {}
        if acked:
            self.store.trim(acked)

    def _on_notice(self, data: bytes) -> None:
        kind, pairs, body = parse_notice(data)
        loop = self.server._loop
        if kind in ("d", "b"):
            for client_id, seq in pairs:
                self.deliver(client_id, seq, body)
        elif kind == "t":
            for client_id, _ in pairs:
                loop.call_soon(self._asked_for, client_id, body.decode())
        elif kind == "k":
            for client_id, _ in pairs:
                loop.call_soon(self.server._kick, client_id, body.decode())
        elif kind == "e":
            # Every node hears of every session that ends: only one that
            # waits for a reply from that client has anything to do.
            token, _, why = body.decode().partition(" ")
            requests = self.server._requests
            for client_id, _ in pairs:
                with self._ended_lock:
                    self._ended[client_id, token] = why
                    if len(self._ended) > ENDED_KEPT:
                        del self._ended[next(iter(self._ended))]
                if requests.in_flight(client_id):
                    loop.call_soon(self._session_ended, client_id, token, why)
        elif kind == "r":
            # A reply to this node's request, passed on by the client's
            # holder: read only if the request still waits (no timeout).
            requests = self.server._requests
            for client_id, request_id in pairs:
                if requests.waiting_for(client_id, request_id):
                    loop.call_soon(self._reply_from_elsewhere, client_id, request_id, body)

    # -- replies to requests another node sent -------------------------------------------

    def _session_ended(self, client_id: str, token: str, why: str) -> None:
        """``client_id``'s session ``token`` ended for good, on whichever
        node (driver's thread): this node's requests stored in it wait for
        replies that cannot come.  (Those of the node that ended it failed
        already.)"""
        self.server._requests.lose(client_id, why, session=token)

    def _forward_reply(self, client_id: str, request_id: int, reply: Message, error: FrozenDict | None) -> None:
        """A reply from ``client_id`` this node did not ask for (any thread):
        to the node that asked, as Redis records it (the I/O worker passes
        it on; one nobody asked goes no further)."""
        meta: dict[str, Any] = {"reply": request_id}
        if error is not None:
            meta["error"] = error
        body = with_meta(reply.encode(), meta)
        with self._forward_lock:
            over = self._forwarding + len(body) > FORWARD_BUDGET
            if not over:
                self._forwarding += len(body)
        if over:
            if (unsaid := self._quiet_over.due()) is not None:
                log.warning(
                    "client %r's reply to request %d dropped: %g MiB of replies already wait to be passed on to"
                    " the nodes that asked (Redis is slow, or the client sends replies nobody asked for)%s",
                    client_id,
                    request_id,
                    FORWARD_BUDGET / 2**20,
                    more(unsaid),
                )
            return
        self._background(self._pass_reply, client_id, request_id, body)

    def _pass_reply(self, client_id: str, request_id: int, body: bytes) -> None:
        try:
            if (
                not self.store.pass_reply(client_id, request_id, body)
                and (unsaid := self._quiet_nobody.due()) is not None
            ):
                log.info(
                    "client %r replied to request %d, which no node waits for; dropped%s",
                    client_id,
                    request_id,
                    more(unsaid),
                )
        except ClusterUnavailable as exc:
            log.warning(
                "client %r's reply to request %d was not passed on to the node that asked: %s (it times out there)",
                client_id,
                request_id,
                exc,
            )
        finally:
            with self._forward_lock:
                self._forwarding -= len(body)

    def _forgotten(self, client_id: str, request_id: int) -> None:
        """This node waits no more for ``request_id`` (it timed out): nor
        should Redis keep its asker (any thread)."""
        self._background(self._forget_ask, client_id, request_id)

    def _forget_ask(self, client_id: str, request_id: int) -> None:
        try:
            self.store.forget_ask(client_id, request_id)
        except ClusterUnavailable:
            pass  # it goes with the session

    def _reply_from_elsewhere(self, client_id: str, request_id: int, body: bytes) -> None:
        """A reply another node passed on (driver's thread): this node's, if
        it asked ``client_id`` request ``request_id``; else nobody's here."""
        try:
            event = message_event(bytes(8) + body)
        except RemoteProtocolError as exc:  # another node wrote it: a bug, not a peer
            log.error("a reply passed on by another node is unreadable: %s", exc)
            return
        meta = event.meta
        if meta is None or meta.get("reply") != request_id:
            return
        message = Message._from_wire(event.subject, event.payload, None)
        self.server._requests.resolve(client_id, request_id, message, meta.get("error"), forward=False)
