"""The protocol core does no I/O: no module of it imports a way to."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import missioncommander

CORE = [
    "_events.py",
    "_frames.py",
    "_transitions.py",
    "_connection.py",
    "_auth.py",
    "_streams.py",
    "_session.py",
    "_admission.py",
    "_liveness.py",
    "_reconnect.py",
]
#: Sockets, threads, locks, clocks, waiting: what a driver brings.
FORBIDDEN = {"socket", "ssl", "select", "selectors", "threading", "time", "asyncio", "_thread", "queue"}
#: Library modules that do I/O or run threads.
FORBIDDEN_LOCAL = {"_loop", "_link", "_client", "_server", "_callbacks", "_inbox", "_tls"}


@pytest.mark.parametrize("module", CORE)
def test_a_protocol_module_imports_nothing_that_does_io(module: str) -> None:
    tree = ast.parse((Path(missioncommander.__file__).parent / module).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                imported.add("." + (node.module or ""))
            else:
                imported.add((node.module or "").split(".")[0])
    assert not imported & FORBIDDEN
    assert not {name for name in imported if name.lstrip(".") in FORBIDDEN_LOCAL}
