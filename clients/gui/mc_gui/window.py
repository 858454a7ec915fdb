"""The window: a daemon-down banner, a Client tab and a Server tab."""

from __future__ import annotations

import html
import itertools
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QColor, QFont, QFontDatabase, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mc_control.codes import (
    CLIENT_TUNING,
    LIVE_CLIENT_KEYS,
    LIVE_SERVER_KEYS,
    OPTIONAL_TUNING,
    SERVER_TUNING,
    ErrorCode,
    bind_fault,
)
from mc_control.events import printable

from . import viewmodel as vm
from .backend import SEND_WAIT, Backend, Failure, Reply

LEVEL_COLOURS = {
    "connected": "#2e7d32",
    "listening": "#2e7d32",
    "reconnecting": "#ef8f00",
    "connecting": "#ef8f00",
    "disconnecting": "#ef8f00",
    "failed": "#c62828",
    "down": "#c62828",
    "idle": "#757575",
    "disconnected": "#757575",
    "stopped": "#757575",
    "unconfigured": "#757575",
    "unknown": "#9e9e9e",
}


def dot_icon(level: str, size: int = 64) -> QIcon:
    """A filled circle in the level's colour (the tray's and the tabs' icon)."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(QColor(LEVEL_COLOURS.get(level, "#757575")))
    painter.setPen(QColor("#ffffff"))
    margin = size // 10
    painter.drawEllipse(margin, margin, size - 2 * margin, size - 2 * margin)
    if level in ("down", "failed"):
        painter.setPen(QColor("#ffffff"))
        font = QFont()
        font.setBold(True)
        font.setPixelSize(size // 2)
        painter.setFont(font)
        painter.drawText(pixmap.rect(), Qt.AlignmentFlag.AlignCenter, "!")
    painter.end()
    return QIcon(pixmap)


# One style for a field in every state, so an error only recolours the
# border (a style set only on error changed the field's height, and the
# rows below jumped), and a field that cannot change now looks it.
_FIELD_STYLE = (
    "QLineEdit {{ border: 1px solid {border}; border-radius: 3px; padding: 2px 4px; background: white; }}"
    " QLineEdit:read-only {{ background: #eeeeee; color: #616161; }}"
    # Greyed whole while mcd is down: white, with a dark hint, "any" and
    # "none" read as values typed in.
    " QLineEdit:disabled {{ background: #f5f5f5; color: #9e9e9e; placeholder-text-color: #bdbdbd; }}"
)


def error_label() -> QLabel:
    """The red line under a field that says what is wrong with it (hidden
    until there is something to say)."""
    label = QLabel()
    label.setStyleSheet("color: #c62828; font-size: 11px;")
    label.setWordWrap(True)
    label.hide()
    return label


def with_error_line(edit: QWidget, error: QLabel) -> QWidget:
    """A setting's control with its error line under it."""
    box = QWidget()
    # Only as tall as it needs: the error line comes and goes.
    box.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(2)
    layout.addWidget(edit)
    layout.addWidget(error)
    return box


class CheckField:
    """A limit or timer that is on or off (``inline_callbacks``): a check
    box where the others have a line edit, so nobody has to type "true".
    It answers as a ``Field`` does, its ``text()`` "true" or "false"."""

    def __init__(self, label: str) -> None:
        self.edit = QCheckBox(label)
        self.error = error_label()
        self.dirty = False
        self.edit.toggled.connect(self._edited)

    def _edited(self, _checked: bool) -> None:
        self.dirty = True

    def set_error(self, message: str | None) -> None:
        self.error.setText(message or "")
        self.error.setVisible(bool(message))

    def lock(self, locked: bool, why: str) -> None:
        self.edit.setEnabled(not locked)
        self.edit.setToolTip(why if locked else "")

    def fill(self, value: object) -> None:
        """Show the daemon's value, unless the person has changed the box."""
        if self.dirty:
            return
        self.edit.blockSignals(True)  # the daemon's value is no edit
        try:
            self.edit.setChecked(value in (True, "true"))
        finally:
            self.edit.blockSignals(False)

    def text(self) -> str:
        return "true" if self.edit.isChecked() else "false"

    def widget(self) -> QWidget:
        return with_error_line(self.edit, self.error)


class Field:
    """A line edit with its inline error message under it."""

    def __init__(self, placeholder: str = "", on_edit: Callable[[], None] | None = None) -> None:
        self.edit = QLineEdit()
        self.edit.setStyleSheet(_FIELD_STYLE.format(border="#9e9e9e"))
        self.edit.setPlaceholderText(placeholder)
        self.error = error_label()
        self.dirty = False
        if on_edit is not None:
            self.edit.textEdited.connect(lambda _text: on_edit())
        self.edit.textEdited.connect(self._edited)

    def _edited(self, _text: str) -> None:
        self.dirty = True
        self.set_error(None)

    def set_error(self, message: str | None) -> None:
        if message:
            self.error.setText(message)
            self.error.show()
            self.edit.setStyleSheet(_FIELD_STYLE.format(border="#c62828"))
        else:
            self.error.hide()
            self.edit.setStyleSheet(_FIELD_STYLE.format(border="#9e9e9e"))

    def lock(self, locked: bool, why: str) -> None:
        """Read-only (and looking it, by the window's style) while ``locked``."""
        self.edit.setReadOnly(locked)
        self.edit.setToolTip(why if locked else "")

    def fill(self, value: object) -> None:
        """Show the daemon's value, unless the person is editing this field."""
        if self.dirty:
            return
        text = "" if value is None else str(value)
        if text != self.edit.text():
            self.edit.setText(text)
            # setText leaves the cursor at the end, so a value longer than
            # its field showed its end: a client id without the characters
            # a person knows it by.  Its start, as a form shows a value.
            self.edit.setCursorPosition(0)

    def text(self) -> str:
        return self.edit.text()

    def widget(self) -> QWidget:
        return with_error_line(self.edit, self.error)


