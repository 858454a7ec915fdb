"""``mcd``: the MissionCommander daemon."""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import IO

from mc_control.client import default_socket_path
from missioncommander import __version__

log = logging.getLogger("mcd")


class Notifier:
    """systemd's sd_notify protocol, with the standard library: datagrams to
    ``$NOTIFY_SOCKET`` (a path, or an abstract name starting with ``@``)."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._last_status = ""
        self._lock = threading.Lock()

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), target)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address, exc)

    def status(self, text: str) -> None:
        with self._lock:
            if text == self._last_status:
                return
            self._last_status = text
        self.send(f"STATUS={text}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcd",
        description="The MissionCommander daemon: hosts named clients and servers behind a local control socket.",
        epilog="mcctl and the tray GUI drive it; docs/CONTROL_API.md describes the socket's protocol.",
    )
    p.add_argument("--socket", type=Path, help="control socket path (default: $MC_SOCKET, else the user runtime dir)")
    p.add_argument("--state-dir", type=Path, help="where instances are saved (default: the user state dir)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--event-queue",
        type=int,
        default=5000,
        metavar="N",
        help="events buffered per subscriber; one that falls further behind is told and cut off (default 5000)",
    )
    p.add_argument(
        "--event-ring", type=int, default=10000, metavar="N", help="recent events kept for catch-up (default 10000)"
    )
    p.add_argument("--print-schema", action="store_true", help="print the control API's JSON Schema and exit")
    p.add_argument("--version", action="version", version=f"mcd {__version__}")
    return p


def _default_state_dir() -> Path:
    import platformdirs  # noqa: PLC0415 - only the daemon needs it, and only here

    return Path(platformdirs.user_state_dir("missioncommander"))


def _lock(path: Path) -> IO[str] | None:
    """Hold ``path.lock`` for the daemon's life; None when another daemon holds it."""
    handle = open(path.with_name(path.name + ".lock"), "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _live_daemon_at(path: Path) -> bool:
    """True when something answers at ``path``; removes a stale socket file."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except ConnectionRefusedError:
            log.warning("removing stale socket %s (left by a daemon that died)", path)
            path.unlink(missing_ok=True)
            return False
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.print_schema:
        from mc_control.schema import json_schema  # noqa: PLC0415 - pydantic only when asked

        print(json.dumps(json_schema(), indent=2))
        return 0
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    socket_path: Path = args.socket or Path(default_socket_path())
    state_dir: Path = args.state_dir or _default_state_dir()
    if args.socket is None and "MC_SOCKET" not in os.environ:
        socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(socket_path.parent, 0o700)
    else:
        socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    lock = _lock(socket_path)
    if lock is None or _live_daemon_at(socket_path):
        print(f"mcd: another mcd is already running on {socket_path}", file=sys.stderr)
        return 1

    # Imported after the checks above so a refused second daemon stays quick.
    from .control import ControlServer  # noqa: PLC0415
    from .core import DaemonCore  # noqa: PLC0415
    from .state import StateStore  # noqa: PLC0415

    notifier = Notifier(os.environ.get("NOTIFY_SOCKET"))
    stop = threading.Event()
    core = DaemonCore(StateStore(state_dir), ring_size=args.event_ring, subscriber_queue=args.event_queue)
    core.on_change = lambda: notifier.status(core.summary())
    server = ControlServer(
        core, socket_path, request_shutdown=stop.set, info={"socket": str(socket_path), "state_dir": str(state_dir)}
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except OSError as exc:
        print(f"mcd: cannot listen on {socket_path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    core.restore()
    log.info("mcd %s listening on %s (state in %s)", __version__, socket_path, state_dir)
    notifier.send("READY=1", f"STATUS={core.summary()}", f"MAINPID={os.getpid()}")
    _start_watchdog(notifier, stop)

    while not stop.wait(3600):
        pass

    notifier.send("STOPPING=1")
    server.close()
    core.shutdown()
    log.info("mcd stopped")
    lock.close()
    return 0


def _start_watchdog(notifier: Notifier, stop: threading.Event) -> None:
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return
    if os.environ.get("WATCHDOG_PID") not in (None, str(os.getpid())):
        return
    interval = int(usec) / 1e6 / 2

    def kick() -> None:
        while not stop.wait(interval):
            notifier.send("WATCHDOG=1")

    threading.Thread(target=kick, name="mcd-watchdog", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
