"""Human output: aligned tables and one line per event."""

from __future__ import annotations

from collections.abc import Sequence

from mc_control.events import cluster_readiness, describe_event, host_port, printable

TYPE_CHECKING = False  # no typing at run time: mcctl imports this on every call
if TYPE_CHECKING:
    from typing import Any


def table(rows: Sequence[Sequence[object]], header: Sequence[str] | None = None, width: int | None = None) -> str:
    """Columns aligned on the widest cell; the last column is not padded.

    ``width`` (a terminal's): the columns that would pass it are left out
    whole, since a number cut short reads as another number (0/10000 as
    0/1000); only the last column, free text, may be cut, and says so.
    """
    cells = [[_cell(c) for c in row] for row in ([header] if header else []) + list(rows)]
    if not cells:
        return ""
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(max(map(len, cells)))]
    shown = len(widths)
    if width is not None:
        start = 0
        for i, column in enumerate(widths):
            last = i == len(widths) - 1
            if start + (min(column, _TEXT_AT_LEAST) if last else column) > width:
                shown = i
                break
            start += column + 2
    lines = []
    for whole in cells:
        row = whole[:shown]
        padded = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        line = "  ".join(padded).rstrip()
        lines.append(cut(line, width) if width is not None else line)
    return "\n".join(lines)


#: How much of a table's last column (free text) is worth showing cut short.
_TEXT_AT_LEAST = 12


def cut(line: str, width: int) -> str:
    """``line`` within ``width`` characters, ending in "..." if cut (ASCII:
    a terminal in a Latin-1 locale cannot print an ellipsis)."""
    return line if len(line) <= width else line[: max(width - 3, 0)] + "..."


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple)):
        return printable(", ".join(map(str, value))) or "-"
    return printable(str(value))


def endpoint(status: dict[str, Any]) -> str:
    settings = status.get("settings") or {}
    if status.get("kind") == "client":
        address, port = settings.get("address"), settings.get("port")
        return host_port(address, port) if address and port else "-"
    interface = settings.get("interface") or "*"
    if status.get("running"):
        return host_port(interface, status.get("port"))
    return host_port(interface, settings.get("port") or "any")  # port 0: the system picks one at start


def detail(status: dict[str, Any]) -> str:
    if status.get("kind") == "client":
        if status.get("phase") in ("connected", "connecting"):
            return f"id {status['settings'].get('client_id')}"
        return status.get("last_close_reason") or ""
    if status.get("last_error"):
        return str(status["last_error"])
    if not status.get("running"):
        return ""
    clients, detached = status.get("clients") or [], status.get("detached") or []
    return f"{len(clients)} client(s)" + (f", {len(detached)} detached" if detached else "")


def instances(items: list[dict[str, Any]]) -> str:
    if not items:
        # Not "any command creates one": status, send or connect of an
        # instance not there yet is refused, and said to be missing.
        return "no instances yet (client set KEY VALUE, server set KEY VALUE, server start or create makes one)"
    rows = [(i["kind"], i["name"], i["phase"], endpoint(i), detail(i)) for i in items]
    return table(rows, ("KIND", "NAME", "STATE", "ENDPOINT", "DETAIL"))


def status(st: dict[str, Any]) -> str:
    kind, name = st["kind"], st["name"]
    if kind == "client":
        head = f"client {name}: {st['phase']} ({st['state_name']})"
        rows: list[tuple[str, object]] = [(k, setting(k, v)) for k, v in st["settings"].items()]
        rows += [
            ("desired", st["desired"]),
            ("queued", st["queued"]),
            ("last close", st.get("last_close_reason")),
        ]
    else:
        # Where it listens first: with port 0 the settings' port says 0.
        head = f"server {name}: {st['phase']}" + (f" on {endpoint(st)}" if st.get("running") else "")
        rows = [(k, setting(k, v)) for k, v in st["settings"].items()]
        rows += [
            ("listening on", st.get("port") if st.get("running") else None),
            ("desired", st["desired"]),
            ("clients", _some(st.get("clients"), name)),
            ("detached", _some(st.get("detached"), name)),
            ("last error", st.get("last_error")),
        ]
        cluster = st.get("cluster")
        if cluster:
            rows.insert(
                -1, ("cluster node", f"{cluster.get('node')} ({cluster_readiness(cluster)}){_mishaps(cluster)}")
            )
    return head + "\n" + "\n".join("  " + line for line in table(rows).splitlines())


