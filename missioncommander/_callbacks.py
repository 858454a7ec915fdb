"""Callback registries and the threads that run user callbacks.

User callbacks never run under a library lock, and by default never on the
I/O thread.  Each Client or Server has a serial queue of its own, so its callbacks run one
at a time in the order the events happened; the queues share a small pool of
worker threads, so a process with thousands of clients does not need
thousands of threads, and one slow callback holds up only its own instance.

With ``inline_callbacks`` an instance's message callbacks run on the I/O
thread itself whenever its queue is idle, sparing two thread hand-offs per
request; order and one-at-a-time still hold, but a callback that blocks then
stalls every connection of the process.

With ``concurrent_requests`` above 1, a request's callbacks begin in their
turn but run on a pool thread of their own (a queue of their own), so up to
that many slow responders answer at once while the instance's other
callbacks go on; what arrived after such a request is acknowledged only
once it has been answered (acknowledgements name a prefix of the stream).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._config import wait_timeout
from ._errors import NoResponder
from ._message import FrozenDict, Message
from ._quiet import Quiet, more

if TYPE_CHECKING:
    from ._inbox import Inbox
    from ._streams import InboundStream

log = logging.getLogger("missioncommander.callbacks")

#: ``reply(result, exc)``: send the reply to one request.
Reply = Callable[[Any, "BaseException | None"], None]
#: ``answer(args, reply, release, inbox, seq) -> bool``: see ``Callbacks.answer``.
Answer = Callable[[tuple[Any, ...], Reply, Callable[[], None], "Inbox", int], bool]


#: Received messages on their way to the callbacks, all that one read
#: brought between two requests or replies: ``(first, peer, messages,
#: sizes)``, consecutive numbers from ``first``, ``peer`` the callbacks'
#: arguments before the message (the client id on a server), each message
#: and its encoded size.  Lists side by side, not a tuple per message: a
#: run may wait in a queue while more arrive, and every object it holds
#: per message is one more for the garbage collector to walk (the sizes
#: are small ints, cached).  A plain tuple: one is made per read.
Run = tuple[int, tuple[str, ...], list[Any], list[int]]


#: Threads the callback pool keeps.
_POOL_SIZE = 4
#: Threads it may grow to while callbacks block (each waiting for a
#: reply, a lock, a slow service): half as many again per STUCK_AFTER
#: without progress.
_POOL_MOST = 64
#: How long queued callbacks wait with no thread beginning one before the
#: pool starts more threads.
STUCK_AFTER = 0.05
#: How long a thread beyond the first _POOL_SIZE stays without work.
_IDLE_END = 30.0
#: How long the pool's watch stays with nothing waiting.
_WATCH_END = 10.0
#: Callbacks one queue runs before yielding its worker to other queues.
_BATCH = 256


def normalise_event(name: object, known: Iterable[str]) -> str:
    """Map ``on_connect``, ``ConNEct`` or ``onCon-nect`` to ``connect``.

    Raises ``ValueError`` naming the known events when ``name`` is not one.
    """
    known = tuple(known)
    if not isinstance(name, str):
        raise TypeError(f"event name must be a str, not {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in known and key.startswith("on"):
        key = key[2:]
    if key not in known:
        import difflib  # noqa: PLC0415 - on this error only

        close = difflib.get_close_matches(key, known, n=1)
        meant = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown event {name!r}{meant}; known events: {', '.join(known)}")
    return key


def check_callback(owner: str, event: str, callback: object, args: tuple[str, ...]) -> None:
    """Refuse, at ``subscribe()``, a callback that cannot take what its
    event passes (``args``: their names), rather than have it fail at every
    event on a callback thread, in the log.  A callable whose signature
    cannot be read (some builtins) is taken: its first call will tell."""
    if not callable(callback):
        raise TypeError(f"callback must be callable, not {type(callback).__name__}")
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args)
    except TypeError:
        name = getattr(callback, "__qualname__", None) or repr(callback)
        given = f"with ({', '.join(args)})" if args else "with no arguments"
        raise TypeError(f"a {owner} {event!r} callback is called {given}; {name}{signature} cannot take that") from None


#: ``answering()``'s steps: what a coroutine responder returned, to be
#: awaited and its result sent back (or its exception thrown in), then the
#: answer, ``(result, exception)``, a plain tuple (which no awaitable is).
Answering = Generator["Awaitable[Any] | tuple[Any, BaseException | None]", Any, None]

#: Answers that are surely not awaitable: spares the attribute lookup.
_PLAIN_ANSWERS = frozenset({dict, FrozenDict, Message, type(None)})


def answering(responders: tuple[Callable[..., Any], ...], args: tuple[Any, ...]) -> Answering:
    """The one copy of the rule that answers a request from its ``request``
    callbacks: the first result that is not None, or the exception one
    raised (``NoResponder`` when there are none); the callbacks after the
    answering one do not run.  A generator, so that the threaded API runs it
    straight through (``first_answer``) and the asyncio API awaits what a
    coroutine responder returns (yielded; its result is sent back).  The
    answer is its last step, yielded rather than returned, and the caller
    runs it to its end with ``next(steps, None)``: a returned value or an
    abandoned generator would cost an exception per request."""
    if not responders:
        yield None, NoResponder()
        return
    for responder in responders:
        try:
            result = responder(*args)
            if type(result) not in _PLAIN_ANSWERS and hasattr(result, "__await__"):
                result = yield result
        except Exception as exc:
            yield None, exc
            return
        if result is not None:
            yield result, None
            return
    yield None, None


def first_answer(responders: tuple[Callable[..., Any], ...], args: tuple[Any, ...]) -> tuple[Any, BaseException | None]:
    """``answering()`` run straight through, for responders that are plain
    functions (a threaded responder that returns an awaitable gets a
    ``TypeError`` back as its answer)."""
    steps = answering(responders, args)
    step = next(steps)
    if type(step) is tuple:
        next(steps, None)
        return step
    steps.close()
    if inspect.iscoroutine(step):
        step.close()  # never awaited: no "was never awaited" warning
    return None, TypeError("a request callback of the threaded API returned an awaitable; use missioncommander.aio")


class _Pool:
    """The threads that run every instance's callback queues.

    A callback that blocks (a ``request()`` waiting for its reply, a slow
    service) holds its thread.  With every thread so held, the others'
    queues, a server's in the same process answering those very requests,
    would wait for them: so a watch looks every ``STUCK_AFTER`` while there
    is work, and when work has waited through a whole look with no thread
    beginning a callback, it starts half as many threads again (up to
    ``most``).  Threads beyond ``size`` end after ``_IDLE_END`` without
    work.  A busy pool of quick callbacks takes work all the time and does
    not grow; the workers' only cost for it is a counter.
    """

    def __init__(self, size: int, most: int) -> None:
        self._ready: queue.SimpleQueue[SerialQueue] = queue.SimpleQueue()
        self._size = size
        self._most = most
        self._lock = threading.Lock()
        self._threads = 0
        # A name per thread ever started: an extra thread that ended leaves
        # its number behind, so none of the next is taken for it in a dump.
        self._names = itertools.count()
        #: Callbacks begun by workers so far (increments may race and be
        #: lost: the watch only asks whether it moved).
        self.progress = 0
        self._watching = False
        #: Queues expected to block now (requests answered beside their
        #: instance's other callbacks): the pool keeps a thread for each.
        self._blocking = 0

    def schedule(self, serial: SerialQueue) -> None:
        self._ready.put(serial)
        if self._watching and self._threads >= self._size:
            return
        with self._lock:
            while self._threads < self._size:
                self._start_locked()
            if not self._watching:
                self._watching = True
                threading.Thread(target=self._watch, name="missioncommander-callbacks-watch", daemon=True).start()

    def expect_blocking(self) -> None:
        """A queue about to be scheduled will likely block (a responder that
        waits: why ``concurrent_requests`` is set): start a thread for it now
        rather than after the watch finds every thread stuck, so N such
        requests run at once from the first."""
        with self._lock:
            self._blocking += 1
            while self._threads < min(self._most, self._size + self._blocking):
                self._start_locked()

    def blocking_done(self) -> None:
        with self._lock:
            self._blocking -= 1

    def _start_locked(self) -> None:
        extra = self._threads >= self._size
        self._threads += 1
        name = f"missioncommander-callbacks-{next(self._names)}"
        threading.Thread(target=self._work, args=(extra,), name=name, daemon=True).start()

    def _work(self, extra: bool) -> None:
        _worker.active = True
        ready = self._ready
        while True:
            try:
                serial = ready.get(timeout=_IDLE_END if extra else None)
            except queue.Empty:
                with self._lock:
                    self._threads -= 1
                return
            serial._drain()

    def _watch(self) -> None:
        """Grow the pool while work waits and no callback begins; end after
        ``_WATCH_END`` with nothing waiting (the next schedule starts it again)."""
        waited_since: int | None = None  # the progress when work was last seen waiting
        quiet = 0
        for _ in range(100_000_000):  # bounded; ends once the pool is quiet
            time.sleep(STUCK_AFTER)
            with self._lock:
                if self._ready.empty():
                    waited_since = None
                    quiet += 1
                    if quiet * STUCK_AFTER >= _WATCH_END:
                        self._watching = False
                        # A schedule that read _watching (unlocked) just before
                        # saw a watch and started none: look once more.
                        if self._ready.empty():
                            return
                        self._watching = True
                        quiet = 0
                    continue
                quiet = 0
                if waited_since == self.progress:
                    # Work waited a whole look and no thread began a callback: all are stuck.
                    for _ in range(min(max(1, self._threads // 2), self._most - self._threads)):
                        self._start_locked()
                waited_since = self.progress
        with self._lock:
            self._watching = False


_pool = _Pool(_POOL_SIZE, _POOL_MOST)
_worker = threading.local()


def _new_pool() -> None:
    # A forked child has none of the pool's threads but counts them: its
    # callbacks would wait for ever.  It starts its own on first use.
    global _pool
    _pool = _Pool(_POOL_SIZE, _POOL_MOST)


os.register_at_fork(after_in_child=_new_pool)


def mark_callback_thread() -> None:
    """Mark this thread as one that runs user callbacks (the I/O thread,
    for inline callbacks): ``wait_idle`` here returns at once."""
    _worker.active = True


def in_callback_thread() -> bool:
    """True on a thread that runs user callbacks (where waiting for
    callbacks to finish would wait for ourselves)."""
    return getattr(_worker, "active", False)


class SerialQueue:
    """Runs submitted calls one at a time, in submission order, on the pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._scheduled = False
        #: Made by the first wait_idle (most queues never see one).
        self._idle: threading.Condition | None = None
        #: Threads in wait_idle: most of the time none, and notifying nobody
        #: still costs a Python call per message on the inline path.
        self._waiters = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._items.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        _pool.schedule(self)

    def _drain(self) -> None:
        for _ in range(_BATCH):
            with self._lock:
                if self._settle_locked():
                    return
                fn, args = self._items.popleft()
            _pool.progress += 1
            try:
                fn(*args)
            except Exception:  # a callback's bug must not stop the queue
                log.exception("callback %r raised", fn)
        _pool.schedule(self)  # more to do: go to the back of the line

    def run_or_submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on this thread now if the queue is idle, else
        queue it behind the rest.  Either way calls stay one at a time and in
        order: the queue counts as busy while the call runs here.

        For the I/O thread, which calls :func:`mark_callback_thread` once."""
        with self._lock:
            if self._scheduled:
                self._items.append((fn, args))
                return
            self._scheduled = True
        try:
            fn(*args)
        except Exception:
            log.exception("callback %r raised", fn)
        with self._lock:
            if self._settle_locked():
                return
        _pool.schedule(self)  # others queued meanwhile: the pool runs them in order

    def _settle_locked(self) -> bool:
        """With nothing left, mark the queue idle (and wake ``wait_idle``): True."""
        if self._items:
            return False
        self._scheduled = False
        if self._waiters and self._idle is not None:
            self._idle.notify_all()
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far has run.

        Returns False at once on a callback thread, where waiting could wait
        for the very callback that is running."""
        if in_callback_thread():
            return False
        with self._lock:
            if self._idle is None:
                self._idle = threading.Condition(self._lock)
            self._waiters += 1
            try:
                return self._idle.wait_for(lambda: not self._scheduled, timeout)
            finally:
                self._waiters -= 1


