"""Every control command, as pydantic models in one discriminated union.

This module is the single source of truth of the control API: the daemon
validates every request with :data:`REQUEST_ADAPTER`, ``mcd --print-schema``
prints its JSON Schema, and a test checks that every command here has a CLI
form and every request mcctl builds validates here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from .codes import API_VERSION, DEFAULT_WAITS, MAX_COMMAND_TIMEOUT, NAME_MAX, NAME_PATTERN

InstanceName = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)]
ClientKey = Literal[
    "address",
    "port",
    "client_id",
    "interface",
    "bind_port",
    "tls",
    "tls_ca",
    "tls_verify",
    "tls_cert",
    "tls_key",
    "tls_hostname",
    "auth_token",
    "servers",
    "connect_timeout",
    "reconnect_delay",
    "reconnect_max_delay",
    "reconnect_attempts",
    "heartbeat_interval",
    "heartbeat_timeout",
    "max_frame_size",
    "max_queued",
    "max_queued_bytes",
    "send_timeout",
    "max_inbound",
    "max_inbound_bytes",
    "inline_callbacks",
    "max_requests",
    "reply_tracebacks",
    "concurrent_requests",
    "reconnect_on_shutdown",
]
ServerKey = Literal[
    "interface",
    "port",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "auth_token",
    "cluster",
    "node_id",
    "handshake_timeout",
    "heartbeat_interval",
    "heartbeat_timeout",
    "max_frame_size",
    "max_clients",
    "session_expiry",
    "max_queued",
    "max_queued_bytes",
    "max_pending_bytes",
    "max_connection_rate",
    "max_inbound",
    "max_inbound_bytes",
    "max_inbound_total_bytes",
    "inline_callbacks",
    "max_requests",
    "reply_tracebacks",
    "concurrent_requests",
    "auth_tokens",
    "lease_ttl",
]
# bool first: pydantic keeps true/false as booleans, not as 1/0 (and 5 as an
# int, 0.5 as a float). A dict is auth_tokens' client id -> token map.
SettingValue = bool | int | float | str | dict[str, str] | None
EventName = Literal[
    "statechange",
    "connect",
    "disconnect",
    "reconnect",
    "message",
    "request",
    "servershutdown",
    "sessionlost",
    "clientconnect",
    "clientdisconnect",
    "clientdetach",
    "clientresume",
    "started",
    "stopped",
    "created",
    "removed",
    "settings",
]


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Echoed in the response; any JSON scalar the caller likes.
    id: int | str | None = None


class _Named(_Command):
    name: InstanceName = "default"


class Hello(_Command):
    """Check the daemon's API version (and say ours)."""

    cmd: Literal["hello"]
    api_version: int | None = None


class DaemonStatus(_Command):
    """Version, API version, pid, uptime, boot id and instance counts."""

    cmd: Literal["daemon.status"]


class DaemonShutdown(_Command):
    """Stop the daemon as SIGTERM would (instances keep their desired state)."""

    cmd: Literal["daemon.shutdown"]


class Stats(_Command):
    """Live figures of the daemon and of its instances (docs/STATS.md);
    ``kind`` and ``name`` narrow them down, and a named server's figures
    come with its clients'."""

    cmd: Literal["stats"]
    kind: Literal["client", "server"] | None = None
    name: Annotated[str, StringConstraints(min_length=1)] | None = None


class ListInstances(_Command):
    """Every instance with its status."""

    cmd: Literal["list"]


class ClientCreate(_Named):
    cmd: Literal["client.create"]


class ClientRemove(_Named):
    cmd: Literal["client.remove"]


class ClientSet(_Named):
    cmd: Literal["client.set"]
    key: ClientKey
    value: SettingValue


class ClientGet(_Named):
    """One setting (``key``), or all of them."""

    cmd: Literal["client.get"]
    key: ClientKey | None = None


class ClientConnect(_Named):
    """Connect; the client keeps trying in the background until it does.
    ``wait``: false answers at once; ``"attempt"`` answers with the outcome of
    the first attempt (``connect_failed`` when it failed, while the client goes
    on trying); true answers once connected.  Either wait fails with
    ``timeout`` after ``timeout`` seconds."""

    cmd: Literal["client.connect"]
    wait: bool | Literal["attempt"] = False
    timeout: Annotated[float, Field(gt=0, le=MAX_COMMAND_TIMEOUT)] = 10.0


class ClientDisconnect(_Named):
    cmd: Literal["client.disconnect"]


class ClientStatus(_Named):
    cmd: Literal["client.status"]


