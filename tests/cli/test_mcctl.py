"""The real mcctl entry point against a real mcd."""

from __future__ import annotations

import errno
import json
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import FaultProxy, Recorder, free_port, wait_until
from support.cli import mcctl_command, run
from support.mcd import Mcd

from mc_cli import output
from mc_control.client import ControlError
from mc_control.codes import MAX_LINE, SERVER_KEYS
from missioncommander import Client, ConnectionRefusedByServer, Message, NoResponder, Server, __version__


def start_hosted_server(mcd: Mcd) -> int:
    """mcd's default server, listening on a free loopback port (returned)."""
    port = free_port()
    for args in (
        ("server", "set", "interface", "127.0.0.1"),
        ("server", "set", "port", str(port)),
        ("server", "start"),
    ):
        assert run(*args, socket_path=mcd.socket).returncode == 0, args
    return port


def ok_json(*args: str, socket_path: Path) -> Any:
    out = run("--json", *args, socket_path=socket_path)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return json.loads(out.stdout)


@pytest.fixture
def mcd() -> Iterator[Mcd]:
    daemon = Mcd().start()
    yield daemon
    daemon.close()


def test_seed_quick_start_one_shot(mcd: Mcd) -> None:
    sock = mcd.socket
    port = free_port()
    for args in (
        ("server", "set", "interface", "127.0.0.1"),
        ("server", "set", "port", str(port)),
        ("server", "start"),
        ("client", "set", "address", "127.0.0.1"),
        ("client", "set", "port", str(port)),
        ("client", "set", "client_id", "abcXYZ"),
    ):
        out = run(*args, socket_path=sock)
        assert out.returncode == 0, out.stderr
    out = run("client", "connect", "--wait", "--timeout", "10", socket_path=sock)
    assert out.returncode == 0 and "connected" in out.stdout
    status = run("client", "status", socket_path=sock)
    assert "client default: connected" in status.stdout and "abcXYZ" in status.stdout
    sent = run("server", "send", "echo", '{"message": "hello"}', socket_path=sock)
    assert sent.returncode == 0 and "sent to all 1 client(s)" in sent.stdout
    listing = run("list", socket_path=sock).stdout.splitlines()
    assert listing[0].split() == ["KIND", "NAME", "STATE", "ENDPOINT", "DETAIL"]
    assert any(line.split()[:3] == ["client", "default", "connected"] for line in listing[1:])


def test_an_empty_list_names_the_commands_that_make_an_instance(mcd: Mcd) -> None:
    """It said "any client or server command creates one", and a newcomer's
    next command, client status or client connect, was refused: not there."""
    empty = run("list", socket_path=mcd.socket)
    assert empty.returncode == 0
    assert empty.stdout.strip() == (
        "no instances yet (client set KEY VALUE, server set KEY VALUE, server start or create makes one)"
    )
    assert run("client", "status", socket_path=mcd.socket).returncode == 1  # a read makes none
    # (server start makes one too, listening everywhere: not in a test.)
    for args in (
        ("client", "set", "port", "30000"),
        ("server", "set", "interface", "127.0.0.1"),
        ("client", "create", "--name", "c2"),
    ):
        assert run(*args, socket_path=mcd.socket).returncode == 0, args
    rows = [line.split()[:2] for line in run("list", socket_path=mcd.socket).stdout.splitlines()[1:]]
    assert sorted(rows) == [["client", "c2"], ["client", "default"], ["server", "default"]]


def test_an_ipv6_endpoint_is_written_with_its_host_in_brackets(mcd: Mcd) -> None:
    """``::1:30000`` reads as an address of nine groups; ``[::1]:30000`` is
    how a host and a port are written (and how the library logs them)."""
    port = free_port()
    sock = mcd.socket
    for args in (("server", "set", "interface", "::1"), ("server", "set", "port", str(port))):
        assert run(*args, socket_path=sock).returncode == 0, args
    started = run("server", "start", socket_path=sock)
    if started.returncode != 0 and "cannot listen" in started.stderr:
        pytest.skip("no IPv6 loopback on this machine")
    assert started.returncode == 0, started.stderr
    for args in (("client", "set", "address", "::1"), ("client", "set", "port", str(port))):
        assert run(*args, socket_path=sock).returncode == 0, args
    connected = run("client", "connect", "--wait", "--timeout", "10", socket_path=sock)
    assert connected.returncode == 0, connected.stderr
    assert f"connected ([::1]:{port})" in connected.stdout
    rows = [line.split() for line in run("list", socket_path=sock).stdout.splitlines()[1:]]
    assert sorted(row[3] for row in rows) == [f"[::1]:{port}"] * 2, rows


def test_json_output_of_every_command(mcd: Mcd) -> None:
    sock = mcd.socket
    port = free_port()
    settings = ok_json("server", "set", "interface", "127.0.0.1", socket_path=sock)["settings"]
    assert {key: settings[key] for key in ("interface", "port", "tls_cert", "tls_key", "tls_ca", "auth_token")} == {
        "interface": "127.0.0.1",
        "port": 0,
        "tls_cert": None,
        "tls_key": None,
        "tls_ca": None,
        "auth_token": None,
    }
    assert tuple(settings) == SERVER_KEYS  # the limits and timers too, at the library's defaults
    assert settings["max_connection_rate"] == 1000.0 and settings["auth_tokens"] is None
    ok_json("server", "set", "port", str(port), socket_path=sock)
    assert ok_json("server", "get", "port", socket_path=sock) == {"settings": {"port": port}}
    assert ok_json("server", "start", socket_path=sock)["phase"] == "listening"
    ok_json("--name", "c2", "client", "set", "address", "127.0.0.1", socket_path=sock)
    ok_json("client", "set", "port", str(port), "--name", "c2", socket_path=sock)  # options after the words
    ok_json("client", "--name=c2", "set", "client_id", "two", socket_path=sock)
    connected = ok_json("client", "connect", "--name", "c2", "--wait", socket_path=sock)
    assert connected["phase"] == "connected" and connected["settings"]["client_id"] == "two"
    assert ok_json("client", "get", "--name", "c2", socket_path=sock)["settings"]["port"] == port
    assert ok_json("server", "clients", socket_path=sock) == {"clients": ["two"]}
    assert ok_json("server", "send", "--to", "two", "hi", "{}", socket_path=sock) == {
        "sent": True,
        "to": "two",
        "clients": 1,
    }
    assert ok_json("client", "send", "--name", "c2", "up", '{"n": 1}', socket_path=sock)["sent"] is True
    assert ok_json("server", "status", socket_path=sock)["clients"] == ["two"]
    instances = ok_json("list", socket_path=sock)["instances"]
    assert {(i["kind"], i["name"]) for i in instances} == {("server", "default"), ("client", "c2")}
    assert ok_json("server", "kick", "two", "go", "away", socket_path=sock) == {"kicked": "two"}
    assert ok_json("client", "disconnect", "--name", "c2", socket_path=sock)["phase"] == "disconnected"
    assert ok_json("server", "stop", socket_path=sock)["phase"] == "stopped"
    assert ok_json("client", "remove", "--name", "c2", socket_path=sock)["removed"] is True
    assert ok_json("client", "create", "--name", "c3", socket_path=sock)["phase"] == "unconfigured"
    daemon = ok_json("daemon", "status", socket_path=sock)
    assert daemon["pid"] == mcd.proc.pid and daemon["servers"] == 1  # type: ignore[union-attr]
    version = ok_json("version", socket_path=sock)
    assert version["mcctl"]["api_version"] == version["mcd"]["api_version"] == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("launch",), "unknown command"),
        (("client",), "usage"),
        (("client", "fly"), "unknown client command"),
        # What a newcomer typed: the likely meaning, and where the commands are.
        (("server", "web", "set", "port", "0"), "(for the instance 'web': server set port 0 --name web)"),
        (("server", "add", "web"), "(did you mean server create?)"),
        (("client", "stop"), "(did you mean client disconnect?)"),
        (("client", "fly"), "fix: `mcctl help client` lists the client commands"),
        (("start",), "(did you mean server start or client connect?)"),
        (("ls",), "(did you mean list?)"),
        # The control API's daemon.shutdown is mcctl's daemon stop.
        (("daemon", "shutdown"), "unknown daemon command 'shutdown' (did you mean daemon stop?)"),
        (("daemon", "stpo"), "(did you mean daemon stop?); usage: daemon status|stop|wait"),
        # Misspellings: the word it most likely was.
        (("clinet", "status"), "unknown command 'clinet' (did you mean client?)"),
        (("client", "stauts"), "unknown client command 'stauts' (did you mean client status?)"),
        (("client", "set", "adress", "x"), "unknown client key 'adress' (did you mean address?)"),
        (("server", "get", "sesion_expiry"), "unknown server key 'sesion_expiry' (did you mean session_expiry?)"),
        # The library's server.send(client_id, message), typed as words.
        (("server", "send", "c42", "hi", "{}"), "(the client goes in --to: server send --to c42 hi '{}')"),
        (("server", "send", "*", "hi", "{}"), "(every client is the default: server send hi '{}')"),
        (("server", "request", "c42", "hi", "{}"), "(the client goes in --to: server request --to c42 hi '{}')"),
        # A request has one reply: no hint that suggests --to '*', which is refused.
        (("server", "request", "*", "hi", "{}"), "(a request goes to one client and waits for its one reply"),
        (("server", "request", "--to", "*", "hi"), "server request --to '*': a request goes to one client and"),
        (("server", "request", "hi"), "server request needs --to CLIENT_ID"),
        (("client", "set", "colour", "red"), "unknown client key"),
        (("client", "set", "port", "abc"), "port must be an integer"),
        (("server", "set", "heartbeat_interval", "soon"), "heartbeat_interval must be a number, not 'soon'"),
        (("server", "set", "auth_tokens", "[1]"), "a JSON object of client id to token"),
        (("client", "set", "inline_callbacks", "maybe"), "inline_callbacks must be true or false"),
        (("client", "set", "port"), "usage: client set"),
        (("client", "send", "echo", '{"message" "hello"}'), "column 12"),
        (("client", "send", "echo", "[1, 2]"), "must be a JSON object"),
        (("server", "set", "address", "x"), "unknown server key"),
        (("client", "connect", "--to", "x"), "--to only goes with server send"),
        (("list", "--name", "x"), "--name only goes with"),
        (("--bogus", "list"), "unknown option --bogus"),
        # A setting given as an option, as other tools take it: where it goes.
        (
            ("server", "start", "--port", "0"),
            "unknown option --port (port is a setting: server set port 0, then server start)",
        ),
        (
            ("client", "connect", "--tls", "--name", "my bot"),
            "(tls is a setting: client set tls true --name 'my bot', then client connect --name 'my bot')",
        ),
        (("server", "set", "--max-clients=5"), "(max_clients is a setting: server set max_clients 5)"),
        (("list", "--nmae", "x"), "unknown option --nmae (did you mean --name?)"),
        (("--timeout", "soon", "list"), "--timeout must be a number"),
        (("help", "clinet"), "no help on 'clinet' (did you mean client?); topics: client, server, events"),
        (("help", "nonexistent"), "no help on 'nonexistent'; topics:"),
        (("--timeout", "inf", "list"), "--timeout must be at most 86,400 seconds (a day), not 'inf'"),
        (("--timeout", "1e12", "daemon", "wait"), "--timeout must be at most 86,400 seconds"),
        (("--timeout", "7200", "client", "request", "q"), "client request --timeout is at most 3600 seconds"),
        (("client", "connect", "--wait", "--timeout", "3601"), "client connect --timeout is at most 3600 seconds"),
        (("server", "set", "heartbeat_interval", "nan"), "heartbeat_interval must be a finite number, not 'nan'"),
        (("client", "set", "connect_timeout", "1e400"), "connect_timeout must be a finite number, not '1e400'"),
        (("wait", "listening", "--kind", "client"), "cannot be 'listening'"),
        (("wait", "client", "listening"), "cannot be 'listening'"),
        (("wait", "server", "listening", "--kind", "client"), "usage: wait [client|server]"),
        (("wait", "server"), "wait server needs a STATE: listening, stopped"),
    ],
)
def test_usage_errors_exit_2_and_send_nothing(mcd: Mcd, args: tuple[str, ...], needle: str) -> None:
    out = run(*args, socket_path=mcd.socket)
    assert out.returncode == 2, out
    assert needle in out.stderr
    assert "Traceback" not in out.stderr
    assert mcd.request("daemon.status")["last_seq"] == 0  # nothing reached the daemon


