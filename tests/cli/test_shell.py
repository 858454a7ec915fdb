"""The mcctl shell through a pseudo-terminal: with mcd, and embedded without it."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port, wait_until
from support.cli import mcctl_command, run
from support.mcd import Mcd
from support.pty_session import PtySession

from mc_cli import repl
from missioncommander import Client, Message


def shell_env(socket_path: Path, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["MC_SOCKET"] = str(socket_path)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # the shell's history goes there
    return env


@pytest.fixture
def mcd() -> Iterator[Mcd]:
    daemon = Mcd().start()
    yield daemon
    daemon.close()


def quick_start(sh: PtySession, port: int) -> None:
    """The seed's quick start, typed at the prompt."""
    for line, answer in (
        ("server set interface 127.0.0.1", "interface = 127.0.0.1"),
        (f"server set port {port}", f"port = {port}"),
        ("server start", "listening on port"),
        ("client set address 127.0.0.1", "address = 127.0.0.1"),
        (f"client set port {port}", f"client default: port = {port}"),
        ("client set client_id abcXYZ", "client_id = abcXYZ"),
        ("client connect", "client/default  connect"),
    ):
        sh.line(line)
        sh.expect(answer)
    sh.line('server send echo \'{"message": "hello"}\'')
    sh.expect('client/default  message: echo {"message": "hello"}')
    # At the prompt a JSON object needs no quotes.
    sh.line('server send echo {"message": "no quotes"}')
    sh.expect('client/default  message: echo {"message": "no quotes"}')


def test_shell_with_a_daemon(mcd: Mcd, tmp_path: Path) -> None:
    sh = PtySession(mcctl_command(), shell_env(mcd.socket, tmp_path))
    try:
        sh.expect("> ", start=sh.expect("connected to mcd"))  # the prompt is up: what is typed echoes after it
        mark = len(sh.text)
        sh.line("clear")  # as in a shell (it was an unknown command)
        sh.expect("> ", start=sh.expect("clear", start=mark))
        assert "\x1b[H\x1b[2J" in sh.raw and "unknown command" not in sh.text
        quick_start(sh, free_port())
        # Tab completion of commands and keys.
        mark = len(sh.text)
        sh.type("cli\tsta\t")
        sh.expect("client status ", start=mark)
        sh.line("")
        sh.expect("client default: connected (STATE_OK | STATE_RUNNING | STATE_CONNECTED)", start=mark)
        # ...and of the live client ids, after `server kick` and `--to`.
        mark = len(sh.text)
        sh.type("server kick abc\t")
        sh.expect("server kick abcXYZ ", start=mark)
        sh.type("\x15")  # Ctrl-U: drop the line unsent
        mark = len(sh.text)
        sh.type("server send --to ab\t")
        sh.expect("server send --to abcXYZ ", start=mark)
        sh.type("\x15")
        # `wait` takes the kind as a word too, and completes its states.
        mark = len(sh.text)
        sh.type("wait ser\tlis\t")
        sh.expect("wait server listening ", start=mark)
        sh.line("")
        sh.expect("server default: listening", start=mark)
        # An event arriving while the user types is printed above the prompt,
        # and what was typed is still there to finish.
        mark = len(sh.text)
        sh.type("server cli")
        sh.expect("server cli", start=mark)
        mcd.request("server.send", subject="interrupt", payload={})
        after = sh.expect("message: interrupt", start=mark)
        sh.expect("> server cli", start=after)
        sh.line("ents")
        sh.expect("abcXYZ", start=after)
        # top refreshes in the shell too: --count refreshes, or until Ctrl-C,
        # which ends top and not the shell.
        mark = len(sh.text)
        sh.line("top --count 2")
        sh.expect("mcd: up", start=sh.expect("mcd: up", start=mark))
        mark = len(sh.text)
        sh.line("top")
        sh.expect("mcd: up", start=sh.expect("mcd: up", start=mark))
        sh.type("\x03")
        mark = len(sh.text)
        sh.line("client status")
        sh.expect("client default: connected", start=mark)
        sh.line("daemon wait")
        sh.expect(f"is up (pid {mcd.proc.pid}, {mcd.socket})", start=mark)  # type: ignore[union-attr]
        sh.line("frobnicate")
        sh.expect("unknown command 'frobnicate'")
        sh.line("client send x '{bad'")
        sh.expect("invalid JSON payload")
        mark = len(sh.text)
        sh.line("client send x {bad json")  # unquoted, as the shell allows: the same JSON error, not a usage line
        sh.expect("error: invalid JSON payload: Expecting property name", start=mark)
        sh.line("quit")
        assert sh.wait() == 0
    finally:
        sh.close()
    assert mcd.request("client.status")["phase"] == "connected"  # the daemon keeps its instances
    assert (tmp_path / "state" / "missioncommander" / "mcctl_history").read_text().count("server set") >= 2
    # What was typed may hold a token: the file, and the state directory the shell made for it, are the owner's.
    assert stat.S_IMODE((tmp_path / "state" / "missioncommander").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "missioncommander" / "mcctl_history").stat().st_mode) == 0o600


