"""Three cluster nodes in their own processes, killed with SIGKILL under
traffic while the clients' connections are cut too: every message arrives
in order, none lost, and none repeated unless it came marked redelivered
(docs/CLUSTER.md: a node killed between a callback and its record)."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from support import FaultProxy, Recorder, free_port, wait_until
from support.redis_server import RedisServer

from missioncommander import Client, Message, Server

NODE = Path(__file__).parent.parent / "support" / "cluster_node.py"
CLIENTS = 4
EACH = 2_500  # per client and direction: 10,000 each way in all
KILLS = 4
CUTS = 6


class Node:
    """A cluster node process on a fixed port, so a restart comes back where it was."""

    def __init__(self, redis_url: str, name: str, concurrent_requests: int = 1, kind: str = "threaded") -> None:
        self.redis_url, self.name, self.port = redis_url, name, free_port()
        self.concurrent_requests = concurrent_requests
        self.kind = kind
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(NODE),
                self.redis_url,
                self.name,
                str(self.port),
                str(self.concurrent_requests),
                self.kind,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the node prints READY once it has joined
        assert line.startswith("READY"), f"node {self.name} did not start: {line!r}"

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[list[Node]]:
    started = [Node(redis_server.url, f"n{i}") for i in range(3)]
    for node in started:
        node.start()
    yield started
    for node in started:
        if node.process is not None:
            node.kill()


def up_entries(store: redis.Redis, client_id: str) -> list[str]:
    return [entry.decode() for entry in store.lrange(f"test:got:{client_id}", 0, -1)]


def up_numbers(store: redis.Redis, client_id: str) -> list[int]:
    return [int(entry.rstrip("r")) for entry in up_entries(store, client_id)]


def only_marked_repeats(seen: list[str], count: int) -> int:
    """Check ``seen`` is 0..count-1 in order where each repeat, if any, is of
    the message just before and came marked redelivered (``r``); returns
    how many repeats there were."""
    repeats = 0
    expected = 0
    for entry in seen:
        n = int(entry.rstrip("r"))
        if n == expected - 1:
            assert entry.endswith("r"), f"message {n} came twice, the second time not marked redelivered"
            repeats += 1
            continue
        assert n == expected, f"expected {expected}, got {n} (after {seen[max(0, expected - 5) : expected]})"
        expected += 1
    assert expected == count
    return repeats


@pytest.mark.slow
def test_every_message_survives_repeated_node_kills_and_cuts(
    redis_server: RedisServer, nodes: list[Node], make_client: Callable[..., Client]
) -> None:
    proxies = [FaultProxy(node.port) for node in nodes]
    sender = Server(interface="127.0.0.1", cluster=redis_server.url, node_id="sender", lease_ttl=1.5)
    sender.start()
    store = redis.Redis.from_url(redis_server.url)
    try:
        addresses = [f"127.0.0.1:{proxy.port}" for proxy in proxies]
        clients, recorders = [], []
        for i in range(CLIENTS):
            client = make_client(
                client_id=f"c{i}", servers=addresses[i % 3 :] + addresses[: i % 3], reconnect_max_delay=0.2
            )
            recorders.append(Recorder().attach(client, "message", "sessionlost"))
            client.connect()
            clients.append(client)

        rng = random.Random(7)
        chaos_done = threading.Event()

        def chaos() -> None:
            events = ["kill"] * KILLS + ["cut"] * CUTS
            rng.shuffle(events)
            for step, event in enumerate(events):
                if chaos_done.wait(0.25):
                    return
                if event == "kill":
                    node = nodes[step % 3]
                    node.kill()
                    node.start()
                else:
                    proxies[rng.randrange(3)].cut("rst")

        chaos_thread = threading.Thread(target=chaos, name="chaos")
        chaos_thread.start()
        deadline = time.monotonic() + 90
        for n in range(EACH):
            for i, client in enumerate(clients):
                sender.send(f"c{i}", Message("down", {"n": n}))
                client.send(Message("up", {"n": n}))
            assert time.monotonic() < deadline
        chaos_thread.join(60)
        chaos_done.set()

        for rec in recorders:
            rec.wait_count("message", EACH, timeout=60)
        for i in range(CLIENTS):
            wait_until(lambda i=i: len(set(up_numbers(store, f"c{i}"))) >= EACH, timeout=60, what=f"c{i}'s messages up")
        repeats = 0
        for i, rec in enumerate(recorders):
            assert [args[0].payload["n"] for args in rec.of("message")] == list(range(EACH)), f"c{i} down"
            assert rec.of("sessionlost") == []
            repeats += only_marked_repeats(up_entries(store, f"c{i}"), EACH)
        # At most the message in a killed node's hands when it died, per client.
        assert repeats <= KILLS * CLIENTS
    finally:
        sender.stop()
        store.close()
        for proxy in proxies:
            proxy.close()


def test_after_a_node_dies_the_message_it_may_have_seen_comes_marked(
    redis_server: RedisServer, make_node: Callable[..., Server], make_client: Callable[..., Client]
) -> None:
    doomed = Node(redis_server.url, "doomed")
    doomed.start()
    store = redis.Redis.from_url(redis_server.url)
    try:
        survivor = make_node(node_id="survivor", lease_ttl=1.0)
        seen = Recorder().attach(survivor, "message")
        client = make_client(client_id="c1", servers=[f"127.0.0.1:{doomed.port}", f"127.0.0.1:{survivor.port}"])
        client.connect()
        for n in range(3):
            client.send(Message("up", {"n": n}))
        wait_until(lambda: client.stats()["queued"] == 0, what="the doomed node recorded all three")
        doomed.kill()
        for n in range(3, 6):
            client.send(Message("up", {"n": n}))
        seen.wait_count("message", 3, timeout=20)
        # Redis had all three recorded, so nothing repeats; the survivor
        # cannot know the dead node got no further, so the first it hands
        # over is marked (a "may have"), and only that one.
        assert [(m.payload["n"], m.redelivered) for _, m in seen.of("message")] == [(3, True), (4, False), (5, False)]
        assert up_numbers(store, "c1") == [0, 1, 2] and survivor.stats()["cluster"]["takeovers"] == 1
    finally:
        store.close()
        if doomed.process is not None:
            doomed.kill()


def test_a_request_a_dead_node_may_have_seen_comes_marked_too(
    redis_server: RedisServer, make_node: Callable[..., Server], make_client: Callable[..., Client]
) -> None:
    # A responder may act on a request (charge, write) before it answers: one
    # run again on another node must say it may be a second run, as a message does.
    doomed = Node(redis_server.url, "doomed")
    doomed.start()
    try:
        survivor = make_node(node_id="survivor", lease_ttl=1.0)
        survivor.subscribe("request", lambda _cid, m: {"n": m.payload["n"], "redelivered": m.redelivered})
        client = make_client(client_id="c1", servers=[f"127.0.0.1:{doomed.port}", f"127.0.0.1:{survivor.port}"])
        client.connect()
        client.send(Message("up", {"n": 0}))
        wait_until(lambda: client.stats()["queued"] == 0, what="the doomed node recorded the message")
        doomed.kill()
        answers = [client.request(Message("ask", {"n": n}), timeout=20).payload for n in (1, 2)]
        assert answers == [{"n": 1, "redelivered": True}, {"n": 2, "redelivered": False}]
    finally:
        if doomed.process is not None:
            doomed.kill()


@pytest.mark.parametrize("kind", ["threaded", "async"])
def test_messages_a_dead_node_took_beside_a_request_it_was_answering_come_marked(
    redis_server: RedisServer, make_node: Callable[..., Server], make_client: Callable[..., Client], kind: str
) -> None:
    """With ``concurrent_requests`` (or an awaiting coroutine responder of
    the asyncio API), the messages after a request still being answered
    reach their callbacks before it is taken: a node that dies then has
    handed them all over unrecorded as taken, and the next node hands every
    one of them over again marked (not only the first)."""
    doomed = Node(redis_server.url, "doomed", concurrent_requests=2, kind=kind)
    doomed.start()
    store = redis.Redis.from_url(redis_server.url)
    try:
        survivor = make_node(node_id="survivor", lease_ttl=1.0)
        seen = Recorder().attach(survivor, "message")
        survivor.subscribe("request", lambda _cid, m: {"n": m.payload["n"], "redelivered": m.redelivered})
        client = make_client(client_id="c1", servers=[f"127.0.0.1:{doomed.port}", f"127.0.0.1:{survivor.port}"])
        client.connect()
        answer: list[object] = []
        asking = threading.Thread(
            target=lambda: answer.append(client.request(Message("ask", {"n": 1, "hang": True}), timeout=30).payload)
        )
        asking.start()
        wait_until(lambda: store.llen("test:asked:c1") == 1, what="the doomed node's responder began")
        for n in range(2, 5):
            client.send(Message("up", {"n": n}))
        wait_until(lambda: up_numbers(store, "c1") == [2, 3, 4], what="their callbacks ran beside the responder")
        # The asyncio API's node records it from its I/O worker, not before
        # the callbacks (its loop never waits on Redis): as soon as it can.
        wait_until(lambda: int(store.hget("missioncommander:sess:c1", "in_handed") or 0) >= 4, what="handed recorded")
        doomed.kill()
        asking.join(30)
        assert answer == [{"n": 1, "redelivered": True}]
        client.send(Message("up", {"n": 5}))
        seen.wait_count("message", 4, timeout=20)
        assert [(m.payload["n"], m.redelivered) for _, m in seen.of("message")] == [
            (2, True),
            (3, True),
            (4, True),
            (5, False),
        ]
    finally:
        store.close()
        if doomed.process is not None:
            doomed.kill()


# A node whose program ends without stop(): it returns from main once its
# standard input closes.
ENDING_NODE = """
import sys
from missioncommander import Server
server = Server(interface="127.0.0.1", port=0, cluster=sys.argv[1], node_id="ending", lease_ttl=30.0)
server.start()
print("READY", server.port, flush=True)
sys.stdin.read()
"""


def test_a_node_whose_program_ends_without_stop_hands_its_clients_over(
    redis_server: RedisServer, make_node: Callable[..., Server], make_client: Callable[..., Client]
) -> None:
    """As stop() does: the survivor takes the client over cleanly (no
    takeover of a dead node's client, nothing marked redelivered); it waited
    for the ending node's lease, and took it as a crash."""
    ending = subprocess.Popen(
        [sys.executable, "-c", ENDING_NODE, redis_server.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert ending.stdout is not None and ending.stdin is not None
        port = int(ending.stdout.readline().split()[1])
        survivor = make_node(node_id="survivor")
        seen = Recorder().attach(survivor, "message")
        client = make_client(client_id="c1", servers=[f"127.0.0.1:{port}", f"127.0.0.1:{survivor.port}"])
        client.connect()
        assert client.port == port
        ending.stdin.close()  # the node's program returns from its main
        assert ending.wait(20) == 0
        client.send(Message("up", {"n": 1}))
        seen.wait_count("message", 1, timeout=60)
        assert client.port == survivor.port and not seen.of("message")[0][1].redelivered
        assert survivor.stats()["cluster"]["takeovers"] == 0
    finally:
        if ending.poll() is None:
            ending.kill()
        ending.wait(10)
        for pipe in (ending.stdin, ending.stdout):
            if pipe is not None:
                pipe.close()