def _mishaps(cluster: dict[str, Any]) -> str:
    """What the node has lived through, when anything: the figures the
    metrics count, where an operator looking at one node reads."""
    said = [f"{n} {what}(s)" for what in ("takeover", "resubscribe") if (n := cluster.get(what + "s"))]
    if twin := cluster.get("same_node_id"):
        said.append(f"ANOTHER NODE RUNS WITH THIS node_id ({twin.get('address') or 'address unknown'})")
    return ", " + ", ".join(said) if said else ""


#: How many client ids a status names before it counts them instead: a
#: server's thousands would bury the rest of the view.
STATUS_IDS = 10


def _some(ids: list[str] | None, name: str) -> object:
    if not ids or len(ids) <= STATUS_IDS:
        return ids or None
    shown = ", ".join(ids[:STATUS_IDS])
    return f"{len(ids)}: {shown}, ... (all: server clients --name {name})"


def setting(key: str, value: object) -> object:
    """A setting as `get` and `status` both show it."""
    if key == "interface" and value in ("", "*"):
        return "* (any)"
    return "''" if value == "" else value


def setting_text(key: str, value: object) -> str:
    """A setting as one line of text, the way ``get`` shows it in its table
    (``set`` echoes it so: an unset value reads ``-`` in both)."""
    return _cell(setting(key, value))


def settings(values: dict[str, Any]) -> str:
    return table([(k, setting(k, v)) for k, v in values.items()])


def daemon_status(st: dict[str, Any]) -> str:
    uptime = int(st.get("uptime", 0))
    rows = [
        ("version", f"{st.get('version')} (API {st.get('api_version')})"),
        ("pid", st.get("pid")),
        ("uptime", f"{uptime // 3600}h {uptime % 3600 // 60}m {uptime % 60}s"),
        ("socket", st.get("socket") or "(embedded in this shell)"),
        ("state dir", st.get("state_dir")),
        *([("metrics", st["metrics"])] if st.get("metrics") else []),
        ("clients", f"{st.get('clients_connected')} of {st.get('clients')} connected"),
        ("servers", f"{st.get('servers_listening')} of {st.get('servers')} listening"),
    ]
    if st.get("embedded"):
        # No daemon: this shell hosts the instances (pid and socket are the shell's own business).
        rows = [r for r in rows if r[0] not in ("pid", "state dir")]
        head = "no mcd is running: this shell hosts its clients and servers until you leave it"
    elif st.get("restoring") is not None:
        left = f"{st['restoring']} to go; " if st["restoring"] else ""  # 0: the state file is being read
        head = f"mcd is running, restoring its saved instances ({left}commands wait for it)"
    else:
        head = "mcd is running"
    return head + "\n" + "\n".join("  " + line for line in table(rows).splitlines())


def event(ev: dict[str, Any]) -> str:
    """One line for an event, e.g. ``12:00:01.234  #5     client/default  connect``."""
    return describe_event(ev)


#: Messages sent and received per second, by row (``top``): kind, name, client id.
Rates = dict[tuple[str, str, str], tuple[float, float]]


def traffic(result: dict[str, Any]) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Messages sent and received so far, by row: what ``top``'s rates are made of."""
    counts = {}
    for entry in result["instances"]:
        st = entry["stats"]
        counts[(entry["kind"], entry["name"], "")] = (st["messages_sent"], st["messages_received"])
        for client_id, cs in (entry.get("clients") or {}).items():
            if cs is not None:
                counts[(entry["kind"], entry["name"], client_id)] = (cs["messages_sent"], cs["messages_received"])
    return counts


def _rate(rates: Rates | None, key: tuple[str, str, str], which: int) -> str:
    if rates is None or key not in rates:
        return ""
    return f"{rates[key][which]:,.0f}"