class SlowSubscribe:
    """A relay in front of mcd's control socket that holds each event
    subscription ``hold`` seconds on its way (a busy mcd, a loaded machine)."""

    def __init__(self, target: Path, path: Path, hold: float) -> None:
        self.target, self.path, self.hold = target, path, hold
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._relay, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _relay(self, conn: socket.socket) -> None:
        with conn, socket.socket(socket.AF_UNIX) as upstream, selectors.DefaultSelector() as sel:
            try:
                upstream.connect(str(self.target))
                sel.register(conn, selectors.EVENT_READ, upstream)
                sel.register(upstream, selectors.EVENT_READ, conn)
                while not self.stopping.is_set():
                    for key, _ in sel.select(0.2):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        if key.fileobj is conn and b'"subscribe"' in data:
                            time.sleep(self.hold)  # the fault itself, not a wait for one
                        key.data.sendall(data)
            except OSError:
                return  # either side went away: so does the relay

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)
        self.listener.close()


def test_the_shell_listens_for_events_before_its_first_prompt(mcd: Mcd, tmp_path: Path) -> None:
    """Commands pasted the moment the shell starts: the events they cause
    must be shown, so the shell subscribes before it prompts (it once
    subscribed just after, and a quick first command's events were lost)."""
    relay = SlowSubscribe(mcd.socket, tmp_path / "relay.sock", hold=1.0)
    sh = PtySession(mcctl_command(), shell_env(relay.path, tmp_path))
    try:
        sh.expect("> ", start=sh.expect("connected to mcd"))
        assert mcd.request("stats")["daemon"]["event_subscribers"] == 1
        sh.line("quit")
        assert sh.wait() == 0
    finally:
        sh.close()
        relay.close()


def test_a_payload_pasted_over_several_lines_is_one_command(mcd: Mcd, tmp_path: Path) -> None:
    """A pretty-printed payload pasted at the prompt came a line at a time:
    each line ran alone and failed (a JSON error, then unknown commands)."""
    mcd.connect_hosted_pair()
    sh = PtySession(mcctl_command(), shell_env(mcd.socket, tmp_path))
    try:
        sh.expect("> ", start=sh.expect("connected to mcd"))
        mark = len(sh.text)
        for line in ("server send echo {", '  "n": 1,', '  "tags": ["a",', '           "b"]', "}"):
            sh.line(line)
        sh.expect('client/default  message: echo {"n": 1, "tags": ["a", "b"]}', start=mark)
        assert "unknown command" not in sh.text[mark:] and "error" not in sh.text[mark:]
        # An empty line runs an object still open: its error says what is missing.
        mark = len(sh.text)
        sh.line('server send echo {"n":')
        sh.expect("... ", start=mark)
        sh.line("")
        sh.expect("nothing was sent", start=sh.expect("invalid JSON payload: Expecting value", start=mark))
        # A wrong line is not waited on: its error comes at once.
        mark = len(sh.text)
        sh.line("server send echo {oops")
        sh.expect("invalid JSON payload: Expecting property name", start=mark)
        sh.line("quit")
        assert sh.wait() == 0
    finally:
        sh.close()
    history = (tmp_path / "state" / "missioncommander" / "mcctl_history").read_text().splitlines()
    assert 'server send echo { "n": 1, "tags": ["a", "b"] }' in history  # Up brings back the whole command
    assert '  "n": 1,' not in history


