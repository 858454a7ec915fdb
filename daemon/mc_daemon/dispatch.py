"""Maps validated control commands onto the core; knows nothing of sockets.

Used by the control server, and by mcctl's shell in embedded mode, so both
answer every command the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from mc_control import schema
from mc_control.codes import API_VERSION, NAME_RULE, ErrorCode
from missioncommander import __version__ as library_version

from .core import CoreError, DaemonCore


def _readable(error: Any) -> str:
    """pydantic's message for one error, but the name rule in words rather
    than as the regex pydantic quotes."""
    if error["loc"][-1:] == ("name",) and error["type"].startswith("string_"):
        return NAME_RULE
    return str(error["msg"])


class Dispatcher:
    """Maps validated commands onto the core; knows nothing of sockets."""

    def __init__(self, core: DaemonCore, request_shutdown: Callable[[], None], info: dict[str, Any]) -> None:
        self.core = core
        self.request_shutdown = request_shutdown
        self.info = info

    def parse(self, obj: Any) -> schema.Request:
        """Validate a decoded JSON line; ``CoreError`` when it is not a command."""
        try:
            return schema.REQUEST_ADAPTER.validate_python(obj)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            kinds = {e["type"] for e in errors}
            if "union_tag_invalid" in kinds:
                cmd = obj.get("cmd") if isinstance(obj, dict) else None
                raise CoreError(
                    ErrorCode.UNKNOWN_COMMAND,
                    f"unknown command {cmd!r}; known: {', '.join(schema.COMMANDS)}",
                ) from None
            details = [{"loc": [str(p) for p in e["loc"]], "msg": _readable(e), "type": e["type"]} for e in errors]
            if not isinstance(obj, dict):
                # pydantic says "Input should be a valid dictionary or object
                # to extract fields from", which names no JSON its writer knows.
                summary = f'a command is a JSON object such as {{"id": 1, "cmd": "hello"}}, not {_json_kind(obj)}'
            elif "union_tag_not_found" in kinds:
                summary = f'no "cmd"; known: {", ".join(schema.COMMANDS)}'
            else:
                summary = "; ".join(f"{'.'.join(d['loc'][1:]) or 'request'}: {d['msg']}" for d in details[:5])
            raise CoreError(ErrorCode.INVALID_REQUEST, f"invalid request: {summary}", details) from None

    def run(self, req: schema.Request) -> dict[str, Any]:
        core = self.core
        if not isinstance(req, (schema.Hello, schema.DaemonStatus, schema.DaemonShutdown)):
            # The socket answers while mcd restores its instances: a command
            # run meanwhile would be undone by the restore, or miss an instance.
            core.wait_restored()
        match req:
            case schema.Hello():
                compatible = req.api_version in (None, API_VERSION)
                return {
                    "api_version": API_VERSION,
                    "version": library_version,
                    "boot_id": core.boot_id,
                    "pid": os.getpid(),
                    "compatible": compatible,
                }
            case schema.DaemonStatus():
                return {**core.daemon_status(), **self.info, "pid": os.getpid()}
            case schema.DaemonShutdown():
                self.request_shutdown()
                return {"stopping": True}
            case schema.ListInstances():
                return {"instances": core.list()}
            case schema.Stats():
                return core.stats(req.kind, req.name)
            case schema.ClientCreate() | schema.ServerCreate():
                return core.create(_kind(req.cmd), req.name)
            case schema.ClientRemove() | schema.ServerRemove():
                return core.remove(_kind(req.cmd), req.name)
            case schema.ClientSet() | schema.ServerSet():
                return core.set(_kind(req.cmd), req.name, req.key, req.value)
            case schema.ClientGet() | schema.ServerGet():
                return {"settings": core.get_settings(_kind(req.cmd), req.name, req.key)}
            case schema.ClientStatus() | schema.ServerStatus():
                return core.status(_kind(req.cmd), req.name)
            case schema.ClientConnect():
                return core.client_connect(req.name, req.wait, req.timeout)
            case schema.ClientDisconnect():
                return core.client_disconnect(req.name)
            case schema.ClientSend():
                return core.client_send(req.name, req.subject, req.payload, req.timeout)
            case schema.ClientRequest():
                return core.client_request(req.name, req.subject, req.payload, req.timeout)
            case schema.ServerStart():
                return core.server_start(req.name)
            case schema.ServerStop():
                return core.server_stop(req.name)
            case schema.ServerSend():
                return core.server_send(req.name, req.to, req.subject, req.payload, req.timeout)
            case schema.ServerRequest():
                return core.server_request(req.name, req.to, req.subject, req.payload, req.timeout)
            case schema.ServerClients():
                return core.server_clients(req.name)
            case schema.ServerKick():
                return core.server_kick(req.name, req.client_id, req.reason)
        raise CoreError(ErrorCode.UNKNOWN_COMMAND, f"command {req.cmd!r} is not handled here")


def _json_kind(obj: Any) -> str:
    """What a decoded JSON value was, in JSON's words."""
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, bool):
        return "true or false"
    if obj is None:
        return "null"
    return "a number"


def _kind(cmd: str) -> str:
    return cmd.split(".", 1)[0]
