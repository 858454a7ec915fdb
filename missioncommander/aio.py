"""The asyncio API: ``AsyncClient`` and ``AsyncServer``.

They are ``Client`` and ``Server`` on the asyncio driver (``_aio_driver``):
every protocol and session rule, setting, event, error and limit is the
same code as the threaded API's, so both talk to each other and behave
alike; what differs is how you wait.  Everything runs on the running loop
(no thread of the library's), through ``asyncio.Protocol``, so any event
loop will do, uvloop included.  docs/ASYNC.md is the guide.

    async with AsyncServer(interface="127.0.0.1", port=30000) as server:
        async with AsyncClient(address="127.0.0.1", port=30000, client_id="c42") as client:
            await client.send(Message("echo", {"n": 1}))
            async for client_id, message in server.messages():
                ...
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Future
from types import EllipsisType
from typing import Any, NamedTuple, TypeVar

from . import _config as cfg
from ._aio_driver import AsyncioDriver
from ._callbacks import Answering, Callbacks, Reply, Run, SerialQueue, answering, normalise_event
from ._client import (
    _CAN_SEND,
    _RUNNING,
    CLIENT_EVENTS,
    DISCONNECT_WAIT,
    Client,
    ClientSettings,
    Target,
    acknowledged_nothing,
)
from ._errors import ConnectTimeout, QueueFullError, StateError
from ._inbox import Inbox
from ._loop import host_port
from ._message import Message, not_a_message
from ._requests import Requests, timed_out
from ._server import SERVER_EVENTS, Server, ServerSettings, split_detached
from ._state import ClientState
from ._stray import warn_stray_attributes
from ._streams import InboundStream

__all__ = ["AsyncClient", "AsyncServer", "Event"]

log = logging.getLogger("missioncommander.aio")

_T = TypeVar("_T")


class Event(NamedTuple):
    """One event from ``events()``: its name (as ``subscribe`` knows it) and
    the arguments its callbacks get."""

    name: str
    args: tuple[Any, ...]


#: How many events one ``events()`` iterator holds for a reader that lags;
#: older ones are dropped past it (logged), so a forgotten iterator cannot
#: grow memory without bound.
EVENTS_BUFFER = 10_000


class _LoopSerial(SerialQueue):
    """``SerialQueue``'s promise (one at a time, in order) on the loop:
    callbacks run on the loop's thread, never under a library lock."""

    def __init__(self, driver: AsyncioDriver) -> None:
        super().__init__()
        self._driver = driver
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._draining = False
        #: Called when the queue runs dry (readers waiting for the last
        #: events before they end look again).
        self.on_idle: Callable[[], None] | None = None

    @property
    def busy(self) -> bool:
        return self._draining or bool(self._calls)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._calls.append((fn, args))
        if not self._draining:
            self._draining = True
            self._driver.call_soon(self._drain)

    def run_or_submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._draining:
            self.submit(fn, *args)
            return
        self._draining = True
        _call(fn, args)
        if self._calls:
            self._driver.call_soon(self._drain)
        else:
            self._draining = False

    def _drain(self) -> None:
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            _call(fn, args)
        self._draining = False
        if self.on_idle is not None:
            self.on_idle()

    def wait_idle(self, timeout: float | None = None) -> bool:
        return True  # the calls run on the loop, which the caller is on: waiting would wait for itself


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except Exception:  # a callback's bug must not stop the queue
        log.exception("callback %r raised", fn)


class _Held:
    """A request or reply on its way: released once handled, in its turn
    in ``order`` (its inbox's ``held``)."""

    __slots__ = ("order", "pending", "release")

    def __init__(self, release: Callable[[], None], order: deque[_Hold]) -> None:
        self.release = release
        self.order = order
        self.pending = 0


class _HeldMessage:
    """A received message on its way to the application: released (taken,
    so acknowledged) once every consumer has it.  A ``_Held`` without the
    closure: one is made per message."""

    __slots__ = ("inbox", "item", "pending", "seq", "size", "stream")

    def __init__(self, inbox: Inbox, stream: InboundStream, seq: int, size: int) -> None:
        self.inbox = inbox
        self.stream = stream
        self.seq = seq
        self.size = size
        self.pending = 0
        #: What ``messages()`` yields, while it waits there.
        self.item: Any = None

    def release(self) -> None:
        self.inbox.taken(self.stream, self.seq, self.size)


class _HeldRun:
    """A run of received messages that all wait for ``messages()`` (no
    message callback is subscribed): one record for the run instead of a
    hold per message.  While a loop turn reads every ready socket, whole
    runs wait, and each object they hold per message is one more for the
    garbage collector to walk.  Its messages are taken in order; each is
    released (acknowledged) once taken and once everything before it is."""

    __slots__ = ("inbox", "peer", "released", "seq", "sizes", "stream", "taken")

    def __init__(self, inbox: Inbox, stream: InboundStream, seq: int, peer: tuple[str, ...], sizes: list[int]) -> None:
        self.inbox = inbox
        self.stream = stream
        #: The number of the run's first message.
        self.seq = seq
        #: () on a client; (client_id,) on a server, whose messages() yields pairs.
        self.peer = peer
        self.sizes = sizes
        self.taken = 0
        self.released = 0

    def release_taken(self) -> bool:
        """Release what was taken and not yet released; True once all is."""
        inbox, stream, seq, sizes = self.inbox, self.stream, self.seq, self.sizes
        for index in range(self.released, self.taken):
            inbox.taken(stream, seq + index, sizes[index])
        self.released = self.taken
        return self.released == len(sizes)