def test_embedded_shell_without_a_daemon(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "missioncommander", "cli"]
    sh = PtySession(argv, shell_env(tmp_path / "no-daemon.sock", tmp_path))
    try:
        sh.expect("embedded mode")
        sh.expect("no socket at")
        quick_start(sh, free_port())
        sh.line("list")
        sh.expect("server  default  listening")
        mark = len(sh.text)
        sh.line("daemon status")
        sh.expect("(embedded in this shell)", start=mark)
        assert "\nmcd is running" not in sh.text[mark:]
        sh.expect("no mcd is running: this shell hosts", start=mark)
        # There is no daemon to stop, and the shell goes on working.
        mark = len(sh.text)
        sh.line("daemon stop")
        sh.expect("error: no mcd is running", start=mark)
        sh.line("daemon wait")
        sh.expect("error: no mcd to wait for", start=mark)
        sh.line("list")
        sh.expect("server  default  listening", start=mark)
        assert "shutting down" not in sh.text[mark:]
        # A hosted instance's warning comes as the shell's own line, not a raw log record.
        mark = len(sh.text)
        sh.line("server kick abcXYZ")
        sh.expect("warning: client 'abcXYZ': disconnected by the server", start=mark)
        sh.line("client connect")
        sh.expect("client/default  connect", start=mark)
        # A server's warning at start is logged and answered: said once.
        mark = len(sh.text)
        sh.line(f"server --name open set port {free_port()}")  # interface '': every interface
        sh.line("server --name open start")
        sh.expect("server open: listening on port", start=mark)
        sh.line("server --name open stop")  # what the start printed comes before this
        done = sh.expect("server open: stopped", start=mark)
        assert sh.text[mark:done].count("neither TLS nor a token") == 1, sh.text[mark:done]
        sh.expect("> ", start=len(sh.text) - 2)  # at the prompt
        mark = len(sh.text)
        sh.type("\x04")  # Ctrl-D
        code = sh.wait(60)
        assert code == 0, sh.text[-2000:]
        assert " INFO " not in sh.text[mark:] and " mcd." not in sh.text[mark:]  # no raw log lines on the way out
        assert "server shut down" not in sh.text[mark:]  # the shell's client hearing the shell's server stop
    finally:
        sh.close()


def test_one_shot_commands_never_host_instances(tmp_path: Path) -> None:
    out = run("server", "start", socket_path=tmp_path / "no-daemon.sock")
    assert out.returncode == 3 and "mcd is not running" in out.stderr


def test_shell_rides_out_a_daemon_restart(mcd: Mcd, tmp_path: Path) -> None:
    sh = PtySession(mcctl_command(), shell_env(mcd.socket, tmp_path))
    try:
        sh.expect("connected to mcd")
        mark = len(sh.text)
        mcd.stop()
        sh.expect("lost the connection to mcd", start=mark)
        mcd.start()
        sh.expect("mcd is back", start=mark)
        sh.line("server create --name after-restart")
        sh.expect("server after-restart: stopped", start=mark)
        sh.line("exit")
        assert sh.wait() == 0
    finally:
        sh.close()


def test_shell_catches_up_after_falling_behind_a_flood(tmp_path: Path) -> None:
    """A flood of messages faster than the terminal shows them: mcd cuts
    the shell's event stream off (it never waits for a reader), and the
    shell catches up from mcd's ring at once; it said it had lost mcd."""
    mcd = Mcd(None, "--event-queue", "5").start()
    sh = PtySession(mcctl_command(), shell_env(mcd.socket, tmp_path))
    try:
        sh.expect("connected to mcd")
        # The flood must find its event stream open: it must fall behind, not start after.
        wait_until(lambda: mcd.request("stats")["daemon"]["event_subscribers"] == 1, what="the shell subscribed")
        port = free_port()
        mcd.request("server.set", key="interface", value="127.0.0.1")
        mcd.request("server.set", key="port", value=port)
        mcd.request("server.start")
        mark = len(sh.text)
        with Client(address="127.0.0.1", port=port, client_id="flood") as sender:
            # Nobody reads the terminal meanwhile: the shell's output blocks.
            for n in range(3000):
                sender.send(Message("n", {"n": n, "fill": "x" * 400}))  # some 2 MB: more than every buffer between
            wait_until(lambda: sender.queued == 0, what="the flood acknowledged")
        sh.expect("fell behind mcd's events; catching up after #", start=mark)
        sh.expect('"n": 2999', start=mark, timeout=60)
        assert "lost the connection" not in sh.text[mark:] and "left mcd's ring" not in sh.text[mark:]
        sh.line("exit")
        assert sh.wait() == 0
    finally:
        sh.close()
        mcd.close()


