"""One node of an echo cluster: every node answers every client, wherever it is.

Run a Redis (redis-server), then a node per terminal:

    python3 examples/cluster_node.py redis://127.0.0.1:6379/0 30001 node-a
    python3 examples/cluster_node.py redis://127.0.0.1:6379/0 30002 node-b
    python3 examples/cluster_node.py redis://127.0.0.1:6379/0 30003 node-c

and a client that knows them all: python3 examples/cluster_client.py 30001 30002 30003.
Kill a node (Ctrl-C hands its clients over; kill -9 lets them resume after
lease_ttl): the client carries on on another.  While Redis is down a node
cannot send (every send goes through it): it says so and sends the echo
once Redis is back.  Needs the cluster extra
(pip install 'missioncommander[cluster]').
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from missioncommander import BindError, ClusterUnavailable, Message, Server, StateError, UnknownClient

#: How often and how long an echo that could not go out is tried again.
RETRY_EVERY = 0.5
RETRIES = 120


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: cluster_node.py REDIS_URL PORT [NODE_ID]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    url, port = sys.argv[1], int(sys.argv[2])
    server = Server(interface="127.0.0.1", port=port, cluster=url, node_id=sys.argv[3] if len(sys.argv) > 3 else None)

    stop = threading.Event()

    def echo_later(client_id: str, echo: Message) -> None:
        # A message the callback took is not given again: an echo that
        # could not go out now is the application's to send once it can.
        for _ in range(RETRIES):
            if stop.wait(RETRY_EVERY):
                return
            try:
                server.send(client_id, echo)
            except ClusterUnavailable:
                continue
            except (UnknownClient, StateError) as exc:
                print(f"echo to {client_id} dropped: {exc}", file=sys.stderr, flush=True)
                return
            print(f"echoed to {client_id} now that Redis is back", file=sys.stderr, flush=True)
            return
        print(f"echo to {client_id} dropped: Redis was unreachable for {RETRIES * RETRY_EVERY:.0f} s", file=sys.stderr)

    def on_message(client_id: str, message: Message) -> None:
        # redelivered: this node took the client over from one that died
        # while it may have been answering this very message, so the echo
        # may be the client's second (its example skips one it has had).
        again = " (redelivered: its first node died around it)" if message.redelivered else ""
        print(f"{client_id} says {message.subject}: {dict(message.payload)}{again}", flush=True)
        status = server.cluster_status or {}
        echo = Message(message.subject, {**message.payload, "node": status.get("node")})
        try:
            server.send(client_id, echo)
        except ClusterUnavailable as exc:
            # Every send goes through Redis (so that it reaches the client on
            # whichever node it ends up): while Redis is down, none can.
            print(f"cannot echo to {client_id} now: {exc}; trying again", file=sys.stderr, flush=True)
            threading.Thread(target=echo_later, args=(client_id, echo), daemon=True).start()

    server.subscribe("message", on_message)
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start()
    except BindError as exc:
        sys.exit(f"{exc}\n(another server has that port: give this node another)")
    try:
        print(f"cluster node {server.stats()['cluster']['node']} listening on 127.0.0.1:{server.port}", flush=True)
        stop.wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
