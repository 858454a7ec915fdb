"""A standard-library client of the mcd control socket."""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import stat

from .codes import MAX_LINE, ErrorCode

# mcctl imports this on every call: no pathlib and no typing at run time
# (together a quarter of its start-up); paths are plain strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from os import PathLike
    from typing import Any


def default_socket_path() -> str:
    """``$MC_SOCKET``, else ``$XDG_RUNTIME_DIR/missioncommander/mcd.sock``.

    Without ``XDG_RUNTIME_DIR`` it falls back the way platformdirs does on
    Linux (``/run/user/UID``), or to ``/tmp/missioncommander-UID`` when that
    does not exist.  Kept free of imports so mcctl starts fast.
    """
    env = os.environ.get("MC_SOCKET")
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        runtime = f"/run/user/{os.getuid()}"
        if not os.path.isdir(runtime):
            return f"/tmp/missioncommander-{os.getuid()}/mcd.sock"
    return os.path.join(runtime, "missioncommander", "mcd.sock")


class ControlError(Exception):
    """The daemon answered with an error (or would have: a command over
    ``MAX_LINE`` is refused with ``line_too_long`` before it is sent)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class DaemonUnreachable(Exception):
    """No daemon answers at ``path``; ``kind`` says why and ``hint`` how to fix it.

    kinds: ``missing`` (no socket file), ``stale`` (a socket file, nobody
    listening), ``permission`` (not ours to use), ``timeout`` (no answer),
    ``closed`` (the daemon hung up), ``error`` (anything else).
    """

    def __init__(self, kind: str, path: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path
        self.message = message
        self.hint = hint


def _unreachable(exc: OSError | TimeoutError, path: str) -> DaemonUnreachable:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return DaemonUnreachable(
            "timeout",
            path,
            f"mcd did not answer at {path} in time",
            "check it with `systemctl --user status mcd`, or raise --timeout",
        )
    import shlex  # noqa: PLC0415 - only on this error path; mcctl starts without it

    # The service listens on the default socket; any other needs its own mcd.
    start = (
        "`mcd &` or `systemctl --user start mcd`"
        if path == default_socket_path()
        else f"`mcd --socket {shlex.quote(path)} &`"
    )
    if exc.errno == errno.ENOENT:
        return DaemonUnreachable("missing", path, f"mcd is not running (no socket at {path})", f"start it: {start}")
    if exc.errno == errno.ECONNREFUSED:
        try:
            is_socket = stat.S_ISSOCK(os.lstat(path).st_mode)
        except OSError:
            is_socket = True
        if not is_socket:
            return DaemonUnreachable(
                "error",
                path,
                f"{path} is not a socket, so no mcd listens there",
                "point --socket (or MC_SOCKET) at mcd's socket",
            )
        return DaemonUnreachable(
            "stale",
            path,
            f"mcd is not running: {path} is a stale socket (the daemon died)",
            f"see `journalctl --user -u mcd` or its log, then start it again: {start}",
        )
    if exc.errno in (errno.ECONNRESET, errno.EPIPE):
        # Hung up with our command unread: a daemon that stopped or died
        # meanwhile, as an orderly close.
        return DaemonUnreachable(
            "closed", path, "mcd closed the connection", "see `journalctl --user -u mcd` or its log"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return DaemonUnreachable(
            "permission",
            path,
            f"permission denied on {path} (the socket belongs to another user)",
            "run as the daemon's user, or point --socket / MC_SOCKET at your own daemon",
        )
    return DaemonUnreachable("error", path, f"cannot reach mcd at {path}: {exc.strerror or exc}", "")


class ControlClient:
    """One connection to mcd: JSON lines, one request at a time.

    ``request("client.status", name="x")`` returns the ``result`` of a
    successful response or raises ``ControlError``; every connection problem
    raises ``DaemonUnreachable``.  ``subscribe`` turns the connection into an
    event stream.
    """

    def __init__(self, path: str | PathLike[str] | None = None, timeout: float | None = 5.0) -> None:
        self.path = os.fspath(path) if path is not None else default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._ids = itertools.count(1)
        #: How long an event stream may stay silent before its iterator
        #: raises ``DaemonUnreachable`` (kind ``timeout``); None: forever.
        self.stream_timeout: float | None = None

    def connect(self) -> ControlClient:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except (OSError, TimeoutError) as exc:
                sock.close()
                raise _unreachable(exc, self.path) from None
            self._sock = sock
            self._buf = bytearray()  # a new connection: nothing of the last one's stream
        return self

    def set_timeout(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for the next answers (a connection kept
        for many commands, whose waits differ)."""
        self.timeout = timeout
        if self._sock is not None:
            self._sock.settimeout(timeout)

    def close(self) -> None:
        """Close; safe from another thread, where it also wakes a blocked read."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def __enter__(self) -> ControlClient:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.connect()._sock.fileno()  # type: ignore[union-attr]

    def send(self, cmd: str, **params: Any) -> int:
        """Send one request; return its id."""
        sock = self.connect()._sock
        assert sock is not None
        request_id = next(self._ids)
        line = (json.dumps({"id": request_id, "cmd": cmd, **params}, separators=(",", ":")) + "\n").encode()
        if len(line) > MAX_LINE:
            # The daemon would close on it mid-send: say why here instead.
            raise ControlError(
                ErrorCode.LINE_TOO_LONG,
                f"the command is {len(line):,} bytes, over the control socket's {MAX_LINE:,}; nothing was sent",
            )
        try:
            sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            # The daemon restarted since this connection was opened: nothing
            # of this request reached anyone, so it is safe to send it again.
            self.close()
            sock = self.connect()._sock
            assert sock is not None
            try:
                sock.sendall(line)
            except (OSError, TimeoutError) as exc:
                raise _unreachable(exc, self.path) from None
        except (OSError, TimeoutError) as exc:
            raise _unreachable(exc, self.path) from None
        return request_id

    def read(self, stream: bool = False) -> dict[str, Any]:
        """The next JSON line from the daemon, waiting up to ``timeout`` (for
        a ``stream``: up to ``stream_timeout``)."""
        sock = self.connect()._sock
        assert sock is not None
        if stream:
            sock.settimeout(self.stream_timeout)
        buf = self._buf
        try:
            # Found by looking at what each read added: a snapshot of many
            # instances or an event with a big message is many reads long.
            newline = buf.find(b"\n")
            while newline < 0:
                if len(buf) > MAX_LINE:
                    raise DaemonUnreachable("error", self.path, "the daemon sent an over-long line", "")
                chunk = sock.recv(65536)
                if not chunk:
                    raise DaemonUnreachable(
                        "closed", self.path, "mcd closed the connection", "see `journalctl --user -u mcd`"
                    )
                start = len(buf)
                buf += chunk
                newline = buf.find(b"\n", start)
        except (OSError, TimeoutError) as exc:
            raise _unreachable(exc, self.path) from None
        finally:
            if stream:
                sock.settimeout(self.timeout)
        line = buf[:newline]
        del buf[: newline + 1]
        obj: dict[str, Any] = json.loads(line)
        return obj

    def request(self, cmd: str, **params: Any) -> dict[str, Any]:
        request_id = self.send(cmd, **params)
        while True:
            response = self.read()
            # An error about the connection itself (permission, line too
            # long) carries no id: it answers this request too.
            if response.get("id") == request_id or ("ok" in response and response.get("id") is None):
                break
        if not response.get("ok"):
            error = response.get("error") or {}
            raise ControlError(
                error.get("code", "internal"), error.get("message", "unknown error"), error.get("details")
            )
        result: dict[str, Any] = response.get("result") or {}
        return result

    def subscribe(self, **params: Any) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
        """Start the event stream; returns the snapshot answer and an
        iterator over the events (it ends when the daemon closes)."""
        result = self.request("subscribe", **params)

        def events() -> Iterator[dict[str, Any]]:
            while True:
                try:
                    yield self.read(stream=True)
                except DaemonUnreachable as exc:
                    if exc.kind == "closed":
                        return
                    raise

        return result, events()
