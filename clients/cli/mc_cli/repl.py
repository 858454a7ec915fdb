"""The mcctl shell: the same commands at a ``> `` prompt, with live events.

When no daemon answers, the shell hosts the instances itself (the daemon's
core, embedded, without a socket or saved state) and says so in its banner,
so the quick start works on a machine with nothing else running.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mc_control import ControlClient, DaemonUnreachable
from mc_control.codes import EVENT_NAMES

from . import output
from .commands import (
    DAEMON_WAIT,
    EXIT_OK,
    Printer,
    answer_timeout,
    daemon_warnings,
    run_daemon_wait,
    run_request,
    run_top,
    run_version,
    run_wait,
)
from .completion import candidates
from .grammar import (
    OPTIONS,
    UsageError,
    parse,
    parse_payload,
)
from .main import help_text

if TYPE_CHECKING:
    from .commands import Transport

PROMPT = "> "
#: The prompt for the next line of a payload that is still open.
CONTINUATION_PROMPT = "... "
#: How long the shell waits for mcd's answer to a command that does not wait itself.
ANSWER_TIMEOUT = 10.0
#: Wakes the main thread, waiting in readline, to print queued events.
_WAKE_SIGNAL = getattr(signal, "SIGUSR1", 10)
# Settings changes echo what was just typed: not worth a line in the shell.
SHELL_EVENTS = [name for name in EVENT_NAMES if name != "settings"]
SHELL_HELP = """\
Type commands without the word mcctl, e.g.:
  server set interface 127.0.0.1      client set address 127.0.0.1
  server set port 30000               client set port 30000
  server start                        client connect
  server send echo {"message": "hello"}   (a JSON object needs no quotes here,
                                          and may go over several lines)
