"""Session streams: sequence numbers, acknowledgements, the resend buffer.

A session numbers the messages each side sends from 1; the sender keeps
every message until the peer acknowledges it (``OutboundStream``), the
receiver drops what it has seen already (``InboundStream``), so a resumed
session delivers each message exactly once.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator

from ._errors import MessageTooLarge, QueueFullError, RemoteProtocolError
from ._events import ErrorCode
from ._frames import JOIN_BELOW, MESSAGE_OVERHEAD, MESSAGE_TYPE, MSG_HEADER, message_frames


def refuse_unqueueable(body: bytes, max_bytes: int) -> None:
    """``MessageTooLarge`` for a body bigger than a whole send queue
    (``max_queued_bytes``): it could never be queued, so waiting for room,
    calling the queue full or ending a broadcast's clients as too slow
    would each be wrong.  Called where a message did not fit."""
    if len(body) > max_bytes:
        raise MessageTooLarge(
            f"message of {len(body)} bytes is larger than a whole send queue (max_queued_bytes, {max_bytes}):"
            " raise max_queued_bytes to send it"
        )


#: A window that bounds nothing (a peer that announces none).
UNBOUNDED = 1 << 62


class OutboundStream:
    """What one side sent in a session and the peer has not acknowledged.

    Bounded by ``max_items`` messages and ``max_bytes`` bytes of encoded
    bodies; ``push`` raises ``QueueFullError`` rather than grow past them.
    Bodies are kept in order and numbered by position (the first is
    ``next_seq - len(self)``): per message a deque slot, no tuple.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.next_seq = 1
        self._items: deque[bytes] = deque()
        self._bytes = 0
        #: Every message and byte ever queued here (statistics; never reset).
        self.offered = 0
        self.offered_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def push(self, body: bytes) -> int:
        """Queue an encoded message body; return its sequence number."""
        if not self.offer(body):
            raise QueueFullError(
                f"send queue full ({len(self._items)} of {self.max_items} messages,"
                f" {self._bytes} + {len(body)} of {self.max_bytes} bytes)"
            )
        return self.next_seq - 1

    def offer(self, body: bytes) -> bool:
        """Queue ``body`` if there is room (True), else change nothing
        (False): ``push`` for the send paths, one call per message."""
        items = self._items
        size = len(body)
        if len(items) >= self.max_items or self._bytes + size > self.max_bytes:
            return False
        items.append(body)
        self._bytes += size
        self.next_seq += 1
        self.offered += 1
        self.offered_bytes += size
        return True

    def ack(self, seq: int) -> int:
        """Drop everything up to and including ``seq``; return how many.

        An ack for a number never sent is the peer's error.
        """
        if seq >= self.next_seq:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"ack for {seq}, but only {self.next_seq - 1} were sent")
        items = self._items
        count = seq - (self.next_seq - len(items)) + 1
        if count <= 0:
            return 0
        popleft = items.popleft
        dropped = 0
        for _ in range(count):
            dropped += len(popleft())
        self._bytes -= dropped
        return count

    def _start(self, seq: int) -> int:
        """The index of the first message numbered above ``seq``."""
        return max(seq + 1 - (self.next_seq - len(self._items)), 0)

    def after(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """The unacknowledged messages numbered above ``seq``, in order."""
        start = self._start(seq)
        first = self.next_seq - len(self._items)
        return enumerate(itertools.islice(self._items, start, None), first + start)

    def frames_within(self, seq: int, limit: int, room_bytes: int) -> tuple[list[bytes], int, int]:
        """The MESSAGE frames of the messages numbered above ``seq``, ready
        to write as ``message_frames`` groups them; only those numbered up
        to ``limit`` and of at most ``room_bytes`` bytes of bodies (the
        peer's window).  Returns them, the number of the last (``seq`` when
        there are none) and their bodies' bytes.
        With nothing on the wire (``seq`` below everything kept) the first
        goes whatever its size: a message bigger than the window is not held
        for ever."""
        items = self._items
        if seq + 2 == self.next_seq and items:
            # A lone message (a request, a reply): message_frames' rule for
            # one body, spelled out, as this runs once per message sent.
            body = items[-1]
            size = len(body)
            if (size > room_bytes or seq >= limit) and len(items) > 1:
                return [], seq, 0
            header = MSG_HEADER.pack(size + MESSAGE_OVERHEAD, MESSAGE_TYPE, seq + 1)
            return ([header + body] if size < JOIN_BELOW else [header, body]), seq + 1, size
        count = len(items)
        start = seq + 1 - (self.next_seq - count)
        if start >= count:
            return [], seq, 0
        start = max(start, 0)
        bodies = list(itertools.islice(items, start, None))
        size = self._bytes if start == 0 else sum(map(len, bodies))
        if len(bodies) > limit - seq or size > room_bytes:
            bodies, size = _within(bodies, limit - seq, room_bytes, start == 0)
            if not bodies:
                return [], seq, 0
        first = self.next_seq - count + start
        return message_frames(first, bodies), first + len(bodies) - 1, size

    def restart(self, drop: Callable[[bytes], bool] | None = None) -> list[int]:
        """Renumber what is unacknowledged from 1, for a new session that
        replaces one the peer forgot (a server restart), leaving out the
        bodies ``drop`` picks; returns their positions among the
        unacknowledged (0 is the oldest)."""
        dropped: list[int] = []
        if drop is not None:
            kept: deque[bytes] = deque()
            for position, body in enumerate(self._items):
                if drop(body):
                    dropped.append(position)
                    self._bytes -= len(body)
                else:
                    kept.append(body)
            self._items = kept
        self.next_seq = len(self._items) + 1
        return dropped

    def clear(self) -> list[bytes]:
        dropped = list(self._items)
        self._items.clear()
        self._bytes = 0
        self.next_seq = 1
        return dropped


def _within(bodies: list[bytes], room: int, room_bytes: int, first_goes: bool) -> tuple[list[bytes], int]:
    """The longest head of ``bodies`` of at most ``room`` messages and
    ``room_bytes`` bytes (the first whatever its size when ``first_goes``),
    and its bytes."""
    total = 0
    for count, body in enumerate(bodies):
        if count >= room or total + len(body) > room_bytes:
            if count == 0 and first_goes:
                return bodies[:1], len(body)
            return bodies[:count], total
        total += len(body)
    return bodies, total


class InboundStream:
    """What one side received in a session: duplicate detection, and the
    numbers its acknowledgements and resume handshake report.

    ``last_seq`` is the last message received, ``taken_seq`` the last one the
    application took (its callbacks returned; see ``_inbox``), ``acked_seq``
    the last one acknowledged. Acks and handshakes report ``taken_seq``; the
    peer resends what follows, and what was received already is dropped here
    as a duplicate (it is still on its way to the application).
    """

    #: Acknowledge at the latest after this many messages (or the timer).
    ACK_EVERY = 64

    __slots__ = ("acked_seq", "last_seq", "taken_seq")

    def __init__(self) -> None:
        self.last_seq = 0
        self.taken_seq = 0
        self.acked_seq = 0

    def accept(self, seq: int) -> bool:
        """True when ``seq`` is the next message, False for a duplicate."""
        if seq == self.last_seq + 1:
            self.last_seq = seq
            return True
        if seq <= self.last_seq:
            return False
        raise RemoteProtocolError(ErrorCode.SEQUENCE_GAP, f"expected message {self.last_seq + 1}, got {seq}")

    @property
    def unacked(self) -> int:
        """Received and not yet acknowledged."""
        return self.last_seq - self.acked_seq
