"""The package is typed for its users (py.typed): a user's mypy sees every
setting of the threaded and the asyncio classes with its type."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

USER_CODE = """
from missioncommander import Client, Server
from missioncommander.aio import AsyncClient, AsyncServer


async def main() -> None:
    async with AsyncServer(interface="127.0.0.1", port=0) as server:
        port: int = server.port
        server.max_clients = 5
        limit: int | None = server.max_clients
        client = AsyncClient(address="127.0.0.1", port=port)
        client.client_id = "c42"
        name: str = client.client_id
        wait: float = client.connect_timeout
        threaded = Client(address="127.0.0.1", port=Server().port)
        tls: bool = threaded.tls
        print(limit, name, wait, tls)
        wrong: str = server.port
"""


def test_a_users_mypy_sees_each_setting_with_its_type(tmp_path: Path) -> None:
    code = tmp_path / "user.py"
    code.write_text(USER_CODE)
    # Run where the project's own mypy settings do not apply: as a user's would.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "user.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    # The one wrong line is found (so the settings are typed, not Any), and nothing else.
    assert len(errors) == 1, out.stdout + out.stderr
    assert errors[0].startswith(f"user.py:{USER_CODE.splitlines().index('        wrong: str = server.port') + 1}:")
    assert 'expression has type "int", variable has type "str"' in errors[0]
