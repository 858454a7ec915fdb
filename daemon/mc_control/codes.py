"""API version, error codes and what mcctl exits with for each, and the
rules every controller checks before it asks (instance names, payloads)."""

from __future__ import annotations

import enum
import json
import re

# mcctl imports this on every call: typing only for the type checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

#: Bumped when a command or a response changes incompatibly.
API_VERSION = 1

#: Longest request or response line, in bytes (the newline included), both
#: ways.  A command carries a message as big as the library's default
#: ``max_frame_size`` (16 MiB), escaped; a ``list`` or a snapshot grows
#: with the instances (under 1 KiB each: 1 MiB ended at 1,100).  mcd keeps
#: its own lines to it: an event whose message would not fit comes
#: without its payload, a reply that would not fit is this error.
MAX_LINE = 64 * 1024 * 1024

#: The longest ``timeout`` a command that waits (a request, ``client.connect``
#: with ``wait``) takes: mcd holds a thread for each such command.
MAX_COMMAND_TIMEOUT = 3600

#: How long commands mcd may hold by default wait there, when the caller
#: names no ``timeout``: a client's send waits for room (never longer
#: than its ``send_timeout``).  A caller waits for the answer that long
#: and more; mcctl sends a ``timeout`` only when told one, so that it
#: still works with an mcd from before the field.
DEFAULT_WAITS = {"client.send": 10.0}

#: An instance name (the schema's constraint, and what the GUI checks as
#: it is typed), and the rule in words for whoever typed one that breaks it.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_MAX = 64
NAME_RULE = (
    f"an instance name is 1 to {NAME_MAX} ASCII letters, digits, '_', '.' or '-', starting with a letter or digit"
)


def name_problem(name: str) -> str | None:
    """``NAME_RULE`` when ``name`` breaks it, else None."""
    if len(name) > NAME_MAX or re.fullmatch(NAME_PATTERN, name) is None:
        return NAME_RULE
    return None


def name_option(name: str) -> str:
    """`` --name NAME`` for a hint's command, when the instance is not the
    default one (a valid name needs no quoting: ``NAME_RULE``)."""
    return "" if name == "default" else f" --name {name}"


def _refuse_json_constant(name: str) -> NoReturn:
    """``json.loads``'s ``parse_constant``: Python's json reads NaN and
    Infinity, JSON has neither, and mcd refuses a payload with one."""
    raise ValueError(f"{name} is not JSON (JSON has no NaN or infinity)")


def _finite_float(text: str) -> float:
    """``json.loads``'s ``parse_float``: a number beyond a double's range
    (``1e400``) would be read as infinity, which no JSON can carry on."""
    value = float(text)
    if value - value:  # inf - inf is NaN; a finite number gives 0.0
        raise ValueError(f"{text:.40} is beyond the range of a JSON number here (a double)")
    return value


