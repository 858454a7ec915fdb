"""The GUI's state and rules in plain Python (no Qt), so they are tested alone.

It holds what the daemon last said about every instance (a snapshot, then
events), decides what the tray shows, which notifications to raise, and
validates what a person types before anything is sent.
"""

from __future__ import annotations

import itertools
import json
import os.path
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mc_control.codes import FILE_KEYS, NAME_MAX, name_problem, strict_json
from mc_control.events import cluster_readiness, describe_event, printable

LOG_LINES = 500
#: Live-figure samples kept per instance: five minutes at one a second.
RATE_SAMPLES = 300
#: Events kept per instance to bring a status read before them up to date:
#: far more than can pass while one request is answered.
RECENT_EVENTS = 1000
#: Notifications of one kind raised at most in ``NOTICE_EVERY`` seconds; the
#: rest are counted and one notification says how many.
NOTICE_VOICES = 3
NOTICE_EVERY = 5.0
#: Instances a notification that counts others names before "and N more".
NOTICE_NAMES = 5


@dataclass
class Notification:
    title: str
    text: str
    critical: bool = False
    #: What happened ("connection lost"), for notifications that many
    #: instances raise at once; "" for those raised one by one.
    kind: str = ""
    #: The instance it is about.
    name: str = ""


@dataclass
class _Held:
    until: float
    raised: int = 0
    names: list[str] = field(default_factory=list)
    critical: bool = False


class Notices:
    """Notifications at a person's pace.  mcd hosting a thousand clients
    whose server went away would raise a thousand popups, and a thousand
    more when it is back: of each kind, the first ``voices`` in ``every``
    seconds are raised, the rest held, and ``flush`` (called when the
    window is over: ``offer`` says when) makes one notification that counts
    and names them.  Notifications without a kind are always raised."""

    def __init__(
        self, every: float = NOTICE_EVERY, voices: int = NOTICE_VOICES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._every = every
        self._voices = voices
        self._clock = clock
        self._kinds: dict[str, _Held] = {}

    def offer(self, notice: Notification) -> tuple[Notification | None, float | None]:
        """The notification to raise now (None: held), and, for the first
        held of a window, in how many seconds to call ``flush``."""
        if not notice.kind:
            return notice, None
        now = self._clock()
        held = self._kinds.get(notice.kind)
        if held is None or (now >= held.until and not held.names):
            held = self._kinds[notice.kind] = _Held(now + self._every)
        if held.raised < self._voices and not held.names:
            held.raised += 1
            return notice, None
        # Held, also past the window's end while its flush has yet to come:
        # that flush counts this one too.
        held.names.append(notice.name)
        held.critical = held.critical or notice.critical
        return None, (max(0.0, held.until - now) if len(held.names) == 1 else None)

    def flush(self) -> list[Notification]:
        """One notification per kind for those held since the last flush."""
        out: list[Notification] = []
        for kind, held in list(self._kinds.items()):
            if not held.names:
                continue
            names = held.names
            shown = ", ".join(names[:NOTICE_NAMES]) + (
                f" and {len(names) - NOTICE_NAMES} more" if len(names) > NOTICE_NAMES else ""
            )
            out.append(Notification(f"{len(names)} more: {kind}", shown, held.critical))
            self._kinds[kind] = _Held(held.until, held.raised)
        return out


@dataclass
class Overall:
    """What the tray icon shows: ``level`` picks the icon, ``text`` the tooltip."""

    level: str  # down, failed, reconnecting, connected, idle
    text: str


@dataclass
class InstanceState:
    kind: str
    name: str
    status: dict[str, Any] = field(default_factory=dict)
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    #: While mcd is not running its last status may no longer be true: the
    #: phase then reads "unknown", never a green "connected" under the banner.
    stale: bool = False
    #: The last live figures (the daemon's ``stats``), and what the rate graph
    #: is drawn from: (seconds, messages sent, messages received) samples.
    figures: dict[str, Any] = field(default_factory=dict)
    samples: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=RATE_SAMPLES))
    #: The daemon has spoken of it (a snapshot, an event, a status): it
    #: exists there, not only as a tab's or the tray's name for it.
    known: bool = False
    #: The events that changed ``status`` since the snapshot (the newest
    #: RECENT_EVENTS), to apply again on top of a status read before them
    #: (``ViewModel.apply_status``); ``forgotten``: the newest event's
    #: ``seq`` let go (or the snapshot's): a status older is not taken.
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    forgotten: int = 0

    def remember(self, ev: dict[str, Any]) -> None:
        if len(self.recent) == self.recent.maxlen:
            self.forgotten = self.recent[0]["seq"]
        self.recent.append(ev)

    def replay_after(self, seq: int) -> None:
        """Apply again, on top of what was read after event ``seq`` (a
        status, the figures), the remembered events newer than it."""
        for ev in self.recent:
            if ev["seq"] > seq:
                _change_status(self.status, ev["event"], ev.get("data") or {})

    def rates(self) -> list[tuple[float, float]]:
        """Messages sent and received per second between samples, oldest first."""
        out = []
        for (t0, s0, r0), (t1, s1, r1) in itertools.pairwise(self.samples):
            span = t1 - t0
            if span > 0:
                out.append((max(0.0, (s1 - s0) / span), max(0.0, (r1 - r0) / span)))
        return out

    @property
    def phase(self) -> str:
        if self.stale:
            return "unknown"
        return str(self.status.get("phase", "unconfigured" if self.kind == "client" else "stopped"))


