"""``mcd``: the MissionCommander daemon."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from mc_control.client import default_socket_path
from mc_control.events import host_port
from mc_control.install import install_command

from .entry import STOP_SIGNALS
from .files import SocketInUse, SocketLock, bind_control_socket, claim_socket_path, secure_directory

if TYPE_CHECKING:
    from .control import ControlServer
    from .core import DaemonCore
    from .metrics import MetricsServer

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

    def keep_status(self, summary: Callable[[], str], stop: StopRequest) -> Callable[[], None] | None:
        """Keep STATUS= current: returns what to call on each change (cheap:
        it sets a flag), or None when nobody listens (no ``$NOTIFY_SOCKET``).

        A summary walks every instance, so it is made on a thread of its
        own, at most every ``STATUS_INTERVAL`` seconds, never per event.
        """
        if not self.address:
            return None
        dirty = threading.Event()

        def run() -> None:
            while not stop.is_set():
                if dirty.wait(1.0):
                    dirty.clear()
                    self.status(summary())
                    stop.wait(STATUS_INTERVAL)

        threading.Thread(target=run, name="mcd-status", daemon=True).start()
        return dirty.set


#: The most often mcd tells systemd its STATUS= line.
STATUS_INTERVAL = 0.5
#: How often mcd checks that its lock and socket files are still there (a
#: hand or a cleanup of their directory may remove them; it makes them again).
FILES_EVERY = 1.0


class StopRequest:
    """Whether mcd should stop, set from signal handlers and other threads.

    A signal handler runs in the main thread between two bytecodes, so it
    must take no lock: ``Event.set`` from a handler deadlocks when the
    signal lands while the main thread holds that Event's lock (inside
    ``Event.wait``), and mcd then ignored SIGTERM for good. The handler
    therefore only notes the signal and writes a byte to a pipe; the main
    thread sleeps on the pipe and sets the Event that other threads wait on.
    The same pipe is the interpreter's wakeup fd, written at the signal
    itself (a byte per signal of any kind: ``sleep`` checks and waits again).
    """

    def __init__(self) -> None:
        self.signals: list[int] = []
        self._event = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @property
    def wakeup_fd(self) -> int:
        """The pipe ``sleep`` waits on, for ``signal.set_wakeup_fd``."""
        return self._wake_w

    def from_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)  # no logging here: the handler may interrupt a log call
        self._poke()

    def set(self) -> None:
        """Ask mcd to stop (any thread but a signal handler)."""
        self._event.set()
        self._poke()

    def is_set(self) -> bool:
        return bool(self.signals) or self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """For threads other than the main one: True once mcd is stopping."""
        return self._event.wait(timeout) or self.is_set()

    def sleep(self) -> None:
        """The main thread's wait until a stop is asked; then wakes the others."""
        while not self.is_set():
            select.select([self._wake_r], [], [], 3600)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)
        self._event.set()

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcd",
        description="The MissionCommander daemon: hosts named clients and servers behind a local control socket.",
        epilog="mcctl and the tray GUI drive it; docs/CONTROL_API.md describes the socket's protocol.",
    )
    p.add_argument(
        "command",
        nargs="?",
        choices=["install-service"],
        help="install-service: write the systemd user unit that runs this mcd (with the options given here) and exit",
    )
    p.add_argument("--socket", type=Path, help="control socket path (default: $MC_SOCKET, else the user runtime dir)")
    p.add_argument("--state-dir", type=Path, help="where instances are saved (default: the user state dir)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--event-queue",
        type=_positive_int,
        default=None,
        metavar="N",
        help="how far behind the newest event a subscriber may fall before it is told and cut off "
        "(default: the ring's size)",
    )
    p.add_argument(
        "--event-ring",
        type=_positive_int,
        default=10000,
        metavar="N",
        help="recent events kept for catch-up (default 10000)",
    )
    p.add_argument(
        "--metrics",
        metavar="ADDRESS:PORT",
        help="serve the live figures for Prometheus at http://ADDRESS:PORT/metrics (a bare PORT: on 127.0.0.1; "
        "needs the metrics extra; docs/STATS.md)",
    )
    p.add_argument(
        "--metrics-per-client",
        action="store_true",
        help="with --metrics, also each server's figures per client: a set of series per client id, "
        "so many clients (or ever-new ids) make many series",
    )
    p.add_argument("--print-schema", action="store_true", help="print the control API's JSON Schema and exit")
    p.add_argument("--version", action="store_true", help="print mcd's version and exit")
    unit = p.add_argument_group("install-service")
    unit.add_argument("--unit-dir", type=Path, help="where to write mcd.service (default: ~/.config/systemd/user)")
    unit.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    return p


