"""The wire protocol, sans-IO: bytes in, events out; no sockets, no clocks.

Everything here is driven by its caller, which passes in the bytes it read and
the current time, and writes out the bytes these objects return.  That keeps
every rule of ``docs/PROTOCOL.md`` testable with bytes alone.

Frame layout (all integers big-endian)::

    +-----------+--------+--------------------------+
    | length u32| type u8| body (length - 1 bytes)  |
    +-----------+--------+--------------------------+

``length`` counts the type byte and the body.  MESSAGE bodies start with a
u64 sequence number followed by the UTF-8 JSON array ``[subject, payload]``;
ACK bodies are a u64; PING and PONG bodies are empty; every other body is a
UTF-8 JSON object.

Which frames each side may receive in each connection state:

=====================  =====================================================
state                  frames accepted (anything else is ``unexpected_frame``)
=====================  =====================================================
client, HANDSHAKE      CHALLENGE first; then WELCOME or ERROR
server, HANDSHAKE      HELLO (once), then nothing until the server answers
OPEN (both)            MESSAGE, ACK, PING, PONG, BYE, ERROR
OPEN (client only)     SHUTDOWN
CLOSED                 everything is ignored
=====================  =====================================================
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import itertools
import json
import secrets
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from json.scanner import make_scanner
from typing import Any

from ._errors import LocalProtocolError, QueueFullError, RemoteProtocolError
from ._message import FrozenDict, FrozenList, encode_json

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
#: Frames smaller than this are always accepted, whatever a peer advertises,
#: so that control frames can always get through.
MIN_MAX_FRAME_SIZE = 4096

#: What a peer may announce as its ``heartbeat_timeout``: a smaller one is
#: raised to the floor (PINGs to it go out at most every 0.1 s, never a flood
#: on the shared I/O thread), a larger one lowered to the ceiling.
MIN_PEER_HEARTBEAT_TIMEOUT = 0.3
MAX_PEER_HEARTBEAT_TIMEOUT = 86_400.0

_HEADER = struct.Struct("!IB")
_MSG_HEADER = struct.Struct("!IBQ")
_U64 = struct.Struct("!Q")
_U32 = struct.Struct("!I")
HEADER_SIZE = _HEADER.size
MESSAGE_OVERHEAD = _MSG_HEADER.size - 4  # what ``length`` counts besides the JSON
#: Message bodies smaller than this are copied into one buffer with their
#: neighbours when written; larger ones are written from where they are.
_JOIN_BELOW = 8192
#: A frame at least this long that arrives in pieces is collected piece by
#: piece and joined once (FrameDecoder).
_BIG_FRAME = 65536


class FrameType(enum.IntEnum):
    """The type byte of a frame."""

    HELLO = 1
    WELCOME = 2
    MESSAGE = 3
    ACK = 4
    PING = 5
    PONG = 6
    SHUTDOWN = 7
    BYE = 8
    ERROR = 9
    CHALLENGE = 10


_MESSAGE = int(FrameType.MESSAGE)  # a plain int: compared once per frame


class ErrorCode(enum.StrEnum):
    """Codes carried by ERROR frames (and by ``ProtocolError.code``)."""

    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNEXPECTED_FRAME = "unexpected_frame"
    SEQUENCE_GAP = "sequence_gap"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    VERSION_UNSUPPORTED = "version_unsupported"
    ID_IN_USE = "id_in_use"
    SERVER_FULL = "server_full"
    AUTH_FAILED = "auth_failed"
    RATE_LIMITED = "rate_limited"


#: Refusals after which a client must not retry by itself: retrying would get
#: the same answer, or (for ``id_in_use``) fight a live client for its id.
TERMINAL_CODES = frozenset(
    {ErrorCode.VERSION_UNSUPPORTED, ErrorCode.ID_IN_USE, ErrorCode.BAD_FRAME, ErrorCode.AUTH_FAILED}
)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class ConnState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


# --------------------------------------------------------------------------
# Events: what the peer said.


@dataclass(frozen=True, slots=True)
class Challenge:
    version: int
    nonce: str
    auth: bool


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    client_id: str
    session: str | None
    last_seq: int
    max_frame_size: int
    heartbeat_timeout: float
    cnonce: str | None = None
    proof: str | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    version: int
    session: str
    resumed: bool
    last_seq: int
    max_frame_size: int
    heartbeat_timeout: float
    proof: str | None = None


# The two events of the data path are not frozen: a frozen dataclass's
# __init__ costs an object.__setattr__ per field, on every message.
@dataclass(slots=True)
class MessageReceived:
    seq: int
    subject: str
    payload: FrozenDict
    #: The body as received (a view into the frame for a large one).
    encoded: bytes | memoryview


@dataclass(slots=True)
class AckReceived:
    seq: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    pass


@dataclass(frozen=True, slots=True)
class PongReceived:
    pass


@dataclass(frozen=True, slots=True)
class ShutdownReceived:
    reason: str


@dataclass(frozen=True, slots=True)
class ByeReceived:
    reason: str


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    code: str
    message: str
    retry: bool


Event = (
    Challenge
    | Hello
    | Welcome
    | MessageReceived
    | AckReceived
    | PingReceived
    | PongReceived
    | ShutdownReceived
    | ByeReceived
    | ErrorReceived
)


# --------------------------------------------------------------------------
# Encoding.


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_json_decoder = json.JSONDecoder(parse_constant=_reject_constant)
# Message payloads are handed to users read-only: decoding objects straight
# into FrozenDict spares a second walk over every payload.
_frozen_decoder = json.JSONDecoder(parse_constant=_reject_constant, object_hook=FrozenDict)
_scan_frozen = make_scanner(_frozen_decoder)  # type: ignore[arg-type]  # typeshed types it oddly


def decode_message_body(encoded: bytes | memoryview) -> tuple[str, FrozenDict]:
    """``[subject, payload]`` from a MESSAGE body, the payload frozen.

    Raises ``RemoteProtocolError`` when the body is not UTF-8 JSON of that shape.
    """
    try:
        text = str(encoded, "utf-8")
        obj: Any = None
        if text.find("[", 1) < 0:
            # No array inside the payload: the scanner builds it frozen in one pass.
            try:
                obj, end = _scan_frozen(text, 0)
            except StopIteration:
                obj = None  # leading whitespace, say: the full decoder below says why
            else:
                if end != len(text) and text[end:].strip():
                    obj = None
        if obj is None:
            obj = _json_decoder.decode(text)
            if type(obj) is list and len(obj) == 2:
                obj[1] = freeze_decoded(obj[1])
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"MESSAGE body is not UTF-8 JSON: {exc}") from None
    shape_ok = type(obj) is list and len(obj) == 2 and type(obj[1]) is FrozenDict
    if not shape_ok or type(obj[0]) is not str or not obj[0]:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "MESSAGE body must be [subject, payload object]")
    return obj[0], obj[1]


def freeze_decoded(value: Any) -> Any:
    """Freeze what ``json.loads`` produced: already plain JSON, no checks needed."""
    if type(value) is dict:
        return FrozenDict({k: freeze_decoded(v) for k, v in value.items()})
    if type(value) is list:
        return FrozenList([freeze_decoded(v) for v in value])
    return value


def encode_frame(ftype: FrameType, body: bytes = b"") -> bytes:
    """One complete frame."""
    return _HEADER.pack(len(body) + 1, ftype) + body


def encode_json_frame(ftype: FrameType, obj: dict[str, Any]) -> bytes:
    return encode_frame(ftype, encode_json(obj))


def message_header(seq: int, body_len: int) -> bytes:
    """The bytes that precede an encoded message body in a MESSAGE frame
    (the writers pack theirs in bulk: ``OutboundStream.frames_after``)."""
    return _MSG_HEADER.pack(body_len + MESSAGE_OVERHEAD, FrameType.MESSAGE, seq)


def encode_ack(seq: int) -> bytes:
    return encode_frame(FrameType.ACK, _U64.pack(seq))


PING_FRAME = encode_frame(FrameType.PING)
PONG_FRAME = encode_frame(FrameType.PONG)


# --------------------------------------------------------------------------
# Decoding.


class FrameDecoder:
    """Splits a byte stream into ``(type, body)`` frames.

    Bytes may arrive split at any boundary.  A frame whose length exceeds
    ``max_frame_size`` (or is zero) raises ``RemoteProtocolError`` before its
    body is buffered, so an announced huge length costs no memory.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        #: A large frame being collected: its type, the pieces of its body
        #: so far and how many bytes are still to come.  Joined once when
        #: complete, instead of growing a buffer read by read and copying
        #: the body out of it.
        self._big_type = 0
        self._big: list[bytes] | None = None
        self._big_missing = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) + (sum(map(len, self._big)) if self._big is not None else 0)

    def feed(self, data: bytes | memoryview) -> Iterator[tuple[int, bytes]]:
        """Add ``data`` and yield every frame now complete.

        ``data`` may be a view of a buffer that the caller reuses: whatever
        is kept (a partial frame) is copied before the iterator finishes.
        """
        view = data if isinstance(data, memoryview) else memoryview(data)
        if self._big is not None:
            take = min(self._big_missing, len(view))
            self._big.append(view[:take].tobytes())
            self._big_missing -= take
            if self._big_missing:
                return
            body = b"".join(self._big)
            self._big = None
            yield self._big_type, body
            view = view[take:]
        buf = self._buf
        if buf:
            buf += view
            src = memoryview(buf)
        else:
            # The usual case: nothing left over, so frames are cut straight
            # out of what arrived, one copy each.
            src = view
        pos = 0
        end = len(src)
        try:
            while end - pos >= 4:
                length = _U32.unpack_from(src, pos)[0]
                if length == 0:
                    raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame length 0 (a frame has at least a type byte)")
                if length > self.max_frame_size:
                    raise RemoteProtocolError(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame of {length} bytes exceeds the maximum of {self.max_frame_size}",
                    )
                stop = pos + 4 + length
                if stop > end:
                    if length >= _BIG_FRAME and end - pos >= HEADER_SIZE:
                        self._big_type = src[pos + 4]
                        self._big = [src[pos + HEADER_SIZE : end].tobytes()]
                        self._big_missing = stop - end
                        pos = end
                    break
                yield src[pos + 4], src[pos + HEADER_SIZE : stop].tobytes()
                pos = stop
        finally:
            if src.obj is buf:
                src.release()  # a bytearray cannot shrink while viewed
                if pos:
                    del buf[:pos]
            elif pos < end:
                buf += src[pos:]


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        obj = _json_decoder.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{what} body is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{what} body must be a JSON object")
    return obj


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, optional: bool = False) -> Any:
    if key not in obj:
        if optional:
            return None
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{what} lacks the field {key!r}")
    value = obj[key]
    if value is None and optional:
        return None
    # bool is an int subclass; a flag is never a number here and vice versa.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{what} field {key!r} has the wrong type")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _u64(body: bytes, what: str) -> int:
    if len(body) != 8:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{what} body must be 8 bytes")
    value: int = _U64.unpack(body)[0]
    return value


