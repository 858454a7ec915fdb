"""Retries running out, server-side heartbeat, and no leaked threads or descriptors."""

from __future__ import annotations

import errno
import gc
import logging
import os
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import DEFAULT_WAIT, FaultProxy, Recorder, in_a_forked_child, server_frames, wait_until

from missioncommander import BindError, Client, ClientState, Message, Server, SessionLost, StateError
from missioncommander._events import Challenge, PingReceived, Welcome
from missioncommander._frames import FrameType, encode_json_frame

S = ClientState
MakeClient = Callable[..., Client]


def test_reconnect_attempts_run_out(server: Server, make_client: MakeClient) -> None:
    proxy = FaultProxy(server.port)
    try:
        client = make_client(
            address="127.0.0.1", port=proxy.port, reconnect_attempts=3, reconnect_delay=0.01, reconnect_max_delay=0.02
        )
        rec = Recorder().attach(client, "statechange")
        client.connect()
        proxy.refusing = True
        proxy.cut("rst")
        failed = S.STATE_OK | S.STATE_NOT_CONNECTED | S.STATE_RECONNECT_FAILED
        rec.wait_for(lambda: any(t.new_state == failed for (t,) in rec.of("statechange")), what="RECONNECT_FAILED")
        assert client.state == failed
        assert "handshake" in (client.last_close_reason or "") or "closed" in (client.last_close_reason or "")
    finally:
        proxy.close()


def test_server_drops_a_silent_client_after_its_heartbeat_timeout() -> None:
    with Server(interface="127.0.0.1", port=0, heartbeat_interval=0.1, heartbeat_timeout=0.5) as server:
        rec = Recorder().attach(server, "clientconnect")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                encode_json_frame(
                    FrameType.HELLO,
                    {
                        "version": 1,
                        "client_id": "mute",
                        "session": None,
                        "last_seq": 0,
                        "max_frame_size": 65536,
                        "heartbeat_timeout": 60,
                    },
                )
            )
            rec.wait_count("clientconnect", 1)
            # We never answer its PINGs: the server must close on us.
            pings = sum(1 for e in server_frames(sock) if isinstance(e, PingReceived))
        assert pings >= 1
        assert server.clients == ["mute"]  # detached, not ended: it may resume


def test_a_busy_link_sends_no_pings() -> None:
    """PING only when a side has sent nothing for an interval (docs/PROTOCOL.md,
    "Liveness"): MESSAGE frames count as sending, though they are written
    without the connection's send calls."""
    with Server(interface="127.0.0.1", port=0, heartbeat_interval=0.5, heartbeat_timeout=30) as server:
        rec = Recorder().attach(server, "clientconnect")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            hello = {"version": 1, "client_id": "busy", "session": None, "last_seq": 0}
            hello |= {"max_frame_size": 65536, "heartbeat_timeout": 60}
            sock.sendall(encode_json_frame(FrameType.HELLO, hello))
            rec.wait_count("clientconnect", 1)
            frames = server_frames(sock)
            # Four intervals of traffic, a message every 20 ms: never a pause
            # of an interval, so never a reason to PING.
            for n in range(100):
                server.send("busy", Message("tick", {"n": n}))
                time.sleep(0.02)
            server.send("busy", Message("last"))
            seen: list[object] = []
            for frame in frames:
                seen.append(frame)
                if getattr(frame, "subject", None) == "last":
                    break
        assert sum(1 for f in seen if getattr(f, "subject", None) == "tick") == 100
        assert not [f for f in seen if isinstance(f, PingReceived)]


