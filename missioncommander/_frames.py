"""The frame codec: bytes to ``(type, body)`` frames to events, and back.

Frame layout (all integers big-endian)::

    +-----------+--------+--------------------------+
    | length u32| type u8| body (length - 1 bytes)  |
    +-----------+--------+--------------------------+

``length`` counts the type byte and the body.  MESSAGE bodies start with a
u64 sequence number followed by the UTF-8 JSON array ``[subject, payload]``;
ACK bodies are a u64; PING and PONG bodies are empty; every other body is a
UTF-8 JSON object.
"""

from __future__ import annotations

import enum
import itertools
import json
import math
import re
import struct
from collections.abc import Iterator
from json.scanner import make_scanner
from typing import Any

from ._errors import RemoteProtocolError
from ._events import (
    AckReceived,
    ByeReceived,
    Challenge,
    ErrorCode,
    ErrorReceived,
    Event,
    Hello,
    MessageReceived,
    PingReceived,
    PongReceived,
    ShutdownReceived,
    Welcome,
    Window,
)
from ._message import FrozenDict, FrozenList, encode_json

#: The version this side speaks best.  Version 2 added request/reply
#: (a third element in a MESSAGE body); a side still speaks every version
#: from MIN_PROTOCOL_VERSION up, and a connection runs the lower of the two
#: sides' (the client reads the server's from the CHALLENGE).
PROTOCOL_VERSION = 2
MIN_PROTOCOL_VERSION = 1
#: The first version with request/reply.
REQUEST_VERSION = 2
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
#: Frames smaller than this are always accepted, whatever a peer advertises,
#: so that control frames can always get through.
MIN_MAX_FRAME_SIZE = 4096

#: The largest frame before the handshake is over (CHALLENGE, HELLO,
#: WELCOME, ERROR: a HELLO with the longest client id, escaped, is under
#: 8 KiB): more from a peer not yet let in is refused (``frame_too_large``).
HANDSHAKE_MAX_FRAME_SIZE = 16 * 1024
#: The longest client id, in characters: an id names a session in logs,
#: mcctl's tables and a cluster's Redis keys, and comes from the peer.
MAX_CLIENT_ID = 1024
#: C0 and C1 control characters and DEL: an id must not write terminal
#: escapes or line breaks into a log, a table or an event line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: What ``peer_text`` escapes: those, and the bidirectional formatting
#: characters, invisible yet reordering the rest of a line as a terminal
#: shows it (a reason could make a log line read as something else).
_PEER_TEXT_ESCAPED = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

#: What a peer may announce as its ``heartbeat_timeout``: a smaller one is
#: raised to the floor (PINGs to it go out at most every 0.1 s, never a flood
#: on the shared I/O thread), a larger one lowered to the ceiling.
MIN_PEER_HEARTBEAT_TIMEOUT = 0.3
MAX_PEER_HEARTBEAT_TIMEOUT = 86_400.0

_HEADER = struct.Struct("!IB")
MSG_HEADER = struct.Struct("!IBQ")
_U64 = struct.Struct("!Q")
U32 = struct.Struct("!I")
HEADER_SIZE = _HEADER.size
MESSAGE_OVERHEAD = MSG_HEADER.size - 4  # what ``length`` counts besides the JSON
#: Message bodies smaller than this are copied into one buffer with their
#: neighbours when written; larger ones are written from where they are.
JOIN_BELOW = 8192
#: A frame at least this long that arrives in pieces is collected piece by
#: piece and joined once (FrameDecoder).
BIG_FRAME = 65536


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


MESSAGE_TYPE = int(FrameType.MESSAGE)  # a plain int: compared once per frame


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # JSON allows 1e400; Python would read it as infinity, which the
    # application could neither send on (Message refuses it) nor hand to
    # anything that writes JSON. Called for numbers with a fraction or an
    # exponent only, so integers and strings keep the C fast path.
    value = float(text)
    if value - value:  # inf - inf is NaN; a finite number gives 0.0
        raise ValueError(f"{text:.40} is beyond the range of a double")
    return value


_json_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
# Message payloads are handed to users read-only: decoding objects straight
# into FrozenDict spares a second walk over every payload.
_frozen_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float, object_hook=FrozenDict)
_scan_frozen = make_scanner(_frozen_decoder)  # type: ignore[arg-type]  # typeshed types it oddly


#: Request ids stay below this: exact in any JSON reader's double, and a
#: peer cannot hand a server a 4,000-digit number to carry around.
MAX_REQUEST_ID = 2**53


