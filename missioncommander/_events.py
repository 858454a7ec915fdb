"""What a peer said: one event per frame, and the codes its errors carry.

The connection (``_connection.Connection``) turns bytes into these; the
drivers (``Client``, ``Server``) act on them.  They hold data only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._message import FrozenDict


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


#: Refusals after which a client must not retry by itself, whatever the
#: frame's ``retry`` says: retrying would get the same answer.  For
#: ``id_in_use`` the ``retry`` flag decides: false when a live client holds
#: the id (retrying would fight it for the id), true while the holder is
#: being checked or the id is moving between cluster nodes.
TERMINAL_CODES = frozenset({ErrorCode.VERSION_UNSUPPORTED, ErrorCode.BAD_FRAME, ErrorCode.AUTH_FAILED})


class Role(enum.Enum):
    """Which side of a connection: the rules differ (only a server sends CHALLENGE, WELCOME, SHUTDOWN)."""

    CLIENT = "client"
    SERVER = "server"

    # Members are singletons: hashed by identity, the rule tables' lookups
    # skip the Python-level Enum.__hash__ (several per frame).
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class Window:
    """A side's inbox bounds as its HELLO or WELCOME announces them: the
    peer keeps no more than ``messages`` messages of ``bytes`` bytes of
    bodies unacknowledged on the wire to it."""

    messages: int
    bytes: int


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
    #: The sender's inbox bounds, its window (docs/PROTOCOL.md, "Flow
    #: control"); None from a peer that announces none.
    window: Window | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    version: int
    session: str
    resumed: bool
    last_seq: int
    max_frame_size: int
    heartbeat_timeout: float
    proof: str | None = None
    window: Window | None = None


# The two events of the data path are not frozen: a frozen dataclass's
# __init__ costs an object.__setattr__ per field, on every message.
@dataclass(slots=True)
class MessageReceived:
    seq: int
    subject: str
    payload: FrozenDict
    #: The body as received (a view into the frame for a large one); for a
    #: request or reply it holds ``meta`` too.
    encoded: bytes | memoryview
    #: ``{"request": id}`` or ``{"reply": id, ...}`` (protocol 2), else None.
    meta: FrozenDict | None = None


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
    #: With ``retry``: seconds after which the cause is over at the latest
    #: (a cluster node's lease on the client's id), if the sender knows.
    retry_after: float | None = None


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


def frame_name(event: Event) -> str:
    """The wire name of the frame an event came from (``MESSAGE``, ``HELLO``...), for messages to people."""
    return type(event).__name__.removesuffix("Received").upper()
