"""The asyncio API's server in a cluster, beside threaded nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis
from support import HeldResponder, Recorder, wait_until
from support.redis_server import RedisServer

from missioncommander import Client, Message, Server, SessionLost
from missioncommander.aio import AsyncClient, AsyncServer


def test_an_async_node_routes_both_ways_and_hands_its_clients_over(
    redis_server: RedisServer, make_node: Callable[..., Server], make_client: Callable[..., Client]
) -> None:
    threaded = make_node(node_id="threaded")
    held_by_threaded = make_client(threaded, client_id="t1")
    far = Recorder().attach(held_by_threaded, "message")
    held_by_threaded.connect()

    made: list[Client] = []

    async def scenario() -> tuple[list[int], list[int]]:
        async with AsyncServer(
            interface="127.0.0.1", cluster=redis_server.url, node_id="async", heartbeat_interval=0.5
        ) as node:
            assert node.stats()["cluster"]["ready"]
            client = Client(
                address="127.0.0.1",
                client_id="a1",
                servers=[f"127.0.0.1:{node.port}", f"127.0.0.1:{threaded.port}"],
                reconnect_delay=0.05,
            )
            made.append(client)
            near = Recorder().attach(client, "message", "reconnect", "sessionlost")
            await asyncio.to_thread(client.connect)
            got: list[int] = []
            for n in range(20):
                await node.send("t1", Message("to-t1", {"n": n}))  # held by the threaded node
                await node.send("a1", Message("to-a1", {"n": n}))
                client.send(Message("up", {"n": n}))
            async for client_id, message in node.messages():
                got.append(message.payload["n"])
                assert client_id == "a1"
                if len(got) == 20:
                    break
            await node.send("*", Message("all", {"n": 20}))
            await asyncio.to_thread(near.wait_count, "message", 21)
            await node.disconnect_client("t1", "bye from the async node")
        # The async node stopped: its client resumed on the threaded node.
        await asyncio.to_thread(near.wait_count, "reconnect", 1)
        threaded.send("a1", Message("after", {"n": 21}))
        await asyncio.to_thread(near.wait_count, "message", 22)
        assert near.of("sessionlost") == []
        return got, [args[0].payload["n"] for args in near.of("message")]

    try:
        up, down = asyncio.run(scenario())
    finally:
        for client in made:  # also when the scenario failed half-way
            client.disconnect()
    assert up == list(range(20)) and down == list(range(22))
    far.wait_count("message", 21)
    assert [args[0].payload["n"] for args in far.of("message")] == list(range(21))
    wait_until(lambda: "bye from the async node" in (held_by_threaded.last_close_reason or ""), what="kicked")


def test_an_async_node_refuses_a_duplicate_id_held_elsewhere(
    redis_server: RedisServer, make_node: Callable[..., Server], make_client: Callable[..., Client]
) -> None:
    from missioncommander import ConnectionRefusedByServer

    threaded = make_node(node_id="threaded")
    make_client(threaded, client_id="same").connect()

    async def scenario() -> str:
        async with AsyncServer(interface="127.0.0.1", cluster=redis_server.url, node_id="async") as node:
            newcomer = Client(address="127.0.0.1", port=node.port, client_id="same", connect_timeout=5)
            with pytest.raises(ConnectionRefusedByServer) as refused:
                await asyncio.to_thread(newcomer.connect)
            return refused.value.code

    assert asyncio.run(scenario()) == "id_in_use"


def test_an_async_node_records_the_messages_it_hands_past_a_coroutine_callback(redis_server: RedisServer) -> None:
    """A message whose coroutine callback still runs is not taken, yet the
    ones after it reach the application: the node records how far it has
    handed them (``in_handed``), so a node that dies now has them all
    marked ``redelivered`` on the next one (tests/cluster/test_node_crashes.py
    kills one beside an awaited request)."""
    store = redis.Redis.from_url(redis_server.url)
    session = "missioncommander:sess:c1"

    def recorded(field: str) -> int:
        return int(store.hget(session, field) or 0)

    async def scenario() -> list[int]:
        let_go, all_in = asyncio.Event(), asyncio.Event()
        got: list[int] = []

        async def slow(client_id: str, message: Message) -> None:
            got.append(message.payload["n"])
            if len(got) == 3:
                all_in.set()
            if message.payload["n"] == 0:
                await let_go.wait()

        async with AsyncServer(interface="127.0.0.1", cluster=redis_server.url, node_id="async") as node:
            node.subscribe("message", slow)
            client = Client(address="127.0.0.1", port=node.port, client_id="c1")
            try:
                await asyncio.to_thread(client.connect)
                for n in range(3):
                    client.send(Message("up", {"n": n}))
                async with asyncio.timeout(10):
                    await all_in.wait()
                await asyncio.to_thread(wait_until, lambda: recorded("in_handed") >= 3, what="in_handed recorded")
                assert recorded("in_taken") == 0  # the first is still in its callback
                let_go.set()
                await asyncio.to_thread(wait_until, lambda: recorded("in_taken") == 3, what="all taken")
            finally:
                await asyncio.to_thread(client.disconnect)
        return got

    try:
        assert asyncio.run(scenario()) == [0, 1, 2]
    finally:
        store.close()


def test_an_async_node_and_a_threaded_one_ask_each_others_clients(
    redis_server: RedisServer, make_node: Callable[..., Server], make_client: Callable[..., Client]
) -> None:
    """As threaded nodes do (tests/cluster/test_cluster.py): the request
    goes through Redis to the holder, and the holder passes the reply on to
    the node that asked, whichever API either runs."""
    threaded = make_node(node_id="threaded")
    near = make_client(threaded, client_id="c1")
    near.subscribe("request", lambda m: {"from": "c1"})
    near.connect()

    async def scenario() -> tuple[Message, Message]:
        node = AsyncServer(interface="127.0.0.1", cluster=redis_server.url, node_id="async")
        await node.start()
        far = AsyncClient(client_id="c2", address="127.0.0.1", port=node.port)
        far.subscribe("request", lambda m: {"from": "c2"})
        try:
            await far.connect()
            mine = await node.request("c1", Message("ask"), timeout=10)
            theirs = await asyncio.to_thread(threaded.request, "c2", Message("ask"), 10)
            return mine, theirs
        finally:
            await far.disconnect()
            await node.stop()

    assert asyncio.run(scenario()) == (Message("ask", {"from": "c1"}), Message("ask", {"from": "c2"}))


def test_an_async_nodes_request_fails_at_once_when_the_session_ends_on_another_node(
    redis_server: RedisServer, make_node: Callable[..., Server], make_client: Callable[..., Client]
) -> None:
    """The news that a session ended for good comes over Redis to the
    asyncio node too, and fails its awaited request there (on its loop)."""
    threaded = make_node(node_id="threaded")
    respond = HeldResponder()

    near = make_client(threaded, client_id="c1")
    near.subscribe("request", respond)
    near.connect()

    async def scenario() -> None:
        async with AsyncServer(interface="127.0.0.1", cluster=redis_server.url, node_id="async") as node:
            asked = asyncio.ensure_future(node.request("c1", Message("hold"), timeout=30))
            assert await asyncio.to_thread(respond.entered.wait, 10)
            threaded.disconnect_client("c1", "maintenance")
            with pytest.raises(SessionLost, match="disconnected by the server: maintenance"):
                await asyncio.wait_for(asked, 10)  # not its timeout of 30 s
            assert node.stats()["requests_in_flight"] == 0

    try:
        asyncio.run(scenario())
    finally:
        respond.go.set()
