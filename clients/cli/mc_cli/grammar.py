"""mcctl's grammar: words in, an ``Invocation`` out (no I/O here).

The same grammar serves one-shot arguments (``mcctl client set port 30000``)
and the shell (``client set port 30000``).  Options may stand before or
after the command words; ``--`` ends them.
"""

from __future__ import annotations

import json
import os.path

from mc_control.codes import (
    CLIENT_KEYS,
    CLIENT_TUNING,
    FILE_KEYS,
    MAX_COMMAND_TIMEOUT,
    OPTIONAL_TUNING,
    SERVER_KEYS,
    SERVER_TUNING,
    strict_json,
)

# No dataclasses and no typing at run time: mcctl imports this module on
# every call, and those two cost it a third of its start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

_TUNING = {**CLIENT_TUNING, **SERVER_TUNING}  # a key means the same on either kind
INT_KEYS = ("port", "bind_port", *(k for k, t in _TUNING.items() if t == "int"))
FLOAT_KEYS = tuple(k for k, t in _TUNING.items() if t == "float")
BOOL_KEYS = ("tls", "tls_verify", *(k for k, t in _TUNING.items() if t == "bool"))
#: Text settings that no quoting makes right with a space in them.
ONE_WORD_KEYS = frozenset({"address", "interface", "tls_hostname"})
SECRETS_KEYS = tuple(k for k, t in _TUNING.items() if t == "secrets")
#: Keys that `none` (or an empty value, or `-` as `get` shows one unset)
#: unsets (for tuning keys: no limit, off).
OPTIONAL_KEYS = (
    "bind_port",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_hostname",
    "auth_token",
    "servers",
    "cluster",
    "node_id",
    *OPTIONAL_TUNING,
)
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
CLIENT_VERBS = ("set", "get", "connect", "disconnect", "status", "send", "request", "create", "remove", "help")
SERVER_VERBS = (
    "set",
    "get",
    "start",
    "stop",
    "status",
    "send",
    "request",
    "clients",
    "kick",
    "create",
    "remove",
    "help",
)
TOP_COMMANDS = (
    "client",
    "server",
    "list",
    "stats",
    "top",
    "events",
    "watch",
    "wait",
    "daemon",
    "version",
    "shell",
    "completion",
    "help",
)
DAEMON_VERBS = ("status", "stop", "wait")
#: What `help TOPIC` explains (main.help_text; top, watch and version too, as aliases).
HELP_TOPICS = ("client", "server", "events", "stats", "wait", "daemon")
CLIENT_STATES = ("connected", "disconnected", "connecting", "reconnecting", "failed", "unconfigured")
SERVER_STATES = ("listening", "stopped")


def states_of(kind: str) -> tuple[str, ...]:
    """What ``wait`` takes for a client or a server."""
    return SERVER_STATES if kind == "server" else CLIENT_STATES


#: option -> (takes a value, what it is for)
OPTIONS: dict[str, tuple[bool, str]] = {
    "--json": (False, "machine-readable output (a documented contract)"),
    "--socket": (True, "control socket path (default: $MC_SOCKET or the user runtime dir)"),
    "--timeout": (
        True,
        "seconds to wait for the daemon (connect --wait, wait: for the state; request: for the reply;"
        " send: for room in a full queue)",
    ),
    "--name": (True, "instance name (default: default)"),
    "--wait": (False, "client connect: return once connected, through retries"),
    "--no-wait": (False, "client connect: return at once, without waiting for the first attempt"),
    "--to": (True, "server send: one client id instead of all; server request: the client asked"),
    "--since": (True, "events: replay the events after sequence number N"),
    "--kind": (True, "wait/events/stats/top: client or server"),
    "--count": (True, "top: stop after N refreshes (default: until Ctrl-C)"),
    "--help": (False, "show help"),
    "--version": (False, "print mcctl's version (`version` asks mcd for its own too)"),
}
#: option -> the commands it goes with, in the order a refusal names them
_OPTION_USE: dict[str, tuple[tuple[str, ...], ...]] = {
    "--wait": (("client", "connect"),),
    "--no-wait": (("client", "connect"),),
    "--to": (("server", "send"), ("server", "request")),
    "--since": (("events",),),
    "--kind": (("wait",), ("events",), ("stats",), ("top",)),
    "--count": (("top",),),
}


class UsageError(Exception):
    """The words do not make a command; mcctl exits with status 2."""