#: A server's client events: the status lists the client joins, and those it leaves.
_CLIENT_LISTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "clientconnect": (("clients",), ()),
    "clientdisconnect": ((), ("clients", "detached")),
    "clientdetach": (("detached",), ()),
    "clientresume": ((), ("detached",)),
}


class ViewModel:
    def __init__(self) -> None:
        self.daemon_up = False
        #: False until the daemon answered or failed to, once.
        self.daemon_known = False
        self.daemon_message = "connecting to mcd..."
        #: What mcd warns of for as long as it runs (``daemon.status``'s
        #: ``warnings``: problems its start met, saves failing), as last read.
        self.daemon_warnings: tuple[str, ...] = ()
        self.instances: dict[tuple[str, str], InstanceState] = {}

    # -- input from the daemon ---------------------------------------------------

    def set_daemon(self, up: bool, message: str = "") -> None:
        self.daemon_known = True
        self.daemon_up = up
        self.daemon_message = message
        if not up:
            self.daemon_warnings = ()  # that run's; the next one says its own
        # Back up, the events replayed since (or a resync snapshot) bring
        # the statuses up to date from what they were.
        for inst in self.instances.values():
            inst.stale = not up
            if not up:
                # A restarted mcd numbers its events from 1 again.
                inst.recent.clear()
                inst.forgotten = 0

    def set_daemon_status(self, status: dict[str, Any]) -> None:
        """A ``daemon.status`` result: keeps its warnings."""
        self.daemon_warnings = tuple(str(text) for text in status.get("warnings", ()))

    def apply_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Replace everything with the daemon's snapshot (logs are kept)."""
        seen = set()
        for status in snapshot.get("instances", []):
            key = (status["kind"], status["name"])
            seen.add(key)
            inst = self.instance(*key)
            inst.status = dict(status)
            inst.stale = False  # the daemon's word of now
            inst.known = True
            # What came before it is in it: a status read earlier is older.
            inst.recent.clear()
            inst.forgotten = int(status.get("seq", 0))
        for key in list(self.instances):
            if key not in seen:
                del self.instances[key]

    def instance(self, kind: str, name: str) -> InstanceState:
        key = (kind, name)
        if key not in self.instances:
            self.instances[key] = InstanceState(kind, name, {"kind": kind, "name": name}, stale=not self.daemon_up)
        return self.instances[key]

    def first_name(self, kind: str) -> str:
        """The instance a tab shows first: "default", unless the daemon has
        none of that name but has others (made with ``mcctl --name`` or
        restored), whose first is shown instead of an empty "default"."""
        existing = sorted(n for (k, n), inst in self.instances.items() if k == kind and inst.known)
        return "default" if "default" in existing or not existing else existing[0]

    def names(self, kind: str) -> list[str]:
        names = sorted(n for k, n in self.instances if k == kind)
        return names if "default" in names else ["default", *names]

    def apply_stats(
        self,
        kind: str,
        name: str,
        figures: dict[str, Any],
        now: float,
        clients: dict[str, Any] | None = None,
        seq: int | None = None,
    ) -> bool:
        """An instance's live figures, taken at ``now`` (seconds, any clock),
        with a server's per client (``clients``), read after event ``seq``.
        True when they changed its status (which clients are detached)."""
        inst = self.instance(kind, name)
        inst.figures = figures
        changed = False
        cluster = (inst.status.get("settings") or {}).get("cluster")
        if clients is not None and not cluster and (seq is None or seq >= inst.forgotten):
            # A broken connection leaves its session waiting: the
            # clientdetach event says so at once, and the figures, every
            # second, say it too after events were missed.  Figures read
            # before events the model has applied (a resume) get those
            # again on top, as a status does, rather than undo them for a
            # second.  (In a cluster the status, polled, says which clients
            # no node holds.)
            before = inst.status.get("detached", [])
            inst.status["detached"] = [
                client_id for client_id, cs in clients.items() if cs is not None and not cs["connected"]
            ]
            if seq is not None:
                inst.replay_after(seq)
            changed = inst.status["detached"] != before
        if "last_close_reason" in figures:
            # A client retrying in the background changes no state between
            # its attempts, so no event tells why the last one failed (a
            # wrong CA, a refusal): the figures do, every second.
            inst.status["last_close_reason"] = figures["last_close_reason"]
        inst.samples.append((now, int(figures.get("messages_sent", 0)), int(figures.get("messages_received", 0))))
        return changed

    def log_line(self, kind: str, name: str, line: str) -> str:
        """Add a line of the GUI's own (a request's outcome) to an instance's
        log, with what a peer chose in it (a reply, an error's text) escaped
        as in the event lines."""
        line = printable(line)
        self.instance(kind, name).log.append(line)
        return line

    def log_history(self, ev: dict[str, Any]) -> str | None:
        """Log an event from before the snapshot, without applying it."""
        if ev.get("type") != "event" or ev["event"] == "settings":
            return None
        key = (ev["kind"], ev["name"])
        if key not in self.instances:
            return None  # removed since
        line = describe_event(ev)
        self.instances[key].log.append(line)
        return line

    def apply_event(self, ev: dict[str, Any]) -> Notification | None:
        """Update from one event; returns a notification worth a person's attention."""
        if ev.get("type") != "event":
            return None
        kind, name, event = ev["kind"], ev["name"], ev["event"]
        data = ev.get("data") or {}
        if event == "removed":
            self.instances.pop((kind, name), None)
            return None
        inst = self.instance(kind, name)
        inst.stale = False  # the daemon speaks: it is up, and this is news
        inst.known = True
        if event != "settings":
            inst.log.append(describe_event(ev))
        notice = _notice(name, event, data, inst.status.get("phase"))
        if _change_status(inst.status, event, data):
            inst.remember(ev)
        return notice

    def apply_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        """A status a request read (``status``, ``create``, a cluster
        server's poll).  It comes on another connection than the events, so
        it may have been read before some the model has applied already (a
        thousand clients connecting while the answer was on its way): those
        are applied again on top of it rather than undone by it.  A status
        older than what the model can replay is not taken (the events,
        newer, stand); one from an mcd that numbers no statuses is."""
        inst = self.instance(kind, name)
        inst.known = True
        seq = status.get("seq")
        if seq is None:
            inst.status.update(status)
            return
        if seq < inst.forgotten:
            return
        inst.status.update(status)
        inst.replay_after(seq)

    # -- what to show --------------------------------------------------------------

    def overall(self) -> Overall:
        if not self.daemon_up:
            return Overall("down", f"MissionCommander: mcd is not running ({self.daemon_message})")
        clients = [i for (k, _), i in self.instances.items() if k == "client"]
        servers = [i for (k, _), i in self.instances.items() if k == "server"]
        connected = sum(1 for c in clients if c.phase == "connected")
        listening = sum(1 for s in servers if s.phase == "listening")
        summary = (
            f"{connected} of {len(clients)} client(s) connected, {listening} of {len(servers)} server(s) listening"
        )
        if any(c.phase == "failed" for c in clients):
            failed = ", ".join(c.name for c in clients if c.phase == "failed")
            return Overall("failed", f"MissionCommander: {failed} failed. {summary}")
        if any(c.phase in ("reconnecting", "connecting") for c in clients):
            return Overall("reconnecting", f"MissionCommander: (re)connecting. {summary}")
        if connected or listening:
            return Overall("connected", f"MissionCommander: {summary}")
        return Overall("idle", f"MissionCommander: idle. {summary}")


