"""``mctray`` / ``python3 -m missioncommander gui``: the tray icon and its window."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QSocketNotifier, QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon

from . import viewmodel as vm
from .backend import Backend
from .window import MainWindow, dot_icon


class TrayApp:
    """Wires the backend's signals to the view-model, the window and the tray."""

    def __init__(self, socket_path: str | None = None, show_window: bool = True) -> None:
        self.model = vm.ViewModel()
        self.backend = Backend(socket_path)
        self.window = MainWindow(self.model, self.backend)
        self.tray: QSystemTrayIcon | None = None
        self.last_notification: vm.Notification | None = None
        self.notices = vm.Notices()
        # Owned by the window: it cannot fire into a window already gone.
        self._notices_due = QTimer(self.window)
        self._notices_due.setSingleShot(True)
        self._notices_due.timeout.connect(self._flush_notices)
        self.menu = self._make_menu()
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = self._make_tray(self.menu)
            self.window.keep_running_in_tray = True
        self.backend.daemon.connect(self.on_daemon)
        self.backend.snapshot.connect(self.on_snapshot)
        self.backend.daemon_status.connect(self.model.set_daemon_status)
        self.backend.received.connect(self.on_event)
        self.backend.history.connect(self.on_history)
        # Drawn once per batch the backend hands over, not per event (its docstring).
        self.backend.taken.connect(self.refresh)
        self.backend.warning.connect(lambda text: self.notify(vm.Notification("mcd warns", text, critical=True)))
        if show_window or self.tray is None:
            self.window.show()
        self.backend.start()

    def _make_menu(self) -> QMenu:
        """The tray's menu (made without a tray too: its actions are the
        same, and tested where no desktop has a tray)."""
        menu = QMenu()
        self.open_action = QAction("Open window", menu)
        self.open_action.triggered.connect(self.show_window)
        self.client_action = QAction("Connect client", menu)
        self.client_action.triggered.connect(self.toggle_client)
        self.server_action = QAction("Start server", menu)
        self.server_action.triggered.connect(self.toggle_server)
        quit_action = QAction("Quit", menu)
        quit_action.triggered.connect(QApplication.quit)
        for action in (self.open_action, self.client_action, self.server_action):
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction(quit_action)
        return menu

    def _make_tray(self, menu: QMenu) -> QSystemTrayIcon:
        tray = QSystemTrayIcon(dot_icon("down"))
        tray.setContextMenu(menu)
        tray.activated.connect(
            lambda reason: self.show_window() if reason == QSystemTrayIcon.ActivationReason.Trigger else None
        )
        tray.show()
        return tray

    def show_window(self) -> None:
        self.window.show()
        self.window.raise_()
        self.window.activateWindow()

    # The tray's actions are on the instances the tabs show, so what the
    # menu does is what the window says (and an mcd without a "default"
    # instance is not given one by a click in the tray).

    def toggle_client(self) -> None:
        name = self.window.client_tab.name
        running = self.model.instance("client", name).phase in ("connected", "connecting", "reconnecting")
        self.backend.request("client.disconnect" if running else "client.connect", {"name": name}, None, self._error)

    def toggle_server(self) -> None:
        name = self.window.server_tab.name
        running = self.model.instance("server", name).phase == "listening"
        self.backend.request("server.stop" if running else "server.start", {"name": name}, None, self._error)

    def _error(self, _code: str, message: str, _details: Any = None) -> None:
        self.notify(vm.Notification("MissionCommander", message, critical=True))

    # -- signals ---------------------------------------------------------------------

    def on_daemon(self, up: bool, message: str) -> None:
        was_up = self.model.daemon_up
        self.model.set_daemon(up, message)
        if was_up and not up:
            self.notify(vm.Notification("mcd stopped", message or "the daemon is not running", critical=True))
        self.refresh()

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.model.apply_snapshot(snapshot)
        for tab in (self.window.client_tab, self.window.server_tab):
            tab.settle_name()

    def on_event(self, ev: dict[str, Any]) -> None:
        notice = self.model.apply_event(ev)
        if ev.get("event") == "removed":
            for tab in (self.window.client_tab, self.window.server_tab):
                if tab.kind == ev["kind"]:
                    tab.instance_removed(ev["name"])
        inst = self.model.instances.get((ev["kind"], ev["name"]))
        if inst is not None and inst.log and ev["event"] != "settings":
            for tab in (self.window.client_tab, self.window.server_tab):
                tab.log_grew(ev["kind"], ev["name"])
        if notice is not None:
            self.offer(notice)

    def offer(self, notice: vm.Notification) -> None:
        """Raise ``notice`` now, or hold it to be counted (``vm.Notices``)."""
        now, later = self.notices.offer(notice)
        if now is not None:
            self.notify(now)
        if later is not None:
            ms = int(later * 1000) + 1
            if not self._notices_due.isActive() or self._notices_due.remainingTime() > ms:
                self._notices_due.start(ms)

    def _flush_notices(self) -> None:
        for notice in self.notices.flush():
            self.notify(notice)

    def on_history(self, ev: dict[str, Any]) -> None:
        if self.model.log_history(ev) is not None:
            for tab in (self.window.client_tab, self.window.server_tab):
                tab.log_grew(ev["kind"], ev["name"])

    def notify(self, notice: vm.Notification) -> None:
        if self.tray is not None and QSystemTrayIcon.supportsMessages():
            icon = QSystemTrayIcon.MessageIcon.Warning if notice.critical else QSystemTrayIcon.MessageIcon.Information
            self.tray.showMessage(notice.title, notice.text, icon, 5000)
        self.window.statusBar().showMessage(f"{notice.title}: {notice.text}", 10000)
        self.last_notification = notice

    def refresh(self) -> None:
        self.window.refresh()
        if self.tray is not None:
            overall = self.model.overall()
            self.tray.setIcon(dot_icon(overall.level))
            self.tray.setToolTip(overall.text)
        client_name, server_name = self.window.client_tab.name, self.window.server_tab.name
        client = self.model.instance("client", client_name).phase
        verb = "Disconnect" if client in ("connected", "connecting", "reconnecting") else "Connect"
        self.client_action.setText(f"{verb} client{_named(client_name)}")
        verb = "Stop" if self.model.instance("server", server_name).phase == "listening" else "Start"
        self.server_action.setText(f"{verb} server{_named(server_name)}")
        self.client_action.setEnabled(self.model.daemon_up)
        self.server_action.setEnabled(self.model.daemon_up)

    def close(self) -> None:
        self.backend.stop()
        if self.tray is not None:
            self.tray.hide()