class Options:
    """The options given, wherever they stood among the words."""

    __slots__ = (
        "count",
        "help",
        "json",
        "kind",
        "name",
        "name_given",
        "no_wait",
        "since",
        "socket",
        "timeout",
        "to",
        "version",
        "wait",
    )

    def __init__(self) -> None:
        self.json = False
        self.socket: str | None = None
        self.timeout: float | None = None
        self.name = "default"
        self.name_given = False
        self.wait = False
        self.no_wait = False
        self.to: str | None = None
        self.since: int | None = None
        self.count: int | None = None
        self.kind: str | None = None
        self.help = False
        self.version = False


class Invocation:
    """What to do.  ``action`` is ``request`` (send ``cmd`` with ``params``),
    or one of ``events``, ``wait``, ``daemon_wait``, ``version``, ``help``,
    ``shell``, ``completion``."""

    __slots__ = ("action", "cmd", "options", "params", "topic", "words")

    def __init__(self, action: str, options: Options, words: list[str]) -> None:
        self.action = action
        self.cmd: str | None = None
        self.params: dict[str, Any] = {}
        self.options = options
        self.topic: str | None = None
        self.words = words


def split_options(argv: list[str]) -> tuple[list[str], Options]:
    opts = Options()
    words: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            words.extend(argv[i + 1 :])
            break
        if arg in ("-h", "--help"):
            opts.help = True
            i += 1
            continue
        if arg.startswith("--") and len(arg) > 2:
            name, eq, inline = arg.partition("=")
            if name not in OPTIONS:
                value = inline if eq else argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else ""
                raise UsageError(
                    f"unknown option {name}{_option_hint(name, value, argv)}; options: {', '.join(OPTIONS)}"
                )
            takes_value, _ = OPTIONS[name]
            if takes_value:
                if eq:
                    value = inline
                elif i + 1 < len(argv):
                    i += 1
                    value = argv[i]
                else:
                    raise UsageError(f"{name} needs a value")
                _set_option(opts, name, value)
            elif eq:
                raise UsageError(f"{name} takes no value")
            else:
                setattr(opts, name[2:].replace("-", "_"), True)
            i += 1
            continue
        words.append(arg)
        i += 1
    return words, opts


#: The longest --timeout: a day covers any wait a script means; far larger
#: values overflow a socket's timeout.
MAX_TIMEOUT = 86_400


def _command_timeout(inv: Invocation, command: str) -> float:
    """--timeout for a command mcd waits on (default 10 s), within mcd's bound."""
    seconds = inv.options.timeout or 10.0
    if seconds > MAX_COMMAND_TIMEOUT:
        raise UsageError(
            f"{command} --timeout is at most {MAX_COMMAND_TIMEOUT} seconds (mcd's bound), not {seconds:g};"
            " nothing was sent"
        )
    return seconds


def _set_option(opts: Options, name: str, value: str) -> None:
    if name == "--timeout":
        try:
            seconds = float(value)
        except ValueError:
            raise UsageError(f"--timeout must be a number of seconds, not {value!r}") from None
        if not seconds > 0:  # NaN too: it is no number of seconds
            raise UsageError(f"--timeout must be a number of seconds above 0, not {value!r}")
        if not seconds <= MAX_TIMEOUT:  # inf, 1e12: a socket's timeout overflowed with a traceback
            raise UsageError(f"--timeout must be at most {MAX_TIMEOUT:,} seconds (a day), not {value!r}")
        opts.timeout = seconds
    elif name == "--since":
        if not value.isdigit():
            raise UsageError(f"--since must be a sequence number (0 or more), not {value!r}")
        opts.since = int(value)
    elif name == "--count":
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"--count must be a number of refreshes (1 or more), not {value!r}")
        opts.count = int(value)
    elif name == "--kind":
        if value not in ("client", "server"):
            raise UsageError("--kind must be client or server")
        opts.kind = value
    elif name == "--name":
        if not value:
            raise UsageError("--name must not be empty")
        opts.name = value
        opts.name_given = True
    elif name == "--socket":
        opts.socket = value
    elif name == "--to":
        opts.to = value