Events are printed as they happen.  `help all`; `help client`, `help server`,
`help events`, `help stats`, `help wait`, `help daemon`;
clear (or Ctrl-L) clears the screen; exit, quit or Ctrl-D leave the shell."""


def split_line(line: str) -> list[str]:
    """A shell line in words, as a shell splits them, except that a JSON
    object typed without quotes (``client send echo {"n": 1}``) stays one
    word, as typed: at the prompt there is no other shell to quote for.
    ``ValueError`` for unbalanced quotes."""
    found = _unquoted_object(line)
    if found is not None:
        head, start, end = found
        if end is not None and line[end : end + 1] in ("", " ", "\t"):
            return [*head, line[start:end], *shlex.split(line[end:])]
    # A quoted payload, or not JSON: the plain split (and the grammar) say what is wrong.
    return shlex.split(line)


def _unquoted_object(line: str) -> tuple[list[str], int, int | None] | None:
    """Where a ``{`` outside quotes begins a JSON object: the words before
    it, its start, and its end (None when what follows is not JSON); None
    when the line has no such brace."""
    start = line.find("{")
    if start <= 0:
        return None
    try:
        head = shlex.split(line[:start])
    except ValueError:
        return None  # the brace is inside quotes
    try:
        end = start + json.JSONDecoder().raw_decode(line[start:])[1]
    except ValueError:
        return head, start, None
    return head, start, end


def unquoted_json_error(line: str) -> UsageError | None:
    """What is wrong with a JSON object typed without quotes that
    ``split_line`` could not keep as one word (it split it as a shell
    would): said as one-shot mcctl says it, with a caret, rather than as a
    usage line.  None when the line has no such object."""
    found = _unquoted_object(line)
    if found is None or found[2] is not None or line[found[1] - 1] not in " \t":
        return None  # no brace, one split_line kept whole, or a brace inside a word
    try:
        parse_payload(line[found[1] :].rstrip())
    except UsageError as exc:
        return exc
    return None


def continues(line: str) -> bool:
    """Whether ``line`` ends inside a JSON object typed without quotes, as
    the first line of a pasted, pretty-printed payload does: the shell then
    reads on.  Not for an object that is wrong before its end (its error
    says what is wrong), nor for one inside quotes or inside a word."""
    found = _unquoted_object(line)
    if found is None or found[2] is not None or line[found[1] - 1] not in " \t":
        return False
    text = line[found[1] :].rstrip()
    try:
        json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        return exc.pos >= len(text)
    return False


class Shell:
    def __init__(self, socket: str | None = None) -> None:
        self.socket = socket
        self.printer = Printer(False, in_shell=True)
        self.stop = threading.Event()
        # Reentrant: the wake-up signal's handler runs on the main thread,
        # possibly while that thread holds it.
        self.print_lock = threading.RLock()
        self.interactive = sys.stdin.isatty() and sys.stdout.isatty()
        self.embedded: Any = None
        #: In embedded mode, the hosted instances' log lines reach the person
        #: through the shell's own output, never raw over the prompt.
        self.log_handler: _ShellLogHandler | None = None
        self.transport: Transport
        self.stream_factory: Callable[[], Transport]
        self.readline: Any = None
        #: True while input() waits: only then is there a prompt to redraw.
        self.at_prompt = False
        #: The prompt input() shows now, drawn again under events.
        self.prompt = PROMPT
        self.pending: list[str] = []
        #: The thread to wake (with ``_WAKE_SIGNAL``) when events queue at the prompt.
        self.main_thread: int | None = None
        #: Set once the queued events are printed (the event thread waits on it).
        self.printed = _SignalSafeFlag()
        #: Set once the event thread has subscribed (or found mcd gone): the
        #: prompt waits for it, or what a command pasted at once does would
        #: happen before the shell listens, and its events go unshown.
        self.listening = threading.Event()

    # -- set-up ----------------------------------------------------------------

    def connect(self) -> str:
        client = ControlClient(self.socket, timeout=ANSWER_TIMEOUT)
        try:
            hello = client.request("hello")
        except DaemonUnreachable as exc:
            # The daemon's core in this process (imported only here: the
            # one-shot commands never host anything).
            from mc_daemon.embedded import EmbeddedDaemon  # noqa: PLC0415

            self.embedded = EmbeddedDaemon()
            self.log_handler = _ShellLogHandler(self.show)
            logging.getLogger().addHandler(self.log_handler)
            self.transport = self.embedded
            self.stream_factory = lambda: self.embedded
            return (
                f"MissionCommander shell (embedded mode: {exc.message}).\n"
                "Clients and servers run inside this shell and stop when you leave it;\n"
                "start `mcd` to keep them running."
            )
        self.transport = client
        self.stream_factory = lambda: ControlClient(self.socket, timeout=ANSWER_TIMEOUT)
        banner = f"MissionCommander shell, connected to mcd {hello['version']} at {client.path}."
        # What mcd found wrong at start (a state file moved aside...) is
        # otherwise only in its log: say it where the user is looking.
        warnings = daemon_warnings(client)
        return "\n".join([banner, *(f"warning: {warning}" for warning in warnings)])

    def setup_readline(self) -> None:
        if not self.interactive:
            return
        try:
            import readline  # noqa: PLC0415 - line editing only for a person at a terminal
        except ImportError:
            return
        self.readline = readline
        readline.set_completer(self.complete)
        # Only once readline has drawn the prompt may events redraw it.
        readline.set_pre_input_hook(self._prompt_drawn)
        readline.set_completer_delims(" \t")
        readline.parse_and_bind("tab: complete")
        history = _history_path()
        try:
            # The history holds what was typed, tokens included, beside mcd's
            # state: the directory is the owner's alone, as mcd makes it.
            history.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            readline.read_history_file(history)
        except OSError:
            pass
        readline.set_history_length(1000)
        # GNU readline is not thread-safe: reading its line buffer from the
        # event thread while the main thread edits it tore the buffer, and
        # glibc could abort in the middle of decoding it.  Events that come
        # while the prompt is up are queued, and the main thread is woken
        # with a signal: Python runs the handler on the main thread from
        # within readline's wait, where reading the buffer is safe.
        if hasattr(signal, "pthread_kill") and threading.current_thread() is threading.main_thread():
            signal.signal(_WAKE_SIGNAL, self._woken)
            self.main_thread = threading.get_ident()

    def _prompt_drawn(self) -> None:
        with self.print_lock:
            self.at_prompt = True
            self._print_pending_locked()

    def _woken(self, _signum: int, _frame: object) -> None:
        with self.print_lock:
            if self.at_prompt:
                self._print_pending_locked()

    def _print_pending_locked(self) -> None:
        """Print the queued events above the prompt and redraw it (main thread)."""
        if self.pending:
            assert self.readline is not None
            typed = self.readline.get_line_buffer()
            sys.stdout.write("\r\x1b[2K" + "\n".join(self.pending) + "\n" + self.prompt + typed)
            sys.stdout.flush()
            self.pending.clear()
        self.printed.set()

    def save_history(self) -> None:
        if self.readline is not None:
            try:
                self.readline.write_history_file(_history_path())
            except OSError:
                pass

    # -- completion ------------------------------------------------------------

    def candidates(self, words: list[str]) -> list[str]:
        """What may come after ``words``: mcctl's (``completion.candidates``),
        and the shell's own words."""
        found = candidates(words, self.transport.request)
        if not words:
            return [*found, "clear", "exit", "quit"]
        if words == ["help"]:
            return [*found, "all"]
        return found

    def complete(self, text: str, state: int) -> str | None:
        assert self.readline is not None
        line = self.readline.get_line_buffer()[: self.readline.get_endidx()]
        words = line.split()
        if text and words:
            words = words[:-1]
        pool = list(OPTIONS) if text.startswith("--") else self.candidates(words)
        matches = [c + " " for c in pool if c.startswith(text)]
        return matches[state] if state < len(matches) else None

    # -- output ----------------------------------------------------------------

    def show(self, text: str) -> None:
        """Print without garbling what is being typed.

        Only the main thread prints.  An event from the event thread is
        queued: while the prompt is up the main thread is woken to print it
        above the prompt (``_woken``), else it is printed once readline has
        drawn the next prompt (``_prompt_drawn``)."""
        with self.print_lock:
            if not self.interactive or self.readline is None or threading.current_thread() is threading.main_thread():
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
                return
            self.pending.append(text)
            self.printed.clear()
            wake = self.at_prompt and self.main_thread is not None
        if not wake:
            return
        assert self.main_thread is not None
        # A signal that lands while readline handles a key (not in its wait)
        # is only acted on at the next key: so ask again, a bounded few times.
        for _ in range(20):
            signal.pthread_kill(self.main_thread, _WAKE_SIGNAL)
            if self.printed.wait(0.05) or not self.at_prompt:
                return

    # -- events ----------------------------------------------------------------

    def watch_events(self) -> None:
        # Ctrl-C is for the main thread (Python runs handlers only there).
        # The kernel gives a process's signal to another thread when the
        # main one has one pending (a wake-up): this thread's blocking read
        # would then take it, and the main thread's wait (a `connect
        # --wait`) would go on until its timeout.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        since: dict[str, Any] | None = None
        warned = cut_off = False
        while not self.stop.is_set():
            stream = self.stream_factory()
            try:
                params: dict[str, Any] = {"events": SHELL_EVENTS}
                if since:
                    params["since"] = since
                answer, events = stream.subscribe(**params)
                self.listening.set()
                if warned:
                    self.show("-- mcd is back" + (" (events were missed)" if answer.get("resync") else ""))
                    warned = False
                elif cut_off and answer.get("resync") and since:
                    self.show(
                        f"-- events #{since['seq'] + 1} to #{answer['seq']} left mcd's ring before the shell caught up"
                    )
                since = {"boot_id": answer["boot_id"], "seq": answer["seq"]}
                cut_off = False
                for ev in events:
                    if self.stop.is_set():
                        return
                    if ev.get("type") == "overflow":
                        # Cut off for falling behind a flood (mcd never waits
                        # for a reader): catch up from its ring at once.
                        self.show(f"!! the shell fell behind mcd's events; catching up after #{since['seq']}")
                        cut_off = True
                        break
                    if ev.get("type") == "event":
                        since = {"boot_id": ev["boot_id"], "seq": ev["seq"]}
                    self.show(output.event(ev))
            except DaemonUnreachable:
                pass
            finally:
                self.listening.set()  # gone or not, the prompt waits no more
                if stream is not self.embedded and isinstance(stream, ControlClient):
                    stream.close()
            if self.stop.is_set():
                return
            if cut_off:
                continue
            if not warned:
                self.show("-- lost the connection to mcd; retrying every second")
                warned = True
            self.stop.wait(1.0)

    # -- commands --------------------------------------------------------------

    def run_line(self, line: str) -> bool:
        """Run one line; False when the shell should end."""
        try:
            words = split_line(line)
        except ValueError as exc:
            self.show(f"error: {exc} (check your quotes)")
            return True
        if not words:
            return True
        if words[0] in ("exit", "quit"):
            return False
        if words == ["clear"]:
            self.show("\x1b[H\x1b[2J\x1b[A")  # home, clear, and back up over show's line break
            return True
        if words == ["help"]:
            self.show(SHELL_HELP)
            return True
        if words == ["help", "all"]:
            self.show(help_text(None).rstrip())
            return True
        try:
            inv = parse(words)
        except UsageError as exc:
            self.show(f"error: {unquoted_json_error(line) or exc}")
            return True
        said: list[str] = []
        if self.log_handler is not None:
            # A hosted server's warnings at start are logged and answered too.
            self.log_handler.said = said
        self.printer = Printer(inv.options.json, out=_ShowStream(self), err=_ShowStream(self), in_shell=True, said=said)
        if inv.action == "help":
            self.show(help_text(inv.topic).rstrip())
        elif inv.action in ("shell", "completion"):
            self.show("you are in the shell already" if inv.action == "shell" else "run `mcctl completion bash`")
        elif inv.action == "events":
            self.show("events are printed here as they happen")
        elif inv.action == "version":
            run_version(None if inv.options.version else lambda: self.transport.request("hello"), self.printer)
        elif inv.action == "daemon_wait":
            if isinstance(self.transport, ControlClient):
                path = self.transport.path
                run_daemon_wait(
                    lambda t: ControlClient(path, timeout=t), inv.options.timeout or DAEMON_WAIT, self.printer, path
                )
            else:
                self.show(
                    "error: no mcd to wait for: this shell hosts its clients and servers itself "
                    "(embedded mode); an mcd started now is used by the next shell"
                )
        else:
            if isinstance(self.transport, ControlClient):
                # Kept for every command: each gets its own wait (a
                # `connect --wait` or a request waits in mcd first).
                self.transport.set_timeout(answer_timeout(inv, ANSWER_TIMEOUT))
            try:
                if inv.action == "wait":
                    stream = self.stream_factory()
                    try:
                        run_wait(inv, stream, self.printer)
                    finally:
                        if isinstance(stream, ControlClient):
                            stream.close()
                elif inv.action == "top":
                    # Refreshes below each other (events keep printing in
                    # between) until --count or Ctrl-C, which ends only it.
                    try:
                        run_top(inv, self.transport, self.printer)
                    except KeyboardInterrupt:
                        self.show("")
                else:
                    run_request(inv, self.transport, self.printer)
            except DaemonUnreachable as exc:
                self.printer.unreachable(exc)
                if isinstance(self.transport, ControlClient):
                    self.transport.close()  # the next command reconnects
            except KeyboardInterrupt:
                # Ctrl-C ends the wait for an answer, not the shell; the
                # answer still on its way is left behind with the connection.
                self.show("interrupted: what was asked goes on (`list` shows where things stand)")
                if isinstance(self.transport, ControlClient):
                    self.transport.close()  # the next command reconnects
        return True

    def loop(self) -> int:
        while True:
            try:
                lines = [self._input(PROMPT)]
                # A pretty-printed payload pasted at the prompt comes a line
                # at a time: read on while its object is open.  An empty
                # line (or Ctrl-D) runs what there is, whose error then says
                # what is missing; Ctrl-C drops it all, as at the prompt.
                while continues(" ".join(lines)):
                    try:
                        more = self._input(CONTINUATION_PROMPT)
                    except EOFError:
                        break
                    if not more.strip():
                        break
                    lines.append(more)
            except EOFError:
                if self.interactive:
                    sys.stdout.write("\n")
                return EXIT_OK
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                continue
            # JSON needs no line breaks outside its strings, which cannot
            # hold one: the lines joined make the one-line command they mean.
            line = " ".join(part.strip() for part in lines)
            if len(lines) > 1:
                self._remember_as_one(len(lines), line)
            if not self.run_line(line):
                return EXIT_OK

    def _input(self, prompt: str) -> str:
        self.prompt = prompt
        try:
            return input(prompt if self.interactive else "")
        finally:
            with self.print_lock:
                self.at_prompt = False

    def _remember_as_one(self, count: int, line: str) -> None:
        """Keep a payload typed over several lines in the history as the one
        line it ran as, so that Up brings back the whole command."""
        if self.readline is None:
            return
        for _ in range(min(count, self.readline.get_current_history_length())):
            self.readline.remove_history_item(self.readline.get_current_history_length() - 1)
        self.readline.add_history(line)

    def close(self) -> None:
        self.stop.set()
        self.save_history()
        if self.embedded is not None:
            # What the instances say while they stop (the server's shutdown
            # reaching the shell's own client) is the leaving itself, not news.
            if self.log_handler is not None:
                self.log_handler.muted = True
            self.embedded.close()
        if isinstance(self.transport, ControlClient):
            self.transport.close()


class _ShellLogHandler(logging.Handler):
    """Warnings of the instances the shell hosts, printed as the shell prints."""

    def __init__(self, show: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.show = show
        self.muted = False
        #: What it showed during the command the shell runs: that command's
        #: answer does not say it again.
        self.said: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.muted:
            return
        try:
            message = record.getMessage()
            self.said.append(message)
            self.show(f"warning: {message}")
        except Exception:  # a log line must never break the shell
            self.handleError(record)


class _ShowStream:
    """A file-like object that prints through ``Shell.show``."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def write(self, text: str) -> int:
        if text.strip():
            self.shell.show(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        """The terminal the shell shows on (its size shapes `top`'s rows)."""
        return sys.stdout.fileno()


def _history_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "missioncommander" / "mcctl_history"


def run_shell(socket: str | None = None) -> int:
    """Run the shell until exit, quit or Ctrl-D."""
    shell = Shell(socket)
    banner = shell.connect()
    shell.setup_readline()
    print(banner)
    print("Type `help` for the commands.")
    watcher = threading.Thread(target=shell.watch_events, name="mcctl-events", daemon=True)
    watcher.start()
    shell.listening.wait(ANSWER_TIMEOUT)
    try:
        return shell.loop()
    finally:
        shell.close()


class _SignalSafeFlag:
    """A flag that a signal handler may set: ``threading.Event.set`` takes a
    lock, and a handler that lands while the main thread holds that very
    lock (inside another ``set``) would wait for itself forever. A pipe
    needs no lock: set writes a byte, wait polls for one."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def set(self) -> None:
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:
            pass  # already set many times over

    def clear(self) -> None:
        try:
            while os.read(self._r, 512):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float) -> bool:
        """True when set (it stays set until ``clear``)."""
        readable, _, _ = select.select([self._r], [], [], timeout)
        return bool(readable)
