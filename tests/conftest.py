from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

from support.certs import Certs, make_certs

from missioncommander import Client, Server
from missioncommander._quiet import _CHORUSES

# Speed lives in bench/, never in a test's verdict: hypothesis's per-example
# deadline (200 ms) failed a byte-splitting test that took 263 ms on a busy
# machine.  Examples stay bounded by their counts (max_examples).
settings.register_profile("missioncommander", deadline=None)
settings.load_profile("missioncommander")

# pyproject.toml turns pytest-qt's automatic loading off; load it where the
# GUI tests can run (tests/gui/conftest.py skips them, with the reason, where
# they cannot).
if importlib.util.find_spec("PySide6") is not None:
    pytest_plugins = ["pytestqt.plugin"]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Throwaway certificates for the TLS tests (made once per run)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    folder: Path = tmp_path_factory.mktemp("certs")
    return make_certs(folder)


@pytest.fixture(autouse=True)
def _log_as_a_fresh_process() -> None:
    """Each test's clients and servers log as in a process of their own:
    what every client says is said by the first three in 5 s (_quiet.Chorus),
    and the lines of the test before must not have used them up."""
    for chorus in list(_CHORUSES):
        chorus.restart()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(interface="127.0.0.1", port=0, heartbeat_interval=0.5, heartbeat_timeout=3.0)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def make_client() -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(server: Server | None = None, **settings: Any) -> Client:
        if server is not None:
            settings.setdefault("address", "127.0.0.1")
            settings.setdefault("port", server.port)
        settings.setdefault("reconnect_delay", 0.05)
        settings.setdefault("reconnect_max_delay", 0.5)
        settings.setdefault("connect_timeout", 5.0)
        client = Client(**settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()
