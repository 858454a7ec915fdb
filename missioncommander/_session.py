"""The sending half of a session, sans-IO: one copy for Client and Server.

A ``SendSession`` holds what one side sent in a session (the resend buffer,
``_streams.OutboundStream``) and how far it has written it on the current
connection (``sent_seq``), and applies the session rules to them: what an
ACK drops, what a resume or a restart resends, what ending the session
drops.  Its owner calls it under its own lock (``send()`` runs on callers'
threads); it takes none, and the time is passed in.  How a queued message
reaches the wire (``BURST_GAP``, ``BATCH``) is ``_link.route_locked``.

The receiving half is ``_streams.InboundStream`` inside ``_inbox.Inbox``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._events import Window
from ._frames import DEFAULT_MAX_FRAME_SIZE
from ._streams import UNBOUNDED, OutboundStream

#: Sends closer together than this are a burst: the I/O thread writes a
#: burst with few syscalls, while a lone send is written from its caller's
#: thread (one thread hand-off fewer per request).
BURST_GAP = 0.00005
#: While a pump is on its way, a burst this long is written from the
#: caller's thread meanwhile, in one batch, sparing the driver's thread.
BATCH = 64


class SendSession:
    """What this side sent in one session, and how far it is written.

    ``sent_seq`` is the last message handed to the current connection;
    every message after it waits to be written (on the next pump, or on the
    resume), every message up to it waits only for its ACK.

    What is written and not acknowledged stays within the peer's window
    (``window``, ``window_bytes``: the inbox bounds its HELLO or WELCOME
    announced), so the peer never has to stop reading, and the ACKs it
    sends are never stuck behind its pause; an ACK opens the window again
    (``acked`` says when there is more to write).  Kept as what the send
    path compares with: ``limit_seq``, the last number the window lets
    out, and ``room_bytes``, what is left of its bytes.
    """

    __slots__ = (
        "burst_run",
        "last_send",
        "limit_seq",
        "live",
        "out",
        "peer_max_frame_size",
        "pump_pending",
        "resent",
        "room_bytes",
        "sent_seq",
        "window",
        "window_bytes",
    )

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.out = OutboundStream(max_items, max_bytes)
        self.sent_seq = 0
        #: The transport of the current, welcomed connection (the driver's;
        #: this module never calls it); None between connections.
        self.live: Any = None
        #: A pump of this session is scheduled on the driver's thread.
        self.pump_pending = False
        #: What the peer's HELLO or WELCOME allowed (a MESSAGE over it is refused at send()).
        self.peer_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self.last_send = 0.0
        #: Messages of the current burst written one by one on the driver's
        #: thread (``_link.route_locked``): from ``BATCH`` on, the pump's.
        self.burst_run = 0
        #: Messages written again after a resume or a restart (statistics).
        self.resent = 0
        #: The peer's window (no bound from a peer that announces none).
        self.window = self.window_bytes = self.limit_seq = self.room_bytes = UNBOUNDED

    @property
    def unwritten(self) -> int:
        """Messages queued and not yet handed to a connection."""
        return self.out.next_seq - 1 - self.sent_seq

    @property
    def in_flight(self) -> int:
        """Messages written and not yet acknowledged (on a connection that
        broke, nobody knows whether they arrived)."""
        return len(self.out) - self.unwritten

    def set_limits(self, max_items: int, max_bytes: int) -> None:
        self.out.max_items, self.out.max_bytes = max_items, max_bytes

    def set_window(self, window: Window | None) -> None:
        """The window the peer's HELLO or WELCOME announced (None: it
        announced none, as a peer before windows), on a connection where
        nothing is written yet."""
        if window is None:
            self.window = self.window_bytes = UNBOUNDED
        else:
            self.window, self.window_bytes = window.messages, window.bytes
        self._open_window(self.window_bytes)

    def _open_window(self, room_bytes: int) -> None:
        out = self.out
        self.limit_seq = out.next_seq - len(out) - 1 + self.window
        self.room_bytes = room_bytes

    def take_unsent(self) -> list[bytes]:
        """The MESSAGE frames not yet written that fit the peer's window, as
        chunks; marks them written."""
        chunks, self.sent_seq, size = self.out.frames_within(self.sent_seq, self.limit_seq, self.room_bytes)
        self.room_bytes -= size
        return chunks

    def acked(self, seq: int) -> bool:
        """The peer acknowledged everything up to ``seq``: drop it; True when
        messages wait to be written (the window may have room for them now).
        An ACK never lowers ``sent_seq``; one for a number never sent raises
        ``RemoteProtocolError`` (``OutboundStream.ack``)."""
        out = self.out
        before = out.queued_bytes
        out.ack(seq)
        if seq >= self.sent_seq:
            self.sent_seq = seq
            self._open_window(self.window_bytes)
        else:
            self._open_window(self.room_bytes + before - out.queued_bytes)
        return out.next_seq - 1 > self.sent_seq

    def resumed(self, peer_last_seq: int) -> None:
        """The session goes on on a new connection, where the peer had
        everything up to ``peer_last_seq``: the rest is written again."""
        self.out.ack(peer_last_seq)
        self.resent += max(0, self.sent_seq - peer_last_seq)
        self.sent_seq = peer_last_seq
        self._open_window(self.window_bytes)

    def restarted(self, drop: Callable[[bytes], bool] | None = None) -> int:
        """The peer forgot the session (a server restart): what it did not
        acknowledge, but for the bodies ``drop`` picks, is numbered again
        from 1 in a new one and written again; returns how many were dropped."""
        written = max(0, self.sent_seq - (self.out.next_seq - len(self.out)) + 1)
        dropped = self.out.restart(drop)
        self.resent += written - sum(1 for position in dropped if position < written)
        self.sent_seq = 0
        self._open_window(self.window_bytes)
        return len(dropped)

    def end(self) -> int:
        """The session is over: drop everything; returns how many messages
        were never written at all (those were lost, the rest only unacknowledged)."""
        unwritten = self.unwritten
        self.out.clear()
        self.sent_seq = 0
        self._open_window(self.window_bytes)
        return unwritten
