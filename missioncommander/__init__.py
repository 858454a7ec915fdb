"""MissionCommander: a client/server connection manager with callbacks.

>>> from missioncommander import Message, Client, Server, ClientState
"""

from __future__ import annotations

from ._client import Client
from ._errors import (
    BindError,
    ClusterUnavailable,
    ConnectError,
    ConnectionRefusedByServer,
    ConnectTimeout,
    LocalProtocolError,
    MessageTooLarge,
    MissionCommanderError,
    NoResponder,
    ProtocolError,
    QueueFullError,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    SessionLost,
    StateError,
    TLSConfigError,
    UnknownClient,
)
from ._frames import PROTOCOL_VERSION
from ._message import FrozenDict, FrozenList, Message
from ._server import Server
from ._state import ClientState, ClientStateTransition

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "BindError",
    "Client",
    "ClientState",
    "ClientStateTransition",
    "ClusterUnavailable",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionRefusedByServer",
    "FrozenDict",
    "FrozenList",
    "LocalProtocolError",
    "Message",
    "MessageTooLarge",
    "MissionCommanderError",
    "NoResponder",
    "ProtocolError",
    "QueueFullError",
    "RemoteError",
    "RemoteProtocolError",
    "RequestTimeout",
    "Server",
    "SessionLost",
    "StateError",
    "TLSConfigError",
    "UnknownClient",
    "__version__",
]


def __getattr__(name: str) -> object:
    # ConnectionLost was exported but never raised (a broken connection is
    # repaired by the session, not reported as an error); it stays importable
    # for code that names it, with a warning, until it goes.
    if name == "ConnectionLost":
        import warnings  # noqa: PLC0415

        from ._errors import ConnectionLost  # noqa: PLC0415

        warnings.warn(
            "missioncommander.ConnectionLost is never raised and will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return ConnectionLost
    raise AttributeError(f"module 'missioncommander' has no attribute {name!r}")
