"""Is the peer still there, sans-IO: the heartbeat rules of one connection.

The driver calls ``Liveness.check`` when the deadline it last got back is
due, with the time and what it reads off its transport; the answer says
what to do (nothing, PING, or close and why) and when to check again.
``Connection.heartbeat_due`` holds the protocol's part (PING when idle,
the peer silent for ``heartbeat_timeout``); the rules here add what only
the driver can see:

- while *we* paused reading (our application is behind), the peer's frames
  wait unread, so its silence proves nothing;
- frames written since the last check (MESSAGE frames are written without
  ``Connection`` seeing them) make the link busy, not idle: no PING needed;
- a peer that answers PINGs but reads nothing else while our unsent bytes
  stay over ``max_pending_bytes`` for ``heartbeat_timeout`` is cut off, or
  its backlog would grow without bound;
- a check that comes late (this process did not run: a pause, a stalled
  loop, a virtual machine frozen) proves nothing either: the peer's frames
  may wait unread in the socket (and ours unwritten), and a verdict now
  would cut every connection at once.  Its verdict waits half an interval,
  once, so that the driver reads and writes first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._connection import Connection

#: A check more than ``heartbeat_timeout / LATE`` after it was due comes
#: late: scheduling jitter is far less, a pause that could fake a silence more.
LATE = 10


class Act(enum.Enum):
    NOTHING = "nothing"
    PING = "ping"
    #: Nothing received for ``heartbeat_timeout``: abort.
    SILENT = "silent"
    #: Alive but not reading: abort.
    NOT_READING = "not reading"


@dataclass(frozen=True, slots=True)
class Verdict:
    act: Act
    #: When to check again (meaningless after SILENT or NOT_READING).
    next_check: float
    #: The close reason for SILENT and NOT_READING.
    reason: str = ""


class Liveness:
    """The heartbeat settings of one connection and what its checks saw."""

    __slots__ = ("deferred_for", "due", "interval", "max_pending_bytes", "ping_sent_at", "timeout", "writes_seen")

    def __init__(self, interval: float, timeout: float, max_pending_bytes: int | None = None) -> None:
        self.interval = interval
        self.timeout = timeout
        #: Bytes that may wait unsent for ``timeout`` before the peer counts
        #: as not reading (None: no limit).
        self.max_pending_bytes = max_pending_bytes
        #: The transport's write count at the last check.
        self.writes_seen = 0
        #: When the PING now unanswered was sent (None: none is).
        self.ping_sent_at: float | None = None
        #: When the driver was last asked to check.
        self.due = 0.0
        #: The cut a late check put off, and the time it went by (the
        #: peer's ``last_received`` for a silence, ``last_progress`` for not
        #: reading): put off at most once for the same evidence.
        self.deferred_for: tuple[Act, float] | None = None

    def start(self, proto: Connection, now: float, writes: int) -> float:
        """The handshake is done (its frames went through ``proto``, which
        noted when): returns the first check's time."""
        self.writes_seen = writes
        self.due = now + proto.ping_interval(self.interval)
        return self.due

    def check(
        self,
        proto: Connection,
        now: float,
        *,
        reading_paused: bool,
        writes: int,
        out_bytes: int,
        last_progress: float,
    ) -> Verdict:
        """What liveness needs now: ``writes`` counts the transport's writes,
        ``out_bytes`` is what waits unsent, ``last_progress`` when the socket
        last took bytes."""
        if reading_paused:
            proto.last_received = now
        if writes != self.writes_seen:
            # Counting them as sent now, a little late, delays the next PING
            # by at most an interval.
            proto.last_sent = max(proto.last_sent, now)
        action, next_check = proto.heartbeat_due(now, self.interval, self.timeout)
        limit = self.max_pending_bytes
        if action == "timeout":
            cut = Verdict(Act.SILENT, now, f"heartbeat timeout: nothing received for {self.timeout:g} s")
            seen = (cut.act, proto.last_received)
        elif limit is not None and out_bytes > limit and now - last_progress > self.timeout:
            cut = Verdict(Act.NOT_READING, now, f"not reading: over max_pending_bytes={limit} for {self.timeout:g} s")
            seen = (cut.act, last_progress)
        else:
            cut = None
        if cut is not None:
            if now - self.due <= self.timeout / LATE or self.deferred_for == seen:
                return cut
            self.deferred_for = seen
            self.due = now + min(self.interval, self.timeout) / 2
            return Verdict(Act.NOTHING, self.due)
        self.writes_seen = writes
        next_check = self.due = min(next_check, now + self.timeout / 2)
        if action != "ping":
            return Verdict(Act.NOTHING, next_check)
        if self.ping_sent_at is None:
            self.ping_sent_at = now
        return Verdict(Act.PING, next_check)

    def pong(self, now: float) -> float | None:
        """A PONG arrived: the round trip of the PING it answers, if one
        was waiting (PONGs answer PINGs in order, so the first unanswered
        PING's time serves)."""
        sent, self.ping_sent_at = self.ping_sent_at, None
        return None if sent is None else now - sent

    def pinged(self, writes: int) -> None:
        """The PING a check asked for is written (``writes``: the transport's
        count after it): it is the heartbeat's own, not traffic."""
        self.writes_seen = writes