def test_a_server_that_stood_still_reads_before_it_calls_its_clients_silent(make_client: MakeClient) -> None:
    """A server whose I/O thread stood still for longer than its
    heartbeat timeout (here an inline callback; as well a pause, a frozen
    virtual machine) found its clients' PINGs unread and cut every one of
    them as silent: tried with 1,000 clients and a 20 s SIGSTOP, all 1,000
    detached and came back.  It reads first now."""
    with Server(
        interface="127.0.0.1", port=0, heartbeat_interval=0.1, heartbeat_timeout=0.5, inline_callbacks=True
    ) as server:
        rec = Recorder().attach(server, "clientconnect", "clientdetach", "message")
        server.subscribe("message", lambda client_id, message: message.subject == "stall" and time.sleep(1.5))
        steady = {"heartbeat_interval": 0.1, "heartbeat_timeout": 30.0}  # the clients wait out the stall
        bystander = make_client(server, client_id="bystander", **steady)
        staller = make_client(server, client_id="staller", **steady)
        bystander.connect()
        staller.connect()
        rec.wait_count("clientconnect", 2)
        staller.send(Message("stall"))  # 1.5 s with the I/O thread held: three heartbeat timeouts
        rec.wait_count("message", 1)
        bystander.send(Message("after"))
        rec.wait_count("message", 2)
        # Its first turn after the stall ran every overdue check: a cut would be seen by now.
        assert rec.of("clientdetach") == []
        assert bystander.stats()["resumes"] == 0


def test_a_handshake_that_came_while_the_server_stood_still_is_read_before_it_times_out(
    make_client: MakeClient,
) -> None:
    """The timers that fell due while an inline callback held the I/O
    thread ran before the loop read again: a HELLO that had come meanwhile
    got ERROR handshake_timeout.  They now wait for the next turn's read,
    as asyncio's loop does."""
    with Server(interface="127.0.0.1", port=0, handshake_timeout=0.5, inline_callbacks=True) as server:
        rec = Recorder().attach(server, "clientconnect", "message")
        server.subscribe("message", lambda client_id, message: message.subject == "stall" and time.sleep(1.5))
        staller = make_client(server, client_id="staller", heartbeat_timeout=30.0)
        staller.connect()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            frames = server_frames(sock)
            assert isinstance(next(frames), Challenge)  # accepted: its handshake's 0.5 s run
            staller.send(Message("stall"))  # 1.5 s with the I/O thread held
            rec.wait_count("message", 1)
            hello = {"version": 1, "client_id": "late", "session": None, "last_seq": 0}
            sock.sendall(encode_json_frame(FrameType.HELLO, hello | {"max_frame_size": 65536, "heartbeat_timeout": 60}))
            answer = next(frames)
            assert isinstance(answer, Welcome), answer
        rec.wait_count("clientconnect", 2)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_thread_or_descriptor_leak_over_many_sessions(make_client: MakeClient) -> None:
    def cycle() -> None:
        with Server(interface="127.0.0.1", port=0) as server:
            rec = Recorder().attach(server, "message")
            clients = [make_client(server) for _ in range(10)]
            for c in clients:
                c.connect()
                c.send(Message("x"))
            rec.wait_count("message", 10)
            for c in clients[:5]:
                c.disconnect()
        wait_until(lambda: all(c.state & S.STATE_NOT_CONNECTED for c in clients), what="all clients stopped")

    cycle()  # warm up: the I/O and callback threads start once per process
    threads, fds = threading.active_count(), _fds()
    for _ in range(5):
        cycle()
    wait_until(lambda: _fds() <= fds, what=f"descriptors back to {fds}")
    assert threading.active_count() <= threads


def test_connect_without_waiting_keeps_trying_until_the_server_is_up(make_client: MakeClient) -> None:
    probe = Server(interface="127.0.0.1", port=0)
    probe.start()
    port = probe.port
    probe.stop()
    client = make_client(address="127.0.0.1", port=port, reconnect_delay=0.02, reconnect_max_delay=0.1)
    rec = Recorder().attach(client, "connect", "statechange")
    client.connect(wait=False)
    assert client.state == S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTING
    # A failed attempt leaves it connecting, not failed.
    wait_until(lambda: "refused" in (client.last_close_reason or ""), what="a failed attempt")
    assert client.state == S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTING
    server = Server(interface="127.0.0.1", port=port)
    server.start()
    try:
        rec.wait_count("connect", 1)
        assert client.state == S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTED
    finally:
        client.disconnect()
        server.stop()


