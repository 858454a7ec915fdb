from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.redis_server import RedisServer

from missioncommander import Server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_node(redis_server: RedisServer) -> Iterator[Callable[..., Server]]:
    """Cluster nodes in this process, on the test's Redis."""
    nodes: list[Server] = []

    def make(**settings: Any) -> Server:
        settings.setdefault("interface", "127.0.0.1")
        settings.setdefault("cluster", redis_server.url)
        settings.setdefault("heartbeat_interval", 0.5)
        settings.setdefault("heartbeat_timeout", 3.0)
        settings.setdefault("lease_ttl", 2.0)
        node = Server(**settings)
        node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