def stats(
    result: dict[str, Any], rates: Rates | None = None, max_rows: int | None = None, width: int | None = None
) -> str:
    """``stats`` (and each refresh of ``top``, with message rates): one row
    per instance and per client of a named server, the daemon's own figures
    last.  ``max_rows``: at most that many lines between the header and the
    daemon's line (``top`` on a terminal: its screen's height); the busiest
    rows are kept, in their order, and one line says how many are left out.
    Busiest is by message rate, then, among rows as busy (every row on the
    first refresh, which has no rates yet), by messages so far: a server
    with many quiet clients is not the row left out.  ``width``: a terminal's, which
    each line keeps within (``table``)."""
    rows = []
    keys = []
    totals = []
    for entry in result["instances"]:
        st = entry["stats"]
        if entry["kind"] == "client":
            state = "connected" if st["connected"] else "not connected"
            queued = f"{st['queued']}/{st['max_queued']}"
            extra = f"reconnects {st['reconnects']}, resumes {st['resumes']}, resent {st['resent']}"
        else:
            state = f"{st['connected']} connected, {st['detached']} detached" if st["running"] else "stopped"
            queued = ""
            refusals = sum(st["refusals"].values())
            extra = f"refused {refusals}, cut off {st['slow_clients_cut']}"
            if st.get("cluster"):
                extra += f", node {st['cluster'].get('node')} {cluster_readiness(st['cluster'])}"
        if st.get("senders_waiting"):  # an mcd before the figure has none
            extra += f", {st['senders_waiting']} send(s) waiting for room"
        rtt = st.get("rtt_smoothed_ms")
        key = (entry["kind"], entry["name"], "")
        keys.append(key)
        totals.append(st["messages_sent"] + st["messages_received"])
        rows.append(
            (
                entry["kind"],
                entry["name"],
                state,
                st["messages_sent"],
                st["messages_received"],
                *((_rate(rates, key, 0), _rate(rates, key, 1)) if rates is not None else ()),
                queued,
                "" if rtt is None else f"{rtt:.2f}",
                extra,
            )
        )
        for client_id, cs in (entry.get("clients") or {}).items():
            if cs is None:
                continue
            rtt = cs.get("rtt_smoothed_ms")
            key = (entry["kind"], entry["name"], client_id)
            keys.append(key)
            totals.append(cs["messages_sent"] + cs["messages_received"])
            rows.append(
                (
                    "  client",
                    client_id,
                    "connected" if cs["connected"] else "detached",
                    cs["messages_sent"],
                    cs["messages_received"],
                    *((_rate(rates, key, 0), _rate(rates, key, 1)) if rates is not None else ()),
                    f"{cs['queued']}/{cs['max_queued']}",
                    "" if rtt is None else f"{rtt:.2f}",
                    f"resumes {cs['resumes']}, resent {cs['resent']}",
                )
            )
    left_out = 0
    if max_rows is not None and len(rows) > max_rows:
        room = max(max_rows - 1, 1)  # one line says what is left out
        busiest = sorted(range(len(rows)), key=lambda i: (-sum((rates or {}).get(keys[i], (0.0, 0.0))), -totals[i]))[
            :room
        ]
        left_out = len(rows) - room
        rows = [rows[i] for i in sorted(busiest)]
    daemon = result["daemon"]
    rate_columns: tuple[str, ...] = ("SENT/S", "RECV/S") if rates is not None else ()
    header = ("KIND", "NAME", "STATE", "SENT", "RECEIVED", *rate_columns, "QUEUED", "RTT MS", "DETAIL")
    notes = []
    if left_out:
        notes.append(
            f"... and {left_out} quieter row(s) this screen has no room for"
            " (`stats` lists them all; --name or --kind narrows the view)"
        )
    notes.append(
        f"mcd: up {daemon['uptime']:.0f} s, {daemon['event_subscribers']} event subscriber(s),"
        f" {daemon['events_published']} event(s) published, {daemon['events_dropped']} dropped"
    )
    if width is not None:
        notes = [cut(note, width) for note in notes]
    return "\n".join(([table(rows, header, width)] if rows else []) + notes)
