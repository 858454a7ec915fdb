"""A protocol connection on a transport, with the timers both sides need.

``Link`` runs on the loop thread only.  It feeds bytes to the sans-IO
``Connection``, turns a ``RemoteProtocolError`` into an ERROR frame and a
close, keeps the heartbeat (PING when idle, close when the peer is silent
for ``heartbeat_timeout``: the rules are ``_liveness``, the timer is here).
What is received and acknowledged is the session's ``Inbox``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from ._connection import Connection
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import Event, MessageReceived, Role
from ._liveness import Act, Liveness
from ._loop import Cancellable, Driver, WriteTarget
from ._session import BATCH, BURST_GAP, SendSession
from ._transitions import ConnState

log = logging.getLogger("missioncommander")

_S = TypeVar("_S", bound=SendSession)


# -- the write path, one copy for Client and Server -------------------------------------
#
# Lock order: the driver's lock (a Client's or Server's ``_lock``), then a
# transport's ``lock``; never the other way, and no lock is held while a
# transport calls its owner.  A message is numbered and routed under the
# driver's lock; a direct write takes the transport's lock *before* the
# driver's is let go, so frames reach the socket in sequence order, and
# writes it after, so the driver's thread (acks, other sessions) does not
# wait for the syscall.


def route_locked(
    session: _S, driver: Driver, schedule_pump: Callable[[_S], None]
) -> tuple[WriteTarget, list[bytes]] | None:
    """Get a message just queued in ``session`` on its way (the driver's
    lock held): the one copy of the write policy.

    - No connection now: it goes out when the session resumes.
    - No room in the peer's window: it goes out when an ACK makes room
      (the driver's ACK handler writes what then fits).
    - A lone send (the previous one more than ``BURST_GAP`` ago) goes
      straight into the socket from the caller's thread: one thread
      hand-off fewer per request.  Returns the transport, its lock taken,
      and the chunks; the caller lets its own lock go and calls
      ``transport.send_and_unlock(chunks)``.
    - A burst is left to one pump on the driver's thread (``schedule_pump``),
      which writes it in a few syscalls.  On the driver's thread a burst's
      first ``BATCH`` messages are written one by one (into the
      transport's buffer, flushed at the end of the driver's turn: a short
      burst costs no pump), the rest is the pump's.  While the pump is
      pending, a burst of ``BATCH`` or more is written in one batch: from
      the caller's thread, or on the driver's thread into the transport's
      buffer (a coroutine that sends without awaiting anything that waits
      would otherwise end the driver's turn, and let the pump run, only
      once the send queue is full).
    """
    live = session.live
    if live is None:
        return None
    if session.pump_pending:
        if session.unwritten < BATCH or not live.direct_ok:
            return None
        if driver.in_loop():
            live.write_many(session.take_unsent())  # flushed at the end of the driver's turn
            return None
    else:
        now = driver.time()
        burst = now - session.last_send < BURST_GAP
        session.last_send = now
        if burst or not live.direct_ok:
            if driver.in_loop() and session.burst_run < BATCH:
                session.burst_run += 1
                live.write_many(session.take_unsent())  # flushed at the end of the driver's turn
                return None
            # The pump first: on the driver's thread it then runs before the
            # transport's flush, which writes what both gave it in one go.
            session.pump_pending = True
            schedule_pump(session)
            if driver.in_loop():
                live.write_many(session.take_unsent())
            return None
        session.burst_run = 0
    # session.take_unsent(), spelled out: this runs once per message sent.
    chunks, session.sent_seq, size = session.out.frames_within(session.sent_seq, session.limit_seq, session.room_bytes)
    session.room_bytes -= size
    if not chunks:
        return None  # the peer's window is full: an ACK writes it
    live.lock.acquire()
    return live, chunks


class Link:
    """Base of the client's and the server's per-connection objects."""

    def __init__(
        self, loop: Driver, role: Role, max_frame_size: int, heartbeat_interval: float, heartbeat_timeout: float
    ) -> None:
        self.loop = loop
        self.proto = Connection(role, max_frame_size, loop.time())
        self.transport: WriteTarget | None = None
        self.liveness = Liveness(heartbeat_interval, heartbeat_timeout)
        self._hb_timer: Cancellable | None = None
        #: Where received events go: ``handle_event``, or a subclass's
        #: shorter way once its handshake is done (a call fewer per message).
        self.on_event: Callable[[Event], None] = self.handle_event
        #: Where a run of received messages goes, all that one read brought
        #: (``on_event`` never sees a MESSAGE): the subclass's owner's.
        self.on_messages: Callable[[list[MessageReceived]], None]

    # -- subclass hooks --------------------------------------------------------

    def handle_event(self, event: Event) -> None:
        raise NotImplementedError

    def connection_lost(self, reason: str, exc: BaseException | None) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def not_reading(self) -> None:
        """The peer is cut off for not reading (a server counts these)."""

    # -- input ---------------------------------------------------------------

    def data_received(self, data: memoryview) -> None:
        try:
            events = self.proto.receive_data(data, self.loop.time())
            if len(events) == 1:  # the usual request or reply
                if type(events[0]) is MessageReceived:
                    self.on_messages(events)  # type: ignore[arg-type]  # checked just above
                else:
                    self.on_event(events[0])
                return
            # Messages go on in runs: one hand-over to the callbacks for all
            # that arrived together, not one per message.
            run: list[MessageReceived] = []
            for event in events:
                if type(event) is MessageReceived:
                    run.append(event)
                    continue
                if run:
                    self.on_messages(run)
                    run = []
                    if self.transport is None or self.transport.closed:
                        return
                self.on_event(event)
                if self.transport is None or self.transport.closed:
                    return
            if run:
                self.on_messages(run)
        except RemoteProtocolError as exc:
            self.protocol_error(exc)

    def protocol_error(self, exc: RemoteProtocolError) -> None:
        """The peer broke the protocol: tell it why, then close."""
        reason = f"protocol error ({exc.code}): {exc.message}"
        transport = self.transport
        if transport is None or transport.closed:
            return
        log.warning("%s: %s", self.describe(), reason)
        try:
            transport.write(self.proto.send_error(exc.code, exc.message, retry=False))
        except LocalProtocolError:
            pass  # we already said goodbye; just close
        transport.close_after_flush(reason=reason)

    # -- output --------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.proto.state is ConnState.OPEN and self.transport is not None and not self.transport.closed

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def send_final(self, frame: bytes, reason: str, peer_first: bool = False) -> None:
        """Write a closing frame (BYE, SHUTDOWN, ERROR) and close after it;
        with ``peer_first``, once the peer has closed (at most a second later)."""
        if self.transport is not None:
            self.transport.write(frame)
            self.transport.close_after_flush(reason=reason, peer_first=peer_first)

    # -- heartbeat -------------------------------------------------------------

    def start_heartbeat(self) -> None:
        writes = self.transport.writes if self.transport is not None else 0
        self._schedule_heartbeat(self.liveness.start(self.proto, self.loop.time(), writes))

    def _schedule_heartbeat(self, when: float) -> None:
        if self._hb_timer is not None:
            self._hb_timer.cancel()
        self._hb_timer = self.loop.call_later(max(0.0, when - self.loop.time()), self._heartbeat)

    def _heartbeat(self) -> None:
        self._hb_timer = None
        if not self.is_open:
            return
        now = self.loop.time()
        transport = self.transport
        assert transport is not None
        verdict = self.liveness.check(
            self.proto,
            now,
            reading_paused=transport.reading_paused,
            writes=transport.writes,
            out_bytes=transport.out_bytes,
            last_progress=transport.last_progress,
        )
        act = verdict.act
        if act is Act.NOT_READING:
            self.not_reading()
            log.warning(
                "%s is not reading: %d bytes unsent for %.0f s; closing its connection",
                self.describe(),
                transport.out_bytes,
                now - transport.last_progress,
            )
        if act is Act.SILENT or act is Act.NOT_READING:
            transport.abort(verdict.reason)
            return
        if act is Act.PING:
            self.write(self.proto.send_ping(now))
            self.liveness.pinged(transport.writes)
        self._schedule_heartbeat(verdict.next_check)

    def answer_ping(self) -> None:
        """PONG, unless this side already said goodbye (a PING that crossed
        our BYE, SHUTDOWN or ERROR on the wire): then there is nothing to say."""
        if self.is_open:
            self.write(self.proto.send_pong(self.loop.time()))

    # -- flow control -----------------------------------------------------------

    def write_ack(self, seq: int) -> None:
        self.write(self.proto.send_ack(seq, self.loop.time()))

    def resume_reading(self) -> None:
        """Read again after the inbox paused us; the silence meanwhile was ours."""
        if self.transport is not None:
            self.proto.last_received = self.loop.time()
            self.transport.resume_reading()

    def stop_timers(self) -> None:
        if self._hb_timer is not None:
            self._hb_timer.cancel()
        self._hb_timer = None