def test_connect_without_waiting_gives_up_after_its_attempts(make_client: MakeClient) -> None:
    probe = Server(interface="127.0.0.1", port=0)
    probe.start()
    port = probe.port
    probe.stop()
    client = make_client(address="127.0.0.1", port=port, reconnect_delay=0.01, reconnect_attempts=2)
    rec = Recorder().attach(client, "statechange")
    client.connect(wait=False)
    failed = S.STATE_OK | S.STATE_NOT_CONNECTED | S.STATE_CONNECT_FAILED
    rec.wait_for(lambda: any(t.new_state == failed for (t,) in rec.of("statechange")), what="CONNECT_FAILED")


def test_a_client_connected_again_says_why_its_last_connection_closed_not_its_last_failed_attempt(
    server: Server, make_client: MakeClient
) -> None:
    """While it retries, last_close_reason says why each attempt failed (a
    wrong CA shows as such); once connected again, "connection closed during
    the handshake" beside "connected" misled: the outage's cause shows.
    (A first connect keeps its last refusal: test_first_contact.)"""
    proxy = FaultProxy(server.port)
    try:
        client = make_client(address="127.0.0.1", port=proxy.port, reconnect_delay=0.01, reconnect_max_delay=0.05)
        client.connect()
        assert client.last_close_reason is None and client.stats()["last_close_time"] is None
        proxy.refusing = True
        proxy.cut("rst")
        wait_until(lambda: "handshake" in (client.last_close_reason or ""), what="an attempt refused")
        assert client.state & ClientState.STATE_RECONNECTING
        proxy.refusing = False
        client.wait_connected(DEFAULT_WAIT)
        assert client.last_close_reason in ("connection reset by peer", "connection closed by peer")
        cut_at = client.stats()["last_close_time"]
        client.disconnect()
        assert client.last_close_reason == "disconnected by this client"
        assert client.stats()["last_close_time"] >= cut_at
        # Connected again after a disconnect(): attempts refused, then in.
        proxy.refusing = True
        client.connect(wait=False)
        wait_until(lambda: "handshake" in (client.last_close_reason or ""), what="an attempt refused")
        proxy.refusing = False
        client.wait_connected(DEFAULT_WAIT)
        assert client.last_close_reason == "disconnected by this client"
    finally:
        proxy.close()


def _time_wait_ports() -> list[tuple[int, int]]:
    """(local port, remote port) of this machine's IPv4 TCP connections in TIME_WAIT."""
    found = []
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "06":  # TIME_WAIT
                found.append((int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)))
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
def test_disconnect_leaves_time_wait_on_the_server_side(server: Server, make_client: MakeClient) -> None:
    """A client that connects often must not use up its local ports: after
    its BYE it lets the server close first, so TIME_WAIT stays there."""
    for _ in range(3):
        client = make_client(address="127.0.0.1", port=server.port)
        client.connect()
        client.disconnect()
    wait_until(
        lambda: sum(local == server.port for local, _ in _time_wait_ports()) >= 3, what="TIME_WAIT on the server"
    )
    assert [pair for pair in _time_wait_ports() if pair[1] == server.port] == []


def test_disconnect_and_stop_wait_for_earlier_callbacks_even_with_nothing_to_close() -> None:
    """The promise holds for a client that never connected (its settings
    emit a statechange) and a server stopped already: mcd publishes an
    instance's `removed` after disconnect()/stop() and no event may follow it."""
    finished: list[str] = []
    slow = threading.Event()  # never set: each callback takes its 0.3 s wait

    def slow_callback(*_: object) -> None:
        slow.wait(0.3)
        finished.append("done")

    client = Client()
    client.subscribe("statechange", slow_callback)
    client.address, client.port = "127.0.0.1", 1  # fully set: NEEDS_INIT -> OK, on the callback thread
    client.disconnect()
    assert finished == ["done"]

    # A server whose first stop() gave up waiting (its timeout) is stopped
    # already; a second stop() still waits for the callbacks.
    server = Server(interface="127.0.0.1", port=0)
    server.subscribe("clientconnect", lambda _: slow_callback())
    server.start()
    with Client(address="127.0.0.1", port=server.port):
        server.stop(timeout=0.01)
    server.stop()
    assert finished == ["done", "done"]


