"""One side of one connection, sans-IO: bytes in, events out, bytes to write.

``Connection`` keeps the handshake's phase and applies the rules of
``_transitions`` to every frame either way; it knows nothing of sockets,
threads or clocks: its caller passes the time in (``now``) and writes the
bytes it gets back.  What it does not keep is the session (sequence numbers,
the resend buffer): that outlives connections, see ``_streams``.
"""

from __future__ import annotations

from typing import Any

from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    Challenge,
    ErrorCode,
    Event,
    Hello,
    Role,
    Welcome,
    Window,
    frame_name,
)
from ._events import MessageReceived as _MessageReceived
from ._frames import (
    BIG_FRAME,
    DEFAULT_MAX_FRAME_SIZE,
    HANDSHAKE_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MAX_PEER_HEARTBEAT_TIMEOUT,
    MESSAGE_TYPE,
    MIN_MAX_FRAME_SIZE,
    MIN_PEER_HEARTBEAT_TIMEOUT,
    MIN_PROTOCOL_VERSION,
    PING_FRAME,
    PONG_FRAME,
    PROTOCOL_VERSION,
    U32,
    FrameDecoder,
    FrameType,
    encode_ack,
    encode_json_frame,
    message_event,
    parse_frame,
)
from ._transitions import FIRST_PHASE, RECEIVE, SEND, STATE, Phase

_OPEN, _CLOSED = Phase.OPEN, Phase.CLOSED
# The fast paths below take a MESSAGE while OPEN without a table lookup:
# right only as long as the tables agree, which this checks at import.
if not all(RECEIVE[(role, _OPEN)].get(_MessageReceived) is _OPEN for role in Role):  # pragma: no cover
    raise ImportError("the MESSAGE fast path disagrees with the RECEIVE table")


_FRAME_TYPES = frozenset(FrameType)
#: How the first bytes of other protocols begin (an HTTP request's method).
_HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ", b"CONNECT ")


def _foreign_protocol(role: Role, data: bytes | memoryview, limit: int) -> str | None:
    """What a connection's first bytes, refused as frames, are instead,
    said so that whoever misconfigured the client can tell."""
    if role is Role.CLIENT:
        # A MissionCommander server speaks first, a CHALLENGE frame; other
        # servers that speak first (SSH, mail, FTP: a banner; an HTTP server
        # answering early) send bytes that are no frame: a length past any
        # handshake frame's, or a type no frame has.  A frame of a known
        # type that breaks a rule is the protocol's own error, said as such.
        # Shown as bytes, so nothing of them reaches a terminal unescaped.
        if _could_be_a_frame(data, limit):
            return None
        return f"the server does not speak MissionCommander's protocol: it began with {bytes(data[:48])!r}"
    head = bytes(data[:8])
    if head[:2] == b"\x16\x03":  # a TLS handshake record, any TLS version
        return (
            "the client began a TLS handshake, and this server has no TLS: "
            "give the server tls_cert and tls_key, or turn the client's tls off"
        )
    if head.startswith(_HTTP_METHODS):
        return "the client sent an HTTP request: this port speaks MissionCommander's protocol (docs/PROTOCOL.md)"
    if _could_be_a_frame(data, limit):
        return None
    # Another protocol's client (an SSH client, a telnet typed into, a port
    # scanner): what it began with, as escaped bytes, as a client says of a server.
    return f"the client does not speak MissionCommander's protocol: it began with {bytes(data[:48])!r}"


def _could_be_a_frame(data: bytes | memoryview, limit: int) -> bool:
    """Whether refused first bytes still look like a frame: a known type and
    a length within the handshake's limit (then the protocol's own rule
    broken is said, not "another protocol")."""
    return len(data) >= HEADER_SIZE and data[4] in _FRAME_TYPES and 0 < U32.unpack_from(data)[0] <= limit


