"""The connection state machine, written as tables.

A connection is in one *phase*; each frame received or sent is allowed in
some phases and moves the connection to another.  ``RECEIVE`` and ``SEND``
below are the whole rule book: ``_connection.Connection`` looks every frame
up in them (the MESSAGE fast path included: it checks the phase the tables
allow MESSAGE in) and raises for anything they do not list.

The coarse ``ConnState`` (HANDSHAKE, OPEN, CLOSED) is what people see in
error messages and what the drivers ask about; ``Phase`` tells the steps of
the handshake apart::

    client:  AWAIT_CHALLENGE --CHALLENGE--> AWAIT_WELCOME --WELCOME--> OPEN
    server:  AWAIT_HELLO --HELLO--> ANSWERING --send WELCOME--> OPEN
    both:    OPEN --BYE, ERROR (either way), SHUTDOWN (server to client)--> CLOSED

A CLOSED connection ignores whatever still arrives.  ERROR is the one frame
a side may send in any phase (also right after the peer broke the rules),
as long as it has not sent a closing frame yet.
"""

from __future__ import annotations

import enum

from ._events import (
    AckReceived,
    ByeReceived,
    Challenge,
    ErrorReceived,
    Hello,
    MessageReceived,
    PingReceived,
    PongReceived,
    Role,
    ShutdownReceived,
    Welcome,
)
from ._frames import FrameType


class ConnState(enum.Enum):
    """Where a connection is, as its users see it."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class Phase(enum.Enum):
    """Where a connection is, as its rules see it (``STATE`` maps it to a ``ConnState``)."""

    AWAIT_CHALLENGE = "client: waiting for the server's CHALLENGE"
    AWAIT_WELCOME = "client: CHALLENGE received; HELLO sent or to send, waiting for WELCOME"
    AWAIT_HELLO = "server: waiting for HELLO (CHALLENGE sent or to send)"
    ANSWERING = "server: HELLO received; WELCOME or ERROR to send"
    OPEN = "open"
    CLOSED = "closed"

    # Members are singletons: hashed by identity, the rule tables' lookups
    # skip the Python-level Enum.__hash__ (several per frame).
    __hash__ = object.__hash__


STATE = {
    Phase.AWAIT_CHALLENGE: ConnState.HANDSHAKE,
    Phase.AWAIT_WELCOME: ConnState.HANDSHAKE,
    Phase.AWAIT_HELLO: ConnState.HANDSHAKE,
    Phase.ANSWERING: ConnState.HANDSHAKE,
    Phase.OPEN: ConnState.OPEN,
    Phase.CLOSED: ConnState.CLOSED,
}

FIRST_PHASE = {Role.CLIENT: Phase.AWAIT_CHALLENGE, Role.SERVER: Phase.AWAIT_HELLO}

_OPEN, _CLOSED = Phase.OPEN, Phase.CLOSED
_OPEN_RECEIVE: dict[type, Phase] = {
    MessageReceived: _OPEN,
    AckReceived: _OPEN,
    PingReceived: _OPEN,
    PongReceived: _OPEN,
    ByeReceived: _CLOSED,
    ErrorReceived: _CLOSED,
}

#: (role, phase) -> {event received: the phase after it}; anything else is
#: ``unexpected_frame``.
RECEIVE: dict[tuple[Role, Phase], dict[type, Phase]] = {
    (Role.CLIENT, Phase.AWAIT_CHALLENGE): {Challenge: Phase.AWAIT_WELCOME, ErrorReceived: _CLOSED},
    (Role.CLIENT, Phase.AWAIT_WELCOME): {Welcome: _OPEN, ErrorReceived: _CLOSED},
    (Role.CLIENT, _OPEN): {**_OPEN_RECEIVE, ShutdownReceived: _CLOSED},
    (Role.SERVER, Phase.AWAIT_HELLO): {Hello: Phase.ANSWERING},
    (Role.SERVER, Phase.ANSWERING): {},
    (Role.SERVER, _OPEN): _OPEN_RECEIVE,
}

_OPEN_SEND: dict[FrameType, Phase] = {
    FrameType.MESSAGE: _OPEN,
    FrameType.ACK: _OPEN,
    FrameType.PING: _OPEN,
    FrameType.PONG: _OPEN,
    FrameType.BYE: _CLOSED,
}

#: (role, phase) -> {frame sent: the phase after it}; ERROR is allowed in
#: every phase until a closing frame was sent (see the module's docstring).
SEND: dict[tuple[Role, Phase], dict[FrameType, Phase]] = {
    (Role.CLIENT, Phase.AWAIT_CHALLENGE): {},
    (Role.CLIENT, Phase.AWAIT_WELCOME): {FrameType.HELLO: Phase.AWAIT_WELCOME},
    (Role.CLIENT, _OPEN): _OPEN_SEND,
    (Role.SERVER, Phase.AWAIT_HELLO): {FrameType.CHALLENGE: Phase.AWAIT_HELLO},
    (Role.SERVER, Phase.ANSWERING): {FrameType.CHALLENGE: Phase.ANSWERING, FrameType.WELCOME: _OPEN},
    (Role.SERVER, _OPEN): {**_OPEN_SEND, FrameType.SHUTDOWN: _CLOSED},
}

#: Frames after which the sender closes: nothing it sends or receives later counts.
CLOSING_FRAMES = frozenset({FrameType.SHUTDOWN, FrameType.BYE, FrameType.ERROR})