def scrolling(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    return area


#: What the tabs hold per setting: a line edit, or a check box for on/off.
AnyField = Field | CheckField


def fill_secret(field: Field, value: object) -> None:
    """A secret is never shown: the field says whether one is set."""
    if not field.dirty:
        field.edit.clear()
        field.edit.setPlaceholderText("set (type to replace, clear and apply to remove)" if value else "none")


def field_callbacks(field: AnyField) -> tuple[Reply, Failure]:
    """A setting's request outcome, shown on its field."""

    def done(_result: dict[str, Any]) -> None:
        field.dirty = False

    def failed(_code: str, message: str, _details: Any = None) -> None:
        field.set_error(message)

    return done, failed


class SettingsThen:
    """Settings sent one by one (``set``), then an action (connect, start)
    once mcd took every one, and not at all if it refused one: the refusal
    is shown on its field, and the instance must not start with the old
    value."""

    def __init__(
        self, backend: Backend, command: str, name: str, then: Callable[[], None] | None, what: str, refused: Failure
    ) -> None:
        self._backend = backend
        self._command = command
        self._name = name
        self._then = then
        #: Told, with ``what`` the action was, when a refusal stopped it.
        self._what = what
        self._refused = refused
        self._pending = 0
        self._failed = False
        self._closed = False

    def set(self, key: str, value: object, shown: tuple[Reply, Failure]) -> None:
        """Send one setting; ``shown`` is what its reply does to its field."""
        on_done, on_failed = shown
        self._pending += 1

        def done(result: dict[str, Any]) -> None:
            on_done(result)
            self._pending -= 1
            self._settle()

        def failed(code: str, message: str, details: Any = None) -> None:
            on_failed(code, message, details)
            self._failed = True
            self._pending -= 1
            self._settle()

        self._backend.request(self._command, {"name": self._name, "key": key, "value": value}, done, failed)

    def close(self) -> None:
        """Every setting is sent: the action follows their replies."""
        self._closed = True
        self._settle()

    def _settle(self) -> None:
        if not self._closed or self._pending:
            return
        then, self._then = self._then, None
        if then is None:
            return
        if self._failed:
            self._refused("settings", f"not {self._what}: mcd refused a setting (marked in red)", None)
        else:
            then()


class SendBox(QGroupBox):
    """Subject and JSON payload, validated before anything is sent."""

    def __init__(self, title: str) -> None:
        super().__init__(title)
        self.subject = Field("subject, e.g. echo")
        self.payload = QPlainTextEdit()
        self.payload.setPlaceholderText('payload: a JSON object, e.g. {"message": "hello"}')
        self.payload.setFixedHeight(64)
        self.payload_error = error_label()
        self.payload.textChanged.connect(self.payload_error.hide)
        self.target = QComboBox()
        self.send = QPushButton("Send")
        #: Sends the message as a request and logs the reply.
        self.ask = QPushButton("Request")
        self.ask.setToolTip("send as a request: the reply (or why none came) appears in the log")
        outer = QVBoxLayout(self)
        form = QFormLayout()
        self.target_row = QLabel("To")
        form.addRow(self.target_row, self.target)
        form.addRow("Subject", self.subject.widget())
        form.addRow("Payload", self.payload)
        outer.addLayout(form)
        # The payload's error shares the button's row, and the subject's
        # keeps its room while hidden: the Send button never jumps.
        self.payload_error.setWordWrap(True)
        for label, lines in ((self.subject.error, 1), (self.payload_error, 2)):
            keep = label.sizePolicy()
            keep.setRetainSizeWhenHidden(True)
            label.setSizePolicy(keep)
            label.setFixedHeight(lines * label.fontMetrics().lineSpacing() + 2)
            label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        row = QHBoxLayout()
        row.addWidget(self.payload_error, 1)
        row.addWidget(self.ask, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.send, 0, Qt.AlignmentFlag.AlignTop)
        outer.addLayout(row)
        outer.addStretch(1)  # keep the rows together when the box is tall

    def message(self) -> tuple[str, dict[str, Any]] | None:
        subject, subject_error = vm.check_subject(self.subject.text())
        payload, payload_error = vm.check_payload(self.payload.toPlainText())
        self.subject.set_error(subject_error)
        if payload_error:
            self.payload_error.setText(payload_error)
            self.payload_error.show()
        if subject is None or payload is None:
            return None
        return subject, payload


#: How often the shown tab's live figures are asked for.
FIGURES_INTERVAL_MS = 1000


class RateGraph(QWidget):
    """Messages per second over the last minutes: sent (blue), received
    (green), scaled to the highest rate shown."""

    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[float, float]] = []
        self.setFixedHeight(48)
        self.setMinimumWidth(120)
        self.setToolTip("messages per second over the last five minutes: sent (blue), received (green)")

    def show_rates(self, points: list[tuple[float, float]]) -> None:
        self.points = points
        self.update()

    def paintEvent(self, _event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        width, height = self.width(), self.height()
        painter.fillRect(0, 0, width, height, QColor("#fafafa"))
        painter.setPen(QColor("#dddddd"))
        painter.drawRect(0, 0, width - 1, height - 1)
        points = self.points[-vm.RATE_SAMPLES :]
        if len(points) < 2:
            return
        top = max(1.0, *(max(p) for p in points))
        step = (width - 2) / (vm.RATE_SAMPLES - 1)
        start = width - 1 - step * (len(points) - 1)
        for which, color in ((0, "#1e88e5"), (1, "#43a047")):
            painter.setPen(QColor(color))
            for i in range(1, len(points)):
                y0 = height - 2 - (height - 4) * points[i - 1][which] / top
                y1 = height - 2 - (height - 4) * points[i][which] / top
                painter.drawLine(int(start + step * (i - 1)), int(y0), int(start + step * i), int(y1))


class FiguresBox(QGroupBox):
    """The instance's live figures (docs/STATS.md) and their rate graph."""

    def __init__(self) -> None:
        super().__init__("Live figures")
        self.text = QLabel("no figures yet")
        self.text.setWordWrap(True)
        self.graph = RateGraph()
        layout = QHBoxLayout(self)
        layout.addWidget(self.text, 3)
        layout.addWidget(self.graph, 2)


class LogView(QPlainTextEdit):
    """A log that keeps its newest line in sight until its reader scrolls
    away from it, and again once they scroll back to the end.

    Qt keeps the top line in place when the view loses height (a live
    figures line that wraps takes it) or lines come while its layout
    catches up: with a thousand hosted clients coming back, the log stood
    on lines from seconds before.  Whether to follow is decided by the
    reader's own scrolling (the scroll bar's actions: wheel, drag, keys),
    not by the bar's value, which Qt moves on its own as lines are cut
    from the top."""

    def __init__(self) -> None:
        super().__init__()
        self._follow = True
        bar = self.verticalScrollBar()
        bar.actionTriggered.connect(lambda _action: setattr(self, "_follow", bar.sliderPosition() >= bar.maximum()))
        bar.rangeChanged.connect(lambda _low, high: bar.setValue(high) if self._follow else None)

    def show_all(self, text: str) -> None:
        """Show ``text`` in place of what was shown, its end in sight."""
        self._follow = True
        self.setPlainText(text)
        self._to_end()

    def add(self, text: str) -> None:
        """Add ``text``'s lines at the end; in sight if the end was, however
        the reader got back to it."""
        bar = self.verticalScrollBar()
        self._follow = self._follow or bar.value() >= bar.maximum()
        self.appendPlainText(text)
        if self._follow:
            self._to_end()

    def _to_end(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())


class InstanceTab(QWidget):
    """What the Client and Server tabs share: the instance picker, the state
    line, a log."""

    kind = ""
    status_message = Signal(str)
    #: The tab's ``auth_token`` field (each tab makes its own).
    token: Field

    def __init__(self, model: vm.ViewModel, backend: Backend) -> None:
        super().__init__()
        self.model = model
        self.backend = backend
        self.name = "default"
        #: The tab's instance was chosen, by a person or by the first snapshot.
        self._name_settled = False
        self.picker = QComboBox()
        #: What the picker lists (only ``refresh`` changes it): compared as
        #: a list, since asking Qt for hundreds of items costs more.
        self._picker_names: list[str] = []
        self.picker.setEditable(True)
        self.picker.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.picker.setMinimumWidth(160)
        self.picker.setToolTip("Pick an instance, or type a new name and press Enter to create it")
        self.picker.activated.connect(lambda _i: self._picked(self.picker.currentText()))
        line_edit = self.picker.lineEdit()
        assert line_edit is not None
        line_edit.returnPressed.connect(lambda: self._picked(self.picker.currentText()))
        self.picker_error = error_label()
        self.state = QLabel()
        self.state.setTextFormat(Qt.TextFormat.RichText)
        self.log = LogView()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(vm.LOG_LINES)
        self.log.setPlaceholderText("events and messages of this instance appear here")
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log.setMinimumHeight(80)
        # It takes the room that is left, and asks for none: a preferred
        # height here would push the tab past the window into its scroll bar.
        self.log.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Ignored)
        self._log_key: tuple[str, str] | None = None
        #: Lines of the shown instance's log added since it was last drawn.
        self._log_behind = 0
        self.figures = FiguresBox()
        self._polling = False

    def lay_out(self, settings: QWidget | QLayout, send_box: QGroupBox) -> None:
        """The tab from top to bottom: the picker and the state; ``settings``
        beside a column of ``send_box`` over the log, which takes the height
        the settings leave there (so it shows at the window's first size,
        without scrolling); and the live figures across."""
        layout = QVBoxLayout(self)
        layout.addLayout(self.header())
        top = QHBoxLayout()
        if isinstance(settings, QLayout):
            top.addLayout(settings, 1)
        else:
            top.addWidget(settings, 1)
        right = QVBoxLayout()
        # The send box keeps its own height; the log gets what is left.
        send_box.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        right.addWidget(send_box)
        log_box = QGroupBox("Log")
        QVBoxLayout(log_box).addWidget(self.log)
        right.addWidget(log_box, 1)
        top.addLayout(right, 1)
        layout.addLayout(top, 1)
        layout.addWidget(self.figures)

    def header(self) -> QVBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel(f"{self.kind.capitalize()} instance"))
        row.addWidget(self.picker)
        row.addStretch(1)
        row.addWidget(self.state)
        # A refused name's error on a line of its own: beside the picker it
        # and the state's detail widened the tab past the window.
        header = QVBoxLayout()
        header.setSpacing(2)
        header.addLayout(row)
        header.addWidget(self.picker_error)
        return header

    def settle_name(self) -> None:
        """The daemon's first snapshot came: show the instance it suggests
        (``ViewModel.first_name``), unless one was picked already."""
        if not self._name_settled:
            self._name_settled = True
            self._show(self.model.first_name(self.kind))

    def instance_removed(self, name: str) -> None:
        """mcd removed ``name``: a tab showing it moves to what the daemon
        has (``ViewModel.first_name``), rather than keep a ghost of it that
        a click (Start, Connect) would create again."""
        if name == self.name:
            self._show(self.model.first_name(self.kind))

    def _show(self, name: str) -> None:
        if name != self.name:
            self.name = name
            for field in self.fields():
                field.dirty = False
                field.set_error(None)
            self._log_key = None

    def _picked(self, text: str) -> None:
        name, error = vm.check_instance_name(text)
        if error:
            self.picker_error.setText(error)
            self.picker_error.show()
            return
        self.picker_error.hide()
        assert name is not None
        self._name_settled = True
        if name != self.name:
            self._show(name)
            # Naming an instance creates it in the daemon (reads never do).
            self.backend.request(f"{self.kind}.create", {"name": name}, self._status_reply, self._create_failed)
        self.refresh()

    def _create_failed(self, code: str, message: str, _details: Any = None) -> None:
        if code == "exists":  # picked an existing one: just show it
            self.backend.request(f"{self.kind}.status", {"name": self.name}, self._status_reply, self.report_error)
        else:
            self.report_error(code, message)

    def _status_reply(self, status: dict[str, Any]) -> None:
        # The instance the status is of: the tab may show another by now.
        self.model.apply_status(self.kind, status.get("name", self.name), status)
        self.refresh()

    def fields(self) -> list[AnyField]:
        return []

    def poll_figures(self) -> None:
        """Ask mcd for this instance's live figures (one request at a time)."""
        if self._polling:
            return
        self._polling = True
        kind, name = self.kind, self.name

        def got(result: dict[str, Any]) -> None:
            self._polling = False
            for entry in result["instances"]:
                if (entry["kind"], entry["name"]) != (kind, name):
                    continue
                figures, clients, seq = entry["stats"], entry.get("clients"), result.get("seq")
                if self.model.apply_stats(kind, name, figures, time.monotonic(), clients, seq):
                    self.refresh()  # a client's connection broke or came back
            self.show_figures()
            if kind == "server" and (self.current().status.get("settings") or {}).get("cluster"):
                # Clients of other nodes come and go with no event here: look.
                self.backend.request("server.status", {"name": name}, self._status_reply, failed)

        def failed(code: str, message: str, _details: Any = None) -> None:
            self._polling = False  # not_found while the instance is made, or mcd away: the next poll tells

        self.backend.request("stats", {"kind": kind, "name": name}, got, failed)

    def show_figures(self) -> None:
        inst = self.current()
        rates = inst.rates()
        self.figures.text.setText(vm.describe_figures(self.kind, inst.figures, rates))
        self.figures.graph.show_rates(rates)

    def report_error(self, code: str, message: str, _details: Any = None) -> None:
        self.status_message.emit(f"{self.kind} {self.name}: {message}")

    def ask(self, params: dict[str, Any], to: str) -> None:
        """Send a request (``params`` of ``client.request`` or
        ``server.request``); its reply, or why none came, goes to the log."""
        name, subject = self.name, params["subject"]
        self.status_message.emit(f"asked {to}: {subject}")

        def replied(result: dict[str, Any]) -> None:
            self._logged(name, vm.describe_reply(subject, to, result))

        def failed(code: str, message: str, _details: Any = None) -> None:
            self._logged(name, vm.describe_request_failure(subject, to, code, message))
            self.report_error(code, message)

        self.backend.ask(f"{self.kind}.request", {"name": name, **params}, replied, failed)

    def _logged(self, name: str, line: str) -> None:
        self.model.log_line(self.kind, name, line)
        self.log_grew(self.kind, name)
        self._draw_log(self.current())

    def current(self) -> vm.InstanceState:
        return self.model.instance(self.kind, self.name)

    def refresh(self) -> None:
        names = self.model.names(self.kind)
        if names != self._picker_names:
            self.picker.blockSignals(True)
            self.picker.clear()
            self.picker.addItems(names)
            self.picker.blockSignals(False)
            self._picker_names = names
        if self.picker.currentText() != self.name:
            self.picker.setCurrentText(self.name)
        inst = self.current()
        colour = LEVEL_COLOURS.get(inst.phase, "#757575")
        detail = "mcd is not running" if inst.stale else inst.status.get("state_name") or ""
        self.state.setText(
            f"<b style='color:{colour}'>&#9679; {inst.phase}</b>"
            + (f" <span style='color:#555'>({detail})</span>" if detail else "")
        )
        self._draw_log(inst)
        self.update_controls(inst)

    def log_grew(self, kind: str, name: str) -> None:
        """A line was added to an instance's log (the model's): this tab
        draws those of its own at its next refresh, after each batch of
        events, so that a history of thousands is drawn at once (a line at
        a time, mcd's 7,000 recent events held the window still for 0.7 s
        at start)."""
        if (kind, name) == (self.kind, self.name):
            self._log_behind += 1

    def _draw_log(self, inst: vm.InstanceState) -> None:
        key = (self.kind, self.name)
        behind, self._log_behind = self._log_behind, 0
        if self._log_key != key or (behind and behind >= len(inst.log)):
            self.log.show_all("\n".join(inst.log))
            self._log_key = key
        elif behind:
            self.log.add("\n".join(itertools.islice(inst.log, len(inst.log) - behind, None)))

    def update_controls(self, inst: vm.InstanceState) -> None:
        pass

    # -- limits and timers: the same section on both tabs ---------------------

    def tuning_section(self, tuning: dict[str, str]) -> QWidget:
        """A section, folded away at first, with a field per limit or timer
        (``mc_control.codes``' CLIENT_TUNING or SERVER_TUNING)."""
        self.tuning_kinds = tuning
        self.tuning: dict[str, AnyField] = {}
        body = QWidget()
        form = QFormLayout(body)
        form.setContentsMargins(0, 0, 0, 0)
        for key, kind in tuning.items():
            field: AnyField
            if kind == "bool":
                field = CheckField("on")
            else:
                hint = '{"client id": "token", ...}' if kind == "secrets" else ""
                field = Field(hint or ("none: no limit" if key in OPTIONAL_TUNING else "a number"))
                if kind == "secrets":
                    field.edit.setEchoMode(QLineEdit.EchoMode.Password)
            self.tuning[key] = field
            setattr(self, key, field)  # like the other settings: tab.max_queued
            form.addRow(key, field.widget())
        body.hide()
        toggle = QToolButton()
        toggle.setText("Limits and timers")
        toggle.setCheckable(True)
        toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        toggle.setArrowType(Qt.ArrowType.RightArrow)
        toggle.setAutoRaise(True)

        def fold(shown: bool) -> None:
            body.setVisible(shown)
            toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

        toggle.toggled.connect(fold)
        self.tuning_toggle = toggle
        section = QWidget()
        layout = QVBoxLayout(section)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(toggle, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(body)
        return section

    def fill_tuning(self, settings: dict[str, Any]) -> None:
        for key, field in self.tuning.items():
            if isinstance(field, Field) and self.tuning_kinds[key] == "secrets":
                fill_secret(field, settings.get(key))
            else:
                field.fill(vm.shown_tuning(settings.get(key)))

    def tuning_changes(self, current: dict[str, Any]) -> list[tuple[str, object, AnyField]] | None:
        """The limits and timers changed here; None (errors shown) when one is not valid."""
        changes: list[tuple[str, object, AnyField]] = []
        ok = True
        for key, field in self.tuning.items():
            kind = self.tuning_kinds[key]
            if kind == "secrets" and not field.dirty:
                continue  # a secret is only ever sent, never shown
            if not field.text().strip() and (key not in current or key not in OPTIONAL_TUNING):
                field.set_error(None)
                continue  # nothing known or typed here: leave it as it is
            value, error = vm.check_tuning(key, kind, field.text(), key in OPTIONAL_TUNING)
            field.set_error(error)
            if error is not None:
                ok = False
                self.tuning_toggle.setChecked(True)  # show what is wrong
            elif key not in current or value != current[key] or kind == "secrets":
                changes.append((key, value, field))
            else:
                field.dirty = False
        return changes if ok else None

    def lock_fields(self, running: bool, live: frozenset[str], why: str) -> None:
        """Fields read-only while the instance runs, but those of the
        settings it takes live (``live``: mc_control.codes)."""
        for field in self.fields():
            field.lock(running and self.key_of(field) not in live, why)

    def key_of(self, field: AnyField) -> str | None:
        """The setting a field shows, where lock_fields needs it: the token
        (both tabs have one) and the limits and timers."""
        if field is self.token:
            return "auth_token"
        return next((key for key, shown in self.tuning.items() if shown is field), None)

    def applied(self, changes: list[str]) -> Callable[[], None]:
        """What Apply says once mcd took every change."""
        return lambda: self.status_message.emit(
            f"{self.kind} {self.name}: applied {', '.join(changes)}" if changes else "nothing to apply"
        )


class ClientTab(InstanceTab):
    kind = "client"
    #: Phases in which the client runs: Disconnect, not Connect.
    RUNNING = ("connected", "connecting", "reconnecting", "disconnecting")
    #: Phases in which only the settings the client takes live may change.
    #: Not while it makes its first connection: it has no session yet, and
    #: mcd takes any setting and starts connecting again with it (the fix
    #: its failed attempts asked for, a tls_ca or a port).
    LOCKED = ("connected", "reconnecting", "disconnecting")

    def __init__(self, model: vm.ViewModel, backend: Backend) -> None:
        super().__init__(model, backend)
        self.address = Field("host name or IP address, e.g. 127.0.0.1")
        self.port = Field("1-65535")
        self.client_id = Field("random unless you type one (unique per server)")
        self.interface = Field("any (or an IP address, or an interface name such as lo)")
        self.bind_port = Field("any")
        self.tls = QCheckBox("Use TLS")
        self.tls_verify = QCheckBox("Verify the server")
        self.tls_verify.setToolTip("Check the server's certificate and name (off: encryption without identity)")
        #: The check boxes by setting, and those changed here but not sent yet.
        self.toggles = {"tls": self.tls, "tls_verify": self.tls_verify}
        self.dirty_toggles: set[str] = set()
        for key, box in self.toggles.items():
            box.toggled.connect(lambda _on, key=key: self.dirty_toggles.add(key))
        self.tls_ca = Field("CA file to verify the server (default: the system's)")
        self.tls_hostname = Field("name the certificate must show (default: the address)")
        self.tls_cert = Field("PEM certificate, if the server asks for one")
        self.tls_key = Field("PEM private key of that certificate")
        self.token = Field("none")
        self.token.edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.servers = Field("none; or a cluster's nodes, tried in turn: host:port,host:port")
        self.generate = QPushButton("Generate")
        self.generate.setToolTip("Make a fresh random client id")
        self.generate.clicked.connect(self._generate)
        self.apply_button = QPushButton("Apply")
        self.connect_button = QPushButton("Connect")
        self.disconnect_button = QPushButton("Disconnect")
        self.apply_button.clicked.connect(self._apply_clicked)
        self.connect_button.clicked.connect(self.connect_client)
        self.disconnect_button.clicked.connect(self.disconnect_client)
        self.last_close = QLabel()
        self.last_close.setStyleSheet("color: #555;")
        self.last_close.setWordWrap(True)

        settings = QGroupBox("Connection")
        form = QFormLayout(settings)
        form.addRow("Address", self.address.widget())
        form.addRow("Port", self.port.widget())
        id_row = QHBoxLayout()
        id_row.addWidget(self.client_id.widget(), 1)
        id_row.addWidget(self.generate, 0, Qt.AlignmentFlag.AlignTop)
        form.addRow("Client id", id_row)
        form.addRow("Interface", self.interface.widget())
        form.addRow("Bind port", self.bind_port.widget())
        security = QHBoxLayout()
        security.addWidget(self.tls)
        security.addWidget(self.tls_verify)
        security.addStretch(1)
        form.addRow("Security", security)
        form.addRow("TLS CA file", self.tls_ca.widget())
        form.addRow("TLS server name", self.tls_hostname.widget())
        form.addRow("TLS certificate", self.tls_cert.widget())
        form.addRow("TLS key", self.tls_key.widget())
        form.addRow("Token", self.token.widget())
        form.addRow("Servers", self.servers.widget())
        form.addRow(self.tuning_section(CLIENT_TUNING))
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.connect_button)
        buttons.addWidget(self.disconnect_button)
        form.addRow(buttons)
        # A row of its own, the form's width: beside the buttons a reason
        # such as a certificate error was cut off after two lines.
        form.addRow(self.last_close)

        self.send_box = SendBox("Send to the server")
        self.send_box.target_row.hide()
        self.send_box.target.hide()
        self.send_box.send.clicked.connect(self.send_message)
        self.send_box.ask.clicked.connect(self.request_message)

        self.lay_out(settings, self.send_box)

    def fields(self) -> list[AnyField]:
        return [
            self.address,
            self.port,
            self.client_id,
            self.interface,
            self.bind_port,
            self.tls_ca,
            self.tls_hostname,
            self.tls_cert,
            self.tls_key,
            self.token,
            self.servers,
            *self.tuning.values(),
        ]

    def field_for(self, key: str) -> AnyField:
        return self.token if key == "auth_token" else getattr(self, key)

    def _generate(self) -> None:
        self.client_id.edit.setText(vm.new_client_id())
        self.client_id.dirty = True
        self.client_id.set_error(None)

    def update_controls(self, inst: vm.InstanceState) -> None:
        settings = inst.status.get("settings") or {}
        self.address.fill(settings.get("address"))
        self.port.fill(settings.get("port") or "")
        self.client_id.fill(settings.get("client_id"))
        self.interface.fill(settings.get("interface"))
        self.bind_port.fill(settings.get("bind_port"))
        for key in ("tls_ca", "tls_hostname", "tls_cert", "tls_key", "servers"):
            self.field_for(key).fill(settings.get(key))
        fill_secret(self.token, settings.get("auth_token"))
        self.fill_tuning(settings)
        defaults = {"tls": False, "tls_verify": True}
        running = inst.phase in self.RUNNING
        locked = inst.phase in self.LOCKED
        for key, box in self.toggles.items():
            if key not in self.dirty_toggles:  # what the user clicked stays until applied
                box.blockSignals(True)
                box.setChecked(bool(settings.get(key, defaults[key])))
                box.blockSignals(False)
            box.setEnabled(not locked)
        self.lock_fields(locked, LIVE_CLIENT_KEYS, "disconnect to change this")
        self.generate.setEnabled(not locked)
        self.apply_button.setToolTip(
            "Apply the limits and timers to the running client (the rest: disconnect first)" if locked else ""
        )
        self.connect_button.setEnabled(not running)
        self.disconnect_button.setEnabled(running)
        self.send_box.send.setEnabled(inst.phase in ("connected", "reconnecting"))
        self.send_box.ask.setEnabled(inst.phase in ("connected", "reconnecting"))
        self.show_last_close(inst)

    def show_last_close(self, inst: vm.InstanceState) -> None:
        reason = inst.status.get("last_close_reason")
        self.last_close.setText(f"Last closed: {printable(reason)}" if reason and inst.phase != "connected" else "")

    def show_figures(self) -> None:
        super().show_figures()
        self.show_last_close(self.current())  # the figures bring the latest attempt's outcome

    def _apply_clicked(self) -> None:
        if self.current().phase in self.LOCKED:
            self.apply_live()
        else:
            self.apply()

    def apply_live(self) -> bool:
        """Send the limits and timers changed here to the running client
        (mcd takes them from their next use); False (nothing sent) on errors."""
        current = self.current().status.get("settings") or {}
        tuning = self.tuning_changes(current)
        if tuning is None:
            self.status_message.emit("fix the fields marked in red first")
            return False
        changes = [(key, tuned, field) for key, tuned, field in tuning if key in LIVE_CLIENT_KEYS]
        then = self.applied([key for key, _value, _field in changes])
        batch = SettingsThen(self.backend, "client.set", self.name, then, "applied", self.report_error)
        for key, tuned, field in changes:
            batch.set(key, tuned, field_callbacks(field))
        batch.close()
        return True

    def apply(self, then: Callable[[], None] | None = None) -> bool:
        """Validate every field, send what changed, then ``then`` once mcd
        took every setting (not at all if it refused one); False (nothing
        sent) on errors."""
        checks = {
            "address": (self.address, vm.check_address(self.address.text())),
            "port": (self.port, vm.check_port(self.port.text())),
            "client_id": (self.client_id, vm.check_client_id(self.client_id.text())),
            "bind_port": (self.bind_port, vm.check_optional_port(self.bind_port.text())),
        }
        servers = self.servers.text().strip() or None
        if servers is not None:  # they name address and port: the daemon fills those in
            del checks["address"], checks["port"]
        interface = self.interface.text().strip()
        if interface not in ("", "*") and not self.bind_port.text().strip():
            checks["bind_port"] = (self.bind_port, (None, "a bind port is needed with a specific interface"))
        ok = True
        for field, (_value, error) in checks.values():
            field.set_error(error)
            ok = ok and error is None
        current = self.current().status.get("settings") or {}
        tuning = self.tuning_changes(current)
        if not ok or tuning is None:
            self.status_message.emit("fix the fields marked in red first")
            return False
        values: dict[str, Any] = {key: value for key, (_f, (value, _e)) in checks.items()}
        values["interface"] = interface
        if values["client_id"] is None:
            del values["client_id"]  # keep the id the daemon gave the instance
        for key in ("tls_ca", "tls_hostname", "tls_cert", "tls_key"):
            values[key] = vm.setting_text(key, self.field_for(key).text())
        values["servers"] = servers
        if self.token.dirty:  # a token is only ever sent, never shown
            values["auth_token"] = self.token.text() or None
        batch = SettingsThen(self.backend, "client.set", self.name, then, "connecting", self.report_error)
        for key in sorted(self.dirty_toggles):
            batch.set(key, self.toggles[key].isChecked(), (lambda _r: None, self.report_error))
        self.dirty_toggles.clear()
        for key, value in values.items():
            if current.get(key) != value:
                batch.set(key, value, field_callbacks(self.field_for(key)))
            else:
                self.field_for(key).dirty = False
        for key, tuned, tuned_field in tuning:
            batch.set(key, tuned, field_callbacks(tuned_field))
        batch.close()
        return True

    def connect_client(self) -> None:
        self.apply(then=lambda: self.backend.request("client.connect", {"name": self.name}, None, self.report_error))

    def disconnect_client(self) -> None:
        self.backend.request("client.disconnect", {"name": self.name}, None, self.report_error)

    def send_message(self) -> None:
        message = self.send_box.message()
        if message is None:
            return
        subject, payload = message
        self.backend.send(
            "client.send",
            {"name": self.name, "subject": subject, "payload": payload, "timeout": SEND_WAIT},
            lambda _r: self.status_message.emit(f"sent {subject} to the server"),
            self.report_error,
        )

    def request_message(self) -> None:
        message = self.send_box.message()
        if message is not None:
            self.ask({"subject": message[0], "payload": message[1]}, "the server")


