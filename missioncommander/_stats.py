"""Live statistics: what a Client or a server's session counts as it runs.

The counters are bumped on paths that already run (a connect, a resume, a
heartbeat's PONG), never with a lock or a system call of their own; the
per-message figures are read off what the streams and inboxes already keep
(``OutboundStream.offered``, ``Inbox.received_count``).  ``stats()`` on a
Client or Server puts them together; docs/STATS.md says what each means.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._streams import UNBOUNDED

if TYPE_CHECKING:
    from ._inbox import Inbox
    from ._session import SendSession

#: The figures of ``traffic``: what a server adds up over its sessions.
TRAFFIC = ("messages_sent", "bytes_sent", "messages_received", "bytes_received")

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


def traffic(session: SendSession, inbox: Inbox) -> dict[str, int]:
    """What a session sent and received so far."""
    return {
        "messages_sent": session.out.offered,
        "bytes_sent": session.out.offered_bytes,
        "messages_received": inbox.received_count,
        "bytes_received": inbox.received_bytes,
    }


def session_figures(session: SendSession, inbox: Inbox) -> dict[str, Any]:
    """A session's traffic and queues, against the limits they are held to
    now (the caller holds its owner's lock: ``send()`` changes them)."""
    out = session.out
    return {
        **traffic(session, inbox),
        "queued": len(out),
        "queued_bytes": out.queued_bytes,
        "max_queued": out.max_items,
        "max_queued_bytes": out.max_bytes,
        "unwritten": session.unwritten,
        "inbound_waiting": inbox.waiting,
        "inbound_waiting_bytes": inbox.waiting_bytes,
        "max_inbound": inbox.max_count,
        "max_inbound_bytes": inbox.max_bytes,
        # What may be written and unacknowledged (queued - unwritten) at most.
        "peer_max_inbound": None if session.window == UNBOUNDED else session.window,
        "peer_max_inbound_bytes": None if session.window_bytes == UNBOUNDED else session.window_bytes,
        "resent": session.resent,
    }
