"""Live statistics: what a Client or a server's session counts as it runs.

The counters are bumped on paths that already run (a connect, a resume, a
heartbeat's PONG), never with a lock or a system call of their own; the
per-message figures are read off what the streams and inboxes already keep
(``OutboundStream.offered``, ``Inbox.received_count``).  ``stats()`` on a
Client or Server puts them together; docs/STATS.md says what each means.
"""

from __future__ import annotations

import time
from typing import Any

#: The weight of a new heartbeat round trip in the smoothed one (TCP's SRTT).
RTT_GAIN = 1 / 8


class Counters:
    """One Client's, or one server session's, events worth counting."""

    __slots__ = ("connects", "last_close_time", "reconnects", "resumes", "rtt_last", "rtt_smoothed", "sessions_lost")

    def __init__(self) -> None:
        self.connects = 0
        self.reconnects = 0
        self.resumes = 0
        self.sessions_lost = 0
        #: Wall-clock time of the last close (for people, not for timers).
        self.last_close_time: float | None = None
        self.rtt_last: float | None = None
        self.rtt_smoothed: float | None = None

    def closed(self) -> None:
        self.last_close_time = time.time()

    def round_trip(self, rtt: float | None) -> None:
        """A heartbeat's PING was answered after ``rtt`` seconds."""
        if rtt is None:
            return
        self.rtt_last = rtt
        smoothed = self.rtt_smoothed
        self.rtt_smoothed = rtt if smoothed is None else smoothed + RTT_GAIN * (rtt - smoothed)

    def figures(self) -> dict[str, Any]:
        return {
            "connects": self.connects,
            "reconnects": self.reconnects,
            "resumes": self.resumes,
            "sessions_lost": self.sessions_lost,
            "last_close_time": self.last_close_time,
            "rtt_last_ms": None if self.rtt_last is None else round(self.rtt_last * 1e3, 3),
            "rtt_smoothed_ms": None if self.rtt_smoothed is None else round(self.rtt_smoothed * 1e3, 3),
        }
