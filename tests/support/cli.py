"""Running the real mcctl entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def mcctl_command() -> list[str]:
    script = BIN / "mcctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mc_cli"]


def run(
    *args: str,
    socket_path: Path | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = dict(env or os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if socket_path is not None:
        full_env["MC_SOCKET"] = str(socket_path)
    return subprocess.run(
        [*mcctl_command(), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
        cwd=cwd,
    )
