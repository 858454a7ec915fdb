"""MissionCommander: a client/server connection manager with callbacks.

>>> from missioncommander import Message, Client, Server, ClientState
"""

from __future__ import annotations

from ._client import Client
from ._errors import (
    BindError,
    ConnectError,
    ConnectionLost,
    ConnectionRefusedByServer,
    ConnectTimeout,
    LocalProtocolError,
    MessageTooLarge,
    MissionCommanderError,
    ProtocolError,
    QueueFullError,
    RemoteProtocolError,
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
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "ConnectionRefusedByServer",
    "FrozenDict",
    "FrozenList",
    "LocalProtocolError",
    "Message",
    "MessageTooLarge",
    "MissionCommanderError",
    "ProtocolError",
    "QueueFullError",
    "RemoteProtocolError",
    "Server",
    "StateError",
    "TLSConfigError",
    "UnknownClient",
    "__version__",
]
