"""Timed round trips, each checked by its sequence number: the one loop
that ``run.py``, ``aio_scenarios.py`` and ``interleaved.py`` time latency
with, called or awaited."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any


def _checked(seq: int, got: dict[str, Any]) -> None:
    if got["seq"] != seq:
        raise AssertionError(f"round trip {seq} answered by {got['seq']}")


def timed(n: int, round_trip: Callable[[int], dict[str, Any]]) -> list[float]:
    """The seconds each of ``n`` round trips took; ``round_trip(seq)``
    returns the answer, which must carry ``seq``."""
    samples = []
    for seq in range(n):
        t0 = time.perf_counter()
        got = round_trip(seq)
        samples.append(time.perf_counter() - t0)
        _checked(seq, got)
    return samples


async def timed_async(n: int, round_trip: Callable[[int], Awaitable[dict[str, Any]]]) -> list[float]:
    """``timed``, awaited."""
    samples = []
    for seq in range(n):
        t0 = time.perf_counter()
        got = await round_trip(seq)
        samples.append(time.perf_counter() - t0)
        _checked(seq, got)
    return samples


def p50_p99(samples: list[float]) -> dict[str, float]:
    """The median and 99th percentile of ``samples`` (seconds), in us."""
    ordered = sorted(samples)
    return {"p50_us": statistics.median(ordered) * 1e6, "p99_us": ordered[int(len(ordered) * 0.99)] * 1e6}