class Connection:
    """One side of one connection: handshake phase, frame rules, liveness.

    ``receive_data`` returns the events in the bytes given, in order, and
    raises ``RemoteProtocolError`` on the first frame that breaks the rules;
    after that the connection is CLOSED and ignores further input.  The
    ``send_*`` methods return bytes to write and raise ``LocalProtocolError``
    when the frame is not allowed in the current phase.
    """

    def __init__(self, role: Role, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, now: float = 0.0) -> None:
        self.role = role
        self.phase = FIRST_PHASE[role]
        #: ``STATE[phase]``, kept beside it: the drivers read it per frame.
        self.state = STATE[self.phase]
        self._max_frame_size = max_frame_size
        # Until the handshake is over only its small frames may come: a peer
        # nobody let in yet must not make this side buffer a frame of up to
        # max_frame_size (16 MiB per connection, thousands of connections).
        self._decoder = FrameDecoder(min(max_frame_size, HANDSHAKE_MAX_FRAME_SIZE))
        self._final_sent = False
        self._challenge_sent = False
        #: The server's CHALLENGE, once received (client side).
        self.challenge: Challenge | None = None
        self.last_received = now
        self.last_sent = now
        #: What the peer announced in its HELLO/WELCOME.
        self.peer_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self.peer_heartbeat_timeout: float | None = None
        #: The protocol version of this connection: the lower of the two
        #: sides' (the client learns the server's from the CHALLENGE, the
        #: server the client's from the HELLO; WELCOME confirms it).
        self.version = PROTOCOL_VERSION

    def _enter(self, phase: Phase) -> None:
        if phase is _OPEN and self.phase is not _OPEN:
            self._decoder.max_frame_size = self._max_frame_size  # let in: the full limit
        self.phase = phase
        self.state = STATE[phase]

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview, now: float) -> list[Event]:
        """The events in ``data`` (any part of the byte stream), in order."""
        if self.phase is _CLOSED:
            return []
        self.last_received = now
        is_open = self.phase is _OPEN
        decoder = self._decoder
        size = len(data)
        if (
            is_open
            and HEADER_SIZE <= size < BIG_FRAME
            and data[4] == MESSAGE_TYPE
            and U32.unpack_from(data)[0] + 4 == size <= decoder.max_frame_size
            and not decoder.buffered
        ):
            # The usual request or reply: exactly one whole small MESSAGE,
            # read straight from what arrived (no frame iterator).
            try:
                return [message_event(data[HEADER_SIZE:])]
            except RemoteProtocolError:
                self._enter(_CLOSED)
                raise
        events: list[Event] = []
        try:
            for ftype, body in decoder.feed(data):
                if ftype == MESSAGE_TYPE and is_open:
                    # The data path: MESSAGE keeps an open connection open.
                    events.append(message_event(body))
                    continue
                event = parse_frame(ftype, body)
                self._received(event)
                events.append(event)
                if self.phase is _CLOSED:
                    break  # the peer closes after this; nothing after it counts
                is_open = self.phase is _OPEN
        except RemoteProtocolError as exc:
            # Refused before the HELLO (or the CHALLENGE): the connection's
            # very first bytes (in one read, as a peer's first write
            # arrives) may be another protocol's; the code stays, the words
            # say which.
            first = self.phase is FIRST_PHASE[self.role]
            self._enter(_CLOSED)
            foreign = _foreign_protocol(self.role, data, decoder.max_frame_size) if first else None
            if foreign is not None:
                raise RemoteProtocolError(exc.code, foreign) from None
            raise
        return events

    def _received(self, event: Event) -> None:
        after = RECEIVE[(self.role, self.phase)].get(type(event))
        if after is None:
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_FRAME,
                f"a {frame_name(event)} frame is not allowed from the "
                f"{'server' if self.role is Role.CLIENT else 'client'} in state {self.state.value}",
            )
        if isinstance(event, Challenge):
            self.challenge = event
            self.version = max(MIN_PROTOCOL_VERSION, min(PROTOCOL_VERSION, event.version))
        elif isinstance(event, (Hello, Welcome)):
            self._peer_limits(event.max_frame_size, event.heartbeat_timeout)
            # A version outside ours is refused (the server's admission, the
            # client's check of the WELCOME): until then it is only noted.
            self.version = event.version
        self._enter(after)

    def _peer_limits(self, max_frame_size: int, heartbeat_timeout: float) -> None:
        if max_frame_size < MIN_MAX_FRAME_SIZE or not heartbeat_timeout > 0:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "max_frame_size or heartbeat_timeout out of range")
        self.peer_max_frame_size = max_frame_size
        clamped = min(max(heartbeat_timeout, MIN_PEER_HEARTBEAT_TIMEOUT), MAX_PEER_HEARTBEAT_TIMEOUT)
        self.peer_heartbeat_timeout = clamped

    # -- output --------------------------------------------------------------

    def _send(self, ftype: FrameType) -> None:
        """Apply the SEND table to a frame about to go out."""
        after = SEND.get((self.role, self.phase), {}).get(ftype)
        if after is None:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_FRAME,
                f"cannot send {ftype.name} as {self.role.value} in state {self.state.value}",
            )
        if after is _CLOSED:
            self._final_sent = True
        self._enter(after)

    def send_challenge(self, nonce: str, auth: bool) -> bytes:
        """The server's first frame: a fresh nonce, and whether it wants proof."""
        if self._challenge_sent:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "CHALLENGE was sent already")
        self._send(FrameType.CHALLENGE)
        self._challenge_sent = True
        return encode_json_frame(FrameType.CHALLENGE, {"version": PROTOCOL_VERSION, "nonce": nonce, "auth": auth})

    def send_hello(
        self,
        client_id: str,
        session: str | None,
        last_seq: int,
        max_frame_size: int,
        heartbeat_timeout: float,
        now: float,
        cnonce: str | None = None,
        proof: str | None = None,
        window: Window | None = None,
    ) -> bytes:
        """The client's answer to the CHALLENGE: who it is, the session it
        resumes, and (``window``) how much the server may have on the wire to it."""
        if self.role is Role.CLIENT and self.phase is Phase.AWAIT_CHALLENGE:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "cannot send HELLO before the server's CHALLENGE")
        self._send(FrameType.HELLO)
        self.last_sent = now
        hello: dict[str, Any] = {
            "version": self.version,
            "client_id": client_id,
            "session": session,
            "last_seq": last_seq,
            "max_frame_size": max_frame_size,
            "heartbeat_timeout": heartbeat_timeout,
        }
        if proof is not None:
            hello["cnonce"] = cnonce
            hello["proof"] = proof
        if window is not None:
            hello["max_inbound"], hello["max_inbound_bytes"] = window.messages, window.bytes
        return encode_json_frame(FrameType.HELLO, hello)

    def send_welcome(
        self,
        session: str,
        resumed: bool,
        last_seq: int,
        max_frame_size: int,
        heartbeat_timeout: float,
        now: float,
        proof: str | None = None,
        window: Window | None = None,
    ) -> bytes:
        """The server accepts the HELLO: the connection is open."""
        if self.role is Role.SERVER and self.phase is Phase.AWAIT_HELLO:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "cannot send WELCOME before a HELLO")
        self._send(FrameType.WELCOME)
        self.last_sent = now
        welcome: dict[str, Any] = {
            "version": self.version,
            "session": session,
            "resumed": resumed,
            "last_seq": last_seq,
            "max_frame_size": max_frame_size,
            "heartbeat_timeout": heartbeat_timeout,
        }
        if proof is not None:
            welcome["proof"] = proof
        if window is not None:
            welcome["max_inbound"], welcome["max_inbound_bytes"] = window.messages, window.bytes
        return encode_json_frame(FrameType.WELCOME, welcome)

    def send_ack(self, seq: int, now: float) -> bytes:
        self._send(FrameType.ACK)
        self.last_sent = now
        return encode_ack(seq)

    def send_ping(self, now: float) -> bytes:
        self._send(FrameType.PING)
        self.last_sent = now
        return PING_FRAME

    def send_pong(self, now: float) -> bytes:
        self._send(FrameType.PONG)
        self.last_sent = now
        return PONG_FRAME

    def send_shutdown(self, reason: str) -> bytes:
        self._send(FrameType.SHUTDOWN)
        return encode_json_frame(FrameType.SHUTDOWN, {"reason": reason})

    def send_bye(self, reason: str) -> bytes:
        self._send(FrameType.BYE)
        return encode_json_frame(FrameType.BYE, {"reason": reason})

    def send_error(self, code: str, message: str, retry: bool = False, retry_after: float | None = None) -> bytes:
        """An ERROR frame; allowed in any phase (also right after the peer broke
        the protocol) until a closing frame was sent, and closes.
        ``retry_after``: with ``retry``, the seconds after which the cause
        is over at the latest, when known."""
        if self._final_sent:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "a closing frame was already sent")
        self._final_sent = True
        self._enter(_CLOSED)
        error: dict[str, Any] = {"code": str(code), "message": message, "retry": retry}
        if retry_after is not None:
            error["retry_after"] = round(max(0.0, retry_after), 3)
        return encode_json_frame(FrameType.ERROR, error)

    def close(self) -> None:
        """The connection is gone (the driver's socket closed): nothing more either way."""
        self._enter(_CLOSED)
        self._final_sent = True

    # -- liveness ------------------------------------------------------------

    def ping_interval(self, heartbeat_interval: float) -> float:
        """How often to ping: our own interval, but often enough that the
        peer's timeout (a third of it) never fires on a quiet healthy link."""
        if self.peer_heartbeat_timeout is None:
            return heartbeat_interval
        return min(heartbeat_interval, self.peer_heartbeat_timeout / 3)

    def heartbeat_due(
        self, now: float, heartbeat_interval: float, heartbeat_timeout: float
    ) -> tuple[str | None, float]:
        """What liveness needs now, and when to ask again.

        Returns ``("timeout", 0)`` when nothing has been received for
        ``heartbeat_timeout``, ``("ping", next)`` when a PING should be sent,
        else ``(None, next)``; ``next`` is the time of the next check.
        """
        if now - self.last_received >= heartbeat_timeout:
            return "timeout", 0.0
        interval = self.ping_interval(heartbeat_interval)
        action = None
        if now - self.last_sent >= interval:
            action = "ping"
            next_ping = now + interval
        else:
            next_ping = self.last_sent + interval
        return action, min(next_ping, self.last_received + heartbeat_timeout)