_strict = json.JSONDecoder(parse_constant=_refuse_json_constant, parse_float=_finite_float)


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses what is not JSON, or cannot be written
    back as JSON (NaN, Infinity, a number beyond a double), or is nested
    deeper than Python's recursion limit, with a ``ValueError`` (a
    ``json.JSONDecodeError`` for bad syntax)."""
    try:
        return _strict.decode(text)
    except RecursionError:
        # A line of a million '[' is short, and json would raise this
        # from deep inside, where a caller expecting ValueError missed it.
        raise ValueError("JSON nested too deeply to read") from None


class ErrorCode(enum.StrEnum):
    """``error.code`` of a failed response."""

    INVALID_JSON = "invalid_json"  # the line is not UTF-8 JSON (the daemon closes)
    # A command over MAX_LINE (the daemon closes), or a reply that would be.
    LINE_TOO_LONG = "line_too_long"
    INVALID_REQUEST = "invalid_request"  # JSON, but not a valid command
    UNKNOWN_COMMAND = "unknown_command"
    NOT_FOUND = "not_found"  # no such instance (or client of a server)
    EXISTS = "exists"  # create of an instance that exists
    INVALID_VALUE = "invalid_value"  # a setting's value was refused
    STATE_ERROR = "state_error"  # not possible in the instance's state
    CONNECT_FAILED = "connect_failed"
    BIND_FAILED = "bind_failed"
    QUEUE_FULL = "queue_full"
    TIMEOUT = "timeout"
    NO_RESPONDER = "no_responder"  # a request reached a peer with no responder
    REMOTE_ERROR = "remote_error"  # the peer's responder raised (details: type, message)
    SESSION_LOST = "session_lost"  # the session ended before a request's reply came
    PERMISSION_DENIED = "permission_denied"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


def bind_fault(details: Any) -> str | None:
    """The setting a ``bind_failed`` error's details blame (``port``,
    ``interface``), or None: mcd says it there, so that controllers need
    not read errnos out of the message."""
    key = details.get("key") if isinstance(details, dict) else None
    return key if key in ("port", "interface") else None


#: mcctl's exit status for a daemon error: 1 the daemon refused or the
#: command failed, 2 a usage error, 4 a timeout (3, daemon unreachable, is
#: decided before any code exists).
EXIT_CODES: dict[str, int] = {code.value: 1 for code in ErrorCode}
EXIT_CODES.update(
    {
        ErrorCode.INVALID_REQUEST.value: 2,
        ErrorCode.UNKNOWN_COMMAND.value: 2,
        ErrorCode.INVALID_VALUE.value: 2,
        ErrorCode.TIMEOUT.value: 4,
    }
)


#: The library's limits and timers, settable on hosted instances like the
#: rest, by their type: "int", "float", "bool", or "secrets" (a JSON object
#: of client id -> token, shown as "(set)").
CLIENT_TUNING = {
    "connect_timeout": "float",
    "reconnect_delay": "float",
    "reconnect_max_delay": "float",
    "reconnect_attempts": "int",
    "heartbeat_interval": "float",
    "heartbeat_timeout": "float",
    "max_frame_size": "int",
    "max_queued": "int",
    "max_queued_bytes": "int",
    "send_timeout": "float",
    "max_inbound": "int",
    "max_inbound_bytes": "int",
    "inline_callbacks": "bool",
    "max_requests": "int",
    "reply_tracebacks": "bool",
    "concurrent_requests": "int",
    "reconnect_on_shutdown": "bool",
}
SERVER_TUNING = {
    "handshake_timeout": "float",
    "heartbeat_interval": "float",
    "heartbeat_timeout": "float",
    "max_frame_size": "int",
    "max_clients": "int",
    "session_expiry": "float",
    "max_queued": "int",
    "max_queued_bytes": "int",
    "max_pending_bytes": "int",
    "max_connection_rate": "float",
    "max_inbound": "int",
    "max_inbound_bytes": "int",
    "max_inbound_total_bytes": "int",
    "inline_callbacks": "bool",
    "max_requests": "int",
    "reply_tracebacks": "bool",
    "concurrent_requests": "int",
    "auth_tokens": "secrets",
    "lease_ttl": "float",
}
#: Tuning settings that may be null: none (no limit, retry forever, off).
OPTIONAL_TUNING = ("reconnect_attempts", "max_clients", "max_connection_rate", "auth_tokens")
#: The settings that may change while the instance runs (connected,
#: listening), from the next time they are used; the others wait for a
#: disconnect or stop (the library's ``locked``: a test checks they agree).
#: The GUI leaves these editable, with Apply, while the instance runs.
LIVE_CLIENT_KEYS = frozenset(CLIENT_TUNING) - {"max_frame_size"}
LIVE_SERVER_KEYS = (
    frozenset(SERVER_TUNING)
    - {"max_frame_size", "max_inbound", "max_inbound_bytes", "max_inbound_total_bytes", "lease_ttl"}
) | {"auth_token"}
#: Settings that name a file.  mcd opens them in its own working directory,
#: not the caller's: it takes them only absolute (mcctl makes a relative
#: one absolute against where it runs; the GUI expands ``~``).
FILE_KEYS = ("tls_cert", "tls_key", "tls_ca")

#: Settings a control client may set on each kind of instance (the schema's
#: ``ClientKey``/``ServerKey`` literals must agree: a test checks).
CLIENT_KEYS = (
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
    *CLIENT_TUNING,
)
SERVER_KEYS = (
    "interface",
    "port",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "auth_token",
    "cluster",
    "node_id",
    *SERVER_TUNING,
)
#: Every event name of the stream (the schema's ``EventName`` must agree).
EVENT_NAMES = (
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
)