def parse_payload(text: str, read_stdin: Callable[[], str] | None = None) -> dict[str, Any]:
    """A JSON object, or a ``UsageError`` that points at the problem.
    ``-`` takes it from ``read_stdin()`` (a payload too large for the command
    line); the caller does the reading, so the grammar stays free of I/O."""
    if text == "-":
        if read_stdin is None:
            raise UsageError("a payload from standard input ('-') is for one-shot mcctl, not the shell")
        text = read_stdin()
    try:
        value = strict_json(text)
    except json.JSONDecodeError as exc:
        line = text.splitlines()[exc.lineno - 1] if text.splitlines() else text
        raise UsageError(
            f"invalid JSON payload: {exc.msg} (line {exc.lineno}, column {exc.colno})\n"
            f"  {line}\n  {' ' * (exc.colno - 1)}^\nnothing was sent"
        ) from None
    except ValueError as exc:  # NaN, Infinity, 1e400
        raise UsageError(f"invalid JSON payload: {exc}; nothing was sent") from None
    if not isinstance(value, dict):
        raise UsageError(f"the payload must be a JSON object ({{...}}), not {type(value).__name__}; nothing was sent")
    return value


def _one_value(kind: str, args: list[str]) -> str:
    """How to give ``set`` its one value, for a key given several words."""
    key = args[0]
    if key in BOOL_KEYS:
        return ": true or false"
    if key in INT_KEYS or key in FLOAT_KEYS:  # '1 s', '30 000': no quoting makes one of those
        return ": a number, without a unit (timers are in seconds)" if key in FLOAT_KEYS else ": a number"
    if key in ONE_WORD_KEYS:  # no quoting makes a host of 'my host' either
        return ": one word (a host name or address has no spaces)"
    import shlex  # noqa: PLC0415 - on this error only: mcctl's start-up stays light

    commas = "; or separate the servers with commas" if key == "servers" else ""
    return f": quote one with spaces ({kind} set {key} {shlex.quote(' '.join(args[1:]))}){commas}"


def _value(key: str, raw: str) -> str | int | float | bool | dict[str, str] | None:
    if key in OPTIONAL_KEYS and raw.lower() in ("none", "null", "", "-"):
        return None
    if key in FILE_KEYS:
        return os.path.abspath(os.path.expanduser(raw))  # mcd does not share our working directory
    if key in BOOL_KEYS:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise UsageError(f"{key} must be true or false, not {raw!r}")
    if key in INT_KEYS:
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"{key} must be an integer, not {raw!r}") from None
    if key in FLOAT_KEYS:
        try:
            number = float(raw)
        except ValueError:
            raise UsageError(f"{key} must be a number, not {raw!r}") from None
        if number - number:  # 'nan', 'inf', '1e400': JSON cannot carry them to mcd
            raise UsageError(f"{key} must be a finite number, not {raw!r}")
        return number
    if key in SECRETS_KEYS:
        try:
            tokens = json.loads(raw)
        except ValueError:
            tokens = None
        if not isinstance(tokens, dict) or not all(isinstance(v, str) for v in tokens.values()):
            raise UsageError(f'{key} must be a JSON object of client id to token, e.g. \'{{"c1": "secret"}}\'')
        return tokens
    return raw


def _expect(words: list[str], count: int, usage: str) -> None:
    if len(words) != count:
        raise UsageError(f"usage: {usage}")


