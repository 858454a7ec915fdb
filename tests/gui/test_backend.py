"""The GUI's link to mcd carries a long run of events in a process of its
own, as the GUI's is: the PySide6 release whose ``Signal.emit()`` lost a
reference to ``True`` at every call aborted such a process after a few
hundred (the pytest process, with its many more references, hid it)."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

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


class _Pauses(threading.Event):
    """The backend's stop event, noting each pause its event thread takes."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(timeout)
        return super().wait(timeout)


def test_a_gui_cut_off_by_a_flood_catches_up_at_once(qtbot: QtBot) -> None:
    """mcd cuts off a subscriber that falls behind (here by 5 events). The
    GUI subscribed again only after a second's pause, in which more of the
    flood could leave mcd's ring; it now catches up at once, as the shell
    does, and misses nothing."""
    mcd = Mcd(None, "--event-queue", "5").start()
    backend = Backend(str(mcd.socket))
    backend._stop = pauses = _Pauses()
    got: list[int] = []
    backend.received.connect(lambda event: got.append(event["seq"]))
    # The event thread stalls on the first event until the flood is over,
    # so that mcd cuts it off: a reader that merely lags may or may not be.
    release = threading.Event()
    queue_one = backend._queue

    def stalled(signal: Any, payload: dict[str, Any]) -> None:
        if payload.get("type") == "event" and not release.is_set():
            release.wait(60)
        queue_one(signal, payload)

    backend._queue = stalled  # type: ignore[method-assign]
    up: list[bool] = []
    backend.daemon.connect(lambda is_up, message: up.append(is_up))
    try:
        with mcd.client() as control:
            control.request("server.set", name="s", key="interface", value="127.0.0.1")
            control.request("server.set", name="s", key="port", value=0)
            port = control.request("server.start", name="s")["port"]
            control.request("client.set", key="address", value="127.0.0.1")
            control.request("client.set", key="port", value=port)
            control.request("client.connect", wait=True, timeout=10)
            backend.start()
            qtbot.waitUntil(lambda: up == [True], timeout=20_000)
            big = "x" * 100_000  # a few fill the socket's buffers; then the 5 are passed
            for i in range(40):
                control.request("client.send", subject="big", payload={"i": i, "fill": big})
            release.set()
            last = control.request("daemon.status")["last_seq"]
            qtbot.waitUntil(lambda: bool(got) and got[-1] >= last, timeout=30_000)
            assert control.request("stats")["daemon"]["subscribers_cut_off"] == 1
        assert got == list(range(got[0], got[-1] + 1)), got  # in order, none twice, none missed
        assert 1.0 not in pauses.pauses and False not in up  # no pause, never shown as down
    finally:
        release.set()
        backend.stop()
        mcd.stop()
        mcd.close()