def _nonneg(value: int, what: str) -> int:
    if value < 0:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{what} must not be negative")
    return value


def _message_event(body: bytes | memoryview) -> MessageReceived:
    """The event of a MESSAGE frame's body; a small one is copied out (it may
    view the loop's read buffer), a large one (whole bytes) only viewed."""
    if len(body) < 8:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "MESSAGE body shorter than its sequence number")
    # A large body is not copied again for the part after the sequence
    # number: a view serves (Message.encode makes bytes of it if ever needed).
    encoded: bytes | memoryview = bytes(body[8:]) if len(body) < _BIG_FRAME else memoryview(body)[8:]
    subject, payload = decode_message_body(encoded)
    return MessageReceived(_U64.unpack_from(body)[0], subject, payload, encoded)


def parse_frame(ftype: int, body: bytes) -> Event:
    """Turn one frame into an event, validating its body strictly."""
    if ftype == FrameType.MESSAGE:
        return _message_event(body)
    if ftype == FrameType.ACK:
        return AckReceived(_u64(body, "ACK"))
    if ftype in (FrameType.PING, FrameType.PONG):
        if body:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "PING and PONG frames have no body")
        return PingReceived() if ftype == FrameType.PING else PongReceived()
    if ftype == FrameType.CHALLENGE:
        obj = _json_object(body, "CHALLENGE")
        nonce = _field(obj, "nonce", str, "CHALLENGE")
        if not 16 <= len(nonce) <= 256:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "CHALLENGE nonce must be 16 to 256 characters")
        return Challenge(
            version=_field(obj, "version", int, "CHALLENGE"), nonce=nonce, auth=_field(obj, "auth", bool, "CHALLENGE")
        )
    if ftype == FrameType.HELLO:
        obj = _json_object(body, "HELLO")
        client_id = _field(obj, "client_id", str, "HELLO")
        if not client_id:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "HELLO client_id must not be empty")
        return Hello(
            version=_field(obj, "version", int, "HELLO"),
            client_id=client_id,
            session=_field(obj, "session", str, "HELLO", optional=True),
            last_seq=_nonneg(_field(obj, "last_seq", int, "HELLO"), "HELLO last_seq"),
            max_frame_size=_field(obj, "max_frame_size", int, "HELLO"),
            heartbeat_timeout=float(_field(obj, "heartbeat_timeout", (int, float), "HELLO")),
            cnonce=_field(obj, "cnonce", str, "HELLO", optional=True),
            proof=_field(obj, "proof", str, "HELLO", optional=True),
        )
    if ftype == FrameType.WELCOME:
        obj = _json_object(body, "WELCOME")
        return Welcome(
            version=_field(obj, "version", int, "WELCOME"),
            session=_field(obj, "session", str, "WELCOME"),
            resumed=_field(obj, "resumed", bool, "WELCOME"),
            last_seq=_nonneg(_field(obj, "last_seq", int, "WELCOME"), "WELCOME last_seq"),
            max_frame_size=_field(obj, "max_frame_size", int, "WELCOME"),
            heartbeat_timeout=float(_field(obj, "heartbeat_timeout", (int, float), "WELCOME")),
            proof=_field(obj, "proof", str, "WELCOME", optional=True),
        )
    if ftype in (FrameType.SHUTDOWN, FrameType.BYE):
        name = FrameType(ftype).name
        obj = _json_object(body, name)
        reason = _field(obj, "reason", str, name)
        return ShutdownReceived(reason) if ftype == FrameType.SHUTDOWN else ByeReceived(reason)
    if ftype == FrameType.ERROR:
        obj = _json_object(body, "ERROR")
        return ErrorReceived(
            code=_field(obj, "code", str, "ERROR"),
            message=_field(obj, "message", str, "ERROR"),
            retry=bool(_field(obj, "retry", bool, "ERROR", optional=True)),
        )
    raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unknown frame type {ftype}")


