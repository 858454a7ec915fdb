"""Round-trip latency of a few systems, side by side in short turns.

    python3 bench/interleaved.py [--scenario echo|request] [--systems mc-async,asyncio,sockets]
                                 [--reference sockets] [--rounds 21] [--block 500]

``run.py`` starts a fresh server and client for every system in every
repetition and takes 5,000 round trips in one go.  On a small machine that
leaves a system's figure to where the scheduler happens to put its two
processes for those few seconds: on two cores, an echo whose processes share
a core takes 107 us and one whose processes are split takes 130 us, and
within one run of ``run.py`` the ratio of two systems spreads from 0.85x to
1.5x across repetitions (bench/RESULTS.md, 2026-12-08).  A ratio near a
target such as issue 16's 1.1x cannot be told from that noise.

This keeps one server process and one connected client per system for the
whole run and takes the round trips in rounds: a block of ``--block`` from
each system in turn (each round starting with the next system), then the
next round.  Whatever the machine does (a process moving core, another
program waking) falls on every system within the same few seconds, and a
round's ratio compares like with like.  It prints each round's p50s and,
per system, the median over rounds of its p50 divided by the reference's
p50 of the same round.  ``run.py``'s ratio is not wrong, only noisier.
Every round trip is checked by its sequence number, as in ``run.py``.

The systems and their servers are ``run.py``'s (bench/README.md); the asyncio
systems' clients stay on a loop of their own between blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import aio_scenarios
import run
from systems import SYSTEMS, new_loop, use_fast_json
from timing import timed, timed_async

from missioncommander import Message

FILLER = "x" * 100


class _Side:
    """One system's connected client: ``block(n)`` times ``n`` round trips."""

    def block(self, n: int) -> list[float]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _AsyncSide(_Side):
    """An asyncio system's client, on a loop of its own that lives between blocks."""

    def __init__(self, system: str, port: int, scenario: str) -> None:
        self.scenario = scenario
        self.runner = asyncio.Runner(loop_factory=lambda: new_loop("uvloop" in system))
        aio_scenarios.use(uvloop="uvloop" in system, bare=system in ("asyncio", "uvloop"))
        self.client = aio_scenarios.new_client(port, f"{scenario}-client")
        self.messages = self.client.messages() if scenario == "echo" else None
        self._run(self.client.connect())

    def _run(self, coro: Awaitable[Any]) -> Any:
        use_fast_json(False)  # pure Python, as in run.py

        async def bounded() -> Any:
            async with asyncio.timeout(run.WAIT):
                return await coro

        return self.runner.run(bounded())

    async def _echo(self, seq: int) -> dict[str, Any]:
        await self.client.send(Message("echo", {"message": FILLER, "seq": seq}))
        return await aio_scenarios.next_payload(self.messages, "echo")

    async def _request(self, seq: int) -> dict[str, Any]:
        reply = await self.client.request(Message("ask", {"message": FILLER, "seq": seq}))
        return dict(reply.payload)

    def block(self, n: int) -> list[float]:
        round_trip = self._echo if self.scenario == "echo" else self._request

        async def timed() -> list[float]:
            return await timed_async(n, round_trip)

        samples: list[float] = self._run(timed())
        return samples

    def close(self) -> None:
        try:
            self._run(self.client.disconnect())
        finally:
            self.runner.close()


class _ThreadedSide(_Side):
    """A threaded system's client (``run.connect``), called from this thread."""

    def __init__(self, system: str, port: int, scenario: str) -> None:
        self.inbox = run.Inbox()
        self.client = run.connect(system, port, f"{scenario}-client", self.inbox)
        self.round_trip = self._echo if scenario == "echo" else self._request

    def _echo(self, seq: int) -> dict[str, Any]:
        self.client.send("echo", {"message": FILLER, "seq": seq})
        return self.inbox.take("echo")

    def _request(self, seq: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.client.request("ask", {"message": FILLER, "seq": seq})
        return answer

    def block(self, n: int) -> list[float]:
        return timed(n, self.round_trip)

    def close(self) -> None:
        self.client.close()


def measure(systems: list[str], scenario: str, rounds: int, block: int) -> dict[str, list[float]]:
    """Each system's p50 (us) of every round, the rounds taken in turns."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    servers: dict[str, run.ServerProcess] = {}
    sides: dict[str, _Side] = {}
    try:
        for system in systems:
            servers[system] = run.ServerProcess(system, env)
            kind = _AsyncSide if system in run.ASYNC_SYSTEMS else _ThreadedSide
            sides[system] = kind(system, servers[system].port, scenario)
            sides[system].block(min(50, block))  # warm up, as run.py does
        p50s: dict[str, list[float]] = {system: [] for system in systems}
        for round_ in range(rounds):
            # Each round starts with the next system, so none always follows the same one.
            turn = round_ % len(systems)
            for system in systems[turn:] + systems[:turn]:
                p50s[system].append(statistics.median(sides[system].block(block)) * 1e6)
        return p50s
    finally:
        for side in sides.values():
            side.close()
        for server in servers.values():
            server.stop()


def report(p50s: dict[str, list[float]], reference: str) -> str:
    lines = []
    for system, figures in p50s.items():
        lines.append(f"{system:16} p50 per round (us): {' '.join(f'{f:.0f}' for f in figures)}")
    lines.append("")
    for system, figures in p50s.items():
        line = f"{system:16} median p50 {statistics.median(figures):7.1f} us"
        if system != reference:
            ratios = [mine / theirs for mine, theirs in zip(figures, p50s[reference], strict=True)]
            line += (
                f"; over {reference}, round by round: median {statistics.median(ratios):.3f}x"
                f" (quartiles {_quartiles(ratios)})"
            )
        lines.append(line)
    return "\n".join(lines)


def _quartiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low:.3f}-{high:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("echo", "request"), default="echo")
    parser.add_argument("--systems", default="mc-async,asyncio,sockets")
    parser.add_argument("--reference", default="", help="the system others are divided by (default: the last one)")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--block", type=int, default=500, help="round trips per system per round")
    args = parser.parse_args()
    systems = args.systems.split(",")
    if len(set(systems)) != len(systems):
        parser.error("name each system once in --systems")
    reference = args.reference or systems[-1]
    if reference not in systems:
        parser.error(f"--reference {reference} is not one of --systems")
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s): {', '.join(unknown)} (bench/README.md lists them)")
    if args.scenario == "request":
        no_request = [s for s in systems if s not in run.REQUEST_SYSTEMS]
        if no_request:
            parser.error(f"no request/reply of its own: {', '.join(no_request)}")
    if args.rounds < 1 or args.block < 1:
        parser.error("--rounds and --block must be at least 1")
    try:
        p50s = measure(systems, args.scenario, args.rounds, args.block)
    except (RuntimeError, ImportError, OSError, AssertionError) as exc:
        # A server that does not start (its package missing), a lost or
        # reordered answer: said as run.py says it, without a traceback.
        print(f"interleaved.py: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(report(p50s, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
