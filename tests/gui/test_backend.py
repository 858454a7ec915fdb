"""The GUI's link to mcd carries a long run of events in a process of its
own, as the GUI's is: the PySide6 release whose ``Signal.emit()`` lost a
reference to ``True`` at every call aborted such a process after a few
hundred (the pytest process, with its many more references, hid it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.mcd import Mcd

pytest.importorskip("PySide6")

EVENTS = 3000

# The GUI's Backend, on a real mcd, in a fresh process: counts the live
# events it is given and exits 0 once it has them all (3 if they do not
# come within two minutes).
LISTENER = """
import sys
from PySide6.QtCore import QCoreApplication, QTimer
from mc_gui.backend import Backend

app = QCoreApplication([])
backend = Backend(sys.argv[1])
want = int(sys.argv[2])
seen = []

def received(event):
    seen.append(event["seq"])
    if len(seen) == want:
        app.quit()

def daemon(up, message):
    print("up" if up else f"down: {message}", flush=True)

backend.received.connect(received)
backend.daemon.connect(daemon)
backend.start()
QTimer.singleShot(120_000, lambda: app.exit(3))
code = app.exec()
backend.stop()
print(f"got {len(seen)}, in order: {seen == sorted(seen)}", flush=True)
sys.exit(code)
"""


def test_the_guis_link_to_mcd_lives_through_thousands_of_events() -> None:
    mcd = Mcd().start()
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(mcd.socket), str(EVENTS)],
        env=mcd.env() | {"QT_QPA_PLATFORM": "offscreen"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "up", listener.communicate(timeout=20)
        with mcd.client() as control:
            # Each change of a setting is one event for every subscriber.
            for n in range(EVENTS):
                control.request("client.set", name="flood", key="reconnect_delay", value=0.5 + n % 2)
        out, err = listener.communicate(timeout=150)
        assert listener.returncode == 0, (out, err)
        assert out.splitlines()[-1] == f"got {EVENTS}, in order: True", out
        assert "Fatal Python error" not in err and "Traceback" not in err, err
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()
        mcd.stop()
        mcd.close()
