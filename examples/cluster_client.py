"""A client of the echo cluster (examples/cluster_node.py): sends a numbered
message every half second to whichever node it is connected to, and prints
each echo with the node that sent it.

Run:  python3 examples/cluster_client.py PORT [PORT ...] [--count N]
(the nodes' ports on 127.0.0.1; --count stops after N echoes, default: never).
"""

from __future__ import annotations

import argparse
import logging
import queue
import time

from missioncommander import Client, ConnectError, Message

#: How long to wait for an echo, in all: longer than a node tries to send
#: one while Redis is down (examples/cluster_node.py).
ECHO_WAIT = 120.0


def wait_for_echo(echoes: queue.Queue[Message], n: int) -> Message:
    """The echo of message ``n``.  One of an earlier message is skipped: after
    ``sessionlost`` (Redis lost its data) the client sends what the cluster
    had not acknowledged again, which a node may have echoed already; and a
    node killed while it answered may have echoed the message its successor
    gets marked ``redelivered`` and echoes too (docs/CLUSTER.md)."""
    deadline = time.monotonic() + ECHO_WAIT
    while (left := deadline - time.monotonic()) > 0:
        try:
            echo = echoes.get(timeout=min(10.0, left))
        except queue.Empty:
            print(f"no echo of {n} yet: still waiting (the nodes' logs say why)", flush=True)
            continue
        if echo.payload["n"] == n:
            return echo
    raise SystemExit(f"no echo of {n} within {ECHO_WAIT:.0f} s (are the nodes and Redis up?)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ports", nargs="+", type=int)
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    echoes: queue.Queue[Message] = queue.Queue()
    client = Client(client_id="cluster-demo", servers=[f"127.0.0.1:{port}" for port in args.ports])
    client.subscribe("message", echoes.put)
    client.subscribe("sessionlost", lambda reason: print(f"session lost: {reason}", flush=True))
    try:
        client.connect()
    except ConnectError as exc:
        raise SystemExit(f"cannot reach any node: {exc} (are the nodes running? examples/cluster_node.py)") from None
    n = 0
    try:
        while args.count is None or n < args.count:
            client.send(Message("echo", {"n": n}))
            echo = wait_for_echo(echoes, n)
            print(f"echo {echo.payload['n']} from {echo.payload['node']}", flush=True)
            n += 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()


if __name__ == "__main__":
    main()
