"""The GUI's link to mcd carries a long run of events in a process of its
own, as the GUI's is: the PySide6 release whose ``Signal.emit()`` lost a
reference to ``True`` at every call aborted such a process after a few
hundred (the pytest process, with its many more references, hid it)."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

pytest.importorskip("PySide6", reason="the GUI's tests need PySide6: pip install -e '.[test,gui]'")

from pytestqt.qtbot import QtBot
from support.mcd import Mcd

from mc_gui.backend import Backend

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


def test_a_burst_from_the_stream_reaches_the_gui_thread_in_one_go(qtbot: QtBot) -> None:
    """What the stream brings while the GUI thread is busy is handed over
    at once, in order, with one ``taken`` after it: the window is drawn
    once for a burst (it was drawn once per event: 500 hosted clients and
    a few broadcasts froze it for minutes)."""
    backend = Backend("/nonexistent/mcd.sock")  # not started: the test is the stream's thread
    received: list[int] = []
    history: list[int] = []
    taken: list[tuple[int, int]] = []
    backend.received.connect(lambda event: received.append(event["seq"]))
    backend.history.connect(lambda event: history.append(event["seq"]))
    backend.taken.connect(lambda: taken.append((len(history), len(received))))

    def stream() -> None:
        backend._queue(backend.history, {"seq": 0})
        for seq in range(1, 1001):
            backend._queue(backend.received, {"seq": seq})

    # The GUI thread (this one) handles no Qt event until the burst is queued.
    reader = threading.Thread(target=stream)
    reader.start()
    reader.join(30)
    qtbot.waitUntil(lambda: bool(taken), timeout=10_000)
    assert (history, received, taken) == ([0], list(range(1, 1001)), [(1, 1000)])
    # An event alone is handed over alone, at once.
    backend._queue(backend.received, {"seq": 1001})
    qtbot.waitUntil(lambda: len(taken) == 2, timeout=10_000)
    assert received[-1] == 1001 and taken[-1] == (1, 1001)
