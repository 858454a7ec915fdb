"""Events of the control API, a cluster node's state and an endpoint, in
words (shared by mcctl, the GUI and mcd)."""

from __future__ import annotations

import json
import re
import time

TYPE_CHECKING = False  # no typing at run time: mcctl imports this on every call
if TYPE_CHECKING:
    from typing import Any


#: The bidirectional formatting characters (the marks, embeddings,
#: overrides and isolates): invisible, yet they reorder the rest of a line
#: as a terminal or Qt shows it ("Trojan Source"): a peer's subject could
#: make what follows it on its line read backwards.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
#: C0 and C1 control characters, DEL and the bidi ones; with or without
#: the line break.
_CONTROL = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
_CONTROL_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f{_BIDI}]")
#: What JSON leaves raw that a terminal acts on: DEL, the C1 controls and
#: the bidi ones (json escapes the C0 ones itself).
_RAW_IN_JSON = re.compile(f"[\x7f-\x9f{_BIDI}]")


def json_line(value: object) -> str:
    """``value`` as one line of JSON (UTF-8 text left as it is) that is
    safe on a terminal: DEL, the C1 and the bidi controls, which json
    writes raw, as ``\\u`` escapes (the same JSON; ``printable``'s
    ``\\x9b`` would not be JSON at all)."""
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False))


def printable(text: str, lines: bool = False) -> str:
    """``text`` for a terminal or a window: control characters written as
    escapes (``\\x1b``, ``\\n``, ``\\u202e``), so what a peer chose (a
    subject, a reason it gave) can neither move the cursor, recolour or
    clear the screen, fake a line nor reorder the rest of its line;
    ``lines`` keeps line breaks (a table of several lines)."""
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
    elif name in ("message", "request"):
        sender = f" from {data['client_id']}" if "client_id" in data else ""
        if "omitted" in data:
            payload = f"(payload of {data['omitted']:,} bytes left out: over the control socket's line)"
        else:
            payload = _json(data.get("payload"))
        what = f"{name}{sender}: {data.get('subject')} {payload}"
        if name == "request":
            what += "  (answered no_responder: mcd runs no code to answer with)"
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