# --------------------------------------------------------------------------
# The connection state machine.

_OPEN_ACCEPTS = {
    Role.CLIENT: (
        MessageReceived,
        AckReceived,
        PingReceived,
        PongReceived,
        ByeReceived,
        ErrorReceived,
        ShutdownReceived,
    ),
    Role.SERVER: (MessageReceived, AckReceived, PingReceived, PongReceived, ByeReceived, ErrorReceived),
}
_HANDSHAKE_ACCEPTS = {Role.CLIENT: (Challenge, Welcome, ErrorReceived), Role.SERVER: (Hello,)}


def frame_name(event: Event) -> str:
    """The wire name of the frame an event came from (``MESSAGE``, ``HELLO``...), for messages to people."""
    return type(event).__name__.removesuffix("Received").upper()


class Connection:
    """One side of one connection: handshake state, frame rules, liveness.

    ``receive_data`` returns the events in the bytes given, in order, and
    raises ``RemoteProtocolError`` on the first frame that breaks the rules;
    after that the connection is CLOSED and ignores further input.  The
    ``send_*`` methods return bytes to write and raise ``LocalProtocolError``
    when the frame is not allowed in the current state.
    """

    def __init__(self, role: Role, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, now: float = 0.0) -> None:
        self.role = role
        self.state = ConnState.HANDSHAKE
        self._decoder = FrameDecoder(max_frame_size)
        self._hello_seen = False
        self._final_sent = False
        self._challenge_sent = False
        #: The server's CHALLENGE, once received (client side).
        self.challenge: Challenge | None = None
        self.last_received = now
        self.last_sent = now
        #: What the peer announced in its HELLO/WELCOME.
        self.peer_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self.peer_heartbeat_timeout: float | None = None

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview, now: float) -> list[Event]:
        if self.state is ConnState.CLOSED:
            return []
        self.last_received = now
        is_open = self.state is ConnState.OPEN
        decoder = self._decoder
        size = len(data)
        if (
            is_open
            and HEADER_SIZE <= size < _BIG_FRAME
            and data[4] == _MESSAGE
            and _U32.unpack_from(data)[0] + 4 == size <= decoder.max_frame_size
            and not decoder.buffered
        ):
            # The usual request or reply: exactly one whole small MESSAGE,
            # read straight from what arrived (no frame iterator).
            try:
                return [_message_event(data[HEADER_SIZE:])]
            except RemoteProtocolError:
                self.state = ConnState.CLOSED
                raise
        events: list[Event] = []
        try:
            for ftype, body in decoder.feed(data):
                if ftype == _MESSAGE and is_open:
                    # The data path: a MESSAGE is always allowed while open.
                    events.append(_message_event(body))
                    continue
                event = parse_frame(ftype, body)
                self._check_allowed(event)
                is_open = self.state is ConnState.OPEN
                events.append(event)
                if isinstance(event, (ShutdownReceived, ByeReceived, ErrorReceived)):
                    # The peer closes after these; nothing after them counts.
                    self.state = ConnState.CLOSED
                    break
        except RemoteProtocolError:
            self.state = ConnState.CLOSED
            raise
        return events

    def _check_allowed(self, event: Event) -> None:
        if self.state is ConnState.OPEN:
            allowed: tuple[type, ...] = _OPEN_ACCEPTS[self.role]
        elif self.role is Role.SERVER and self._hello_seen:
            allowed = ()
        elif self.role is Role.CLIENT and self.challenge is None:
            allowed = (Challenge, ErrorReceived)  # the server speaks first
        elif self.role is Role.CLIENT:
            allowed = (Welcome, ErrorReceived)
        else:
            allowed = _HANDSHAKE_ACCEPTS[self.role]
        if not isinstance(event, allowed):
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_FRAME,
                f"a {frame_name(event)} frame is not allowed from the "
                f"{'server' if self.role is Role.CLIENT else 'client'} in state {self.state.value}",
            )
        if isinstance(event, Challenge):
            self.challenge = event
        elif isinstance(event, Hello):
            self._hello_seen = True
            self._peer_limits(event.max_frame_size, event.heartbeat_timeout)
        elif isinstance(event, Welcome):
            self._peer_limits(event.max_frame_size, event.heartbeat_timeout)
            self.state = ConnState.OPEN

    def _peer_limits(self, max_frame_size: int, heartbeat_timeout: float) -> None:
        if max_frame_size < MIN_MAX_FRAME_SIZE or not heartbeat_timeout > 0:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "max_frame_size or heartbeat_timeout out of range")
        self.peer_max_frame_size = max_frame_size
        clamped = min(max(heartbeat_timeout, MIN_PEER_HEARTBEAT_TIMEOUT), MAX_PEER_HEARTBEAT_TIMEOUT)
        self.peer_heartbeat_timeout = clamped

    # -- output --------------------------------------------------------------

    def _require(self, state: ConnState, role: Role | None, what: str) -> None:
        if self.state is not state or (role is not None and self.role is not role):
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_FRAME, f"cannot send {what} as {self.role.value} in state {self.state.value}"
            )

    def send_challenge(self, nonce: str, auth: bool) -> bytes:
        """The server's first frame: a fresh nonce, and whether it wants proof."""
        self._require(ConnState.HANDSHAKE, Role.SERVER, "CHALLENGE")
        if self._challenge_sent:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "CHALLENGE was sent already")
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
    ) -> bytes:
        self._require(ConnState.HANDSHAKE, Role.CLIENT, "HELLO")
        if self.challenge is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "cannot send HELLO before the server's CHALLENGE")
        self.last_sent = now
        hello: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "client_id": client_id,
            "session": session,
            "last_seq": last_seq,
            "max_frame_size": max_frame_size,
            "heartbeat_timeout": heartbeat_timeout,
        }
        if proof is not None:
            hello["cnonce"] = cnonce
            hello["proof"] = proof
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
    ) -> bytes:
        if not self._hello_seen:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "cannot send WELCOME before a HELLO")
        self._require(ConnState.HANDSHAKE, Role.SERVER, "WELCOME")
        self.state = ConnState.OPEN
        self.last_sent = now
        welcome: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "session": session,
            "resumed": resumed,
            "last_seq": last_seq,
            "max_frame_size": max_frame_size,
            "heartbeat_timeout": heartbeat_timeout,
        }
        if proof is not None:
            welcome["proof"] = proof
        return encode_json_frame(FrameType.WELCOME, welcome)

    def check_can_send(self, what: str = "MESSAGE") -> None:
        self._require(ConnState.OPEN, None, what)

    def send_ack(self, seq: int, now: float) -> bytes:
        self._require(ConnState.OPEN, None, "ACK")
        self.last_sent = now
        return encode_ack(seq)

    def send_ping(self, now: float) -> bytes:
        self._require(ConnState.OPEN, None, "PING")
        self.last_sent = now
        return PING_FRAME

    def send_pong(self, now: float) -> bytes:
        self._require(ConnState.OPEN, None, "PONG")
        self.last_sent = now
        return PONG_FRAME

    def send_shutdown(self, reason: str) -> bytes:
        self._require(ConnState.OPEN, Role.SERVER, "SHUTDOWN")
        self.state = ConnState.CLOSED
        self._final_sent = True
        return encode_json_frame(FrameType.SHUTDOWN, {"reason": reason})

    def send_bye(self, reason: str) -> bytes:
        self._require(ConnState.OPEN, None, "BYE")
        self.state = ConnState.CLOSED
        self._final_sent = True
        return encode_json_frame(FrameType.BYE, {"reason": reason})

    def send_error(self, code: str, message: str, retry: bool = False) -> bytes:
        """An ERROR frame; allowed in any state (also right after the peer broke
        the protocol) until a closing frame was sent, and closes."""
        if self._final_sent:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, "a closing frame was already sent")
        self._final_sent = True
        self.state = ConnState.CLOSED
        return encode_json_frame(FrameType.ERROR, {"code": str(code), "message": message, "retry": retry})

    def close(self) -> None:
        self.state = ConnState.CLOSED
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