def test_daemon_errors_exit_1_with_json_details(mcd: Mcd) -> None:
    out = run("--json", "client", "connect", socket_path=mcd.socket)  # not configured
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"]["code"] == "state_error"
    assert "has no address or port yet: client set address HOST" in json.loads(out.stdout)["error"]["message"]
    assert mcd.request("list")["instances"] == []  # refused, it created nothing
    out = run("client", "send", "--name", "ghost", "x", socket_path=mcd.socket)
    assert out.returncode == 1 and "no client named 'ghost'" in out.stderr
    out = run("server", "set", "port", "70000", socket_path=mcd.socket)
    assert out.returncode == 2 and "port must be from 0 to 65535" in out.stderr


def test_timeouts_exit_4(mcd: Mcd) -> None:
    port = free_port()  # nothing listens there
    run("client", "set", "address", "127.0.0.1", socket_path=mcd.socket)
    run("client", "set", "port", str(port), socket_path=mcd.socket)
    out = run("client", "connect", "--wait", "--timeout", "0.5", socket_path=mcd.socket)
    assert out.returncode == 4, out
    assert "did not connect within 0.5 s" in out.stderr and "Connection refused" in out.stderr
    assert "None" not in out.stderr
    out = run("wait", "connected", "--timeout", "0.5", socket_path=mcd.socket)
    assert out.returncode == 4 and "not connected" in out.stderr
    out = run("wait", "client", "connected", "--timeout", "0.5", socket_path=mcd.socket)  # the kind as a word
    assert out.returncode == 4 and "not connected" in out.stderr


def test_a_send_before_the_client_connects_says_what_to_do(mcd: Mcd) -> None:
    port = free_port()  # nothing listens there
    for name in ("default", "other"):
        mcd.request("client.set", name=name, key="address", value="127.0.0.1")
        mcd.request("client.set", name=name, key="port", value=port)
    for command in (("client", "send", "hi"), ("client", "request", "hi")):
        out = run(*command, socket_path=mcd.socket)
        assert out.returncode == 1, out
        assert "client 'default' is not connected: client connect first" in out.stderr
        out = run(*command, "--name", "other", socket_path=mcd.socket)
        assert "client 'other' is not connected: client connect --name other first" in out.stderr
    with pytest.raises(ControlError, match="Connection refused"):  # and it goes on trying
        mcd.request("client.connect", wait="attempt")
    for command in (("client", "send", "hi"), ("client", "request", "hi")):
        out = run(*command, socket_path=mcd.socket)
        assert out.returncode == 1, out
        assert "client 'default' has not connected yet (last attempt: cannot connect to" in out.stderr
        assert "Connection refused" in out.stderr and "client connect --wait waits for that" in out.stderr
        assert "connect()" not in out.stderr and "STATE_" not in out.stderr


def test_a_hosted_client_set_to_reconnect_on_shutdown_comes_back_to_its_restarted_server(mcd: Mcd) -> None:
    sock = mcd.socket
    first = Server(interface="127.0.0.1", port=0)
    first.start()
    port = first.port
    try:
        for key, value in (
            ("address", "127.0.0.1"),
            ("port", str(port)),
            ("reconnect_delay", "0.05"),
            ("reconnect_on_shutdown", "true"),
        ):
            assert run("client", "set", key, value, socket_path=sock).returncode == 0
        assert ok_json("client", "get", "reconnect_on_shutdown", socket_path=sock)["settings"] == {
            "reconnect_on_shutdown": True
        }
        assert run("client", "connect", "--wait", "--timeout", "30", socket_path=sock).returncode == 0
    finally:
        first.stop()  # SHUTDOWN: without the setting the hosted client would stop here
    with Server(interface="127.0.0.1", port=port) as second:
        got = Recorder().attach(second, "clientconnect", "message")
        got.wait_count("clientconnect", 1)
        out = run("client", "send", "back", '{"n": 1}', socket_path=sock)
        assert out.returncode == 0, out
        assert [m for _, m in got.wait_count("message", 1)] == [Message("back", {"n": 1})]
        assert ok_json("client", "status", socket_path=sock)["connected"] is True