def parse(argv: list[str], read_stdin: Callable[[], str] | None = None) -> Invocation:
    """Parse mcctl's arguments (or a shell line split like a shell does);
    ``read_stdin`` gives a payload written as ``-`` (one-shot mcctl only)."""
    words, opts = split_options(argv)
    inv = Invocation(action="request", options=opts, words=words)
    if opts.version and not opts.help:
        # What other tools answer (git, docker): this program's version, no daemon asked.
        _expect(words, 0, "mcctl --version (or `mcctl version`, which asks mcd too)")
        inv.action = "version"
        return inv
    if not words and not opts.help:
        inv.action = "shell"  # mcctl alone: the shell on a terminal, else usage
        return inv
    if opts.help or words[0] == "help":
        inv.action = "help"
        topic_words = words[1:] if words and words[0] == "help" else words
        inv.topic = topic_words[0] if topic_words else None
        if inv.topic == "all":
            inv.topic = None  # the shell's `help all` (the whole usage), typed here too
        if inv.topic is not None and inv.topic not in TOP_COMMANDS:
            # `help conect` printed the whole usage, as if there were such a topic.
            raise UsageError(
                f"no help on {inv.topic!r}{_key_hint(inv.topic, TOP_COMMANDS)}; topics: {', '.join(HELP_TOPICS)}"
            )
        return inv
    head, rest = words[0], words[1:]
    _check_option_use(opts, head, rest[0] if rest else None)
    if head in ("client", "server"):
        return _instance_command(inv, head, rest, read_stdin)
    if head == "list":
        _expect(rest, 0, "list")
        inv.cmd = "list"
    elif head in ("stats", "top"):
        _expect(rest, 0, f"{head} [--name NAME] [--kind client|server] [--json]")
        inv.cmd = "stats"
        if head == "top":
            inv.action = "top"
        if opts.kind:
            inv.params["kind"] = opts.kind
        if opts.name_given:
            inv.params["name"] = opts.name
    elif head in ("events", "watch"):
        _expect(rest, 0, "events [--since N] [--name NAME] [--kind client|server] [--json]")
        inv.action = "events"
    elif head == "wait":
        # `wait client connected` reads as the client commands do: the kind
        # may come first as a word, as well as with --kind.
        if len(rest) == 1 and rest[0] in ("client", "server"):
            raise UsageError(f"wait {rest[0]} needs a STATE: {', '.join(states_of(rest[0]))}")
        word = rest[0] if len(rest) == 2 and rest[0] in ("client", "server") else None
        if len(rest) != (2 if word else 1) or (word and opts.kind and opts.kind != word):
            raise UsageError("usage: wait [client|server] [--name NAME] [--timeout S] STATE")
        state = rest[-1]
        kind = word or opts.kind or ("server" if state in SERVER_STATES else "client")
        valid = states_of(kind)
        if state not in valid:
            raise UsageError(f"a {kind} cannot be {state!r}; states: {', '.join(valid)}")
        inv.action = "wait"
        inv.params = {"kind": kind, "name": opts.name, "state": state}
    elif head == "daemon":
        if len(rest) == 1 and rest[0] not in DAEMON_VERBS:
            hint = _hint("daemon", rest[0], [], DAEMON_VERBS)
            raise UsageError(f"unknown daemon command {rest[0]!r}{hint}; usage: daemon status|stop|wait")
        if len(rest) != 1:
            raise UsageError("usage: daemon status|stop|wait")
        if rest[0] == "wait":
            inv.action = "daemon_wait"
        else:
            inv.cmd = "daemon.status" if rest[0] == "status" else "daemon.shutdown"
    elif head == "version":
        _expect(rest, 0, "version")
        inv.action = "version"
    elif head == "shell":
        _expect(rest, 0, "shell")
        inv.action = "shell"
    elif head == "completion":
        if rest not in (["bash"], ["zsh"]):
            raise UsageError("usage: completion bash|zsh")
        inv.action = "completion"
        inv.topic = rest[0]
    else:
        raise UsageError(f"unknown command {head!r}{_top_hint(head)}; commands: {', '.join(TOP_COMMANDS)}")
    return inv


def _check_option_use(opts: Options, head: str, verb: str | None) -> None:
    for option, uses in _OPTION_USE.items():
        if (
            getattr(opts, option[2:].replace("-", "_")) not in (None, False)
            and (head,) not in uses
            and (head, verb) not in uses
        ):
            allowed = " or ".join(" ".join(u) for u in uses)
            raise UsageError(f"{option} only goes with {allowed}")
    if opts.name_given and head not in ("client", "server", "wait", "events", "watch", "stats", "top"):
        raise UsageError("--name only goes with client, server, wait, events, stats and top commands")


#: Words a newcomer tries for a command, and what each may have meant (the
#: first that is a command of the kind is suggested).
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "add": ("create",),
    "new": ("create",),
    "delete": ("remove",),
    "del": ("remove",),
    "rm": ("remove",),
    "show": ("status",),
    "info": ("status",),
    "listen": ("start",),
    "run": ("start", "connect"),
    "start": ("connect",),
    "open": ("connect", "start"),
    "join": ("connect",),
    "stop": ("disconnect",),
    "close": ("disconnect", "stop"),
    "kill": ("disconnect", "stop"),
    "shutdown": ("stop",),
    "quit": ("stop",),
    "exit": ("stop",),
    "ask": ("request",),
}


def _hint(kind: str, word: str, args: list[str], verbs: tuple[str, ...]) -> str:
    """What an unknown command word most likely meant: an instance's name
    before the command (``server web start``), or another name for one."""
    if args and args[0] in verbs and args[0] != "help":
        import shlex  # noqa: PLC0415 - on this error only: mcctl's start-up stays light

        # Quoted as a shell reads them: the hint is there to be copied.
        return f" (for the instance {word!r}: {kind} {shlex.join(args)} --name {shlex.quote(word)})"
    for meant in _SYNONYMS.get(word.lower(), ()):
        if meant in verbs:
            return f" (did you mean {kind} {meant}?)"
    spelled = _spelled(word, verbs)
    return f" (did you mean {kind} {spelled}?)" if spelled else ""


