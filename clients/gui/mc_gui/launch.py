"""``mctray``'s entry point: say what is missing before Qt is imported.

Without the ``gui`` extra, ``import PySide6`` fails with a bare
``ModuleNotFoundError``; without a few X11 libraries, or without a display
at all, Qt aborts the process (SIGABRT) and names only one library; a PySide6 release whose
``Signal.emit()`` loses references aborts the GUI minutes later. Each is a
set-up mistake a user fixes with one command, so this module finds them
first (with the standard library, and PySide6's QtCore once it is known to
be there) and prints that command.
"""

from __future__ import annotations

import argparse
import ctypes.util
import importlib.metadata
import importlib.util
import os
import shlex
import sys

from mc_control.install import install_command

# What Qt 6's xcb platform plugin loads that a minimal Debian/Ubuntu lacks
# (PySide6's wheels bundle the rest): soname stem -> Debian package.
XCB_LIBRARIES = {
    "xcb-cursor": "libxcb-cursor0",
    "xcb-icccm": "libxcb-icccm4",
    "xcb-keysyms": "libxcb-keysyms1",
}


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing_xcb_packages() -> list[str]:
    """Debian packages Qt's X11 plugin needs and this machine lacks (when X11 is what Qt will use)."""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith("xcb"):
        return []
    if not platform and (os.environ.get("WAYLAND_DISPLAY") or not os.environ.get("DISPLAY")):
        return []  # Qt picks Wayland, or there is no display (no_display)
    return [pkg for stem, pkg in XCB_LIBRARIES.items() if ctypes.util.find_library(stem) is None]


def no_display() -> bool:
    """Whether Qt would look for an X11 or Wayland display and find none
    (a terminal over ssh, a service): Qt then aborts the process, blaming
    a library that is there (SIGABRT, "xcb-cursor0 ... is needed")."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return False  # a platform chosen by hand is the chooser's affair
    return not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")


def emit_drops_a_reference() -> bool:
    """Whether this PySide6's ``Signal.emit()`` returns ``True`` without
    taking a reference to it (PySide6 6.12.0 does).  Before Python 3.12,
    where ``True`` is not immortal, every emit then takes one of its
    references away, and after a few hundred (a few minutes of the GUI's
    events and replies) the interpreter aborts: "Fatal Python error:
    bool_dealloc: deallocating True or False"."""
    if sys.version_info >= (3, 12):
        return False  # True is immortal there: the lost references do no harm
    from PySide6.QtCore import QObject, Signal  # noqa: PLC0415 - only once PySide6 is known to be there

    class Probe(QObject):
        fired = Signal()

    probe = Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        probe.fired.emit()
    return sys.getrefcount(True) < before - 4  # 8 lost, not the odd one taken elsewhere meanwhile


def preflight() -> str | None:
    """Why the GUI cannot start here, with the command that fixes it; None when it can."""
    if importlib.util.find_spec("PySide6") is None:
        return f"the GUI needs PySide6, which is not installed; install the gui extra:\n  {install_command('gui')}"
    if emit_drops_a_reference():
        import PySide6  # noqa: PLC0415 - imported by the check above already

        version = PySide6.__version__
        distribution = "PySide6-Essentials" if _installed("PySide6-Essentials") else "PySide6"
        return (
            f"PySide6 {version} has a bug that crashes this GUI on Python"
            f" {sys.version_info.major}.{sys.version_info.minor} after a few hundred events (each Signal.emit()"
            " loses a reference to True); install another release:\n"
            f"  {shlex.quote(sys.executable)} -m pip install '{distribution}!={version}'"
        )
    missing = missing_xcb_packages()
    if missing:
        return (
            f"Qt's X11 support needs libraries this machine lacks ({', '.join(missing)}); on Debian or Ubuntu:\n"
            f"  sudo apt-get install {' '.join(missing)}"
        )
    if no_display():
        return (
            "there is no display to show the GUI on (neither DISPLAY nor WAYLAND_DISPLAY is set):"
            " start it in a desktop session (over ssh, `ssh -X` brings one along), or drive mcd from"
            " this terminal with mcctl"
        )
    return None


def _version() -> str:
    """The installed distribution's (mctray ships in it); read without
    importing the library, as mctray talks to mcd only through mc_control."""
    try:
        return importlib.metadata.version("missioncommander")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout not installed
        return "(not installed)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """mctray's options, read before the preflight: ``--help`` and a usage
    error answer on a machine that cannot run the GUI yet."""
    parser = argparse.ArgumentParser(prog="mctray", description="MissionCommander in the system tray.")
    parser.add_argument("--socket", help="mcd's control socket (default: $MC_SOCKET or the user runtime dir)")
    parser.add_argument("--hidden", action="store_true", help="start in the tray without opening the window")
    parser.add_argument("--version", action="version", version=f"mctray {_version()}")
    return parser.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight()
    if problem is not None:
        print(f"mctray: {problem}", file=sys.stderr)
        return 1
    from .app import main as app_main  # noqa: PLC0415  (imports Qt)

    return app_main(args)


if __name__ == "__main__":
    sys.exit(main())
