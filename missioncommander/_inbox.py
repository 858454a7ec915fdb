"""Messages received and not yet taken by the application.

A received message is *taken* once its ``message`` callbacks have returned
(at once when nothing is subscribed). Until then it counts against its
inbox's bounds, and three rules follow from that:

- **Acknowledgements name what was taken**, never merely what arrived: a
  message the peer may forget has been processed, so a receiver that
  restarts with messages still waiting for their callbacks gets them again
  (at least once across restarts), and the handshake of a resumed session
  reports the same number.
- **Its bounds are the window it announces** (``window``): the peer keeps
  no more than them on the wire unacknowledged, and an ACK goes at once
  when half of them was taken.
- **Over its bounds an inbox stops reading** its connection (a peer
  without a window, or a server's bound across sessions): the peer's
  bytes wait in TCP, its unacknowledged messages fill its own queue limits
  and its ``send()`` waits or raises ``QueueFullError``; memory stays
  bounded however slow the callbacks are. Reading resumes once the backlog
  is down to half.

Threads: the loop thread receives and counts ``received_*``; the callback
thread that ran a message's callbacks counts ``taken_*`` and sets the
stream's ``taken_seq``. Each counter has one writer, so there is no lock on
the message path; the loop reads the callback side on a timer
(``ACK_DELAY``) while anything is untaken or unacknowledged, which is also
how it notices room to resume.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from ._events import Window
from ._loop import Cancellable, Driver
from ._streams import InboundStream

if TYPE_CHECKING:
    from ._link import Link

#: How long a taken message may wait for its acknowledgement, and how often
#: the loop looks for progress while callbacks are behind; together with
#: ``InboundStream.ACK_EVERY`` this bounds acks to a few per 64 messages.
ACK_DELAY = 0.02


class Budget:
    """Bytes waiting for callbacks across all of a server's sessions.

    One writer per counter, as in :class:`Inbox`: the loop thread adds, the
    server's callback queue (one per server, so one thread at a time) takes.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.received_bytes = 0
        self.taken_bytes = 0

    @property
    def waiting_bytes(self) -> int:
        return self.received_bytes - self.taken_bytes