#: What waits in an inbox's ``held`` on the asyncio API.
_Hold = _Held | _HeldMessage | _HeldRun


class _Endpoint:
    """What AsyncClient and AsyncServer share: the driver, callbacks that may
    be coroutine functions, ``messages()`` and ``events()``."""

    _events: dict[str, tuple[str, ...]]

    def __init__(self, driver: AsyncioDriver, callbacks: Callbacks) -> None:
        self._driver = driver
        self._callbacks = callbacks
        self._serial = _LoopSerial(driver)
        self._serial.on_idle = self._wake
        callbacks.serial = self._serial
        callbacks.inline = True
        callbacks.keep = self._keep
        callbacks.answer = self._answer
        callbacks.in_order = self._in_order
        #: Request callbacks: run here, so that they may be coroutines.
        self._responders: tuple[Callable[..., Any], ...] = ()
        #: Message callbacks: run here, not by ``Callbacks``, so a coroutine's
        #: message is acknowledged only once the coroutine is done.
        self._message_callbacks: tuple[Callable[..., Any], ...] = ()
        #: Whether any of them is a coroutine function: the messages after
        #: one in a run reach the application before it is done.
        self._coroutine_callbacks = False
        #: Per inbox, its requests being awaited and its messages' coroutine
        #: callbacks still running: what it hands the application meanwhile
        #: is not taken yet, so a cluster node records it as handed
        #: (``Inbox.handing``).  Empty at rest: one test per run.
        self._in_hand: dict[Inbox, int] = {}
        #: Received messages waiting for ``messages()``: a message of a
        #: ``_HeldRun`` as itself, else its hold, which carries its item (no
        #: tuple per message: while a loop turn reads every ready socket,
        #: whole runs wait here, and every object they are made of is one
        #: more for the garbage collector to walk).
        self._inbox: deque[_HeldMessage | Message] = deque()
        #: The runs whose messages wait in ``_inbox``, oldest first.
        self._runs: deque[_HeldRun] = deque()
        # Holds wait in their inbox's ``held``, in arrival order, and are
        # released in that order: a session's acknowledgement never passes
        # one of its messages still being handled, and waits for nobody else's.
        self._readers = 0
        self._waiting: list[asyncio.Future[None]] = []
        self._event_queues: list[deque[Event]] = []
        self._wrapped: dict[tuple[str, Callable[..., Any]], Callable[..., Any]] = {}
        for name in self._events:
            if name not in ("message", "request"):  # those two are handled here, not tapped
                callbacks.subscribe(name, self._tap(name))

    # -- subclass hooks ----------------------------------------------------------

    def _finished(self) -> bool:
        """No more messages will come (the iterators end once empty)."""
        raise NotImplementedError

    # -- callbacks ---------------------------------------------------------------

    def subscribe(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback`` on ``event``, as the threaded API does; it may
        be a coroutine function (run as a task; a message is acknowledged
        once its coroutines are done).  Callbacks run on the loop."""
        key = self._callbacks.checked(event, callback)
        if key == "message":
            self._message_callbacks = (*self._message_callbacks, callback)
            self._coroutine_callbacks = any(map(inspect.iscoroutinefunction, self._message_callbacks))
            return
        if key == "request":
            self._responders = (*self._responders, callback)
            return
        wrapped = self._wrap(key, callback) if inspect.iscoroutinefunction(callback) else callback
        self._wrapped[(key, callback)] = wrapped
        self._callbacks.subscribe(key, wrapped)

    def _subscribed(self, event: str) -> tuple[Callable[..., Any], ...]:
        """The callbacks subscribed to ``event`` as they were given (a
        coroutine function is subscribed to the core wrapped)."""
        if event == "message":
            return self._message_callbacks
        if event == "request":
            return self._responders
        return tuple(callback for key, callback in self._wrapped if key == event)

    def unsubscribe(self, event: str, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback`` on ``event``."""
        key = normalise_event(event, self._events)
        if key == "message":
            self._message_callbacks = tuple(cb for cb in self._message_callbacks if cb != callback)
            self._coroutine_callbacks = any(map(inspect.iscoroutinefunction, self._message_callbacks))
            return
        if key == "request":
            self._responders = tuple(cb for cb in self._responders if cb != callback)
            return
        wrapped = self._wrapped.pop((key, callback), None)
        if wrapped is not None:
            self._callbacks.unsubscribe(key, wrapped)

    def _wrap(self, event: str, coroutine_function: Callable[..., Any]) -> Callable[..., None]:
        failed = functools.partial(self._task_failed, event, coroutine_function)

        def start(*args: Any) -> None:
            self._driver.spawn(coroutine_function(*args)).add_done_callback(failed)

        return start

    def _task_failed(self, event: str, callback: Callable[..., Any], task: asyncio.Task[Any]) -> None:
        """Log what a coroutine callback's task raised, as a plain callback's is."""
        if not task.cancelled() and task.exception() is not None:
            self._callbacks.failed(event, callback, task.exception())

    def _tap(self, name: str) -> Callable[..., None]:
        def tap(*args: Any) -> None:
            self._deliver_event(Event(name, args))

        return tap

    def _deliver_event(self, event: Event) -> None:
        for queue in self._event_queues:
            if len(queue) == EVENTS_BUFFER:
                log.warning("events(): a reader lags %d events behind; dropping the oldest", EVENTS_BUFFER)
            queue.append(event)
        self._wake()

    # -- received messages -----------------------------------------------------------

    def _keep(self, run: Run, inbox: Inbox, stream: InboundStream) -> None:
        """A run of received messages (``Callbacks.keep``): to the message
        callbacks, and to ``messages()``."""
        callbacks = self._message_callbacks
        waiting = self._inbox
        order: deque[_Hold] = inbox.hold_back()
        seq, peer, messages, sizes = run
        if (
            (self._in_hand and inbox in self._in_hand) or (self._coroutine_callbacks and len(sizes) > 1)
        ) and not inbox.dropped:
            # Past one of this peer's messages or requests still in the
            # application's hands: a cluster node must know they reached it
            # (unless it let the client go: then they never reach it).
            inbox.handing(seq + len(sizes) - 1)
        if not callbacks and not inbox.dropped:
            # Only messages() will see them: the run waits as one record.
            held_run = _HeldRun(inbox, stream, seq, peer, sizes)
            waiting.extend(messages)
            self._runs.append(held_run)
            order.append(held_run)
            if self._waiting:
                self._wake()
            return
        seq -= 1
        for message, size in zip(messages, sizes, strict=True):
            seq += 1
            if inbox.dropped:
                # A cluster node let the client go: the node that has it now
                # gets this message again (it was never acknowledged).
                inbox.skipped(stream, seq, size)
                continue
            # Made only when something holds the message past its callbacks
            # (a coroutine callback, messages(), one before it): this runs
            # per message, and plain callbacks are the usual case.
            held: _HeldMessage | None = None
            args = (*peer, message)
            for callback in callbacks:
                if self._coroutine_callbacks and inspect.iscoroutinefunction(callback):
                    if held is None:
                        held = _HeldMessage(inbox, stream, seq, size)
                    held.pending += 1
                    self._in_hand[inbox] = self._in_hand.get(inbox, 0) + 1
                    task = self._driver.spawn(callback(*args))
                    task.add_done_callback(functools.partial(self._done, held, callback))
                else:
                    try:
                        callback(*args)
                    except Exception:
                        self._callbacks.failed("message", callback)
            if self._readers or not callbacks or waiting:
                # Nobody would see it otherwise (or it would pass those still
                # waiting): it waits for messages(), and the inbox's bounds
                # pause reading meanwhile, so the peer slows down.
                if held is None:
                    held = _HeldMessage(inbox, stream, seq, size)
                held.pending += 1
                # What messages() yields: the message, or (client_id, message).
                held.item = args if peer else message
                waiting.append(held)
            # _settle, spelled out (this runs per message): released in its
            # turn behind what waits, else now.
            if order:
                order.append(held if held is not None else _HeldMessage(inbox, stream, seq, size))
            elif held is not None and held.pending:
                order.append(held)
            else:
                inbox.taken(stream, seq, size)
        if self._waiting and waiting:
            self._wake()

    # -- requests to answer ---------------------------------------------------------

    def _answer(self, args: tuple[Any, ...], reply: Reply, release: Callable[[], None], inbox: Inbox, seq: int) -> bool:
        """Answer a request with the ``request`` callbacks, which may be
        coroutine functions; the request is released, in arrival order,
        once its reply is on its way."""
        if self._in_hand and inbox in self._in_hand and not inbox.dropped:
            inbox.handing(seq)  # as in _keep
        held = _Held(release, inbox.hold_back())
        held.pending = 1
        self._settle(held)
        steps = answering(self._responders, args)
        step = next(steps)
        if type(step) is tuple:
            next(steps, None)  # run to its end (see answering())
            result, error = step
            self._replied(reply, result, error, held)
        else:
            self._in_hand[inbox] = self._in_hand.get(inbox, 0) + 1
            self._driver.spawn(self._respond_later(steps, step, reply, held, inbox))
        return True

    async def _respond_later(self, steps: Answering, step: Any, reply: Reply, held: _Held, inbox: Inbox) -> None:
        """Go on with ``answering()``'s steps, awaiting what coroutine
        responders return, until the answer."""
        try:
            while type(step) is not tuple:
                try:
                    value = await step
                except Exception as exc:
                    step = steps.throw(exc)
                else:
                    step = steps.send(value)
        finally:
            self._out_of_hand(inbox)
        next(steps, None)
        result, error = step
        self._replied(reply, result, error, held)

    def _out_of_hand(self, inbox: Inbox) -> None:
        """One of ``inbox``'s requests or coroutine callbacks is done (``_in_hand``)."""
        left = self._in_hand[inbox] - 1
        if left:
            self._in_hand[inbox] = left
        else:
            del self._in_hand[inbox]

    def _replied(self, reply: Reply, result: Any, error: BaseException | None, held: _Held) -> None:
        try:
            reply(result, error)
        except Exception:
            log.exception("could not send the reply to a request")
        held.pending -= 1
        self._release_ready(held.order)

    def _in_order(self, inbox: Inbox, release: Callable[[], None]) -> None:
        """A reply was handed over: released after what came before it."""
        self._settle(_Held(release, inbox.hold_back()))

    @staticmethod
    def _settle(held: _Held) -> None:
        """Release ``held`` now if nothing of its inbox's waits; else in
        its turn, once its consumers are done.  (The first of a ``held``
        is never ready at rest: whatever makes it ready releases it, so
        nothing is due here.)"""
        order = held.order
        if held.pending or order:
            order.append(held)
        else:
            held.release()

    def _done(self, held: _HeldMessage, callback: Callable[..., Any], task: asyncio.Task[Any]) -> None:
        self._task_failed("message", callback, task)
        self._out_of_hand(held.inbox)
        held.pending -= 1
        self._release_ready(held.inbox.hold_back())

    @staticmethod
    def _release_ready(order: deque[_Hold]) -> None:
        """Release the holds at the head of ``order`` (an inbox's ``held``) that are ready."""
        while order:
            first = order[0]
            if isinstance(first, _HeldRun):
                if not first.release_taken():
                    return  # the rest of the run waits to be taken
            elif first.pending > 0:
                return
            else:
                first.release()
            order.popleft()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for future in waiting:
            _resolve(future)

    async def _wait(self) -> None:
        future = self._driver.loop.create_future()
        self._waiting.append(future)
        await future

    def _messages(self) -> _Reader[Any]:
        self._readers += 1
        return _Reader(self, self._inbox, self._took, self._left)

    def _took(self, held: _HeldMessage | Message) -> Any:
        if not isinstance(held, _HeldMessage):
            return self._took_from_run(held)
        item, held.item = held.item, None
        held.pending -= 1
        if not held.pending:
            order = held.inbox.held
            assert order is not None  # it holds ``held``
            if order[0] is held and (len(order) == 1 or (not isinstance(order[1], _HeldRun) and order[1].pending)):
                # The usual case, spelled out (this runs per message): the
                # oldest taken, and nothing behind it ready.
                order.popleft()
                held.inbox.taken(held.stream, held.seq, held.size)
            else:
                self._release_ready(order)
        return item

    def _took_from_run(self, message: Message) -> Any:
        """``messages()`` took the oldest waiting message of ``_runs[0]``."""
        runs = self._runs
        run = runs[0]
        index = run.taken
        run.taken = index + 1
        last = run.taken == len(run.sizes)
        if last:
            runs.popleft()
        order = run.inbox.held
        assert order is not None  # it holds ``run``
        if order[0] is run:
            if run.released == index:
                # The usual case, spelled out (this runs per message): the
                # run is the oldest hold and all before this one is released.
                run.released = index + 1
                run.inbox.taken(run.stream, run.seq + index, run.sizes[index])
                if last:
                    order.popleft()
                    if order:
                        self._release_ready(order)
            else:
                self._release_ready(order)
        return (*run.peer, message) if run.peer else message

    def _left(self, reader: _Reader[Any]) -> None:
        if reader.source is self._inbox:
            self._readers -= 1
        else:
            self._event_queues.remove(reader.source)

    def events(self) -> AsyncIterator[Event]:
        """Every event but ``message`` from now on (from this call, not from
        the first ``anext``), as ``Event(name, args)``, in order; ends when
        no more can come (see ``messages()``)."""
        queue: deque[Event] = deque(maxlen=EVENTS_BUFFER)
        self._event_queues.append(queue)
        return _Reader(self, queue, None, self._left)


class _Reader(AsyncIterator[_T]):
    """An iterator of ``messages()`` or ``events()``: registered when made,
    so nothing that happens before its first ``anext`` is missed; it ends
    when its endpoint is finished and its source empty, or on ``aclose()``."""

    def __init__(
        self,
        endpoint: _Endpoint,
        source: deque[Any],
        took: Callable[[Any], _T] | None,
        left: Callable[[_Reader[Any]], None],
    ) -> None:
        self.endpoint = endpoint
        self.source = source
        self._took = took
        self._left: Callable[[_Reader[Any]], None] | None = left

    async def __anext__(self) -> _T:
        endpoint = self.endpoint
        source = self.source
        if not source:
            endpoint._driver.bind()
            while not source:
                # Finished, and the events of its ending delivered: the end.
                if self._left is None or (endpoint._finished() and not endpoint._serial.busy):
                    await self.aclose()
                    raise StopAsyncIteration
                await endpoint._wait()
        item = source.popleft()
        took = self._took
        return item if took is None else took(item)

    async def aclose(self) -> None:
        """Stop reading: messages go back to being kept only while another
        reader is open or no callback is subscribed."""
        self._leave()

    def __del__(self) -> None:
        self._leave()

    def _leave(self) -> None:
        left, self._left = self._left, None
        if left is not None:
            left(self)


async def _awaited_request(
    requests: Requests,
    request_id: int,
    future: asyncio.Future[Message],
    sending: Coroutine[Any, Any, None],
    timeout: float | None,
    why: Callable[[], str],
) -> Message:
    """Send a request (``sending``) and wait for its reply (``future``,
    set on this loop); a request that times out, fails to send or is
    cancelled is forgotten."""
    try:
        await sending
        # Not asyncio.wait_for: before Python 3.12 it waits on a future of
        # its own that the reply's future resolves by a callback, a loop
        # turn more per request.  Timed out, the task's cancel cancels
        # ``future`` too, as wait_for does.
        async with asyncio.timeout(timeout):
            return await future
    except TimeoutError:
        requests.forget(request_id)
        raise timed_out(timeout, why) from None
    except BaseException:
        requests.forget(request_id)
        raise


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _forward_settings(cls: type, settings: type) -> None:
    """Give ``cls`` each setting it inherits from ``settings`` as a property
    that reads and writes the wrapped object's (``_inner``): one definition
    of each, whose type the type checker sees on both classes."""
    for klass in reversed(settings.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, cfg.Setting) and name not in vars(cls):

                def get(self: Any, name: str = name) -> Any:
                    return getattr(self._inner, name)

                def set_(self: Any, value: Any, name: str = name) -> None:
                    setattr(self._inner, name, value)

                setattr(cls, name, property(get, set_, doc=value.__doc__))


class AsyncClient(_Endpoint, ClientSettings):
    """A ``Client`` for asyncio code: the same settings (as keyword
    arguments and attributes), events, states and errors, awaited instead of
    waited for.  Use it on one event loop."""

    _events = CLIENT_EVENTS

    def __init__(self, **settings: Any) -> None:
        driver = AsyncioDriver("AsyncClient")
        # A subclass's defaults (``cfg.Settings``) are its Client's.
        self._inner = Client(_driver=driver, _api="AsyncClient", **(self._class_defaults | settings))
        super().__init__(driver, self._inner._callbacks)
        self._room: list[asyncio.Future[None]] = []
        self._inner._on_room = self._room_made

    # -- state -----------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """The client's state (``ClientState`` flags), as ``Client.state``."""
        return self._inner.state

    @property
    def connected(self) -> bool:
        return self._inner.connected

    @property
    def queued(self) -> int:
        """Messages sent but not yet acknowledged by the server."""
        return self._inner.queued

    @property
    def last_close_reason(self) -> str | None:
        return self._inner.last_close_reason

    @property
    def failed_attempts(self) -> int:
        return self._inner.failed_attempts

    def stats(self) -> dict[str, Any]:
        """Live figures, as ``Client.stats`` (docs/STATS.md)."""
        return self._inner.stats()

    generate_id = staticmethod(Client.generate_id)

    def generate_new_id(self) -> str:
        """A new random ``client_id`` for this client (while not running)."""
        return self._inner.generate_new_id()

    def _finished(self) -> bool:
        return not self._inner._state_bits & _RUNNING

    async def wait_state(self, state: ClientState, timeout: float | None = None) -> ClientState:
        """Wait until the state has any of the flags of ``state`` (e.g.
        ``ClientState.STATE_CONNECTED``) and return it; ``TimeoutError``
        after ``timeout`` seconds."""
        self._driver.bind()
        async with asyncio.timeout(cfg.wait_timeout(timeout)):
            while not self._inner.state & state:
                await self._wait()
        return self._inner.state

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected (again); ``StateError`` once the client has
        stopped trying (disconnected, refused, out of reconnect attempts)."""
        self._driver.bind()
        async with asyncio.timeout(cfg.wait_timeout(timeout)):
            while not self._inner.connected:
                if self._finished():
                    raise StateError(f"client is {ClientState.get_name(self.state)}; it will not connect by itself")
                await self._wait()

    # -- operations --------------------------------------------------------------

    async def connect(self, wait: bool = True) -> None:
        """Connect to the server, as ``Client.connect``: with ``wait`` it
        returns once the server accepted this client or raises
        ``ConnectError`` (``ConnectTimeout``, ``ConnectionRefusedByServer``);
        cancelled, it gives the attempt up (CONNECT_FAILED).  With
        ``wait=False`` it starts trying in the background and returns."""
        self._driver.bind()
        inner = self._inner
        inner._check_connectable()
        warn_stray_attributes(self, cfg.setting_names(inner), CLIENT_EVENTS, self._subscribed)
        targets: tuple[Target, ...] | None = None
        if wait:
            targets = inner._literal_target()
            if targets is None:
                # A thread of its own, not the loop's executor, which
                # asyncio.run() waits for at exit: a resolver that does not
                # answer would hold the program up after connect() gave up.
                try:
                    targets = await asyncio.wait_for(asyncio.wrap_future(inner._resolve_soon()), inner.connect_timeout)
                except TimeoutError:
                    raise inner._resolver_silent() from None
        started = inner._start_connect(wait, targets)
        if started is None:
            return
        generation, future = started
        if future is None:  # wait=False
            return
        timeout = inner.connect_timeout
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), timeout + 5.0)
        except ConnectTimeout:  # the attempt's own (a TimeoutError too): as it is
            raise
        except TimeoutError:  # the client's own timer should have fired first
            inner._abandon(generation)
            raise ConnectTimeout(
                f"no answer from {host_port(inner.address, inner.port)} within {timeout:g} s"
            ) from None
        except asyncio.CancelledError:
            inner._abandon(generation)  # nobody waits for this attempt any more
            raise

    async def disconnect(self) -> None:
        """Say goodbye and close; ends the session (as ``Client.disconnect``).
        Returns once the plain callbacks of earlier events have run, connected
        or not (coroutine callbacks run as tasks of their own)."""
        self._driver.bind()
        inner = self._inner
        if inner._begin_disconnect():
            closed = self._driver.loop.create_future()
            inner._disconnect_on_loop(functools.partial(_resolve, closed))
            try:
                await asyncio.wait_for(closed, DISCONNECT_WAIT)
                ok = True
            except TimeoutError:
                ok = False
            inner._finish_disconnect(ok)
            self._wake()
        # The threaded promise, kept on the loop: a statechange of settings
        # set just before (queued until this first use bound the loop) has
        # reached its callbacks when disconnect() returns.
        try:
            async with asyncio.timeout(DISCONNECT_WAIT):
                while self._serial.busy:
                    await self._wait()
        except TimeoutError:
            pass

    async def send(self, message: Message, timeout: float | None = None) -> None:
        """Send ``message`` to the server.  While the send queue is full
        (``max_queued``, ``max_queued_bytes``) it waits for room, connected
        or reconnecting, as long as it takes (bound it with
        ``asyncio.timeout`` too), or up to ``timeout`` seconds and then
        ``QueueFullError`` (0: at once, as ``send_nowait``).
        ``StateError`` when the client is not running, ``MessageTooLarge``
        over the server's frame limit."""
        self._driver.bind()
        if not isinstance(message, Message):
            raise not_a_message(message)
        body = message.encode()
        if timeout is not None:
            timeout = cfg.wait_timeout(timeout)
        try:
            # Room now, the usual case: queued without a coroutine of its own
            # (this runs per message).
            self._inner._send_body(body)
            return
        except QueueFullError:
            pass
        await self._send_body(body, timeout)

    async def _send_body(self, body: bytes, timeout: float | None = None) -> None:
        inner = self._inner
        loop = self._driver.loop
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                inner._send_body(body)
                return
            except QueueFullError:
                if not inner._state_bits & _CAN_SEND:
                    inner._check_can_send()
                if deadline is not None and loop.time() >= deadline:
                    if timeout:
                        raise QueueFullError(acknowledged_nothing(timeout)) from None
                    raise
            await self._wait_for_room(deadline)

    async def request(self, message: Message, timeout: float | None = 10.0) -> Message:
        """Send ``message`` as a request and return the server's reply, as
        ``Client.request`` (exactly once through cuts; ``RequestTimeout``,
        ``SessionLost``, ``RemoteError``, ``NoResponder``, ``QueueFullError``
        past ``max_requests``).  Waits for room in the send queue like
        ``send()``; cancelled, the request is forgotten (a reply is dropped)."""
        self._driver.bind()
        if not isinstance(message, Message):
            raise not_a_message(message)
        inner = self._inner
        inner._check_requests()
        timeout = cfg.wait_timeout(timeout)
        future: asyncio.Future[Message] = self._driver.loop.create_future()
        request_id, body = inner._requests.open("", inner.max_requests, message, future)
        sending = self._send_body(body)
        return await _awaited_request(inner._requests, request_id, future, sending, timeout, inner._why_no_reply)

    def send_nowait(self, message: Message) -> None:
        """Queue ``message`` without waiting: ``QueueFullError`` when the
        send queue is full (as ``asyncio.Queue.put_nowait``)."""
        self._inner.send(message)

    async def _wait_for_room(self, deadline: float | None) -> None:
        """Wait until the send queue may have room (an ACK, a raised bound,
        the client stopped), or until ``deadline`` (the loop's time)."""
        inner = self._inner
        loop = self._driver.loop
        future = loop.create_future()
        self._room.append(future)
        with inner._lock:
            inner._room_waiters += 1
        try:
            if deadline is None:
                await future
            else:
                await asyncio.wait([future], timeout=max(0.0, deadline - loop.time()))
        finally:
            if future in self._room:
                self._room.remove(future)
            with inner._lock:
                inner._room_waiters -= 1

    def _room_made(self) -> None:
        room, self._room = self._room, []
        for future in room:
            _resolve(future)

    def send_threadsafe(self, message: Message, timeout: float | None = None) -> Future[None]:
        """``send`` (with its ``timeout``) from another thread: returns a
        ``concurrent.futures.Future`` (``RuntimeError`` before the client is
        first used on its loop)."""
        loop = self._driver.loop  # first: raising after making the coroutine would leak it unawaited
        return asyncio.run_coroutine_threadsafe(self.send(message, timeout), loop)

    def messages(self) -> AsyncIterator[Message]:
        """Received messages (from this call on, and those kept before), in
        order, each once, across reconnects and resumes; ends when the
        client stops running.  A message is
        acknowledged once taken from here, so a reader that stops slows the
        server down instead of growing memory.  Messages go here whenever an
        iterator is open or no ``message`` callback is subscribed."""
        return self._messages()

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    def __repr__(self) -> str:
        return repr(self._inner).replace("Client", "AsyncClient", 1)


class AsyncServer(_Endpoint, ServerSettings):
    """A ``Server`` for asyncio code: the same settings, events and errors,
    awaited instead of waited for.  Use it on one event loop."""

    _events = SERVER_EVENTS

    def __init__(self, **settings: Any) -> None:
        driver = AsyncioDriver("AsyncServer")
        # A subclass's defaults (``cfg.Settings``) are its Server's.
        self._inner = Server(_driver=driver, _api="AsyncServer", **(self._class_defaults | settings))
        super().__init__(driver, self._inner._callbacks)
        self._room: dict[str, list[asyncio.Future[None]]] = {}
        #: Sends waiting in ``_room_in`` (a broadcast counts once, however
        #: many clients it waits for): ``senders_waiting``.
        self._senders_waiting = 0
        self._inner._on_room = self._room_made

    @property
    def running(self) -> bool:
        return self._inner.running

    @property
    def requested_port(self) -> int:
        """The port as set (0: any), whatever ``port`` reads while listening."""
        return self._inner.requested_port

    @property
    def clients(self) -> list[str]:
        """Ids of the clients with a session (detached ones included); in a
        cluster every node's (a round trip to Redis: keep it off hot paths)."""
        return self._inner.clients

    @property
    def held_clients(self) -> list[str]:
        """Ids of the clients whose session this server holds, as ``Server.held_clients``."""
        return self._inner.held_clients

    @property
    def detached_clients(self) -> list[str]:
        """Ids of this server's clients whose connection broke and which may still resume."""
        return self._inner.detached_clients

    @property
    def client_nodes(self) -> dict[str, str]:
        """Each client with the node that holds it, as ``Server.client_nodes``
        (in a cluster a round trip to Redis)."""
        return self._inner.client_nodes

    @property
    def cluster_status(self) -> dict[str, Any] | None:
        """This node's id, readiness, Redis URL, takeovers and resubscribes
        (``Server.cluster_status``); None outside a cluster."""
        return self._inner.cluster_status

    @property
    def warnings(self) -> list[str]:
        return self._inner.warnings

    def queued(self, client_id: str) -> int:
        """Messages sent to ``client_id`` not yet acknowledged."""
        return self._inner.queued(client_id)

    def stats(self, client_id: str | None = None) -> dict[str, Any]:
        """Live figures, as ``Server.stats`` (docs/STATS.md)."""
        figures = self._inner.stats(client_id)
        if client_id is None:
            # Its sends wait on the loop, not on the threaded server's lock.
            figures["senders_waiting"] += self._senders_waiting
        return figures

    def __repr__(self) -> str:
        return repr(self._inner).replace("Server", "AsyncServer", 1)

    def _finished(self) -> bool:
        return not self._inner.running

    async def start(self, *, prefer_port: int | None = None) -> None:
        """Listen on ``interface``:``port``; ``BindError`` if it cannot.  In a
        cluster, returns once the node reached Redis (or after 2 s without).
        ``prefer_port`` as ``Server.start``'s."""
        self._driver.bind()
        inner = self._inner
        warn_stray_attributes(self, cfg.setting_names(inner), SERVER_EVENTS, self._subscribed)
        inner.start(prefer_port=prefer_port)
        cluster = inner._cluster
        if cluster is not None:
            await self._off_loop(cluster.wait_joined, min(2.0, inner.lease_ttl))

    async def _off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` on a worker thread: a cluster node's calls wait on
        Redis, which the loop must never do."""
        return await self._driver.loop.run_in_executor(None, functools.partial(fn, *args))

    async def stop(self, timeout: float = 5.0) -> None:
        """Announce shutdown to every client, end every session, stop
        listening; waits up to ``timeout`` for the goodbyes to be written."""
        self._driver.bind()
        inner = self._inner
        if not inner.running:
            return
        stopped = self._driver.loop.create_future()
        inner._on_stopped = functools.partial(_resolve, stopped)
        try:
            inner.stop(timeout)
            if not inner._stopped.is_set():
                await asyncio.wait_for(stopped, timeout)
        except TimeoutError:
            pass
        finally:
            inner._on_stopped = None
            self._wake()
            for waiting in self._room.values():
                for future in waiting:
                    _resolve(future)

    async def send(self, target: str, message: Message, timeout: float | EllipsisType | None = ...) -> None:
        """Send ``message`` to client ``target``, or to every client for
        ``'*'``; ``UnknownClient`` once that client has no session.

        ``timeout``: how long a full send queue may hold this call, in
        seconds (None: as long as it takes), as with ``Server.send``.  Not
        given, a send to one client waits for room as long as it takes
        (bound it with ``asyncio.timeout`` too), and a broadcast never
        waits: a client whose queue it finds full is too slow and loses
        its session.  Given, a send to one client raises ``QueueFullError``
        after it, and a broadcast holds the caller up to it for the clients
        whose queues are full, and cuts only those still full after it: a
        burst goes out at the pace of the clients that read.  In a
        cluster, a full queue raises at once, as with ``Server.send``.
        """
        self._driver.bind()
        if not isinstance(message, Message):
            raise not_a_message(message)
        if not isinstance(target, str):
            raise TypeError(f"target must be a client id or '*', not {type(target).__name__}")
        every = target == cfg.EVERY_CLIENT
        wait = (0.0 if every else None) if timeout is ... else cfg.wait_timeout(timeout)
        if self._inner._cluster is not None:
            # Redis bounds the queue: a full one raises at once (docs/CLUSTER.md).
            await self._off_loop(self._inner.send, target, message)
        elif every:
            await self._broadcast(message.encode(), wait)
        else:
            body = message.encode()
            try:
                self._inner._send_to(target, body)  # room now: no coroutine of its own (as AsyncClient.send)
                return
            except QueueFullError:
                pass
            await self._send_body(target, body, timeout=wait)

    async def _broadcast(self, body: bytes, timeout: float | None) -> None:
        """``Server._broadcast``'s steps, its wait for room awaited on the loop."""
        inner = self._inner
        with inner._lock:
            full, skipped = inner._offer_everyone_locked(body)
            slow, waiting = split_detached(full) if timeout != 0.0 else (full, [])
            # Those not waited for are cut now, while the list is fresh.
            cut = inner._cut_off_locked(slow)
        inner._broadcast_said(skipped, cut)
        deadline = None if timeout is None else self._driver.loop.time() + timeout
        while waiting and await self._room_in([s.client_id for s in waiting], deadline):
            with inner._lock:
                waiting = inner._offer_again_locked(waiting, body)
        if waiting:
            with inner._lock:
                cut = inner._cut_off_locked(waiting)
            inner._broadcast_said([], cut)

    async def request(self, client_id: str, message: Message, timeout: float | None = 10.0) -> Message:
        """Send ``message`` to ``client_id`` as a request and return its
        reply, as ``Server.request``; waits for room like ``send()``."""
        self._driver.bind()
        if not isinstance(message, Message):
            raise not_a_message(message)
        inner = self._inner
        inner._check_requests(client_id)
        timeout = cfg.wait_timeout(timeout)
        future: asyncio.Future[Message] = self._driver.loop.create_future()
        request_id, body = inner._requests.open(client_id, inner.max_requests, message, future)
        sending = self._send_body(client_id, body, request_id)
        why = functools.partial(inner._why_no_reply, client_id)
        return await _awaited_request(inner._requests, request_id, future, sending, timeout, why)

    async def _send_body(self, target: str, body: bytes, request_id: int = 0, timeout: float | None = None) -> None:
        """Queue ``body`` for ``target``, waiting for room up to ``timeout``
        (None: as long as it takes; then ``QueueFullError``)."""
        inner = self._inner
        if inner._cluster is not None:
            # Redis bounds the queue: QueueFullError at once, no wait (docs/CLUSTER.md).
            await self._off_loop(inner._send_to, target, body, request_id)
            return
        deadline = None if timeout is None else self._driver.loop.time() + timeout
        while True:
            try:
                inner._send_to(target, body, request_id)
                return
            except QueueFullError:
                if deadline is not None and self._driver.loop.time() >= deadline:
                    # The last try, which words the error with the wait.
                    inner._send_to(target, body, request_id, waited=timeout or 0.0)
                    return
            await self._room_in([target], deadline)

    async def _room_in(self, targets: list[str], deadline: float | None) -> bool:
        """Wait until one of ``targets``' queues may have room (an ACK, a
        raised bound, its session ended, the server stopped): False once
        ``deadline`` (the loop's time) has passed."""
        loop = self._driver.loop
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            return False
        futures: list[tuple[str, asyncio.Future[None]]] = []
        for target in targets:
            future = loop.create_future()
            self._room.setdefault(target, []).append(future)
            futures.append((target, future))
        self._senders_waiting += 1
        try:
            if len(futures) == 1 and left is None:
                await futures[0][1]  # the common wait: no timer, no asyncio.wait
                return True
            await asyncio.wait([future for _, future in futures], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            return True
        finally:
            self._senders_waiting -= 1
            for target, future in futures:
                waiting = self._room.get(target)
                if waiting is not None:
                    if future in waiting:
                        waiting.remove(future)
                    if not waiting:
                        del self._room[target]

    def send_nowait(self, target: str, message: Message) -> None:
        """Queue ``message`` for ``target`` (or ``'*'``) without waiting:
        ``QueueFullError`` when that client's queue is full."""
        self._inner.send(target, message)

    def _room_made(self, client_id: str) -> None:
        for future in self._room.pop(client_id, ()):
            _resolve(future)

    def send_threadsafe(
        self, target: str, message: Message, timeout: float | EllipsisType | None = ...
    ) -> Future[None]:
        """``send`` (with its ``timeout``) from another thread: returns a
        ``concurrent.futures.Future`` (``RuntimeError`` before the server
        is first used on its loop)."""
        loop = self._driver.loop  # first: raising after making the coroutine would leak it unawaited
        return asyncio.run_coroutine_threadsafe(self.send(target, message, timeout), loop)

    async def disconnect_client(self, client_id: str, reason: str = "disconnected by the server") -> None:
        """End ``client_id``'s session and close its connection, telling it
        ``reason`` (``UnknownClient`` for an unknown id); in a cluster, on
        whichever node holds it."""
        self._driver.bind()
        if self._inner._cluster is not None:
            await self._off_loop(self._inner.disconnect_client, client_id, reason)
        else:
            self._inner.disconnect_client(client_id, reason)

    def messages(self) -> AsyncIterator[tuple[str, Message]]:
        """``(client_id, message)`` for each message received, in each
        client's order, each once; ends when the server stops.  A message is
        acknowledged once taken from here (see ``AsyncClient.messages``)."""
        return self._messages()

    async def __aenter__(self) -> AsyncServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


_forward_settings(AsyncClient, ClientSettings)
_forward_settings(AsyncServer, ServerSettings)