def top_screen(mcd: Mcd, tmp_path: Path, columns: int = 160, lines: int = 40) -> list[str]:
    """What one refresh of `mcctl top` shows on a terminal of that size (its non-blank lines)."""
    sh = PtySession(
        [*mcctl_command(), "top", "--count", "1"], shell_env(mcd.socket, tmp_path), columns=columns, lines=lines
    )
    try:
        sh.expect("mcd: up")
        assert sh.wait() == 0
    finally:
        sh.close()
    return [row for row in sh.text.split("\n") if row.strip()]


HEADER = ["KIND", "NAME", "STATE", "SENT", "RECEIVED", "SENT/S", "RECV/S", "QUEUED", "RTT MS", "DETAIL"]


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.split("  ") if cell.strip()]


def test_top_on_a_narrow_terminal_keeps_each_row_on_its_line(mcd: Mcd, tmp_path: Path) -> None:
    """top refreshes a screen in place: a row wider than the terminal would
    wrap and push the table apart, so on a terminal each row fits its width.
    A column that does not fit is left out whole: cut, a client's queue of
    0/10000 read 0/1000.  Only the last column, free text, is cut (ending in
    ...).  In the shell too, whose refreshes go below each other."""
    port = free_port()
    for cmd, params in (
        ("server.set", {"key": "interface", "value": "127.0.0.1"}),
        ("server.set", {"key": "port", "value": port}),
        ("server.start", {}),
        ("client.set", {"key": "address", "value": "127.0.0.1"}),
        ("client.set", {"key": "port", "value": port}),
        ("client.connect", {"wait": True, "timeout": 10}),
    ):
        mcd.request(cmd, **params)
    for columns in (66, 80):  # up to SENT/S; up to RECV/S, as QUEUED would end at 81
        rows = top_screen(mcd, tmp_path, columns=columns)
        assert max(len(row) for row in rows) <= columns
        assert cells(rows[0]) == HEADER[: 6 if columns == 66 else 7], rows
        client = next(row for row in rows if row.startswith("client"))
        assert len(cells(client)) == len(cells(rows[0])) and "0/1000" not in client, rows
    rows = top_screen(mcd, tmp_path, columns=110)  # DETAIL begins at 91: cut, and says so
    assert cells(rows[0]) == HEADER and max(len(row) for row in rows) <= 110
    client = next(row for row in rows if row.startswith("client"))
    assert "0/10000" in cells(client) and client.endswith("..."), rows
    wide = run("stats", socket_path=mcd.socket)  # not a terminal: rows whole, for a script or a pager
    assert max(len(row) for row in wide.stdout.splitlines()) > 80
    sh = PtySession([*mcctl_command()], shell_env(mcd.socket, tmp_path), columns=80)
    try:
        sh.expect("> ", start=sh.expect("connected to mcd"))
        mark = len(sh.text)
        sh.line("top --count 1")
        sh.expect("mcd: up", start=mark)
        shown = [row for row in sh.text[mark:].split("\n") if row.strip()]
        header = next(row for row in shown if row.startswith("KIND"))
        assert cells(header) == HEADER[:7] and all(len(row) <= 80 for row in shown), shown
    finally:
        sh.close()


def test_top_on_a_short_terminal_shows_the_busiest_rows_that_fit(mcd: Mcd, tmp_path: Path) -> None:
    """With more instances than the terminal has lines (500 hosted clients,
    say), top printed them all and every refresh scrolled its header away:
    it now shows what fits, the busiest first, and says how many it left out."""
    for n in range(30):
        mcd.request("client.create", name=f"quiet{n:02d}")
    rows = len(mcd.request("stats")["instances"])
    screen = top_screen(mcd, tmp_path, lines=12)
    assert len(screen) <= 11, screen  # the cursor's line stays free
    assert screen[0].startswith("KIND") and screen[-1].startswith("mcd: up")
    shown = screen[1:-2]
    assert len(shown) == 8 and all(row.startswith("client  quiet") for row in shown), screen
    assert screen[-2].startswith(f"... and {rows - 8} quieter row(s) this screen has no room for"), screen
    every = run("stats", socket_path=mcd.socket)  # not a terminal: every row, for a script or a pager
    assert len(every.stdout.splitlines()) == rows + 2