def _checked_meta(meta: Any) -> FrozenDict:
    """A MESSAGE body's third element: ``{"request": id}`` or ``{"reply":
    id}``, a reply perhaps with ``"error": {"code", "type", "message"}``."""
    if type(meta) is not FrozenDict:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "a MESSAGE body's third element must be an object")
    if len(meta) == 1:
        # Every request and every reply but an error: one key, checked here
        # without the general walk below (this runs twice per round trip).
        ((key, value),) = meta.items()
        if key in ("request", "reply") and type(value) is int and 1 <= value < MAX_REQUEST_ID:
            return meta
    ids = [meta.get(key) for key in ("request", "reply") if key in meta]
    if len(ids) != 1 or type(ids[0]) is not int or not 1 <= ids[0] < MAX_REQUEST_ID:
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, "MESSAGE meta must hold one of request or reply, a positive integer below 2**53"
        )
    error = meta.get("error")
    if error is not None:
        if "reply" not in meta or type(error) is not FrozenDict:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "MESSAGE meta error belongs to a reply, as an object")
        for key in ("code", "type", "message"):
            if type(error.get(key)) is not str:
                raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"MESSAGE meta error needs a string {key!r}")
    return meta


def with_meta(body: bytes, meta: dict[str, Any]) -> bytes:
    """An encoded ``[subject, payload]`` body with ``meta`` as its third element."""
    return body[:-1] + b"," + encode_json(meta) + b"]"


#: How a one-key meta begins, by key (``with_id``).
_META_PREFIX = {"request": b',{"request":', "reply": b',{"reply":'}


def meta_suffix(key: str, value: int) -> bytes:
    """How ``with_id`` ends a body: ``,{"request":5}]`` (no encoder call:
    every request and reply carries one)."""
    return b"%s%d}]" % (_META_PREFIX[key], value)


