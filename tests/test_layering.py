"""The import rules between layers (see ../shared/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def imports_of(where: Path, skip: tuple[str, ...] = ()) -> set[str]:
    """Top-level names imported by a file, or by every file under a folder
    (but those named in ``skip``)."""
    found: set[str] = set()
    for path in where.rglob("*.py") if where.is_dir() else [where]:
        if path.name in skip:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


# ``python3 -m missioncommander cli|gui`` is a launcher, not part of the library.
LAUNCHER = ("__main__.py",)


def test_library_stands_on_the_standard_library_and_psutil() -> None:
    """orjson is optional (the ``fast`` extra): the library runs without it;
    so is redis (the ``cluster`` extra), imported by the cluster's store alone
    (tests/cluster checks a server outside a cluster never imports it)."""
    imported = imports_of(ROOT / "missioncommander", skip=(*LAUNCHER, "_cluster_store.py"))
    assert imported - set(sys.stdlib_module_names) - {"missioncommander"} == {"psutil", "orjson"}
    store = imports_of(ROOT / "missioncommander" / "_cluster_store.py")
    assert store - set(sys.stdlib_module_names) - {"missioncommander"} == {"redis"}
    code = "import sys; sys.modules['orjson'] = None; from missioncommander import Message as M; print(M('s').encode())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "b'[\"s\",{}]'"


def test_library_knows_nothing_of_the_daemon_or_its_controllers() -> None:
    imported = imports_of(ROOT / "missioncommander", skip=LAUNCHER)
    assert not imported & {"mc_control", "mc_daemon", "mc_cli", "mc_gui", "pydantic"}


def test_the_daemon_shares_only_these_of_the_librarys_internals() -> None:
    """One copy of each rule: mcd's listeners treat accept() errors and say
    repeated lines as the library's do (their counts said before its last
    line), and it hides a Redis password and
    reads host:port as the library does.  They ship in one distribution, so a private module
    may serve both; anything more of the library's insides mcd wants goes
    through its public API, or is added here on purpose."""
    private: set[str] = set()
    for path in (ROOT / "daemon").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("missioncommander._"):
                private.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                private.update(alias.name for alias in node.names if alias.name.startswith("missioncommander._"))
    assert private == {
        "missioncommander._loop.ACCEPT_PAUSE",
        "missioncommander._loop.AcceptTrouble",
        "missioncommander._loop.one_connections_error",
        "missioncommander._quiet.Quiet",
        "missioncommander._quiet.more",
        "missioncommander._quiet.say_counts_left",
        "missioncommander._config.redacted_url",
        "missioncommander._config.split_host_port",
    }


def test_cli_talks_to_the_daemon_only_through_mc_control() -> None:
    """The shell's embedded mode (repl.py) is the one place that may host the core."""
    assert not imports_of(ROOT / "clients" / "cli", skip=("repl.py",)) & {"mc_daemon", "missioncommander", "pydantic"}


def test_control_client_does_not_import_pydantic() -> None:
    """mcctl imports mc_control on every run: it must stay light."""
    code = "import sys, mc_control; print('pydantic' in sys.modules, 'missioncommander' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_mcctl_one_shot_path_skips_the_heavy_standard_modules() -> None:
    """Each of these costs mcctl milliseconds on every call (issue 7: start-up
    within 3x of bare Python); the shell and the GUI may use them."""
    heavy = ("typing", "dataclasses", "inspect", "pathlib", "pydantic", "missioncommander")
    code = f"import sys, mc_cli.main; print(*[m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_daemon_core_has_no_sockets_and_no_json() -> None:
    assert not imports_of(ROOT / "daemon" / "mc_daemon" / "core.py") & {"socket", "json", "selectors", "pydantic"}


def test_gui_talks_to_the_daemon_only_through_mc_control() -> None:
    imported = imports_of(ROOT / "clients" / "gui")
    assert not imported & {"mc_daemon", "missioncommander", "mc_cli", "pydantic"}
    assert {"mc_control", "PySide6"} <= imported


def test_gui_view_model_is_plain_python() -> None:
    assert "PySide6" not in imports_of(ROOT / "clients" / "gui" / "mc_gui" / "viewmodel.py")
