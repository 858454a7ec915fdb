"""``mcctl``: one-shot commands over the mcd control socket, or the shell."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

from mc_control import ControlClient, DaemonUnreachable, default_socket_path

from .commands import (
    DAEMON_WAIT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    OutputError,
    Printer,
    answer_timeout,
    run_daemon_wait,
    run_events,
    run_request,
    run_top,
    run_version,
    run_wait,
)
from .grammar import Invocation, UsageError, parse

HELP = """\
usage: mcctl [OPTIONS] COMMAND ...      (no COMMAND on a terminal: the shell)

Drive mcd, the MissionCommander daemon, over its control socket.

client commands (on the client instance --name, default "default"):
  client set KEY VALUE          KEY: address, port, client_id, interface, bind_port,
                                tls (true/false), tls_ca, tls_verify, tls_cert, tls_key,
                                tls_hostname, auth_token, servers (none or - unsets one);
                                limits and timers: `mcctl help client`
  client get [KEY]
  client connect [--wait | --no-wait] [--timeout S]
  client disconnect | status | create | remove
  client send SUBJECT [JSON] [--timeout S]   e.g. client send echo '{"message": "hello"}'
  client request SUBJECT [JSON] [--timeout S]   ask the server and print its reply
server commands (on the server instance --name):
  server set KEY VALUE          KEY: interface, port, tls_cert, tls_key, tls_ca, auth_token,
                                cluster, node_id;
                                limits and timers: `mcctl help server`
  server get [KEY]
  server start | stop | status | clients | create | remove
  server send [--to CLIENT_ID] SUBJECT [JSON] [--timeout S]   (all clients without --to)
  server request --to CLIENT_ID SUBJECT [JSON] [--timeout S]
  server kick CLIENT_ID [REASON]
  JSON is one object ({...}, no NaN); - reads it from standard input (up to 1 MiB)