def _option_hint(name: str, value: str, argv: list[str]) -> str:
    """What an unknown option most likely meant: a setting given as an
    option (``server start --port 0``: settings are set with ``set``), or
    an option misspelt."""
    key = name[2:].replace("-", "_")
    kinds = [kind for kind, keys in (("client", CLIENT_KEYS), ("server", SERVER_KEYS)) if key in keys]
    if kinds:
        import shlex  # noqa: PLC0415 - on this error only: mcctl's start-up stays light

        said = next((word for word in argv if word in kinds), None)
        kinds = [said] if said else kinds
        at = argv.index("--name") + 1 if "--name" in argv[:-1] else -1
        named = f" --name {shlex.quote(argv[at])}" if at > 0 else ""
        value = shlex.quote(value) if value else "true" if key in BOOL_KEYS else "VALUE"
        ways = []
        for kind in kinds:
            way = f"{kind} set {key} {value}{named}"
            if "set" not in argv:  # the command it was given to comes after
                way += f", then {kind} {'connect' if kind == 'client' else 'start'}{named}"
            ways.append(way)
        return f" ({key} is a setting: {'; or '.join(ways)})"
    spelled = _spelled(name, OPTIONS)
    return f" (did you mean {spelled}?)" if spelled else ""


def _spelled(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` most likely misspells (``clinet``: client), if one is close."""
    import difflib  # noqa: PLC0415 - only on a usage error: mcctl's start-up does not pay for it

    found = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.75)
    return found[0] if found else None


def _key_hint(word: str, keys: Iterable[str]) -> str:
    spelled = _spelled(word, keys)
    return f" (did you mean {spelled}?)" if spelled else ""


#: The same for a first word.
_TOP_SYNONYMS: dict[str, tuple[str, ...]] = {
    "ls": ("list",),
    "ps": ("list",),
    "status": ("list", "daemon status"),
    "start": ("client connect",),
    "stop": ("client disconnect", "daemon stop"),
    "shutdown": ("daemon stop",),
    "log": ("events",),
    "logs": ("events",),
    "monitor": ("events", "top"),
}


def _top_hint(word: str) -> str:
    """What an unknown first word most likely meant: an instance command
    without its kind (``mcctl start``), or another name for a command."""
    word = word.lower()
    meant = [f"{kind} {word}" for kind, verbs in (("client", CLIENT_VERBS), ("server", SERVER_VERBS)) if word in verbs]
    meant += _TOP_SYNONYMS.get(word, ())
    meant = [m for m in dict.fromkeys(meant) if not m.endswith(" help")]
    if not meant:
        spelled = _spelled(word, TOP_COMMANDS)
        meant = [spelled] if spelled else []
    return f" (did you mean {' or '.join(meant)}?)" if meant else ""


#: Why ``server request`` takes no ``'*'``: one request has one reply.
_REQUEST_TO_ALL = (
    "a request goes to one client and waits for its one reply; ask each client"
    " (--to CLIENT_ID; `server status` lists them), or send to every client with server send"
)


def _target_hint(kind: str, verb: str, args: list[str]) -> str:
    """The library's ``server.send(client_id, message)`` typed as words
    (``server send c42 hi '{...}'``): the client goes in --to."""
    if kind != "server" or len(args) != 3 or args[1].lstrip().startswith("{"):
        return ""
    import shlex  # noqa: PLC0415 - only for this hint: mcctl's start-up does not pay for it

    rest = " ".join(shlex.quote(a) for a in args[1:])
    if args[0] == "*":
        if verb == "send":
            return f"   (every client is the default: server send {rest})"
        return f"   ({_REQUEST_TO_ALL})"
    return f"   (the client goes in --to: server {verb} --to {shlex.quote(args[0])} {rest})"


def _instance_command(inv: Invocation, kind: str, rest: list[str], read_stdin: Callable[[], str] | None) -> Invocation:
    verbs = CLIENT_VERBS if kind == "client" else SERVER_VERBS
    keys = CLIENT_KEYS if kind == "client" else SERVER_KEYS
    if not rest:
        raise UsageError(f"usage: {kind} {'|'.join(verbs)} ...")
    verb, args = rest[0], rest[1:]
    if verb not in verbs:
        raise UsageError(
            f"unknown {kind} command {verb!r}{_hint(kind, verb, args, verbs)}; {kind} commands: {', '.join(verbs)}"
        )
    if verb == "help":
        inv.action = "help"
        inv.topic = kind
        return inv
    name = inv.options.name
    params: dict[str, Any] = {"name": name}
    if verb == "set":
        if len(args) > 2 and args[0] in keys:
            raise UsageError(f"{kind} set {args[0]} takes one value, not {len(args) - 1}{_one_value(kind, args)}")
        if len(args) != 2:
            raise UsageError(f"usage: {kind} set KEY VALUE   (keys: {', '.join(keys)})")
        key = args[0]
        if key not in keys:
            raise UsageError(f"unknown {kind} key {key!r}{_key_hint(key, keys)}; keys: {', '.join(keys)}")
        params.update(key=key, value=_value(key, args[1]))
    elif verb == "get":
        if len(args) > 1:
            raise UsageError(f"usage: {kind} get [KEY]   (keys: {', '.join(keys)})")
        if args:
            if args[0] not in keys:
                raise UsageError(f"unknown {kind} key {args[0]!r}{_key_hint(args[0], keys)}; keys: {', '.join(keys)}")
            params["key"] = args[0]
    elif verb == "send":
        if len(args) not in (1, 2):
            target = "[--to CLIENT_ID] " if kind == "server" else ""
            raise UsageError(f"usage: {kind} send {target}SUBJECT [JSON_OBJECT]{_target_hint(kind, verb, args)}")
        if not args[0]:
            raise UsageError("the subject must not be empty; nothing was sent")
        params.update(subject=args[0], payload=parse_payload(args[1], read_stdin) if len(args) == 2 else {})
        if kind == "server":
            params["to"] = inv.options.to or "*"
        # How long a full queue may hold the send in mcd (mcctl then waits
        # that and more for the answer); unsaid, mcd's default
        # (codes.DEFAULT_WAITS), and an older mcd takes the command too.
        if inv.options.timeout is not None:
            params["timeout"] = _command_timeout(inv, f"{kind} send")
    elif verb == "request":
        target = "--to CLIENT_ID " if kind == "server" else ""
        if len(args) not in (1, 2):
            raise UsageError(
                f"usage: {kind} request {target}SUBJECT [JSON_OBJECT] [--timeout S]{_target_hint(kind, verb, args)}"
            )
        if not args[0]:
            raise UsageError("the subject must not be empty; nothing was sent")
        params.update(subject=args[0], payload=parse_payload(args[1], read_stdin) if len(args) == 2 else {})
        params["timeout"] = _command_timeout(inv, f"{kind} request")
        if kind == "server":
            if not inv.options.to:
                raise UsageError("server request needs --to CLIENT_ID: a request goes to one client")
            if inv.options.to == "*":
                raise UsageError(f"server request --to '*': {_REQUEST_TO_ALL}")
            params["to"] = inv.options.to
    elif verb == "kick":
        if not args:
            raise UsageError("usage: server kick CLIENT_ID [REASON]")
        params["client_id"] = args[0]
        if len(args) > 1:
            params["reason"] = " ".join(args[1:])
    else:
        if len(args) == 1:
            import shlex  # noqa: PLC0415 - on these errors only: mcctl's start-up stays light

            if verb == "connect":
                raise UsageError(
                    "usage: client connect [--wait | --no-wait]   (the server is a setting:"
                    f" client set address {shlex.quote(args[0])}; an instance's name goes in --name)"
                )
            # `server create second`: the instance's name is an option here.
            raise UsageError(
                f"usage: {kind} {verb} [--name NAME]   ({kind} {verb} takes no arguments;"
                f" for the instance {args[0]!r}: {kind} {verb} --name {shlex.quote(args[0])})"
            )
        if args:
            raise UsageError(f"usage: {kind} {verb}   ({kind} {verb} takes no arguments)")
        if verb == "connect":
            if inv.options.wait and inv.options.no_wait:
                raise UsageError("client connect takes --wait or --no-wait, not both")
            if not inv.options.no_wait:
                # Like nmcli and `tailscale up`: say how it went, not just that it started.
                params.update(
                    wait=True if inv.options.wait else "attempt", timeout=_command_timeout(inv, "client connect")
                )
    inv.cmd = f"{kind}.{verb}"
    inv.params = params
    return inv