def with_id(body: bytes, key: str, value: int) -> bytes:
    """``with_meta(body, {key: value})`` for the one-key meta of a request
    (``request``) or a reply (``reply``), as compact JSON."""
    return b"%s%s%d}]" % (body[:-1], _META_PREFIX[key], value)


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
    (the writers pack theirs in bulk: ``message_frames``)."""
    return MSG_HEADER.pack(body_len + MESSAGE_OVERHEAD, FrameType.MESSAGE, seq)


def message_frames(first: int, bodies: list[bytes]) -> list[bytes]:
    """The MESSAGE frames of encoded ``bodies`` numbered from ``first``, as
    chunks to write: consecutive small frames joined into one buffer (a
    burst then costs the writer a few chunks instead of two per message), a
    large body a chunk of its own, not copied."""
    pack = MSG_HEADER.pack
    mtype = MESSAGE_TYPE
    if len(bodies) == 1:
        body = bodies[0]
        size = len(body)
        header = pack(size + MESSAGE_OVERHEAD, mtype, first)
        return [header + body] if size < JOIN_BELOW else [header, body]
    sizes = [len(body) + MESSAGE_OVERHEAD for body in bodies]
    if max(sizes) < JOIN_BELOW + MESSAGE_OVERHEAD:
        # The usual case, all small: headers packed and interleaved with
        # the bodies in C loops, then one buffer.
        parts: list[bytes] = [b""] * (2 * len(bodies))
        parts[::2] = list(map(pack, sizes, itertools.repeat(mtype), range(first, first + len(bodies))))
        parts[1::2] = bodies
        return [b"".join(parts)]
    chunks: list[bytes] = []
    small: list[bytes] = []
    for n, body in enumerate(bodies, first):
        size = len(body)
        if size < JOIN_BELOW:
            small += (pack(size + MESSAGE_OVERHEAD, mtype, n), body)
        else:
            if small:
                chunks.append(b"".join(small))
                small = []
            chunks += (pack(size + MESSAGE_OVERHEAD, mtype, n), body)
    if small:
        chunks.append(b"".join(small))
    return chunks


def encode_ack(seq: int) -> bytes:
    return encode_frame(FrameType.ACK, _U64.pack(seq))


PING_FRAME = encode_frame(FrameType.PING)
PONG_FRAME = encode_frame(FrameType.PONG)


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
                length = U32.unpack_from(src, pos)[0]
                if length == 0:
                    raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame length 0 (a frame has at least a type byte)")
                if length > self.max_frame_size:
                    raise RemoteProtocolError(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame of {length} bytes exceeds the maximum of {self.max_frame_size}",
                    )
                stop = pos + 4 + length
                if stop > end:
                    if length >= BIG_FRAME and end - pos >= HEADER_SIZE:
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


def _window(obj: dict[str, Any], what: str) -> Window | None:
    """The optional window of a HELLO or WELCOME: both fields or neither
    (a peer that predates windows sends neither), each at least 1."""
    messages = _field(obj, "max_inbound", int, what, optional=True)
    size = _field(obj, "max_inbound_bytes", int, what, optional=True)
    if messages is None and size is None:
        return None
    if messages is None or size is None or messages < 1 or size < 1:
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"{what} fields 'max_inbound' and 'max_inbound_bytes' go together, each at least 1"
        )
    return Window(messages, size)


def _nonneg(value: int, what: str) -> int:
    if value < 0:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{what} must not be negative")
    return value


def message_event(body: bytes | memoryview) -> MessageReceived:
    """The event of a MESSAGE frame's body: its sequence number, then
    ``[subject, payload]`` or ``[subject, payload, meta]`` (request/reply,
    protocol 2) as UTF-8 JSON, decoded frozen.  A small body is copied out
    (it may view the loop's read buffer), a large one (whole bytes) only
    viewed.

    Raises ``RemoteProtocolError`` when the body is not of that shape.
    """
    if len(body) < 8:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "MESSAGE body shorter than its sequence number")
    # A large body is not copied again for the part after the sequence
    # number: a view serves (Message.encode makes bytes of it if ever needed).
    # The decoding is spelled out here, not called: this runs per message.
    encoded: bytes | memoryview = bytes(body[8:]) if len(body) < BIG_FRAME else memoryview(body)[8:]
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
            if type(obj) is list and 2 <= len(obj) <= 3:
                obj[1:] = [freeze_decoded(item) for item in obj[1:]]
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"MESSAGE body is not UTF-8 JSON: {exc}") from None
    if type(obj) is list and 2 <= len(obj) <= 3 and type(obj[1]) is FrozenDict and type(obj[0]) is str and obj[0]:
        return MessageReceived(
            _U64.unpack_from(body)[0], obj[0], obj[1], encoded, None if len(obj) == 2 else _checked_meta(obj[2])
        )
    raise RemoteProtocolError(ErrorCode.BAD_FRAME, "MESSAGE body must be [subject, payload object]")


def peer_text(text: str) -> str:
    """A reason or message the peer wrote for people, with its control
    characters written as escapes (``\\x1b``, ``\\n``, ``\\u202e``): it
    goes into log lines, ``last_close_reason`` and exceptions, never as
    escape sequences, line breaks or reordering of its own."""
    if _PEER_TEXT_ESCAPED.search(text) is None:
        return text
    return _PEER_TEXT_ESCAPED.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def client_id_problem(client_id: str) -> str | None:
    """Why ``client_id`` cannot name a client, or None: the one rule for a
    client's setting and for the id in a HELLO a server reads."""
    if not client_id.strip():
        return "must not be empty"
    if _CONTROL.search(client_id):
        return "must not contain control characters"
    if len(client_id) > MAX_CLIENT_ID:
        return f"must be at most {MAX_CLIENT_ID} characters, not {len(client_id)}"
    if client_id == "*":
        return "'*' is reserved: it means every client (server.send('*', ...) sends to all)"
    return None


def parse_frame(ftype: int, body: bytes) -> Event:
    """Turn one frame into an event, validating its body strictly."""
    if ftype == FrameType.MESSAGE:
        return message_event(body)
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
        problem = client_id_problem(client_id)
        if problem is not None:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"HELLO client_id {problem}")
        return Hello(
            version=_field(obj, "version", int, "HELLO"),
            client_id=client_id,
            session=_field(obj, "session", str, "HELLO", optional=True),
            last_seq=_nonneg(_field(obj, "last_seq", int, "HELLO"), "HELLO last_seq"),
            max_frame_size=_field(obj, "max_frame_size", int, "HELLO"),
            heartbeat_timeout=float(_field(obj, "heartbeat_timeout", (int, float), "HELLO")),
            cnonce=_field(obj, "cnonce", str, "HELLO", optional=True),
            proof=_field(obj, "proof", str, "HELLO", optional=True),
            window=_window(obj, "HELLO"),
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
            window=_window(obj, "WELCOME"),
        )
    if ftype in (FrameType.SHUTDOWN, FrameType.BYE):
        name = FrameType(ftype).name
        obj = _json_object(body, name)
        reason = peer_text(_field(obj, "reason", str, name))
        return ShutdownReceived(reason) if ftype == FrameType.SHUTDOWN else ByeReceived(reason)
    if ftype == FrameType.ERROR:
        obj = _json_object(body, "ERROR")
        retry_after = _field(obj, "retry_after", (int, float), "ERROR", optional=True)
        if retry_after is not None and not 0 <= retry_after < math.inf:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "ERROR field 'retry_after' must be a time in seconds")
        return ErrorReceived(
            code=peer_text(_field(obj, "code", str, "ERROR")),
            message=peer_text(_field(obj, "message", str, "ERROR")),
            retry=bool(_field(obj, "retry", bool, "ERROR", optional=True)),
            retry_after=None if retry_after is None else float(retry_after),
        )
    raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unknown frame type {ftype}")
