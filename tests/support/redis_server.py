"""A real redis-server for the cluster tests, on a free loopback port.

Started and stopped by the tests themselves.  Where no redis-server is
installed the tests that need one skip, saying so; under CI (``CI`` set)
that is a failure instead, since .ci/run installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; ``restart()`` keeps its port and folder."""

    def __init__(
        self,
        folder: Path,
        persistent: bool = False,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``tls``: (certificate, key, CA) to serve TLS only, on the port
        (the URL is ``rediss://`` with the CA in ``ssl_ca_certs``)."""
        binary = shutil.which("redis-server")
        if binary is None:
            reason = "redis-server is not installed (apt-get install redis-server); the cluster tests need it"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        self.binary = binary
        self.folder = folder
        self.persistent = persistent
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        if tls is not None:
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={tls[2]}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            if self.persistent
            else ["--appendonly", "no", "--save", ""]
        )
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            cert, key, ca = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]  # fmt: skip
        self.process = subprocess.Popen(
            [
                self.binary,
                *ports,
                "--bind", "127.0.0.1",
                "--dir", str(self.folder),
                "--daemonize", "no",
                "--protected-mode", "no",
                *persistence,
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until it answers PING (it loads its file first when persistent)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, "redis-server exited"
            try:
                with contextlib.ExitStack() as stack:
                    sock = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), timeout=1.0))
                    if self.tls is not None:
                        # The TLS socket takes the descriptor over: it is the one to close.
                        context = ssl.create_default_context(cafile=str(self.tls[2]))
                        sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
                    auth = f"AUTH {self.password}\r\n".encode() if self.password else b""
                    sock.sendall(auth + b"PING\r\n")
                    if sock.recv(64).endswith(b"+PONG\r\n"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} did not answer within {timeout} s")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(10)
        self.process = None

    def restart(self, kill: bool = True) -> None:
        self.stop(kill=kill)
        self.start()
