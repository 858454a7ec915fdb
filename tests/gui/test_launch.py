"""mctray's preflight: a missing extra or missing X11 libraries get the command that fixes them, not a traceback."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mc_gui import launch
from missioncommander import __version__

ROOT = Path(__file__).resolve().parents[2]

# Runs the real entry points in a process where `import PySide6` fails as it
# does without the gui extra.
WITHOUT_PYSIDE = "import sys; sys.modules['PySide6'] = None; sys.argv[0] = 'mctray'; {call}"


def run_without_pyside(call: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PYSIDE.format(call=call)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "call",
    [
        "from mc_gui.launch import main; sys.exit(main([]))",
        "sys.argv[1:] = ['gui']; import runpy; runpy.run_module('missioncommander', run_name='__main__')",
    ],
    ids=["mctray", "python -m missioncommander gui"],
)
def test_without_the_gui_extra_the_message_names_a_working_install_command(call: str) -> None:
    out = run_without_pyside(call)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "the GUI needs PySide6" in out.stderr
    command = out.stderr.strip().splitlines()[-1].strip()
    # The test environment is an editable install of this checkout (as the
    # README's test command makes it), so the fix must name the checkout,
    # not a PyPI release that may not match it.
    assert command == f"{shlex.quote(sys.executable)} -m pip install -e {shlex.quote(f'{ROOT}[gui]')}"


@pytest.mark.parametrize(("args", "status", "says"), [(["--help"], 0, "--hidden"), (["--bogus"], 2, "unrecognized")])
def test_help_and_usage_errors_answer_without_the_gui_extra(args: list[str], status: int, says: str) -> None:
    out = run_without_pyside(f"from mc_gui.launch import main; sys.exit(main({args!r}))")
    assert out.returncode == status
    assert "usage: mctray" in out.stdout + out.stderr and says in out.stdout + out.stderr
    assert "PySide6" not in out.stderr and "Traceback" not in out.stderr


def test_version_answers_without_the_gui_extra_or_a_display() -> None:
    out = run_without_pyside("from mc_gui.launch import main; sys.exit(main(['--version']))")
    assert out.returncode == 0 and out.stdout == f"mctray {__version__}\n", out.stderr


def test_missing_x11_libraries_are_named_with_their_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    present = {"xcb-cursor"}
    monkeypatch.setattr(launch.ctypes.util, "find_library", lambda stem: f"lib{stem}.so" if stem in present else None)
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    assert launch.missing_xcb_packages() == ["libxcb-icccm4", "libxcb-keysyms1"]
    problem = launch.preflight()
    assert problem is not None
    assert "sudo apt-get install libxcb-icccm4 libxcb-keysyms1" in problem
    present.update(launch.XCB_LIBRARIES)
    assert launch.preflight() is None


def test_x11_libraries_matter_only_when_qt_will_use_x11(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch.ctypes.util, "find_library", lambda stem: None)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert launch.missing_xcb_packages() == []
    monkeypatch.delenv("QT_QPA_PLATFORM")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert launch.missing_xcb_packages() == list(launch.XCB_LIBRARIES.values())
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert launch.missing_xcb_packages() == []


def test_without_a_display_the_gui_says_so_instead_of_qt_aborting() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    out = subprocess.run(
        [sys.executable, "-m", "missioncommander", "gui"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 1, out  # Qt's own abort is -6 (SIGABRT), blaming libxcb-cursor0
    assert out.stderr.startswith("mctray: there is no display to show the GUI on")
    assert "mcctl" in out.stderr and "xcb" not in out.stderr


def test_what_counts_as_no_display(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    assert launch.no_display()
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # the tests' own way: no display needed
    assert not launch.no_display()
    monkeypatch.delenv("QT_QPA_PLATFORM")
    monkeypatch.setenv("DISPLAY", ":0")
    assert not launch.no_display()
    monkeypatch.delenv("DISPLAY")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert not launch.no_display()


def test_the_installed_pyside6_keeps_its_references() -> None:
    # The gui extra leaves out the release whose Signal.emit() loses a
    # reference to True (pyproject.toml); this fails where it is installed.
    import PySide6

    assert not launch.emit_drops_a_reference(), f"PySide6 {PySide6.__version__} loses references in Signal.emit()"


def test_a_pyside6_that_loses_references_is_named_with_the_command_that_replaces_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import PySide6

    monkeypatch.setattr(launch, "emit_drops_a_reference", lambda: True)
    problem = launch.preflight()
    assert problem is not None
    assert problem.startswith(f"PySide6 {PySide6.__version__} has a bug that crashes this GUI")
    fix = f"{shlex.quote(sys.executable)} -m pip install 'PySide6-Essentials!={PySide6.__version__}'"
    assert problem.splitlines()[-1].strip() == fix
