"""Cluster mode with nodes in this process, on a real redis-server: routing,
broadcast, ids owned cluster-wide, hand-over, and what Redis trouble does."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from support import FaultProxy, HeldResponder, Recorder, server_frames, wait_until
from support.certs import make_certs
from support.redis_server import RedisServer

from missioncommander import (
    Client,
    ClientState,
    ClusterUnavailable,
    ConnectionRefusedByServer,
    Message,
    MessageTooLarge,
    QueueFullError,
    RemoteError,
    RequestTimeout,
    Server,
    SessionLost,
    StateError,
    UnknownClient,
)
from missioncommander import _cluster as cluster_module
from missioncommander import _cluster_store as cluster_store_module
from missioncommander._cluster_store import ClusterStore
from missioncommander._events import Challenge, ErrorReceived
from missioncommander._frames import FrameType, encode_json_frame, with_meta

MakeNode = Callable[..., Server]
MakeClient = Callable[..., Client]


def numbers(recorder: Recorder, name: str = "message") -> list[int]:
    return [args[-1].payload["n"] for args in recorder.of(name)]


def servers_of(*nodes: Server) -> list[str]:
    return [f"127.0.0.1:{node.port}" for node in nodes]


def test_send_reaches_a_client_held_by_another_node(make_node: MakeNode, make_client: MakeClient) -> None:
    a, b = make_node(node_id="a"), make_node(node_id="b")
    client = make_client(a, client_id="c1")
    rec = Recorder().attach(client, "message")
    client.connect()
    assert b.client_nodes == {"c1": "a"} and b.clients == ["c1"]
    for n in range(100):
        b.send("c1", Message("to-c1", {"n": n}))
    rec.wait_count("message", 100)
    assert numbers(rec) == list(range(100))
    with pytest.raises(UnknownClient):
        b.send("nobody", Message("x"))


def test_a_clients_figures_show_the_queue_bound_redis_keeps(make_node: MakeNode, make_client: MakeClient) -> None:
    node = make_node(node_id="a", max_queued=500, max_queued_bytes=100_000)
    make_client(node, client_id="c1").connect()
    figures = node.stats("c1")
    # Not the local queue's own (unbounded) limits: Redis bounds the queue.
    assert (figures["max_queued"], figures["max_queued_bytes"]) == (500, 100_000)
    node.max_queued, node.max_queued_bytes = 700, 200_000
    assert (node.stats("c1")["max_queued"], node.stats("c1")["max_queued_bytes"]) == (700, 200_000)


def test_broadcast_reaches_every_client_of_every_node_once(make_node: MakeNode, make_client: MakeClient) -> None:
    nodes = [make_node(node_id=name) for name in "abc"]
    recorders = []
    for i, node in enumerate(nodes):
        for j in range(2):
            client = make_client(node, client_id=f"c{i}{j}")
            recorders.append(Recorder().attach(client, "message"))
            client.connect()
    assert sorted(nodes[2].client_nodes.items()) == [
        ("c00", "a"), ("c01", "a"), ("c10", "b"), ("c11", "b"), ("c20", "c"), ("c21", "c"),
    ]  # fmt: skip
    for n in range(50):
        nodes[n % 3].send("*", Message("all", {"n": n}))
    for rec in recorders:
        rec.wait_count("message", 50)
    for rec in recorders:
        # Each client gets all 50 once; the order is each sender's own.
        assert sorted(numbers(rec)) == list(range(50))


def test_events_fire_on_the_node_that_holds_the_client(make_node: MakeNode, make_client: MakeClient) -> None:
    a, b = make_node(node_id="a"), make_node(node_id="b")
    on_a = Recorder().attach(a, "clientconnect", "clientdisconnect", "message")
    on_b = Recorder().attach(b, "clientconnect", "clientdisconnect", "message")
    client = make_client(b, client_id="c1")
    client.connect()
    client.send(Message("up", {"n": 1}))
    on_b.wait_count("message", 1)
    client.disconnect()
    on_b.wait_count("clientdisconnect", 1)
    assert on_b.of("clientconnect") == [("c1",)] and numbers(on_b) == [1]
    assert on_a.names() == []
    wait_until(lambda: a.clients == [], what="the session ended cluster-wide")


def test_an_id_is_owned_cluster_wide(make_node: MakeNode, make_client: MakeClient) -> None:
    a, b = make_node(node_id="a"), make_node(node_id="b")
    first = make_client(a, client_id="same")
    first.connect()
    second = make_client(b, client_id="same")
    with pytest.raises(ConnectionRefusedByServer) as refused:
        second.connect()
    # b asked a, which answered that a live client holds the id.
    assert refused.value.code == "id_in_use" and "live client" in refused.value.reason
    assert b.client_nodes == {"same": "a"}
    # A repr counts the node's own clients (it never waits on Redis).
    assert (repr(a), repr(b)) == (
        f"<Server 127.0.0.1:{a.port} listening, node a, 1 client(s)>",
        f"<Server 127.0.0.1:{b.port} listening, node b, 0 client(s)>",
    )
    first.send(Message("still", {"n": 1}))  # the first client carries on
    assert first.state & ClientState.STATE_CONNECTED


def test_a_detached_session_is_replaced_from_another_node(make_node: MakeNode, make_client: MakeClient) -> None:
    """A client that forgot its session (a restart) gets a new one on any
    node, while the old one, detached, was still held by another."""
    a, b = make_node(node_id="a", session_expiry=30), make_node(node_id="b")
    proxy = FaultProxy(a.port)
    try:
        old = make_client(client_id="c", address="127.0.0.1", port=proxy.port, reconnect_attempts=1)
        old.connect()
        ends = Recorder().attach(a, "clientdisconnect")
        proxy.refusing = True  # the old client cannot come back: its session stays detached
        proxy.cut("rst")
        wait_until(lambda: a.stats("c")["connected"] is False, what="a noticed the cut")
        old.disconnect()
        new = make_client(b, client_id="c")
        new.connect()  # b asks a, which ends the detached session; the retry gets in
        ends.wait_count("clientdisconnect", 1)
        assert b.client_nodes == {"c": "b"}
    finally:
        proxy.close()


def test_disconnect_client_works_on_any_node(make_node: MakeNode, make_client: MakeClient) -> None:
    a, b = make_node(node_id="a"), make_node(node_id="b")
    on_a = Recorder().attach(a, "clientdisconnect")
    client = make_client(a, client_id="c1")
    client.connect()
    b.disconnect_client("c1", "go away")
    on_a.wait_count("clientdisconnect", 1)
    wait_until(lambda: not client.state & ClientState.STATE_RUNNING, what="the client stopped")
    assert "go away" in (client.last_close_reason or "")
    wait_until(lambda: b.clients == [], what="the end reached Redis")  # a's I/O worker writes it
    with pytest.raises(UnknownClient):
        b.disconnect_client("c1")


def test_a_node_that_leaves_hands_its_clients_over(
    make_node: MakeNode, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="missioncommander")
    a, b = make_node(node_id="a"), make_node(node_id="b")
    got = Recorder().attach(b, "message", "clientconnect")
    client = make_client(client_id="c1", servers=servers_of(a, b))
    rec = Recorder().attach(client, "message", "reconnect", "sessionlost")
    client.connect()
    assert client.port == a.port
    for n in range(20):
        b.send("c1", Message("down", {"n": n}))
    a.stop()  # the session goes on: b takes the client over
    for n in range(20, 40):
        b.send("c1", Message("down", {"n": n}))
    rec.wait_count("reconnect", 1)
    for n in range(10):
        client.send(Message("up", {"n": n}))
    rec.wait_count("message", 40)
    got.wait_count("message", 10)
    assert numbers(rec) == list(range(40)) and numbers(got) == list(range(10))
    assert client.port == b.port and b.client_nodes == {"c1": "b"}
    assert got.of("clientconnect") == [] and rec.of("sessionlost") == []  # the same session, resumed
    assert "this node is leaving the cluster" in (client.last_close_reason or "")  # told why, not just cut
    # A planned hand-over is news for the log, not a fault to warn about.
    moved = [r for r in caplog.records if "connection lost" in r.getMessage() and "'c1'" in r.getMessage()]
    assert moved and all(r.levelno == logging.INFO for r in moved)


def test_a_cut_client_resumes_on_another_node_exactly_once(make_node: MakeNode, make_client: MakeClient) -> None:
    a, b = make_node(node_id="a"), make_node(node_id="b")
    up = Recorder().attach(a, "message")
    seen_b = Recorder().attach(b, "message")
    proxy = FaultProxy(a.port)
    try:
        client = make_client(client_id="c1", servers=[f"127.0.0.1:{proxy.port}", *servers_of(b)])
        rec = Recorder().attach(client, "message", "reconnect")
        client.connect()
        for n in range(300):
            client.send(Message("up", {"n": n}))
            a.send("c1", Message("down", {"n": n}))
            if n in (100, 200):
                proxy.cut("rst")
        rec.wait_count("message", 300)
        wait_until(lambda: len(up.of("message")) + len(seen_b.of("message")) >= 300, what="every message up")
        assert numbers(rec) == list(range(300))
        assert sorted(numbers(up) + numbers(seen_b)) == list(range(300))
    finally:
        proxy.close()


def test_redis_restart_without_persistence_tells_clients_their_session_is_lost(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="missioncommander")
    a = make_node(node_id="a")
    client = make_client(a, client_id="c1")
    rec = Recorder().attach(client, "sessionlost", "reconnect", "message")
    client.connect()
    redis_server.restart()  # every key gone
    ((reason,),) = rec.wait_count("sessionlost", 1, timeout=20)
    assert "a cluster's Redis that lost it" in reason  # not only "a restart or an expiry": that was not it
    rec.wait_count("reconnect", 1)
    assert a.client_nodes == {"c1": "a"}  # a new session, in the new Redis
    a.send("c1", Message("after", {"n": 1}))
    rec.wait_count("message", 1)
    # The log tells a node's first join from its return.
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cluster node a ")]
    assert [m.split(" (")[0] for m in said if "Redis at" in m and "lost" not in m] == [
        "cluster node a joined",
        "cluster node a is back",
    ], said


def test_redis_restart_with_persistence_keeps_every_session(
    tmp_path_factory: pytest.TempPathFactory, make_client: MakeClient
) -> None:
    redis_server = RedisServer(tmp_path_factory.mktemp("redis"), persistent=True)
    redis_server.start()
    node = Server(interface="127.0.0.1", cluster=redis_server.url, node_id="a", lease_ttl=2.0)
    node.start()
    try:
        client = make_client(node, client_id="c1")
        rec = Recorder().attach(client, "sessionlost", "message")
        up = Recorder().attach(node, "message")
        client.connect()
        for n in range(50):
            node.send("c1", Message("down", {"n": n}))
            client.send(Message("up", {"n": n}))
        redis_server.restart()  # kill -9: appendfsync always kept every write
        for n in range(50, 100):
            while True:
                try:
                    node.send("c1", Message("down", {"n": n}))
                    break
                except ClusterUnavailable:
                    wait_until(lambda: node.stats()["cluster"]["ready"], what="the node back on Redis")
            client.send(Message("up", {"n": n}))
        rec.wait_count("message", 100)
        up.wait_count("message", 100)
        assert numbers(rec) == list(range(100)) and numbers(up) == list(range(100))
        assert rec.of("sessionlost") == []
    finally:
        node.stop()
        redis_server.stop()


def test_a_node_without_redis_refuses_newcomers_and_rejoins(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient
) -> None:
    a = make_node(node_id="a")
    redis_server.stop()
    wait_until(lambda: not a.stats()["cluster"]["ready"], what="the node noticed")
    with pytest.raises(ClusterUnavailable):
        a.send("*", Message("x"))
    client = make_client(a, client_id="late", connect_timeout=1.0)
    with pytest.raises(ConnectionRefusedByServer) as refused:
        client.connect()
    assert refused.value.code == "server_full" and "Redis" in refused.value.reason
    redis_server.start()
    wait_until(lambda: a.stats()["cluster"]["ready"], timeout=10, what="the node rejoined")
    client.connect()
    assert a.client_nodes == {"late": "a"}


def test_a_redis_password_stays_out_of_logs_statuses_and_errors(
    tmp_path: Path, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The URL's password reaches Redis (the node joins a Redis that asks
    for it) and nothing else: logs, status and errors say ``:***@``."""
    redis_server = RedisServer(tmp_path, password="s3cret-pw")
    node = Server(interface="127.0.0.1", port=0, cluster=redis_server.url, node_id="a", lease_ttl=2.0)
    redis_server.start()
    try:
        with caplog.at_level(logging.INFO, logger="missioncommander"):
            node.start()
            wait_until(lambda: node.stats()["cluster"]["ready"], what="the node joined with the password")
            client = make_client(node, client_id="c1")
            client.connect()
            assert node.client_nodes == {"c1": "a"}
            status = node.cluster_status
            assert status is not None and status["url"] == f"redis://:***@127.0.0.1:{redis_server.port}/0"
            redis_server.stop()
            # The log line comes just after the flag: wait for the line.
            wait_until(lambda: "lost Redis at" in caplog.text, what="the node noticed")
            with pytest.raises(ClusterUnavailable) as unavailable:
                node.send("*", Message("x"))
        assert ":***@" in str(unavailable.value) and "s3cret-pw" not in str(unavailable.value)
        assert "lost Redis at redis://:***@" in caplog.text and "s3cret-pw" not in caplog.text
        assert node.cluster == redis_server.url  # the setting itself is the URL as set
    finally:
        node.stop()
        redis_server.stop()


