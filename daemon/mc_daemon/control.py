"""The control server: a Unix socket speaking JSON lines, validated by the schema.

One thread per control connection: there are a handful (mcctl runs, a GUI),
and a blocking command such as ``client.connect --wait`` then holds up only
its own connection.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mc_control import schema
from mc_control.codes import MAX_LINE, ErrorCode, strict_json
from missioncommander._loop import ACCEPT_PAUSE, AcceptTrouble, one_connections_error

from .core import CoreError, DaemonCore
from .dispatch import Dispatcher
from .events import Subscription
from .files import bind_control_socket, secure_directory

log = logging.getLogger("mcd.control")

_PEERCRED = struct.Struct("3i")


# How long, and for how many bytes, a connection closed on an error keeps
# reading after its last word: closed at once, a client still sending (its
# request not yet written when mcd refused it, or a line too long) gets
# EPIPE or a reset and never reads why.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20

# How long an overflowed subscriber that is not reading gets to take the
# rest of its last line and the overflow notice before it is closed.
OVERFLOW_NOTICE_DEADLINE = 2.0


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _reply_line(response: dict[str, Any]) -> bytes:
    """A response's line, or a ``line_too_long`` error in its place where it
    is over MAX_LINE (a request's reply with a message beyond the default
    ``max_frame_size``): the client would drop the connection on it."""
    line = _line(response)
    if len(line) <= MAX_LINE:
        return line
    message = f"the reply is {len(line):,} bytes, over the control socket's line of {MAX_LINE:,}"
    return _line(error_response(response.get("id"), ErrorCode.LINE_TOO_LONG, message))


def _event_line(event: dict[str, Any]) -> bytes:
    """An event's line.  A message too big for one (a hosted instance's
    ``max_frame_size`` set far above the default) comes without its
    payload, with ``omitted`` saying how many bytes it had, so that the
    stream goes on for every subscriber."""
    line = _line(event)
    if len(line) <= MAX_LINE:
        return line
    data = event.get("data") or {}
    slim = {**data, "payload": {}, "omitted": len(json.dumps(data.get("payload"), separators=(",", ":")))}
    return _line({**event, "data": slim})


def error_response(request_id: Any, code: ErrorCode, message: str, details: Any = None) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code.value, "message": message, "details": details}}


class ControlServer:
    """Listens on ``path`` (mode 0600), one thread per connection."""

    def __init__(
        self,
        core: DaemonCore,
        path: Path,
        request_shutdown: Callable[[], None],
        info: dict[str, Any] | None = None,
        max_line: int = MAX_LINE,
        allowed_uids: frozenset[int] | None = None,
    ) -> None:
        self.core = core
        self.path = path
        self.max_line = max_line
        self._request_shutdown = request_shutdown
        self._after_reply = threading.local()
        self.dispatcher = Dispatcher(core, self._shutdown_after_reply, info or {})
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset({os.getuid(), 0})
        self._listener: socket.socket | None = None
        #: The socket file ``_listener`` is bound to, as made (to tell it
        #: from a file put in its place).
        self._bound: os.stat_result | None = None
        #: The last trouble keep_socket() logged ('': none since it went): each once.
        self._trouble_said = ""
        self._threads: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closing = False
        #: Set by close(): ends a pause after a failed accept at once.
        self._closed = threading.Event()

    def start(self, listener: socket.socket) -> None:
        """Accept on ``listener``, the socket ``files.bind_control_socket``
        made at ``path`` (mcd binds it early, before it loads this module)."""
        self._listener = listener
        self._bound = _stat(self.path)
        thread = threading.Thread(target=self._accept_loop, name="mcd-accept", daemon=True)
        thread.start()

    def close(self) -> None:
        """Stop accepting, close every connection, remove the socket file."""
        with self._lock:
            self._closing = True
            listener, self._listener = self._listener, None
            conns = list(self._conns)
        self._closed.set()
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
            if self._is_ours(_stat(self.path)):  # not a file someone put in its place
                self.path.unlink(missing_ok=True)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._threads):
            thread.join(5)

    def _accept_loop(self) -> None:
        trouble = AcceptTrouble(log, "control connections")
        while True:
            listener = self._listener
            if listener is None:
                return
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                if self._listener is None:
                    return
                if listener is not self._listener:  # keep_socket() made a new one
                    continue
                if not one_connections_error(exc):
                    # Out of descriptors or memory: the connection waits in
                    # the backlog, and trying again at once would spin.
                    trouble.failed(exc)
                    self._closed.wait(ACCEPT_PAUSE)
                continue
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self._conns.add(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), name="mcd-control", daemon=True)
                self._threads.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:  # can't start new thread: a limit on threads
                with self._lock:
                    self._conns.discard(conn)
                    self._threads.discard(thread)
                conn.close()
                trouble.failed(OSError(errno.EAGAIN, str(exc)))
                self._closed.wait(ACCEPT_PAUSE)
                continue
            trouble.accepted()

    def _is_ours(self, st: os.stat_result | None) -> bool:
        return st is not None and self._bound is not None and os.path.samestat(st, self._bound)

    def keep_socket(self) -> None:
        """Make the socket file again if it was removed (by hand, or by a
        cleanup of its directory): mcctl and the GUI find mcd by the path
        alone, and a daemon nobody can reach can only be killed.  A file
        someone put in its place is left alone, with a warning."""
        with self._lock:
            running = not self._closing and self._listener is not None
        if not running:
            return
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except OSError:
            return
        if st is not None:
            if not self._is_ours(st):
                self._trouble(
                    f"{self.path} is no longer this mcd's control socket (something was put in its place): "
                    f"mcctl cannot reach this mcd (pid {os.getpid()}); remove it, and mcd makes its socket again"
                )
            else:
                self._trouble_said = ""
            return
        try:
            secure_directory(self.path.parent, "socket directory")
            listener = bind_control_socket(self.path)
        except OSError as exc:
            self._trouble(f"control socket {self.path} was removed and cannot be made again: {exc.strerror or exc}")
            return
        with self._lock:
            if self._closing:  # close() ran meanwhile: it did not know this one
                listener.close()
                self.path.unlink(missing_ok=True)
                return
            old, self._listener = self._listener, listener
            self._bound = _stat(self.path)
            self._trouble_said = ""
        if old is not None:
            try:
                old.shutdown(socket.SHUT_RDWR)  # wakes the accept loop, which takes the new one
            except OSError:
                pass
            old.close()
        log.warning(
            "control socket %s was removed (by hand, or by a cleanup of its directory); made it again", self.path
        )

    def _trouble(self, text: str) -> None:
        """A warning of keep_socket(), once while it lasts (it checks every second)."""
        if text != self._trouble_said:
            self._trouble_said = text
            log.warning("%s", text)

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._serve_conn(conn)
        except OSError as exc:
            log.debug("control connection ended: %s", exc)
        except Exception:
            log.exception("control connection failed")
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())
            conn.close()

    def _peer_uid(self, conn: socket.socket) -> int | None:
        try:
            _pid, uid, _gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        except (OSError, AttributeError):
            return None
        return int(uid)

    def _send(self, conn: socket.socket, obj: dict[str, Any]) -> None:
        conn.sendall(_reply_line(obj))

    def _last_word(self, conn: socket.socket, obj: dict[str, Any]) -> None:
        """Send the error that ends this connection, then read and drop what
        the client still sends (up to ``LINGER_SECONDS`` and
        ``LINGER_BYTES``), so that it can read the error before the close."""
        self._send(conn, obj)
        try:
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            drained = 0
            while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                chunk = conn.recv(65536)
                if not chunk:
                    return
                drained += len(chunk)
        except (OSError, TimeoutError):
            return  # it went away, or said nothing more: either way, closed now

    def _serve_conn(self, conn: socket.socket) -> None:
        uid = self._peer_uid(conn)
        if uid not in self.allowed_uids:
            log.warning("refused a control connection from uid %s", uid)
            self._last_word(
                conn, error_response(None, ErrorCode.PERMISSION_DENIED, f"uid {uid} may not use this daemon")
            )
            return
        buf = bytearray()
        while True:
            newline = buf.find(b"\n")
            while newline < 0:
                if len(buf) > self.max_line:
                    self._last_word(
                        conn,
                        error_response(None, ErrorCode.LINE_TOO_LONG, f"request line over {self.max_line} bytes"),
                    )
                    return
                chunk = conn.recv(65536)
                if not chunk:
                    return
                start = len(buf)
                buf += chunk
                newline = buf.find(b"\n", start)
            if newline + 1 > self.max_line:
                self._last_word(
                    conn, error_response(None, ErrorCode.LINE_TOO_LONG, f"request line over {self.max_line} bytes")
                )
                return
            line = bytes(buf[:newline])
            del buf[: newline + 1]
            if not line.strip():
                continue
            try:
                # Decoded here, not by json.loads: given bytes, it guesses
                # UTF-16 or -32 from the first bytes, and the API is UTF-8.
                obj = strict_json(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                self._last_word(conn, error_response(None, ErrorCode.INVALID_JSON, f"request is not UTF-8: {exc}"))
                return
            except json.JSONDecodeError as exc:
                self._last_word(
                    conn, error_response(None, ErrorCode.INVALID_JSON, f"request is not a JSON line: {exc}")
                )
                return
            except ValueError as exc:
                # NaN, Infinity, 1e400: the line was read whole, so the
                # connection is still in step; answered like any bad request.
                self._send(conn, error_response(None, ErrorCode.INVALID_REQUEST, f"invalid request: {exc}"))
                continue
            request_id = obj.get("id") if isinstance(obj, dict) else None
            if not isinstance(request_id, (int, str)) or isinstance(request_id, bool):
                request_id = None
            try:
                req = self.dispatcher.parse(obj)
                if isinstance(req, schema.Subscribe):
                    try:
                        self._stream(conn, req)
                    except OSError as exc:  # a subscriber that hangs up is normal, not a failed command
                        log.debug("subscriber went away: %s", exc)
                    return
                result = self.dispatcher.run(req)
                response: dict[str, Any] = {"id": request_id, "ok": True, "result": result}
            except CoreError as exc:
                response = error_response(request_id, exc.code, exc.message, exc.details)
            except Exception as exc:  # a bug: answer, log, keep serving
                log.exception("command %r failed", obj.get("cmd") if isinstance(obj, dict) else obj)
                response = error_response(request_id, ErrorCode.INTERNAL, f"internal error: {exc}")
            self._send(conn, response)
            if getattr(self._after_reply, "shutdown", False):
                self._after_reply.shutdown = False
                self._request_shutdown()

    def _shutdown_after_reply(self) -> None:
        # Stopping at once raced the reply: the caller could see the
        # connection close before its answer ("mcd closed the connection").
        self._after_reply.shutdown = True

    def _stream(self, conn: socket.socket, req: schema.Subscribe) -> None:
        instances = [(i.kind, i.name) for i in req.instances] if req.instances is not None else None
        since = (req.since.boot_id, req.since.seq) if req.since is not None else None
        sub, answer = self.core.subscribe(instances, req.events, since)
        try:
            self._send(conn, {"id": req.id, "ok": True, "result": answer})
            self._pump(conn, sub)
        finally:
            self.core.unsubscribe(sub)

    def _pump(self, conn: socket.socket, sub: Subscription) -> None:
        # Events are written without blocking: a subscriber that stops
        # reading fills its socket buffer, and a blocking sendall would hold
        # this thread (and the connection) until it read again, so the
        # promised cut-off after an overflow would never happen.
        conn.setblocking(False)
        pending = memoryview(b"")
        while True:
            if pending:
                pending = self._write_some(conn, pending)
                if pending and sub.closed:
                    return  # mcd is stopping
                if pending and sub.overflowed:
                    break  # stalled and already cut off: stop waiting for this reader
                if pending:
                    continue
            try:
                event = sub.get(timeout=1.0)
            except OverflowError:
                break
            except EOFError:
                return
            if event is None:
                if self._peer_gone(conn):
                    return
                continue
            pending = memoryview(_event_line(event))
        # Overflowed: finish the line under way and say why the stream ends,
        # with a short deadline, then close. A reader that is still stalled
        # sees the stream end in a partial line, which is an overflow too.
        notice = _line(
            {
                "type": "overflow",
                "message": "this subscriber fell behind and missed events; subscribe again with `since`",
            }
        )
        pending = memoryview(bytes(pending) + notice)
        deadline = time.monotonic() + OVERFLOW_NOTICE_DEADLINE
        while pending and time.monotonic() < deadline:
            pending = self._write_some(conn, pending, wait=deadline - time.monotonic())
        if pending:
            log.info("a subscriber that stopped reading was cut off without its overflow notice")

    @staticmethod
    def _write_some(conn: socket.socket, data: memoryview, wait: float = 1.0) -> memoryview:
        """Write what fits, waiting up to ``wait`` s for room only when there
        is none (the usual event costs one send); returns what is left (a
        view: an event of many megabytes is not copied at each send)."""
        for attempt in range(2):
            try:
                sent = conn.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent or attempt:
                return data[sent:]
            poller = select.poll()  # not select(): mcd may hold more than 1024 descriptors
            poller.register(conn, select.POLLOUT)
            if not poller.poll(max(wait, 0.0) * 1000):
                return data
        return data

    def _peer_gone(self, conn: socket.socket) -> bool:
        try:
            data = conn.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return not data  # anything a subscriber sends is ignored


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None
