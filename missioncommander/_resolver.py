"""Host names resolved off every loop, on a few daemon threads of their own.

``socket.getaddrinfo`` blocks, for the resolver's whole timeout when DNS
does not answer (seconds per try, for each nameserver), and cannot be
cancelled.  So it runs on threads that nobody waits for: not on an I/O
loop, not on asyncio's default executor (``asyncio.run()`` waits for that
one at exit), not in a ``ThreadPoolExecutor`` (the interpreter waits for
those at exit).  At most ``LIMIT`` run at once: a thousand clients connecting
at once by name queue here instead of starting a thousand threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

#: Resolving threads at most at once (asyncio's default executor has as many on a large machine).
LIMIT = 32

_lock = threading.Lock()
_waiting: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
_running = 0


def soon(resolve: Callable[[], T], no_thread: Callable[[RuntimeError], BaseException]) -> Future[T]:
    """``resolve()`` on a resolving thread, as a future (given up by
    ``cancel()`` until it starts).  When no thread runs and none can start
    (a process at its limit on threads), the future fails with
    ``no_thread(error)``."""
    global _running
    future: Future[T] = Future()
    with _lock:
        _waiting.append((resolve, future))
        if _running >= LIMIT:
            return future  # a running thread takes it next
        _running += 1
    try:
        threading.Thread(target=_work, name="missioncommander-resolve", daemon=True).start()
    except RuntimeError as exc:  # can't start new thread
        with _lock:
            _running -= 1
            stranded = [] if _running else list(_waiting)  # a running thread would take them
            if stranded:
                _waiting.clear()
        for _, waiting in stranded:
            if waiting.set_running_or_notify_cancel():
                waiting.set_exception(no_thread(exc))
    return future


def _work() -> None:
    global _running
    while True:
        with _lock:
            if not _waiting:
                _running -= 1
                return
            resolve, future = _waiting.popleft()
        if not future.set_running_or_notify_cancel():
            continue  # given up before it began
        try:
            future.set_result(resolve())
        except BaseException as exc:  # the waiter's to raise
            future.set_exception(exc)
