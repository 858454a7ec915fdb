"""The runnable examples work as their docstrings say, and fail with a message (not a traceback) without a server."""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest
from support import free_port

from missioncommander import Server

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_demo_runs() -> None:
    out = run("demo.py")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    # Each client got its welcome and the broadcast before the demo stopped
    # its server (they may come in either order).
    for name in ("alice", "bob"):
        assert f"{name} <- server: welcome {{'you_are': '{name}'}}" in out.stdout
        assert f"{name} <- server: news" in out.stdout
    assert out.stdout.rstrip().endswith("demo finished")
    # Printed from several callback threads, the lines still come whole.
    line = re.compile(r"(server: \w+ connected|server <- \w+: \w+ \{.*\}|\w+ <- server: \w+ \{.*\}|demo finished)")
    assert all(line.fullmatch(text) for text in out.stdout.splitlines()), out.stdout
    assert len(out.stdout.splitlines()) == 9  # 2 connects, 2 hellos, 2 welcomes, 2 news, the end


def test_request_reply_shows_each_outcome_in_order() -> None:
    out = run("request_reply.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "client asks add {'a': 2, 'b': 3} -> {'sum': 5}",
        "client asks divide {'a': 1, 'b': 0} -> RemoteError ZeroDivisionError: division by zero",
        "client asks slow {} -> RequestTimeout: no reply within 0.3 s",
        "server asks alice whoami -> {'client_id': 'alice', 'asked': 'whoami'}",
        "server asks bob whoami -> NoResponder: the peer has no request responder",
        # Asked while the server still answers "slow": its late reply is dropped, not taken for this.
        "client asks add {'a': 40, 'b': 2} -> {'sum': 42}",
        "client asks slow 4 times at once -> [{'done': True}, {'done': True}, {'done': True}, {'done': True}]",
        "request_reply finished",
    ]
    assert out.stderr.splitlines() == [
        "log: missioncommander.server: request responder raised ZeroDivisionError: division by zero"
    ]


def test_echo_client_against_echo_server() -> None:
    server = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / "echo_server.py"), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        out = run("echo_client.py", match.group(1))
        assert out.returncode == 0, out.stderr
        assert [line for line in out.stdout.splitlines() if line.startswith("echo:")] == [
            f"echo: echo {{'message': 'hello', 'n': {n}}}" for n in range(3)
        ]
    finally:
        server.terminate()
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0
    assert "Traceback" not in err


def test_echo_client_without_a_server_says_so() -> None:
    port = str(free_port())
    out = run("echo_client.py", port)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "Connection refused" in out.stderr
    assert "connect failed" not in out.stderr  # raised to the caller, not also logged as a warning
    # the command it suggests starts a server on the port the client was given
    assert f"is the server running? python3 examples/echo_server.py {port})" in out.stderr


def test_echo_server_on_a_taken_port_says_so() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:  # a server that never echoes
        port = str(taken.getsockname()[1])
        out = run("echo_server.py", port)
        assert out.returncode == 1
        assert "Traceback" not in out.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
        assert f"python3 examples/echo_server.py {int(port) + 1}" in out.stderr


def test_echo_client_of_a_server_that_does_not_echo_says_so() -> None:
    with Server(interface="127.0.0.1", port=0) as quiet:  # as mcd's quick-start server
        port = quiet.port
        out = run("echo_client.py", str(port))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"the server on port {port} does not echo" in out.stderr


def test_async_echo_runs_and_both_apis_get_their_echoes() -> None:
    out = run("async_echo.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "async client got {'n': 0}",
        "async client got {'n': 1}",
        "async client got {'n': 2}",
        "threaded client got {'from': 'a thread'}",
    ]