class ServerTab(InstanceTab):
    kind = "server"
    ALL = "All clients"

    def __init__(self, model: vm.ViewModel, backend: Backend) -> None:
        super().__init__(model, backend)
        self.interface = Field("all interfaces ('' or *), an IP address, localhost, or a name such as lo")
        self.port = Field("0 picks a free port")
        self.tls_cert = Field("PEM certificate: enables TLS")
        self.tls_key = Field("PEM private key")
        self.tls_ca = Field("none: any client; or a CA file: only clients with a certificate it signed")
        self.token = Field("none: any client may connect")
        self.token.edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.cluster = Field("none; or a Redis URL to act as one server with other nodes: redis://host:6379/0")
        self.node_id = Field("this node's name in the cluster (default: generated)")
        self.apply_button = QPushButton("Apply")
        self.apply_button.clicked.connect(self._apply_clicked)
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.start_server)
        self.stop_button.clicked.connect(self.stop_server)
        self.listening = QLabel()
        self.listening.setStyleSheet("color: #555;")

        settings = QGroupBox("Listening")
        form = QFormLayout(settings)
        form.addRow("Interface", self.interface.widget())
        form.addRow("Port", self.port.widget())
        form.addRow("TLS certificate", self.tls_cert.widget())
        form.addRow("TLS key", self.tls_key.widget())
        form.addRow("Client CA file", self.tls_ca.widget())
        form.addRow("Token", self.token.widget())
        form.addRow("Cluster (Redis)", self.cluster.widget())
        form.addRow("Node id", self.node_id.widget())
        form.addRow(self.tuning_section(SERVER_TUNING))
        buttons = QHBoxLayout()
        buttons.addWidget(self.listening, 1)
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        form.addRow(buttons)

        self.clients_box = clients_box = QGroupBox("Connected clients")
        clients_layout = QVBoxLayout(clients_box)
        self.clients = QListWidget()
        #: The rows it shows and the send box's targets (only
        #: ``update_controls`` changes them), as for the picker.
        self._client_rows: list[str] = []
        self._targets: list[str] = []
        self.clients.setMinimumHeight(60)
        # Like the log: the room that is left, never more than the window has.
        self.clients.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Ignored)
        self.no_clients = QLabel("No clients connected")
        self.no_clients.setStyleSheet("color: #757575;")
        self.kick_button = QPushButton("Disconnect client")
        self.kick_button.setToolTip("Close the selected client's connection; it does not reconnect by itself")
        self.kick_button.clicked.connect(self.kick)
        self.clients.itemSelectionChanged.connect(lambda: self.update_controls(self.current()))
        clients_layout.addWidget(self.clients)
        clients_layout.addWidget(self.no_clients)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.kick_button)
        clients_layout.addLayout(row)

        self.send_box = SendBox("Send")
        self.send_box.send.clicked.connect(self.send_message)
        self.send_box.ask.clicked.connect(self.request_message)

        left = QVBoxLayout()
        left.addWidget(settings)
        left.addWidget(clients_box, 1)
        self.lay_out(left, self.send_box)

    def fields(self) -> list[AnyField]:
        return [
            self.interface,
            self.port,
            self.tls_cert,
            self.tls_key,
            self.tls_ca,
            self.token,
            self.cluster,
            self.node_id,
            *self.tuning.values(),
        ]

    def update_controls(self, inst: vm.InstanceState) -> None:
        settings = inst.status.get("settings") or {}
        self.interface.fill(settings.get("interface"))
        self.port.fill(settings.get("port", 0))
        self.tls_cert.fill(settings.get("tls_cert"))
        self.tls_key.fill(settings.get("tls_key"))
        self.tls_ca.fill(settings.get("tls_ca"))
        self.cluster.fill(settings.get("cluster"))
        self.node_id.fill(settings.get("node_id"))
        fill_secret(self.token, settings.get("auth_token"))
        self.fill_tuning(settings)
        running = inst.phase == "listening"
        self.lock_fields(running, LIVE_SERVER_KEYS, "stop the server to change this")
        self.apply_button.setToolTip(
            "Apply the token and the limits and timers to the listening server (the rest: stop it first)"
            if running
            else "Keep these settings without starting"
        )
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        port = inst.status.get("port")
        self.listening.setText(f"Listening on port {port}" if running and port else inst.status.get("last_error") or "")
        clients = list(inst.status.get("clients") or [])
        nodes = inst.status.get("nodes") or {}
        self.clients_box.setTitle("Clients of the cluster" if settings.get("cluster") else "Connected clients")
        detached = set(inst.status.get("detached") or ())
        # In a cluster each row names the node that holds the client too.
        rows = [
            printable(
                f"{c}    node {nodes[c]}" if nodes.get(c) else f"{c}    detached (may resume)" if c in detached else c
            )
            for c in clients
        ]
        if rows != self._client_rows:
            selected = {i.data(Qt.ItemDataRole.UserRole) for i in self.clients.selectedItems()}
            # Quiet while it is rebuilt: a selection change calls this method,
            # which must not rebuild the list again halfway.
            self.clients.blockSignals(True)
            try:
                self.clients.clear()
                for client_id, row in zip(clients, rows, strict=True):
                    item = QListWidgetItem(row)
                    item.setData(Qt.ItemDataRole.UserRole, client_id)
                    self.clients.addItem(item)
                    item.setSelected(client_id in selected)
            finally:
                self.clients.blockSignals(False)
            self._client_rows = rows
        self.clients.setVisible(bool(clients))
        self.no_clients.setVisible(not clients)
        self.kick_button.setEnabled(bool(self.clients.selectedItems()))
        targets = ["*", *clients]
        if targets != self._targets:
            chosen = self.send_box.target.currentData()
            self.send_box.target.clear()
            # Each item holds the id it sends to, shown escaped (an id may
            # hold bidi controls), and "*" for all (no client's id).
            self.send_box.target.addItem(self.ALL, "*")
            for client_id in clients:
                self.send_box.target.addItem(printable(client_id), client_id)
            if chosen in targets:
                self.send_box.target.setCurrentIndex(targets.index(chosen))
            self._targets = targets
        self.send_box.send.setEnabled(running)
        self.send_box.ask.setEnabled(running)

    def _apply_clicked(self) -> None:
        self.apply()

    def start_server(self) -> None:
        self.apply(lambda: self.backend.request("server.start", {"name": self.name}, None, self._start_failed))

    def _start_failed(self, code: str, message: str, details: Any = None) -> None:
        """A start refused: a port taken or an interface not of this machine
        is said on its field, where it is changed (the status bar alone
        showed mcd's "[Errno 98] ... Address already in use")."""
        if code == ErrorCode.BIND_FAILED and (key := bind_fault(details)) is not None:
            self.interface.set_error(vm.BIND_FAULTS[key] if key == "interface" else None)
            self.port.set_error(vm.BIND_FAULTS[key] if key == "port" else None)
        self.report_error(code, message)

    def apply(self, then: Callable[[], None] | None = None) -> bool:
        """Validate the fields and send what changed (while listening, only
        what the server takes live: the token, most limits and timers), then
        ``then`` once mcd took every one (Start; without it, say what was
        applied); False (nothing sent) on errors."""
        running = self.current().phase == "listening"
        port, error = (None, None) if running else vm.check_port(self.port.text(), allow_zero=True)
        self.port.set_error(error)
        current = self.current().status.get("settings") or {}
        tuning = self.tuning_changes(current)
        if error or tuning is None:
            self.status_message.emit("fix the fields marked in red first")
            return False
        changes: list[tuple[str, object, Field]] = []
        if not running:
            changes += [
                ("interface", self.interface.text().strip(), self.interface),
                ("port", port, self.port),
                ("tls_cert", vm.setting_text("tls_cert", self.tls_cert.text()), self.tls_cert),
                ("tls_key", vm.setting_text("tls_key", self.tls_key.text()), self.tls_key),
                ("tls_ca", vm.setting_text("tls_ca", self.tls_ca.text()), self.tls_ca),
                ("cluster", self.cluster.text().strip() or None, self.cluster),
                ("node_id", self.node_id.text().strip() or None, self.node_id),
            ]
        if self.token.dirty:
            changes.append(("auth_token", self.token.text() or None, self.token))
        sent: list[tuple[str, object, AnyField]] = []
        for key, value, field in changes:
            if current.get(key) != value or key == "auth_token":
                sent.append((key, value, field))
            else:
                field.dirty = False
        # The tuning changes are only what changed already.
        sent += [change for change in tuning if not running or change[0] in LIVE_SERVER_KEYS]
        what = "starting"
        if then is None:
            then, what = self.applied([key for key, _value, _field in sent]), "applied"
        batch = SettingsThen(self.backend, "server.set", self.name, then, what, self.report_error)
        for key, value, sent_field in sent:
            batch.set(key, value, field_callbacks(sent_field))
        batch.close()
        return True

    def stop_server(self) -> None:
        self.backend.request("server.stop", {"name": self.name}, None, self.report_error)

    def kick(self) -> None:
        for item in self.clients.selectedItems():
            self.backend.request(
                "server.kick",
                {
                    "name": self.name,
                    "client_id": item.data(Qt.ItemDataRole.UserRole),
                    "reason": "disconnected from the tray",
                },
                None,
                self.report_error,
            )

    def send_message(self) -> None:
        message = self.send_box.message()
        if message is None:
            return
        subject, payload = message
        to = self.send_box.target.currentData() or "*"
        self.backend.send(
            "server.send",
            {"name": self.name, "to": to, "subject": subject, "payload": payload},
            lambda r: self.status_message.emit(f"sent {subject} to {'all clients' if to == '*' else to}"),
            self.report_error,
        )

    def request_message(self) -> None:
        message = self.send_box.message()
        if message is None:
            return
        target = self.send_box.target.currentData() or "*"
        if target == "*":
            self.send_box.payload_error.setText("a request goes to one client: pick it in To")
            self.send_box.payload_error.show()
            return
        self.ask({"subject": message[0], "payload": message[1], "to": target}, target)