def test_a_disconnected_client_is_not_kept_alive_by_the_library(server: Server) -> None:
    """A closed connection's timers wait in the loop until their time (a
    minute, for a connect timeout); they must not keep the client alive."""
    refs = []
    for i in range(20):
        client = Client(address="127.0.0.1", port=server.port, client_id=f"gone{i}")
        client.connect()
        client.send(Message("x"))
        client.disconnect()
        refs.append(weakref.ref(client))
    del client
    # The I/O thread's locals may still name the last connection it handled.
    last = Client(address="127.0.0.1", port=server.port, client_id="last")
    last.connect()
    last.disconnect()
    gc.collect()
    assert [ref() for ref in refs if ref() is not None] == []


def test_a_server_on_a_taken_port_raises_bind_error_and_starts_once_it_is_free() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = Server(interface="127.0.0.1", port=port)
        before = set(threading.enumerate())
        with pytest.raises(BindError) as info:
            server.start()
        assert info.value.errno == errno.EADDRINUSE
        # The address once, and the reason in words (not socket's own repeat of the address).
        assert str(info.value) == (
            f"[Errno {errno.EADDRINUSE}] cannot listen on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}"
        )
        assert not server.running
        assert not set(threading.enumerate()) - before  # no thread left running
    with server:  # the port is free: the same object starts
        assert server.running and server.port == port