def _notice(name: str, event: str, data: dict[str, Any], phase: Any) -> Notification | None:
    """What an event is worth telling a person, given the phase before it."""
    if event == "statechange":
        if data["phase"] == "reconnecting" and phase == "connected":
            why = data.get("reason") or "the connection broke"
            return Notification(f"{name}: connection lost", f"Reconnecting: {why}", True, "connection lost", name)
        if data["phase"] == "failed":
            why = str(data.get("reason") or "")
            return Notification(f"{name}: connection failed", why, True, "connection failed", name)
    elif event == "reconnect":
        return Notification(
            f"{name}: reconnected", f"Client {data.get('client_id')} is connected again", False, "reconnected", name
        )
    elif event == "servershutdown":
        return Notification(
            f"{name}: server shut down", "The server announced its shutdown", True, "server shut down", name
        )
    return None


def _change_status(st: dict[str, Any], event: str, data: dict[str, Any]) -> bool:
    """Apply what an event says to an instance's status; False when it says
    nothing about it (a message, a connect...)."""
    if event == "statechange":
        st.update(state=data["new"], state_name=data["new_name"], phase=data["phase"])
        st["connected"] = data["phase"] == "connected"
        if data.get("reason"):
            st["last_close_reason"] = data["reason"]
    elif event == "settings":
        st["settings"] = dict(data)
    elif event == "started":
        st.update(phase="listening", running=True, port=data.get("port"), last_error=None)
        st.setdefault("clients", [])
    elif event == "stopped":
        st.update(phase="stopped", running=False, port=None, clients=[])
    elif event in _CLIENT_LISTS:
        # Which of a server's lists (clients, detached) the client joins or leaves.
        joins, leaves = _CLIENT_LISTS[event]
        client_id = data["client_id"]
        for key in leaves:
            st[key] = [c for c in st.get(key) or [] if c != client_id]
        for key in joins:
            listed = st.get(key) or []
            st[key] = listed if client_id in listed else [*listed, client_id]
    else:
        return False
    return True