def test_top_on_a_short_terminal_keeps_the_rows_that_carried_traffic(mcd: Mcd, tmp_path: Path) -> None:
    """The first refresh has no rates yet, so every row was as busy as the
    next and top kept the first that fit: with many quiet hosted clients
    listed before it, the one server they all talk to was the row left out.
    Among rows as busy, the ones with more messages so far are kept."""
    for n in range(30):
        mcd.request("client.create", name=f"quiet{n:02d}")
    port = free_port()
    for cmd, params in (
        ("server.set", {"name": "hub", "key": "interface", "value": "127.0.0.1"}),
        ("server.set", {"name": "hub", "key": "port", "value": port}),
        ("server.start", {"name": "hub"}),
        ("client.set", {"name": "talker", "key": "address", "value": "127.0.0.1"}),
        ("client.set", {"name": "talker", "key": "port", "value": port}),
        ("client.connect", {"name": "talker", "wait": True, "timeout": 10}),
        ("server.send", {"name": "hub", "subject": "hello", "payload": {}}),
    ):
        mcd.request(cmd, **params)
    wait_until(lambda: _received(mcd, "talker") == 1)
    screen = top_screen(mcd, tmp_path, lines=12)
    shown = screen[1:-2]
    assert len(shown) == 8, screen
    names = [row.split()[1] for row in shown]
    assert "talker" in names and "hub" in names, screen


def _received(mcd: Mcd, name: str) -> int:
    stats = mcd.request("stats", name=name, kind="client")
    return int(stats["instances"][0]["stats"]["messages_received"])


def test_a_command_that_waits_in_mcd_gets_mcds_answer_not_a_timeout_of_its_own(
    mcd: Mcd, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`client connect --wait` (or a request) waits in mcd up to its own
    --timeout: the shell waits longer than that for the answer, as one-shot
    mcctl does.  (It waited its fixed 10 s, the same as connect's default
    wait, and said "mcd did not answer in time" instead of why the client
    did not connect.)  The shell's own wait is cut here so the test is short."""
    monkeypatch.setattr(repl, "ANSWER_TIMEOUT", 1.0)
    shell = repl.Shell(str(mcd.socket))
    try:
        shell.connect()
        for line in ("client set address nonsense.invalid", "client set port 1", "client connect --wait --timeout 2"):
            assert shell.run_line(line)
        out = capsys.readouterr().out
        assert "did not connect within 2 s; last attempt: cannot resolve 'nonsense.invalid'" in out, out
        assert "did not answer" not in out
        # The next command's wait is the shell's own again.
        assert shell.run_line("client disconnect")
        assert "client default: disconnected" in capsys.readouterr().out
    finally:
        shell.close()


def test_ctrl_c_ends_a_wait_for_mcd_not_the_shell(mcd: Mcd, tmp_path: Path) -> None:
    """A command that waits (`client connect --wait` to a server that is not
    there) is ended by Ctrl-C: back at the prompt, the shell goes on (it
    ended with a KeyboardInterrupt traceback), and mcd goes on trying."""
    sh = PtySession(mcctl_command(), shell_env(mcd.socket, tmp_path))
    try:
        sh.expect("connected to mcd")
        for line, answer in (("client set address nonsense.invalid", "address ="), ("client set port 1", "port =")):
            sh.line(line)
            sh.expect(answer)
        mark = len(sh.text)
        sh.line("client connect --wait --timeout 60")
        wait_until(lambda: mcd.phase("client") == "connecting", what="mcd trying, the shell waiting for it")
        # Only the main thread may take the Ctrl-C: where the kernel gives it
        # to another (the main one has a wake-up signal pending), the main
        # thread's wait would not end.
        assert _threads_taking_sigint(sh.proc.pid) == [sh.proc.pid]
        sh.type("\x03")
        sh.expect("interrupted: what was asked goes on", start=mark)
        sh.line("list")
        sh.expect("connecting", start=mark)
        sh.line("exit")
        assert sh.wait() == 0
    finally:
        sh.close()
    assert "Traceback" not in sh.text


def _threads_taking_sigint(pid: int) -> list[int]:
    """The threads of ``pid`` that do not block SIGINT."""
    takers = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as status:
            blocked = next(int(line.split()[1], 16) for line in status if line.startswith("SigBlk:"))
        if not blocked & (1 << (signal.SIGINT - 1)):
            takers.append(int(tid))
    return sorted(takers)
