"""The GUI's I/O, off the Qt thread: requests and the event stream.

Three worker threads (commands, sends, the event stream; and one per
request that waits for a peer's reply) talk to mcd through
``mc_control`` and report back with Qt signals (delivered on the GUI
thread), so the window never waits on a socket.  The event stream
reconnects by itself when the daemon comes back and catches up from where
it left off (``since``), or resyncs from a fresh snapshot when the daemon
restarted.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal, SignalInstance

from mc_control import ControlClient, ControlError, DaemonUnreachable, default_socket_path

Reply = Callable[[dict[str, Any]], None]
#: ``on_error(code, message, details)``: a ControlError's three parts (the
#: details None where mcd could not be reached).
Failure = Callable[[str, str, Any], None]
Lane = queue.SimpleQueue[tuple[str, dict[str, Any], Reply | None, Failure | None] | None]

#: Seconds a Send waits in mcd for room in a full queue before it says so
#: (the instance's ``send_timeout`` if that is less).
SEND_WAIT = 10.0


class Backend(QObject):
    """mcd for the GUI thread: requests on a thread of their own, and the
    event stream read by another.

    The stream's snapshots and events reach the GUI thread in the order
    they came, in batches: the reading thread queues them and wakes the GUI
    thread only when the queue was empty, and the GUI thread takes all that
    is queued at once, emitting ``snapshot``, ``received`` and ``history``
    for each and ``taken`` after the lot.  So a burst (a broadcast to 500
    hosted clients is 500 events) is drawn once, not once per event, and an
    event alone is drawn at once.
    """

    #: The daemon's snapshot (after a first connect or a resync).
    snapshot = Signal(dict)
    #: One live event.
    received = Signal(dict)
    #: One event from before the GUI connected (for the logs only).
    history = Signal(dict)
    #: After the snapshots and events taken in one go: time to draw.
    taken = Signal()
    #: (up, message): the daemon answers, or why not.
    daemon = Signal(bool, str)
    #: A warning in a reply (an open server, a setting not saved): for the
    #: person who acted, not only mcd's log.
    warning = Signal(str)
    #: mcd's ``daemon.status``, read at each (re)connect: its standing warnings.
    daemon_status = Signal(dict)
    #: A daemon started with ``start_daemon`` exited at once (``daemon`` says why).
    start_failed = Signal()
    #: Internal: a request's outcome, carried to the GUI thread.
    _done = Signal(object, object, object)
    #: Internal: the stream queued something while the queue was empty.
    _queued = Signal()

    def __init__(self, socket_path: str | Path | None = None) -> None:
        super().__init__()
        self.socket_path = Path(socket_path or default_socket_path())
        self._requests: Lane = queue.SimpleQueue()
        self._sends: Lane = queue.SimpleQueue()
        self._stop = threading.Event()
        #: Set when the daemon answers: a started one that exits after this
        #: was stopped, not a failed start.
        self._answered = threading.Event()
        self._stream: ControlClient | None = None
        #: What the stream brought for the GUI thread: (signal, payload).
        self._stream_queue: deque[tuple[SignalInstance, dict[str, Any]]] = deque()
        self._stream_lock = threading.Lock()
        self._done.connect(self._deliver)
        self._queued.connect(self._take_queued)
        self._threads = [
            threading.Thread(
                target=self._request_loop, args=(self._requests, 10.0), name="mctray-requests", daemon=True
            ),
            threading.Thread(
                target=self._request_loop, args=(self._sends, SEND_WAIT + 5.0), name="mctray-sends", daemon=True
            ),
            threading.Thread(target=self._event_loop, name="mctray-events", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._requests.put(None)
        self._sends.put(None)
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(3)

    # -- requests --------------------------------------------------------------

    def request(
        self, cmd: str, params: dict[str, Any], on_reply: Reply | None = None, on_error: Failure | None = None
    ) -> None:
        """Queue a request; ``on_reply(result)`` or ``on_error(code, message)``
        runs later on the GUI thread (``details`` too: ``Failure``)."""
        self._requests.put((cmd, params, on_reply, on_error))

    def send(self, cmd: str, params: dict[str, Any], on_reply: Reply, on_error: Failure) -> None:
        """A ``client.send`` or ``server.send``, which may wait (its
        ``timeout``, at most ``SEND_WAIT``) for room in a full queue: the
        sends go in order on a connection and thread of their own, so the
        other commands (a Disconnect, a status) do not queue behind that wait."""
        self._sends.put((cmd, params, on_reply, on_error))

    def ask(self, cmd: str, params: dict[str, Any], on_reply: Reply, on_error: Failure) -> None:
        """A request that waits for a peer's reply (``client.request``,
        ``server.request``): on a connection and a thread of its own, so
        the other commands do not queue behind its wait."""
        threading.Thread(
            target=self._ask, args=(cmd, params, on_reply, on_error), name="mctray-ask", daemon=True
        ).start()

    def _ask(self, cmd: str, params: dict[str, Any], on_reply: Reply, on_error: Failure) -> None:
        try:
            with ControlClient(self.socket_path, timeout=float(params.get("timeout", 10.0)) + 5.0) as client:
                result = client.request(cmd, **params)
        except ControlError as exc:
            self._done.emit(on_error, (exc.code, exc.message, exc.details), None)
        except DaemonUnreachable as exc:
            self._done.emit(on_error, (f"daemon_{exc.kind}", exc.message, None), None)
        else:
            self._done.emit(on_reply, result, True)

    def _request_loop(self, lane: Lane, timeout: float) -> None:
        """Run ``lane``'s requests in turn on one connection, opened again
        after the daemon went away; ``timeout`` bounds the wait for a reply."""
        client: ControlClient | None = None
        while True:
            item = lane.get()
            if item is None:
                break
            cmd, params, on_reply, on_error = item
            try:
                if client is None:
                    client = ControlClient(self.socket_path, timeout=timeout).connect()
                result = client.request(cmd, **params)
            except ControlError as exc:
                self._done.emit(on_error, (exc.code, exc.message, exc.details), None)
                continue
            except DaemonUnreachable as exc:
                if client is not None:
                    client.close()
                client = None
                self._done.emit(on_error, (f"daemon_{exc.kind}", exc.message, None), None)
                continue
            for text in result.get("warnings", ()) if isinstance(result, dict) else ():
                self.warning.emit(str(text))
            self._done.emit(on_reply, result, True)
        if client is not None:
            client.close()

    def _deliver(self, callback: Any, payload: Any, ok: Any) -> None:
        if callback is None:
            return
        if ok:
            callback(payload)
        else:
            callback(*payload)

    # -- events ------------------------------------------------------------------

    def _queue(self, signal: SignalInstance, payload: dict[str, Any]) -> None:
        """(event thread) Queue ``payload`` for ``signal`` on the GUI thread."""
        with self._stream_lock:
            wake = not self._stream_queue
            self._stream_queue.append((signal, payload))
        if wake:
            self._queued.emit()

    def _take_queued(self) -> None:
        """(GUI thread) Everything queued so far, in order, then ``taken``."""
        with self._stream_lock:
            batch, self._stream_queue = self._stream_queue, deque()
        for signal, payload in batch:
            signal.emit(payload)
        self.taken.emit()

    def _event_loop(self) -> None:
        since: dict[str, Any] | None = None
        warned_boot: str | None = None
        while not self._stop.is_set():
            stream = ControlClient(self.socket_path, timeout=10.0)
            self._stream = stream
            cut_off = False
            try:
                first = since is None
                status = stream.request("daemon.status")
                self._queue(self.daemon_status, status)
                if status["boot_id"] != warned_boot:
                    # What this mcd found wrong at start (a corrupt state file
                    # moved aside...), once per daemon run: else only in its log.
                    warned_boot = status["boot_id"]
                    for text in status.get("warnings", ()):
                        self.warning.emit(str(text))
                if first:
                    # Ask for the daemon's recent history too, for the logs:
                    # all it keeps (seq 0 once its ring has turned is out of
                    # it, and got a resync without any history).
                    kept_from = int(status.get("first_seq", 1))
                    since = {"boot_id": status["boot_id"], "seq": max(0, kept_from - 1)}
                answer, events = stream.subscribe(since=since)
                self._answered.set()
                self.daemon.emit(True, "")
                if first or answer.get("resync"):
                    self._queue(self.snapshot, answer["snapshot"])
                live_from = answer["seq"]
                since = {"boot_id": answer["boot_id"], "seq": answer["seq"]}
                for ev in events:
                    if ev.get("type") == "event":
                        since = {"boot_id": ev["boot_id"], "seq": ev["seq"]}
                        # Events replayed from before the snapshot only feed
                        # the logs; the snapshot already has their effect.
                        self._queue(self.received if ev["seq"] > live_from or not first else self.history, ev)
                    elif ev.get("type") == "overflow":
                        # Cut off for falling behind a flood (mcd never waits
                        # for a reader): subscribe again with since at once,
                        # as the shell does, and catch up from mcd's ring (a
                        # pause would let more of the flood leave the ring).
                        cut_off = True
                        break
                else:
                    self.daemon.emit(False, "mcd closed the connection (it stopped or is restarting)")
            except DaemonUnreachable as exc:
                if not self._stop.is_set():
                    self.daemon.emit(False, exc.message)
            except (OSError, ValueError, ControlError) as exc:
                if not self._stop.is_set():
                    self.daemon.emit(False, str(exc))
            finally:
                stream.close()
                self._stream = None
            if not cut_off:
                self._stop.wait(1.0)

    # -- the daemon itself -------------------------------------------------------

    def start_daemon(self) -> Path:
        """Start mcd in the background on our socket (it outlives the GUI).

        Its output goes to a log file (returned) rather than nowhere, so a
        daemon that cannot start says why: if it exits within a few seconds
        the ``daemon`` signal carries its status and the log's last line.
        """
        log_path = daemon_log_path()
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(log_path, "ab") as log:
            log.write(f"--- mcd started by mctray on {self.socket_path}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "mc_daemon", "--socket", str(self.socket_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=dict(os.environ),
            )
        threading.Thread(target=self._watch_start, args=(proc, log_path), name="mctray-mcd", daemon=True).start()
        return log_path

    def _watch_start(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self._answered.clear()
        status = None
        for _ in range(int(START_WATCH / 0.1)):
            try:
                status = proc.wait(0.1)
                break
            except subprocess.TimeoutExpired:
                if self._stop.is_set() or self._answered.is_set():
                    break  # it came up (the event stream says so), or we are closing
        if status is None:
            # mcd is our child for as long as this process lives: whenever it
            # ends, this (daemon) thread reaps it, or it would stay a zombie.
            proc.wait()
            return
        if self._stop.is_set() or self._answered.is_set():
            return
        try:
            lines = log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        last = lines[-1] if lines else "no output"
        self.daemon.emit(False, f"mcd exited with status {status}: {last} (its log: {log_path})")
        self.start_failed.emit()


#: How long a started mcd is watched for an early exit.
START_WATCH = 10.0


def daemon_log_path() -> Path:
    """Where an mcd started from the GUI writes its log."""
    import platformdirs  # noqa: PLC0415 - only when starting a daemon

    return Path(platformdirs.user_log_dir("missioncommander")) / "mcd.log"