# --------------------------------------------------------------------------
# Authentication: HMAC challenge-response over a shared secret.
#
# The server's CHALLENGE carries a fresh random nonce per connection; the
# client answers with its own nonce and an HMAC over both nonces and its id,
# so the secret never crosses the wire and a replayed HELLO (an old server
# nonce) fails.  The server answers with an HMAC of its own (another label),
# so a client with a token also knows it reached a server holding it.


def new_nonce() -> str:
    return secrets.token_hex(16)


def auth_proof(secret: str, side: str, server_nonce: str, client_nonce: str, client_id: str) -> str:
    """``side`` is ``client`` or ``server``: the two proofs differ."""
    message = "\0".join((f"missioncommander-{side}-v1", server_nonce, client_nonce, client_id)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def proof_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


# --------------------------------------------------------------------------
# Session streams: sequence numbers, acknowledgements, the resend buffer.


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

    def frames_after(self, seq: int) -> tuple[list[bytes], int]:
        """The MESSAGE frames of the messages numbered above ``seq``, ready
        to write, and the number of the last (``seq`` when there are none).

        Consecutive small frames are joined into one buffer: a burst then
        costs the writer a few chunks instead of two per message.  A large
        body stays a chunk of its own, not copied.
        """
        items = self._items
        if seq + 2 == self.next_seq and items:
            # A lone message (a request, a reply): no lists to build.
            body = items[-1]
            size = len(body)
            header = _MSG_HEADER.pack(size + MESSAGE_OVERHEAD, _MESSAGE, seq + 1)
            return ([header + body] if size < _JOIN_BELOW else [header, body]), seq + 1
        count = len(items)
        start = seq + 1 - (self.next_seq - count)
        if start >= count:
            return [], seq
        start = max(start, 0)
        pack = _MSG_HEADER.pack
        mtype = _MESSAGE
        first = self.next_seq - count + start
        bodies = list(itertools.islice(items, start, None))
        sizes = [len(body) + MESSAGE_OVERHEAD for body in bodies]
        if max(sizes) < _JOIN_BELOW + MESSAGE_OVERHEAD:
            # The usual case, all small: headers packed and interleaved
            # with the bodies in C loops, then one buffer.
            parts: list[bytes] = [b""] * (2 * len(bodies))
            parts[::2] = list(map(pack, sizes, itertools.repeat(mtype), range(first, first + len(bodies))))
            parts[1::2] = bodies
            return [b"".join(parts)], first + len(bodies) - 1
        chunks: list[bytes] = []
        small: list[bytes] = []
        n = first
        for body in bodies:
            size = len(body)
            if size < _JOIN_BELOW:
                small += (pack(size + MESSAGE_OVERHEAD, mtype, n), body)
            else:
                if small:
                    chunks.append(b"".join(small))
                    small = []
                chunks += (pack(size + MESSAGE_OVERHEAD, mtype, n), body)
            n += 1
        if small:
            chunks.append(b"".join(small))
        return chunks, n - 1

    def restart(self) -> None:
        """Renumber what is unacknowledged from 1, for a new session that
        replaces one the peer forgot (a server restart)."""
        self.next_seq = len(self._items) + 1

    def clear(self) -> list[bytes]:
        dropped = list(self._items)
        self._items.clear()
        self._bytes = 0
        self.next_seq = 1
        return dropped


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