def test_cluster_node_on_a_taken_port_says_so() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        # No Redis needed to find the port taken (a node starts without one and waits for it).
        out = run("cluster_node.py", f"redis://127.0.0.1:{free_port()}/0", port, "node-x")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_cluster_example_carries_on_when_a_node_stops(tmp_path: Path) -> None:
    from support.redis_server import RedisServer

    redis = RedisServer(tmp_path)
    redis.start()
    nodes = []
    try:
        for name in ("node-a", "node-b"):
            node = subprocess.Popen(
                [sys.executable, "-u", str(EXAMPLES / "cluster_node.py"), redis.url, "0", name],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert node.stdout is not None
            match = re.search(r"cluster node (\S+) listening on 127\.0\.0\.1:(\d+)", node.stdout.readline())
            assert match, node.stderr.read() if node.stderr else ""
            nodes.append((node, match.group(2)))
        client = subprocess.Popen(
            [sys.executable, "-u", str(EXAMPLES / "cluster_client.py"), nodes[0][1], nodes[1][1], "--count", "6"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "echo 0 from node-a"
        nodes[0][0].terminate()  # node-a hands its client over as it stops
        out, err = client.communicate(timeout=60)
        lines = out.splitlines()
        assert [line.split()[1] for line in lines] == ["1", "2", "3", "4", "5"], (out, err)
        assert lines[-1] == "echo 5 from node-b"
        assert client.returncode == 0 and "Traceback" not in err
    finally:
        for node, _ in nodes:
            node.terminate()
            node.communicate(timeout=20)
        redis.stop()


class _Lines:
    """The lines of a stream as they come, read by a thread of their own (so
    that waiting for one has a timeout)."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=lambda: [self._lines.put(line) for line in stream], daemon=True)
        self._reader.start()

    def until(self, start: str, timeout: float = 30.0, most: int = 200) -> None:
        """Read until a line that starts with ``start``."""
        for _ in range(most):
            try:
                self.seen.append(self._lines.get(timeout=timeout))
            except queue.Empty:
                break
            if self.seen[-1].startswith(start):
                return
        raise AssertionError(f"no line starting {start!r} in:\n{''.join(self.seen)}")

    def rest(self) -> str:
        """Everything seen, once the stream has ended."""
        self._reader.join(20)
        while not self._lines.empty():
            self.seen.append(self._lines.get())
        return "".join(self.seen)


@pytest.mark.parametrize("persistent", [True, False], ids=["redis-keeps-its-data", "redis-loses-its-data"])
def test_a_cluster_node_echoes_what_came_while_redis_was_down_once_it_is_back(tmp_path: Path, persistent: bool) -> None:
    from support.redis_server import RedisServer

    redis = RedisServer(tmp_path, persistent=persistent)
    redis.start()
    node = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / "cluster_node.py"), redis.url, "0", "node-a"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert node.stdout is not None and node.stderr is not None
    errors = _Lines(node.stderr)
    client = None
    try:
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", node.stdout.readline())
        assert match, errors.rest()
        client = subprocess.Popen(
            [sys.executable, "-u", str(EXAMPLES / "cluster_client.py"), match.group(1), "--count", "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "echo 0 from node-a"
        redis.stop(kill=True)
        # The client's next message arrives while Redis is down: one line says so.
        errors.until("cannot echo to cluster-demo now: Redis at")
        redis.start()
        # With its data, Redis lets the node send the echo it kept; without
        # it, the client is told its session is lost and sends its message
        # again, which a node echoes (the client skips a second echo of it).
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        assert [line for line in out.splitlines() if line.startswith("echo")] == [
            "echo 1 from node-a",
            "echo 2 from node-a",
        ], out
        assert ("session lost" in out) is not persistent, out
        if persistent:
            errors.until("echoed to cluster-demo now that Redis is back")
        node.terminate()
        node.wait(20)
        assert "Traceback" not in errors.rest(), errors.rest()
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.communicate()
        if node.poll() is None:
            node.kill()
            node.wait(20)
        errors.rest()  # the reader has seen the end
        node.stdout.close()
        node.stderr.close()
        redis.stop()
