"""Log lines a peer can cause over and over, said now and then.

A scanner failing TLS handshakes, or a client sending replies to requests
nobody made, must not flood the log (journald then drops the lines that
matter, rate-limiting the whole service): such a line is said at most once
every few seconds, with the number of its kind left unsaid since.  mcd's
listeners say theirs the same way (tests/test_layering.py names what mcd
shares of the library's insides).
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
