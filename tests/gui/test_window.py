"""The tray GUI, offscreen, against a real mcd."""

from __future__ import annotations

import html
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("PySide6", reason="the window tests need PySide6: pip install -e '.[test,gui]'")

from PySide6.QtCore import QPoint, QPointF, QRect, Qt, QTimer
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QCheckBox, QFormLayout, QScrollArea
from pytestqt.qtbot import QtBot
from support import FaultProxy, Recorder, free_port, wait_until
from support.certs import make_certs
from support.mcd import Mcd

from mc_control.codes import CLIENT_KEYS, SERVER_KEYS
from mc_gui.app import TrayApp, quit_on_signals
from mc_gui.viewmodel import LOG_LINES
from missioncommander import Client, ClientState, Message, Server

WAIT = 15_000  # ms: every wait is for a condition, bounded by this


@pytest.fixture
def mcd() -> Iterator[Mcd]:
    daemon = Mcd().start()
    yield daemon
    daemon.close()


@pytest.fixture
def gui(qtbot: QtBot, mcd: Mcd) -> Iterator[TrayApp]:
    app = TrayApp(str(mcd.socket))
    qtbot.addWidget(app.window)
    qtbot.waitUntil(lambda: app.model.daemon_up, timeout=WAIT)
    yield app
    app.close()


def set_text(qtbot: QtBot, edit: object, text: str) -> None:
    edit.clear()  # type: ignore[attr-defined]
    if text:
        qtbot.keyClicks(edit, text)


def test_client_tab_connects_and_shows_messages(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    port = free_port()
    mcd.request("server.set", key="interface", value="127.0.0.1")
    mcd.request("server.set", key="port", value=port)
    mcd.request("server.start")
    tab = gui.window.client_tab
    set_text(qtbot, tab.address.edit, "127.0.0.1")
    set_text(qtbot, tab.port.edit, str(port))
    set_text(qtbot, tab.client_id.edit, "from-the-gui")
    qtbot.mouseClick(tab.connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.phase("client") == "connected", timeout=WAIT)
    status = mcd.request("client.status")
    assert status["settings"]["client_id"] == "from-the-gui" and status["settings"]["port"] == port
    qtbot.waitUntil(lambda: tab.current().phase == "connected", timeout=WAIT)
    assert "connected" in tab.state.text()
    assert tab.disconnect_button.isEnabled() and not tab.connect_button.isEnabled()

    mcd.request("server.send", subject="greeting", payload={"hello": "gui"})
    qtbot.waitUntil(lambda: 'greeting {"hello": "gui"}' in tab.log.toPlainText(), timeout=WAIT)

    set_text(qtbot, tab.send_box.subject.edit, "up")
    tab.send_box.payload.setPlainText('{"n": 7}')
    with mcd.client() as stream:
        _, events = stream.subscribe(events=["message"], instances=[{"kind": "server", "name": "default"}])
        qtbot.mouseClick(tab.send_box.send, Qt.MouseButton.LeftButton)
        got = next(events)
    assert got["data"] == {"client_id": "from-the-gui", "subject": "up", "payload": {"n": 7}}

    qtbot.mouseClick(tab.disconnect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.phase("client") == "disconnected", timeout=WAIT)


def test_a_value_longer_than_its_field_shows_its_start(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """mcd's made-up client ids (32 hex digits) are longer than the field:
    it showed their end, without the characters a person knows one by."""
    client_id = "e6d7417d" + "f" * 24 + "-and-then-some-more-to-be-sure-it-overflows"
    mcd.request("client.set", key="client_id", value=client_id)
    edit = gui.window.client_tab.client_id.edit
    qtbot.waitUntil(lambda: edit.text() == client_id, timeout=WAIT)
    gui.window.show()
    qtbot.waitUntil(edit.isVisible, timeout=WAIT)
    assert edit.fontMetrics().horizontalAdvance(client_id) > edit.width()  # it does not fit
    assert edit.cursorPosition() == 0  # so its start is what shows


def test_a_port_taken_or_an_interface_not_here_is_said_on_its_field(qtbot: QtBot, gui: TrayApp) -> None:
    """Start on a taken port said mcd's "[Errno 98] ... Address already in
    use" in the status bar only: the field to change is where it belongs."""
    gui.window.tabs.setCurrentIndex(1)
    tab = gui.window.server_tab
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        set_text(qtbot, tab.interface.edit, "127.0.0.1")
        set_text(qtbot, tab.port.edit, str(holder.getsockname()[1]))
        qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: tab.port.error.isVisibleTo(gui.window), timeout=WAIT)
    assert tab.port.error.text() == "taken: another server listens on this port (0 picks a free one)"
    assert not tab.interface.error.isVisibleTo(gui.window)
    set_text(qtbot, tab.interface.edit, "192.0.2.1")  # for documentation (RFC 5737): no machine has it
    set_text(qtbot, tab.port.edit, "0")
    qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tab.interface.error.isVisibleTo(gui.window), timeout=WAIT)
    assert tab.interface.error.text() == "no address of this machine (127.0.0.1: this machine only)"
    assert not tab.port.error.isVisibleTo(gui.window)


def test_server_tab_lists_clients_live_sends_and_kicks(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    gui.window.tabs.setCurrentIndex(1)
    tab = gui.window.server_tab
    port = free_port()
    set_text(qtbot, tab.interface.edit, "127.0.0.1")
    set_text(qtbot, tab.port.edit, str(port))
    qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.phase("server") == "listening", timeout=WAIT)
    assert mcd.request("server.status")["port"] == port
    qtbot.waitUntil(lambda: f"Listening on port {port}" in tab.listening.text(), timeout=WAIT)
    assert tab.no_clients.isVisible()

    client = Client(address="127.0.0.1", port=port, client_id="visitor")
    rec = Recorder().attach(client, "message", "statechange")
    client.connect()
    try:
        qtbot.waitUntil(lambda: tab.clients.count() == 1 and tab.clients.item(0).text() == "visitor", timeout=WAIT)
        assert tab.send_box.target.findText("visitor") >= 0

        set_text(qtbot, tab.send_box.subject.edit, "to-all")
        qtbot.mouseClick(tab.send_box.send, Qt.MouseButton.LeftButton)
        tab.send_box.target.setCurrentText("visitor")
        set_text(qtbot, tab.send_box.subject.edit, "to-you")
        tab.send_box.payload.setPlainText('{"just": "you"}')
        qtbot.mouseClick(tab.send_box.send, Qt.MouseButton.LeftButton)
        got = rec.wait_count("message", 2)
        assert [m.subject for (m,) in got] == ["to-all", "to-you"] and got[1][0] == Message("to-you", {"just": "you"})

        tab.clients.item(0).setSelected(True)
        qtbot.mouseClick(tab.kick_button, Qt.MouseButton.LeftButton)
        rec.wait_for(lambda: client.state == ClientState.STATE_OK | ClientState.STATE_NOT_CONNECTED)
        assert client.last_close_reason == "disconnected by the server: disconnected from the tray"
        qtbot.waitUntil(lambda: tab.clients.count() == 0, timeout=WAIT)
        assert "clientdisconnect visitor" in tab.log.toPlainText()
    finally:
        client.disconnect()
    qtbot.mouseClick(tab.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.phase("server") == "stopped", timeout=WAIT)