class Inbox:
    """One session's received stream: its bounds, its acks and its pauses.

    Lives as long as the session, across connections; ``link`` is the
    connection messages arrive on now (None between connections).
    """

    def __init__(self, loop: Driver, max_count: int, max_bytes: int, budget: Budget | None = None) -> None:
        self.loop = loop
        self.stream = InboundStream()
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.budget = budget
        self.received_count = self.received_bytes = 0
        self.taken_count = self.taken_bytes = 0
        self.link: Link | None = None
        self._timer: Cancellable | None = None
        #: The session went on elsewhere (a cluster node let its client go):
        #: what waits for its callbacks is not handed to them.
        self.dropped = False
        #: A cluster node that took the session over from a node that died:
        #: the number of the last message that node may have handed to its
        #: callbacks already (those up to it arrive as ``RedeliveredMessage``:
        #: the session delivers only what follows the last one Redis records
        #: as taken); 0: none.
        self.redelivered_upto = 0
        #: This peer's releases (``taken`` calls) held back in arrival order
        #: behind one of its requests still being answered: its callbacks'
        #: consumer (``Callbacks``, or the asyncio API) puts them here and
        #: releases them, on its own queue.  One session's acks wait only
        #: for its own requests, never for another client's.  None until
        #: something is held (``hold_back``): an empty deque takes 760 bytes,
        #: more than a tenth of an idle session, and most sessions of a
        #: server with thousands never hold anything.
        self.held: deque[Any] | None = None
        #: Half the window past the last ACK, where the next one is due at
        #: once (``_progress``, ``taken``), and whether the callback side
        #: asked the loop for it since.
        self._due_from(0, 0)
        self._ack_asked = False

    def hold_back(self) -> deque[Any]:
        """``held``, made at its first use: where something is to be held."""
        held = self.held
        if held is None:
            held = self.held = deque()
        return held

    # -- figures (any thread; a moment's view) ---------------------------------

    @property
    def waiting(self) -> int:
        """Messages received and not yet taken."""
        return self.received_count - self.taken_count

    @property
    def waiting_bytes(self) -> int:
        return self.received_bytes - self.taken_bytes

    def _over(self) -> bool:
        # Over, not at: a peer whose queue is no bigger than this inbox (the
        # same settings both sides) can send nothing more once it is full,
        # but acknowledgements, and those are what its consumer may be
        # waiting for (an echo that awaits send() to the peer it reads from
        # hung for ever when this paused at the bound: the peer's acks of
        # the echoes sat unread behind the pause).
        # The counts spelled out, not their properties: this runs per read.
        budget = self.budget
        return (
            self.received_count - self.taken_count > self.max_count
            or self.received_bytes - self.taken_bytes > self.max_bytes
            or (budget is not None and budget.received_bytes - budget.taken_bytes > budget.max_bytes)
        )

    def _room(self) -> bool:
        """Down to half of every bound: time to read again."""
        budget = self.budget
        return (
            self.waiting <= self.max_count // 2
            and self.waiting_bytes <= self.max_bytes // 2
            and (budget is None or budget.waiting_bytes <= budget.max_bytes // 2)
        )

    def set_limits(self, max_count: int, max_bytes: int) -> None:
        """New bounds (a client's settings, read at each ``connect()``)."""
        self.max_count, self.max_bytes = max_count, max_bytes
        self._due_from(self.stream.acked_seq, self.taken_bytes)

    def window(self) -> Window:
        """The bounds to announce in a HELLO or WELCOME: the peer keeps what
        it has on the wire to us within them, so this inbox never has to
        stop reading (``_over`` stays the rule for a peer that predates
        windows, and for a server's bound across sessions)."""
        return Window(self.max_count, self.max_bytes)

    # -- loop thread -----------------------------------------------------------

    def attach(self, link: Link) -> None:
        """Messages arrive on ``link`` from now on."""
        self.link = link
        if self._over():
            self._pause()
        self._arm()

    def _pause(self) -> None:
        link = self.link
        if link is not None and link.transport is not None:
            link.transport.pause_reading()

    def detach(self, link: Link) -> None:
        if self.link is link:
            self.link = None

    def new_stream(self) -> None:
        """A new session starts numbering from 1. Callbacks of the old one
        still running mark their own (old) stream; the counts carry over,
        since those messages still take memory until they are taken."""
        self.stream = InboundStream()
        self._due_from(0, self.taken_bytes)

    def hold(self, size: int, count: int = 1) -> InboundStream:
        """Count ``count`` messages of ``size`` bytes in all handed to the
        callbacks (pausing the connection when over a bound); returns the
        stream to pass to :meth:`taken`."""
        self.received_count += count
        self.received_bytes += size
        if self.budget is not None:
            self.budget.received_bytes += size
        if self._over():
            self._pause()
        self._progress()
        return self.stream

    def take_now(self, size: int, count: int = 1) -> None:
        """``count`` messages nobody subscribed to (``size`` bytes in all):
        taken as they arrive."""
        self.received_count += count
        self.received_bytes += size
        self.taken_count += count
        self.taken_bytes += size
        stream = self.stream
        stream.taken_seq = stream.last_seq
        self._progress()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.link = None

    def _progress(self) -> None:
        stream = self.stream
        seq = stream.taken_seq
        # An ACK every ACK_EVERY messages taken, and at once when half the
        # window is (ack_due_*): a peer that filled its window waits for it.
        if (
            seq - stream.acked_seq >= stream.ACK_EVERY
            or seq >= self.ack_due_seq
            or self.taken_bytes >= self.ack_due_bytes
        ):
            self.send_ack()
        if self._timer is None:
            self._arm()

    def _due_from(self, seq: int, taken_bytes: int) -> None:
        """An ACK is due at once from half the window past ``seq`` taken
        (``taken_bytes`` then)."""
        self.ack_due_seq = seq + (self.max_count + 1) // 2
        self.ack_due_bytes = taken_bytes + (self.max_bytes + 1) // 2

    def _ack_now(self) -> None:
        self._ack_asked = False
        self.send_ack()

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(ACK_DELAY, self._tick)

    def _tick(self) -> None:
        self._timer = None
        link = self.link
        if link is None:
            return  # attach() looks again
        self.send_ack()
        transport = link.transport
        if transport is not None and transport.reading_paused and self._room():
            link.resume_reading()
        if (
            self.waiting > 0
            or (transport is not None and transport.reading_paused)
            or self.ackable() < self.stream.taken_seq
        ):
            self._arm()

    def ackable(self) -> int:
        """The last message an ACK may name: the last one taken (a cluster
        node's inbox: the last one Redis records as taken)."""
        return self.stream.taken_seq

    def send_ack(self) -> None:
        """Acknowledge what was taken, if anything new (loop thread)."""
        link = self.link
        stream = self.stream
        taken_bytes = self.taken_bytes  # before the number: never ahead of it
        taken = self.ackable()
        if link is None or not link.is_open or taken <= stream.acked_seq:
            return
        stream.acked_seq = taken
        self._due_from(taken, taken_bytes)
        link.write_ack(taken)

    # -- the callback thread -----------------------------------------------------

    def handing(self, seq: int) -> None:
        """Messages up to ``seq`` are about to reach their callbacks while one
        before them is still being answered (``concurrent_requests``), so not
        taken: a cluster node records it (``ClusterInbox``)."""

    def skipped(self, stream: InboundStream, seq: int, size: int) -> None:
        """Message ``seq`` was not handed to its callbacks (``dropped``): it
        leaves the bounds, but is not taken (nothing acknowledges it), so it
        is counted against a stream of its own that nothing reads (rare; it
        keeps ``taken``, which runs per message, free of an extra call)."""
        self.taken(InboundStream(), seq, size)

    def taken(self, stream: InboundStream, seq: int, size: int) -> None:
        """The callbacks of message ``seq`` of ``stream`` returned."""
        stream.taken_seq = seq
        self.taken_count += 1
        self.taken_bytes += size
        if self.budget is not None:
            self.budget.taken_bytes += size
        # Half the window taken (as in _progress): the loop sends the ACK now.
        due = seq >= self.ack_due_seq or self.taken_bytes >= self.ack_due_bytes
        if due and not self._ack_asked and stream is self.stream:
            self._ack_asked = True
            self.loop.call_soon(self._ack_now)