# -- validation: (value, error) pairs; error is None when the value is good ------


#: What a field at fault in a refused start says (``bind_fault``).
BIND_FAULTS = {
    "port": "taken: another server listens on this port (0 picks a free one)",
    "interface": "no address of this machine (127.0.0.1: this machine only)",
}


def check_port(text: str, allow_zero: bool = False) -> tuple[int | None, str | None]:
    text = text.strip()
    if not text:
        return None, "a port is needed"
    if not text.isdigit():
        return None, "the port must be a number"
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        return None, f"the port must be from {low} to 65535"
    return port, None


def check_optional_port(text: str) -> tuple[int | None, str | None]:
    if not text.strip():
        return None, None
    return check_port(text, allow_zero=True)


def check_address(text: str) -> tuple[str | None, str | None]:
    text = text.strip()
    if not text:
        return None, "an address is needed (a host name or an IP address)"
    if any(c.isspace() for c in text):
        return None, "an address has no spaces"
    return text, None


def check_client_id(text: str) -> tuple[str | None, str | None]:
    """Empty is fine: the daemon keeps the random id it gave the instance."""
    if not text.strip():
        return None, None
    if any(ord(c) < 32 for c in text):
        return None, "a client id has no control characters"
    return text, None


def check_subject(text: str) -> tuple[str | None, str | None]:
    return (text, None) if text.strip() else (None, "a subject is needed")