class MainWindow(QMainWindow):
    def __init__(self, model: vm.ViewModel, backend: Backend) -> None:
        super().__init__()
        self.model = model
        self.backend = backend
        self.keep_running_in_tray = False
        self.setWindowTitle("MissionCommander")
        self.setWindowIcon(dot_icon("idle"))
        # Qt's default palette draws the hint of a disabled field (mcd down)
        # darker than the values beside it, where "any" and "none" read as
        # values typed in: greyed as disabled text is.
        palette = self.palette()
        disabled = QPalette.ColorGroup.Disabled
        palette.setColor(disabled, QPalette.ColorRole.PlaceholderText, palette.color(disabled, QPalette.ColorRole.Text))
        self.setPalette(palette)
        # 700 px is more than a 1280x720 desktop, or a laptop's 768 less its
        # panels, has room for: there it starts a tenth shorter than the room
        # (the title bar takes some), and its scroll areas take the rest.
        self.resize(900, min(700, self.screen().availableGeometry().height() * 9 // 10))

        self.banner = QFrame()
        self.banner.setStyleSheet("QFrame { background: #fdecea; border: 1px solid #f5c2c0; border-radius: 4px; }")
        banner_layout = QHBoxLayout(self.banner)
        self.banner_text = QLabel()
        self.banner_text.setWordWrap(True)
        self.banner_text.setStyleSheet("border: none; color: #611a15;")
        self.banner_text.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.start_daemon_button = QPushButton("Start daemon")
        self.start_daemon_button.clicked.connect(self.start_daemon)
        backend.start_failed.connect(self.start_failed)
        banner_layout.addWidget(self.banner_text, 1)
        banner_layout.addWidget(self.start_daemon_button)

        # What mcd warns of while it runs (a state file it moved aside at
        # start, saves failing) stays in sight, whole, until dismissed: a
        # status-bar message is clipped and gone in seconds.
        self.warnings_banner = QFrame()
        self.warnings_banner.setStyleSheet(
            "QFrame { background: #fff4e5; border: 1px solid #f0c78a; border-radius: 4px; }"
        )
        warnings_layout = QHBoxLayout(self.warnings_banner)
        self.warnings_text = QLabel()
        self.warnings_text.setWordWrap(True)
        self.warnings_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.warnings_text.setStyleSheet("border: none; color: #663c00;")
        self.warnings_text.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.clicked.connect(self.dismiss_warnings)
        warnings_layout.addWidget(self.warnings_text, 1)
        warnings_layout.addWidget(self.dismiss_button)
        #: The warnings dismissed: hidden until mcd warns of something else.
        self.dismissed: tuple[str, ...] = ()
        self._warnings_ticks = 0
        #: A ``daemon.status`` asked for and not answered yet.
        self.reading_warnings = False

        self.client_tab = ClientTab(model, backend)
        self.server_tab = ServerTab(model, backend)
        self.tabs = QTabWidget()
        # Each tab scrolls rather than asking for more room: the banner, an
        # error line or the other tab's rows must never grow the window.
        self.tabs.addTab(scrolling(self.client_tab), "Client")
        self.tabs.addTab(scrolling(self.server_tab), "Server")
        for tab in (self.client_tab, self.server_tab):
            # Escaped here, for every line: they may hold what a peer chose (a client id).
            tab.status_message.connect(lambda text: self.statusBar().showMessage(printable(text), 8000))

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addWidget(self.banner)
        layout.addWidget(self.warnings_banner)
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        # The shown tab's live figures, every second while mcd is up.
        self.figures_timer = QTimer(self)
        self.figures_timer.setInterval(FIGURES_INTERVAL_MS)
        self.figures_timer.timeout.connect(self.poll_figures)
        self.figures_timer.start()
        self.refresh()

    #: Figures' ticks between two reads of mcd's warnings (a save that
    #: starts or stops failing shows within this many seconds).
    warnings_every = 10

    def poll_figures(self) -> None:
        if self.model.daemon_up and self.isVisible():
            tab = self.client_tab if self.tabs.currentIndex() == 0 else self.server_tab
            tab.poll_figures()
            self._warnings_ticks += 1
            if self._warnings_ticks >= self.warnings_every:
                self._warnings_ticks = 0
                self.read_warnings()

    def read_warnings(self) -> None:
        """Ask mcd for its standing warnings again (one request at a time)."""
        if self.reading_warnings:
            return
        self.reading_warnings = True

        def got(status: dict[str, Any]) -> None:
            self.reading_warnings = False
            self.model.set_daemon_status(status)
            self.refresh()

        def failed(_code: str, _message: str, _details: Any = None) -> None:
            self.reading_warnings = False  # the event stream reports mcd down

        self.backend.request("daemon.status", {}, got, failed)

    def dismiss_warnings(self) -> None:
        self.dismissed = self.model.daemon_warnings
        self.refresh()

    def start_daemon(self) -> None:
        self.start_daemon_button.setEnabled(False)
        self.start_daemon_button.setText("Starting...")
        log_path = self.backend.start_daemon()
        self.statusBar().showMessage(f"starting mcd; its log: {log_path}", 10000)

    def start_failed(self) -> None:
        self.start_daemon_button.setEnabled(True)
        self.start_daemon_button.setText("Start daemon")

    def refresh(self) -> None:
        up = self.model.daemon_up
        self.banner.setVisible(self.model.daemon_known and not up)
        if not up:
            message = self.model.daemon_message or "mcd is not running"
            self.banner_text.setText(
                f"<b>{html.escape(message)}</b><br>Start it here, or with <tt>mcd &amp;</tt> or "
                "<tt>systemctl --user start mcd</tt>; this window reconnects by itself when it is back."
            )
        else:
            self.start_daemon_button.setEnabled(True)
            self.start_daemon_button.setText("Start daemon")
        warnings = self.model.daemon_warnings
        self.warnings_banner.setVisible(up and not set(warnings) <= set(self.dismissed))
        if warnings:
            items = "".join(f"<li>{html.escape(text)}</li>" for text in warnings)
            self.warnings_text.setText(
                f"<b>mcd warns:</b><ul style='margin: 0'>{items}</ul>"
                "(also in <tt>mcctl daemon status</tt> and mcd's log)"
            )
        self.tabs.setEnabled(up)
        overall = self.model.overall()
        self.setWindowIcon(dot_icon(overall.level))
        self.tabs.setTabIcon(0, dot_icon(self.client_tab.current().phase))
        self.tabs.setTabIcon(1, dot_icon(self.server_tab.current().phase))
        self.client_tab.refresh()
        self.server_tab.refresh()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.keep_running_in_tray:
            self.hide()  # the tray icon stays; Quit in its menu ends the app
            event.ignore()
        else:
            event.accept()