other commands:
  list                          every instance and its state
  stats [--name NAME] [--kind K] live figures: traffic, queues, resends, round trips (docs/STATS.md)
  top [--name NAME] [--kind K] [--count N]   the same, refreshed every second with message rates
  events (or watch)             live events; --since N replays after #N; --json for JSON lines
  wait [client|server] [--name N] STATE   block until an instance is in STATE
                                (client: connected, disconnected, connecting, reconnecting,
                                failed, unconfigured; server: listening, stopped)
  daemon status | stop | wait   mcd's status; stop it; wait until it answers (after `mcd &`)
  version                       mcctl's and mcd's versions (--version: mcctl's alone)
  shell                         the interactive shell (also: python3 -m missioncommander cli)
  completion bash|zsh           print a shell completion script
  help [TOPIC]                  TOPIC: client, server, events, stats, wait, daemon

options (before or after the command words):
  --json            machine output: one JSON object per result (errors: {"error": {...}})
  --socket PATH     control socket (default: $MC_SOCKET, else $XDG_RUNTIME_DIR/missioncommander/mcd.sock)
  --timeout S       seconds to wait for the daemon (connect, wait, request: for the outcome; send: for
                    room in a full queue; default 10; at most an hour for connect, request and send,
                    a day for the rest)
  --name NAME       instance name; naming a new one creates it

exit status:
  0  success
  1  the daemon refused or the command failed
  2  usage error (bad command, key, value or JSON; nothing was sent)
  3  the daemon is not reachable (not running, stale socket, permission, no answer)
  4  timeout (connect, wait, request, daemon wait)
"""

CLIENT_HELP = """\
client commands (add --name NAME for an instance other than "default"):
  client set KEY VALUE     set address, port, client_id, interface ('' or '*' for any), bind_port;
                           security: tls true|false, tls_ca FILE, tls_verify true|false,
                           tls_cert FILE, tls_key FILE, tls_hostname NAME, auth_token SECRET;
                           servers HOST:PORT,HOST:PORT or '["HOST:PORT", ...]' (a cluster's nodes,
                           tried in turn);
                           limits and timers (as the library's Client; seconds, counts, bytes):
                           connect_timeout, reconnect_delay, reconnect_max_delay,
                           reconnect_attempts (none: forever), heartbeat_interval,
                           heartbeat_timeout, max_frame_size, max_queued, max_queued_bytes,
                           send_timeout, max_inbound, max_inbound_bytes, inline_callbacks,
                           max_requests, reconnect_on_shutdown (true: keep trying when the
                           server shuts down, as after a crash); reply_tracebacks and
                           concurrent_requests are taken but do nothing here (mcd's
                           instances answer no requests)
  client get [KEY]         show one setting or all
  client connect           connect, and say how the first attempt went (exit 1 if it failed;
                           the client keeps retrying in the background until it connects)
  client connect --wait [--timeout S]   ... return once connected, through retries (exit 4 on timeout)
  client connect --no-wait              ... return at once (mcd keeps trying in the background)
  client disconnect        disconnect cleanly (ends the session)
  client status            state, settings and the last close reason
  client send SUBJECT [JSON] [--timeout S]   send a message to the server; a full queue
                                        holds it up to S (default 10, at most send_timeout)
  client request SUBJECT [JSON] [--timeout S]   ask the server; prints its reply (exit 4 on timeout)
  client create | remove   create or delete the instance
"""

SERVER_HELP = """\
server commands (add --name NAME for an instance other than "default"):
  server set KEY VALUE     set interface ('' or '*' for all, an IP, localhost, or a name like
                           lo) or port;
                           security: tls_cert FILE, tls_key FILE, tls_ca FILE (require client
                           certificates), auth_token SECRET, auth_tokens '{"ID": "SECRET"}'
                           (the tokens may change while listening: from the next handshake);
                           cluster REDIS_URL (act as one server with the other nodes on it),
                           node_id NAME, lease_ttl SECONDS (docs/CLUSTER.md);
                           limits and timers (as the library's Server; seconds, counts, bytes):
                           handshake_timeout, heartbeat_interval, heartbeat_timeout,
                           max_frame_size, max_clients (none: no limit), session_expiry,
                           max_queued, max_queued_bytes, max_pending_bytes,
                           max_connection_rate (per second; none: off), max_inbound,
                           max_inbound_bytes, max_inbound_total_bytes, inline_callbacks,
                           max_requests; reply_tracebacks and concurrent_requests are taken
                           but do nothing here (mcd's instances answer no requests)
  server get [KEY]         show one setting or all
  server start | stop      listen, or announce shutdown to every client and stop
  server status            state, settings and connected clients
  server clients           the ids of its clients, and which are detached (their connection
                           broke; they may resume); in a cluster, with each one's node
  server send [--to ID] SUBJECT [JSON] [--timeout S]   broadcast, or send to one client; with
                                        S, a full queue holds it up to S (without: refused at once)
  server request --to ID SUBJECT [JSON] [--timeout S]   ask one client; prints its reply
  server kick CLIENT_ID [REASON]        disconnect a client (it does not reconnect)
  server create | remove   create or delete the instance
"""


EVENTS_HELP = """\
events [--since N] [--name NAME] [--kind client|server] [--json]   (also: watch)
  Print what happens in mcd as it happens, one line per event, until Ctrl-C:
    20:02:32.457  #11    client/default  state connected  (STATE_OK | STATE_RUNNING | STATE_CONNECTED)
    20:02:32.505  #13    client/default  message: hi {"a": 1}
  Each event has a number (#N) that goes up by one for as long as mcd runs.
  --since N         first replay the events after #N that mcd still keeps (the last
                    10,000 by default; when #N is gone: a note of what is, then the rest)
  --name NAME       only that instance's events (--kind: only the client or the server)
  --json            one JSON object per line, as the control API sends them
                    (docs/CONTROL_API.md, "Events")
  A reader slower than mcd's events (a flood into a slow terminal) is let go by mcd: it
  says so, subscribes again after the last #N shown and catches up from what mcd keeps
  (what mcd no longer kept is named on standard error). Exit status 3 when mcd stops.
"""

STATS_HELP = """\
stats [--name NAME] [--kind client|server] [--json]
top [--name NAME] [--kind client|server] [--count N]
  stats prints each instance's live figures once: messages and bytes each way, what waits
  in the send queues, resends after a reconnect, requests in flight, round-trip times.
  top prints the same every second with message rates, until Ctrl-C (or N refreshes with
  --count N); when not every row fits the terminal, the busiest that fit, and how many
  quieter ones it left out; when a row is wider, the columns that fit whole (DETAIL is
  cut, ending in ...). Piped, stats and top print every row and column.
  What each figure means: docs/STATS.md.
"""

WAIT_HELP = """\
wait [client|server] [--name NAME] STATE [--timeout S]
  Block until the instance is in STATE, then exit 0 (at once if it already is);
  exit 4 if --timeout S seconds pass first (default: wait as long as it takes).
  client STATE: connected, disconnected, connecting, reconnecting, failed, unconfigured
  server STATE: listening, stopped
  e.g. mcctl client connect --no-wait && mcctl wait client connected --timeout 30
  (for mcd itself to answer: mcctl daemon wait)
"""

DAEMON_HELP = """\
daemon wait     block until mcd answers, then exit 0; exit 4 if --timeout S seconds (default
                10) pass first.  A script that starts mcd itself waits with it before its
                first command, for the fraction of a second mcd takes to make its socket:
                  mcd & mcctl daemon wait && mcctl server start
                (mcd answers while it restores its saved instances; the commands after
                wait for the restore themselves)
daemon status   mcd's process id, version, control socket, state directory, instance count
daemon stop     stop mcd: servers announce the shutdown to their clients, hosted clients
                disconnect cleanly, and the state is saved: when mcd starts again it brings
                every instance back, connecting and listening those that were up
version         mcctl's version and the running mcd's, each with its control API version
"""

_TOPICS = {
    "client": CLIENT_HELP,
    "server": SERVER_HELP,
    "events": EVENTS_HELP,
    "watch": EVENTS_HELP,
    "stats": STATS_HELP,
    "top": STATS_HELP,
    "wait": WAIT_HELP,
    "daemon": DAEMON_HELP,
    "version": DAEMON_HELP,
}


def help_text(topic: str | None) -> str:
    """The help on ``topic`` (a command's first word), else the whole usage."""
    return _TOPICS.get(topic or "", HELP)


def execute(inv: Invocation, printer: Printer, factory: Callable[[], ControlClient]) -> int:
    """Run one parsed invocation against a daemon (not the shell)."""
    if inv.action == "help":
        printer.line(help_text(inv.topic).rstrip())
        return EXIT_OK
    if inv.action == "completion":
        from .completion import script  # noqa: PLC0415 - only this command needs it

        printer.line(script(inv.topic or "bash"))
        return EXIT_OK
    if inv.action == "version":
        if inv.options.version:
            return run_version(None, printer)

        def hello() -> dict[str, object]:
            with factory() as client:
                return client.request("hello")

        return run_version(hello, printer)
    if inv.action == "daemon_wait":
        path = inv.options.socket or default_socket_path()
        return run_daemon_wait(
            lambda t: ControlClient(path, timeout=t), inv.options.timeout or DAEMON_WAIT, printer, path
        )
    try:
        with factory() as client:
            if inv.action == "events":
                return run_events(inv, client, printer)
            if inv.action == "wait":
                return run_wait(inv, client, printer)
            if inv.action == "top":
                return run_top(inv, client, printer)
            return run_request(inv, client, printer)
    except DaemonUnreachable as exc:
        return printer.unreachable(exc)


def client_factory(inv: Invocation) -> Callable[[], ControlClient]:
    timeout = answer_timeout(inv, 5.0)

    def make() -> ControlClient:
        return ControlClient(inv.options.socket, timeout=timeout)

    return make


def _usage_hint(args: list[str], message: str) -> str:
    """Where to look: a kind's commands for an unknown one, the keys for a
    bad `set` or `get`, the payload's form for a bad payload, else the
    commands."""
    for kind in ("client", "server"):
        if message.startswith(f"unknown {kind} command"):
            return f"`mcctl help {kind}` lists the {kind} commands"
        if kind in args and "set" in args:
            return f"`mcctl help {kind}` lists the keys and their values"
        if kind in args and "get" in args:
            return f"`mcctl help {kind}` lists the keys"
    if "payload" in message:
        return """the payload is one JSON object, e.g. '{"n": 1}', or - to read it from standard input"""
    return "run `mcctl --help` for the commands"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if (words := os.environ.get("MCCTL_COMPLETE")) is not None:  # a Tab in bash or zsh
        from .completion import print_candidates  # noqa: PLC0415 - only completion needs it

        return print_candidates(words)
    try:
        inv = parse(args, sys.stdin.read)
    except UsageError as exc:
        # Options may not have parsed: look for --json by hand, so scripts get JSON errors too.
        Printer("--json" in args).error("usage", str(exc), None, _usage_hint(args, str(exc)))
        return EXIT_USAGE
    printer = Printer(inv.options.json)
    if inv.action == "shell":
        if not inv.words and not sys.stdin.isatty():
            printer.line(HELP.rstrip())
            return EXIT_USAGE
        from .repl import run_shell  # noqa: PLC0415 - the shell's imports (readline) only when asked

        return run_shell(socket=inv.options.socket)
    try:
        return execute(inv, printer, client_factory(inv))
    except KeyboardInterrupt:
        return EXIT_OK if inv.action in ("events", "top") else 130
    except BrokenPipeError:  # e.g. `mcctl events | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OutputError as exc:  # `mcctl events > file` on a full disk
        # What is still buffered would fail again at exit, as a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        with contextlib.suppress(OSError):
            print(f"mcctl: cannot write its output: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
