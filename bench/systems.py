"""The systems compared, behind one small adapter interface.

Each system has a server side (run in its own process by ``bench/run.py
serve``) and a client side (used by the benchmark process).  Payloads are
dicts; every system carries them as JSON.

Server roles (the same for every system):
- every message is answered to its sender when its subject is ``echo``;
- ``sink`` messages are counted; the one whose ``seq`` is ``last`` is
  answered with ``done``;
- ``go`` starts a broadcast of ``count`` messages to every client, then
  answers ``done`` with the CPU seconds the server spent;
- ``stats`` is answered with the server's RSS, thread count and clients;
- a request (each system's own request/reply, where it has one) is
  answered with its payload.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import psutil

OnMessage = Callable[[str, dict[str, Any]], None]


def usage() -> dict[str, Any]:
    me = psutil.Process()
    cpu = me.cpu_times()
    return {"rss": me.memory_info().rss, "threads": me.num_threads(), "cpu": cpu.user + cpu.system}


class Handler:
    """The server roles, independent of the transport: ``reply(target, subject, payload)``."""

    def __init__(self, reply: Callable[[str, str, dict[str, Any]], None], clients: Callable[[], int]) -> None:
        self.reply = reply
        self.clients = clients
        self.sunk = 0

    def handle(self, sender: str, subject: str, payload: dict[str, Any]) -> None:
        if subject == "echo":
            self.reply(sender, "echo", payload)
        elif subject == "sink":
            self.sunk += 1
            if payload["seq"] == payload["last"]:
                self.reply(sender, "done", {"received": self.sunk})
                self.sunk = 0
        elif subject == "go":
            start = usage()["cpu"]
            filler = "x" * 100
            extra = {"marker": True} if payload.get("marker") else {}
            for seq in range(payload["count"]):
                self.reply("*", "bcast", {"message": filler, "seq": seq, **extra})
            self.reply(sender, "done", {"cpu": usage()["cpu"] - start})
        elif subject == "stats":
            self.reply(sender, "stats", {**usage(), "clients": self.clients()})


# -- MissionCommander -----------------------------------------------------------


def use_fast_json(enabled: bool) -> None:
    """Switch MissionCommander's optional orjson encoder (the ``fast`` extra)
    on or off in this process: the benchmark compares both."""
    from missioncommander import _message

    if (_message._fast_dumps is not None) == enabled:
        return  # already so (clients are made by the thousand)
    _message._fast_dumps = _message._load_fast_dumps() if enabled else None
    if enabled and _message._fast_dumps is None:
        raise RuntimeError("orjson is not installed: pip install '.[fast]'")


def mc_serve(port: int, inline: bool = True, fast: bool = False, defaults: bool = False) -> None:
    from missioncommander import Message, Server

    use_fast_json(fast)
    if defaults:
        # mc-pooled: what a new user gets, every setting at its default.
        server = Server(interface="127.0.0.1", port=port)
    else:
        # The handlers never block, so they may run on the I/O thread, as the
        # socket floor's run on its receiving threads.
        server = Server(
            interface="127.0.0.1", port=port, max_connection_rate=None, max_clients=20_000, inline_callbacks=inline
        )
    handler = Handler(lambda to, s, p: server.send(to, Message(s, p)), lambda: len(server.clients))
    server.subscribe("message", lambda cid, m: handler.handle(cid, m.subject, m.payload))
    server.subscribe("request", lambda cid, m: m.payload)
    server.start()
    _ready_and_wait()


class McClient:
    fast = False
    #: Settings beyond the address and id (none: the library's defaults).
    tuning: dict[str, Any] = {"connect_timeout": 60, "inline_callbacks": True}

    def __init__(self, port: int, client_id: str, on_message: OnMessage, wait: bool = True) -> None:
        from missioncommander import Client, Message

        use_fast_json(self.fast)
        self._message = Message
        self.connected = threading.Event()
        self.client = Client(address="127.0.0.1", port=port, client_id=client_id, **self.tuning)
        self.client.subscribe("message", lambda m: on_message(m.subject, m.payload))
        self.client.subscribe("connect", self.connected.set)
        # Without waiting, many clients connect at once (the I/O thread
        # handles every handshake); the caller waits on `connected`.
        self.client.connect(wait=wait)

    def send(self, subject: str, payload: dict[str, Any]) -> None:
        self.client.send(self._message(subject, payload))

    def request(self, subject: str, payload: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = self.client.request(self._message(subject, payload), timeout=30).payload
        return reply

    def close(self) -> None:
        self.client.disconnect()


class McPooledClient(McClient):
    """MissionCommander as a new user gets it: every setting of both sides
    at its default (callbacks on the callback pool among them)."""

    tuning: dict[str, Any] = {}


def mc_pooled_serve(port: int) -> None:
    mc_serve(port, defaults=True)


class McFastClient(McClient):
    """MissionCommander with the ``fast`` extra (orjson encodes)."""

    fast = True


def mc_fast_serve(port: int) -> None:
    mc_serve(port, fast=True)


def new_loop(uvloop: bool) -> Any:
    """The event loop of an asyncio system: asyncio's own, or uvloop's
    (mc-uvloop: the same code on the loop an asyncio service that cares
    about speed runs on)."""
    import asyncio

    if uvloop:
        import uvloop as uv  # only for mc-uvloop (bench/run.sh installs it)

        return uv.new_event_loop()
    return asyncio.new_event_loop()


def mc_uvloop_serve(port: int) -> None:
    """``mc_async_serve`` on uvloop."""
    mc_async_serve(port, uvloop=True)


def mc_async_serve(port: int, uvloop: bool = False) -> None:
    """MissionCommander's asyncio API: an ``AsyncServer`` on asyncio's loop
    (or uvloop's)."""
    import asyncio

    from missioncommander import Message
    from missioncommander.aio import AsyncServer

    use_fast_json(False)  # pure Python, as the threaded system (orjson is mc-fast's)

    async def serve() -> None:
        server = AsyncServer(interface="127.0.0.1", port=port, max_connection_rate=None, max_clients=20_000)
        # The handler's replies queue without waiting (a full queue raises, as
        # with the threaded server): the roles are the same for every system.
        handler = Handler(lambda to, s, p: server.send_nowait(to, Message(s, p)), lambda: len(server.clients))
        # The handler never awaits, so it is a plain message callback, run as
        # each message is read: as the threaded server's inline callbacks and
        # the asyncio floor's data_received answer.  (Read through
        # server.messages() instead, each message waits a loop turn for the
        # reading task: bench/RESULTS.md has both.)
        server.subscribe("message", lambda cid, m: handler.handle(cid, m.subject, m.payload))
        server.subscribe("request", lambda cid, m: m.payload)
        async with server:
            print("READY", flush=True)
            await asyncio.Event().wait()  # until run.py kills the process

    with asyncio.Runner(loop_factory=lambda: new_loop(uvloop)) as runner:
        runner.run(serve())


# -- plain sockets: length-prefixed JSON, a blocking thread per connection -------

_LEN = struct.Struct("!I")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def _send_json(sock: socket.socket, lock: threading.Lock, obj: Any) -> None:
    data = json.dumps(obj).encode()
    with lock:
        sock.sendall(_LEN.pack(len(data)) + data)


def raw_serve(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    conns: dict[str, tuple[socket.socket, threading.Lock]] = {}
    table_lock = threading.Lock()

    def reply(to: str, subject: str, payload: dict[str, Any]) -> None:
        with table_lock:
            targets = list(conns.values()) if to == "*" else [conns[to]]
        data = json.dumps([subject, payload]).encode()  # encoded once for a broadcast
        frame = _LEN.pack(len(data)) + data
        for sock, lock in targets:
            try:
                with lock:
                    sock.sendall(frame)
            except OSError:
                pass

    handler = Handler(reply, lambda: len(conns))

    def serve(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client_id = json.loads(_recv_exact(sock, _LEN.unpack(_recv_exact(sock, 4))[0]))
            with table_lock:
                conns[client_id] = (sock, threading.Lock())
            while True:
                subject, payload = json.loads(_recv_exact(sock, _LEN.unpack(_recv_exact(sock, 4))[0]))
                handler.handle(client_id, subject, payload)
        except (OSError, ConnectionError):
            pass

    def accept() -> None:
        while True:
            sock, _ = listener.accept()
            threading.Thread(target=serve, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    _ready_and_wait()


class RawClient:
    def __init__(self, port: int, client_id: str, on_message: OnMessage) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Lock()
        _send_json(self.sock, self.lock, client_id)
        self.on_message = on_message
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                subject, payload = json.loads(_recv_exact(self.sock, _LEN.unpack(_recv_exact(self.sock, 4))[0]))
                self.on_message(subject, payload)
        except (OSError, ConnectionError, ValueError):
            pass

    def send(self, subject: str, payload: dict[str, Any]) -> None:
        _send_json(self.sock, self.lock, [subject, payload])

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# -- bare asyncio: the plain sockets' framing on asyncio Protocols ---------------


class _Framed:
    """An ``asyncio.Protocol``'s framing for the bare asyncio systems: the
    plain sockets' length-prefixed JSON, each frame to ``on_frame``."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 4:
            stop = pos + 4 + _LEN.unpack_from(buf, pos)[0]
            if stop > end:
                break
            self.on_frame(json.loads(buf[pos + 4 : stop]))
            pos = stop
        del buf[:pos]

    def on_frame(self, obj: Any) -> None:
        raise NotImplementedError

    def write_json(self, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.transport.write(_LEN.pack(len(data)) + data)


def asyncio_serve(port: int, uvloop: bool = False) -> None:
    """The floor for asyncio: plain asyncio Protocols (or uvloop's), no
    library; a broadcast encoded once and written to every transport."""
    import asyncio

    conns: dict[str, Any] = {}

    def reply(to: str, subject: str, payload: dict[str, Any]) -> None:
        data = json.dumps([subject, payload]).encode()
        frame = _LEN.pack(len(data)) + data
        for transport in list(conns.values()) if to == "*" else [conns[to]]:
            transport.write(frame)

    handler = Handler(reply, lambda: len(conns))

    class Connection(_Framed, asyncio.Protocol):
        client_id: str | None = None

        def on_frame(self, obj: Any) -> None:
            if self.client_id is None:  # the first frame names the client
                self.client_id = obj
                conns[obj] = self.transport
            else:
                handler.handle(self.client_id, obj[0], obj[1])

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client_id is not None and conns.get(self.client_id) is self.transport:
                del conns[self.client_id]

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Connection, "127.0.0.1", port, backlog=4096)
        print("READY", flush=True)
        await server.serve_forever()

    with asyncio.Runner(loop_factory=lambda: new_loop(uvloop)) as runner:
        runner.run(serve())


def uvloop_serve(port: int) -> None:
    asyncio_serve(port, uvloop=True)


class Received(NamedTuple):
    """A bare asyncio client's message, read as ``Message``s are."""

    subject: str
    payload: dict[str, Any]


class BareAsyncClient(_Framed):
    """The client side of the asyncio floor, with the ``AsyncClient``
    methods bench/aio_scenarios.py uses; ``send`` waits while the
    transport's buffer is over its high-water mark (asyncio's flow control),
    as ``StreamWriter.drain`` does."""

    def __init__(self, address: str, port: int, client_id: str, connect_timeout: float = 60.0) -> None:
        super().__init__()
        self.address, self.port, self.client_id, self.connect_timeout = address, port, client_id, connect_timeout
        self.received: deque[Received] = deque()
        self.callback: Callable[[Received], None] | None = None
        self.waiter: Any = None
        self.room: Any = None
        self.closed = False

    async def connect(self) -> None:
        import asyncio

        async with asyncio.timeout(self.connect_timeout):
            await asyncio.get_running_loop().create_connection(lambda: self, self.address, self.port)
        self.write_json(self.client_id)

    async def disconnect(self) -> None:
        self.transport.close()

    async def __aenter__(self) -> BareAsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    async def send(self, message: Any) -> None:
        if self.room is not None:
            await self.room
        self.write_json([message.subject, message.payload])

    def pause_writing(self) -> None:
        self.room = _new_future()

    def resume_writing(self) -> None:
        room, self.room = self.room, None
        if room is not None and not room.done():
            room.set_result(None)

    def on_frame(self, obj: Any) -> None:
        if self.callback is not None:
            self.callback(Received(obj[0], obj[1]))
            return
        self.received.append(Received(obj[0], obj[1]))
        self._wake()

    def subscribe(self, event: str, callback: Callable[[Received], None]) -> None:
        """``AsyncClient.subscribe("message", ...)``: each message to
        ``callback`` as it is read (in ``data_received``), none queued."""
        assert event == "message"
        self.callback = callback

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        self.resume_writing()  # a send waiting for room goes on (and writes to a closed transport)

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def messages(self) -> BareAsyncClient:
        return self

    def __aiter__(self) -> BareAsyncClient:
        return self

    async def __anext__(self) -> Received:
        while not self.received:
            if self.closed:
                raise StopAsyncIteration
            self.waiter = _new_future()
            await self.waiter
        return self.received.popleft()


def _new_future() -> Any:
    import asyncio

    return asyncio.get_running_loop().create_future()


# -- pyzmq: ROUTER/DEALER for addressed traffic, PUB/SUB for broadcast ------------


def zmq_serve(port: int) -> None:
    import zmq

    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 100_000)
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)
    router.bind(f"tcp://127.0.0.1:{port}")
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(f"tcp://127.0.0.1:{port + 1}")
    seen: set[bytes] = set()

    def reply(to: str, subject: str, payload: dict[str, Any]) -> None:
        data = json.dumps([subject, payload]).encode()
        if to == "*":
            pub.send(data)
        else:
            router.send_multipart([to.encode(), data])

    handler = Handler(reply, lambda: len(seen))
    print("READY", flush=True)
    while True:
        frames = router.recv_multipart()
        if len(frames) == 3:  # a REQ socket's request: [identity, b"", body]; answered with its payload
            router.send_multipart([frames[0], b"", json.dumps(json.loads(frames[2])[1]).encode()])
            continue
        ident, data = frames
        seen.add(ident)
        subject, payload = json.loads(data)
        if subject != "hello":
            handler.handle(ident.decode(), subject, payload)


class _ZmqHub:
    """One I/O thread for every ``ZmqClient`` of the process, the way
    pyzmq's own event-loop integrations work (zmq.asyncio, tornado): each
    socket's ``zmq.FD`` in one epoll, and a socket whose FD fires is drained
    with ``NOBLOCK`` receives while ``zmq.EVENTS`` says there is more.
    Senders send from their own thread under the socket's lock (a mutex is
    the memory barrier libzmq asks for between threads) and wake the hub
    when the send left a message readable, since then the FD may not fire.
    """

    _instance: _ZmqHub | None = None

    @classmethod
    def get(cls) -> _ZmqHub:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        import select

        import zmq

        self.zmq = zmq
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, 100_000)  # the default, 1023, is 500 clients here
        self.epoll = select.epoll()
        self.lock = threading.Lock()
        self.sockets: dict[int, tuple[Any, ZmqClient]] = {}
        self.woken: set[Any] = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        threading.Thread(target=self._run, name="zmq-hub", daemon=True).start()

    def add(self, sock: Any, client: ZmqClient) -> None:
        fd = sock.getsockopt(self.zmq.FD)
        with self.lock:
            self.sockets[fd] = (sock, client)
        self.epoll.register(fd, 1)  # EPOLLIN
        self.wake(sock)  # anything that came before the registration

    def remove(self, sock: Any) -> None:
        fd = sock.getsockopt(self.zmq.FD)
        with self.lock:
            self.sockets.pop(fd, None)
        self.epoll.unregister(fd)

    def wake(self, sock: Any) -> None:
        with self.lock:
            self.woken.add(sock)
        os.write(self.wake_w, b"x")

    def _run(self) -> None:
        while True:
            for fd, _ in self.epoll.poll(1.0):
                if fd == self.wake_r:
                    try:
                        os.read(self.wake_r, 65536)
                    except BlockingIOError:
                        pass
                    with self.lock:
                        woken, self.woken = self.woken, set()
                        owners = [entry for entry in self.sockets.values() if entry[0] in woken]
                    for sock, client in owners:
                        client.drain(sock)
                else:
                    with self.lock:
                        entry = self.sockets.get(fd)
                    if entry is not None:
                        entry[1].drain(entry[0])


class ZmqClient:
    """A DEALER for addressed traffic and a SUB for broadcasts, served by
    the process's one ``_ZmqHub`` thread; ``request`` uses a REQ socket."""

    def __init__(self, port: int, client_id: str, on_message: OnMessage) -> None:
        hub = _ZmqHub.get()
        zmq = hub.zmq
        self.hub, self.zmq, self.port = hub, zmq, port
        self._req: Any = None
        self.lock = threading.Lock()
        self.on_message = on_message
        self.dealer = hub.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.IDENTITY, client_id.encode())
        self.dealer.connect(f"tcp://127.0.0.1:{port}")
        self.sub = hub.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"tcp://127.0.0.1:{port + 1}")
        hub.add(self.dealer, self)
        hub.add(self.sub, self)
        self.send("hello", {})

    def drain(self, sock: Any) -> None:
        """Everything readable on ``sock`` now (the hub's thread)."""
        zmq = self.zmq
        got = []
        with self.lock:
            if sock.closed:
                return
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                got.append(sock.recv(zmq.NOBLOCK))
        for data in got:
            self.on_message(*json.loads(data))

    def send(self, subject: str, payload: dict[str, Any]) -> None:
        data = json.dumps([subject, payload]).encode()
        with self.lock:
            self.dealer.send(data)
            readable = self.dealer.getsockopt(self.zmq.EVENTS) & self.zmq.POLLIN
        if readable:  # the send took the FD's edge: the hub would not hear of it
            self.hub.wake(self.dealer)

    def request(self, subject: str, payload: dict[str, Any]) -> dict[str, Any]:
        """pyzmq's request/reply as its users write it: a REQ socket, send
        then recv, on the caller's thread (made on first use, kept)."""
        if self._req is None:
            self._req = self.hub.ctx.socket(self.zmq.REQ)
            self._req.connect(f"tcp://127.0.0.1:{self.port}")
        self._req.send(json.dumps([subject, payload]).encode())
        reply: dict[str, Any] = json.loads(self._req.recv())
        return reply

    def close(self) -> None:
        if self.dealer.closed:
            return
        for sock in (self.dealer, self.sub):
            self.hub.remove(sock)
        with self.lock:
            for sock in (self.dealer, self.sub):
                sock.close(linger=0)
        if self._req is not None:
            self._req.close(linger=0)

    def stop(self) -> None:
        """Close at once (no thread of its own to wait for)."""
        self.close()


