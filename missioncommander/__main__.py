"""``python3 -m missioncommander cli|gui|daemon``: mcctl (its shell, or one
command), the tray GUI, or mcd."""

from __future__ import annotations

import sys

USAGE = "usage: python3 -m missioncommander cli|gui|daemon [ARGS] | --version"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print("  cli     the mcctl shell (the same as `mcctl shell`);")
        print("          cli COMMAND ... runs one command (the same as `mcctl COMMAND ...`)")
        print("  gui     the tray GUI (the same as `mctray`)")
        print("  daemon  the daemon the other two control (the same as `mcd`)")
        return 0 if argv else 2
    if argv[0] == "--version":
        from missioncommander import __version__  # noqa: PLC0415

        print(f"missioncommander {__version__}")
        return 0
    # The controllers ship in the same distribution; they are imported only
    # here, so the library itself never depends on them.
    if argv[0] == "cli":
        from mc_cli.grammar import UsageError, parse  # noqa: PLC0415
        from mc_cli.main import main as mcctl  # noqa: PLC0415

        rest = argv[1:]
        try:
            inv = parse(rest)
        except UsageError:
            # Not a command as it stands (or a payload from stdin, which this
            # parse does not read): mcctl parses again and says what is wrong.
            return mcctl(rest)
        # No command words: the shell, even when stdin is not a terminal
        # (where `mcctl` alone prints its help): `cli` has always meant it.
        return mcctl(["shell", *rest] if inv.action == "shell" and not inv.words else rest)
    if argv[0] == "gui":
        from mc_gui.launch import main as mctray  # noqa: PLC0415  (says what to install when Qt is missing)

        return mctray(argv[1:])
    if argv[0] == "daemon":
        from mc_daemon.entry import run as mcd  # noqa: PLC0415

        sys.argv[1:] = argv[1:]  # mcd reads its options there, as when it runs as `mcd`
        return mcd()
    print(f"unknown mode {argv[0]!r}; {USAGE}", file=sys.stderr)
    return 2


sys.exit(main(sys.argv[1:]))
