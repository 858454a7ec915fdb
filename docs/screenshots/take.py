"""Take the README's screenshots of the tray GUI, from a real mcd.

    python3 docs/screenshots/take.py        (needs the gui extra; no display needed)

Starts an mcd of its own on a temporary socket, sets up a server with two
clients and a little traffic, opens the window offscreen, saves the Client
tab, the Server tab, and the window after mcd stopped, then cleans up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication

from mc_control import ControlClient, DaemonUnreachable
from mc_gui.app import TrayApp

HERE = Path(__file__).resolve().parent


def wait(app: QApplication, condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)


def settle(app: QApplication) -> None:
    """Let layouts and scroll bars finish adjusting (a few rounds of events)."""
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    with tempfile.TemporaryDirectory(prefix="mcshot", dir="/tmp") as tmp:
        sock = Path(tmp) / "mcd.sock"
        mcd = subprocess.Popen(
            [sys.executable, "-m", "mc_daemon", "--socket", str(sock), "--state-dir", str(Path(tmp) / "state")],
            stderr=subprocess.DEVNULL,
        )
        try:
            control = ControlClient(sock, timeout=10.0)

            def up() -> bool:
                try:
                    control.request("hello")
                except DaemonUnreachable:
                    return False
                return True

            wait(app, up, "mcd")
            request = control.request
            request("server.set", key="interface", value="127.0.0.1")
            request("server.set", key="port", value=0)
            port = request("server.start")["port"]
            for name, client_id in (("default", "rover-1"), ("second", "rover-2")):
                request("client.set", name=name, key="address", value="127.0.0.1")
                request("client.set", name=name, key="port", value=port)
                request("client.set", name=name, key="client_id", value=client_id)
                request("client.connect", name=name, wait=True)
            tray = TrayApp(str(sock))
            window = tray.window
            window.resize(900, 700)
            window.show()  # laid out as on a screen (a hidden window grabs with stale geometry)
            wait(app, lambda: tray.model.daemon_up, "the window to connect")
            request("client.send", subject="status", payload={"battery": 87, "position": [12.5, -3.25]})
            request("server.send", to="*", subject="mission", payload={"goal": "survey", "area": "B7"})
            request("server.send", to="rover-1", subject="ping", payload={"n": 1})
            wait(
                app,
                lambda: any("message: ping" in line for line in tray.model.instance("client", "default").log),
                "the client's log",
            )
            window.tabs.setCurrentIndex(0)
            client_figures = tray.model.instance("client", "default")
            wait(app, lambda: len(client_figures.samples) >= 3, "the client's live figures")
            settle(app)
            window.grab().save(str(HERE / "gui-client.png"))
            window.tabs.setCurrentIndex(1)
            wait(app, lambda: tray.window.server_tab.clients.count() == 2, "the server's client list")
            server_figures = tray.model.instance("server", "default")
            wait(app, lambda: len(server_figures.samples) >= 3, "the server's live figures")
            settle(app)
            window.grab().save(str(HERE / "gui-server.png"))
            window.tabs.setCurrentIndex(0)
            request("daemon.shutdown")
            wait(app, lambda: not tray.model.daemon_up, "the window to see mcd stop")
            app.processEvents()
            window.grab().save(str(HERE / "gui-daemon-down.png"))
            tray.close()
        finally:
            if mcd.poll() is None:
                mcd.terminate()
            mcd.wait(20)
    print(f"saved gui-client.png, gui-server.png and gui-daemon-down.png in {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
