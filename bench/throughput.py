"""Client-to-server throughput and echo latency over loopback, one process.

A quick figure while the full benchmark (issue 7) is built:
    python3 bench/throughput.py [N]
Every run checks that each message arrived exactly once and in order.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time

from missioncommander import Client, Message, Server


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    filler = "x" * 100
    with Server(interface="127.0.0.1", port=0) as server:
        got: list[int] = []
        done = threading.Event()

        def on_message(_cid: str, message: Message) -> None:
            got.append(message.payload["seq"])
            if len(got) == n:
                done.set()

        server.subscribe("message", on_message)
        with Client(address="127.0.0.1", port=server.port) as client:
            start = time.perf_counter()
            for i in range(n):
                client.send(Message("bench", {"message": filler, "seq": i}))
            if not done.wait(120):
                sys.exit(f"only {len(got)} of {n} arrived")
            elapsed = time.perf_counter() - start
            assert got == list(range(n)), "lost, duplicated or reordered messages"
            print(f"client->server: {n} messages in {elapsed:.2f} s = {n / elapsed:,.0f} msg/s")

        server.unsubscribe("message", on_message)
        server.subscribe("message", server.send)  # echo
        reply = threading.Event()
        with Client(address="127.0.0.1", port=server.port) as client:
            client.subscribe("message", lambda m: reply.set())
            samples = []
            for i in range(min(n, 5000)):
                reply.clear()
                t0 = time.perf_counter()
                client.send(Message("echo", {"message": filler, "seq": i}))
                if not reply.wait(10):
                    sys.exit("echo timed out")
                samples.append(time.perf_counter() - t0)
            samples.sort()
            p50 = statistics.median(samples) * 1e6
            p99 = samples[int(len(samples) * 0.99)] * 1e6
            print(f"echo round trip: p50 {p50:.0f} us, p99 {p99:.0f} us ({len(samples)} requests)")


if __name__ == "__main__":
    main()