def test_a_node_cut_off_from_redis_lets_its_clients_go_after_its_leases(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient
) -> None:
    """No writes after the lease is gone: the node lets its clients go, and
    they resume on a node that can reach Redis."""
    b = make_node(node_id="b")
    a_proxy_to_redis = FaultProxy(redis_server.port)
    try:
        a = make_node(node_id="a", cluster=f"redis://127.0.0.1:{a_proxy_to_redis.port}/0", lease_ttl=1.0)
        client = make_client(client_id="c1", servers=servers_of(a, b))
        rec = Recorder().attach(client, "message", "reconnect", "sessionlost")
        client.connect()
        b.send("c1", Message("before", {"n": 0}))
        rec.wait_count("message", 1)
        a_proxy_to_redis.refusing = True  # a hears nothing from Redis from now on
        a_proxy_to_redis.cut("blackhole")
        rec.wait_count("reconnect", 1, timeout=20)
        wait_until(lambda: b.client_nodes.get("c1") == "b", what="b holds the client")
        b.send("c1", Message("after", {"n": 1}))
        rec.wait_count("message", 2)
        assert numbers(rec) == [0, 1] and rec.of("sessionlost") == []
        assert a.stats()["clients"] == 0  # a let go: nothing of c1 left to write from
        a_proxy_to_redis.refusing = False  # the split heals: a rejoins by itself and routes to b
        wait_until(lambda: a.stats()["cluster"]["ready"], timeout=10, what="a rejoined")
        a.send("c1", Message("from-a", {"n": 2}))
        rec.wait_count("message", 3)
        assert numbers(rec) == [0, 1, 2] and a.client_nodes == {"c1": "b"}
    finally:
        a_proxy_to_redis.close()


