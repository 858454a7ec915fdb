"""A real ``mcd`` process on a temporary socket and state dir, for tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mc_control import ControlClient, ControlError


def mcd_env() -> dict[str, str]:
    """The environment an mcd of a test runs in: this interpreter's path,
    and no MC_SOCKET of the person running the tests."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.pop("MC_SOCKET", None)
    return env


class Mcd:
    """Starts ``python -m mc_daemon`` and waits for its READY=1 (through a
    NOTIFY_SOCKET of our own), so tests never guess when it is up."""

    #: How the interpreter runs mcd (``python3 -m missioncommander daemon`` too).
    launch: tuple[str, ...] = ("-m", "mc_daemon")

    def __init__(self, root: Path | None = None, *extra: str) -> None:
        # Unix socket paths are limited to ~107 bytes: keep them short.
        self.root = root or Path(tempfile.mkdtemp(prefix="mc", dir="/tmp"))
        self.socket = self.root / "mcd.sock"
        self.state_dir = self.root / "state"
        self.extra = list(extra)
        self.proc: subprocess.Popen[str] | None = None
        self.notify_path = self.root / "notify"
        self.notifications: list[str] = []
        self._notify: socket.socket | None = None

    def env(self) -> dict[str, str]:
        return mcd_env()

    def start(self, *extra: str, wait_ready: bool = True) -> Mcd:
        if self._notify is None:
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify.bind(str(self.notify_path))
        env = self.env()
        env["NOTIFY_SOCKET"] = str(self.notify_path)
        # The child has its own copy of the descriptor: the test's is closed
        # at once, whether the test stops mcd or kills it.
        with open(self.root / "mcd.log", "a") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *self.launch,
                    "--socket",
                    str(self.socket),
                    "--state-dir",
                    str(self.state_dir),
                    *self.extra,
                    *extra,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                text=True,
            )
        if wait_ready:
            self.wait_notification("READY=1")
        return self

    def wait_notification(self, needle: str, timeout: float = 20.0) -> str:
        assert self._notify is not None
        self._notify.settimeout(timeout)
        for _ in range(1000):
            for seen in self.notifications:
                if needle in seen:
                    self.notifications.remove(seen)
                    return seen
            try:
                data = self._notify.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(f"mcd sent no {needle!r} within {timeout} s; log:\n{self.log()}") from None
            self.notifications.append(data)
        raise AssertionError("too many notifications")

    def log(self) -> str:
        try:
            return (self.root / "mcd.log").read_text()
        except FileNotFoundError:
            return ""

    def client(self, timeout: float = 10.0) -> ControlClient:
        return ControlClient(self.socket, timeout=timeout).connect()

    def request(self, cmd: str, **params: Any) -> dict[str, Any]:
        with self.client() as c:
            return c.request(cmd, **params)

    def connect_hosted_pair(self, client_id: str | None = None) -> int:
        """mcd's default server listening on loopback and its default client
        connected to it (as ``client_id`` if given); returns the port."""
        self.request("server.set", key="interface", value="127.0.0.1")
        port: int = self.request("server.start")["port"]
        self.request("client.set", key="address", value="127.0.0.1")
        self.request("client.set", key="port", value=port)
        if client_id is not None:
            self.request("client.set", key="client_id", value=client_id)
        self.request("client.connect", wait=True)
        return port

    def phase(self, kind: str, name: str = "default") -> str | None:
        """The instance's phase, or None while it does not exist (reads never create)."""
        try:
            phase: str = self.request(f"{kind}.status", name=name)["phase"]
        except ControlError as exc:
            if exc.code == "not_found":
                return None
            raise
        return phase

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._notify is not None:
            self._notify.close()
        shutil.rmtree(self.root, ignore_errors=True)
