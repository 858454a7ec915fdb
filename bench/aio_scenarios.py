"""The scenarios of run.py for the asyncio API, written as asyncio code
would use it: the benchmark's own loop awaits sends and reads
``messages()``, so no thread hop is paid that an asyncio program would not
pay.  The server side is ``systems.mc_async_serve`` (an ``AsyncServer``);
on asyncio's loop for mc-async, on uvloop's for mc-uvloop.  The same
scenarios run the floor for asyncio (systems ``asyncio`` and ``uvloop``:
``systems.BareAsyncClient`` against ``systems.asyncio_serve``, plain
Protocols and no library).  The checks are run.py's: sequence numbers,
counts, nothing lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from systems import BareAsyncClient, new_loop, use_fast_json
from timing import p50_p99, timed_async

from missioncommander import Message
from missioncommander.aio import AsyncClient

WAIT = 120.0
FILLER = "x" * 100
#: The clients' loop is uvloop's (mc-uvloop, uvloop), else asyncio's.
_uvloop = False
#: The clients are the bare floor's (systems asyncio and uvloop).
_bare = False


def use(uvloop: bool, bare: bool = False) -> None:
    """Run the next scenarios on uvloop or asyncio's own loop, with
    ``AsyncClient``s or (``bare``) the floor's clients."""
    global _uvloop, _bare
    _uvloop, _bare = uvloop, bare


def run(coro: Any) -> Any:
    # Pure Python, as the threaded `missioncommander` system: the `fast`
    # extra is mc-fast's alone (another system may have switched it on).
    use_fast_json(False)

    async def bounded() -> Any:
        async with asyncio.timeout(WAIT):
            return await coro

    with asyncio.Runner(loop_factory=lambda: new_loop(_uvloop)) as runner:
        return runner.run(bounded())


def new_client(port: int, client_id: str) -> AsyncClient:
    """A client of the system ``use`` chose (interleaved.py keeps one)."""
    if _bare:
        bare: Any = BareAsyncClient("127.0.0.1", port, client_id, connect_timeout=60)
        return bare  # the methods the scenarios use, alike
    return AsyncClient(address="127.0.0.1", port=port, client_id=client_id, connect_timeout=60)


async def next_payload(messages: Any, subject: str) -> dict[str, Any]:
    """The payload of the next message of ``subject`` that ``messages`` yields."""
    async for message in messages:
        if message.subject == subject:
            payload: dict[str, Any] = message.payload
            return payload
    raise AssertionError(f"the client stopped before a {subject!r} came")


async def _latencies(n: int, round_trip: Callable[[int], Awaitable[dict[str, Any]]]) -> dict[str, float]:
    """run.py's ``latencies``, awaited: p50 and p99 of ``n`` checked round trips."""
    for seq in range(min(50, n)):
        await round_trip(seq)
    return p50_p99(await timed_async(n, round_trip))


def echo(port: int, n: int, size: int = 100) -> dict[str, float]:
    async def scenario() -> dict[str, float]:
        filler = "x" * size
        async with new_client(port, "echo-client") as client:
            messages = client.messages()

            async def one(seq: int) -> dict[str, Any]:
                await client.send(Message("echo", {"message": filler, "seq": seq}))
                return await next_payload(messages, "echo")

            return await _latencies(n, one)

    result: dict[str, float] = run(scenario())
    return result


def request(port: int, n: int) -> dict[str, float]:
    async def scenario() -> dict[str, float]:
        filler = "x" * 100
        async with new_client(port, "request-client") as client:

            async def one(seq: int) -> dict[str, Any]:
                reply = await client.request(Message("ask", {"message": filler, "seq": seq}))
                return dict(reply.payload)

            return await _latencies(n, one)

    result: dict[str, float] = run(scenario())
    return result


def c2s(port: int, n: int) -> dict[str, float]:
    async def scenario() -> dict[str, float]:
        async with new_client(port, "sink-client") as client:
            messages = client.messages()
            t0 = time.perf_counter()
            for seq in range(n):
                await client.send(Message("sink", {"message": FILLER, "seq": seq, "last": n - 1}))
            done = await next_payload(messages, "done")
            elapsed = time.perf_counter() - t0
        if done["received"] != n:
            raise AssertionError(f"the server received {done['received']} of {n}")
        return {"msgs_per_s": n / elapsed}

    result: dict[str, float] = run(scenario())
    return result


def broadcast(port: int, clients: int, count: int, server_cpu: Any, iterate: bool = False) -> dict[str, float]:
    """Every client counts the broadcasts in a plain ``message`` callback,
    run on the loop as each message is read: the asyncio form of the
    threaded clients' inline callbacks, as the servers' handlers are.
    ``iterate``: each client reads ``messages()`` in a task of its own
    instead, as a program that awaits in its handling would (a loop turn
    per wake-up)."""

    async def scenario() -> dict[str, float]:
        conns = [new_client(port, f"b{i}") for i in range(clients)]
        await asyncio.gather(*(c.connect() for c in conns))
        try:
            attached = [_Count(count) for _ in conns]
            streams = [c.messages() for c in conns] if iterate else []
            if iterate:
                for c, messages, seen in zip(conns, streams, attached, strict=True):
                    await c.send(Message("echo", {"seq": 0}))
                    await next_payload(messages, "echo")
                    seen.echoed.set_result(None)
            else:
                for c, seen in zip(conns, attached, strict=True):
                    c.subscribe("message", seen)
                    await c.send(Message("echo", {"seq": 0}))
            await asyncio.gather(*(seen.echoed for seen in attached))  # every one attached
            cpu0 = server_cpu()
            t0 = time.perf_counter()
            receivers = [asyncio.create_task(seen.read(m)) for m, seen in zip(streams, attached, strict=False)]
            await conns[0].send(Message("go", {"count": count}))
            await asyncio.gather(*(seen.done for seen in attached), *receivers)
            elapsed = time.perf_counter() - t0
            cpu = server_cpu() - cpu0
        finally:
            await asyncio.gather(*(c.disconnect() for c in conns))
        deliveries = clients * count
        return {"deliveries_per_s": deliveries / elapsed, "server_cpu_us_per_delivery": cpu / deliveries * 1e6}

    result: dict[str, float] = run(scenario())
    return result


class _Count:
    """One client's broadcasts, checked in order: called with each message
    (a callback), or reading them (``read``)."""

    def __init__(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        self.count, self.seen = count, 0
        self.echoed: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    def __call__(self, message: Message) -> None:
        if message.subject == "echo" and not self.echoed.done():
            self.echoed.set_result(None)
        elif message.subject == "bcast":
            if message.payload["seq"] != self.seen:
                # Raised in a callback, the library would only log it: the
                # run fails on the awaited future instead, with this message.
                if not self.done.done():
                    self.done.set_exception(
                        AssertionError(f"broadcast out of order: {message.payload['seq']} after {self.seen - 1}")
                    )
                return
            self.seen += 1
            if self.seen == self.count:
                self.done.set_result(None)

    async def read(self, messages: Any) -> None:
        async for message in messages:
            self(message)
            if self.done.done():
                return
        raise AssertionError(f"{self.seen} of {self.count} broadcasts arrived")
