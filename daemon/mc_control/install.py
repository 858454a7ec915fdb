"""The pip command that adds one of the optional extras to this installation.

mcd (``--metrics`` without prometheus-client, a cluster node without
redis-py) and the GUI (without PySide6) name the command that fixes it.
``pip install 'missioncommander[metrics]'`` is right only for an install
from PyPI: from a checkout (``pip install .`` or ``-e .``) it would fetch
whatever PyPI holds under that name, another version or another project.
So the command names the directory pip recorded, and the Python running
now (a venv's or pipx's, not whatever ``pip`` comes first on the PATH).
"""

from __future__ import annotations

import json
import shlex
import sys


def install_command(extra: str) -> str:
    """The command that adds ``extra`` (``gui``, ``metrics``, ``cluster``...) here."""
    # Only on the way to an error: importlib.metadata (and the email package
    # it brings) were 28 ms of the 70 that importing mcd took.
    import importlib.metadata  # noqa: PLC0415

    pip = f"{shlex.quote(sys.executable)} -m pip install"
    try:
        raw = importlib.metadata.distribution("missioncommander").read_text("direct_url.json")
        direct = json.loads(raw) if raw else {}
    except (importlib.metadata.PackageNotFoundError, ValueError):
        direct = {}
    url = direct.get("url", "") if isinstance(direct, dict) else ""
    if isinstance(url, str) and url.startswith("file://"):
        dir_info = direct.get("dir_info")
        editable = isinstance(dir_info, dict) and bool(dir_info.get("editable"))
        path = url.removeprefix("file://")
        return f"{pip} {'-e ' if editable else ''}{shlex.quote(f'{path}[{extra}]')}"
    return f"{pip} {shlex.quote(f'missioncommander[{extra}]')}"