def test_wait_returns_when_the_state_is_reached(mcd: Mcd) -> None:
    port = free_port()
    mcd.request("server.set", key="interface", value="127.0.0.1")
    mcd.request("server.set", key="port", value=port)
    env = dict(os.environ, MC_SOCKET=str(mcd.socket), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    waiter = subprocess.Popen(
        [*mcctl_command(), "wait", "listening", "--timeout", "30"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        # The waiter subscribes before it checks: whenever it got there, it sees this.
        with mcd.client() as c:
            c.request("server.start")
        out, _ = waiter.communicate(timeout=40)
    finally:
        waiter.kill()
    assert waiter.returncode == 0 and "server default: listening" in out


def test_events_stream_json_lines_with_catch_up(mcd: Mcd) -> None:
    mcd.request("client.create", name="a")
    mcd.request("server.create", name="b")
    env = dict(os.environ, MC_SOCKET=str(mcd.socket), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [*mcctl_command(), "events", "--since", "0", "--json"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        mcd.request("client.remove", name="a")
        lines.append(json.loads(proc.stdout.readline()))
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
    assert [(e["seq"], e["event"], e["name"]) for e in lines] == [
        (1, "created", "a"),
        (2, "created", "b"),
        (3, "removed", "a"),
    ]


@pytest.mark.parametrize("args", [("list",), ("--json", "list"), ("events",)])
def test_output_that_cannot_be_written_is_an_error_not_a_traceback(mcd: Mcd, args: tuple[str, ...]) -> None:
    """`mcctl events > file` on a full disk ended in an OSError traceback."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here to stand for a full disk")
    env = dict(os.environ, MC_SOCKET=str(mcd.socket), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*mcctl_command(), *args], stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=60, check=False
        )
    assert done.returncode == 1
    assert done.stderr == "mcctl: cannot write its output: No space left on device\n"


def events_since(mcd: Mcd, since: int, lines: int = 1) -> tuple[str, str]:
    """What `mcctl events --since N` says first: on standard error, and its
    banner (with the ``lines - 1`` lines after it)."""
    env = dict(os.environ, MC_SOCKET=str(mcd.socket), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [*mcctl_command(), "events", "--since", str(since)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        return proc.stderr.readline(), "".join(proc.stdout.readline() for _ in range(lines))
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_events_since_a_number_mcd_has_not_reached_says_so() -> None:
    """A number from before mcd restarted is past its last event: mcctl
    said those events were "no longer kept", as if they had been dropped."""
    mcd = Mcd(None, "--event-ring", "2").start()
    try:
        for name in ("a", "b", "c", "d"):
            mcd.request("client.create", name=name)
        said, banner = events_since(mcd, 500)
        assert said.startswith("mcctl: mcd has had no event #500 yet (its last is #4"), said
        assert "no longer kept" not in said and banner.startswith("watching events")
        # #2 has left the ring of two: what is kept, #3 and #4, is replayed
        # (it said "events after #1 are no longer kept", and showed none).
        said, shown = events_since(mcd, 1, lines=3)
        assert said.startswith("mcctl: events #2 to #2 are no longer kept (mcd --event-ring keeps more);"), said
        assert said.rstrip().endswith("replaying from #3"), said
        banner, third, fourth = shown.splitlines()
        assert banner.startswith("watching events")
        assert re.search(r"#3\s+client/c\s+created", third) and re.search(r"#4\s+client/d\s+created", fourth), shown
    finally:
        mcd.close()


def test_events_catch_up_after_falling_behind_a_flood() -> None:
    """A reader slower than a flood (here: a pipe nobody reads for a while)
    is cut off by mcd, which never waits for it: mcctl subscribes again
    after the last event it printed and catches up from the ring, every
    message once and in order, and goes on (it stopped at the first cut)."""
    mcd = Mcd(None, "--event-queue", "50").start()
    env = dict(os.environ, MC_SOCKET=str(mcd.socket), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [*mcctl_command(), "events", "--json", "--name", "default", "--kind", "server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    try:
        port = start_hosted_server(mcd)
        # The flood must find it subscribed: what comes before its subscribe it never sees.
        wait_until(lambda: mcd.request("stats")["daemon"]["event_subscribers"] == 1, what="mcctl subscribed")
        fill = "x" * 2000  # the socket and pipe buffers hold a few hundred of these
        with Client(address="127.0.0.1", port=port, client_id="flood") as sender:
            for n in range(3000):
                sender.send(Message("n", {"n": n, "fill": fill}))
            wait_until(lambda: sender.queued == 0, what="the flood acknowledged")
        assert proc.stdout is not None
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        got, cuts = [], 0
        for _ in range(10_000):  # 3,000 messages, the events around them and the cuts
            ev = json.loads(lines.get(timeout=30))
            if ev.get("type") == "overflow":
                cuts += 1
            elif ev["event"] == "message":
                got.append(ev["data"]["payload"]["n"])
            if len(got) == 3000:
                break
        assert got == list(range(3000)) and cuts >= 1
        mcd.request("server.stop")
        stopped = (json.loads(lines.get(timeout=30)).get("event") for _ in range(100))
        assert "stopped" in stopped and proc.poll() is None  # and mcctl still runs
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        mcd.close()
    assert "left mcd's ring" not in err and "Traceback" not in err, err


def test_events_in_words_show_the_setting_a_change_set(mcd: Mcd) -> None:
    """A settings event carries every setting (for controllers); in words,
    only what the change set: one line a person can read."""
    mcd.request("server.set", key="interface", value="127.0.0.1")
    mcd.request("server.set", key="port", value=4567)
    env = dict(os.environ, MC_SOCKET=str(mcd.socket), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([*mcctl_command(), "events", "--since", "0"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]  # the banner, created, two settings
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
    assert lines[0].startswith("watching events")
    assert lines[2].rstrip().endswith("server/default  settings interface='127.0.0.1'")
    assert lines[3].rstrip().endswith("server/default  settings port=4567")


def connect_to_peer(mcd: Mcd, peer: Server, client_id: str) -> None:
    """mcd's default client, connected to ``peer`` as ``client_id``."""
    mcd.request("client.set", key="address", value="127.0.0.1")
    mcd.request("client.set", key="port", value=peer.port)
    mcd.request("client.set", key="client_id", value=client_id)
    mcd.request("client.set", key="reconnect_attempts", value=1)
    mcd.request("client.connect", wait=True)


def first_event_line(mcd: Mcd, *args: str, wanted: Callable[[str], bool]) -> str:
    """The first line of `mcctl ARGS events --since 0` that is ``wanted``
    (the last one read if none is within 50 lines, or the stream ends)."""
    env = dict(os.environ, MC_SOCKET=str(mcd.socket), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [*mcctl_command(), *args, "events", "--since", "0"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = ""
        for _ in range(50):  # bounded: the banner and the client's earlier events come first
            line = proc.stdout.readline()
            if not line or wanted(line):
                break
        return line
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def test_what_a_peer_chose_reaches_the_terminal_without_its_control_characters(mcd: Mcd) -> None:
    """A subject or a close reason comes from the peer: written as it was,
    an escape sequence in it recoloured, cleared or retitled the terminal
    of whoever ran `mcctl events` or `client status`, and a line break in
    it faked a line of mcctl's own."""
    with Server(interface="127.0.0.1", port=0) as peer:
        connect_to_peer(mcd, peer, "victim")
        peer.send("victim", Message("\x1b]0;pwned\x07\x1b[2J\n12:00:00.000  #1  fake", {"t": "\x1b[31mred\u009b"}))
        line = first_event_line(mcd, wanted=lambda line: "message:" in line)
        assert "message: \\x1b]0;pwned\\x07\\x1b[2J\\n12:00:00.000  #1  fake" in line, line
        assert '"\\u001b[31mred\\x9b"' in line and "\x1b" not in line and "\x9b" not in line
        peer.disconnect_client("victim", "bye\x1b[2J\nfake line")
        wait_until(lambda: mcd.request("client.status")["phase"] != "connected", what="the kick")
    status = run("client", "status", socket_path=mcd.socket).stdout
    assert "bye\\x1b[2J\\nfake line" in status and "\x1b" not in status, status


def test_json_output_stays_json_whatever_control_characters_a_peer_chose(mcd: Mcd) -> None:
    """``--json`` passed its lines through the terminal escaping, which
    wrote DEL and the C1 controls (which json leaves raw) as ``\\x7f``:
    not JSON, so a script reading `mcctl --json events` failed on the first
    such payload a peer sent. They are ``\\u`` escapes now: the same JSON,
    and nothing a terminal acts on."""
    payload = {"t": "\x1b[31mred\u009b\x7f", "é": "ünïcode stays"}
    with Server(interface="127.0.0.1", port=0) as peer:
        connect_to_peer(mcd, peer, "reader")
        peer.send("reader", Message("odd\x9bsubject\x7f", payload))
        # Every line must be JSON: json.loads raises on the first that is not.
        raw = first_event_line(mcd, "--json", wanted=lambda line: json.loads(line).get("event") == "message")
    event = json.loads(raw)
    assert event["data"] == {"subject": "odd\x9bsubject\x7f", "payload": payload}
    assert not any(c in raw for c in "\x1b\x7f\x9b") and "ünïcode stays" in raw, raw


def test_a_peers_bidi_controls_cannot_reorder_what_mcctl_prints(mcd: Mcd) -> None:
    """U+202E and its kin are invisible and reorder the rest of a line as
    a terminal shows it: a subject holding one made an event line (or a
    reply) read as something else. mcctl writes them as ``\\u`` escapes,
    in human and in ``--json`` output (the same JSON)."""
    with Server(interface="127.0.0.1", port=0) as peer:
        peer.subscribe("request", lambda client_id, m: Message("re\u202eply", {"t": "\u2067x\u2069"}))
        connect_to_peer(mcd, peer, "reader")
        peer.send("reader", Message("evil\u202etxt.exe", {"t": "\u200f"}))
        line = first_event_line(mcd, wanted=lambda line: "message:" in line)
        assert 'message: evil\\u202etxt.exe {"t": "\\u200f"}' in line, line
        raw = first_event_line(mcd, "--json", wanted=lambda line: json.loads(line).get("event") == "message")
        assert json.loads(raw)["data"]["subject"] == "evil\u202etxt.exe" and "\u202e" not in raw, raw
        reply = run("client", "request", "q", socket_path=mcd.socket)
        assert reply.returncode == 0 and reply.stdout == 're\\u202eply {"t": "\\u2067x\\u2069"}\n', reply


@pytest.mark.parametrize("kind", ["missing", "stale"])
def test_daemon_not_running_says_why_and_exits_3(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "mcd.sock"
    if kind == "stale":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    out = run("client", "status", socket_path=path)
    assert out.returncode == 3
    assert str(path) in out.stderr and "Traceback" not in out.stderr
    assert ("mcd &" in out.stderr) and (("stale" in out.stderr) == (kind == "stale"))
    as_json = run("--json", "list", "--socket", str(path))
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["error"]["code"] == f"daemon_{kind}"


def test_daemon_wait_waits_for_an_mcd_that_is_starting() -> None:
    # `mcd & mcctl server start` in a script found no socket: mcd takes a
    # fraction of a second to make it.  `daemon wait` bridges that.  Here a
    # listener of the test's stands where mcd will be, hanging up on each
    # attempt, so the test sees mcctl try, fail and try again before mcd starts.
    mcd = Mcd()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(mcd.socket))
    listener.listen()
    listener.settimeout(30)
    proc = subprocess.Popen(
        [*mcctl_command(), "--json", "daemon", "wait", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "MC_SOCKET": str(mcd.socket)},
    )
    try:
        for _ in range(2):
            conn, _ = listener.accept()  # mcctl tried ...
            conn.close()  # ... and found nobody to answer
        listener.close()
        mcd.socket.unlink()
        mcd.start()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert json.loads(out) == {
            "version": mcd.request("hello")["version"],
            "pid": mcd.proc.pid,
            "socket": str(mcd.socket),
        }  # type: ignore[union-attr]
        assert run("list", socket_path=mcd.socket).returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        mcd.close()


def test_daemon_status_says_when_commands_wait_for_the_restore() -> None:
    """A restore takes a moment at start (seconds for thousands of saved
    instances), too short to catch from outside reliably: its rendering."""
    status = {"version": "1", "api_version": 1, "uptime": 1, "clients": 2, "clients_connected": 0}
    text = output.daemon_status({**status, "restoring": 400})
    assert text.startswith("mcd is running, restoring its saved instances (400 to go; commands wait for it)")
    assert output.daemon_status({**status, "restoring": 0}).startswith(
        "mcd is running, restoring its saved instances (commands wait for it)"
    )
    assert output.daemon_status(status).startswith("mcd is running\n")


def test_server_status_counts_many_clients_instead_of_naming_them_all() -> None:
    """A server with hundreds of clients: its status names ten and says where the rest are."""
    ids = [f"u{i:03d}" for i in range(300)]
    st = {"kind": "server", "name": "big", "phase": "listening", "settings": {}, "running": True, "port": 1}
    rows = output.status({**st, "desired": "started", "clients": ids, "detached": ids[:3]}).splitlines()
    clients = next(row for row in rows if row.split()[0] == "clients")
    assert clients.split(None, 1)[1] == ("300: " + ", ".join(ids[:10]) + ", ... (all: server clients --name big)")
    assert next(row for row in rows if row.split()[0] == "detached").split() == ["detached", "u000,", "u001,", "u002"]


def test_server_status_says_what_a_cluster_node_lived_through() -> None:
    """Takeovers, resubscribes and a twin, rare and telling, in the row an
    operator reads (a takeover needs a node killed: tests/cluster has those)."""
    st = {"kind": "server", "name": "n", "phase": "listening", "settings": {}, "running": True, "port": 1}
    node = {"node": "n1", "ready": True, "url": "redis://r", "takeovers": 0, "resubscribes": 0}

    def row(**figures: object) -> str:
        rows = output.status({**st, "desired": "started", "cluster": {**node, **figures}}).splitlines()
        return next(row for row in rows if row.strip().startswith("cluster node")).split(None, 2)[2]

    assert row() == "n1 (ready)"
    assert row(takeovers=2) == "n1 (ready), 2 takeover(s)"
    assert row(takeovers=2, resubscribes=1) == "n1 (ready), 2 takeover(s), 1 resubscribe(s)"
    twin = {"same_node_id": {"holder": "n1#1f2e3d4c", "address": "10.0.0.2:30000"}}
    assert row(**twin) == "n1 (ready), ANOTHER NODE RUNS WITH THIS node_id (10.0.0.2:30000)"


def test_daemon_wait_gives_up_after_its_timeout_with_exit_4(tmp_path: Path) -> None:
    path = tmp_path / "mcd.sock"
    out = run("daemon", "wait", "--timeout", "0.2", socket_path=path)
    assert out.returncode == 4, out.stderr
    assert f"mcd did not answer at {path} within 0.2 s (last: mcd is not running" in out.stderr
    assert "Traceback" not in out.stderr
    as_json = run("--json", "daemon", "wait", "--timeout", "0.2", socket_path=path)
    assert as_json.returncode == 4 and json.loads(as_json.stdout)["error"]["code"] == "timeout"


def test_daemon_wait_does_not_wait_for_what_waiting_cannot_fix(tmp_path: Path) -> None:
    # A path that is not a socket will not become mcd's: exit 3 at once,
    # not after the hour asked for (run() would time out first).
    path = tmp_path / "mcd.sock"
    path.write_text("not a socket")
    out = run("daemon", "wait", "--timeout", "3600", socket_path=path, timeout=60)
    assert out.returncode == 3 and "is not a socket" in out.stderr


def test_help_lists_commands_and_exit_codes() -> None:
    out = run("--help")
    assert out.returncode == 0
    for needle in ("client set KEY VALUE", "server send [--to CLIENT_ID]", "exit status", "4  timeout"):
        assert needle in out.stdout
    assert "server kick" in run("help", "server").stdout
    # The shell's help points to `help all`; typed at the command line it is the same.
    assert run("help", "all").stdout == out.stdout
    no_tty = run()  # mcctl alone, not on a terminal: usage
    assert no_tty.returncode == 2 and "usage: mcctl" in no_tty.stdout


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("events", "--help"), "--since N"),
        (("help", "watch"), "--since N"),
        (("top", "--help"), "docs/STATS.md"),
        (("help", "stats"), "top [--name NAME]"),
        (("wait", "--help"), "server STATE: listening, stopped"),
        (("help", "daemon"), "daemon stop"),
        (("help", "daemon"), "mcd & mcctl daemon wait"),
        (("wait", "--help"), "mcctl daemon wait"),
    ],
)
def test_help_on_a_command_is_about_that_command(argv: tuple[str, ...], needle: str) -> None:
    # `mcctl events --help` printed the whole usage: the options that only
    # events takes were one line among forty.
    out = run(*argv)
    assert out.returncode == 0 and needle in out.stdout
    assert "usage: mcctl" not in out.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_completes_as_the_shell_does(mcd: Mcd, tmp_path: Path) -> None:
    """The script asks mcctl what may come next, so bash has the shell's
    rules and mcd's names.  (Its own copy of the rules counted the value
    of an option as a command word: `client set --name web <Tab>` offered
    the keys one word early, and `--name <Tab>` offered keys, not names.)"""
    out = run("completion", "bash")
    assert out.returncode == 0 and "complete -F _mcctl mcctl" in out.stdout
    script = tmp_path / "mcctl.bash"
    script.write_text(out.stdout)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    # `mcctl` on PATH, as an installed one is: the script runs the command it completes.
    (tmp_path / "bin").mkdir()
    wrapper = tmp_path / "bin" / "mcctl"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(w) for w in mcctl_command()) + ' "$@"\n')
    wrapper.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "MC_SOCKET": str(mcd.socket),
    }

    def complete(*words: str) -> list[str]:
        line = " ".join(shlex.quote(w) for w in words)
        probe = subprocess.run(
            [
                "bash",
                "-c",
                f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _mcctl; echo ${{COMPREPLY[@]}}",
            ],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        return probe.stdout.split()

    assert complete("mcctl", "client", "se") == ["set", "send"]
    assert complete("mcctl", "wait", "s") == ["server", "stopped"]
    assert complete("mcctl", "wait", "server", "") == ["listening", "stopped"]
    assert complete("mcctl", "st") == ["stats"]  # the commands the grammar has, each of them
    assert complete("mcctl", "to") == ["top"]
    assert complete("mcctl", "help", "") == ["client", "server", "events", "stats", "wait", "daemon"]
    assert complete("mcctl", "--js") == ["--json"]
    # An option's value is not a command word.
    assert complete("mcctl", "client", "set", "--name", "web", "po") == ["port"]
    assert complete("mcctl", "--timeout", "3", "cl") == ["client"]
    assert complete("mcctl", "stats", "--kind", "") == ["client", "server"]
    assert complete("mcctl", "client", "request", "--timeout", "") == []
    # bash hands `--name=web` over as three words (= breaks words), readline as one.
    assert complete("mcctl", "client", "--name", "=", "web", "set", "po") == ["port"]
    assert complete("mcctl", "client", "--name=web", "set", "po") == ["port"]
    assert complete("mcctl", "stats", "--kind", "=", "") == ["client", "server"]
    # Names and ids are mcd's.
    port = free_port()
    mcd.request("client.create", name="rover")
    mcd.request("server.set", name="hub", key="interface", value="127.0.0.1")
    mcd.request("server.set", name="hub", key="port", value=port)
    mcd.request("server.start", name="hub")
    mcd.request("client.set", name="rover", key="address", value="127.0.0.1")
    mcd.request("client.set", name="rover", key="port", value=port)
    mcd.request("client.set", name="rover", key="client_id", value="rover-7")
    mcd.request("client.connect", name="rover", wait=True, timeout=10)
    assert complete("mcctl", "client", "status", "--name", "") == ["rover"]
    assert complete("mcctl", "client", "status", "--name", "=", "r") == ["rover"]
    assert complete("mcctl", "server", "--name", "") == ["hub"]
    assert complete("mcctl", "server", "kick", "--name", "hub", "") == ["rover-7"]
    assert complete("mcctl", "server", "send", "--name", "hub", "--to", "r") == ["rover-7"]
    # Without an mcd there are no names to offer, and nothing breaks.
    assert complete("mcctl", "--socket", str(tmp_path / "none.sock"), "client", "status", "--name", "") == []
    assert complete("mcctl", "--socket", str(tmp_path / "none.sock"), "client", "") != []


def test_server_clients_says_which_are_detached(mcd: Mcd) -> None:
    """A client whose connection broke keeps its session for a while and
    stays in `server clients`: the list looked the same as for a connected
    one, and only `stats` told them apart."""
    port = free_port()
    mcd.request("server.set", key="interface", value="127.0.0.1")
    mcd.request("server.set", key="port", value=port)
    mcd.request("server.start")
    proxy = FaultProxy(port)
    steady = Client(address="127.0.0.1", port=port, client_id="steady")
    cut = Client(
        address="127.0.0.1", port=proxy.port, client_id="cut-off", reconnect_delay=0.05, reconnect_max_delay=0.5
    )
    try:
        steady.connect()
        cut.connect()
        assert ok_json("server", "clients", socket_path=mcd.socket) == {"clients": ["steady", "cut-off"]}
        proxy.refusing = True  # it cannot come back
        proxy.cut("rst")
        wait_until(lambda: "detached" in mcd.request("server.clients"))
        assert ok_json("server", "clients", socket_path=mcd.socket) == {
            "clients": ["steady", "cut-off"],
            "detached": ["cut-off"],
        }
        assert mcd.request("server.status")["detached"] == ["cut-off"]
        assert "2 client(s), 1 detached" in run("list", socket_path=mcd.socket).stdout
        status = run("server", "status", socket_path=mcd.socket).stdout.splitlines()
        assert any(row.split() == ["detached", "cut-off"] for row in status), status
        table = run("server", "clients", socket_path=mcd.socket).stdout.splitlines()
        assert [row.split(None, 1) for row in table] == [
            ["CLIENT", "STATE"],
            ["steady", "connected"],
            ["cut-off", "detached (may resume)"],
        ]
        proxy.refusing = False  # back: connected again, the same session
        wait_until(lambda: "detached" not in mcd.request("server.clients"))
        assert run("server", "clients", socket_path=mcd.socket).stdout.split() == ["steady", "cut-off"]
        # A kick ends the session, detached or not (it said "disconnected").
        kicked = run("server", "kick", "cut-off", socket_path=mcd.socket).stdout.strip()
        assert kicked == "kicked cut-off: its session ended (the client does not reconnect by itself)"
    finally:
        cut.disconnect()
        steady.disconnect()
        proxy.close()


def test_connect_says_how_the_first_attempt_went(mcd: Mcd) -> None:
    sock = mcd.socket
    closed = free_port()  # nothing listens there
    run("client", "set", "address", "127.0.0.1", socket_path=sock)
    run("client", "set", "port", str(closed), socket_path=sock)
    out = run("client", "connect", socket_path=sock)
    assert out.returncode == 1, out
    assert "could not connect" in out.stderr and "Connection refused" in out.stderr
    assert "keeps trying in the background (client disconnect stops it)" in out.stderr
    assert run("client", "disconnect", socket_path=sock).returncode == 0
    # --no-wait promises only that it started.
    out = run("client", "connect", "--no-wait", socket_path=sock)
    assert out.returncode == 0 and "client default:" in out.stdout
    run("client", "disconnect", socket_path=sock)
    assert run("client", "connect", "--wait", "--no-wait", socket_path=sock).returncode == 2
    # An unconfigured client says what to set, in mcctl's words.
    out = run("--name", "fresh", "client", "connect", socket_path=sock)
    assert out.returncode == 1
    assert "client set address HOST, client set port PORT --name fresh first" in out.stderr
    # And with a server there, plain connect reports success.
    port = free_port()
    mcd.request("server.set", key="interface", value="127.0.0.1")
    mcd.request("server.set", key="port", value=port)
    mcd.request("server.start")
    run("client", "set", "port", str(port), socket_path=sock)
    out = run("client", "connect", socket_path=sock)
    assert out.returncode == 0 and "client default: connected" in out.stdout, out


def test_reads_of_an_unknown_name_fail_and_create_nothing(mcd: Mcd) -> None:
    sock = mcd.socket
    run("--name", "real", "client", "create", socket_path=sock)
    for args in (("client", "get", "port"), ("client", "status"), ("client", "disconnect"), ("server", "stop")):
        out = run("--name", "typo1", *args, socket_path=sock)
        assert out.returncode == 1, (args, out)
        assert f"no {args[0]} named 'typo1'" in out.stderr
    assert "(the clients: real)" in run("--name", "typo1", "client", "get", socket_path=sock).stderr
    names = {i["name"] for i in ok_json("list", socket_path=sock)["instances"]}
    assert "typo1" not in names
    assert "typo1" not in (mcd.state_dir / "state.json").read_text()
    # Commands that configure do create.
    assert run("--name", "typo1", "client", "set", "port", "5", socket_path=sock).returncode == 0
    assert "typo1" in {i["name"] for i in ok_json("list", socket_path=sock)["instances"]}


def test_setting_the_current_value_of_a_running_server_succeeds(mcd: Mcd) -> None:
    sock = mcd.socket
    port = free_port()
    for args in (
        ("server", "set", "interface", "127.0.0.1"),
        ("server", "set", "port", str(port)),
        ("server", "start"),
    ):
        assert run(*args, socket_path=sock).returncode == 0
    # The README's daemon quick start, run again after mcd restored the server.
    assert run("server", "set", "interface", "127.0.0.1", socket_path=sock).returncode == 0
    assert run("server", "set", "port", str(port), socket_path=sock).returncode == 0
    out = run("server", "set", "port", str(port + 1 if port < 65535 else port - 1), socket_path=sock)
    assert out.returncode == 1
    assert "cannot change port while server 'default' is listening; server stop first" in out.stderr
    assert "STATE_" not in out.stderr and "stop()" not in out.stderr


def test_set_echoes_a_value_as_get_shows_it(mcd: Mcd) -> None:
    """What `set` says it set is what `get` shows, and typed back sets it again."""

    def both(kind: str, key: str, value: str) -> tuple[str, str]:
        said = run(kind, "set", key, value, socket_path=mcd.socket)
        got = run(kind, "get", key, socket_path=mcd.socket)
        assert said.returncode == 0 and got.returncode == 0, (said.stderr, got.stderr)
        return said.stdout.strip().split(" = ", 1)[1], got.stdout.split(None, 1)[1].strip()

    assert both("client", "servers", "127.0.0.1:1,127.0.0.1:2") == ("127.0.0.1:1,127.0.0.1:2",) * 2
    assert both("client", "servers", "-") == ("-", "-")
    assert both("client", "auth_token", "none") == ("-", "-")
    assert both("server", "interface", "") == ("* (any)", "* (any)")
    assert both("server", "interface", "127.0.0.1") == ("127.0.0.1", "127.0.0.1")


def test_a_server_on_a_taken_port_fails_with_bind_failed_and_the_daemon_goes_on(mcd: Mcd) -> None:
    sock = mcd.socket
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run("server", "set", "interface", "127.0.0.1", socket_path=sock)
        run("server", "set", "port", str(port), socket_path=sock)
        out = run("server", "start", socket_path=sock)
        assert out.returncode == 1
        in_use = os.strerror(errno.EADDRINUSE)
        message, fix = out.stderr.splitlines()  # mcd's words, then what to change (see the test below)
        assert message == f"mcctl: [Errno {errno.EADDRINUSE}] cannot listen on 127.0.0.1:{port}: {in_use}"
        assert fix.startswith("  fix: another server listens on that port")
        as_json = run("--json", "server", "start", socket_path=sock)
        assert json.loads(as_json.stdout)["error"]["code"] == "bind_failed"
        status = ok_json("server", "status", socket_path=sock)
        assert status["phase"] == "stopped" and in_use in status["last_error"]
    # The port is free again: the same server starts, so nothing was left half-open.
    assert run("server", "start", socket_path=sock).returncode == 0
    assert ok_json("server", "status", socket_path=sock)["phase"] == "listening"


def test_python_m_missioncommander_cli_with_a_command_runs_it_as_mcctl(mcd: Mcd) -> None:
    env = {**os.environ, "MC_SOCKET": str(mcd.socket), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "missioncommander", "cli", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)

    assert cli("client", "set", "address", "127.0.0.1").returncode == 0
    listing = cli("list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split()[:5] == ["KIND", "NAME", "STATE", "ENDPOINT", "DETAIL"]
    assert json.loads(cli("--json", "client", "status").stdout)["settings"]["address"] == "127.0.0.1"
    # Without a command it is the shell, reading commands from stdin when it is not a terminal.
    piped = subprocess.run(
        [sys.executable, "-m", "missioncommander", "cli"],
        input="client get address\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert piped.returncode == 0 and "127.0.0.1" in piped.stdout, piped.stderr
    wrong = cli("frobnicate")
    assert wrong.returncode == 2 and "unknown command 'frobnicate'" in wrong.stderr


def test_a_send_into_a_full_queue_is_refused_as_queue_full_not_as_mcd_silent(mcd: Mcd) -> None:
    """A hosted client's send into a full queue waited its send_timeout
    (10 s) in mcd while mcctl gave up after 5 s: "mcd did not answer ...
    check it with systemctl" (exit 3), as if mcd were down.  Now the send
    waits --timeout at most (default 10, never past send_timeout) and mcctl
    waits for the answer: queue_full, exit 1.  A server's send waits only
    when given --timeout."""
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0) as stuck:
        stuck.subscribe("message", lambda cid, m: release.wait(60))  # acknowledges nothing
        sock = mcd.socket
        try:
            for key, value in (("address", "127.0.0.1"), ("port", str(stuck.port)), ("max_queued", "2")):
                assert run("client", "set", key, value, socket_path=sock).returncode == 0
            assert run("client", "connect", "--wait", socket_path=sock).returncode == 0
            for n in range(2):
                assert run("client", "send", "m", json.dumps({"n": n}), socket_path=sock).returncode == 0
            full = run("client", "send", "m", "--timeout", "0.5", socket_path=sock)
            assert full.returncode == 1, full.stderr
            assert "send queue full: the server acknowledged nothing for 0.5 s" in full.stderr
            # Never past the client's own send_timeout, whatever --timeout says.
            assert run("client", "set", "send_timeout", "0.3", socket_path=sock).returncode == 0
            capped = run("--json", "client", "send", "m", socket_path=sock)
            assert capped.returncode == 1
            assert json.loads(capped.stdout)["error"]["code"] == "queue_full" and "for 0.3 s" in capped.stdout
        finally:
            release.set()

    # A hosted server: a client of this process holds its messages.
    assert run("server", "set", "interface", "127.0.0.1", socket_path=sock).returncode == 0
    assert run("server", "set", "max_queued", "2", socket_path=sock).returncode == 0
    assert run("server", "start", socket_path=sock).returncode == 0
    port = mcd.request("server.status")["port"]
    hold = threading.Event()
    reader = Client(address="127.0.0.1", port=port, client_id="slow")
    reader.subscribe("message", lambda m: hold.wait(60))
    reader.connect()
    try:
        for n in range(2):
            assert run("server", "send", "--to", "slow", "m", json.dumps({"n": n}), socket_path=sock).returncode == 0
        at_once = run("server", "send", "--to", "slow", "m", socket_path=sock)
        assert at_once.returncode == 1 and "send queue of client 'slow' is full" in at_once.stderr
        waited = run("server", "send", "--to", "slow", "m", "--timeout", "0.3", socket_path=sock)
        assert waited.returncode == 1 and "after 0.3 s" in waited.stderr
    finally:
        hold.set()
        reader.disconnect()


def test_dash_dash_version_is_mcctls_own_without_asking_mcd(tmp_path: Path) -> None:
    """As git and docker answer it: at once, exit 0, whether or not mcd runs
    (`mcctl version` asks mcd for its own too, and says when it is down)."""
    nowhere = tmp_path / "no-mcd.sock"
    plain = run("--version", socket_path=nowhere)
    assert plain.returncode == 0 and plain.stdout == f"mcctl {__version__} (API 1)\n" and plain.stderr == ""
    as_json = run("--version", "--json", socket_path=nowhere)
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == {
        "mcctl": {"version": __version__, "api_version": 1}
    }
    both = run("version", socket_path=nowhere)
    assert both.returncode == 3 and "mcd is not running" in both.stderr
    mixed = run("--version", "client", "status", socket_path=nowhere)
    assert mixed.returncode == 2 and "usage: mcctl --version" in mixed.stderr


def test_python_m_missioncommander_says_its_modes_and_version() -> None:
    def launcher(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "missioncommander", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    version = launcher("--version")
    assert version.returncode == 0 and version.stdout == f"missioncommander {__version__}\n"
    helped = launcher("--help")
    assert helped.returncode == 0 and "cli|gui" in helped.stdout and "the tray GUI" in helped.stdout
    bare = launcher()  # no mode: the same text, as a usage error
    assert bare.returncode == 2 and bare.stdout == helped.stdout
    assert "daemon" in helped.stdout  # it runs mcd (tests/daemon/test_mcd.py)
    wrong = launcher("frobnicate")
    assert wrong.returncode == 2 and "unknown mode 'frobnicate'" in wrong.stderr and "Traceback" not in wrong.stderr


def test_an_open_server_warns_whoever_started_it(mcd: Mcd) -> None:
    sock = mcd.socket
    run("server", "set", "port", str(free_port()), socket_path=sock)  # interface '': every interface
    out = run("server", "start", socket_path=sock)
    assert out.returncode == 0
    assert "mcctl: warning:" in out.stderr and "neither TLS nor a token" in out.stderr
    run("server", "stop", socket_path=sock)
    as_json = ok_json("server", "start", socket_path=sock)
    assert any("neither TLS nor a token" in w for w in as_json["warnings"])


def test_file_settings_are_absolute_paths_and_a_missing_file_is_a_warning(mcd: Mcd, tmp_path: Path) -> None:
    sock = mcd.socket
    # mcd does not share mcctl's working directory: mcctl sends the path whole.
    out = run("server", "set", "tls_cert", "server.pem", socket_path=sock, cwd=tmp_path)
    assert out.returncode == 0, out
    assert f"tls_cert = {tmp_path / 'server.pem'}" in out.stdout
    assert f"mcctl: warning: tls_cert: there is no file {tmp_path / 'server.pem'} (yet); start fails" in out.stderr
    (tmp_path / "ca.pem").write_text("a file")
    out = run("client", "set", "tls_ca", "ca.pem", socket_path=sock, cwd=tmp_path)
    assert out.returncode == 0 and "warning" not in out.stderr, out
    assert ok_json("client", "get", "tls_ca", socket_path=sock)["settings"]["tls_ca"] == str(tmp_path / "ca.pem")
    home = dict(os.environ, HOME=str(tmp_path))
    out = run("client", "set", "tls_cert", "~/ca.pem", socket_path=sock, env=home)
    assert f"tls_cert = {tmp_path / 'ca.pem'}" in out.stdout
    # Over the control API a relative path is refused, and changes nothing.
    with pytest.raises(ControlError, match=r"must be an absolute path, not 'ca\.pem'") as refused:
        mcd.request("client.set", key="tls_key", value="ca.pem")
    assert refused.value.code == "invalid_value"
    assert mcd.request("client.get", key="tls_key")["settings"]["tls_key"] is None
    assert run("client", "set", "tls_ca", "none", socket_path=sock).returncode == 0  # unset, as before


def test_a_setting_that_cannot_be_saved_is_reported_and_saved_later(mcd: Mcd) -> None:
    sock = mcd.socket
    assert run("client", "set", "port", "1000", socket_path=sock).returncode == 0
    # The state directory turns into a file: every save fails until it is back.
    moved = mcd.state_dir.with_name("state.away")
    mcd.state_dir.rename(moved)
    mcd.state_dir.write_text("in the way")
    try:
        out = run("client", "set", "port", "2000", socket_path=sock)
        assert out.returncode == 0
        assert "mcctl: warning: not saved:" in out.stderr and "retried" in out.stderr
        as_json = ok_json("client", "set", "port", "3000", socket_path=sock)
        assert as_json["settings"]["port"] == 3000 and as_json["warnings"]
    finally:
        mcd.state_dir.unlink()
        moved.rename(mcd.state_dir)
    # The retry writes what was kept in memory; the next change finds it on disk.
    out = run("client", "set", "address", "127.0.0.1", socket_path=sock)
    assert out.returncode == 0 and "warning" not in out.stderr
    saved = json.loads((mcd.state_dir / "state.json").read_text())
    assert saved["clients"]["default"]["settings"]["port"] == 3000


@pytest.mark.parametrize("args", [("client", "set", "port", "99999"), ("client", "set", "port", "abc"), ("fly",)])
def test_usage_errors_follow_json_and_give_a_hint(mcd: Mcd, args: tuple[str, ...]) -> None:
    out = run("--json", *args, socket_path=mcd.socket)
    assert out.returncode == 2
    error = json.loads(out.stdout)["error"]
    assert error["message"] and "help" in error["hint"]
    human = run(*args, socket_path=mcd.socket)
    assert human.returncode == 2 and "help" in human.stderr and human.stderr.startswith("mcctl: ")


def test_refusals_of_a_name_or_payload_say_what_is_wrong_without_pointing_to_the_keys(mcd: Mcd) -> None:
    # A name that breaks the rule is told the rule in words (not pydantic's regex).
    bad = run("--name", "bad name!", "client", "create", socket_path=mcd.socket)
    assert bad.returncode == 2, bad.stderr
    assert "name is 1 to 64 ASCII letters, digits" in bad.stderr and "should match pattern" not in bad.stderr
    assert "lists the keys" not in bad.stderr
    long = run("--json", "--name", "a" * 65, "server", "create", socket_path=mcd.socket)
    assert long.returncode == 2
    assert "1 to 64" in json.loads(long.stdout)["error"]["message"]
    # A payload JSON cannot carry: the message says so; `help client` would not help.
    assert run("client", "create", socket_path=mcd.socket).returncode == 0
    nan = run("client", "send", "x", '{"a": NaN}', socket_path=mcd.socket)
    assert nan.returncode == 2 and "NaN" in nan.stderr and "lists the keys" not in nan.stderr
    broken = run("client", "send", "x", "{a", socket_path=mcd.socket)
    assert broken.returncode == 2 and "fix: the payload is one JSON object" in broken.stderr
    no_target = run("server", "request", "x", socket_path=mcd.socket)
    assert no_target.returncode == 2 and "--to CLIENT_ID" in no_target.stderr and "payload" not in no_target.stderr
    names = {i["name"] for i in ok_json("list", socket_path=mcd.socket)["instances"]}
    assert "bad name!" not in names and "a" * 65 not in names


def test_a_listening_servers_tokens_change_without_a_restart(mcd: Mcd) -> None:
    """Adding a client's token to a server in use: `server stop` first ended every session."""
    port = start_hosted_server(mcd)
    first = Client(address="127.0.0.1", port=port, client_id="first")
    second = Client(address="127.0.0.1", port=port, client_id="second", auth_token="t2")
    try:
        first.connect()
        out = run("server", "set", "auth_tokens", '{"second": "t2"}', socket_path=mcd.socket)
        assert out.returncode == 0, out.stderr
        second.connect()
        assert ok_json("server", "clients", socket_path=mcd.socket)["clients"] == ["first", "second"]
        assert ok_json("server", "get", "auth_tokens", socket_path=mcd.socket)["settings"] == {"auth_tokens": "(set)"}
    finally:
        first.disconnect()
        second.disconnect()


def test_servers_as_the_control_apis_json_list_connect(mcd: Mcd) -> None:
    """The list as CONTROL_API.md writes it, typed at mcctl: tried in turn."""
    port = start_hosted_server(mcd)
    servers = json.dumps([f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}"])
    out = run("client", "set", "servers", servers, socket_path=mcd.socket)
    assert out.returncode == 0, out.stderr
    assert ok_json("client", "connect", "--wait", socket_path=mcd.socket)["phase"] == "connected"
    assert ok_json("server", "clients", socket_path=mcd.socket)["clients"] != []


def test_every_limit_and_timer_of_the_library_can_be_set(mcd: Mcd) -> None:
    """What a library Server or Client can be told, mcd's users can tell it:
    the values take effect, and only what was set is saved."""
    sock = mcd.socket
    for args in (
        ("server", "set", "interface", "127.0.0.1"),
        ("server", "set", "max_clients", "1"),
        ("server", "set", "max_connection_rate", "none"),
        ("server", "set", "session_expiry", "2.5"),
        ("server", "set", "auth_tokens", '{"one": "s3cret", "two": "t0ken"}'),
        ("client", "set", "address", "127.0.0.1"),
        ("client", "set", "client_id", "one"),
        ("client", "set", "auth_token", "s3cret"),
        ("client", "set", "reconnect_attempts", "3"),
    ):
        out = run(*args, socket_path=sock)
        assert out.returncode == 0, (args, out.stderr)
    settings = ok_json("server", "get", socket_path=sock)["settings"]
    assert settings["max_clients"] == 1 and settings["max_connection_rate"] is None
    assert settings["session_expiry"] == 2.5 and settings["auth_tokens"] == "(set)"
    port = ok_json("server", "start", socket_path=sock)["port"]
    run("client", "set", "port", str(port), socket_path=sock)
    assert ok_json("client", "connect", "--wait", socket_path=sock)["phase"] == "connected"
    # max_clients=1 holds: a second client (with its own token) is refused as the server is full.
    second = Client(address="127.0.0.1", port=port, client_id="two", auth_token="t0ken", connect_timeout=5)
    with pytest.raises(ConnectionRefusedByServer) as refused:
        second.connect()
    assert refused.value.code == "server_full"
    bad = run("server", "set", "max_clients", "lots", socket_path=sock)
    assert bad.returncode == 2 and "max_clients must be an integer" in bad.stderr
    assert "fix: `mcctl help server` lists the keys" in bad.stderr
    bad = run("client", "get", "colour", socket_path=sock)
    assert bad.returncode == 2 and "fix: `mcctl help client` lists the keys" in bad.stderr
    bad = run("client", "set", "send_timeout", "-1", socket_path=sock)
    assert bad.returncode == 2 and "send_timeout" in bad.stderr
    # The word for "no limit" is the one typed here, not Python's.
    bad = run("server", "set", "max_clients", "0", socket_path=sock)
    assert bad.returncode == 2 and "max_clients must be at least 1, not 0 (none: no limit)" in bad.stderr
    # A host pasted with its port: refused by mcd, saying what to leave out and where the values are.
    bad = run("client", "set", "address", "127.0.0.1:30000", socket_path=sock)
    assert bad.returncode == 2 and "give the host alone; the port is a setting of its own" in bad.stderr
    assert "fix: `mcctl help client` lists the keys and their values" in bad.stderr
    # A client given the server's "pick one" port is told where the picked one is.
    bad = run("client", "set", "port", "0", socket_path=sock)
    assert bad.returncode == 2 and "port must be from 1 to 65535, not 0" in bad.stderr
    assert "fix: a client connects to the port its server listens on; `mcctl server status` says" in bad.stderr
    # Saved: what was set (None included), not every default.
    assert mcd.stop() == 0
    saved = json.loads((mcd.state_dir / "state.json").read_text())
    server_saved = saved["servers"]["default"]["settings"]
    assert server_saved["max_clients"] == 1 and server_saved["max_connection_rate"] is None
    assert "heartbeat_interval" not in server_saved and "max_queued" not in server_saved
    mcd.start()
    assert ok_json("server", "get", "max_connection_rate", socket_path=sock)["settings"] == {
        "max_connection_rate": None
    }
    assert ok_json("client", "get", "reconnect_attempts", socket_path=sock)["settings"] == {"reconnect_attempts": 3}


def test_a_payload_from_standard_input_and_one_too_long_for_the_control_socket(mcd: Mcd) -> None:
    """`-` reads the payload from stdin (past what a command line takes);
    a command over the control socket's line is refused before it is sent."""
    got: list[Message] = []
    arrived = threading.Event()

    def on_message(client_id: str, message: Message) -> None:
        got.append(message)
        arrived.set()

    with Server(interface="127.0.0.1", port=0) as server:
        server.subscribe("message", on_message)
        for args in (
            ("client", "set", "address", "127.0.0.1"),
            ("client", "set", "port", str(server.port)),
            ("client", "connect", "--wait"),
        ):
            assert run(*args, socket_path=mcd.socket).returncode == 0
        big = "a" * 300_000  # over a single argument's limit (128 KiB on Linux)
        out = run("client", "send", "report", "-", socket_path=mcd.socket, stdin=json.dumps({"text": big}))
        assert out.returncode == 0, out.stderr
        assert arrived.wait(10)
        assert got[0].subject == "report" and got[0].payload["text"] == big
        # Up to the library's default frame limit, through mcd too (the
        # control line was 1 MiB: a 5 MiB message could not be sent).
        arrived.clear()
        five = "b" * (5 << 20)
        out = run("client", "send", "report", "-", socket_path=mcd.socket, stdin=json.dumps({"text": five}))
        assert out.returncode == 0, out.stderr
        assert arrived.wait(10)
        assert got[1].payload["text"] == five
        too_long = json.dumps({"text": "a" * MAX_LINE})
        out = run("--json", "client", "send", "report", "-", socket_path=mcd.socket, stdin=too_long)
        error = json.loads(out.stdout)["error"]
        assert out.returncode == 1 and error["code"] == "line_too_long" and "nothing was sent" in error["message"]
        out = run("client", "send", "x", "-", socket_path=mcd.socket, stdin='{"n": Infinity}')
        assert out.returncode == 2 and "Infinity is not JSON" in out.stderr and "standard input" in out.stderr
        # The daemon is still there and the client still connected: nothing half-sent upset it.
        assert ok_json("client", "status", socket_path=mcd.socket)["phase"] == "connected"
        assert len(got) == 2


def test_request_prints_the_reply_and_maps_each_failure_to_its_exit_status(mcd: Mcd) -> None:
    """A library server answers; mcd's hosted client asks it through mcctl."""
    release = threading.Event()

    def answer(client_id: str, message: Message) -> dict[str, Any]:
        if message.subject == "boom":
            raise RuntimeError("it broke")
        if message.subject == "slow":
            release.wait(30)
        return {"status": "fine", "asked": dict(message.payload)}

    with Server(interface="127.0.0.1", port=0) as server:
        server.subscribe("request", answer)
        for args in (
            ("client", "set", "address", "127.0.0.1"),
            ("client", "set", "port", str(server.port)),
            ("client", "set", "client_id", "hosted"),
            ("client", "connect", "--wait"),
        ):
            assert run(*args, socket_path=mcd.socket).returncode == 0
        out = run("client", "request", "status", '{"x": 1}', socket_path=mcd.socket)
        assert (out.returncode, out.stdout) == (0, 'status {"status": "fine", "asked": {"x": 1}}\n')
        reply = ok_json("client", "request", "status", socket_path=mcd.socket)
        assert reply == {"reply": {"subject": "status", "payload": {"status": "fine", "asked": {}}}}
        out = run("--json", "client", "request", "boom", socket_path=mcd.socket)
        error = json.loads(out.stdout)["error"]
        assert out.returncode == 1 and error["code"] == "remote_error"
        assert error["details"] == {"type": "RuntimeError", "message": "it broke"}
        out = run("client", "request", "slow", "--timeout", "0.5", socket_path=mcd.socket)
        assert out.returncode == 4 and "no reply within 0.5 s" in out.stderr
        release.set()
        # The hosted client runs no code of ours: asked, it has no responder.
        with pytest.raises(NoResponder):
            server.request("hosted", Message("anyone?"), timeout=30)
    usage = run("server", "request", "hi", socket_path=mcd.socket)
    assert usage.returncode == 2 and "needs --to CLIENT_ID" in usage.stderr


def test_a_hosted_server_asks_a_library_client_and_is_told_no_responder_by_another(mcd: Mcd) -> None:
    port = start_hosted_server(mcd)
    with Client(address="127.0.0.1", port=port, client_id="lib") as client:
        client.subscribe("request", lambda m: {"pong": m.subject})
        out = ok_json("server", "request", "--to", "lib", "ping", socket_path=mcd.socket)
        assert out == {"reply": {"subject": "ping", "payload": {"pong": "ping"}}, "to": "lib"}
        # The hosted server answers nobody: a library client asking it is told so at once.
        with pytest.raises(NoResponder):
            client.request(Message("anyone?"), timeout=30)
    # One hosted instance asking another (a first try's likeliest request) is
    # told why nobody answers, and what can.
    for args in (("client", "set", "address", "127.0.0.1"), ("client", "set", "port", str(port))):
        assert run(*args, socket_path=mcd.socket).returncode == 0
    assert run("client", "connect", "--wait", socket_path=mcd.socket).returncode == 0
    out = run("client", "request", "anyone?", socket_path=mcd.socket)
    assert out.returncode == 1 and "the peer has no request responder" in out.stderr
    assert "fix: instances hosted in mcd run no code of yours" in out.stderr
    out = run("--json", "server", "request", "--to", "gone", "ping", socket_path=mcd.socket)
    assert out.returncode == 1 and json.loads(out.stdout)["error"]["code"] == "not_found"


def test_stats_shows_a_hosted_clients_send_waiting_for_room(mcd: Mcd) -> None:
    """A send that seems stuck: mcctl stats says it waits for room."""
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0) as server:
        server.subscribe("message", lambda cid, m: release.wait(30))  # holds the acknowledgements back
        for key, value in (("address", "127.0.0.1"), ("port", str(server.port)), ("max_queued", "2")):
            assert run("client", "set", key, value, socket_path=mcd.socket).returncode == 0
        assert run("client", "connect", "--wait", socket_path=mcd.socket).returncode == 0
        try:
            for n in range(2):
                assert run("client", "send", "n", f'{{"n": {n}}}', socket_path=mcd.socket).returncode == 0
            waiting = subprocess.Popen(
                [*mcctl_command(), "client", "send", "n", '{"n": 2}', "--timeout", "10"],
                env={**os.environ, "MC_SOCKET": str(mcd.socket), "PYTHONPATH": os.pathsep.join(sys.path)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                wait_until(
                    lambda: "1 send(s) waiting for room" in run("stats", socket_path=mcd.socket).stdout,
                    what="the waiting send in mcctl stats",
                )
                assert (
                    ok_json("stats", "--kind", "client", socket_path=mcd.socket)["instances"][0]["stats"][
                        "senders_waiting"
                    ]
                    == 1
                )
            finally:
                release.set()
                said, err = waiting.communicate(timeout=30)
            assert waiting.returncode == 0 and said, err  # it went once there was room
        finally:
            release.set()
        assert "waiting for room" not in run("stats", socket_path=mcd.socket).stdout


def test_stats_counts_what_the_hosted_instances_did(mcd: Mcd) -> None:
    port = start_hosted_server(mcd)
    for args in (
        ("client", "set", "address", "127.0.0.1"),
        ("client", "set", "port", str(port)),
        ("client", "set", "client_id", "rover"),
        ("client", "connect", "--wait"),
        ("client", "send", "one"),
        ("client", "send", "two"),
        ("server", "send", "down"),
    ):
        assert run(*args, socket_path=mcd.socket).returncode == 0, args

    def server_figures() -> dict[str, Any]:
        result: dict[str, Any] = ok_json("stats", "--name", "default", "--kind", "server", socket_path=mcd.socket)
        return result

    # The two messages are on their way to the server.
    wait_until(lambda: server_figures()["instances"][0]["stats"]["messages_received"] == 2, what="both received")
    figures = server_figures()
    (server,) = figures["instances"]
    assert server["stats"]["messages_received"] == 2 and server["stats"]["messages_sent"] == 1
    assert server["clients"]["rover"]["messages_received"] == 2
    (client,) = ok_json("stats", "--kind", "client", socket_path=mcd.socket)["instances"]
    assert (client["name"], client["stats"]["messages_sent"], client["stats"]["connected"]) == ("default", 2, True)
    assert figures["daemon"]["events_published"] > 0
    # Numbered as a status is: the last event before the figures were read
    # (events may come between the reads: the client hears "down").
    assert 0 < figures["seq"] <= figures["daemon"]["events_published"] <= mcd.request("server.status")["seq"]
    human = run("stats", socket_path=mcd.socket)
    assert human.returncode == 0 and human.stdout.splitlines()[0].split()[:4] == ["KIND", "NAME", "STATE", "SENT"]
    missing = run("--json", "stats", "--name", "ghost", socket_path=mcd.socket)
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"]["code"] == "not_found"


def test_top_refreshes_with_rates_and_stops_after_count(mcd: Mcd) -> None:
    start_hosted_server(mcd)
    out = run("--json", "top", "--count", "2", socket_path=mcd.socket)
    assert out.returncode == 0, out.stderr
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert first["rates"] == []  # nothing to compare with yet
    assert {(r["kind"], r["name"]) for r in second["rates"]} == {("server", "default")}
    assert second["rates"][0]["received_per_s"] == 0
    human = run("top", "--count", "1", socket_path=mcd.socket)
    assert human.returncode == 0 and "SENT/S" in human.stdout.splitlines()[0]
    bad = run("top", "--count", "0", socket_path=mcd.socket)
    assert bad.returncode == 2 and "--count must be" in bad.stderr


def test_server_status_says_where_it_listens_first(mcd: Mcd) -> None:
    """Port 0 (the system picks one): the settings' port says 0, and the
    port picked was the 26th line down, after every limit and timer."""
    for args in (("server", "set", "interface", "127.0.0.1"), ("server", "set", "port", "0")):
        assert run(*args, socket_path=mcd.socket).returncode == 0
    port = ok_json("server", "start", socket_path=mcd.socket)["port"]
    first = run("server", "status", socket_path=mcd.socket).stdout.splitlines()[0]
    assert first == f"server default: listening on 127.0.0.1:{port}"
    assert run("server", "stop", socket_path=mcd.socket).returncode == 0
    assert run("server", "status", socket_path=mcd.socket).stdout.splitlines()[0] == "server default: stopped"


def test_a_server_that_cannot_listen_is_told_what_to_change(mcd: Mcd) -> None:
    """A port that is taken, or an interface that is no address here, came
    with no fix: which setting to change, and to what, is the question."""
    port = start_hosted_server(mcd)
    for args in (("server", "set", "interface", "127.0.0.1"), ("server", "set", "port", str(port))):
        assert run(*args, "--name", "second", socket_path=mcd.socket).returncode == 0
    taken = run("server", "start", "--name", "second", socket_path=mcd.socket)
    assert taken.returncode == 1 and "Address already in use" in taken.stderr
    assert "fix: another server listens on that port (one of this mcd's: `mcctl list`" in taken.stderr
    assert "`mcctl server set port 0 --name second` picks a free one" in taken.stderr
    # mcd names the setting at fault, for any controller: none reads errnos out of the message.
    error = json.loads(run("--json", "server", "start", "--name", "second", socket_path=mcd.socket).stdout)["error"]
    assert (error["code"], error["details"]) == ("bind_failed", {"key": "port", "errno": errno.EADDRINUSE})
    # 192.0.2.1 is for documentation (RFC 5737): no machine has it.
    assert run("server", "set", "interface", "192.0.2.1", "--name", "second", socket_path=mcd.socket).returncode == 0
    elsewhere = run("server", "start", "--name", "second", socket_path=mcd.socket)
    assert elsewhere.returncode == 1 and "Cannot assign requested address" in elsewhere.stderr
    assert "fix: the interface is no address of this machine" in elsewhere.stderr


def test_a_setting_fixed_while_the_first_connect_retries_applies_and_connects(mcd: Mcd) -> None:
    """`client connect` failed (a wrong port, a missing tls_ca) and said the
    client keeps trying; fixing the setting was then refused with "client
    disconnect first", a fix of three commands.  A client with no session
    yet takes it and starts connecting again; a connected one still refuses
    (it would drop its session)."""
    port = start_hosted_server(mcd)
    with socket.socket() as nobody:  # a port nothing listens on, held so nothing will
        nobody.bind(("127.0.0.1", 0))
        wrong = str(nobody.getsockname()[1])
        for args in (("client", "set", "address", "127.0.0.1"), ("client", "set", "port", wrong)):
            assert run(*args, socket_path=mcd.socket).returncode == 0
        failed = run("client", "connect", socket_path=mcd.socket)
        assert failed.returncode == 1
        assert "it keeps trying in the background (client disconnect stops it); a setting set now applies at once" in (
            failed.stderr
        )
        assert ok_json("client", "status", socket_path=mcd.socket)["phase"] == "connecting"
        fixed = run("client", "set", "port", str(port), socket_path=mcd.socket)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.strip() == f"client default: port = {port} (it was connecting: it starts again with it)"
    assert run("wait", "client", "connected", "--timeout", "30", socket_path=mcd.socket).returncode == 0
    status = ok_json("client", "status", socket_path=mcd.socket)
    assert status["settings"]["port"] == port and status["desired"] == "connected"
    refused = run("client", "set", "port", "1", socket_path=mcd.socket)
    assert refused.returncode == 1
    assert "cannot change port while client 'default' is connected; client disconnect first" in refused.stderr
