"""``mcd install-service``: write the systemd user unit for *this* mcd.

A unit copied by hand names a fixed path (``~/.local/bin/mcd``), which is
wrong for a venv and, on distributions that refuse ``pip install --user``
(PEP 668), for everyone. The unit written here runs the Python interpreter
that runs this command, so whatever installed mcd (a venv, pipx, a system
package), the service starts the same mcd the user just tried.
"""

from __future__ import annotations

import os
import sys
from importlib.resources import files
from pathlib import Path

UNIT_NAME = "mcd.service"
# The shipped unit's ExecStart= (where pipx puts mcd), replaced when installing.
SHIPPED_EXEC_START = "ExecStart=%h/.local/bin/mcd"


def default_unit_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def _quote(arg: str) -> str:
    """One ExecStart= word: systemd expands ``%`` specifiers and splits on spaces."""
    arg = arg.replace("%", "%%")
    if any(c in arg for c in " \t\"'\\;$"):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def render_unit(mcd_args: list[str]) -> str:
    """The shipped unit with ExecStart= running this interpreter's mcd with ``mcd_args``."""
    template = files("mc_daemon").joinpath(UNIT_NAME).read_text()
    if template.count(SHIPPED_EXEC_START + "\n") != 1:
        raise RuntimeError(f"the shipped {UNIT_NAME} has no single {SHIPPED_EXEC_START!r} line")
    command = [sys.executable, "-m", "mc_daemon", *mcd_args]
    return template.replace(SHIPPED_EXEC_START + "\n", "ExecStart=" + " ".join(map(_quote, command)) + "\n")


def install(unit_dir: Path | None, mcd_args: list[str], print_only: bool) -> int:
    """Write (or print) the unit; the exit status for ``mcd``."""
    unit = render_unit(mcd_args)
    if print_only:
        sys.stdout.write(unit)
        return 0
    directory = unit_dir or default_unit_dir()
    path = directory / UNIT_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        before = path.read_text() if path.is_file() else None
        tmp = path.with_name(f".{UNIT_NAME}.{os.getpid()}.tmp")
        tmp.write_text(unit)
        tmp.replace(path)
    except OSError as exc:
        print(f"mcd: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    what = "unchanged" if before == unit else ("updated" if before is not None else "written")
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    print(f"{path} {what}; {exec_start}")
    print("start it now and at every login:")
    print("  systemctl --user daemon-reload && systemctl --user enable --now mcd")
    print("its log: journalctl --user -u mcd")
    return 0
