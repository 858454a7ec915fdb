"""A bounded soak: churn and traffic for minutes; nothing grows, nothing is lost.

Not in the default run (it takes minutes).  Run it with:
    python3 -m pytest -m soak            (MC_SOAK_SECONDS=180, MC_SOAK_CLIENTS=200 by default)
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import psutil
import pytest
from support import wait_until

from missioncommander import Client, ClientState, Message, Server

SECONDS = float(os.environ.get("MC_SOAK_SECONDS", "180"))
CLIENTS = int(os.environ.get("MC_SOAK_CLIENTS", "200"))


def _usage() -> tuple[int, int, int]:
    me = psutil.Process()
    return threading.active_count(), me.num_fds(), me.memory_info().rss


class Ticks:
    """The ticks one client received, checked as they come: each must be the
    one after the last."""

    def __init__(self) -> None:
        self.last = 0
        #: (expected, received) for the first few that were not (bounded).
        self.wrong: list[tuple[int, int]] = []

    def take(self, n: int) -> None:
        if n != self.last + 1 and len(self.wrong) < 10:
            self.wrong.append((self.last + 1, n))
        self.last = max(self.last, n)


@pytest.mark.soak
@pytest.mark.timeout(SECONDS + 300)
def test_soak_churn_and_traffic(make_client: Callable[..., Client]) -> None:
    rng = random.Random(7)
    with Server(interface="127.0.0.1", port=0, max_connection_rate=None) as server:
        stable_got: dict[str, Ticks] = {}
        lock = threading.Lock()
        stable = []
        for i in range(CLIENTS // 2):
            client = make_client(server, client_id=f"stable-{i}")
            # The last tick seen and what came out of order, not every tick:
            # a list of them held 1.7 million ints by the end of a default run
            # (60 MB), which the memory check below took for the library's.
            got = Ticks()
            stable_got[client.client_id] = got

            def on_message(m: Message, got: Ticks = got) -> None:
                if m.subject == "tick":
                    with lock:
                        got.take(m.payload["n"])

            client.subscribe("message", on_message)
            client.connect()
            stable.append(client)
        churners = [make_client(server, client_id=f"churn-{i}") for i in range(CLIENTS - CLIENTS // 2)]
        for c in churners:
            c.connect()
        ticks = 0
        baseline: tuple[int, int, int] | None = None
        deadline = time.monotonic() + SECONDS
        warmup = time.monotonic() + min(20.0, SECONDS / 4)
        rounds = 0
        while time.monotonic() < deadline and rounds < 1_000_000:
            rounds += 1
            ticks += 1
            server.send("*", Message("tick", {"n": ticks}))
            for c in rng.sample(churners, k=max(1, len(churners) // 20)):
                if c.state & ClientState.STATE_CONNECTED:
                    c.send(Message("chatter", {"round": rounds}))
                    c.disconnect()
                else:
                    c.connect()
            rng.choice(stable).send(Message("up", {"round": rounds}))
            if baseline is None and time.monotonic() > warmup:
                baseline = _usage()
            # Pace on delivery: every stable client has the previous tick.
            wait_until(lambda n=ticks: all(g.last >= n - 1 for g in stable_got.values()), timeout=30)
        wait_until(lambda: all(g.last == ticks for g in stable_got.values()), timeout=60, what="last ticks")
        for cid, got in stable_got.items():
            assert got.wrong == [], f"{cid} lost, repeated or reordered messages: (expected, got) {got.wrong}"
        for c in churners:
            c.disconnect()
        threads, fds, rss = _usage()
        assert baseline is not None
        assert threads <= baseline[0] + 4
        assert fds <= baseline[1] + 20
        assert rss <= baseline[2] + 64 * 1024 * 1024
