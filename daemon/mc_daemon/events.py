"""The daemon's event stream: one ring of recent events, read by cursors.

Every event is numbered and kept in a ring of the last ``size`` events.
A subscriber is a cursor into that ring, not a queue of its own: publishing
costs the same whether there are no subscribers or fifty, a subscriber
costs no memory per event, and a catch-up (``since``) is read from the ring
at the reader's own pace, like live events.

What a subscriber can rely on: it gets every event after its cursor that
passes its filters, in order, as long as it does not fall further behind
than ``limit`` events (the ``--event-queue`` of mcd; by default the ring's
size). Falling behind is judged once it has caught up to within the limit,
so a catch-up from anywhere still in the ring never fails for being a
catch-up. A subscriber that falls out is told (``OverflowError``) and may
subscribe again with ``since``: if its events are still in the ring it gets
them all, else it is told to resync from a snapshot.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

#: How many records a reader takes from the ring at once (under the lock).
READ_BATCH = 256


class EventRing:
    """The last ``size`` events; ``cond`` is notified at each one.

    The caller holds ``cond`` (the daemon core's lock) to append; readers
    take it briefly to copy out a batch.
    """

    def __init__(self, size: int, cond: threading.Condition) -> None:
        self.size = size
        self.cond = cond
        self._buf: list[dict[str, Any] | None] = [None] * size
        self.last_seq = 0
        #: Statistics: subscribers cut off for falling behind, and the
        #: events they had not read when they were.
        self.subscribers_cut_off = 0
        self.events_dropped = 0

    @property
    def first_seq(self) -> int:
        """The oldest event still kept (``last_seq + 1`` when there is none)."""
        return max(1, self.last_seq - self.size + 1)

    def append(self, record: dict[str, Any]) -> None:
        """Add the next event (its ``seq`` is ``last_seq + 1``); ``cond`` held."""
        seq = self.last_seq + 1
        self._buf[seq % self.size] = record
        self.last_seq = seq
        self.cond.notify_all()

    def overflowed(self, unread: int) -> None:
        """A subscriber fell out with ``unread`` events not read (``cond`` held)."""
        self.subscribers_cut_off += 1
        self.events_dropped += unread

    def kept(self, after: int) -> bool:
        """Whether every event after ``after`` is still in the ring."""
        return after + 1 >= self.first_seq

    def read(self, after: int, limit: int = READ_BATCH) -> list[dict[str, Any]]:
        """Up to ``limit`` events after ``after`` (``cond`` held; ``kept(after)``)."""
        end = min(self.last_seq, after + limit)
        buf, size = self._buf, self.size
        return [buf[seq % size] for seq in range(after + 1, end + 1)]  # type: ignore[misc]


class Subscription:
    """One reader of the ring, with its filters and its place."""

    def __init__(
        self,
        ring: EventRing,
        after: int,
        instances: frozenset[tuple[str, str]] | None,
        events: frozenset[str] | None,
        limit: int | None = None,
    ) -> None:
        self.ring = ring
        self.instances = instances
        self.events = events
        self.limit = ring.size if limit is None else min(limit, ring.size)
        #: The last event read from the ring (whether it passed the filters or not).
        self.cursor = after
        self.closed = False
        #: Judged behind only once within ``limit``: a catch-up is never "behind".
        self._caught_up = ring.last_seq - after <= self.limit
        self._ready: deque[dict[str, Any]] = deque()

    def wants(self, event: dict[str, Any]) -> bool:
        if self.instances is not None and (event["kind"], event["name"]) not in self.instances:
            return False
        return self.events is None or event["event"] in self.events

    @property
    def overflowed(self) -> bool:
        """Fell out: its next events left the ring, or it fell more than ``limit`` behind."""
        if not self.ring.kept(self.cursor):
            return True
        return self._caught_up and self.ring.last_seq - self.cursor > self.limit

    def get(self, timeout: float | None) -> dict[str, Any] | None:
        """The next wanted event, or None after ``timeout``; raises
        ``OverflowError`` once the subscriber fell out, ``EOFError`` once closed."""
        if self._ready:
            return self._ready.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        ring = self.ring
        while True:
            with ring.cond:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not ring.cond.wait_for(lambda: self.closed or ring.last_seq > self.cursor, left):
                    return None
                if self.closed:
                    raise EOFError
                if self.overflowed:
                    ring.overflowed(ring.last_seq - self.cursor)
                    raise OverflowError
                batch = ring.read(self.cursor)
                self.cursor = batch[-1]["seq"]
                if ring.last_seq - self.cursor <= self.limit:
                    self._caught_up = True
            self._ready.extend(record for record in batch if self.wants(record))
            if self._ready:
                return self._ready.popleft()

    def close(self) -> None:
        with self.ring.cond:
            self.closed = True
            self.ring.cond.notify_all()