def check_payload(text: str) -> tuple[dict[str, Any] | None, str | None]:
    if not text.strip():
        return {}, None
    try:
        value = strict_json(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    except ValueError as exc:  # NaN, Infinity, 1e400
        return None, str(exc)
    if not isinstance(value, dict):
        return None, "the payload must be a JSON object: {...}"
    return value, None


def check_instance_name(text: str) -> tuple[str | None, str | None]:
    text = text.strip()
    if not text:
        return None, "a name is needed"
    if name_problem(text):
        # The daemon's rule, said short enough for the line beside the picker.
        return None, f"A-Z a-z 0-9 _ . - only, starting with a letter or digit ({NAME_MAX} at most)"
    return text, None


def new_client_id() -> str:
    return uuid.uuid4().hex


def check_tuning(key: str, kind: str, text: str, optional: bool) -> tuple[Any, str | None]:
    """A limit or timer as typed: ``kind`` is its type in ``mc_control.codes``
    (int, float, bool, secrets); empty is none (no limit, off) where ``optional``."""
    text = text.strip()
    if not text or text.lower() == "none":
        if optional:
            return None, None
        return None, "a value is needed"
    if kind == "bool":
        if text.lower() in ("true", "yes", "on", "1"):
            return True, None
        if text.lower() in ("false", "no", "off", "0"):
            return False, None
        return None, "true or false"
    if kind == "secrets":
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return None, 'a JSON object of client id to token: {"id": "secret"}'
        return value, None
    try:
        number: int | float = int(text) if kind == "int" else float(text)
    except ValueError:
        return None, "a whole number" if kind == "int" else "a number"
    if number - number:  # 'nan', 'inf', '1e400': JSON cannot carry them to mcd
        return None, "a finite number"
    if number <= 0:
        return None, f"{key} must be more than 0"
    return number, None


def shown_tuning(value: Any) -> str:
    """A limit or timer's value as its field shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe_reply(subject: str, to: str, result: dict[str, Any]) -> str:
    """A request's reply as its log line."""
    reply = result["reply"]
    return f"reply from {to} to {subject}: {reply['subject']} {json.dumps(reply['payload'], ensure_ascii=False)}"


def describe_request_failure(subject: str, to: str, code: str, message: str) -> str:
    """A request that got no reply, as its log line: what happened, in words."""
    what = {
        "timeout": "no reply in time",
        "no_responder": "nobody answers requests there",
        "remote_error": "the responder failed",
        "session_lost": "the session ended first",
    }.get(code, "not sent")
    if code == "remote_error":
        message = message.removeprefix("the responder raised ")  # said already, in other words
    return f"request {subject} to {to}: {what} ({message})"


def describe_figures(kind: str, figures: dict[str, Any], rates: list[tuple[float, float]]) -> str:
    """The live figures worth a glance, on one line (docs/STATS.md has them all)."""
    if not figures:
        return "no figures yet"
    sent_rate, received_rate = rates[-1] if rates else (0.0, 0.0)
    parts = [
        f"sent {figures['messages_sent']:,} ({sent_rate:,.0f}/s)",
        f"received {figures['messages_received']:,} ({received_rate:,.0f}/s)",
    ]
    if kind == "client":
        parts.append(f"queued {figures['queued']:,} of {figures['max_queued']:,}")
        rtt = figures.get("rtt_smoothed_ms")
        parts.append("round trip " + ("-" if rtt is None else f"{rtt:.1f} ms"))
        parts.append(f"reconnects {figures['reconnects']}, resent {figures['resent']}")
    else:
        parts.append(f"clients {figures['connected']} connected, {figures['detached']} detached")
        parts.append(f"refused {sum(figures['refusals'].values())}, cut off {figures['slow_clients_cut']}")
        if figures.get("cluster"):
            parts.append(f"cluster node {figures['cluster'].get('node')}: {cluster_readiness(figures['cluster'])}")
    if figures.get("senders_waiting"):  # a send that seems stuck says why
        parts.append(f"{figures['senders_waiting']} send(s) waiting for room")
    return " · ".join(parts)


def setting_text(key: str, text: str) -> str | None:
    """A text field's value for mcd: None when empty; for a file (mcd takes
    absolute paths only) with ``~`` expanded."""
    text = text.strip()
    if not text:
        return None
    return os.path.expanduser(text) if key in FILE_KEYS else text