class ClientSend(_Named):
    """Send to the server.  A full queue holds it up to ``timeout`` seconds
    (never longer than the client's ``send_timeout``; 0: not at all), then
    ``queue_full``."""

    cmd: Literal["client.send"]
    subject: Annotated[str, StringConstraints(min_length=1)]
    payload: dict[str, Any] = Field(default_factory=dict)
    timeout: Annotated[float, Field(ge=0, le=MAX_COMMAND_TIMEOUT)] = DEFAULT_WAITS["client.send"]


class ClientRequest(_Named):
    """Send a request to the server and wait for its reply (up to ``timeout``)."""

    cmd: Literal["client.request"]
    subject: Annotated[str, StringConstraints(min_length=1)]
    payload: dict[str, Any] = Field(default_factory=dict)
    timeout: Annotated[float, Field(gt=0, le=MAX_COMMAND_TIMEOUT)] = 10.0


class ServerCreate(_Named):
    cmd: Literal["server.create"]


class ServerRemove(_Named):
    cmd: Literal["server.remove"]


class ServerSet(_Named):
    cmd: Literal["server.set"]
    key: ServerKey
    value: SettingValue


class ServerGet(_Named):
    cmd: Literal["server.get"]
    key: ServerKey | None = None


class ServerStart(_Named):
    cmd: Literal["server.start"]


class ServerStop(_Named):
    cmd: Literal["server.stop"]


class ServerStatus(_Named):
    cmd: Literal["server.status"]


class ServerSend(_Named):
    """Send to one client (``to``), or broadcast (``to`` = ``'*'``).  A full
    queue holds it up to ``timeout`` seconds (0, the default: not at all),
    as the library's ``server.send(..., timeout=)``."""

    cmd: Literal["server.send"]
    subject: Annotated[str, StringConstraints(min_length=1)]
    payload: dict[str, Any] = Field(default_factory=dict)
    to: Annotated[str, StringConstraints(min_length=1)] = "*"
    timeout: Annotated[float, Field(ge=0, le=MAX_COMMAND_TIMEOUT)] = 0.0


class ServerRequest(_Named):
    """Send a request to client ``to`` and wait for its reply (up to ``timeout``)."""

    cmd: Literal["server.request"]
    subject: Annotated[str, StringConstraints(min_length=1)]
    payload: dict[str, Any] = Field(default_factory=dict)
    to: Annotated[str, StringConstraints(min_length=1)]
    timeout: Annotated[float, Field(gt=0, le=MAX_COMMAND_TIMEOUT)] = 10.0


class ServerClients(_Named):
    cmd: Literal["server.clients"]


class ServerKick(_Named):
    cmd: Literal["server.kick"]
    client_id: Annotated[str, StringConstraints(min_length=1)]
    reason: str = "disconnected by mcctl"


class InstanceRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["client", "server"]
    name: InstanceName


class Since(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    boot_id: str
    seq: Annotated[int, Field(ge=0)]


class Subscribe(_Command):
    """Turn this connection into a stream of events (optionally filtered by
    instance and event name).  The answer carries a snapshot taken atomically
    with the start of the stream; with ``since``, the events after it are
    replayed first, or ``resync`` is true when they are gone."""

    cmd: Literal["subscribe"]
    instances: list[InstanceRef] | None = None
    events: list[EventName] | None = None
    since: Since | None = None


Request = Annotated[
    Hello
    | DaemonStatus
    | DaemonShutdown
    | ListInstances
    | Stats
    | ClientCreate
    | ClientRemove
    | ClientSet
    | ClientGet
    | ClientConnect
    | ClientDisconnect
    | ClientStatus
    | ClientSend
    | ClientRequest
    | ServerCreate
    | ServerRemove
    | ServerSet
    | ServerGet
    | ServerStart
    | ServerStop
    | ServerStatus
    | ServerSend
    | ServerRequest
    | ServerClients
    | ServerKick
    | Subscribe,
    Field(discriminator="cmd"),
]

#: Built once: building a TypeAdapter is the expensive part.
REQUEST_ADAPTER: TypeAdapter[Request] = TypeAdapter(Request)

#: The ``cmd`` of every command, in the union's order.
COMMANDS: tuple[str, ...] = tuple(
    get_args(model.model_fields["cmd"].annotation)[0] for model in get_args(get_args(Request)[0])
)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a request, as ``mcd --print-schema`` prints it."""
    schema = REQUEST_ADAPTER.json_schema()
    schema["title"] = "mcd control request"
    schema["$comment"] = f"API version {API_VERSION}; one JSON object per line over the mcd Unix socket"
    return schema