def test_a_node_whose_pubsub_connection_died_silently_subscribes_again_and_delivers(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A NAT or firewall that forgets an idle connection kills it without a
    FIN or RST: the node's pub/sub connection hears nothing ever after,
    while its other connection (leases, writes) works.  The node must
    notice (the probe it publishes to itself does not come back), subscribe
    again and deliver what it missed."""
    b = make_node(node_id="b")
    a_proxy_to_redis = FaultProxy(redis_server.port)
    try:
        a = make_node(node_id="a", cluster=f"redis://127.0.0.1:{a_proxy_to_redis.port}/0", lease_ttl=1.0)
        client = make_client(a, client_id="c1")
        rec = Recorder().attach(client, "message", "reconnect")
        client.connect()
        b.send("c1", Message("before", {"n": 0}))
        rec.wait_count("message", 1)
        accepted = a_proxy_to_redis.accepted
        with caplog.at_level(logging.WARNING, logger="missioncommander.cluster"):
            a_proxy_to_redis.cut("blackhole", said=b"SUBSCRIBE")
            assert a_proxy_to_redis.live >= 1  # a's other connections still reach Redis
            b.send("c1", Message("while deaf", {"n": 1}))
            rec.wait_count("message", 2, timeout=10)
        assert a_proxy_to_redis.accepted > accepted  # a subscribed again, on a new connection
        assert any("pub/sub" in r.getMessage() and "subscribing again" in r.getMessage() for r in caplog.records)
        b.send("c1", Message("after", {"n": 2}))
        rec.wait_count("message", 3)
        assert numbers(rec) == [0, 1, 2]
        assert rec.of("reconnect") == [] and a.stats()["cluster"]["ready"]  # the client never noticed
        assert a.stats()["cluster"]["resubscribes"] >= 1 and b.stats()["cluster"]["resubscribes"] == 0
    finally:
        a_proxy_to_redis.close()


def test_a_node_whose_pubsub_connection_alone_broke_stays_ready_and_subscribes_again(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis closed the node's pub/sub connection (CLIENT KILL TYPE pubsub,
    a proxy restarted) while it answers on the others: the node subscribes
    again at once, and is not "lost", refusing newcomers, in between."""
    b = make_node(node_id="b")
    a_proxy_to_redis = FaultProxy(redis_server.port)
    try:
        a = make_node(node_id="a", cluster=f"redis://127.0.0.1:{a_proxy_to_redis.port}/0")
        client = make_client(a, client_id="c1")
        rec = Recorder().attach(client, "message", "reconnect")
        client.connect()
        with caplog.at_level(logging.INFO, logger="missioncommander.cluster"):
            a_proxy_to_redis.cut("rst", said=b"SUBSCRIBE")
            wait_until(lambda: a.stats()["cluster"]["resubscribes"] >= 1, what="a subscribed again")
            b.send("c1", Message("after", {"n": 0}))
            rec.wait_count("message", 1)
        said = [r.getMessage() for r in caplog.records]
        assert any("pub/sub connection" in line and "while Redis answers: subscribing again" in line for line in said)
        assert not any("lost Redis" in line or "is back" in line for line in said), said
        assert a.stats()["cluster"]["ready"] and rec.of("reconnect") == []
    finally:
        a_proxy_to_redis.close()


def test_a_node_that_may_not_ask_which_redis_run_it_is_on_takes_a_broken_pubsub_for_a_loss(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Only Redis's run id (INFO) tells a pub/sub connection that broke
    alone from a Redis that restarted meanwhile; a node whose ACL denies
    INFO cannot tell, and takes the safe side: Redis was lost, and is back."""
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.acl_setuser(
            "noinfo", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-info"]
        )
        a = make_node(node_id="a", cluster=f"redis://noinfo:pw@127.0.0.1:{redis_server.port}/0")
        client = make_client(a, client_id="c1")
        rec = Recorder().attach(client, "message")
        client.connect()
        with caplog.at_level(logging.INFO, logger="missioncommander.cluster"):
            admin.client_kill_filter(_type="pubsub")
            # Not "is back" alone: the warning says "refusing new clients until it is back".
            wait_until(
                lambda: any(r.getMessage().startswith("cluster node a is back") for r in caplog.records),
                what="a back",
            )
            a.send("c1", Message("after", {"n": 0}))
            rec.wait_count("message", 1)
        said = [r.getMessage() for r in caplog.records]
        assert any("lost Redis" in line for line in said), said
        assert a.stats()["cluster"]["resubscribes"] == 0 and a.stats()["cluster"]["ready"]
    finally:
        admin.close()


def count_renewals(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Renewals each holder made from now on."""
    made: dict[str, int] = {}
    renew = ClusterStore.renew

    def counted(store: ClusterStore, node: str, *args: Any) -> Any:
        renewal = renew(store, node, *args)
        made[node] = made.get(node, 0) + 1
        return renewal

    monkeypatch.setattr(ClusterStore, "renew", counted)
    return made


def twin_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "same node_id" in r.getMessage()]


def test_two_nodes_given_one_node_id_are_each_warned_of_the_other(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A configuration copied to a second machine, node_id and all: both
    work, but nothing could tell them apart, so each says so."""
    with caplog.at_level(logging.WARNING, logger="missioncommander.cluster"):
        a = make_node(node_id="twin", lease_ttl=0.6)
        b = make_node(node_id="twin", lease_ttl=0.6)
        wait_until(lambda: len(twin_warnings(caplog)) >= 2, what="both twins warned")
    said = twin_warnings(caplog)
    assert any(f"listening on 127.0.0.1:{b.port}" in line for line in said), said  # a, of b
    assert any(f"listening on 127.0.0.1:{a.port}" in line for line in said), said  # b, of a
    assert all(line.startswith("cluster node twin: another node runs with the same node_id") for line in said)

    # In the status too, for as long as it lasts (mcd makes a standing warning of it);
    # waited for, as a sighting a slow machine let lapse comes back at the next renewal.
    def twin_of(node: Server) -> dict[str, str]:
        status = node.cluster_status
        return (status or {}).get("same_node_id") or {}

    wait_until(lambda: twin_of(a).get("address") == f"127.0.0.1:{b.port}", what="b in a's status")
    wait_until(lambda: twin_of(b).get("holder", "").startswith("twin#"), what="a in b's status")
    b.stop()
    wait_until(lambda: a.cluster_status is not None and a.cluster_status["same_node_id"] is None, what="twin gone")


def test_a_node_restarted_under_its_id_is_no_twin_of_its_last_run(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last run's mark outlives it by up to lease_ttl: the next run
    finds it at its first renewal, and must not take it for a twin."""
    renewals = count_renewals(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="missioncommander.cluster"):
        first = make_node(node_id="again", lease_ttl=6.0)
        assert first._cluster is not None
        old = first._cluster.holder
        wait_until(lambda: renewals.get(old, 0) >= 1, what="the first run renewed")
        first.stop()  # its mark lives on for lease_ttl
        second = make_node(node_id="again", lease_ttl=0.6)
        assert second._cluster is not None
        new = second._cluster.holder
        wait_until(lambda: renewals.get(new, 0) >= 4, what="the second run renewed a few times")
    assert twin_warnings(caplog) == []
    assert second.cluster_status is not None and second.cluster_status["same_node_id"] is None


def test_the_library_needs_redis_only_for_cluster_mode() -> None:
    import subprocess
    import sys

    code = "import sys, missioncommander; missioncommander.Server(); assert 'redis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with pytest.raises(ValueError, match="Redis URL"):
        Server(cluster="localhost:6379")


def test_several_servers_are_tried_in_turn_by_a_first_connect(make_node: MakeNode, make_client: MakeClient) -> None:
    from support import free_port

    b = make_node(node_id="b")
    client = make_client(client_id="c1", servers=[f"127.0.0.1:{free_port()}", *servers_of(b)])
    client.connect()  # the first is closed: the second welcomes it
    assert client.port == b.port
    done = threading.Event()
    client.subscribe("message", lambda message: done.set())
    b.send("c1", Message("hi"))
    assert done.wait(10)


@pytest.mark.parametrize("number", ["out_seq", "in_taken"])
def test_a_redis_that_came_back_behind_a_session_is_not_resumed_silently(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient, number: str
) -> None:
    """Redis restarted without its last writes (appendfsync everysec, say):
    the node finds the session behind what it sent and recorded, and the
    client is told its session was lost rather than resumed with holes."""
    import redis

    proxy = FaultProxy(redis_server.port)
    store = redis.Redis.from_url(redis_server.url)
    try:
        a = make_node(node_id="a", cluster=f"redis://127.0.0.1:{proxy.port}/0", lease_ttl=5.0)
        client = make_client(a, client_id="c1")
        rec = Recorder().attach(client, "message", "sessionlost")
        up = Recorder().attach(a, "message")
        client.connect()
        for n in range(5):
            a.send("c1", Message("down", {"n": n}))
            client.send(Message("up", {"n": n}))
        rec.wait_count("message", 5)
        up.wait_count("message", 5)
        wait_until(lambda: client.stats()["queued"] == 0, what="the server acknowledged (Redis recorded) all 5")
        proxy.refusing = True
        proxy.cut("rst")  # a loses Redis for a moment...
        wait_until(lambda: not a.stats()["cluster"]["ready"], what="a noticed")
        store.hset("missioncommander:sess:c1", number, 2)  # ...which comes back without its last writes
        proxy.refusing = False
        rec.wait_count("sessionlost", 1, timeout=20)
        a.send("c1", Message("fresh", {"n": 5}))
        rec.wait_count("message", 6)
        assert numbers(rec) == list(range(6))
    finally:
        store.close()
        proxy.close()


def test_clients_whose_session_expired_or_whose_holder_died_are_not_listed_as_held(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient
) -> None:
    """A session nobody resumed expires in Redis, but its entry in the
    cluster's list stayed: every node listed the client ("between nodes" in
    mcctl) for good. And a client whose node died went on being listed as
    held by it once its lease had run out. Both are mended as the list is read."""
    a = make_node(node_id="a", session_expiry=1.0)
    b = make_node(node_id="b", session_expiry=1.0)
    client = make_client(a, client_id="gone", reconnect_delay=0.05, reconnect_max_delay=0.1)
    client.connect()
    a.stop()  # hands "gone" over; it finds no other node in its list...
    wait_until(lambda: b.client_nodes == {"gone": ""}, what="the session to wait for its client")
    client.disconnect()  # ...and gives up without a goodbye: nobody resumes it
    wait_until(lambda: "gone" not in b.clients, timeout=15, what="the expired session to leave the list")
    store = redis.Redis.from_url(redis_server.url)
    try:
        # A holder that died: its entry names it, its lease ran out, the session waits.
        store.hset("missioncommander:sess:orphan", "node", "dead#0")
        store.pexpire("missioncommander:sess:orphan", 60_000)
        store.hset("missioncommander:clients", "orphan", "dead#0")
        assert b.client_nodes == {"orphan": ""}
        assert store.hget("missioncommander:clients", "orphan") == b""
    finally:
        store.close()


@pytest.mark.parametrize("inline", [False, True])
def test_a_record_that_finds_the_lease_gone_lets_the_client_go(
    redis_server: RedisServer,
    make_node: MakeNode,
    make_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
    inline: bool,
) -> None:
    """Another node took the client's lease (this one was cut off from
    Redis longer than lease_ttl, say): the next record of a message taken
    finds it so and the node lets the client go at once, whether a
    callback thread wrote it or the I/O worker did for inline callbacks
    (that one went on as if held until the next lease renewal)."""
    caplog.set_level(logging.INFO, logger="missioncommander")
    a = make_node(node_id="a", lease_ttl=30.0, inline_callbacks=inline)  # renewals 10 s apart
    got = Recorder().attach(a, "message")
    client = make_client(a, client_id="c1")
    client.connect()
    store = redis.Redis.from_url(redis_server.url)
    try:
        store.set("missioncommander:lease:c1", "ghost#0", px=2000)  # taken, for two seconds
        client.send(Message("up"))
        got.wait_count("message", 1)
        wait_until(
            lambda: "client 'c1' let go: this node no longer holds the client" in caplog.text,
            timeout=5,
            what="the node to let c1 go",
        )
        wait_until(lambda: a.held_clients == ["c1"], timeout=20, what="c1 back once the lease ran out")
    finally:
        store.close()


def test_a_node_leaves_no_thread_or_descriptor_behind(redis_server: RedisServer, make_client: MakeClient) -> None:
    import os
    import threading

    def counts() -> tuple[int, int]:
        return threading.active_count(), len(os.listdir("/proc/self/fd"))

    def run_node_once() -> None:
        node = Server(interface="127.0.0.1", cluster=redis_server.url, node_id="brief", lease_ttl=2.0)
        node.start()
        client = make_client(node, client_id="visitor")
        client.connect()
        node.send("visitor", Message("hi"))
        client.disconnect()
        node.stop()

    run_node_once()  # the process's own I/O thread and pools start once
    before = counts()
    for _ in range(5):
        run_node_once()
    wait_until(lambda: counts() <= before, what=f"threads and descriptors back to {before} (now {counts()})")


def test_a_newcomer_on_another_node_gets_the_id_of_a_dead_half_open_holder(
    make_node: MakeNode, make_client: MakeClient
) -> None:
    """As on a lone server: the node holding the id asks its connection (a
    PING) rather than wait for its heartbeat timeout (30 s here)."""
    import time

    a = make_node(node_id="a", heartbeat_interval=10.0, heartbeat_timeout=30.0)
    b = make_node(node_id="b")
    ends = Recorder().attach(a, "clientdisconnect")
    proxy = FaultProxy(a.port)
    try:
        old = make_client(client_id="c", address="127.0.0.1", port=proxy.port, heartbeat_interval=10.0,
                          heartbeat_timeout=30.0)  # fmt: skip
        old.connect()
        proxy.cut("blackhole")  # half-open: a has not noticed, and will not for 30 s
        newcomer = make_client(b, client_id="c", connect_timeout=15.0)
        started = time.monotonic()
        newcomer.connect()  # told to retry while a asks; in once a's probe found nobody
        assert time.monotonic() - started < 10
        ends.wait_count("clientdisconnect", 1)
        assert b.client_nodes == {"c": "b"}
    finally:
        proxy.close()


def test_a_message_over_a_clients_frame_limit_is_refused_on_any_node(
    make_node: MakeNode, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = make_node(node_id="a"), make_node(node_id="b")
    small = make_client(a, client_id="small", max_frame_size=4096)
    large = make_client(a, client_id="large")
    got_small, got_large = Recorder().attach(small, "message"), Recorder().attach(large, "message")
    small.connect()
    large.connect()
    big = Message("big", {"text": "x" * 5000})
    for node in (a, b):  # the holder, and a node that only knows Redis's copy of the limit
        with pytest.raises(MessageTooLarge, match="limit of 4096"):
            node.send("small", big)
    b.send("*", big)  # a broadcast skips the small client, as a lone server's does
    b.send("*", big)  # (and says so once in a while, not each time)
    b.send("*", Message("fits", {"n": 1}))
    got_large.wait_count("message", 3)
    assert caplog.text.count("broadcast skips client 'small': message over the frame limit it announced") == 1
    got_small.wait_count("message", 1)
    assert [args[0].subject for args in got_small.of("message")] == ["fits"]
    assert small.state & ClientState.STATE_CONNECTED  # never sent what it could not take


def test_a_client_refused_for_a_dead_nodes_lease_is_told_when_it_runs_out(
    make_node: MakeNode, make_client: MakeClient, redis_server: RedisServer
) -> None:
    """A node that died holding a client's id leaves its lease in Redis
    until it runs out: the other nodes refuse the client ("held; retry")
    and say when the id is free at the latest, and the client's waiting
    connect() gets in once it is."""
    b = make_node(node_id="b")
    store = redis.Redis.from_url(redis_server.url)
    try:
        store.set("missioncommander:lease:orphan", "node-that-died", px=3000)
        with socket.create_connection(("127.0.0.1", b.port), timeout=10) as sock:
            frames = server_frames(sock)
            assert isinstance(next(frames), Challenge)
            sock.sendall(
                encode_json_frame(
                    FrameType.HELLO,
                    {"version": 2, "client_id": "orphan", "session": None, "last_seq": 0,
                     "max_frame_size": 65536, "heartbeat_timeout": 15},
                )
            )  # fmt: skip
            refusal = next(frames)
        assert isinstance(refusal, ErrorReceived) and refusal.code == "id_in_use" and refusal.retry
        assert "held by node" in refusal.message
        assert refusal.retry_after is not None and 0.0 < refusal.retry_after <= 3.0
        left = store.pttl("missioncommander:lease:orphan") / 1000
        assert refusal.retry_after >= left  # said before this read: no less was left then
        client = make_client(b, client_id="orphan", connect_timeout=20)
        client.connect()  # refused until the lease runs out, then in
        assert b.client_nodes == {"orphan": "b"}
    finally:
        store.close()


def test_inline_messages_past_a_request_being_answered_are_recorded_off_the_io_thread(
    make_node: MakeNode, make_client: MakeClient, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``inline_callbacks`` and ``concurrent_requests``, messages behind
    a request still being answered run on the I/O thread: how far they were
    handed goes to Redis from the node's I/O worker, never from that thread
    (which every connection of the process waits for)."""
    from missioncommander import _cluster_store, _loop

    writers: list[str] = []
    handed = _cluster_store.ClusterStore.handed

    def spy(self: _cluster_store.ClusterStore, client_id: str, node: str, seq: int) -> bool:
        writers.append(threading.current_thread().name)
        return handed(self, client_id, node, seq)

    monkeypatch.setattr(_cluster_store.ClusterStore, "handed", spy)
    node = make_node(node_id="a", inline_callbacks=True, concurrent_requests=2)
    go = threading.Event()
    entered = threading.Event()
    node.subscribe("request", lambda _cid, m: (entered.set(), {"ok": go.wait(10)})[-1])
    seen = Recorder().attach(node, "message")
    client = make_client(node, client_id="c1")
    client.connect()
    asking = threading.Thread(target=client.request, args=(Message("ask"), 10))
    asking.start()
    try:
        assert entered.wait(10)
        # The instance's own queue is idle (the responder runs on one of its
        # own): the messages then run inline, on the I/O thread.
        assert node._callbacks.serial.wait_idle(10)
        for n in range(3):
            client.send(Message("up", {"n": n}))
        seen.wait_count("message", 3)
        store = redis.Redis.from_url(redis_server.url)
        try:
            wait_until(lambda: int(store.hget("missioncommander:sess:c1", "in_handed") or 0) >= 2)
        finally:
            store.close()
    finally:
        go.set()
        asking.join(10)
    assert writers and _loop.get_loop()._thread.name not in writers, writers


def test_a_cluster_node_checks_tokens_as_a_lone_server_does(make_node: MakeNode, make_client: MakeClient) -> None:
    """A HELLO for an id with no session on the node went to Redis before
    the token (and version) checks: a client with its token failed ("the
    server did not prove it knows the token") and one that sent no proof
    got in.  Now the checks come first, on every node, and a client with
    the token resumes on another node as elsewhere."""
    a = make_node(node_id="a", auth_token="s3cret")
    b = make_node(node_id="b", auth_tokens={"c1": "its own"}, auth_token="s3cret")
    client = make_client(client_id="c1", auth_token="its own", servers=[f"127.0.0.1:{b.port}", f"127.0.0.1:{a.port}"])
    seen = Recorder().attach(client, "reconnect", "sessionlost")
    arrived = Recorder().attach(a, "message")
    client.connect()
    assert b.client_nodes == {"c1": "b"}
    a.auth_tokens = {"c1": "its own"}
    b.stop()  # hands c1 over: it resumes on a with its token
    seen.wait_count("reconnect", 1)
    client.send(Message("after"))
    assert arrived.wait_count("message", 1)[0] == ("c1", Message("after"))
    assert seen.of("sessionlost") == []

    hello = {"client_id": "intruder", "session": None, "last_seq": 0, "max_frame_size": 65536, "heartbeat_timeout": 15}
    for fields, code in [({"version": 2}, "auth_failed"), ({"version": 99}, "version_unsupported")]:
        with socket.create_connection(("127.0.0.1", a.port), timeout=10) as sock:
            frames = server_frames(sock)
            challenge = next(frames)
            assert isinstance(challenge, Challenge) and challenge.auth
            sock.sendall(encode_json_frame(FrameType.HELLO, {**hello, **fields}))  # no proof
            refusal = next(frames)
        assert isinstance(refusal, ErrorReceived) and refusal.code == code, refusal
    wrong = make_client(a, client_id="c2", auth_token="guess")
    with pytest.raises(ConnectionRefusedByServer) as refused:
        wrong.connect()
    assert refused.value.code == "auth_failed"
    assert sorted(a.clients) == ["c1"]


def test_a_node_asks_a_client_another_node_holds_and_gets_its_reply(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient
) -> None:
    """A request travels to the client as a message does (through Redis, to
    the holder), and the holder, which asked nothing, passes the reply on to
    every node: the asker takes it. Refused at once before this, since the
    reply was dropped at the holder and the asker waited out its timeout.
    Errors come back the same way; ``queued()`` and ``stats()`` are still
    the holder's figures, refused elsewhere naming it."""
    a = make_node(node_id="a")
    b = make_node(node_id="b")
    client = make_client(b, client_id="c1")
    asked = Recorder().attach(client, "request")

    hold = threading.Event()

    def respond(message: Message) -> dict[str, str]:
        if message.subject == "fail":
            raise LookupError("nothing here")
        if message.subject == "slow":
            hold.wait(30)
        return {"from": "c1", "asked": message.subject}

    client.subscribe("request", respond)
    client.connect()
    assert a.request("c1", Message("ask"), timeout=10) == Message("ask", {"from": "c1", "asked": "ask"})
    assert b.request("c1", Message("mine"), timeout=10) == Message("mine", {"from": "c1", "asked": "mine"})
    with pytest.raises(RemoteError) as failed:
        a.request("c1", Message("fail"), timeout=10)
    assert (failed.value.type_name, failed.value.message) == ("LookupError", "nothing here")
    assert [m.subject for (m,) in asked.of("request")] == ["ask", "mine", "fail"]  # each ran once
    assert a._requests.in_flight("c1") == 0 and b._requests.in_flight("c1") == 0
    for call in (lambda: a.queued("c1"), lambda: a.stats("c1")):
        with pytest.raises(UnknownClient, match="held by node b, not this one"):
            call()
    with pytest.raises(UnknownClient, match="no client 'nobody' is connected to the cluster"):
        a.request("nobody", Message("ask"))
    # A timeout says where the reply would have come from.
    with pytest.raises(RequestTimeout, match=r"\(client 'c1' is not held by this node: its reply comes through Redis"):
        a.request("c1", Message("slow"), timeout=0.2)
    # Redis forgets who asked once the asker stops waiting (else each
    # request that timed out would stay recorded as long as the session).
    store = redis.Redis.from_url(redis_server.url)
    try:
        wait_until(lambda: store.hlen("missioncommander:asks:c1") == 0, what="the asker's record to go")
    finally:
        store.close()
    hold.set()


def test_a_reply_reaches_the_asker_when_its_client_moves_before_answering(
    make_node: MakeNode, make_client: MakeClient
) -> None:
    """Node c asks c1 on b; b leaves while c1's responder runs; c1 answers
    on the node it resumes on (a), which passes the reply on to c. The
    asker being the node the client moves to takes it as its own."""
    a, b, c = make_node(node_id="a"), make_node(node_id="b"), make_node(node_id="c")
    respond = HeldResponder()

    client = make_client(client_id="c1", servers=servers_of(b, a), inline_callbacks=False)
    client.subscribe("request", respond)
    client.connect()
    assert c.client_nodes == {"c1": "b"}
    with ThreadPoolExecutor(2) as pool:
        from_c = pool.submit(c.request, "c1", Message("from-c"), 20)
        assert respond.entered.wait(10)
        from_a = pool.submit(a.request, "c1", Message("from-a"), 20)  # waits in line behind from-c at c1
        wait_until(lambda: a._requests.in_flight("c1") == 1, what="a's request to be out")
        # Counted by the node that asked, though another node holds c1.
        assert a.stats()["requests_in_flight"] == 1 and c.stats()["requests_in_flight"] == 1
        b.stop()  # hands c1 over: it resumes on a
        wait_until(lambda: a.client_nodes.get("c1") == "a", what="c1 to resume on a")
        respond.go.set()
        assert from_c.result(20) == Message("from-c", {"answer": "from-c"})
        assert from_a.result(20) == Message("from-a", {"answer": "from-a"})
        assert a.request("c1", Message("again"), timeout=10) == Message("again", {"answer": "again"})


def test_a_request_to_a_version_1_client_on_another_node_is_refused_before_it_is_sent(
    make_node: MakeNode,
) -> None:
    """Redis keeps each client's protocol version from its HELLO, and checks
    it as it stores a request: a version 1 client has no request/reply."""
    a, b = make_node(node_id="a"), make_node(node_id="b")
    with socket.create_connection(("127.0.0.1", b.port), timeout=10) as sock:
        hello = {"version": 1, "client_id": "old", "session": None, "last_seq": 0, "max_frame_size": 65536,
                 "heartbeat_timeout": 15}  # fmt: skip
        sock.sendall(encode_json_frame(FrameType.HELLO, hello))
        frames = server_frames(sock)
        assert isinstance(next(frames), Challenge)
        next(frames)  # WELCOME
        wait_until(lambda: a.client_nodes.get("old") == "b", what="the old client to join")
        for node in (a, b):
            with pytest.raises(StateError, match="client 'old' speaks protocol version 1, which has no request"):
                node.request("old", Message("ask"), timeout=10)
        a.send("old", Message("plain messages still work"))
        assert next(frames).subject == "plain messages still work"  # type: ignore[attr-defined]


def test_a_request_to_a_client_of_another_node_fails_at_once_when_its_session_ends_there(
    make_node: MakeNode, make_client: MakeClient
) -> None:
    """The session a request is stored in ends for good on the node that
    holds the client (disconnected there, or expired while detached): the
    asking node hears it over Redis and fails the request with
    ``SessionLost`` then, as a lone server does, where it waited out its
    timeout before. A request stored in the client's next session is
    answered."""
    a = make_node(node_id="a")
    b = make_node(node_id="b", session_expiry=1.0)
    respond = HeldResponder()

    client = make_client(b, client_id="c1")
    client.subscribe("request", respond)
    client.connect()
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(a.request, "c1", Message("held"), 30)
        assert respond.entered.wait(10)
        b.disconnect_client("c1", "maintenance")
        with pytest.raises(SessionLost, match="disconnected by the server: maintenance"):
            asked.result(10)  # not its timeout of 30 s
    respond.go.set()
    assert a._requests.in_flight("c1") == 0

    # Expired while detached on b: its connection went (through a proxy
    # that is gone), so the request waits in the session, unanswered.
    proxy = FaultProxy(b.port)
    try:
        cut_off = make_client(client_id="c2", servers=[f"127.0.0.1:{proxy.port}"], reconnect_max_delay=0.2)
        cut_off.subscribe("request", lambda message: {"late": True})
        cut_off.connect()
        wait_until(lambda: a.client_nodes.get("c2") == "b", what="c2 to join on b")
    finally:
        proxy.close()
    wait_until(lambda: "c2" in b.detached_clients, what="c2 to be detached on b")
    with pytest.raises(SessionLost, match="session expired after 1 s detached"):
        a.request("c2", Message("nobody answers"), timeout=30)

    # c1 comes back, in a new session: a's requests there are answered.
    client.connect()
    wait_until(lambda: a.client_nodes.get("c1") == "b", what="c1 to come back")
    assert a.request("c1", Message("again"), timeout=10) == Message("again", {"answer": "again"})


def new_sessions(store: ClusterStore, count: int, holder: Callable[[int], str] = lambda i: "n#0") -> list[str]:
    """``count`` client ids, each with a new session held by ``holder(its index)``."""
    ids = [f"c{i}" for i in range(count)]
    for i, client_id in enumerate(ids):
        assert store.claim(client_id, holder(i), None, f"t{i}", 0, 60.0, 60.0, 65536, 2).outcome == "new"
    return ids


def test_a_node_reads_many_clients_in_batches_in_order(redis_server: RedisServer) -> None:
    """What a node reads as it rejoins (every client it holds), pipelined:
    each answer with its own client across the batches' edges."""
    store = ClusterStore(redis_server.url)
    try:
        count = cluster_store_module.BATCH + 3
        ids = new_sessions(store, count)
        for i, client_id in enumerate(ids):
            for n in range(i % 3):
                appended = store.append(client_id, f"{client_id}/{n}".encode(), 100, "n#0")
                assert isinstance(appended, cluster_store_module.Appended)
        asked = [*ids[:2], "nobody", *ids[2:]]
        numbers = store.numbers_many(asked)
        assert numbers[2] is None  # no session
        assert [found[0] if found else None for found in numbers] == [0, 1, None, *(i % 3 for i in range(2, count))]
        read = store.read_many([(client_id, 0) for client_id in ids])
        assert read == [[(n + 1, f"{c}/{n}".encode()) for n in range(i % 3)] for i, c in enumerate(ids)]
        assert store.read_many([(ids[2], 1)]) == [[(2, b"c2/1")]] and store.read(ids[2], 2) == []
    finally:
        store.close()


def test_a_node_hands_many_clients_back_in_batches(redis_server: RedisServer) -> None:
    """What a node leaving does for each client it holds, pipelined: each
    lease handed back is free for another node at once, across the
    batches' edges, and only the holder's own are."""
    store = ClusterStore(redis_server.url)
    try:
        count = cluster_store_module.BATCH + 3
        ids = new_sessions(store, count, lambda i: "other#0" if i == 1 else "n#0")
        released = store.release_many(ids, "n#0")
        assert released == [i != 1 for i in range(count)]  # c1 is another's: left alone
        clients = store.clients()
        assert all(clients[c] == "" for i, c in enumerate(ids) if i != 1) and clients["c1"] == "other#0"
        # Free at once: another node resumes each (its token) without waiting for a lease.
        assert store.claim(ids[-1], "next#0", f"t{count - 1}", "t", 0, 60.0, 60.0, 65536, 2).outcome == "resume"
    finally:
        store.close()


def test_a_request_stored_for_a_dead_nodes_client_fails_when_the_client_starts_anew(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient
) -> None:
    """The holder died (its lease runs out); the client, restarted, claims
    its id with no session: Redis replaces the old session, and the
    requests stored in it fail with ``SessionLost`` on the node that asked."""
    store = ClusterStore(redis_server.url)
    try:
        claim = store.claim("c1", "dead#0", None, "old-token", 0, 1.0, 60.0, 65536, 2)
        assert claim.outcome == "new"
    finally:
        store.close()
    a, b = make_node(node_id="a"), make_node(node_id="b")
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(a.request, "c1", Message("ask"), 30)
        wait_until(lambda: a._requests.in_flight("c1") == 1, what="the request to be stored")
        client = make_client(b, client_id="c1")
        client.connect()  # refused while the dead node's lease lasts, then in
        with pytest.raises(SessionLost, match="the client started a new session"):
            asked.result(20)
    assert a.client_nodes == {"c1": "b"}


def test_a_reply_is_passed_on_only_to_the_node_that_asked_and_one_nobody_asked_nowhere(
    redis_server: RedisServer, make_node: MakeNode, make_client: MakeClient
) -> None:
    """Replies a node did not ask for went to every node over one channel,
    bodies and all, whoever sent them: a client sending large replies to
    requests nobody made had every node's subscription cut by Redis (its
    output buffer limit: each node "lost Redis" and refused newcomers) and
    grew its own node's memory. Redis now records which node asked, the
    holder passes a reply on to that node alone, and drops one nobody asked."""
    a, b, c = make_node(node_id="a"), make_node(node_id="b"), make_node(node_id="c")
    client = make_client(a, client_id="c1")
    client.subscribe("request", lambda message: {"answer": message.subject})
    client.connect()
    watcher = redis.Redis.from_url(redis_server.url).pubsub(ignore_subscribe_messages=True)
    try:
        watcher.psubscribe("missioncommander:*")  # every channel of the cluster
        watcher.get_message(timeout=1)  # the subscription's confirmation (ignored) arrives first
        pad = "x" * 600_000
        for n in range(60):  # 36 MB: over Redis's 32 MB cut-off for a subscriber, had each node got them
            client._send_body(with_meta(Message("forged", {"pad": pad}).encode(), {"reply": 10_000 + n}))
        assert b.request("c1", Message("real"), timeout=20) == Message("real", {"answer": "real"})
        passed_on: list[tuple[bytes, bytes]] = []
        for _ in range(1000):
            seen = watcher.get_message(timeout=0.2)
            if seen is None:
                break
            if seen["data"][:1] == b"r":
                passed_on.append((seen["channel"], seen["data"][:40]))
        # The one real reply, to b alone; none of the forged ones.
        assert [channel for channel, _ in passed_on] == [f"missioncommander:node:{b._cluster.holder}".encode()]
    finally:
        watcher.close()
    assert all(node.stats()["cluster"]["ready"] for node in (a, b, c))
    assert c.request("c1", Message("again"), timeout=10) == Message("again", {"answer": "again"})
    store = redis.Redis.from_url(redis_server.url)
    try:
        assert store.hlen("missioncommander:asks:c1") == 0  # each record went with its reply
    finally:
        store.close()


def test_replies_over_the_nodes_budget_are_dropped_with_a_warning(
    make_node: MakeNode, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What waits to be passed on is bounded: past the budget a reply is
    dropped (its asker times out) and the node says why, every few seconds."""
    monkeypatch.setattr(cluster_module, "FORWARD_BUDGET", 100_000)
    a = make_node(node_id="a")
    client = make_client(a, client_id="c1")
    client.connect()
    worker_busy, go_on = threading.Event(), threading.Event()
    assert a._cluster is not None
    a._cluster._background(lambda: (worker_busy.set(), go_on.wait(10)))  # the I/O worker waits
    assert worker_busy.wait(10)
    try:
        for n in range(5):  # 60 KB each: the second is over the budget
            client._send_body(with_meta(Message("forged", {"pad": "x" * 60_000}).encode(), {"reply": 10_000 + n}))
        wait_until(lambda: "dropped: 0.0953674 MiB of replies already wait" in caplog.text, what="the warning")
    finally:
        go_on.set()
    wait_until(lambda: a._cluster is not None and a._cluster._forwarding == 0, what="the passed-on replies to go")
    assert caplog.text.count("replies already wait to be passed on") == 1  # said once in SAY_EVERY


def test_a_node_that_lets_its_client_go_mid_request_still_gets_the_reply(
    make_node: MakeNode, make_client: MakeClient
) -> None:
    """b asks its own client c1 (nothing recorded in Redis: the reply comes
    to b itself); c1's connection breaks and it resumes on a before it
    answers. b records its request as it lets c1 go, so a passes the
    reply on to b."""
    a, b = make_node(node_id="a"), make_node(node_id="b")
    respond = HeldResponder()

    proxy = FaultProxy(b.port)
    try:
        client = make_client(client_id="c1", servers=[f"127.0.0.1:{proxy.port}", *servers_of(a)])
        client.subscribe("request", respond)
        client.connect()
        assert a.client_nodes == {"c1": "b"}
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(b.request, "c1", Message("mine"), 20)
            assert respond.entered.wait(10)
            proxy.refusing = True  # b's way is gone: c1 resumes on a
            proxy.cut("rst")
            wait_until(lambda: a.client_nodes.get("c1") == "a", what="c1 to resume on a")
            respond.go.set()
            assert asked.result(20) == Message("mine", {"answer": "mine"})
    finally:
        respond.go.set()
        proxy.close()


def test_nodes_reach_a_redis_that_speaks_tls_with_their_ca_in_the_url(
    tmp_path: Path, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """``rediss://`` with a private CA: redis-py takes ``ssl_ca_certs`` (and
    its other TLS options) from the URL, which mcd and mcctl pass as it is.
    A node without the CA says why it cannot reach Redis."""
    certs = make_certs(tmp_path)
    redis_tls = RedisServer(tmp_path, tls=(certs.server_cert, certs.server_key, certs.ca))
    redis_tls.start()
    nodes: list[Server] = []
    try:
        for name in ("a", "b"):
            node = Server(interface="127.0.0.1", cluster=redis_tls.url, node_id=name)
            node.start()
            nodes.append(node)
        a, b = nodes
        assert a.cluster_status is not None and a.cluster_status["ready"]
        client = make_client(b, client_id="c1")
        echoed = Recorder().attach(client, "message")
        client.connect()
        a.send("c1", Message("over TLS"))  # stored in Redis by a, delivered by b
        assert echoed.wait_count("message", 1)[0][0].subject == "over TLS"
        without_ca = Server(interface="127.0.0.1", cluster=redis_tls.url.partition("?")[0], node_id="c")
        nodes.append(without_ca)
        without_ca.start()  # it listens, and joins once it can reach Redis: here never
        assert without_ca.cluster_status is not None and not without_ca.cluster_status["ready"]
        wait_until(lambda: "certificate verify failed" in caplog.text, what="the node to say why")
    finally:
        for node in nodes:
            node.stop()
        redis_tls.stop()


def test_redis_bounds_a_clients_queue_in_bytes_and_an_acknowledgement_makes_room(redis_server: RedisServer) -> None:
    """max_queued_bytes in Redis: each message's size is kept beside its
    session, and a trim (an acknowledgement) subtracts what it removed,
    once, however often the same number is acknowledged."""
    store = ClusterStore(redis_server.url)
    try:
        assert store.claim("c", "n#0", None, "t", 0, 60.0, 60.0, 65536, 2).outcome == "new"
        body = b"x" * 300
        for seq in (1, 2, 3):
            appended = store.append("c", body, 100, "n#0", max_bytes=1000)
            assert isinstance(appended, cluster_store_module.Appended) and appended.seq == seq
        assert store.append("c", body, 100, "n#0", max_bytes=1000) == ("full", 900)
        assert store.append("c", body, 100, "n#0") != ("full", 900)  # 0: no byte bound (now 1,200 bytes)
        mine, full, skipped = store.broadcast(body, 100, "n#0", max_bytes=1000)
        assert (mine, full, skipped) == ([], ["c"], [])

        def queued() -> int:
            return int(store.redis.hget(f"{store.prefix}sess:c", "out_bytes"))

        assert queued() == 1200
        store.trim({"c": 2})
        assert queued() == 600
        store.trim({"c": 2})  # again: nothing more to subtract
        assert queued() == 600
        assert isinstance(store.append("c", body, 100, "n#0", max_bytes=1000), cluster_store_module.Appended)
        mine, full, _ = store.broadcast(b"y" * 100, 100, "n#0", max_bytes=1000)
        assert full == [] and queued() == 1000
        store.trim({"c": 6})
        assert queued() == 0 and store.read("c", 0) == []
        assert [f for f in store.redis.hkeys(f"{store.prefix}sess:c") if f.startswith(b"z")] == []
        # An acknowledgement of thousands at once (trimmed in chunks).
        for _ in range(2500):
            store.append("c", b"z" * 10, 3000, "n#0", max_bytes=1000_000)
        assert queued() == 25_000
        store.trim({"c": 6 + 2400})
        assert queued() == 1000 and len(store.read("c", 0)) == 100
        # A new session starts with nothing queued.
        store.append("c", body, 100, "n#0")
        assert store.claim("c", "n#0", None, "t2", 0, 60.0, 60.0, 65536, 2).outcome == "replaced"
        assert store.redis.hget(f"{store.prefix}sess:c", "out_bytes") is None
    finally:
        store.close()


def test_a_send_to_a_client_that_acknowledges_nothing_is_refused_at_its_byte_bound_on_any_node(
    make_node: MakeNode, make_client: MakeClient
) -> None:
    """Redis kept whatever bytes a node sent a client that did not read:
    clients times max_queued times 16 MiB, at the defaults."""
    release = threading.Event()
    a, b = make_node(node_id="a"), make_node(node_id="b", max_queued_bytes=4000)
    client = make_client(a, client_id="stuck")
    got = Recorder().attach(client, "message")
    client.subscribe("message", lambda m: release.wait(30))  # acknowledges nothing meanwhile
    client.connect()
    sent = 0
    try:
        with pytest.raises(QueueFullError, match=r"bytes queued, max_queued_bytes=4000"):
            for _ in range(100):  # about 3,300 bytes fit
                b.send("stuck", Message("m", {"n": sent, "text": "x" * 300}))
                sent += 1
        assert 5 <= sent < 100
        with pytest.raises(MessageTooLarge, match="larger than a whole send queue"):
            b.send("stuck", Message("m", {"text": "x" * 5000}))
    finally:
        release.set()
    got.wait_count("message", sent)
    wait_until(lambda: a.queued("stuck") == 0, what="the client to acknowledge them all")
    for n in range(sent, sent + 5):  # the acknowledgements made room in Redis too
        wait_until(lambda n=n: _sent(b, "stuck", Message("m", {"n": n, "text": "x" * 300})), what="room")
    got.wait_count("message", sent + 5)
    assert numbers(got) == list(range(sent + 5))


def _sent(node: Server, client_id: str, message: Message) -> bool:
    try:
        node.send(client_id, message)
    except QueueFullError:
        return False
    return True


def test_acknowledgements_of_many_clients_are_trimmed_in_batches(redis_server: RedisServer) -> None:
    """One script per batch of clients (Redis serves nobody else while a
    script runs), pipelined: each client's stream and byte count, across
    the batches' edges."""
    store = ClusterStore(redis_server.url)
    try:
        ids = new_sessions(store, cluster_store_module.BATCH + 3)
        for client_id in ids:
            for n in range(2):
                assert isinstance(store.append(client_id, b"m" * (n + 1), 100, "n#0"), cluster_store_module.Appended)
        store.trim({client_id: 1 for client_id in ids})
        for client_id in ids:
            assert store.read(client_id, 0) == [(2, b"mm")]
            assert store.redis.hget(f"{store.prefix}sess:{client_id}", "out_bytes") == b"2"
    finally:
        store.close()


def test_a_node_started_without_its_redis_says_so_once_and_not_that_it_lost_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node whose Redis was not up at start said "lost Redis" (it never
    had it) and then "does not answer yet": two lines for one cause."""
    with socket.socket() as nothing:  # a port nothing listens on, held so nothing will
        nothing.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{nothing.getsockname()[1]}/0"
        node = Server(interface="127.0.0.1", port=0, cluster=url, node_id="early")
        with caplog.at_level(logging.WARNING, logger="missioncommander"):
            node.start()
            try:
                wait_until(lambda: "cannot reach Redis" in caplog.text, what="the node's word on its Redis")
            finally:
                node.stop()
    said = [r.getMessage() for r in caplog.records if "Redis at" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"cluster node early cannot reach Redis at {url} ("), said
    assert said[0].count(url) == 1 and "Connection refused" in said[0], said  # the cause, its URL said once
