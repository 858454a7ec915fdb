"""Running an ``Invocation`` against a daemon (or the shell's embedded core)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence

from mc_control import API_VERSION, EXIT_CODES, ControlError, DaemonUnreachable, ErrorCode
from mc_control.codes import DEFAULT_WAITS, bind_fault, name_option
from mc_control.events import json_line, printable

from . import __version__, output
from .grammar import Invocation

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4


# The one-shot path imports no typing at run time (start-up time): the
# protocols are for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Protocol

    from mc_control import ControlClient

    class Transport(Protocol):
        """What mcctl needs of a daemon: ControlClient, or the embedded core."""

        def request(self, cmd: str, **params: Any) -> dict[str, Any]: ...

        def subscribe(self, **params: Any) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]: ...

        stream_timeout: float | None

    class TextOut(Protocol):
        def write(self, text: str, /) -> int: ...

        def flush(self) -> None: ...


class OutputError(Exception):
    """Standard output could not be written: a full disk, say."""


class Printer:
    """Where results go: human text, or ``--json`` (one JSON value per line)."""

    def __init__(
        self,
        as_json: bool,
        out: TextOut | None = None,
        err: TextOut | None = None,
        in_shell: bool = False,
        said: Sequence[str] = (),
    ) -> None:
        self.as_json = as_json
        #: Warnings shown already (the shell's hosted instances' log lines):
        #: a warning in a result that one of them contains is not repeated.
        self.said = said
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        #: How errors and warnings start: "mcctl: " on the command line, "error: " in the shell.
        self.error_prefix = "error: " if in_shell else "mcctl: "
        self.warning_prefix = "warning: " if in_shell else "mcctl: warning: "
        #: What a command is typed as, for hints: "mcctl client ..." or, in the shell, "client ...".
        self.command_prefix = "" if in_shell else "mcctl "

    def result(self, human: str, data: Any) -> None:
        if self.as_json:
            self.json(data)
        elif human:
            self.line(human)

    def json(self, data: Any) -> None:
        """Print ``data`` as one line of JSON (``json_line``: valid JSON, and
        safe on a terminal: ``printable`` would make it invalid)."""
        self._out(json_line(data))

    def line(self, text: str, clear: bool = False) -> None:
        """Print ``text`` (its control characters escaped: see ``printable``),
        after clearing the screen with ``clear`` (`top`'s refresh)."""
        self._out(("\x1b[H\x1b[2J" if clear else "") + printable(text, lines=True))

    def _out(self, text: str) -> None:
        try:
            print(text, file=self.out, flush=True)
        except BrokenPipeError:
            raise  # the reader left (`mcctl events | head`): not an error
        except OSError as exc:
            raise OutputError(exc.strerror or str(exc)) from exc

    def error(self, code: str, message: str, details: Any = None, hint: str = "") -> None:
        if self.as_json:
            error = {"code": code, "message": message, "details": details}
            if hint:
                error["hint"] = hint
            self.json({"error": error})
        else:
            print(printable(f"{self.error_prefix}{message}", lines=True), file=self.err, flush=True)
            if hint:
                print(printable(f"  fix: {hint}", lines=True), file=self.err, flush=True)

    def warning(self, message: str) -> None:
        """A warning in human output (``--json`` output carries them in the result)."""
        if not self.as_json and not any(message in text for text in self.said):
            print(printable(f"{self.warning_prefix}{message}", lines=True), file=self.err, flush=True)

    def unreachable(self, exc: DaemonUnreachable) -> int:
        self.error(f"daemon_{exc.kind}", exc.message, {"socket": str(exc.path)}, exc.hint)
        return EXIT_UNREACHABLE


def render(inv: Invocation, result: dict[str, Any]) -> str:
    """The human form of a command's result."""
    cmd = inv.cmd or ""
    verb = cmd.split(".", 1)[-1]
    name = inv.params.get("name", "default")
    if cmd == "list":
        return output.instances(result["instances"])
    if cmd == "stats":
        return output.stats(result)
    if cmd == "daemon.status":
        return output.daemon_status(result)
    if cmd == "daemon.shutdown":
        return "mcd is stopping"
    if verb in ("status", "create"):
        return output.status(result)
    if verb == "set":
        key = inv.params["key"]
        shown = output.setting_text(key, result["settings"].get(key))
        again = " (it was connecting: it starts again with it)" if result.get("restarted") else ""
        return f"{cmd.split('.')[0]} {name}: {key} = {shown}{again}"
    if verb == "get":
        return output.settings(result["settings"])
    if cmd == "client.connect":
        where = output.endpoint(result)
        return f"client {name}: {result['phase']} ({where})"
    if verb in ("disconnect", "start", "stop"):
        extra = f" on port {result['port']}" if verb == "start" else ""
        return f"{cmd.split('.')[0]} {name}: {result['phase']}{extra}"
    if verb == "send":
        if cmd == "server.send":
            to = result.get("to")
            return f"sent to {'all ' + str(result.get('clients')) + ' client(s)' if to == '*' else to}"
        return "sent" + (f" ({result['queued']} awaiting acknowledgement)" if result.get("queued") else "")
    if verb == "request":
        reply = result["reply"]
        return f"{printable(reply['subject'])} {json.dumps(reply['payload'], ensure_ascii=False)}"
    if verb == "clients":
        nodes = result.get("nodes") or {}
        if any(nodes.values()):  # a cluster: say which node holds each
            rows = [(client_id, nodes.get(client_id) or "(between nodes)") for client_id in result["clients"]]
            return output.table(rows, ("CLIENT", "NODE"))
        detached = set(result.get("detached") or ())
        if detached:  # say which may still resume
            rows = [(c, "detached (may resume)" if c in detached else "connected") for c in result["clients"]]
            return output.table(rows, ("CLIENT", "STATE"))
        return "\n".join(result["clients"]) or "(no clients connected)"
    if verb == "kick":
        return f"kicked {result['kicked']}: its session ended (the client does not reconnect by itself)"
    if verb == "remove":
        return f"{cmd.split('.')[0]} {name} removed"
    return json.dumps(result, indent=2)


def answer_timeout(inv: Invocation, default: float) -> float:
    """How long to wait for mcd's answer to ``inv``: ``--timeout`` or
    ``default``; a command that waits in the daemon (``connect --wait``, a
    request, a send into a full queue: its ``timeout``, or mcd's default
    wait) takes that wait and then some, so that mcd's answer (a timeout
    naming the last attempt, the reply, ``queue_full``) comes first."""
    waits = inv.params.get("timeout", DEFAULT_WAITS.get(inv.cmd or ""))
    if waits is not None:
        return float(waits) + 5.0
    return inv.options.timeout or default


def run_request(inv: Invocation, transport: Transport, printer: Printer) -> int:
    assert inv.cmd is not None
    try:
        result = transport.request(inv.cmd, **inv.params)
    except ControlError as exc:
        status = EXIT_CODES.get(exc.code, EXIT_FAILED)
        hint = ""
        topic, _, verb = inv.cmd.partition(".")
        # Point to the keys where a key or value was at fault; other refusals
        # (a bad name, a payload JSON cannot carry) say all in their message.
        if inv.cmd == "client.set" and inv.params.get("key") == "port" and inv.params.get("value") == 0:
            # The server's 0 means "pick one"; a client needs the one picked.
            hint = (
                "a client connects to the port its server listens on;"
                f" `{printer.command_prefix}server status` says a hosted server's (listening on)"
            )
        elif status == EXIT_USAGE and topic in ("client", "server") and verb in ("set", "get"):
            hint = f"`{printer.command_prefix}help {topic}` lists the keys" + (
                " and their values" if verb == "set" else ""
            )
        elif exc.code == ErrorCode.UNKNOWN_COMMAND:
            hint = f"`{printer.command_prefix}help` lists the commands"
        elif exc.code == ErrorCode.BIND_FAILED and bind_fault(exc.details) == "port":
            named = name_option(inv.params.get("name", "default"))
            hint = (
                "another server listens on that port (one of this mcd's: "
                f"`{printer.command_prefix}list`; or another program's: `ss -ltnp`);"
                f" `{printer.command_prefix}server set port 0{named}` picks a free one"
            )
        elif exc.code == ErrorCode.BIND_FAILED and bind_fault(exc.details) == "interface":
            named = name_option(inv.params.get("name", "default"))
            hint = (
                "the interface is no address of this machine (`ip -brief address` lists them);"
                f" `{printer.command_prefix}server set interface 127.0.0.1{named}` listens on this"
                " machine only"
            )
        elif exc.code == ErrorCode.NO_RESPONDER:
            # The likeliest peer in a first try is another instance of the
            # same mcd, which can never answer: say so, and what can.
            hint = (
                "instances hosted in mcd run no code of yours, so they cannot answer; a library"
                " Client or Server with a `request` callback can (docs/CONTROL_API.md)"
            )
        message = exc.message
        if verb == "set" and not printer.as_json:
            # The library names its "unset" value in Python's word, where
            # the one to type here is mcctl's: `set max_clients none`.
            message = message.replace("(None: ", "(none: ")
        printer.error(exc.code, message, exc.details, hint)
        return status
    printer.result(render(inv, result), result)
    for warning in result.get("warnings", ()):
        printer.warning(warning)
    if inv.cmd == "list" and not result["instances"] and not printer.as_json:
        # An mcd with nothing may be one that moved a broken state file
        # aside at start: say so where a user looks first, not only in
        # `daemon status` (--json readers ask `daemon status` themselves).
        for warning in daemon_warnings(transport):
            printer.warning(warning)
    return EXIT_OK


def daemon_warnings(transport: Transport) -> list[str]:
    """What mcd warns of for as long as it runs (``daemon.status``); none
    if it cannot say."""
    try:
        return [str(text) for text in transport.request("daemon.status").get("warnings", ())]
    except (ControlError, DaemonUnreachable):
        return []


#: Seconds between ``top``'s refreshes.
TOP_INTERVAL = 1.0


def run_top(inv: Invocation, transport: Transport, printer: Printer) -> int:
    """``stats`` again every second, with message rates, refreshed in place
    on a terminal (one JSON object per refresh with ``--json``); until
    Ctrl-C, or ``--count`` refreshes."""
    count = inv.options.count
    # In place on a terminal, as top(1); the shell's lines go below each
    # other (events print between them): its stream has no isatty().
    clear = not printer.as_json and printer.out.isatty() if hasattr(printer.out, "isatty") else False
    before: dict[tuple[str, str, str], tuple[int, int]] | None = None
    taken = 0.0
    shown = 0
    while count is None or shown < count:
        if shown:
            time.sleep(TOP_INTERVAL)  # a live view for people: the pace is the point
        try:
            result = transport.request("stats", **inv.params)
        except ControlError as exc:
            printer.error(exc.code, exc.message, exc.details)
            return EXIT_CODES.get(exc.code, EXIT_FAILED)
        now = time.monotonic()
        counts = output.traffic(result)
        rates: output.Rates = {}
        if before is not None and now > taken:
            span = now - taken
            for key, (sent, received) in counts.items():
                if key in before:
                    rates[key] = ((sent - before[key][0]) / span, (received - before[key][1]) / span)
        before, taken = counts, now
        if printer.as_json:
            result["rates"] = [
                {"kind": k, "name": n, "client_id": c or None, "sent_per_s": s, "received_per_s": r}
                for (k, n, c), (s, r) in rates.items()
            ]
            printer.result("", result)
        else:
            size = _terminal_size(printer.out)
            # On a terminal each row keeps within its width (a row that
            # wrapped would push the table apart); a screen refreshed in
            # place shows as many rows as it has room for (the header, the
            # daemon's line and the cursor's take three).  `stats` prints
            # every row whole.
            text = output.stats(
                result,
                rates,
                max_rows=size.lines - 3 if size and clear else None,
                width=size.columns if size else None,
            )
            printer.line(text, clear=clear)
        shown += 1
    return EXIT_OK


def _terminal_size(out: Any) -> os.terminal_size | None:
    """The size of the terminal ``out`` writes to, read at each refresh (it
    may be resized); None when it cannot say."""
    try:
        size = os.get_terminal_size(out.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return size if size.columns > 0 and size.lines > 3 else None


def run_version(hello: Callable[[], dict[str, Any]] | None, printer: Printer) -> int:
    """Print both versions; ``hello`` asks the daemon (or raises
    DaemonUnreachable).  Without it (``--version``) mcctl's alone, mcd not
    asked, as ``docker --version`` against ``docker version``."""
    mine = {"version": __version__, "api_version": API_VERSION}
    if hello is None:
        printer.result(f"mcctl {__version__} (API {API_VERSION})", {"mcctl": mine})
        return EXIT_OK
    try:
        theirs = hello()
    except DaemonUnreachable as exc:
        printer.result(f"mcctl {__version__} (API {API_VERSION})", {"mcctl": mine, "mcd": None})
        return printer.unreachable(exc)
    data = {"mcctl": mine, "mcd": {"version": theirs["version"], "api_version": theirs["api_version"]}}
    human = f"mcctl {__version__} (API {API_VERSION})\nmcd   {theirs['version']} (API {theirs['api_version']})"
    printer.result(human, data)
    if theirs["api_version"] != API_VERSION:
        printer.warning(
            f"mcctl speaks API {API_VERSION} but mcd speaks API {theirs['api_version']}; upgrade the older one"
        )
    return EXIT_OK


#: How long ``daemon wait`` waits unless told (--timeout).
DAEMON_WAIT = 10.0
#: How often ``daemon wait`` looks again for a daemon that is not there yet.
DAEMON_POLL = 0.05
#: What ``daemon wait`` waits through: a daemon that has not made its socket
#: yet, or whose socket is an old one it is about to replace.  Anything else
#: (a socket that is not ours, a path that is not a socket) will not change
#: by waiting.
_NOT_YET = ("missing", "stale", "closed", "timeout")


def run_daemon_wait(connect: Callable[[float], ControlClient], timeout: float, printer: Printer, path: str) -> int:
    """Block until mcd answers ``hello`` (``connect(t)`` opens a connection
    waiting ``t`` seconds for answers), at most ``timeout`` seconds: for a
    script that starts mcd in the background (``mcd & mcctl daemon wait``),
    which would otherwise find no socket for the fraction of a second mcd
    takes to start."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with connect(max(0.05, left)) as client:
                hello = client.request("hello")
        except DaemonUnreachable as exc:
            if exc.kind not in _NOT_YET:
                return printer.unreachable(exc)
            if time.monotonic() + DAEMON_POLL >= deadline:
                printer.error(
                    "timeout",
                    f"mcd did not answer at {path} within {timeout:g} s (last: {exc.message})",
                    {"socket": path},
                    "is mcd starting? its log says why it is not (or raise --timeout)",
                )
                return EXIT_TIMEOUT
            time.sleep(DAEMON_POLL)
            continue
        printer.result(
            f"mcd {hello['version']} is up (pid {hello['pid']}, {path})",
            {"version": hello["version"], "pid": hello["pid"], "socket": path},
        )
        return EXIT_OK


def run_events(inv: Invocation, transport: ControlClient, printer: Printer) -> int:
    """Print mcd's events until interrupted.  A reader that falls behind (its
    terminal or pipe slower than a flood of messages) is cut off by mcd,
    which never waits for it: it subscribes again after the last event it
    printed and catches up from mcd's ring, so nothing it could still get
    is missed; what left the ring meanwhile is said on standard error."""
    opts = inv.options
    params: dict[str, Any] = {}
    if opts.name_given:
        kinds = [opts.kind] if opts.kind else ["client", "server"]
        params["instances"] = [{"kind": k, "name": opts.name} for k in kinds]
    since = None
    if opts.since is not None:
        status = transport.request("daemon.status")
        since = {"boot_id": status["boot_id"], "seq": opts.since}
        first = int(status.get("first_seq", 1))
        if opts.since < first - 1 <= status["last_seq"]:
            # What is still kept is replayed; before, none of it was.
            print(
                f"mcctl: events #{opts.since + 1} to #{first - 1} are no longer kept (mcd --event-ring keeps more);"
                f" replaying from #{first}",
                file=printer.err,
                flush=True,
            )
            since["seq"] = first - 1
    try:
        answer, events = transport.subscribe(**params, **({"since": since} if since else {}))
    except ControlError as exc:
        printer.error(exc.code, exc.message, exc.details)
        return EXIT_CODES.get(exc.code, EXIT_FAILED)
    if answer.get("resync"):
        assert since is not None
        why = (
            f"mcd has had no event #{since['seq']} yet (its last is #{answer['seq']}: the number is from before it"
            " restarted?)"
            if since["seq"] > answer["seq"]
            else f"events after #{since['seq']} are no longer kept"
        )
        print(f"mcctl: {why}; showing the current state and live events", file=printer.err)
    if not printer.as_json:
        printer.line(f"watching events (boot {answer['boot_id'][:8]}, last #{answer['seq']}); Ctrl-C stops")
    boot, last = answer["boot_id"], answer["seq"]
    while True:
        cut_off, before = False, last
        for ev in events:
            if ev.get("type") == "overflow":
                cut_off = True
                if printer.as_json:
                    printer.json(ev)
                else:
                    printer.line(f"!! this reader fell behind mcd's events; catching up after #{last}")
                break
            last = ev.get("seq", last)
            if opts.kind and ev.get("kind") not in (None, opts.kind):
                continue
            printer.result(output.event(ev), ev)
        # Cut off (with mcd's notice, or without it when this reader's socket
        # was full, so events had come) or mcd stopped: only the same mcd
        # run can carry on, and a stream that ended with nothing was mcd's end.
        transport.close()
        answer = {"boot_id": None}
        if cut_off or last != before:
            try:
                answer, events = transport.subscribe(**params, since={"boot_id": boot, "seq": last})
            except (DaemonUnreachable, ControlError):
                pass
        if answer["boot_id"] != boot:
            transport.close()
            printer.error("daemon_closed", "mcd closed the event stream (it stopped?)")
            return EXIT_UNREACHABLE
        if answer.get("resync"):
            print(
                f"mcctl: events #{last + 1} to #{answer['seq']} left mcd's ring before this reader caught up"
                " (mcd --event-ring keeps more); live events from here",
                file=printer.err,
                flush=True,
            )
        last = answer["seq"] if answer.get("resync") else last


def phase_of(status: dict[str, Any]) -> str:
    return str(status["phase"])


def run_wait(inv: Invocation, transport: Transport, printer: Printer) -> int:
    """Subscribe first (the snapshot comes atomically with the stream), then
    watch the events: no transition can fall between the check and the wait."""
    kind, name, state = inv.params["kind"], inv.params["name"], inv.params["state"]
    timeout = inv.options.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    answer, events = transport.subscribe(
        instances=[{"kind": kind, "name": name}], events=["statechange", "started", "stopped", "created", "removed"]
    )
    current = next(
        (phase_of(i) for i in answer["snapshot"]["instances"] if i["kind"] == kind and i["name"] == name), None
    )
    try:
        while current != state:
            if deadline is not None:
                if time.monotonic() >= deadline:
                    break
                transport.stream_timeout = max(0.001, deadline - time.monotonic())
            current = _phase_after(next(events), current)
    except DaemonUnreachable as exc:
        if exc.kind != "timeout":
            raise
    except StopIteration:
        printer.error("daemon_closed", "mcd closed the event stream (it stopped?)")
        return EXIT_UNREACHABLE
    finally:
        transport.stream_timeout = None
    if current != state:
        printer.error(
            "timeout", f"{kind} {name} is {current or 'absent'}, not {state}, after {timeout:g} s", {"phase": current}
        )
        return EXIT_TIMEOUT
    printer.result(f"{kind} {name}: {state}", {"kind": kind, "name": name, "phase": state})
    return EXIT_OK


def _phase_after(ev: dict[str, Any], current: str | None) -> str | None:
    name = ev.get("event")
    if name == "statechange":
        return str(ev["data"]["phase"])
    if name == "started":
        return "listening"
    if name == "stopped":
        return "stopped"
    if name == "created":
        return "unconfigured" if ev.get("kind") == "client" else "stopped"
    if name == "removed":
        return None
    return current
