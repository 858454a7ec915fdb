"""The exception tree of MissionCommander.

Every error the library raises derives from :class:`MissionCommanderError`, and
where a builtin category fits (``ConnectionError``, ``RuntimeError``,
``ValueError``, ``TimeoutError``) the error derives from it too, so callers can
catch either.  Names say who broke what: *Local* errors are this process
misusing the protocol, *Remote* errors are the peer doing so.
"""

from __future__ import annotations

import sys
from typing import Any


class MissionCommanderError(Exception):
    """Base class of every error raised by MissionCommander."""

    #: The attributes an error's constructor takes, in order: unpickling
    #: re-makes the error from them (a process pool hands exceptions back
    #: pickled).  Empty: from ``args``, Python's default, right for an error
    #: made from its message alone.
    _made_from: tuple[str, ...] = ()

    def __reduce__(self) -> str | tuple[Any, ...]:
        if not self._made_from:
            return super().__reduce__()
        return type(self), tuple(getattr(self, name) for name in self._made_from), self.__dict__


class ProtocolError(MissionCommanderError):
    """A frame broke the wire protocol.

    ``code`` is one of the error codes of ``docs/PROTOCOL.md`` (for example
    ``bad_frame`` or ``frame_too_large``).
    """

    _made_from: tuple[str, ...] = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class StateError(MissionCommanderError, RuntimeError):
    """The operation is not possible in the current state (for example,
    changing a client's address while it is connected)."""


class ConnectError(MissionCommanderError, ConnectionError):
    """Connecting to a server failed."""


class ConnectTimeout(ConnectError, TimeoutError):
    """The server did not accept the connection within ``connect_timeout``."""


class ConnectionRefusedByServer(ConnectError):
    """The server answered and refused this client.

    ``code`` says why (``id_in_use``, ``version_unsupported``, ...).  Most
    refusals are terminal: the client does not retry by itself.  The
    exception is ``rate_limited`` (too many connections from one address at
    once): ``connect()`` keeps trying, with backoff, until ``connect_timeout``
    has passed.
    """

    _made_from: tuple[str, ...] = ("code", "reason")

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"server refused the connection ({code}): {message}")
        self.code = code
        self.reason = message


class ConnectionLost(MissionCommanderError, ConnectionError):
    """Deprecated: never raised.  A broken connection is repaired by the
    session (reconnect and resume); importing it from ``missioncommander``
    warns."""


class UnknownClient(MissionCommanderError, KeyError):
    """``Server.send``, ``disconnect_client`` and friends named a client id
    with no session on this server.  Also a ``KeyError``, as it always was."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class QueueFullError(MissionCommanderError):
    """A bounded send queue is full (``max_queued`` messages or
    ``max_queued_bytes`` bytes); the message was not queued."""


class MessageTooLarge(MissionCommanderError, ValueError):
    """An encoded message exceeds the peer's maximum frame size."""


class BindError(MissionCommanderError, OSError):
    """A server could not listen on its interface and port."""


class TLSConfigError(MissionCommanderError, ValueError):
    """A TLS setting is wrong: a file is missing or not a certificate or key."""


class RequestTimeout(MissionCommanderError, TimeoutError):
    """No reply came within the request's ``timeout``.  A reply that comes
    later is dropped (logged), never handed to another request."""


class SessionLost(MissionCommanderError, ConnectionError):
    """The session a request was sent in ended for good (server shutdown,
    session expiry, a refusal, a server restart that started a new
    session, a disconnect): no reply can come.  Raised at once, not after
    the timeout.  Whether the peer ran the request is not known."""


class RemoteError(MissionCommanderError):
    """The peer's responder raised: ``type_name`` and ``message`` are its
    exception's; ``remote_traceback`` is its traceback when the peer opted
    in (``reply_tracebacks``), else None."""

    _made_from: tuple[str, ...] = ("type_name", "message", "remote_traceback")

    def __init__(self, type_name: str, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


class NoResponder(RemoteError):
    """The peer has no ``request`` callback: nobody could answer."""

    _made_from: tuple[str, ...] = ("message",)

    def __init__(self, message: str = "the peer has no request responder") -> None:
        super().__init__("NoResponder", message)
        self.args = (message,)  # the class names it already: not "NoResponder: NoResponder: ..."


class ClusterUnavailable(StateError):
    """A cluster node cannot reach its Redis: it cannot number, route or
    record messages until Redis is back (the node reconnects by itself;
    docs/CLUSTER.md)."""


def loop_blocked() -> str:
    """What a blocking wait of the threaded API that timed out adds when
    its thread runs an asyncio event loop: the wait held that loop the whole
    time, so nothing on it (an ``AsyncServer`` in the same program) could
    answer, and the timeout alone points elsewhere (a server that is down,
    a missing ``tls``).  Empty otherwise; asyncio is not imported for it."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return ""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return ""
    return (
        "this thread runs an asyncio event loop, which this blocking call held the whole time: nothing on"
        " that loop could answer; in asyncio code use missioncommander.aio (or asyncio.to_thread)"
    )