def _named(name: str) -> str:
    """An instance's name for a menu entry ("default" goes without saying)."""
    return "" if name == "default" else f" {name}"


def quit_on_signals(app: QApplication) -> Callable[[], None]:
    """Have Ctrl-C (SIGINT) and SIGTERM quit the GUI as its Quit does, at
    once, with status 128 + the signal's number; returns what undoes it.

    Qt's event loop runs in C++, where Python's own handler only ran at the
    next Python slot (the live figures' timer, up to a second later), as a
    KeyboardInterrupt traceback inside that slot that left the GUI running.
    The signal's byte on a socket pair wakes the loop instead, and the
    handler runs in the slot that reads it.  Call it before building the
    window: a signal that comes before the loop runs is kept for the loop's
    first turn (``exit`` alone would be lost before ``exec``).
    """
    receive, send = socket.socketpair()
    receive.setblocking(False)
    send.setblocking(False)
    previous_fd = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
    notifier = QSocketNotifier(receive.fileno(), QSocketNotifier.Type.Read)

    def drain() -> None:
        try:
            while receive.recv(512):
                pass
        except BlockingIOError:
            pass

    notifier.activated.connect(drain)

    def handle(signum: int, _frame: object) -> None:
        QTimer.singleShot(0, lambda: app.exit(128 + signum))

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        notifier.setEnabled(False)
        receive.close()
        send.close()

    return restore


def main(args: argparse.Namespace) -> int:
    """Run the GUI with ``mc_gui.launch.parse_args``'s options (``mctray``
    is ``launch.main``, which checks first that Qt can run here)."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("MissionCommander")
    restore_signals = quit_on_signals(app)
    tray_app: TrayApp | None = None
    try:
        tray_app = TrayApp(args.socket, show_window=not args.hidden)
        # With a tray, closing the window leaves the app running in the tray.
        app.setQuitOnLastWindowClosed(tray_app.tray is None)
        return app.exec()
    finally:
        restore_signals()
        if tray_app is not None:
            tray_app.close()