# -- paho-mqtt through mosquitto: a topic per client plus a broadcast topic, QoS 0 --


def mqtt_serve(port: int) -> None:
    import paho.mqtt.client as mqtt

    broker = int(os.environ["BENCH_BROKER_PORT"])
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-server")
    clients: set[str] = set()

    def reply(to: str, subject: str, payload: dict[str, Any]) -> None:
        topic = "mc/all" if to == "*" else f"mc/down/{to}"
        client.publish(topic, json.dumps([subject, payload]), qos=0)

    handler = Handler(reply, lambda: len(clients))

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        sender = msg.topic.rsplit("/", 1)[1]
        clients.add(sender)
        subject, payload = json.loads(msg.payload)
        if subject != "hello":
            handler.handle(sender, subject, payload)

    client.on_message = on_message
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", broker)
    client.subscribe("mc/up/+", qos=0)
    client.loop_start()
    _ready_and_wait()


class MqttClient:
    def __init__(self, port: int, client_id: str, on_message: OnMessage) -> None:
        import paho.mqtt.client as mqtt

        broker = int(os.environ["BENCH_BROKER_PORT"])
        self.client_id = client_id
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        subscribed = threading.Event()
        self.client.on_message = lambda _c, _u, msg: on_message(*json.loads(msg.payload))
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", broker)
        self.client.loop_start()
        self.client.subscribe([(f"mc/down/{client_id}", 0), ("mc/all", 0)])
        if not subscribed.wait(30):
            raise TimeoutError("no SUBACK from mosquitto")
        self.send("hello", {})

    def send(self, subject: str, payload: dict[str, Any]) -> None:
        self.client.publish(f"mc/up/{self.client_id}", json.dumps([subject, payload]), qos=0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _ready_and_wait() -> None:
    print("READY", flush=True)
    threading.Event().wait()


SYSTEMS: dict[str, tuple[Callable[[int], None], type]] = {
    "missioncommander": (mc_serve, McClient),
    "mc-pooled": (mc_pooled_serve, McPooledClient),
    "mc-fast": (mc_fast_serve, McFastClient),
    # Its clients are asyncio code: run.py runs aio_scenarios for it.
    "mc-async": (mc_async_serve, McClient),
    "mc-uvloop": (mc_uvloop_serve, McClient),
    "sockets": (raw_serve, RawClient),
    # The floor for the asyncio systems; run.py runs aio_scenarios for them.
    "asyncio": (asyncio_serve, BareAsyncClient),
    "uvloop": (uvloop_serve, BareAsyncClient),
    "pyzmq": (zmq_serve, ZmqClient),
    "mqtt": (mqtt_serve, MqttClient),
}