def _service_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The daemon options given on this command line, for the unit's ExecStart=."""
    out: list[str] = []
    for option, dest in (
        ("--socket", "socket"),
        ("--state-dir", "state_dir"),
        ("--log-level", "log_level"),
        ("--event-queue", "event_queue"),
        ("--event-ring", "event_ring"),
        ("--metrics", "metrics"),
        ("--metrics-per-client", "metrics_per_client"),
    ):
        value = getattr(args, dest)
        if value is True:
            out.append(option)
        elif value != parser.get_default(dest):
            out += [option, str(value.absolute() if isinstance(value, Path) else value)]
    return out


def _default_state_dir() -> Path:
    import platformdirs  # noqa: PLC0415 - only the daemon needs it, and only here

    return Path(platformdirs.user_state_dir("missioncommander"))


def main(
    argv: list[str] | None = None, early_signals: list[int] | None = None, handlers_since: float | None = None
) -> int:
    """Run mcd; ``early_signals`` are those ``entry`` noted before this took
    over, ``handlers_since`` when (``time.monotonic()``) it began noting them."""
    # From here on a SIGTERM, SIGINT or SIGHUP is a clean stop, whatever start-up is doing.
    stop = StopRequest()
    for signum in STOP_SIGNALS:
        signal.signal(signum, stop.from_signal)
    # The handler above runs between two bytecodes of the main thread: a
    # signal that lands just before the main thread enters select() would
    # wait for that select to end (an hour) before the handler ran and woke
    # it.  The wakeup fd is written by C at the signal itself.
    signal.set_wakeup_fd(stop.wakeup_fd, warn_on_full_buffer=False)
    if early_signals:
        stop.signals.extend(early_signals)

    parser = _parser()
    args = parser.parse_args(argv)
    if args.metrics_per_client and args.metrics is None:
        parser.error("--metrics-per-client goes with --metrics ADDRESS:PORT")
    if args.command == "install-service":
        from .service import install  # noqa: PLC0415

        return install(args.unit_dir, _service_args(args, parser), print_only=args.print)
    if args.print_schema:
        from mc_control.schema import json_schema  # noqa: PLC0415 - pydantic only when asked

        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.version:
        from missioncommander import __version__  # noqa: PLC0415 - the library loads after the signal handlers

        print(f"mcd {__version__}")
        return 0
    if args.metrics is not None:
        from .metrics import parse_address  # noqa: PLC0415

        try:
            args.metrics = parse_address(args.metrics)
        except ValueError as exc:
            parser.error(str(exc))
        if importlib.util.find_spec("prometheus_client") is None:
            print(f"mcd: --metrics needs prometheus-client: {install_command('metrics')}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if handlers_since is not None:
        # A signal sent before that moment may be lost by the interpreter
        # itself while it starts (seen on 3.11 and 3.13): this says which
        # side of that moment a lost one fell.
        log.debug("SIGTERM, SIGINT and SIGHUP stop mcd cleanly since time.monotonic() = %.6f", handlers_since)
    socket_path: Path = args.socket or Path(default_socket_path())
    state_dir: Path = args.state_dir or _default_state_dir()
    with _Startup(stop) as run:
        return run.serve(args, socket_path, state_dir)


class _Startup:
    """mcd's life, from lock to exit, stoppable at every step.

    Each step is undone in reverse by ``__exit__``, whichever step a signal
    (or a failure) stopped at; the instances restored so far are stopped and
    the state saved as it was, with what was not restored yet kept in it.
    """

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop
        self.lock: SocketLock | None = None
        self.server: ControlServer | None = None
        #: The control socket until the server takes it over, and its path.
        self.listener: socket.socket | None = None
        self.socket_path: Path | None = None
        self.core: DaemonCore | None = None
        self.metrics: MetricsServer | None = None
        self.notifier = Notifier(os.environ.get("NOTIFY_SOCKET"))

    def __enter__(self) -> _Startup:
        return self

    def serve(self, args: argparse.Namespace, socket_path: Path, state_dir: Path) -> int:
        try:
            secure_directory(socket_path.parent, "socket directory")
            self.lock = SocketLock(socket_path)
            if not self.lock.acquire():
                pid = self.lock.holder()
                self.lock = None
                who = f"another mcd (pid {pid})" if pid is not None else "another mcd"
                print(f"mcd: {who} is already running on {socket_path}", file=sys.stderr)
                return 1
            if claim_socket_path(socket_path):
                self.lock = None
                print(f"mcd: another mcd is already running on {socket_path}", file=sys.stderr)
                return 1
        except (OSError, SocketInUse) as exc:
            print(f"mcd: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return 1
        # Listening before the imports below (most of start-up): a client
        # started with mcd waits in the backlog for its answer rather than
        # finding no socket.
        try:
            self.listener = bind_control_socket(socket_path)
            self.socket_path = socket_path
        except OSError as exc:
            print(f"mcd: cannot listen on {socket_path}: {exc.strerror or exc}", file=sys.stderr)
            return 1

        # Imported after the checks above so a refused second daemon stays quick.
        from missioncommander import __version__  # noqa: PLC0415

        from .control import ControlServer  # noqa: PLC0415
        from .core import DaemonCore  # noqa: PLC0415
        from .state import StateStore  # noqa: PLC0415

        if self.stop.is_set():
            return 0
        self.core = DaemonCore(StateStore(state_dir), ring_size=args.event_ring, subscriber_queue=args.event_queue)
        core = self.core
        core.on_change = self.notifier.keep_status(core.summary, self.stop)
        info = {"socket": str(socket_path), "state_dir": str(state_dir)}
        if args.metrics is not None:
            from .metrics import MetricsServer  # noqa: PLC0415 - prometheus-client only when asked

            try:
                self.metrics = MetricsServer(core, args.metrics, per_client=args.metrics_per_client)
            except OSError as exc:
                where = host_port(*args.metrics)
                print(f"mcd: cannot serve metrics on {where}: {exc.strerror or exc}", file=sys.stderr)
                return 1
            info["metrics"] = self.metrics.url
        self.server = ControlServer(core, socket_path, request_shutdown=self.stop.set, info=info)
        listener, self.listener = self.listener, None
        self.server.start(listener)
        threading.Thread(target=self._keep_files, name="mcd-files", daemon=True).start()
        core.restore(should_stop=self.stop.is_set)
        if self.stop.is_set():
            return 0
        log.info("mcd %s listening on %s (state in %s)", __version__, socket_path, state_dir)
        self.notifier.send("READY=1", f"STATUS={core.summary()}", f"MAINPID={os.getpid()}")
        _start_watchdog(self.notifier, self.stop)
        self.stop.sleep()
        return 0

    def _keep_files(self) -> None:
        """The lock and the socket file stay at their paths while mcd runs."""
        lock, server = self.lock, self.server
        assert lock is not None and server is not None
        said = ""
        while not self.stop.wait(FILES_EVERY):
            try:
                kept = lock.keep()
            except OSError as exc:
                trouble = f"cannot make it again ({lock.path}): {exc.strerror or exc}"
            else:
                trouble = (
                    "" if kept else f"another mcd (pid {lock.holder()}) has taken {lock.path} since: stop one of them"
                )
            if trouble:
                if trouble != said:  # each trouble once, not every second
                    log.warning("this mcd's lock file was removed; %s", trouble)
                said = trouble
                continue
            said = ""
            server.keep_socket()

    def __exit__(self, *_exc: object) -> None:
        if self.stop.signals:
            log.info("received %s; shutting down", signal.Signals(self.stop.signals[0]).name)
        # Later signals must not interrupt the shutdown; it is bounded on its own.
        self.stop.set()
        if self.core is not None or self.server is not None:
            self.notifier.send("STOPPING=1")
        if self.metrics is not None:
            self.metrics.close()
        if self.server is not None:
            self.server.close()
        elif self.listener is not None and self.socket_path is not None:  # stopped before the server took it
            self.listener.close()
            self.socket_path.unlink(missing_ok=True)
        if self.core is not None:
            self.core.shutdown()
            from missioncommander._quiet import say_counts_left  # noqa: PLC0415 - loaded with the core already

            say_counts_left()  # what the shutdown's clients said, counted: before the last line
            log.info("mcd stopped")
        if self.lock is not None:
            self.lock.release()


def _start_watchdog(notifier: Notifier, stop: StopRequest) -> None:
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
