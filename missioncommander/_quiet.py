"""Log lines a peer can cause over and over, said now and then (``Quiet``),
and lines that many clients of a process say, or cause, at once, said by
a few and counted (``Chorus``).

A scanner failing TLS handshakes, or a client sending replies to requests
nobody made, must not flood the log (journald then drops the lines that
matter, rate-limiting the whole service): such a line is said at most once
every few seconds, with the number of its kind left unsaid since.  mcd's
listeners say theirs the same way (tests/test_layering.py names what mcd
shares of the library's insides).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

#: How often a line of one kind is said at most.
SAY_EVERY = 5.0


class Quiet:
    """One kind of line, said at most every ``every`` seconds (any thread:
    counts that race may come out one short, which a log can bear)."""

    __slots__ = ("_clock", "_every", "_said", "_unsaid")

    def __init__(self, every: float = SAY_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._said = -float("inf")
        self._unsaid = 0

    def due(self) -> int | None:
        """Whether to say the line now: None to stay quiet (it is counted),
        else how many went unsaid since the last one said."""
        now = self._clock()
        if now - self._said < self._every:
            self._unsaid += 1
            return None
        unsaid, self._said, self._unsaid = self._unsaid, now, 0
        return unsaid


def more(unsaid: int) -> str:
    """What a line adds about those not said before it."""
    return f" ({unsaid} more since the last said)" if unsaid else ""


class Timers(Protocol):
    """What a ``Chorus`` needs of its caller's event loop (``_loop.Driver`` has it)."""

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop's thread (thread-safe)."""

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> object:
        """Run ``fn(*args)`` after ``delay`` seconds (the loop's thread)."""


class Chorus:
    """One kind of line that many clients of one process say, or that a
    server says of many of its clients, at once.

    A server that goes away makes each of its clients in this process say
    it lost the connection, then that it will retry, then that it is back:
    a thousand lines each time for mcd hosting a thousand clients, enough
    for journald to drop lines that matter (and a server says as much of
    its clients when a blip cuts them).  Each window of ``every``
    seconds, the first ``voices`` lines are said at their level; the rest go
    to DEBUG (nothing is lost to those who log it), and one line at the
    window's end says how many there were.  A process with a client or
    three logs as before.

    Any thread may call ``log``; the window's end is a call scheduled on
    the caller's event loop.  Should that loop stop first, the next line of
    the kind says the count instead, and at the latest the process's exit
    does (mcd stopping with a thousand clients said three of them left).
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_every",
        "_level",
        "_lock",
        "_logger",
        "_said",
        "_speakers",
        "_summary",
        "_unsaid",
        "_until",
        "_voices",
    )

    def __init__(
        self,
        logger: logging.Logger,
        summary: str,
        every: float = SAY_EVERY,
        voices: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._summary = summary
        self._every = every
        self._voices = voices
        self._clock = clock
        self._lock = threading.Lock()
        self._until = -float("inf")
        self._said = 0
        self._unsaid = 0
        self._speakers: set[object] = set()
        self._level = logging.NOTSET
        _CHORUSES.add(self)

    def log(self, timers: Timers, who: object, level: int, msg: str, *args: object) -> None:
        """Log ``msg % args`` (a line of ``who``'s) at ``level``, or at DEBUG
        and counted once this window has had its voices."""
        if not self._logger.isEnabledFor(level):
            return  # neither the line nor its count would be seen
        end, first = 0.0, False
        with self._lock:
            now = self._clock()
            if now >= self._until:
                late = self._take_locked()
                self._until = now + self._every
                self._said = 0
            else:
                late = None
            if self._said < self._voices:
                self._said += 1
                counted = False
            else:
                counted = True
                first = not self._unsaid
                end = self._until - now
                self._unsaid += 1
                self._speakers.add(who)
                self._level = max(self._level, level)
        if late is not None:
            self._say(*late)
        if not counted:
            self._logger.log(level, msg, *args)
            return
        self._logger.debug(msg, *args)
        if first:
            try:
                timers.call_soon(timers.call_later, end, self.flush)
            except RuntimeError:
                # An asyncio loop already closed (a session ended as it
                # shut down): a log line must not raise; the next line of
                # the kind says the count.
                pass

    def flush(self) -> None:
        """Say how many lines went to DEBUG since the last such line."""
        with self._lock:
            late = self._take_locked()
        if late is not None:
            self._say(*late)

    def restart(self) -> None:
        """Say what was counted, and let the next lines be said as if they
        were the first (a new window)."""
        with self._lock:
            late = self._take_locked()
            self._until = -float("inf")
            self._said = 0
        if late is not None:
            self._say(*late)

    def _take_locked(self) -> tuple[int, int, int] | None:
        if not self._unsaid:
            return None
        late = (self._level, self._unsaid, len(self._speakers))
        self._unsaid, self._level = 0, logging.NOTSET
        self._speakers = set()
        return late

    def _say(self, level: int, lines: int, speakers: int) -> None:
        self._logger.log(
            level,
            '%d more line(s) like "%s" from %d client(s) within %g s (logged at DEBUG level)',
            lines,
            self._summary,
            speakers,
            self._every,
        )


#: Every chorus there is (the library's live as long as their modules),
#: for the counts still unsaid at exit.
_CHORUSES: weakref.WeakSet[Chorus] = weakref.WeakSet()


@atexit.register
def say_counts_left() -> None:
    """Say every chorus's count not said yet: at exit (registered after
    logging's own exit hook, so it runs before it), or before a program's
    last line of its own (mcd's "mcd stopped")."""
    for chorus in list(_CHORUSES):
        chorus.flush()