class _Responding:
    """A request answered beside the other callbacks (``concurrent_requests``):
    its acknowledgement, and those of everything its peer sent after it,
    wait for its reply.  It waits in its inbox's ``held``, with the releases
    behind it (plain callables), touched only on the serial queue."""

    __slots__ = ("done", "release")

    def __init__(self, release: Callable[[], None]) -> None:
        self.release = release
        self.done = False


class Callbacks:
    """The callbacks subscribed to one object's events."""

    def __init__(self, owner: str, events: Mapping[str, tuple[str, ...]]) -> None:
        self._owner = owner
        self.events = tuple(events)
        #: What each event's callbacks are called with (their names).
        self._args = dict(events)
        self._subs: dict[str, tuple[Callable[..., Any], ...]] = {}
        self._lock = threading.Lock()
        self.serial = SerialQueue()
        #: Run ``emit_messages`` callbacks on the emitting (I/O) thread when the
        #: queue is idle: the ``inline_callbacks`` setting.
        self.inline = False
        #: Who takes runs of received messages over from the ``message``
        #: callbacks run here (the asyncio API: its callbacks may be
        #: coroutines, and ``messages()`` keeps messages): called with the
        #: run, the inbox and its stream, and from then on responsible for
        #: marking each message ``taken`` (or ``skipped``) in its turn.
        #: Unset, a message is taken when its callbacks here return.
        self.keep: Callable[[Run, Inbox, InboundStream], None] | None = None
        #: Who may answer a request instead of the ``request`` callbacks run
        #: here (the asyncio API, whose responders may be coroutines): called
        #: with the callbacks' arguments, ``reply(result, exc)``, ``release``,
        #: the inbox and the request's number; True when it took the request on.
        self.answer: Answer | None = None
        #: Who releases a handled request or reply of an inbox's (the asyncio
        #: API keeps releases in arrival order); unset, it is released at once
        #: or behind that inbox's ``held``.
        self.in_order: Callable[[Inbox, Callable[[], None]], None] | None = None
        #: ``concurrent_requests``: request callbacks that may run at once,
        #: beside the others; 1 runs them in turn with the others.
        self.concurrent = 1
        #: Requests being answered beside the other callbacks now.
        self._responding = 0
        self._slots = threading.Condition()
        #: How often the traceback of each callback that raised is logged,
        #: by the callback's id: a callable need not be hashable (a
        #: dataclass's instance is not), and an unsubscribed one is not kept.
        self._failures: dict[int, Quiet] = {}

    def failed(self, event: str, callback: Callable[..., Any], error: BaseException | None = None) -> None:
        """Log what ``callback`` for ``event`` raised (``error``, or the
        exception being handled), with its traceback at most every few
        seconds per callback and a count of the rest: a callback that fails
        on some peer's every message would otherwise flood the log, and
        writing thousands of tracebacks a second slowed every connection."""
        quiet = self._failures.get(id(callback))
        if quiet is None:
            quiet = self._failures[id(callback)] = Quiet()
        unsaid = quiet.due()
        if unsaid is not None:
            log.error(
                "%s %s callback %r raised%s",
                self._owner,
                event,
                callback,
                more(unsaid),
                exc_info=error if error is not None else True,
            )

    def checked(self, event: str, callback: object) -> str:
        """``event``'s name as subscribed (``normalise_event``), once
        ``callback`` is known to take what that event passes."""
        key = normalise_event(event, self.events)
        check_callback(self._owner, key, callback, self._args[key])
        return key

    def subscribe(self, event: str, callback: Callable[..., Any]) -> None:
        key = self.checked(event, callback)
        with self._lock:
            self._subs[key] = (*self._subs.get(key, ()), callback)

    def unsubscribe(self, event: str, callback: Callable[..., Any]) -> None:
        key = normalise_event(event, self.events)
        with self._lock:
            subs = list(self._subs.get(key, ()))
            if callback in subs:
                subs.remove(callback)
            self._subs[key] = tuple(subs)

    def subscribed(self, event: str) -> tuple[Callable[..., Any], ...]:
        """The callbacks subscribed to ``event`` (a name as ``events`` has it)."""
        return self._subs.get(event, ())

    def wants(self, event: str) -> bool:
        """Whether ``event`` has callbacks: spares building its argument."""
        return bool(self._subs.get(event))

    def emit(self, event: str, *args: Any) -> None:
        """Queue ``event`` for its callbacks (those subscribed at this moment)."""
        callbacks = self._subs.get(event)
        if callbacks:
            self.serial.submit(self._run, event, callbacks, args)

    def emit_messages(self, inbox: Inbox, run: Run) -> None:
        """Queue a run of received messages for their ``message`` callbacks:
        one hand-over for all that one read brought (with ``inline``, run on
        this thread when nothing of this object's is queued; no library lock
        may be held).  They count in ``inbox`` until their callbacks have
        returned (see ``_inbox``); with nothing subscribed, they are taken
        as they arrive."""
        callbacks = self._subs.get("message")
        sizes = run[3]
        if not callbacks:
            if self.keep is None:
                inbox.take_now(sum(sizes), len(sizes))
                return
            callbacks = ()
        stream = inbox.hold(sum(sizes), len(sizes))
        hand = self.serial.run_or_submit if self.inline else self.serial.submit
        if self.keep is not None:
            hand(self.keep, run, inbox, stream)
        else:
            hand(self._run_messages, callbacks, run, inbox, stream)

    def _run_messages(
        self,
        callbacks: tuple[Callable[..., Any], ...],
        run: Run,
        inbox: Inbox,
        stream: InboundStream,
    ) -> None:
        seq, peer, messages, sizes = run
        held = inbox.held
        if held:
            # Behind a request still being answered: not taken until it is,
            # so a cluster node must know they reached their callbacks.
            inbox.handing(seq + len(messages) - 1)
        for message, size in zip(messages, sizes, strict=True):
            if inbox.dropped:
                # A cluster node let the client go: the node that has it now
                # gets this message again (it was never acknowledged).
                inbox.skipped(stream, seq, size)
            else:
                for callback in callbacks:
                    try:
                        callback(*peer, message)
                    except Exception:
                        self.failed("message", callback)
                # Taken one by one, not at the end of the run: a callback that
                # blocks must not hold back the acks of those before it.
                if held:
                    held.append(functools.partial(inbox.taken, stream, seq, size))
                else:
                    inbox.taken(stream, seq, size)
            seq += 1

    # -- request/reply ------------------------------------------------------------

    def emit_request(
        self,
        inbox: Inbox,
        seq: int,
        size: int,
        args: tuple[Any, ...],
        reply: Reply,
    ) -> None:
        """Run the ``request`` callbacks for a request (in order with the
        messages, as a message's callbacks run), then ``reply(result, exc)``
        with the first result that is not None, or the exception a callback
        raised (``NoResponder`` when none is subscribed).  With
        ``concurrent`` above 1 they begin in their turn and run beside the
        callbacks after them (never on the I/O thread, which must not wait
        for a free slot)."""
        stream = inbox.hold(size)
        run = self.serial.run_or_submit if self.inline and self.concurrent == 1 else self.serial.submit
        run(self._run_request, args, reply, functools.partial(inbox.taken, stream, seq, size), inbox, seq)

    def _run_request(
        self,
        args: tuple[Any, ...],
        reply: Reply,
        release: Callable[[], None],
        inbox: Inbox,
        seq: int,
    ) -> None:
        if inbox.dropped:  # as in _run_message: the node that has the client now answers
            self.release(inbox, release)
            return
        if self.answer is not None and self.answer(args, reply, release, inbox, seq):
            return
        if self.concurrent > 1:
            self._respond_beside(args, reply, release, inbox, seq)
            return
        self._respond(args, reply)
        self.release(inbox, release)

    def _respond(self, args: tuple[Any, ...], reply: Reply) -> None:
        result, error = first_answer(self._subs.get("request", ()), args)
        try:
            reply(result, error)
        except Exception:
            log.exception("%s could not send the reply to a request", self._owner)

    def _respond_beside(
        self, args: tuple[Any, ...], reply: Reply, release: Callable[[], None], inbox: Inbox, seq: int
    ) -> None:
        """Answer request ``seq`` on a queue of its own, once fewer than
        ``concurrent`` are being answered (the instance's queue waits for a
        slot here, so the bound holds whatever arrives)."""
        with self._slots:
            self._slots.wait_for(lambda: self._responding < self.concurrent)
            self._responding += 1
        if inbox.held:
            inbox.handing(seq)
        responding = _Responding(release)
        inbox.hold_back().append(responding)
        _pool.expect_blocking()
        SerialQueue().submit(self._respond_then_release, args, reply, responding, inbox)

    def _respond_then_release(self, args: tuple[Any, ...], reply: Reply, responding: _Responding, inbox: Inbox) -> None:
        try:
            self._respond(args, reply)
        finally:
            _pool.blocking_done()
            responding.done = True
            # Queued before the slot is given back: wait_idle, woken by the
            # count reaching 0, then finds the release queued.
            self.serial.submit(self._release_held, inbox)
            with self._slots:
                self._responding -= 1
                self._slots.notify_all()

    @staticmethod
    def _release_held(inbox: Inbox) -> None:
        """Release, in arrival order, what no request of ``inbox``'s still
        being answered holds back (on the serial queue, the inbox's one
        writer)."""
        held = inbox.held
        while held:
            first = held[0]
            if isinstance(first, _Responding):
                if not first.done:
                    return
                first.release()
            else:
                first()
            held.popleft()

    def setting_changed(self, name: str, owner: Any) -> None:
        """``owner``'s setting ``name`` changed: the ones read here are
        mirrored (``inline_callbacks`` is read on the I/O thread's hot path),
        and a request waiting for a slot may have one now."""
        if name == "inline_callbacks":
            self.inline = owner.inline_callbacks
        elif name == "concurrent_requests":
            with self._slots:
                self.concurrent = owner.concurrent_requests
                self._slots.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the callbacks of every event so far have run, those
        of requests answered beside the others too (False at once on a
        callback thread, as ``SerialQueue.wait_idle``)."""
        timeout = wait_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        if not self.serial.wait_idle(timeout):
            return False
        with self._slots:
            if not self._slots.wait_for(lambda: self._responding == 0, left()):
                return False
        return self.serial.wait_idle(left())

    def emit_reply(
        self, inbox: Inbox, seq: int, size: int, resolve: Callable[..., None], *args: Any, now: bool = False
    ) -> None:
        """Hand a reply to the request that waits for it (``resolve(*args)``),
        in order with the messages: on this (the I/O) thread when nothing of
        this object's waits for its callbacks, since resolving a future runs
        no user code; the waiting caller is woken one thread hop sooner.

        ``now``: the asker is a callback of this object's, which everything
        queued here waits for (the reply's turn too): woken at once, and the
        reply is acknowledged in its turn."""
        stream = inbox.hold(size)
        taken = functools.partial(inbox.taken, stream, seq, size)
        if now:
            self._resolve(resolve, args)
            self.serial.run_or_submit(self.release, inbox, taken)
            return
        self.serial.run_or_submit(self._run_reply, resolve, args, inbox, taken)

    def _run_reply(
        self, resolve: Callable[..., None], args: tuple[Any, ...], inbox: Inbox, release: Callable[[], None]
    ) -> None:
        self._resolve(resolve, args)
        self.release(inbox, release)

    def _resolve(self, resolve: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            resolve(*args)
        except Exception:
            log.exception("%s could not hand a reply over", self._owner)

    def release(self, inbox: Inbox, release: Callable[[], None]) -> None:
        """``release`` a handled request or reply of ``inbox``'s: in its turn."""
        if self.in_order is not None:
            self.in_order(inbox, release)
        elif inbox.held:
            inbox.held.append(release)
        else:
            release()

    def _run(self, event: str, callbacks: tuple[Callable[..., Any], ...], args: tuple[Any, ...]) -> None:
        for callback in callbacks:
            try:
                callback(*args)
            except Exception:
                self.failed(event, callback)
