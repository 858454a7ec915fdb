"""mcd's hosted server and client in a cluster, driven by the real mcctl."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from support import free_port, wait_until
from support.cli import run
from support.mcd import Mcd
from support.redis_server import RedisServer

from missioncommander import Client, Message, Server


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
        assert now["missioncommander_running"] == 1
        # The gauge an alert on a node cut off from Redis watches.
        redis_server.stop()
        wait_until(lambda: samples()["missioncommander_cluster_ready"] == 0, what="not ready without Redis")
        # mcctl says it where an operator looks: the status and the live table.
        not_ready = "NOT READY: cannot reach Redis, refusing new clients"
        assert not_ready in ok(daemon, "server", "status")
        stats_row = ok(daemon, "stats", "--kind", "server").splitlines()[1]
        assert stats_row.startswith("server") and stats_row.endswith(f"node {node_id} {not_ready}")
        redis_server.start()
        wait_until(lambda: samples()["missioncommander_cluster_ready"] == 1, timeout=10, what="ready again")
        assert f"node {node_id} ready" in ok(daemon, "stats", "--kind", "server")
        daemon.request("server.stop")
        now = samples()
        assert now["missioncommander_running"] == 0
        assert "missioncommander_cluster_ready" not in now  # a stopped node is in no cluster
    finally:
        daemon.close()


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
