"""Test helpers: event recorders and a fault-injecting TCP proxy."""

from __future__ import annotations

import json
import os
import random
import selectors
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from missioncommander import Client, Server

DEFAULT_WAIT = 10.0


class HeldResponder:
    """A ``request`` responder that holds each request until ``go`` is set
    (10 s at most), then answers ``{"answer": subject}``; ``entered`` is set
    as a request begins: for tests of what happens while one is answered."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()

    def __call__(self, message: Any) -> dict[str, str]:
        self.entered.set()
        self.go.wait(10)
        return {"answer": message.subject}


class Recorder:
    """Subscribes to events and lets a test wait for them (no sleeps)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self._cond = threading.Condition()

    def callback(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            with self._cond:
                self.events.append((name, args))
                self._cond.notify_all()

        return record

    def attach(self, obj: Client | Server, *names: str) -> Recorder:
        for name in names:
            obj.subscribe(name, self.callback(name))
        return self

    def of(self, name: str) -> list[tuple[Any, ...]]:
        with self._cond:
            return [args for n, args in self.events if n == name]

    def names(self) -> list[str]:
        with self._cond:
            return [n for n, _ in self.events]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = DEFAULT_WAIT, what: str = "") -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out waiting for {what or predicate}; events: {self.events[-20:]}")

    def wait_count(self, name: str, count: int, timeout: float = DEFAULT_WAIT) -> list[tuple[Any, ...]]:
        self.wait_for(lambda: sum(1 for n, _ in self.events if n == name) >= count, timeout, f"{count} x {name}")
        return self.of(name)


def wait_until(predicate: Callable[[], bool], timeout: float = DEFAULT_WAIT, what: str = "") -> None:
    """Poll a condition that has no event to wait on (state owned by the
    library), with a bounded number of short waits."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        event.wait(0.005)


#: How much of what each client side sends first a FaultProxy keeps, for ``cut(said=...)``.
SAID_KEPT = 4096


class FaultProxy:
    """A TCP proxy on loopback between a client and a server that can break things.

    - ``cut("rst")`` resets every live connection on both sides;
    - ``cut("blackhole")`` silently stops forwarding on the live connections
      (no FIN, no RST: the peers must notice by heartbeat);
    - ``cut(mode, said=b"...")`` does either only to the connections whose
      client side sent those bytes early on (one of several connections a
      program keeps to its server, picked by what it asked);
    - ``delay`` holds each chunk that long before forwarding it;
    - ``split`` forwards in random small pieces, so frames arrive cut at
      arbitrary byte boundaries.
    One thread runs every connection with a selector; ``close()`` stops it.
    """

    def __init__(self, upstream_port: int, *, split: bool = False, delay: float = 0.0, seed: int = 0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.split = split
        self.delay = delay
        self.rng = random.Random(seed)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.pairs: dict[socket.socket, socket.socket] = {}
        self.dead: set[socket.socket] = set()
        self.pending: dict[socket.socket, list[tuple[float, bytes]]] = {}
        #: The first bytes (up to SAID_KEPT) each connection's client side sent.
        self.said: dict[socket.socket, bytes] = {}
        self.accepted = 0
        #: While set, new connections are accepted and closed at once.
        self.refusing = False
        self.lock = threading.Lock()
        self.commands: list[Callable[[], None]] = []
        self.wake_r, self.wake_w = socket.socketpair()
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.running = True
        self.thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self.thread.start()

    def _call(self, fn: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        with self.lock:
            self.commands.append(run)
        self.wake_w.send(b"x")
        assert done.wait(5), "proxy did not answer"

    def cut(self, mode: str = "rst", said: bytes | None = None) -> None:
        def do() -> None:
            for sock in list(self.pairs):
                if sock not in self.pairs or sock in self.dead:
                    continue
                if said is not None and said not in self.said.get(sock, self.said.get(self.pairs[sock], b"")):
                    continue
                if mode == "rst":
                    self._close(sock, reset=True)
                else:
                    self.dead.add(sock)
                    self.sel.unregister(sock)

        self._call(do)

    @property
    def live(self) -> int:
        return sum(1 for s in self.pairs if s not in self.dead) // 2

    def close(self) -> None:
        def do() -> None:
            for sock in list(self.pairs):
                if sock in self.pairs:
                    self._close(sock, reset=True)
            for sock in list(self.dead):
                sock.close()
            self.running = False

        self._call(do)
        self.thread.join(5)
        self.sel.close()
        self.listener.close()
        self.wake_r.close()
        self.wake_w.close()

    def _close(self, sock: socket.socket, reset: bool) -> None:
        other = self.pairs.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self.pairs.pop(s, None)
            self.pending.pop(s, None)
            self.said.pop(s, None)
            if s not in self.dead:
                try:
                    self.sel.unregister(s)
                except (KeyError, ValueError):
                    pass
            self.dead.discard(s)
            if reset:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            s.close()

    def _run(self) -> None:
        while self.running:
            timeout = 0.01 if self.pending else None
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    self._accept()
                elif key.data == "wake":
                    self.wake_r.recv(4096)
                    with self.lock:
                        commands, self.commands = self.commands, []
                    for command in commands:
                        command()
                else:
                    self._forward(key.fileobj)  # type: ignore[arg-type]
            self._flush_pending()

    def _accept(self) -> None:
        try:
            down, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.refusing:
            down.close()
            return
        try:
            up = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            down.close()
            return
        self.accepted += 1
        for s in (down, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(True)
            s.settimeout(5)
        self.pairs[down] = up
        self.pairs[up] = down
        self.said[down] = b""
        self.sel.register(down, selectors.EVENT_READ, "conn")
        self.sel.register(up, selectors.EVENT_READ, "conn")

    def _forward(self, sock: socket.socket) -> None:
        if sock not in self.pairs or sock in self.dead:
            return
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close(sock, reset=False)
            return
        other = self.pairs[sock]
        early = self.said.get(sock)
        if early is not None and len(early) < SAID_KEPT:
            self.said[sock] = early + data[: SAID_KEPT - len(early)]
        if self.delay:
            self.pending.setdefault(other, []).append((time.monotonic() + self.delay, data))
            return
        self._send(other, data)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            if self.split:
                view = memoryview(data)
                while view:
                    n = self.rng.randint(1, max(1, min(len(view), 64)))
                    sock.sendall(view[:n])
                    view = view[n:]
            else:
                sock.sendall(data)
        except OSError:
            self._close(sock, reset=True)

    def _flush_pending(self) -> None:
        now = time.monotonic()
        for sock, items in list(self.pending.items()):
            while items and items[0][0] <= now:
                self._send(sock, items.pop(0)[1])
                if sock not in self.pairs:
                    break
            if not items:
                self.pending.pop(sock, None)


def free_port() -> int:
    """A port that was free a moment ago (for a server that must restart on
    the same port; port 0 is used everywhere else)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


