"""Cluster mode against one server (docs/CLUSTER.md): what sharing sessions
through Redis costs.

    python3 bench/cluster.py [--reps N] [--messages N] [--clients N]

Starts its own redis-server on a free loopback port (Debian's redis-server
must be installed) and, in one run, measures

- **one server**: a lone `Server` (no cluster);
- **cluster, same node**: the sender is the node that holds the client;
- **cluster, other node**: the sender is another node (its own process):
  Redis numbers the message, pub/sub tells the holder, the holder writes it;

each for one-way latency (p50 and p99 of send() to the client's callback,
messages one at a time) and throughput (messages sent as fast as `send()`
returns, until the last arrives); then broadcast deliveries/s to
`--clients` clients spread over three nodes against as many on one server.
The clients and the sending server run in this process; with a cluster the
holding nodes are processes of their own.  Every run checks that each
message arrived once and in order.  Repetitions interleave; medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.redis_server import RedisServer

from missioncommander import Client, Message, Server

NODE = """
import sys, threading
from missioncommander import Server
server = Server(interface="127.0.0.1", port=0, cluster=sys.argv[1], node_id=sys.argv[2], max_connection_rate=None)
server.start()
print(server.port, flush=True)
threading.Event().wait()
"""


class Arrivals:
    """Counts a client's messages, checks their order, and times them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.expected = 0
        self.done = threading.Event()
        self.target = 0
        self.last_arrival = 0.0
        self.arrived_at: dict[int, float] = {}

    def on_message(self, message: Message) -> None:
        n = message.payload["n"]
        now = time.perf_counter()
        with self.lock:
            assert n == self.expected, f"message {n} arrived, {self.expected} expected"
            self.expected += 1
            self.arrived_at[n] = now
            if self.expected >= self.target:
                self.done.set()

    def expect(self, count: int) -> None:
        with self.lock:
            self.target = self.expected + count
            self.done.clear()


def start_node(url: str, name: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, "-c", NODE, url, name], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def one_way(sender: Server, client_id: str, arrivals: Arrivals, messages: int) -> dict[str, float]:
    """Latency (one at a time) and throughput (all at once) of sender -> client."""
    latencies = []
    for _ in range(min(messages, 2000)):
        n = arrivals.expected
        arrivals.expect(1)
        start = time.perf_counter()
        sender.send(client_id, Message("bench", {"n": n, "text": "x" * 100}))
        if not arrivals.done.wait(10):
            raise RuntimeError("a message did not arrive within 10 s")
        latencies.append(arrivals.arrived_at[n] - start)
    latencies.sort()
    first = arrivals.expected
    arrivals.expect(messages)
    start = time.perf_counter()
    for n in range(first, first + messages):
        sender.send(client_id, Message("bench", {"n": n, "text": "x" * 100}))
    if not arrivals.done.wait(120):
        raise RuntimeError("the messages did not all arrive within 120 s")
    elapsed = arrivals.arrived_at[first + messages - 1] - start
    return {
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "msgs_per_s": messages / elapsed,
    }


def broadcast(sender: Server, counters: list[Arrivals], rounds: int) -> float:
    first = counters[0].expected
    for counter in counters:
        counter.expect(rounds)
    start = time.perf_counter()
    for n in range(first, first + rounds):
        sender.send("*", Message("bench", {"n": n, "text": "x" * 100}))
    for counter in counters:
        if not counter.done.wait(120):
            raise RuntimeError("a broadcast did not reach every client within 120 s")
    last = max(counter.arrived_at[first + rounds - 1] for counter in counters)
    return len(counters) * rounds / (last - start)


def connect(ports: list[int], count: int, prefix: str) -> tuple[list[Client], list[Arrivals]]:
    clients, counters = [], []
    for i in range(count):
        arrivals = Arrivals()
        port = ports[i % len(ports)]
        client = Client(address="127.0.0.1", port=port, client_id=f"{prefix}{i}", inline_callbacks=True)
        client.subscribe("message", arrivals.on_message)
        client.connect()
        clients.append(client)
        counters.append(arrivals)
    return clients, counters


def run_once(url: str, messages: int, clients: int, rep: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    # One server.
    lone = Server(interface="127.0.0.1", port=0, inline_callbacks=True, max_connection_rate=None)
    lone.start()
    (client,), (arrivals,) = connect([lone.port], 1, f"lone{rep}-")
    results["one server"] = one_way(lone, client.client_id, arrivals, messages)
    client.disconnect()
    fleet, counters = connect([lone.port], clients, f"lonefleet{rep}-")
    results["one server"]["broadcast_per_s"] = broadcast(lone, counters, 20)
    for c in fleet:
        c.disconnect()
    lone.stop()
    # A cluster: this process's node sends; two more hold clients.
    here = Server(interface="127.0.0.1", port=0, cluster=url, node_id=f"bench{rep}", max_connection_rate=None)
    here.start()
    others = [start_node(url, f"node{rep}-{i}") for i in range(2)]
    try:
        (client,), (arrivals,) = connect([here.port], 1, f"same{rep}-")
        results["cluster, same node"] = one_way(here, client.client_id, arrivals, messages)
        client.disconnect()
        (client,), (arrivals,) = connect([others[0][1]], 1, f"cross{rep}-")
        results["cluster, other node"] = one_way(here, client.client_id, arrivals, messages)
        client.disconnect()
        fleet, counters = connect([here.port, others[0][1], others[1][1]], clients, f"fleet{rep}-")
        results["cluster, other node"]["broadcast_per_s"] = broadcast(here, counters, 20)
        for c in fleet:
            c.disconnect()
    finally:
        here.stop()
        for process, _ in others:
            process.kill()
            process.wait()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=300, help="broadcast: clients over three nodes")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("needs redis-server (Debian: apt-get install redis-server)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        redis = RedisServer(Path(folder))
        redis.start()
        try:
            runs = [run_once(redis.url, args.messages, args.clients, rep) for rep in range(args.reps)]
        finally:
            redis.stop()
    print(f"medians of {args.reps} repetitions; {args.messages} messages; broadcast to {args.clients} clients")
    print(f"{'':22} {'p50 us':>8} {'p99 us':>8} {'msgs/s':>9} {'bcast deliveries/s':>19}")
    figure: Callable[[str, str], Any] = lambda system, key: statistics.median(  # noqa: E731
        run[system][key] for run in runs if key in run[system]
    )
    for system in ("one server", "cluster, same node", "cluster, other node"):
        bcast = f"{figure(system, 'broadcast_per_s'):>19,.0f}" if "broadcast_per_s" in runs[0][system] else ""
        print(
            f"{system:22} {figure(system, 'p50_us'):>8,.0f} {figure(system, 'p99_us'):>8,.0f}"
            f" {figure(system, 'msgs_per_s'):>9,.0f} {bcast}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