def test_a_server_on_port_0_comes_back_on_the_port_it_prefers_while_that_is_free(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server(interface="127.0.0.1", port=0)
    server.start()
    first = server.port
    server.stop()
    server.start(prefer_port=first)  # a restart: its clients look for it there
    try:
        assert server.port == first and server.requested_port == 0
    finally:
        server.stop()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        server.start(prefer_port=busy)  # taken: a free port, and a warning, not a BindError
        try:
            assert server.running and server.port not in (0, busy)
            assert f"port {busy}, preferred, is not free" in caplog.text
        finally:
            server.stop()
    for wrong in (70000, -1, "80", True):
        with pytest.raises(ValueError, match="prefer_port must be a port number"):
            server.start(prefer_port=wrong)
    assert not server.running
    fixed = Server(interface="127.0.0.1", port=first)
    with socket.create_server(("127.0.0.1", first)), pytest.raises(BindError):
        fixed.start(prefer_port=busy)  # a port that is set is the port: the preference is for port 0 only


def test_reconnect_on_shutdown_carries_on_with_a_new_session_on_the_server_that_comes_back(
    make_client: MakeClient,
) -> None:
    first = Server(interface="127.0.0.1", port=0)
    first.start()
    port = first.port
    answering = threading.Event()
    release = threading.Event()

    def slow_answer(client_id: str, request: Message) -> dict[str, str]:
        answering.set()
        release.wait(10)
        return {"too": "late"}

    first.subscribe("request", slow_answer)
    client = make_client(first, client_id="stays", reconnect_on_shutdown=True)
    rec = Recorder().attach(client, "servershutdown", "reconnect", "sessionlost", "message")
    client.connect()
    with ThreadPoolExecutor(2) as pool:
        asking = pool.submit(client.request, Message("status"), 30)
        assert answering.wait(10)
        stopping = pool.submit(first.stop)
        try:
            rec.wait_count("servershutdown", 1)
            # At once, not after the request's 30 s: the server that would answer is gone.
            with pytest.raises(SessionLost, match="server shut down"):
                asking.result(10)
            wait_until(lambda: client.state & S.STATE_RECONNECTING, what="the client reconnecting")
            # Queued for whichever server comes: they belong to the next session.
            client.send(Message("while-away", {"n": 1}))
            asking_later = pool.submit(client.request, Message("later"), 30)
        finally:
            release.set()
            stopping.result(10)

        with Server(interface="127.0.0.1", port=port) as second:
            got = Recorder().attach(second, "message", "clientconnect")
            asked: list[str] = []
            second.subscribe(
                "request", lambda client_id, request: (asked.append(request.subject), {"by": "second"})[-1]
            )
            rec.wait_count("reconnect", 1, timeout=15)
            assert got.wait_count("message", 1) == [("stays", Message("while-away", {"n": 1}))]
            assert asking_later.result(10) == Message("later", {"by": "second"})
            reply = client.request(Message("fresh"), timeout=10)
            assert dict(reply.payload) == {"by": "second"}
            assert asked == ["later", "fresh"]  # the request lost with the first server was not sent again
            second.send("stays", Message("welcome-back"))
            assert rec.wait_count("message", 1) == [(Message("welcome-back"),)]
            assert client.state == S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTED
            # The shutdown said what was lost; no second notice when the new session starts.
            assert rec.of("sessionlost") == []
            assert len(got.of("message")) == 1
            assert client.stats()["sessions_lost"] == 1


def test_reconnect_on_shutdown_moves_on_to_the_next_of_its_servers(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0) as spare:
        leaving = Server(interface="127.0.0.1", port=0)
        leaving.start()
        try:
            client = make_client(
                servers=[f"127.0.0.1:{leaving.port}", f"127.0.0.1:{spare.port}"], reconnect_on_shutdown=True
            )
            rec = Recorder().attach(client, "servershutdown", "reconnect")
            client.connect()
            assert client.port == leaving.port
        finally:
            leaving.stop()
        rec.wait_count("servershutdown", 1)
        rec.wait_count("reconnect", 1, timeout=15)
        assert client.port == spare.port
        got = Recorder().attach(spare, "message")
        client.send(Message("hello"))
        assert got.wait_count("message", 1) == [(client.client_id, Message("hello"))]


def test_what_a_stopping_server_took_is_acknowledged_and_never_sent_to_the_next(make_client: MakeClient) -> None:
    first = Server(interface="127.0.0.1", port=0)
    first.subscribe("message", lambda client_id, message: None)
    took = Recorder().attach(first, "message")
    first.start()
    port = first.port
    client = make_client(first, client_id="once", reconnect_on_shutdown=True)
    rec = Recorder().attach(client, "reconnect", "servershutdown")
    try:
        client.connect()
        client.send(Message("taken", {"n": 1}))
        took.wait_count("message", 1)
        assert first.wait_callbacks(10)  # taken; its ACK would otherwise wait its 20 ms
    finally:
        first.stop()
    rec.wait_count("servershutdown", 1)
    assert client.queued == 0  # the SHUTDOWN came after the ACK
    with Server(interface="127.0.0.1", port=port) as second:
        got = Recorder().attach(second, "message")
        rec.wait_count("reconnect", 1)
        client.send(Message("next"))
        got.wait_count("message", 1)
        assert got.of("message") == [("once", Message("next"))]


def test_a_stop_with_detached_clients_says_what_it_dropped_in_one_line(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping a server whose clients had gone wrote one warning per client
    (a wall of them for a server of thousands): one line says them all."""
    server = Server(interface="127.0.0.1", port=0)
    server.start()
    proxy = FaultProxy(server.port)
    try:
        for i in range(3):
            make_client(client_id=f"d{i}", address="127.0.0.1", port=proxy.port).connect()
        proxy.refusing = True
        proxy.cut("rst")
        wait_until(lambda: len(server.detached_clients) == 3, what="three detached clients")
        for i in range(3):
            for n in range(i + 1):
                server.send(f"d{i}", Message("later", {"n": n}))  # kept for a resume that will not come
        caplog.set_level(logging.INFO, logger="missioncommander")
        server.stop()
    finally:
        proxy.close()
    said = [r for r in caplog.records if "never sent" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in said] == [
        (logging.WARNING, "server stopped: 6 message(s) never sent to 3 client(s) were dropped")
    ]


def test_an_expired_session_counts_what_it_wrote_to_the_broken_connection(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A session that expires drops its messages written to the connection
    that broke, unacknowledged, with those never written: the log line said
    only the unwritten ones (trying it through a pulled cable: 399 of 697),
    as if the rest had arrived."""
    release = threading.Event()
    server = Server(interface="127.0.0.1", port=0, session_expiry=0.2)
    server.start()
    proxy = FaultProxy(server.port)
    try:
        client = make_client(client_id="away", address="127.0.0.1", port=proxy.port)
        client.subscribe("message", lambda message: release.wait(DEFAULT_WAIT))  # holds its ACKs back
        client.connect()
        ended = Recorder().attach(server, "clientdisconnect")
        caplog.set_level(logging.INFO, logger="missioncommander")
        for n in range(3):
            server.send("away", Message("written", {"n": n}))
        wait_until(lambda: server.stats("away")["unwritten"] == 0, what="three messages written")
        proxy.refusing = True
        proxy.cut("rst")
        wait_until(lambda: "away" in server.detached_clients, what="the session detached")
        server.send("away", Message("kept", {}))  # for a resume that will not come
        ended.wait_count("clientdisconnect", 1)
    finally:
        release.set()
        proxy.close()
        server.stop()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "were dropped" in r.getMessage()]
    assert said == [
        (
            logging.WARNING,
            "session of client 'away' ended; 4 message(s) were dropped: 1 never sent, 3 sent on a connection that"
            " broke and never acknowledged",
        )
    ]


def test_a_forked_child_makes_clients_and_servers_of_its_own(server: Server, make_client: MakeClient) -> None:
    """A child forked while the library runs had its parent's loop and
    callback pool without their threads: a new client in it waited out its
    connect timeout ("no answer from the server") and no callback ran. It
    now starts its own; an instance made in the parent says it cannot be
    used there."""
    server.subscribe("message", lambda client_id, message: server.send(client_id, Message("echo", {"to": client_id})))
    parent = make_client(server, client_id="parent")
    parent.connect()  # the loop and the callback pool run when the process forks

    def child() -> dict[str, object]:
        echoed = threading.Event()
        kid = Client(address="127.0.0.1", port=server.port, client_id="kid", connect_timeout=10)
        kid.subscribe("message", lambda message: echoed.set())
        kid.connect()
        kid.send(Message("hello"))
        got_echo = echoed.wait(10)
        try:
            parent.connect()
            inherited = "no error"
        except StateError as exc:
            inherited = str(exc)
        own = Server(interface="127.0.0.1", port=0)
        own.start()
        local = Client(address="127.0.0.1", port=own.port, client_id="local", connect_timeout=10)
        local.connect()
        clients = own.clients
        local.disconnect()
        own.stop()
        kid.disconnect()
        return {"echo": got_echo, "inherited": inherited, "own_clients": clients}

    assert in_a_forked_child(child) == {
        "echo": True,
        "inherited": "this Client was made before the process forked and belongs to the parent;"
        " make a new Client in the child",
        "own_clients": ["local"],
    }
    parent.send(Message("the parent goes on"))
    wait_until(lambda: parent.stats()["messages_received"] == 1, what="the parent's echo")


def test_a_forked_child_holds_none_of_the_parents_sockets() -> None:
    """A child forked while a server ran kept its copies of the server's
    sockets: while it lived (a multiprocessing pool's worker) the parent
    could not listen on its port again, and a connection the parent closed
    sent its peer no FIN. The child closes its copies; the parent's are
    untouched."""
    server = Server(interface="127.0.0.1", port=0)
    server.start()
    port = server.port
    peer = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert peer.recv(1 << 16)  # the CHALLENGE: the server holds the connection when the process forks
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child lives until the parent is done, and uses nothing
        try:
            os.write(ready_w, b"r")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"r"
        peer.sendall(bytes([0, 0, 0, 5, 99]) + b"junk")  # a frame of no known type: ERROR and a close
        for _ in range(100):  # bounded: the ERROR, then the close
            if not peer.recv(1 << 16):  # times out (10 s) if the close sent no FIN
                break
        server.stop()
        again = Server(interface="127.0.0.1", port=port)
        again.start()  # BindError while the child held the listening socket
        again.stop()
    finally:
        os.write(go_w, b"g")
        os.waitpid(pid, 0)
        for fd in (go_r, go_w, ready_r, ready_w):
            os.close(fd)
        peer.close()