def server_frames(sock: socket.socket, timeout: float = 10.0) -> Iterator[object]:
    """The frames a server sends on a raw socket, parsed, until it closes
    (or resets) the connection."""
    from missioncommander._frames import FrameDecoder, parse_frame

    sock.settimeout(timeout)
    decoder = FrameDecoder()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return
        if not data:
            return
        for ftype, body in decoder.feed(data):
            yield parse_frame(ftype, body)


def tls_handshakes(socks: list[socket.socket], cafile: str) -> int:
    """How many of ``socks`` (connected to a TLS server) complete a TLS
    handshake; a connection the server reset or closed counts as none.
    Each is closed after (its TLS socket took its descriptor over)."""
    import ssl

    context = ssl.create_default_context(cafile=cafile)
    done = 0
    for sock in socks:
        if not _open(sock):  # wrap_socket would fail, and leave its SSLSocket unclosed
            sock.close()
            continue
        sock.settimeout(10.0)
        try:
            tls = context.wrap_socket(sock, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        except (OSError, ssl.SSLError):  # reset since the look above
            continue
        with tls:
            try:
                tls.do_handshake()
            except (OSError, ssl.SSLError):
                continue
            done += 1
    return done


def _open(sock: socket.socket) -> bool:
    """Whether nothing says ``sock`` was reset or closed by its peer yet."""
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return True
    except OSError:
        return False


def resolve_as_ipv6_then_ipv4(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """Make ``name`` resolve as "localhost" does on many hosts: ::1 first,
    then 127.0.0.1 (servers in tests listen on 127.0.0.1 only, so ::1
    refuses).  Returns the names looked up, to show the resolver was asked."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def resolving_threads() -> list[threading.Thread]:
    """missioncommander's resolving threads now running (``_resolver``)."""
    return [thread for thread in threading.enumerate() if thread.name == "missioncommander-resolve"]


def refuse_resolving_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process at its limit on threads, for resolving threads only."""
    start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        if thread.name == "missioncommander-resolve":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse)


def wait_for_resolvers_to_end(timeout: float = DEFAULT_WAIT) -> None:
    """Wait until no resolving thread runs: one left by an earlier test
    (ending after its answer came) would take the next name itself."""
    deadline = time.monotonic() + timeout
    for thread in resolving_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not resolving_threads(), f"resolving threads still running after {timeout} s"


def in_a_forked_child(work: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run ``work`` in a forked child (as multiprocessing's default start
    method on Linux does) and return what it returned; the child leaves by
    ``os._exit``, never through pytest."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        outcome: dict[str, object] = {"error": "the child failed"}
        try:
            outcome = work()
        except BaseException as exc:  # reported to the parent, which asserts
            outcome = {"error": repr(exc)}
        finally:
            os.write(write_fd, json.dumps(outcome).encode())
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return dict(json.loads(answer))
