"""An asyncio echo server, an asyncio client and a threaded client, in one process.

    python3 examples/async_echo.py

The asyncio server echoes every message back to its sender; the asyncio
client sends three and reads the echoes with ``async for``; a threaded
``Client``, run in a worker thread, talks to the same server: both APIs
speak the same protocol.
"""

from __future__ import annotations

import asyncio
import queue

from missioncommander import Client, Message
from missioncommander.aio import AsyncClient, AsyncServer


async def serve_echo(server: AsyncServer) -> None:
    async for client_id, message in server.messages():
        await server.send(client_id, message)


def threaded_client(port: int) -> Message:
    inbox: queue.Queue[Message] = queue.Queue()
    with Client(address="127.0.0.1", port=port, client_id="threaded") as client:
        client.subscribe("message", inbox.put)
        client.send(Message("echo", {"from": "a thread"}))
        return inbox.get(timeout=10)


async def main() -> None:
    async with AsyncServer(interface="127.0.0.1", port=0) as server:
        echo = asyncio.create_task(serve_echo(server))
        async with AsyncClient(address="127.0.0.1", port=server.port, client_id="async") as client:
            for n in range(3):
                await client.send(Message("echo", {"n": n}))
            received = 0
            async for message in client.messages():
                print("async client got", message.payload)
                received += 1
                if received == 3:
                    break
        print("threaded client got", (await asyncio.to_thread(threaded_client, server.port)).payload)
        echo.cancel()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 30))
