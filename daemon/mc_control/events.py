"""Events of the control API, a cluster node's state and an endpoint, in
words (shared by mcctl, the GUI and mcd)."""

from __future__ import annotations

import json
import re
import time

TYPE_CHECKING = False  # no typing at run time: mcctl imports this on every call
if TYPE_CHECKING:
    from typing import Any


#: C0 and C1 control characters and DEL; with or without the line break.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
#: What JSON leaves raw that a terminal may act on: DEL and the C1 controls
#: (json escapes the C0 ones itself).
_RAW_IN_JSON = re.compile("[\x7f-\x9f]")


def json_line(value: object) -> str:
    """``value`` as one line of JSON (UTF-8 text left as it is) that is
    safe on a terminal: DEL and the C1 controls, which json writes raw, as
    ``\\u`` escapes (the same JSON; ``printable``'s ``\\x9b`` would not be
    JSON at all)."""
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False))


def printable(text: str, lines: bool = False) -> str:
    """``text`` for a terminal: control characters written as escapes
    (``\\x1b``, ``\\n``), so what a peer chose (a subject, a reason it
    gave) can neither move the cursor, recolour or clear the screen nor
    fake a line; ``lines`` keeps line breaks (a table of several lines)."""
    pattern = _CONTROL_BUT_NEWLINE if lines else _CONTROL
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def host_port(host: object, port: object) -> str:
    """``host:port``, an IPv6 host in brackets (``[::1]:30000``): without
    them the port reads as one more group of the address."""
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def describe_event(ev: dict[str, Any]) -> str:
    """One line for an event, e.g. ``12:00:01.234  #5     client/default  connect``."""
    if ev.get("type") == "overflow":
        return "!! missed events: this stream fell behind (" + str(ev.get("message")) + ")"
    when = time.strftime("%H:%M:%S", time.localtime(ev["time"])) + f".{int(ev['time'] % 1 * 1000):03d}"
    who = f"{ev['kind']}/{ev['name']}"
    data = ev.get("data") or {}
    name = ev["event"]
    if name == "statechange":
        what = f"state {data.get('phase')}  ({data.get('new_name')})"
        if data.get("phase") in ("reconnecting", "failed", "disconnected") and data.get("reason"):
            what += f": {data['reason']}"
    elif name == "message":
        sender = f" from {data['client_id']}" if "client_id" in data else ""
        what = f"message{sender}: {data.get('subject')} {_json(data.get('payload'))}"
    elif name in ("clientconnect", "clientdisconnect", "clientresume", "reconnect"):
        what = f"{name} {data.get('client_id')}"
    elif name == "clientdetach":
        what = f"clientdetach {data.get('client_id')}: {data.get('reason')} (its session waits for it)"
    elif name == "started":
        what = f"started, listening on port {data.get('port')}"
    elif name == "settings":
        # What this change set; every setting only from a daemon that does
        # not say (the data always holds them all, for controllers).
        keys = ev.get("changed") or list(data)
        what = "settings " + ", ".join(f"{k}={data.get(k)!r}" for k in keys)
    else:
        what = name
    return f"{when}  #{ev['seq']:<5} {who}  {printable(what)}"


def cluster_readiness(cluster: dict[str, Any]) -> str:
    """A cluster node's ``ready``, in words: what it means for new clients."""
    return "ready" if cluster.get("ready") else "NOT READY: cannot reach Redis, refusing new clients"


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
