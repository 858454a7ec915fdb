"""mcd's hosted server and client in a cluster, driven by the real mcctl."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import free_port, wait_until
from support.cli import mcctl_command, run
from support.mcd import Mcd
from support.redis_server import RedisServer

from missioncommander import Client, Message, Server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def mcd() -> Iterator[Mcd]:
    daemon = Mcd().start()
    yield daemon
    daemon.close()


def ok(mcd: Mcd, *args: str) -> str:
    out = run(*args, socket_path=mcd.socket)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def test_a_hosted_server_joins_a_cluster_and_lists_each_clients_node(
    mcd: Mcd, redis_server: RedisServer, make_node: Callable[..., Server], make_client: Callable[..., Client]
) -> None:
    port = free_port()
    ok(mcd, "server", "set", "interface", "127.0.0.1")
    ok(mcd, "server", "set", "port", str(port))
    ok(mcd, "server", "set", "cluster", redis_server.url)
    ok(mcd, "server", "set", "node_id", "mcd-node")
    ok(mcd, "server", "start")
    other = make_node(node_id="other")
    remote = make_client(other, client_id="far")
    remote.connect()
    local = make_client(client_id="near", address="127.0.0.1", port=port)
    local.connect()
    table = ok(mcd, "server", "clients")
    assert table.splitlines()[0].split() == ["CLIENT", "NODE"]
    assert sorted(line.split() for line in table.splitlines()[1:]) == [["far", "other"], ["near", "mcd-node"]]
    listed = json.loads(ok(mcd, "--json", "server", "clients"))
    assert listed["nodes"] == {"far": "other", "near": "mcd-node"}
    status = json.loads(ok(mcd, "--json", "server", "status"))
    assert status["settings"]["cluster"] == redis_server.url
    assert status["cluster"]["node"] == "mcd-node" and status["cluster"]["ready"] is True
    assert "cluster node             mcd-node (ready)" in ok(mcd, "server", "status")
    # Per-client figures are each node's own: mcd's stats list the client it holds.
    figures = json.loads(ok(mcd, "--json", "stats", "--kind", "server", "--name", "default"))
    assert list(figures["instances"][0]["clients"]) == ["near"]
    # Sent from mcd, it reaches the client held by the other node.
    got: list[Message] = []
    remote.subscribe("message", got.append)
    ok(mcd, "server", "send", "hello", "{}", "--to", "far")
    wait_until(lambda: len(got) == 1, what="the message through the cluster")
    # Asked from mcd, it answers: the other node passes its reply on.
    remote.subscribe("request", lambda message: {"held_by": "other"})
    assert ok(mcd, "server", "request", "--to", "far", "q", "{}").strip() == 'q {"held_by": "other"}'
    nobody = run("server", "request", "--to", "nobody", "q", "{}", socket_path=mcd.socket)
    assert nobody.returncode == 1 and "no client 'nobody' is connected to the cluster" in nobody.stderr, nobody.stderr
    # A server already running cannot change cluster: said plainly.
    refused = run("server", "set", "cluster", "none", socket_path=mcd.socket)
    assert refused.returncode == 1 and "stop" in refused.stderr and "Traceback" not in refused.stderr


def test_a_hosted_cluster_nodes_readiness_is_in_the_metrics_and_mcctl(redis_server: RedisServer) -> None:
    parser = pytest.importorskip("prometheus_client.parser", reason="needs prometheus-client: pip install '.[test]'")
    metrics_port = free_port()
    daemon = Mcd(None, "--metrics", str(metrics_port)).start()
    try:
        daemon.request("server.set", key="interface", value="127.0.0.1")
        daemon.request("server.set", key="cluster", value=redis_server.url)
        node_id = daemon.request("server.start")["cluster"]["node"]

        def samples() -> dict[str, float]:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                text = answer.read().decode()
            return {
                sample.name: sample.value
                for family in parser.text_string_to_metric_families(text)
                for sample in family.samples
                if sample.labels.get("kind") == "server"
            }

        now = samples()
        assert now["missioncommander_cluster_ready"] == 1
        assert now["missioncommander_cluster_takeovers_total"] == 0
        assert now["missioncommander_cluster_resubscribes_total"] == 0
        assert now["missioncommander_cluster_same_node_id"] == 0
        assert now["missioncommander_running"] == 1
        # The gauge an alert on a node cut off from Redis watches.
        redis_server.stop()
        wait_until(lambda: samples()["missioncommander_cluster_ready"] == 0, what="not ready without Redis")
        # mcctl says it where an operator looks: the status and the live table.
        not_ready = "NOT READY: cannot reach Redis, refusing new clients"
        assert not_ready in ok(daemon, "server", "status")
        stats_row = ok(daemon, "stats", "--kind", "server").splitlines()[1]
        assert stats_row.startswith("server") and stats_row.endswith(f"node {node_id} {not_ready}")
        # A standing warning while it lasts: daemon status, the GUI's banner, systemd's status line.
        warned = f"server 'default': cluster node {node_id} {not_ready} ({redis_server.url})"
        assert daemon.request("daemon.status")["warnings"] == [warned]
        assert warned in run("daemon", "status", socket_path=daemon.socket).stderr
        redis_server.start()
        wait_until(lambda: samples()["missioncommander_cluster_ready"] == 1, timeout=10, what="ready again")
        assert f"node {node_id} ready" in ok(daemon, "stats", "--kind", "server")
        assert "warnings" not in daemon.request("daemon.status")  # gone with the cause
        daemon.request("server.stop")
        now = samples()
        assert now["missioncommander_running"] == 0
        assert "missioncommander_cluster_ready" not in now  # a stopped node is in no cluster
    finally:
        daemon.close()


def test_a_hosted_node_sharing_its_node_id_is_a_standing_warning(
    mcd: Mcd, redis_server: RedisServer, make_node: Callable[..., Server]
) -> None:
    """A second machine given the first's configuration, node_id and all:
    mcd says so where an operator looks, for as long as it lasts."""
    ok(mcd, "server", "set", "interface", "127.0.0.1")
    ok(mcd, "server", "set", "cluster", redis_server.url)
    ok(mcd, "server", "set", "node_id", "shared")
    ok(mcd, "server", "set", "lease_ttl", "0.6")
    ok(mcd, "server", "start")
    other = make_node(node_id="shared", lease_ttl=0.6)
    warned = (
        f"server 'default': another cluster node runs with node_id 'shared' too (listening on 127.0.0.1:{other.port}):"
        " give each node its own node_id"
    )
    wait_until(lambda: warned in mcd.request("daemon.status").get("warnings", []), what="the standing warning")
    # Seen at each renewal: asked again if a slow machine let one lapse between the two.
    wait_until(lambda: warned in run("daemon", "status", socket_path=mcd.socket).stderr, what="in mcctl")
    row = f"ANOTHER NODE RUNS WITH THIS node_id (127.0.0.1:{other.port})"
    wait_until(lambda: row in ok(mcd, "server", "status"), what="in the node's status row")
    other.stop()
    wait_until(lambda: "warnings" not in mcd.request("daemon.status"), what="the warning gone with its cause")


def test_a_redis_password_is_used_and_saved_but_never_shown(tmp_path: Path) -> None:
    """A password in the cluster URL is a secret like a token: the node
    joins a Redis that asks for it, and again after a restart (the state
    file keeps it), while mcctl, events, warnings and mcd's log show
    ``:***@``."""
    (tmp_path / "redis").mkdir()
    redis_server = RedisServer(tmp_path / "redis", password="s3cret-pw")
    shown = f"redis://:***@127.0.0.1:{redis_server.port}/0"
    daemon = Mcd()
    try:
        redis_server.start()
        daemon.start()
        events = subprocess.Popen(
            # --since 0: every event of this mcd's run, however late the stream connects.
            [*mcctl_command(), "--socket", str(daemon.socket), "events", "--json", "--since", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            ok(daemon, "server", "set", "interface", "127.0.0.1")
            assert ok(daemon, "server", "set", "cluster", redis_server.url) == f"server default: cluster = {shown}\n"
            ok(daemon, "server", "start")
            wait_until(lambda: daemon.request("server.status")["cluster"]["ready"], what="joined with the password")
            status = json.loads(ok(daemon, "--json", "server", "status"))
            assert status["settings"]["cluster"] == shown and status["cluster"]["url"] == shown
            assert ok(daemon, "server", "get", "cluster").split() == ["cluster", shown]
            assert daemon.stop() == 0
            daemon.start()  # restored from the state file, password and all
            wait_until(lambda: daemon.request("server.status")["cluster"]["ready"], what="rejoined after a restart")
            redis_server.stop()
            wait_until(lambda: "warnings" in daemon.request("daemon.status"), what="the standing warning")
            (warning,) = daemon.request("daemon.status")["warnings"]
            assert warning.endswith(f"({shown})")
        finally:
            events.terminate()
            seen, _ = events.communicate(timeout=10)
        assert b'"cluster": "' + shown.encode() in seen
        for said in (seen.decode(), daemon.log(), run("server", "status", socket_path=daemon.socket).stdout):
            assert "s3cret-pw" not in said
        saved = "".join(path.read_text() for path in daemon.state_dir.glob("state.*"))
        assert "s3cret-pw" in saved  # in the state files only (0600, as tokens)
    finally:
        daemon.close()
        redis_server.stop()


def test_a_hosted_client_takes_a_list_of_servers(mcd: Mcd, make_node: Callable[..., Server]) -> None:
    a, b = make_node(node_id="a"), make_node(node_id="b")
    ok(mcd, "client", "set", "servers", f"127.0.0.1:{free_port()},127.0.0.1:{b.port}")
    ok(mcd, "client", "set", "client_id", "hosted")
    ok(mcd, "client", "connect")
    status = json.loads(ok(mcd, "--json", "client", "status"))
    assert status["phase"] == "connected" and status["settings"]["port"] == b.port
    assert status["settings"]["servers"].endswith(f",127.0.0.1:{b.port}")  # read back as it was set
    assert a.client_nodes == {"hosted": "b"}
    bad = run("client", "set", "servers", "nowhere", socket_path=mcd.socket)
    assert bad.returncode == 2 and "host:port" in bad.stderr


class McdMaybeWithoutRedis(Mcd):
    """mcd where, with ``hide_redis``, ``import redis`` fails, as in an
    install without the cluster extra (the same socket and state either way)."""

    hide_redis = False

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.hide_redis:
            hidden = self.root / "no-redis"
            (hidden / "redis").mkdir(parents=True, exist_ok=True)
            (hidden / "redis" / "__init__.py").write_text("raise ImportError(\"No module named 'redis'\")\n")
            env["PYTHONPATH"] = os.pathsep.join((str(hidden), env["PYTHONPATH"]))
        return env


def test_without_the_cluster_extra_mcd_says_so_and_keeps_a_saved_cluster_node() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # no Redis there: a node listens and waits for it
    daemon = McdMaybeWithoutRedis().start()
    try:
        daemon.request("server.set", key="interface", value="127.0.0.1")
        daemon.request("server.set", key="cluster", value=url)
        daemon.request("server.start")
        assert daemon.stop() == 0
        # The same state under an mcd installed without redis-py: it starts
        # (it crashed at the restore), says why, and does not bring the node
        # back as a lone server.
        daemon.hide_redis = True
        daemon.start()
        warnings = daemon.request("daemon.status")["warnings"]
        assert any(f"saved cluster={url!r} refused: cluster mode needs the redis package" in w for w in warnings)
        assert any("server 'default' not restarted: set cluster again (or to none)" in w for w in warnings)
        status = daemon.request("server.status")
        assert status["phase"] == "stopped" and status["desired"] == "started"
        refused = run("server", "start", socket_path=daemon.socket)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert f"has saved settings mcd could not apply at start (cluster={url!r}" in refused.stderr
        setting = run("server", "set", "cluster", url, socket_path=daemon.socket)
        assert setting.returncode == 2 and "internal" not in setting.stderr
        # The command that installs the extra into mcd's own Python, from
        # this checkout (the tests run from an editable install of it).
        command = f"{shlex.quote(sys.executable)} -m pip install -e {shlex.quote(f'{ROOT}[cluster]')}"
        assert f"cluster mode needs the redis package: {command} (then restart mcd)" in setting.stderr
        assert daemon.stop() == 0
        # The saved node was kept whole: with redis-py it is a cluster node again.
        daemon.hide_redis = False
        daemon.start()
        status = daemon.request("server.status")
        assert status["settings"]["cluster"] == url and status["phase"] == "listening"
        # Nothing refused at this start; it only waits for its Redis (none runs here).
        (waiting,) = daemon.request("daemon.status")["warnings"]
        assert waiting.startswith("server 'default': cluster node ") and "NOT READY" in waiting
        assert daemon.stop() == 0
        # Set to none where redis-py is missing, it is a lone server by choice.
        daemon.hide_redis = True
        daemon.start()
        ok(daemon, "server", "set", "cluster", "none")
        ok(daemon, "server", "start")
        assert daemon.request("server.status")["settings"]["cluster"] is None
    finally:
        daemon.close()


def test_a_library_server_without_redis_py_says_so_when_cluster_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` raises ImportError
    # From PyPI, and from a checkout, where the first would fetch whatever PyPI has.
    with pytest.raises(ImportError, match=r"pip install 'missioncommander\[cluster\]' .*pip install '\.\[cluster\]'"):
        Server(interface="127.0.0.1", port=0, cluster="redis://127.0.0.1:6379/0")
    server = Server(interface="127.0.0.1", port=0)
    with pytest.raises(ImportError, match="cluster mode needs the redis package"):
        server.cluster = "redis://127.0.0.1:6379/0"
    assert server.cluster is None  # refused, not half set
    server.cluster = None  # no cluster needs no redis-py
