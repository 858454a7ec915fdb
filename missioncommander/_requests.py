"""Request/reply on top of the session (protocol version 2).

A request is a MESSAGE whose body carries ``{"request": id}`` as a third
element; its reply a MESSAGE carrying ``{"reply": id}`` (with ``"error"``
when the responder raised or there was none).  Both travel in the
session's streams like any message, so a cut and a resume deliver each
exactly once: a request in flight survives a reconnect.

``Requests`` is one side's registry of the requests it sent and waits
for; ``reply_for`` and ``error_meta`` build what a responder sends back,
and ``Answers`` says what became of it.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from ._callbacks import in_callback_thread
from ._errors import NoResponder, QueueFullError, RemoteError, RequestTimeout, SessionLost, StateError, loop_blocked
from ._frames import peer_text, with_id, with_meta
from ._message import FrozenDict, Message
from ._quiet import Quiet, more

log = logging.getLogger("missioncommander")

#: What a responder that does not exist answers (the ERROR's code).
NO_RESPONDER = "no_responder"
#: What a responder that raised answers.
REMOTE_ERROR = "remote_error"


class Waiter(Protocol):
    """Where a request's outcome goes: a ``ReplyWaiter`` for a threaded
    caller, an ``asyncio.Future`` (made and set on its loop) for the
    asyncio API."""

    def done(self) -> bool: ...

    def set_result(self, result: Message, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class ReplyWaiter:
    """What a threaded ``request()`` waits on: a lock held until the reply
    or the error is in.  A ``concurrent.futures.Future`` would do, at the
    price of a ``Condition`` built, waited on and notified per request
    (the registry sets each waiter once: it pops the request first)."""

    __slots__ = ("_done", "_error", "_lock", "_result", "asked_in_a_callback")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._done = False
        self._result: Message | None = None
        self._error: BaseException | None = None
        #: Asked from a callback: the callbacks queued behind it (the reply's
        #: turn among them) wait for it, so its reply must not.
        self.asked_in_a_callback = in_callback_thread()

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Message, /) -> None:
        self._result = result
        self._done = True
        self._lock.release()

    def set_exception(self, exception: BaseException, /) -> None:
        self._error = exception
        self._done = True
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        """True once the outcome is in; False after ``timeout`` seconds."""
        return self._lock.acquire(timeout=-1 if timeout is None else timeout)

    def outcome(self) -> Message:
        """The reply, or the error raised (once ``done()``)."""
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


class Requests:
    """The requests one Client or Server sent and waits for, by id; any
    thread (callers wait in ``wait``, replies and session ends come from
    the driver or callback thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_id = 0
        #: Ids above this (and up to ``_next_id``) are this side's own.
        self._first_id = 0
        #: id -> (peer, waiter, session): the peer is the client id on a
        #: server ("" on a client); the session, in a cluster, the token of
        #: the session the request was stored in ("" until known).
        self._pending: dict[int, tuple[str, Waiter, str]] = {}
        self._per_peer: dict[str, int] = {}
        #: Where a reply to a request this side did not send goes (a cluster
        #: node: to the node that sent it), called with the peer, the
        #: request's id, the reply and its error; None: it is dropped.
        self.elsewhere: Callable[[str, int, Message, FrozenDict | None], None] | None = None
        #: Told of each request no longer waited for (a cluster node: Redis
        #: need not keep its asker), with the peer and the id; None: nobody.
        self.forgotten: Callable[[str, int], None] | None = None
        # A peer may send replies to requests nobody made, as fast as it
        # likes: what is dropped is said now and then, per kind.
        self._quiet_forged = Quiet()
        self._quiet_late = Quiet()
        self._quiet_unsent = Quiet()

    def number_from(self, first: int) -> None:
        """Give the next requests ids from ``first`` + 1 on: a cluster node
        starts at a random point, so that its ids are not another node's
        (a client's reply names the id alone) and a node forwards a reply
        it does not know to the one that asked."""
        with self._lock:
            if not self._pending:
                self._next_id = self._first_id = first

    def open(self, peer: str, limit: int, message: Message, waiter: Waiter) -> tuple[int, bytes]:
        """A new request of ``message`` to ``peer``, whose outcome goes to
        ``waiter``: its id and the body to send; ``QueueFullError`` past
        ``limit`` requests in flight to that peer."""
        with self._lock:
            in_flight = self._per_peer.get(peer, 0)
            if in_flight >= limit:
                raise QueueFullError(f"{in_flight} requests already wait for a reply (max_requests={limit})")
            self._next_id += 1
            request_id = self._next_id
            self._pending[request_id] = (peer, waiter, "")
            self._per_peer[peer] = in_flight + 1
        return request_id, with_id(message.encode(), "request", request_id)

    def stored_in(self, request_id: int, session: str) -> bool:
        """Request ``request_id`` was stored in the session ``session`` (a
        cluster's token for it): ``lose`` may name it.  False when the
        request no longer waits."""
        with self._lock:
            entry = self._pending.get(request_id)
            if entry is None:
                return False
            self._pending[request_id] = (entry[0], entry[1], session)
            return True

    def _pop(self, request_id: int) -> tuple[str, Waiter, str] | None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            left = self._per_peer[entry[0]] - 1
            if left:
                self._per_peer[entry[0]] = left
            else:
                del self._per_peer[entry[0]]
        return entry

    def forget(self, request_id: int) -> None:
        """The request will not be waited for (timed out, or never sent)."""
        with self._lock:
            entry = self._pop(request_id)
        if entry is not None and self.forgotten is not None:
            self.forgotten(entry[0], request_id)

    def ids_for(self, peer: str) -> list[int]:
        """The requests to ``peer`` that wait for their reply."""
        with self._lock:
            return [rid for rid, entry in self._pending.items() if entry[0] == peer]

    def _waiter(self, peer: str, request_id: int) -> Waiter | None:
        """What waits for the reply to ``request_id`` from ``peer`` (None
        when nothing does, or the request went to another peer)."""
        with self._lock:
            entry = self._pending.get(request_id)
        return entry[1] if entry is not None and entry[0] == peer else None

    def waiting_for(self, peer: str, request_id: int) -> bool:
        """Whether request ``request_id`` to ``peer`` waits for its reply."""
        return self._waiter(peer, request_id) is not None

    def asked_in_a_callback(self, peer: str, request_id: int) -> bool:
        """Whether a callback waits for the reply to ``request_id`` (a
        threaded caller on a callback thread) from ``peer``."""
        waiter = self._waiter(peer, request_id)
        return isinstance(waiter, ReplyWaiter) and waiter.asked_in_a_callback

    def resolve(
        self, peer: str, request_id: int, reply: Message, error: FrozenDict | None, forward: bool = True
    ) -> None:
        """The reply to ``request_id`` arrived from ``peer``. Only the peer
        asked may answer: ids count up from 1, and any other client of a
        server could otherwise answer for it.  One this side did not ask
        goes to ``elsewhere`` unless ``forward`` is False (it comes from
        elsewhere already)."""
        with self._lock:
            entry = self._pending.get(request_id)
            if entry is not None and entry[0] == peer:
                self._pop(request_id)
        if entry is None or entry[0] != peer:
            if entry is not None:
                if (unsaid := self._quiet_forged.due()) is not None:
                    log.warning(
                        "client %r answered request %d, which was not sent to it; dropped%s",
                        peer,
                        request_id,
                        more(unsaid),
                    )
            elif self._first_id < request_id <= self._next_id:
                if (unsaid := self._quiet_late.due()) is not None:
                    log.info(
                        "a reply to request %d came after its caller gave up (timed out or cancelled); dropped%s",
                        request_id,
                        more(unsaid),
                    )
            elif forward and self.elsewhere is not None:
                self.elsewhere(peer, request_id, reply, error)
            elif forward and (unsaid := self._quiet_unsent.due()) is not None:
                log.info("a reply to request %d, which was never sent, was dropped%s", request_id, more(unsaid))
            return
        waiter = entry[1]
        if waiter.done():
            return  # an asyncio caller cancelled (its wait_for timed out): nobody waits
        if error is None:
            waiter.set_result(reply)
        elif error["code"] == NO_RESPONDER:
            waiter.set_exception(_shown_escaped(NoResponder(error["message"])))
        else:
            waiter.set_exception(_shown_escaped(RemoteError(error["type"], error["message"], error.get("traceback"))))

    def lose(self, peer: str | None, reason: str, session: str | None = None) -> None:
        """The session with ``peer`` (None: every peer) ended for good: its
        requests fail at once with ``SessionLost``.  With ``session``, only
        those ``stored_in`` that session (a cluster's client may have begun
        another since, on another node)."""
        with self._lock:
            if peer is not None and peer not in self._per_peer:
                return  # none to it: no need to look through every request in flight
            lost = [
                rid
                for rid, (p, _, s) in self._pending.items()
                if (peer is None or p == peer) and (session is None or s == session)
            ]
            entries = [self._pop(rid) for rid in lost]
        for entry in entries:
            if entry is not None and not entry[1].done():
                entry[1].set_exception(SessionLost(f"the session ended before the reply came: {reason}"))

    def total(self) -> int:
        """Requests waiting for their reply, to every peer."""
        with self._lock:
            return len(self._pending)

    def in_flight(self, peer: str) -> int:
        with self._lock:
            return self._per_peer.get(peer, 0)

    def wait(
        self, request_id: int, waiter: ReplyWaiter, timeout: float | None, why: Callable[[], str], spent: float = 0.0
    ) -> Message:
        """The reply, or the request's error; ``RequestTimeout`` after
        ``timeout`` (saying ``why()``, when it says something), ``spent``
        seconds of which went before (waiting for room to send it)."""
        if not waiter.wait(None if timeout is None else max(0.0, timeout - spent)):
            self.forget(request_id)
            if not waiter.done():
                raise timed_out(timeout, why, loop_blocked())
            # The reply won the race with the timeout.
        return waiter.outcome()


def _shown_escaped(error: RemoteError) -> RemoteError:
    """``error`` with its text, as a traceback or log line shows it (``str``),
    escaped as every other text a peer wrote is (``peer_text``): a responder's
    message may hold terminal escapes or line breaks.  ``type_name`` and
    ``message`` stay as the responder wrote them, for the code that reads them."""
    error.args = tuple(peer_text(arg) if isinstance(arg, str) else arg for arg in error.args)
    return error


def no_requests(client_id: str, version: int) -> StateError:
    """The error of a request to a client whose protocol has none."""
    return StateError(
        f"client {client_id!r} speaks protocol version {version}, which has no request/reply (upgrade the client)"
    )


def timed_out(timeout: float | None, why: Callable[[], str], blocked: str = "") -> RequestTimeout:
    """The error of a request with no reply after ``timeout`` seconds; what
    ``why()`` says (the peer's connection is down, say) is added: a request
    waits through a cut, so "no reply" alone hides the likeliest cause.
    ``blocked``: ``loop_blocked()``, for a threaded caller."""
    reason = "; ".join(filter(None, (why(), blocked)))
    return RequestTimeout(f"no reply within {timeout:g} s" + (f" ({reason})" if reason else ""))


def of_its_session(body: bytes) -> bool:
    """Whether an encoded MESSAGE body is a request or a reply: these mean
    something only in the session they were sent in (a new session's peer
    knows neither the request nor its asker), so a restart does not send
    them again.  Runs only on a restart, over what was unacknowledged (up
    to ``max_queued_bytes``, on the I/O thread): a body that cannot be one
    is passed over without being decoded."""
    if _REQUEST_META not in body and _REPLY_META not in body:
        return False
    return len(json.loads(body)) == 3  # the decoder decides: a payload may hold the same bytes


#: How a request's and a reply's meta begin in a body (``_frames.with_id``, ``with_meta``).
_REQUEST_META = b',{"request":'
_REPLY_META = b',{"reply":'


def reply_for(request: Message, result: object) -> Message:
    """The reply a responder's return value makes: a ``Message`` as it is, a
    dict as the payload of a reply with the request's subject, None as an
    empty one; anything else is the responder's error (``TypeError``)."""
    if isinstance(result, Message):
        return result
    if result is None:
        return Message(request.subject)
    if result is request.payload:
        return request  # the same message, its encoding kept (an echo-like responder)
    if isinstance(result, dict):
        return Message(request.subject, result)
    raise TypeError(f"a request responder must return a Message, a dict or None, not {type(result).__name__}")


def error_meta(request_id: int, exc: BaseException, tracebacks: bool) -> dict[str, Any]:
    """The meta of an error reply: ``exc`` is the responder's exception,
    ``NoResponder`` when there was none."""
    if isinstance(exc, NoResponder):
        error = {"code": NO_RESPONDER, "type": "NoResponder", "message": exc.message}
    else:
        error = {"code": REMOTE_ERROR, "type": type(exc).__name__, "message": str(exc)}
        if tracebacks:
            error["traceback"] = "".join(traceback.format_exception(exc))
    return {"reply": request_id, "error": error}


class Answers:
    """What one ``Client`` or ``Server`` says of its replies to its peers'
    requests: a responder's error, and a reply that could not be sent (its
    asker gone, or its queue full). A peer that sends many requests and
    leaves makes one such reply of each (thousands of log lines from one
    client), so those are said now and then."""

    __slots__ = ("_log", "_quiet_lost", "_server")

    def __init__(self, logger: logging.Logger, server: bool) -> None:
        self._log = logger
        #: A server's lines name the client that asked; a client's, itself.
        self._server = server
        self._quiet_lost = Quiet()

    def raised(self, exc: BaseException, who: str) -> None:
        """A responder answered a request of (or to) client ``who`` with
        ``exc`` (``reply_body``'s error): said, but for a missing responder."""
        if not isinstance(exc, NoResponder):
            prefix = "" if self._server else f"client {who!r}: "
            self._log.warning("%srequest responder raised %s: %s", prefix, type(exc).__name__, exc)

    def unsent(self, request_id: int, who: str, lost: Exception) -> None:
        """The reply to request ``request_id`` could not be sent."""
        if (unsaid := self._quiet_lost.due()) is None:
            return
        if self._server:
            what = f"the reply to client {who!r}'s request {request_id}"
        else:
            what = f"client {who!r}: the reply to request {request_id}"
        self._log.warning("%s was not sent: %s%s", what, lost, more(unsaid))


def reply_body(
    request_id: int, request: Message, result: object, exc: BaseException | None, tracebacks: bool
) -> tuple[bytes, BaseException | None]:
    """The encoded reply to a request: the responder's result, or the error
    it raised (a result that is no reply is an error too); and that error."""
    if exc is None:
        try:
            return with_id(reply_for(request, result).encode(), "reply", request_id), None
        except (TypeError, ValueError) as bad:
            exc = bad
    return with_meta(Message("error").encode(), error_meta(request_id, exc, tracebacks)), exc
