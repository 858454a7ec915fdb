"""A cluster node in its own process, for tests that kill -9 it.

Usage: python cluster_node.py REDIS_URL NODE_ID [PORT [CONCURRENT_REQUESTS [async]]];
prints READY PORT once it has joined.  With ``async`` it is an
``AsyncServer`` whose responder is a coroutine (and ``CONCURRENT_REQUESTS``
means nothing: coroutine responders answer side by side anyway).  Its application records every
message a client sends (the payload's ``n``, with an ``r`` after it when the
message came marked ``redelivered``) in Redis, in the list
``test:got:{client_id}``, so what each node's callbacks saw survives the
node; its responder records each request's ``n`` in ``test:asked:{client_id}``
and answers it, unless the request says ``hang`` (then it waits until the
node is killed).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Any

import redis

from missioncommander import Message, Server
from missioncommander.aio import AsyncServer


def main() -> None:
    url, node_id = sys.argv[1], sys.argv[2]
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    concurrent = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    logging.basicConfig(level=logging.WARNING, format=f"{node_id} %(levelname)s %(name)s: %(message)s")
    log = redis.Redis.from_url(url)
    settings: dict[str, Any] = {
        "interface": "127.0.0.1",
        "port": port,
        "cluster": url,
        "node_id": node_id,
        "lease_ttl": 1.5,
        "heartbeat_interval": 0.5,
        "heartbeat_timeout": 3.0,
    }

    def record(client_id: str, message: Message) -> None:
        log.rpush(f"test:got:{client_id}", f"{message.payload['n']}{'r' if message.redelivered else ''}")

    def asked(client_id: str, message: Message) -> bool:
        """Record a request; whether it says to hang."""
        log.rpush(f"test:asked:{client_id}", message.payload["n"])
        return bool(message.payload.get("hang"))

    if len(sys.argv) > 5 and sys.argv[5] == "async":

        async def serve() -> None:
            async def respond(client_id: str, message: Message) -> dict[str, object]:
                if asked(client_id, message):
                    await asyncio.Event().wait()
                return {"n": message.payload["n"]}

            async with AsyncServer(**settings) as server:
                server.subscribe("message", record)
                server.subscribe("request", respond)
                print("READY", server.port, flush=True)
                await asyncio.Event().wait()

        asyncio.run(serve())
        return

    def respond(client_id: str, message: Message) -> dict[str, object]:
        if asked(client_id, message):
            threading.Event().wait()
        return {"n": message.payload["n"]}

    server = Server(concurrent_requests=concurrent, **settings)
    server.subscribe("message", record)
    server.subscribe("request", respond)
    server.start()
    print("READY", server.port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