def test_server_tab_shows_which_clients_are_detached(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """A client whose connection broke keeps its session, and its row: it
    looked connected until it came back or expired (no event says so; the
    live figures do, every second)."""
    port = free_port()
    for key, value in (("interface", "127.0.0.1"), ("port", port)):
        mcd.request("server.set", key=key, value=value)
    mcd.request("server.start")
    gui.window.tabs.setCurrentIndex(1)
    tab = gui.window.server_tab
    proxy = FaultProxy(port)
    client = Client(
        address="127.0.0.1", port=proxy.port, client_id="roamer", reconnect_delay=0.05, reconnect_max_delay=0.5
    )
    client.connect()
    try:
        qtbot.waitUntil(
            lambda: [tab.clients.item(i).text() for i in range(tab.clients.count())] == ["roamer"], timeout=WAIT
        )
        proxy.refusing = True
        proxy.cut("rst")
        qtbot.waitUntil(
            lambda: tab.clients.count() == 1 and tab.clients.item(0).text() == "roamer    detached (may resume)",
            timeout=WAIT,
        )
        proxy.refusing = False
        qtbot.waitUntil(lambda: tab.clients.count() == 1 and tab.clients.item(0).text() == "roamer", timeout=WAIT)
    finally:
        client.disconnect()
        proxy.close()


def test_validation_errors_are_inline_and_nothing_is_sent(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    tab = gui.window.client_tab
    set_text(qtbot, tab.address.edit, "127.0.0.1")
    set_text(qtbot, tab.port.edit, "abc")
    set_text(qtbot, tab.interface.edit, "127.0.0.1")
    qtbot.mouseClick(tab.connect_button, Qt.MouseButton.LeftButton)
    assert tab.port.error.isVisibleTo(gui.window) and tab.port.error.text() == "the port must be a number"
    assert tab.bind_port.error.text() == "a bind port is needed with a specific interface"
    assert not tab.address.error.isVisibleTo(gui.window)
    qtbot.mouseClick(tab.generate, Qt.MouseButton.LeftButton)
    assert len(tab.client_id.text()) == 32
    # Typing into a field clears its error.
    qtbot.keyClicks(tab.port.edit, "1")
    assert not tab.port.error.isVisibleTo(gui.window)
    assert mcd.request("list")["instances"] == []  # nothing was sent

    tab.send_box.payload.setPlainText("[1, 2]")
    set_text(qtbot, tab.send_box.subject.edit, "")
    tab.send_box.send.setEnabled(True)  # force it: validation must still stop the send
    qtbot.mouseClick(tab.send_box.send, Qt.MouseButton.LeftButton)
    assert tab.send_box.payload_error.text() == "the payload must be a JSON object: {...}"
    assert tab.send_box.subject.error.text() == "a subject is needed"


def test_a_daemon_error_shows_on_the_field(qtbot: QtBot, gui: TrayApp) -> None:
    tab = gui.window.client_tab
    set_text(qtbot, tab.address.edit, "127.0.0.1")
    set_text(qtbot, tab.port.edit, "1")
    set_text(qtbot, tab.interface.edit, "no-such-interface0")
    set_text(qtbot, tab.bind_port.edit, "0")
    qtbot.mouseClick(tab.apply_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "neither an IP address nor a local interface" in tab.interface.error.text(), timeout=WAIT)


def test_a_refused_setting_stops_the_connect_it_came_with(qtbot: QtBot, gui: TrayApp) -> None:
    tab = gui.window.client_tab
    set_text(qtbot, tab.address.edit, "127.0.0.1")
    set_text(qtbot, tab.port.edit, "1")
    set_text(qtbot, tab.interface.edit, "no-such-interface0")  # passes here, refused by mcd
    set_text(qtbot, tab.bind_port.edit, "0")
    qtbot.mouseClick(tab.connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "neither an IP address nor a local interface" in tab.interface.error.text(), timeout=WAIT)
    qtbot.waitUntil(
        lambda: "not connecting: mcd refused a setting" in gui.window.statusBar().currentMessage(), timeout=WAIT
    )
    # The window's requests go in order: this one's answer comes after any
    # connect it would have sent.
    status: list[dict[str, object]] = []
    gui.backend.request("client.status", {"name": "default"}, status.append)
    qtbot.waitUntil(lambda: bool(status), timeout=WAIT)
    assert status[0]["phase"] == "disconnected" and status[0]["last_close_reason"] is None  # never tried


def test_a_port_fixed_while_the_first_connect_retries_is_applied(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """A client whose first connect failed keeps trying: its fields were
    read-only ("disconnect to change this").  With no session yet, they stay
    editable, and Apply connects it with the fixed value."""
    mcd.request("server.set", key="interface", value="127.0.0.1")
    port = mcd.request("server.start")["port"]
    tab = gui.window.client_tab
    with socket.socket() as nobody:  # a port nothing listens on, held so nothing will
        nobody.bind(("127.0.0.1", 0))
        set_text(qtbot, tab.address.edit, "127.0.0.1")
        set_text(qtbot, tab.port.edit, str(nobody.getsockname()[1]))
        qtbot.mouseClick(tab.connect_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: tab.current().phase == "connecting", timeout=WAIT)
        assert not tab.port.edit.isReadOnly() and tab.disconnect_button.isEnabled()
        set_text(qtbot, tab.port.edit, str(port))
        qtbot.mouseClick(tab.apply_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: mcd.phase("client") == "connected", timeout=WAIT)
    assert mcd.request("client.status")["settings"]["port"] == port
    qtbot.waitUntil(tab.port.edit.isReadOnly, timeout=WAIT)  # connected: a session to keep


def test_daemon_down_banner_start_button_and_recovery(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # where the started mcd saves
    daemon = Mcd()  # not started: the GUI starts it
    app = TrayApp(str(daemon.socket))
    qtbot.addWidget(app.window)
    try:
        qtbot.waitUntil(lambda: app.window.banner.isVisibleTo(app.window), timeout=WAIT)
        assert "not running" in app.window.banner_text.text()
        assert not app.window.tabs.isEnabled()
        # A disabled field's hint is greyed: drawn dark (lightness 127 of
        # 255) it read as a value typed in ("any", "none").
        hint = app.window.client_tab.interface.edit
        assert not hint.text() and hint.placeholderText()
        image = hint.grab().toImage()
        inside = [(x, y) for x in range(4, image.width() - 4) for y in range(4, image.height() - 4)]
        assert min(image.pixelColor(x, y).lightness() for x, y in inside) >= 170
        assert app.model.overall().level == "down"
        qtbot.mouseClick(app.window.start_daemon_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: app.model.daemon_up, timeout=WAIT)
        assert not app.window.banner.isVisibleTo(app.window) and app.window.tabs.isEnabled()
        hello = daemon.request("hello")
        assert hello["api_version"] == 1
        # The started mcd logs to a file the GUI named, not to nowhere.
        log = tmp_path / "state" / "missioncommander" / "log" / "mcd.log"
        assert f"its log: {log}" in app.window.statusBar().currentMessage()
        assert "listening on" in log.read_text()
        # An instance shown green while mcd runs...
        daemon.request("server.set", key="interface", value="127.0.0.1")
        daemon.request("server.start")
        qtbot.waitUntil(lambda: app.model.instance("server", "default").phase == "listening", timeout=WAIT)
        daemon.request("daemon.shutdown")
        qtbot.waitUntil(lambda: not app.model.daemon_up, timeout=WAIT)
        # The GUI's child once it ends: reaped, not left a zombie.
        qtbot.waitUntil(lambda: not Path(f"/proc/{hello['pid']}").exists(), timeout=WAIT)
        assert app.window.banner.isVisibleTo(app.window)
        assert app.last_notification.title == "mcd stopped"
        assert app.window.statusBar().currentMessage() != "mcd stopped: mcd stopped"
        # ...is unknown once mcd is gone, not still green under the banner.
        assert app.model.instance("server", "default").phase == "unknown"
        assert "unknown" in app.window.server_tab.state.text()
        assert "mcd is not running" in app.window.server_tab.state.text()
    finally:
        app.close()
        daemon.close()


def test_a_daemon_that_cannot_start_says_why(qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    not_a_socket = tmp_path / "mcd.sock"
    not_a_socket.mkdir()  # mcd refuses a socket path that is not a socket
    app = TrayApp(str(not_a_socket))
    qtbot.addWidget(app.window)
    try:
        qtbot.waitUntil(lambda: app.window.banner.isVisibleTo(app.window), timeout=WAIT)
        qtbot.mouseClick(app.window.start_daemon_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "mcd exited with status 1" in app.window.banner_text.text(), timeout=WAIT)
        log = tmp_path / "state" / "missioncommander" / "log" / "mcd.log"
        assert str(log) in app.window.banner_text.text()
        assert "not a socket" in app.window.banner_text.text()
        assert app.window.start_daemon_button.isEnabled()  # try again once fixed
    finally:
        app.close()


def test_warnings_in_replies_reach_the_person_who_acted(qtbot: QtBot, gui: TrayApp) -> None:
    tab = gui.window.server_tab
    set_text(qtbot, tab.interface.edit, "")  # every interface, no TLS, no token: an open server
    set_text(qtbot, tab.port.edit, "0")
    qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: gui.last_notification is not None and gui.last_notification.title == "mcd warns", timeout=WAIT
    )
    assert gui.last_notification is not None
    assert "every interface" in gui.last_notification.text
    assert "every interface" in gui.window.statusBar().currentMessage()


def test_what_mcd_found_wrong_at_start_is_told_on_connecting(qtbot: QtBot) -> None:
    daemon = Mcd()
    try:
        daemon.state_dir.mkdir(parents=True)
        (daemon.state_dir / "state.json").write_text("{ not json")
        daemon.start()
        app = TrayApp(str(daemon.socket))
        try:
            qtbot.addWidget(app.window)
            qtbot.waitUntil(lambda: app.last_notification is not None, timeout=WAIT)
            assert app.last_notification is not None and app.last_notification.title == "mcd warns"
            assert app.last_notification.text.startswith("at start: state file ")
            assert "moved it to" in app.last_notification.text
            # The window keeps it in sight, whole, until dismissed.
            qtbot.waitUntil(app.window.warnings_banner.isVisible, timeout=WAIT)
            assert app.last_notification.text in html.unescape(app.window.warnings_text.text())
            qtbot.mouseClick(app.window.dismiss_button, Qt.MouseButton.LeftButton)
            assert not app.window.warnings_banner.isVisible()
            app.window.read_warnings()  # mcd says the same again: they stay dismissed
            qtbot.waitUntil(lambda: not app.window.reading_warnings, timeout=WAIT)
            assert app.model.daemon_warnings and not app.window.warnings_banner.isVisible()
        finally:
            app.close()
    finally:
        daemon.close()


def test_a_warning_that_comes_and_goes_while_mcd_runs_shows_and_goes(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    gui.window.warnings_every = 1  # read mcd's warnings at every figures tick
    mcd.request("server.set", key="port", value=free_port())  # saved: the state directory is there
    assert not gui.window.warnings_banner.isVisible()
    moved = mcd.state_dir.with_name("state.away")
    mcd.state_dir.rename(moved)
    mcd.state_dir.write_text("in the way")  # saves fail from here on
    assert mcd.request("server.set", key="port", value=free_port())["warnings"]  # held, not saved
    qtbot.waitUntil(gui.window.warnings_banner.isVisible, timeout=WAIT)
    assert "the state is not being saved" in gui.window.warnings_text.text()
    mcd.state_dir.unlink()
    moved.rename(mcd.state_dir)
    mcd.request("server.set", key="port", value=free_port())  # saved again
    qtbot.waitUntil(lambda: not gui.window.warnings_banner.isVisible(), timeout=WAIT)


def test_reconnects_and_resyncs_after_a_daemon_restart(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    mcd.request("server.create", name="before")
    qtbot.waitUntil(lambda: ("server", "before") in gui.model.instances, timeout=WAIT)
    mcd.stop()
    qtbot.waitUntil(lambda: not gui.model.daemon_up, timeout=WAIT)
    mcd.start()
    mcd.request("server.create", name="after")
    qtbot.waitUntil(lambda: gui.model.daemon_up and ("server", "after") in gui.model.instances, timeout=WAIT)
    assert ("server", "before") in gui.model.instances  # restored by the daemon, seen in the resync snapshot
    assert gui.window.server_tab.picker.findText("after") >= 0


def test_named_instances_are_picked_or_created(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    tab = gui.window.client_tab
    assert tab.picker.currentText() == "default"
    tab.picker.setEditText("lab")
    line_edit = tab.picker.lineEdit()
    assert line_edit is not None
    qtbot.keyClick(line_edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: any(i["name"] == "lab" for i in mcd.request("list")["instances"]), timeout=WAIT)
    assert tab.name == "lab"
    window = gui.window
    window.resize(900, 700)
    window.show()
    qtbot.waitExposed(window)
    settle()
    size = window.size()
    tab.picker.setEditText("café")  # the daemon's rule is ASCII: refused here, before asking it
    qtbot.keyClick(line_edit, Qt.Key.Key_Return)
    assert tab.picker_error.isVisibleTo(window) and tab.name == "lab"
    settle()
    # The error and the state's detail fit the window: it neither grew nor scrolls sideways.
    assert window.size() == size
    area = window.tabs.currentWidget()
    assert isinstance(area, QScrollArea)
    bar = area.horizontalScrollBar()
    assert bar is not None and bar.maximum() == 0


def test_tokens_set_in_the_window_are_used_and_never_shown(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    server_tab, client_tab = gui.window.server_tab, gui.window.client_tab
    port = free_port()
    set_text(qtbot, server_tab.interface.edit, "127.0.0.1")
    set_text(qtbot, server_tab.port.edit, str(port))
    set_text(qtbot, server_tab.token.edit, "s3cret")
    qtbot.mouseClick(server_tab.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.phase("server") == "listening", timeout=WAIT)
    assert mcd.request("server.status")["settings"]["auth_token"] == "(set)"
    set_text(qtbot, client_tab.address.edit, "127.0.0.1")
    set_text(qtbot, client_tab.port.edit, str(port))
    set_text(qtbot, client_tab.token.edit, "s3cret")
    qtbot.mouseClick(client_tab.connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.phase("client") == "connected", timeout=WAIT)
    qtbot.waitUntil(lambda: client_tab.current().phase == "connected", timeout=WAIT)
    assert client_tab.token.text() == "" and client_tab.token.edit.placeholderText().startswith("set")


def test_tls_settings_made_in_the_window_connect_with_mutual_tls(
    qtbot: QtBot, gui: TrayApp, mcd: Mcd, tmp_path: Path
) -> None:
    certs = make_certs(tmp_path)
    server_tab, client_tab = gui.window.server_tab, gui.window.client_tab
    rows = {
        "TLS CA file": client_tab.tls_ca,
        "TLS server name": client_tab.tls_hostname,
        "TLS certificate": client_tab.tls_cert,
        "TLS key": client_tab.tls_key,
    }
    for label, field in [*rows.items(), ("Client CA file", server_tab.tls_ca)]:
        box = field.edit.parentWidget()  # the field's row: its edit and error line
        form = box.parentWidget().layout()
        assert isinstance(form, QFormLayout)
        assert form.labelForField(box).text() == label  # type: ignore[attr-defined]
    port = free_port()
    set_text(qtbot, server_tab.interface.edit, "127.0.0.1")
    set_text(qtbot, server_tab.port.edit, str(port))
    set_text(qtbot, server_tab.tls_cert.edit, str(certs.server_cert))
    set_text(qtbot, server_tab.tls_key.edit, str(certs.server_key))
    set_text(qtbot, server_tab.tls_ca.edit, str(certs.ca))  # client certificates required
    qtbot.mouseClick(server_tab.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.phase("server") == "listening", timeout=WAIT)
    assert mcd.request("server.status")["settings"]["tls_ca"] == str(certs.ca)

    set_text(qtbot, client_tab.address.edit, "127.0.0.1")
    set_text(qtbot, client_tab.port.edit, str(port))
    client_tab.tls.setChecked(True)
    assert client_tab.tls_verify.isChecked()  # verifying is the default
    set_text(qtbot, client_tab.tls_ca.edit, str(certs.ca))
    set_text(qtbot, client_tab.tls_hostname.edit, "localhost")
    set_text(qtbot, client_tab.tls_cert.edit, str(certs.client_cert))
    set_text(qtbot, client_tab.tls_key.edit, str(certs.client_key))
    qtbot.mouseClick(client_tab.connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.phase("client") == "connected", timeout=WAIT)
    # The window's buttons follow the events it has seen, which may trail
    # mcd: until it shows the connection, Disconnect is still greyed out.
    qtbot.waitUntil(lambda: client_tab.current().phase == "connected", timeout=WAIT)
    settings = mcd.request("client.status")["settings"]
    assert settings["tls"] is True and settings["tls_verify"] is True
    assert (settings["tls_hostname"], settings["tls_cert"], settings["tls_key"]) == (
        "localhost",
        str(certs.client_cert),
        str(certs.client_key),
    )
    qtbot.mouseClick(client_tab.disconnect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: client_tab.current().phase == "disconnected", timeout=WAIT)

    # A CA that signed nothing of the server's: refused while verifying...
    set_text(qtbot, client_tab.tls_ca.edit, str(certs.other_ca))
    qtbot.mouseClick(client_tab.connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "certificate" in (mcd.request("client.status")["last_close_reason"] or ""), timeout=WAIT)
    assert mcd.request("client.status")["phase"] != "connected"
    qtbot.waitUntil(lambda: "certificate" in client_tab.last_close.text(), timeout=WAIT)  # shown, and seen
    # Whole: beside the buttons the reason was cut off after two lines.
    label = client_tab.last_close
    qtbot.waitUntil(lambda: label.height() >= label.heightForWidth(label.width()), timeout=WAIT)
    assert label.visibleRegion().boundingRect().height() >= label.heightForWidth(label.width())
    mcd.request("client.disconnect")
    qtbot.waitUntil(lambda: client_tab.current().phase == "disconnected", timeout=WAIT)
    # ...and accepted with verification switched off in the window.
    client_tab.tls_verify.setChecked(False)
    qtbot.mouseClick(client_tab.connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.phase("client") == "connected", timeout=WAIT)
    assert mcd.request("client.status")["settings"]["tls_verify"] is False
    qtbot.waitUntil(lambda: not client_tab.tls_verify.isEnabled(), timeout=WAIT)  # locked while connected
    assert not client_tab.tls_verify.isChecked()


def test_the_window_offers_every_setting_of_the_control_api(gui: TrayApp) -> None:
    client_tab, server_tab = gui.window.client_tab, gui.window.server_tab
    for tab, keys in ((client_tab, CLIENT_KEYS), (server_tab, SERVER_KEYS)):
        editable = [*tab.fields(), *getattr(tab, "toggles", {}).values()]
        for key in keys:
            assert getattr(tab, "token" if key == "auth_token" else key) in editable, f"{tab.kind} {key}"


def test_each_tab_shows_its_log_at_the_windows_first_size(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """The log sits under the send box, beside the settings: at the size the
    window opens with it shows several lines without scrolling, on both tabs
    (under the server tab's settings and clients it was below the fold)."""
    window = gui.window
    window.show()
    qtbot.waitExposed(window)
    for index, tab in enumerate((window.client_tab, window.server_tab)):
        window.tabs.setCurrentIndex(index)
        settle()
        area = window.tabs.currentWidget()
        assert isinstance(area, QScrollArea)
        viewport = area.viewport()
        assert viewport is not None
        shown = QRect(tab.log.mapTo(viewport, QPoint(0, 0)), tab.log.size())
        assert viewport.rect().contains(shown), f"{tab.kind} tab: log at {shown}, viewport {viewport.rect()}"
        assert tab.log.height() >= 8 * tab.log.fontMetrics().lineSpacing(), f"{tab.kind} tab"


def test_layout_holds_still(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """The Send button does not jump when an error appears, the window does
    not grow when switching tabs or when the banner shows, and fields that
    cannot change while connected are read-only and say why."""
    window = gui.window
    window.show()
    qtbot.waitExposed(window)
    settle()
    size = window.size()
    box = window.client_tab.send_box
    box.send.setEnabled(True)
    before = box.send.mapTo(window, box.send.rect().topLeft())
    box.payload.setPlainText("not json")
    qtbot.mouseClick(box.send, Qt.MouseButton.LeftButton)
    assert box.payload_error.isVisibleTo(window) and box.subject.error.isVisibleTo(window)
    settle()  # the claim is about where the layout settles
    assert box.send.mapTo(window, box.send.rect().topLeft()) == before
    for index in (1, 0, 1):
        window.tabs.setCurrentIndex(index)
        settle()
        assert window.size() == size
    assert window.minimumSizeHint().height() < 480  # room comes from scrolling, not from the window

    mcd.connect_hosted_pair()
    tab = window.client_tab
    qtbot.waitUntil(tab.address.edit.isReadOnly, timeout=WAIT)
    assert tab.address.edit.toolTip() == "disconnect to change this"
    mcd.request("client.disconnect")
    qtbot.waitUntil(lambda: not tab.address.edit.isReadOnly(), timeout=WAIT)

    mcd.stop()
    qtbot.waitUntil(lambda: window.banner.isVisibleTo(window), timeout=WAIT)
    settle()
    assert window.size() == size


def settle() -> None:
    """Run the layout requests and resizes Qt has posted."""
    QApplication.sendPostedEvents()
    QApplication.processEvents()


def test_limits_and_timers_are_set_from_the_window(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    tab = gui.window.server_tab
    gui.window.tabs.setCurrentIndex(1)
    set_text(qtbot, tab.interface.edit, "127.0.0.1")
    set_text(qtbot, tab.port.edit, "0")
    set_text(qtbot, tab.max_clients.edit, "lots")
    qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
    assert tab.max_clients.error.isVisibleTo(gui.window) and tab.max_clients.error.text() == "a whole number"
    assert tab.tuning_toggle.isChecked()  # the folded section opened to show the error
    assert mcd.phase("server") is None  # nothing was sent
    set_text(qtbot, tab.max_clients.edit, "2")
    set_text(qtbot, tab.max_connection_rate.edit, "none")  # optional: none is no limit
    set_text(qtbot, tab.session_expiry.edit, "7.5")
    qtbot.mouseClick(tab.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.phase("server") == "listening", timeout=WAIT)
    settings = mcd.request("server.get")["settings"]
    assert settings["max_clients"] == 2 and settings["session_expiry"] == 7.5
    assert settings["max_connection_rate"] is None
    # Listening: what the server cannot change live is locked; the rest stays open for Apply.
    qtbot.waitUntil(tab.max_inbound.edit.isReadOnly, timeout=WAIT)
    assert not tab.max_clients.edit.isReadOnly()


def test_on_off_settings_are_check_boxes_that_apply_sends(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """inline_callbacks and the other on/off settings were text fields a
    person had to type "true" into: check boxes now, filled from mcd and
    sent by Apply."""
    mcd.request("client.set", key="address", value="127.0.0.1")
    mcd.request("client.set", key="port", value=free_port())
    tab = gui.window.client_tab
    qtbot.waitUntil(lambda: tab.port.text() != "", timeout=WAIT)
    tab.tuning_toggle.setChecked(True)
    for key in ("inline_callbacks", "reply_tracebacks", "reconnect_on_shutdown"):
        assert isinstance(getattr(tab, key).edit, QCheckBox), key
    qtbot.waitUntil(lambda: not tab.reconnect_on_shutdown.edit.isChecked(), timeout=WAIT)  # the default
    mcd.request("client.set", key="reply_tracebacks", value=True)
    qtbot.waitUntil(tab.reply_tracebacks.edit.isChecked, timeout=WAIT)  # mcd's value shown
    tab.reconnect_on_shutdown.edit.click()  # as a person's click: toggled, so changed here
    qtbot.mouseClick(tab.apply_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.request("client.get")["settings"]["reconnect_on_shutdown"] is True, timeout=WAIT)
    assert mcd.request("client.get")["settings"]["reply_tracebacks"] is True  # untouched, not sent back changed
    mcd.connect_hosted_pair()
    qtbot.waitUntil(tab.address.edit.isReadOnly, timeout=WAIT)  # connected: fixed settings locked...
    assert tab.inline_callbacks.edit.isEnabled()  # ...but not these, which a client takes live


def test_a_running_instance_takes_what_it_can_change_live_from_apply(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """Connected or listening, the fields of the settings mcd takes live
    (most limits and timers; a server's token) stay editable and Apply
    sends them; the others stay read-only until a disconnect or stop."""
    mcd.connect_hosted_pair()
    window = gui.window
    tab = window.client_tab
    qtbot.waitUntil(tab.address.edit.isReadOnly, timeout=WAIT)
    assert tab.max_frame_size.edit.isReadOnly() and tab.token.edit.isReadOnly()
    assert not tab.max_queued.edit.isReadOnly() and tab.apply_button.isEnabled()
    set_text(qtbot, tab.max_queued.edit, "500")
    qtbot.mouseClick(tab.apply_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.request("client.get")["settings"]["max_queued"] == 500, timeout=WAIT)
    qtbot.waitUntil(lambda: "applied max_queued" in window.statusBar().currentMessage(), timeout=WAIT)
    assert mcd.phase("client") == "connected"

    stab = window.server_tab
    window.tabs.setCurrentIndex(1)
    qtbot.waitUntil(stab.interface.edit.isReadOnly, timeout=WAIT)
    assert stab.max_inbound.edit.isReadOnly() and stab.lease_ttl.edit.isReadOnly()
    assert not stab.token.edit.isReadOnly() and not stab.session_expiry.edit.isReadOnly()
    set_text(qtbot, stab.token.edit, "s3cret")
    set_text(qtbot, stab.session_expiry.edit, "9")
    qtbot.mouseClick(stab.apply_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: (
            mcd.request("server.get")["settings"]["session_expiry"] == 9.0
            and mcd.request("server.get")["settings"]["auth_token"] == "(set)"
        ),
        timeout=WAIT,
    )
    qtbot.waitUntil(lambda: "applied auth_token, session_expiry" in window.statusBar().currentMessage(), timeout=WAIT)
    assert mcd.phase("server") == "listening" and mcd.phase("client") == "connected"  # its session goes on

    # Stopped, Apply keeps every setting without starting.
    mcd.request("server.stop")
    qtbot.waitUntil(lambda: not stab.interface.edit.isReadOnly(), timeout=WAIT)
    set_text(qtbot, stab.node_id.edit, "left-alone")
    qtbot.mouseClick(stab.apply_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: mcd.request("server.get")["settings"]["node_id"] == "left-alone", timeout=WAIT)
    assert mcd.phase("server") == "stopped"


def test_the_send_box_asks_and_logs_the_reply_or_why_none_came(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """Client tab: a library server answers (or raises); server tab: a
    library client answers, and a request to 'All clients' is refused inline."""

    def answer(client_id: str, message: Message) -> dict[str, object]:
        if message.subject == "boom":
            raise RuntimeError("it broke")
        return {"status": "fine", "n": message.payload.get("n")}

    with Server(interface="127.0.0.1", port=0) as library_server:
        library_server.subscribe("request", answer)
        mcd.request("client.set", key="address", value="127.0.0.1")
        mcd.request("client.set", key="port", value=library_server.port)
        mcd.request("client.connect", wait=True)
        tab = gui.window.client_tab
        qtbot.waitUntil(tab.send_box.ask.isEnabled, timeout=WAIT)
        set_text(qtbot, tab.send_box.subject.edit, "status")
        tab.send_box.payload.setPlainText('{"n": 3}')
        qtbot.mouseClick(tab.send_box.ask, Qt.MouseButton.LeftButton)
        line = 'reply from the server to status: status {"status": "fine", "n": 3}'
        qtbot.waitUntil(lambda: line in tab.log.toPlainText(), timeout=WAIT)
        set_text(qtbot, tab.send_box.subject.edit, "boom")
        qtbot.mouseClick(tab.send_box.ask, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(
            lambda: (
                "request boom to the server: the responder failed (RuntimeError: it broke)" in tab.log.toPlainText()
            ),
            timeout=WAIT,
        )
        mcd.request("client.disconnect")

    gui.window.tabs.setCurrentIndex(1)
    server_tab = gui.window.server_tab
    mcd.request("server.set", key="interface", value="127.0.0.1")
    port = mcd.request("server.start")["port"]
    with Client(address="127.0.0.1", port=port, client_id="asked") as client:
        client.subscribe("request", lambda m: {"pong": m.subject})
        qtbot.waitUntil(lambda: server_tab.send_box.target.findText("asked") >= 0, timeout=WAIT)
        set_text(qtbot, server_tab.send_box.subject.edit, "ping")
        server_tab.send_box.payload.setPlainText("{}")
        qtbot.mouseClick(server_tab.send_box.ask, Qt.MouseButton.LeftButton)  # To: All clients
        assert server_tab.send_box.payload_error.text() == "a request goes to one client: pick it in To"
        server_tab.send_box.target.setCurrentText("asked")
        qtbot.mouseClick(server_tab.send_box.ask, Qt.MouseButton.LeftButton)
        line = 'reply from asked to ping: ping {"pong": "ping"}'
        qtbot.waitUntil(lambda: line in server_tab.log.toPlainText(), timeout=WAIT)


def test_what_a_peer_chose_is_shown_escaped_and_sent_to_as_it_is(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """A client id may hold bidi controls (U+202E reverses the rest of its
    line as Qt shows it) and a reply's subject any control: the client
    list, the To box, the status bar and the log showed them raw, so a
    peer could make a row or a line read as something else, or fake a log
    line. They are shown escaped, and the To box still sends to the id as
    it is."""
    gui.window.tabs.setCurrentIndex(1)
    tab = gui.window.server_tab
    mcd.request("server.set", key="interface", value="127.0.0.1")
    port = mcd.request("server.start")["port"]
    odd_id = "user\u202egnp.exe"
    with Client(address="127.0.0.1", port=port, client_id=odd_id) as client:
        rec = Recorder().attach(client, "message")
        client.subscribe("request", lambda m: Message("ok\u2066\nfake line", {"t": "\u202e\x9b"}))
        qtbot.waitUntil(lambda: tab.clients.count() == 1, timeout=WAIT)
        assert tab.clients.item(0).text() == "user\\u202egnp.exe"
        index = tab.send_box.target.findText("user\\u202egnp.exe")
        assert index >= 0
        tab.send_box.target.setCurrentIndex(index)
        set_text(qtbot, tab.send_box.subject.edit, "to-you")
        tab.send_box.payload.setPlainText("{}")
        qtbot.mouseClick(tab.send_box.send, Qt.MouseButton.LeftButton)
        assert rec.wait_count("message", 1)[0][0].subject == "to-you"
        status = gui.window.statusBar()
        qtbot.waitUntil(lambda: status.currentMessage() == "sent to-you to user\\u202egnp.exe", timeout=WAIT)
        qtbot.mouseClick(tab.send_box.ask, Qt.MouseButton.LeftButton)
        assert status.currentMessage() == "asked user\\u202egnp.exe: to-you"
        line = 'reply from user\\u202egnp.exe to to-you: ok\\u2066\\nfake line {"t": "\\u202e\\x9b"}'
        qtbot.waitUntil(lambda: line in tab.log.toPlainText(), timeout=WAIT)
        assert not any(c in tab.log.toPlainText() for c in "\u202e\u2066\x9b")


def test_the_tab_shows_live_figures_and_their_rate_graph(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    gui.window.show()
    qtbot.waitExposed(gui.window)
    mcd.connect_hosted_pair()
    tab = gui.window.client_tab
    for n in range(4):
        mcd.request("client.send", subject="tick", payload={"n": n})
    qtbot.waitUntil(lambda: "sent 4 " in tab.figures.text.text(), timeout=WAIT)
    assert "queued" in tab.figures.text.text() and "round trip" in tab.figures.text.text()
    # One sample a second: the graph has rates once two have come.
    qtbot.waitUntil(lambda: len(tab.figures.graph.points) >= 1, timeout=WAIT)
    gui.window.tabs.setCurrentIndex(1)
    server_tab = gui.window.server_tab
    qtbot.waitUntil(lambda: "received 4 " in server_tab.figures.text.text(), timeout=WAIT)
    assert "clients 1 connected, 0 detached" in server_tab.figures.text.text()


def test_server_tab_shows_the_node_of_each_client_in_a_cluster(
    qtbot: QtBot, gui: TrayApp, mcd: Mcd, tmp_path: Path
) -> None:
    from support.redis_server import RedisServer

    redis = RedisServer(tmp_path)
    redis.start()
    other = Server(interface="127.0.0.1", cluster=redis.url, node_id="other-node")
    client = Client(address="127.0.0.1", client_id="far-away", reconnect_delay=0.05)
    try:
        for key, value in (("interface", "127.0.0.1"), ("port", free_port()), ("cluster", redis.url)):
            mcd.request("server.set", key=key, value=value)
        mcd.request("server.set", key="node_id", value="tray-node")
        mcd.request("server.start")
        other.start()
        client.port = other.port
        client.connect()
        gui.window.show()  # the open window looks for other nodes' clients every second
        qtbot.waitExposed(gui.window)
        gui.window.tabs.setCurrentIndex(1)
        tab = gui.window.server_tab
        qtbot.waitUntil(
            lambda: tab.clients.count() == 1 and tab.clients.item(0).text() == "far-away    node other-node",
            timeout=WAIT,
        )
        assert tab.clients_box.title() == "Clients of the cluster"
        tab.clients.item(0).setSelected(True)  # a kick from the tray reaches it on the other node
        qtbot.mouseClick(tab.kick_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not client.state & ClientState.STATE_RUNNING, timeout=WAIT)
    finally:
        client.disconnect()
        other.stop()
        mcd.request("server.stop")
        redis.stop()


def test_a_tab_first_shows_the_daemons_instance_when_it_has_no_default(qtbot: QtBot, mcd: Mcd) -> None:
    """Made with `mcctl --name web` before the GUI opened: the server tab
    shows web, not an empty "default" that does not exist; the client tab,
    with no clients at all, shows "default"; a tab a person then switches
    stays where they put it."""
    mcd.request("server.set", name="web", key="interface", value="127.0.0.1")
    mcd.request("server.set", name="web", key="port", value=0)
    mcd.request("server.start", name="web")
    app = TrayApp(str(mcd.socket))
    qtbot.addWidget(app.window)
    try:
        tab = app.window.server_tab
        qtbot.waitUntil(lambda: tab.current().phase == "listening", timeout=WAIT)
        assert (tab.name, tab.picker.currentText()) == ("web", "web")
        assert "listening" in tab.state.text()
        assert app.window.client_tab.name == "default"
        mcd.request("server.create", name="alpha")  # sorts first, comes later: the tab stays
        qtbot.waitUntil(lambda: tab.picker.findText("alpha") >= 0, timeout=WAIT)
        assert tab.name == "web"
        # The tray's menu acts on what the tabs show, and names it.
        assert app.server_action.text() == "Stop server web"
        assert app.client_action.text() == "Connect client"
        app.server_action.trigger()
        qtbot.waitUntil(lambda: mcd.phase("server", "web") == "stopped", timeout=WAIT)
        qtbot.waitUntil(lambda: app.server_action.text() == "Start server web", timeout=WAIT)
        assert sorted(i["name"] for i in mcd.request("list")["instances"] if i["kind"] == "server") == ["alpha", "web"]
        # Removed from elsewhere (mcctl server remove --name web): the tab
        # moves to what mcd has, and keeps no ghost of web to start again.
        mcd.request("server.remove", name="web")
        qtbot.waitUntil(lambda: tab.name == "alpha", timeout=WAIT)
        assert tab.picker.findText("web") < 0 and app.server_action.text() == "Start server alpha"
    finally:
        app.close()


def test_a_status_that_comes_after_the_tab_moved_on_lands_on_its_own_instance(gui: TrayApp) -> None:
    """A create or status reply names its instance: applied to whatever the
    tab shows when it arrives, a reply for one just left marked another."""
    tab = gui.window.server_tab
    assert tab.name == "default"
    tab._status_reply({"kind": "server", "name": "left-behind", "phase": "listening", "port": 4321})
    assert gui.model.instance("server", "left-behind").status["port"] == 4321
    assert "port" not in gui.model.instance("server", "default").status


def test_a_status_read_before_events_the_window_has_shown_does_not_undo_them(
    qtbot: QtBot, gui: TrayApp, mcd: Mcd
) -> None:
    """A status answer and the events come on two connections: a status read
    before clients connected, answered after their events reached the
    window, once emptied the list of what those events had added (1,000
    clients connecting while the tab picked its server: 951 rows for good).
    The window applies the newer events again on top of it."""
    mcd.request("server.set", key="interface", value="127.0.0.1")
    mcd.request("server.set", key="port", value=0)
    port = mcd.request("server.start")["port"]
    gui.window.tabs.setCurrentIndex(1)
    tab = gui.window.server_tab
    read_before = mcd.request("server.status")  # read now, "answered" below, after the events
    assert read_before["clients"] == []
    clients = [Client(address="127.0.0.1", port=port, client_id=f"early-{i}") for i in range(3)]
    try:
        for client in clients:
            client.connect()
        qtbot.waitUntil(lambda: tab.clients.count() == 3, timeout=WAIT)
        tab._status_reply(read_before)
        rows = sorted(tab.clients.item(i).text() for i in range(tab.clients.count()))
        assert rows == ["early-0", "early-1", "early-2"]
    finally:
        for client in clients:
            client.disconnect()


def ticks_into_a_hosted_server(mcd: Mcd, count: int) -> None:
    """``count`` messages from a library client into mcd's default server,
    each an event in mcd's ring."""
    mcd.request("server.set", key="interface", value="127.0.0.1")
    port = mcd.request("server.start")["port"]
    with Client(address="127.0.0.1", port=port, client_id="chatty") as client:
        for n in range(count):
            client.send(Message("tick", {"n": n}))
        wait_until(lambda: mcd.request("daemon.status")["last_seq"] >= count, what=f"{count} message events in mcd")


def test_a_long_history_is_drawn_in_one_go_not_a_line_at_a_time(qtbot: QtBot, mcd: Mcd) -> None:
    """At start the window is sent mcd's recent events for its logs: drawn
    a line at a time, 7,000 of them held it still for 0.7 s."""
    ticks_into_a_hosted_server(mcd, 800)
    app = TrayApp(str(mcd.socket))
    qtbot.addWidget(app.window)
    app.window.tabs.setCurrentIndex(1)
    app.window.show()  # laid out: the scroll position is a visible log's
    log = app.window.server_tab.log
    draws: list[str] = []
    for method in ("appendPlainText", "setPlainText"):
        original = getattr(log, method)
        setattr(log, method, lambda text, original=original, method=method: (draws.append(method), original(text)))
    try:
        qtbot.waitUntil(lambda: 'tick {"n": 799}' in log.toPlainText(), timeout=WAIT)
        shown = app.model.instance("server", "default").log
        assert log.toPlainText() == "\n".join(shown) and len(shown) == LOG_LINES
        assert len(draws) <= 10, draws  # a few batches, not 800 lines
        scroll = log.verticalScrollBar()
        assert scroll.maximum() > 0 and scroll.value() == scroll.maximum()  # the newest lines in sight
    finally:
        app.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_loop_runs_quits_on_its_first_turn(qtbot: QtBot, signum: int) -> None:
    """mctray installs its handlers before building the window, so a Ctrl-C
    may come before ``exec``: it must not be lost (``exit`` then is a no-op)."""
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    restore = quit_on_signals(app)
    guard = QTimer()  # a lost signal fails the test instead of hanging it
    guard.setSingleShot(True)
    guard.timeout.connect(lambda: app.exit(-1))
    try:
        signal.raise_signal(signum)  # as if it came while the window was being built
        guard.start(WAIT)
        assert app.exec() == 128 + signum
    finally:
        guard.stop()
        restore()


def test_many_hosted_clients_losing_their_server_raise_three_notifications_and_one_that_counts(
    qtbot: QtBot, gui: TrayApp, mcd: Mcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised: list[str] = []
    notify = gui.notify
    monkeypatch.setattr(gui, "notify", lambda notice: (raised.append(notice.title), notify(notice)))
    with Server(interface="127.0.0.1", port=0) as server:
        names = [f"many{n}" for n in range(8)]
        with mcd.client() as control:
            for name in names:
                for key, value in (("address", "127.0.0.1"), ("port", server.port), ("client_id", name)):
                    control.request("client.set", name=name, key=key, value=value)
                control.request("client.connect", name=name, wait=True, timeout=10)
        qtbot.waitUntil(lambda: all(gui.model.instance("client", n).phase == "connected" for n in names), timeout=WAIT)
    # The server stopped: each hosted client heard it shut down.
    qtbot.waitUntil(lambda: any(title.startswith("5 more: server shut down") for title in raised), timeout=WAIT)
    shut = [title for title in raised if "server shut down" in title]
    assert len(shut) == 4 and all(title.endswith(": server shut down") for title in shut[:3])
    assert gui.last_notification is not None and gui.last_notification.title == "5 more: server shut down"
    held = gui.last_notification.text
    assert held.count("many") == 5 and held in gui.window.statusBar().currentMessage()


def test_a_send_waiting_for_room_holds_up_no_other_command_of_the_window(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """A Send to a full queue waits in mcd for room (up to 10 s). It went on
    the one connection of every command, so a Disconnect clicked meanwhile
    waited behind it, and the send then failed with "acknowledged nothing
    for 10 s"; now the sends have a connection of their own."""
    release = threading.Event()
    said: list[str] = []
    tab = gui.window.client_tab
    tab.status_message.connect(said.append)
    with Server(interface="127.0.0.1", port=0) as library_server:
        library_server.subscribe("message", lambda cid, m: release.wait(30))  # holds the acknowledgements back
        try:
            for key, value in (("address", "127.0.0.1"), ("port", library_server.port), ("max_queued", 2)):
                mcd.request("client.set", key=key, value=value)
            mcd.request("client.connect", wait=True)
            qtbot.waitUntil(tab.send_box.send.isEnabled, timeout=WAIT)
            set_text(qtbot, tab.send_box.subject.edit, "n")
            tab.send_box.payload.setPlainText("{}")
            for _ in range(3):
                qtbot.mouseClick(tab.send_box.send, Qt.MouseButton.LeftButton)
            qtbot.waitUntil(
                lambda: mcd.request("stats", kind="client")["instances"][0]["stats"]["senders_waiting"] == 1,
                timeout=WAIT,
            )
            qtbot.mouseClick(tab.disconnect_button, Qt.MouseButton.LeftButton)
            # Within 5 s: the send waits 10 s, so a Disconnect behind it is not done by then.
            qtbot.waitUntil(lambda: mcd.phase("client") == "disconnected", timeout=5_000)
            qtbot.waitUntil(lambda: any("not connected" in line for line in said), timeout=WAIT)
        finally:
            release.set()
    assert said.count("sent n to the server") == 2, said
    assert not any("acknowledged nothing" in line for line in said), said


def test_the_logs_show_mcds_recent_events_after_its_event_ring_has_turned(qtbot: QtBot) -> None:
    """The window asked for the history after event 0: once mcd had had
    more events than its ring keeps (10,000 by default, a few minutes of a
    busy server), that was out of the ring, the answer was a resync, and
    every log started empty."""
    mcd = Mcd(None, "--event-ring", "100").start()
    try:
        ticks_into_a_hosted_server(mcd, 300)
        status = mcd.request("daemon.status")
        assert status["first_seq"] == status["last_seq"] - 99  # the ring keeps its last 100
        app = TrayApp(str(mcd.socket))
        qtbot.addWidget(app.window)
        try:
            app.window.tabs.setCurrentIndex(1)
            log = app.window.server_tab.log
            qtbot.waitUntil(lambda: 'tick {"n": 299}' in log.toPlainText(), timeout=WAIT)
            assert "clientdisconnect" in log.toPlainText()
        finally:
            app.close()
    finally:
        mcd.close()


def test_a_full_log_stays_on_its_newest_line_as_events_keep_coming(qtbot: QtBot, gui: TrayApp, mcd: Mcd) -> None:
    """Lines appended to a log already at its 500 lost their place: with a
    thousand hosted clients coming back, the log stood still on lines from
    a second before, its newest out of sight below."""
    gui.window.resize(900, 700)
    gui.window.show()  # laid out: the scroll position is a visible log's
    gui.window.tabs.setCurrentIndex(1)
    mcd.request("server.set", key="interface", value="127.0.0.1")
    port = mcd.request("server.start")["port"]
    log = gui.window.server_tab.log
    scroll = log.verticalScrollBar()
    off_the_end: list[tuple[int, int]] = []

    def look() -> None:
        if scroll.value() != scroll.maximum():
            off_the_end.append((scroll.value(), scroll.maximum()))

    with Client(address="127.0.0.1", port=port, client_id="chatty") as client:
        for n in range(1200):
            client.send(Message("tick", {"n": n, "text": "a line long enough to wrap in the log's narrow column"}))
            if n % 100 == 99:
                qtbot.waitUntil(lambda n=n: f'"n": {n},' in log.toPlainText(), timeout=WAIT)
                look()
    assert log.blockCount() == LOG_LINES
    assert off_the_end == []
    # A line of the live figures wrapping takes height from the log: it keeps its end in sight.
    for height in (600, 650, 500):
        gui.window.resize(900, height)
        qtbot.waitUntil(lambda height=height: gui.window.height() == height, timeout=WAIT)
        QApplication.processEvents()
        look()
    assert off_the_end == []

    def wheel(notches: int) -> None:
        at = QPoint(10, 10)
        QApplication.sendEvent(
            log.viewport(),
            QWheelEvent(
                QPointF(at),
                QPointF(log.viewport().mapToGlobal(at)),
                QPoint(0, 0),
                QPoint(0, 120 * notches),
                Qt.MouseButton.NoButton,
                Qt.KeyboardModifier.NoModifier,
                Qt.ScrollPhase.NoScrollPhase,
                False,
            ),
        )

    def more(text: str) -> None:
        with Client(address="127.0.0.1", port=port, client_id="chatty") as client:
            client.send(Message("tick", {"n": text}))
            qtbot.waitUntil(lambda: f'"n": "{text}"' in log.toPlainText(), timeout=WAIT)
        QApplication.processEvents()

    # Scrolled up with the wheel to read, it stays there as lines come...
    wheel(5)
    up = scroll.value()
    assert up < scroll.maximum()
    more("while reading")
    assert scroll.value() < scroll.maximum()
    # ... and follows the newest lines again once scrolled back to the end.
    for _ in range(100):  # a wheel event moves a page at most
        wheel(-5)
        if scroll.value() == scroll.maximum():
            break
    assert scroll.value() == scroll.maximum()
    more("back at the end")
    assert scroll.value() == scroll.maximum()
