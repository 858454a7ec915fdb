"""Sessions: reconnect, resume, takeover, refusal, bounded queues, expiry, restart."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import FaultProxy, Recorder, free_port, server_frames, wait_until

from missioncommander import Client, ClientState, Message, QueueFullError, Server
from missioncommander._events import Challenge, ErrorReceived
from missioncommander._frames import FrameType, encode_json_frame

S = ClientState
CONNECTED = S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTED
RECONNECTING = S.STATE_OK | S.STATE_RUNNING | S.STATE_UNEXP_CLOSED | S.STATE_RECONNECTING
MakeClient = Callable[..., Client]
ECHO_SERVER = Path(__file__).parent.parent / "support" / "echo_server.py"


@pytest.fixture
def proxy(server: Server) -> Iterator[FaultProxy]:
    p = FaultProxy(server.port)
    yield p
    p.close()


def via(proxy: FaultProxy) -> dict[str, object]:
    return {"address": "127.0.0.1", "port": proxy.port}


def test_reconnect_resumes_the_session_after_a_reset(
    server: Server, proxy: FaultProxy, make_client: MakeClient
) -> None:
    srv = Recorder().attach(server, "clientconnect", "clientdisconnect", "message")
    client = make_client(client_id="c", **via(proxy))
    rec = Recorder().attach(client, "reconnect", "statechange", "message", "connect")
    client.connect()
    proxy.cut("rst")
    assert rec.wait_count("reconnect", 1) == [("c",)]
    states = [t.new_state for (t,) in rec.of("statechange")]
    assert RECONNECTING in states and states[-1] == CONNECTED
    assert "reset" in (client.last_close_reason or "") or "closed" in (client.last_close_reason or "")
    client.send(Message("after"))
    srv.wait_count("message", 1)
    assert srv.of("clientconnect") == [("c",)] and srv.of("clientdisconnect") == []
    assert len(rec.of("connect")) == 1


def test_the_server_says_when_a_client_detaches_and_when_it_resumes(
    server: Server, proxy: FaultProxy, make_client: MakeClient
) -> None:
    """Its session waiting for it was visible only in ``detached_clients``,
    polled: ``clientdetach`` (with why) and ``clientresume`` say it as it
    happens, and neither is a disconnect or a new connect."""
    srv = Recorder().attach(server, "clientconnect", "clientdisconnect", "clientdetach", "clientresume")
    client = make_client(client_id="d", **via(proxy))
    rec = Recorder().attach(client, "reconnect")
    client.connect()
    srv.wait_count("clientconnect", 1)
    proxy.cut("rst")
    ((client_id, reason),) = srv.wait_count("clientdetach", 1)
    assert client_id == "d" and "reset" in reason
    rec.wait_count("reconnect", 1)
    assert srv.wait_count("clientresume", 1) == [("d",)]
    assert srv.names() == ["clientconnect", "clientdetach", "clientresume"]
    client.disconnect()
    srv.wait_count("clientdisconnect", 1)
    assert srv.of("clientdetach") == [("d", reason)]  # a goodbye ends the session: no detach


def test_heartbeat_detects_a_silent_peer_and_takes_over_the_half_open_link(
    server: Server, proxy: FaultProxy, make_client: MakeClient
) -> None:
    srv = Recorder().attach(server, "clientconnect", "clientdisconnect")
    client = make_client(client_id="hb", heartbeat_interval=0.1, heartbeat_timeout=0.6, **via(proxy))
    rec = Recorder().attach(client, "reconnect", "message")
    client.connect()
    proxy.cut("blackhole")  # no FIN, no RST: only the heartbeat can tell
    rec.wait_count("reconnect", 1)
    assert "heartbeat timeout" in (client.last_close_reason or "")
    # The server had not noticed (its timeout is 3 s); the resume took over.
    assert server.clients == ["hb"]
    assert srv.of("clientdisconnect") == [] and len(srv.of("clientconnect")) == 1
    server.send("hb", Message("after-takeover"))
    rec.wait_count("message", 1)


def raw_hello(port: int, client_id: str, token: str | None) -> list[object]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            encode_json_frame(
                FrameType.HELLO,
                {
                    "version": 1,
                    "client_id": client_id,
                    "session": token,
                    "last_seq": 0,
                    "max_frame_size": 65536,
                    "heartbeat_timeout": 15,
                },
            )
        )
        answer = next((e for e in server_frames(sock) if not isinstance(e, Challenge)), None)
        return [] if answer is None else [answer]


def test_a_wrong_token_is_refused_while_the_session_is_live(server: Server, make_client: MakeClient) -> None:
    client = make_client(server, client_id="owner")
    client.connect()
    for token in (None, "forged-token"):
        (event,) = raw_hello(server.port, "owner", token)
        assert isinstance(event, ErrorReceived) and event.code == "id_in_use" and not event.retry
    assert client.state == CONNECTED


def test_a_newcomer_replaces_a_detached_session(server: Server, proxy: FaultProxy, make_client: MakeClient) -> None:
    srv = Recorder().attach(server, "clientconnect", "clientdisconnect")
    old = make_client(client_id="phoenix", **via(proxy))
    old.connect()
    proxy.refusing = True
    proxy.cut("rst")
    wait_until(lambda: old.state == RECONNECTING, what="old client reconnecting")
    wait_until(lambda: proxy.live == 0)
    server.send("phoenix", Message("queued-for-the-old-session"))
    # A restarted process that lost its token gets its id back at once.
    new = make_client(server, client_id="phoenix")
    rec = Recorder().attach(new, "message")
    new.connect()
    assert srv.wait_count("clientdisconnect", 1) == [("phoenix",)]
    assert srv.wait_count("clientconnect", 2) == [("phoenix",), ("phoenix",)]
    server.send("phoenix", Message("for-the-new-session"))
    assert [m.subject for (m,) in rec.wait_count("message", 1)] == ["for-the-new-session"]
    old.disconnect()


def test_client_queues_while_reconnecting_and_is_bounded(
    server: Server, proxy: FaultProxy, make_client: MakeClient
) -> None:
    srv = Recorder().attach(server, "message")
    client = make_client(client_id="q", max_queued=5, **via(proxy))
    client.connect()
    proxy.refusing = True
    proxy.cut("rst")
    wait_until(lambda: client.state == RECONNECTING)
    for i in range(5):
        client.send(Message("queued", {"i": i}))
    with pytest.raises(QueueFullError, match="full"):
        client.send(Message("one too many"))
    assert client.queued == 5
    proxy.refusing = False
    got = srv.wait_count("message", 5)
    assert [m.payload["i"] for _, m in got] == list(range(5))
    wait_until(lambda: client.queued == 0, what="acks")


def test_server_queues_for_a_detached_session_and_is_bounded(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0, max_queued=3) as server:
        srv = Recorder().attach(server, "clientdisconnect")
        proxy = FaultProxy(server.port)
        try:
            client = make_client(client_id="d", **via(proxy))
            rec = Recorder().attach(client, "message", "reconnect")
            client.connect()
            proxy.refusing = True
            proxy.cut("rst")
            wait_until(lambda: client.state == RECONNECTING)
            for i in range(3):
                server.send("d", Message("m", {"i": i}))
            with pytest.raises(QueueFullError, match="send queue of client 'd' is full"):
                server.send("d", Message("overflow"))
            assert server.clients == ["d"]
            proxy.refusing = False
            rec.wait_count("reconnect", 1)
            assert [m.payload["i"] for (m,) in rec.wait_count("message", 3)] == [0, 1, 2]
            assert srv.of("clientdisconnect") == []
        finally:
            proxy.close()


def test_a_broadcast_ends_the_session_of_a_client_that_cannot_keep_up(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0, max_queued=3) as server:
        srv = Recorder().attach(server, "clientdisconnect")
        proxy = FaultProxy(server.port)
        try:
            fine = make_client(server, client_id="fine")
            fine_rec = Recorder().attach(fine, "message")
            fine.connect()
            slow = make_client(client_id="slow", **via(proxy))
            slow.connect()
            proxy.refusing = True
            proxy.cut("rst")
            wait_until(lambda: slow.state == RECONNECTING)
            for i in range(5):  # the 4th no longer fits the detached session's queue
                server.send("*", Message("b", {"i": i}))
                # The healthy client acknowledges each one before the next.
                wait_until(lambda: "fine" not in server.clients or server.queued("fine") == 0, what="fine's ack")
            assert srv.wait_count("clientdisconnect", 1) == [("slow",)]
            assert server.clients == ["fine"]
            assert [m.payload["i"] for (m,) in fine_rec.wait_count("message", 5)] == list(range(5))
        finally:
            proxy.close()


def test_detached_session_expires(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0, session_expiry=0.3) as server:
        srv = Recorder().attach(server, "clientconnect", "clientdisconnect")
        proxy = FaultProxy(server.port)
        try:
            client = make_client(client_id="e", **via(proxy))
            rec = Recorder().attach(client, "reconnect")
            client.connect()
            proxy.refusing = True
            proxy.cut("rst")
            assert srv.wait_count("clientdisconnect", 1) == [("e",)]
            assert server.clients == []
            proxy.refusing = False
            # Coming back later starts a new session; reconnect still fires.
            assert rec.wait_count("reconnect", 1) == [("e",)]
            assert srv.wait_count("clientconnect", 2) == [("e",), ("e",)]
        finally:
            proxy.close()


def test_clean_disconnect_ends_the_session_at_once(server: Server, make_client: MakeClient) -> None:
    srv = Recorder().attach(server, "clientconnect", "clientdisconnect")
    client = make_client(server, client_id="clean")
    client.connect()
    client.disconnect()
    srv.wait_count("clientdisconnect", 1)
    assert server.clients == []
    client.connect()  # a new session, not a resume
    assert srv.wait_count("clientconnect", 2) == [("clean",), ("clean",)]


@pytest.fixture
def echo_process() -> Iterator[Callable[[int], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(port: int) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.Popen(
            [sys.executable, str(ECHO_SERVER), str(port)], stdout=subprocess.PIPE, text=True, env=env
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY"), "echo server did not start"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def test_reconnect_after_the_server_is_killed_and_restarted(
    echo_process: Callable[[int], subprocess.Popen[str]], make_client: MakeClient
) -> None:
    port = free_port()
    proc = echo_process(port)
    client = make_client(address="127.0.0.1", port=port, client_id="survivor", heartbeat_timeout=2.0)
    rec = Recorder().attach(client, "message", "reconnect")
    client.connect()
    client.send(Message("before", {"n": 0}))
    rec.wait_count("message", 1)
    # Once acknowledged, "before" is not resent: across a restart delivery is
    # at least once only for what the dead server never acknowledged.
    wait_until(lambda: client.queued == 0, what="ack of 'before'")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    wait_until(lambda: client.state == RECONNECTING, what="client notices the dead server")
    for n in range(1, 4):
        client.send(Message("during", {"n": n}))  # queued while the server is down
    echo_process(port)
    assert rec.wait_count("reconnect", 1) == [("survivor",)]
    got = [m.payload["n"] for (m,) in rec.wait_count("message", 4)]
    # The new server never acknowledged 1-3: they are resent in the new session.
    assert got == [0, 1, 2, 3]


@pytest.mark.slow
def test_stream_both_ways_through_random_cuts_exactly_once_in_order(make_client: MakeClient) -> None:
    """10,000 messages each way while the proxy cuts the connection 50 times
    (resets and black holes) and splits frames at random byte boundaries."""
    n = 10_000
    cuts = 50
    rng = random.Random(1234)
    with Server(interface="127.0.0.1", port=0, heartbeat_interval=0.2, heartbeat_timeout=5.0) as server:
        proxy = FaultProxy(server.port, split=True, seed=99)
        try:
            server_got: list[int] = []
            client_got: list[int] = []
            server.subscribe("message", lambda _cid, m: server_got.append(m.payload["seq"]))
            client = make_client(client_id="stream", heartbeat_interval=0.05, heartbeat_timeout=0.4, **via(proxy))
            client.subscribe("message", lambda m: client_got.append(m.payload["seq"]))
            rec = Recorder().attach(client, "reconnect")
            client.connect()
            filler = "x" * 100

            def client_sender() -> None:
                for i in range(1, n + 1):
                    client.send(Message("c2s", {"seq": i, "message": filler}))

            def server_sender() -> None:
                for i in range(1, n + 1):
                    server.send("stream", Message("s2c", {"seq": i, "message": filler}))

            senders = [threading.Thread(target=client_sender), threading.Thread(target=server_sender)]
            for t in senders:
                t.start()
            deadline = time.monotonic() + 120
            for k in range(cuts):
                # Cut at random points in the stream: after a random amount of progress.
                target = min(n, len(server_got) + len(client_got) + rng.randint(0, 300))
                wait_until(
                    lambda target=target: (
                        len(server_got) + len(client_got) >= target  # type: ignore[misc]
                        or not any(t.is_alive() for t in senders)
                    ),
                    timeout=max(1.0, deadline - time.monotonic()),
                )
                proxy.cut("blackhole" if k % 5 == 4 else "rst")
                rec.wait_count("reconnect", k + 1, timeout=max(1.0, deadline - time.monotonic()))
            for t in senders:
                t.join(max(1.0, deadline - time.monotonic()))
            wait_until(lambda: len(server_got) >= n and len(client_got) >= n, timeout=60, what="all delivered")
            client.wait_callbacks(10)
            server.wait_callbacks(10)
            assert server_got == list(range(1, n + 1))
            assert client_got == list(range(1, n + 1))
            assert len(rec.of("reconnect")) == cuts
        finally:
            proxy.close()


def test_in_doubt_the_server_probes_the_old_connection(
    server: Server, proxy: FaultProxy, make_client: MakeClient
) -> None:
    """A newcomer without the token: the server pings the session's
    connection; a live one keeps the id, a dead (black-holed) one loses it."""
    srv = Recorder().attach(server, "clientconnect", "clientdisconnect")
    old = make_client(client_id="probed", heartbeat_interval=30.0, heartbeat_timeout=60.0, **via(proxy))
    old.connect()
    (event,) = raw_hello(server.port, "probed", None)
    assert isinstance(event, ErrorReceived) and event.code == "id_in_use"  # it answered the probe

    proxy.cut("blackhole")  # now the old connection is half-open and silent
    newcomer = make_client(server, client_id="probed")
    newcomer.connect()
    assert srv.wait_count("clientdisconnect", 1) == [("probed",)]
    assert len(srv.wait_count("clientconnect", 2)) == 2
    assert server.clients == ["probed"]


def test_a_connection_that_just_spoke_and_died_does_not_lock_out_its_id(
    server: Server, proxy: FaultProxy, make_client: MakeClient
) -> None:
    """A recent read proves nothing: the old connection sent a message a
    moment ago and then went silent (half-open); the newcomer with its id is
    accepted once the probe goes unanswered, and is never refused for good."""
    srv = Recorder().attach(server, "message", "clientconnect", "clientdisconnect")
    old = make_client(client_id="fresh", heartbeat_interval=30.0, heartbeat_timeout=60.0, **via(proxy))
    old.connect()
    old.send(Message("last words"))
    srv.wait_count("message", 1)
    proxy.cut("blackhole")
    newcomer = make_client(server, client_id="fresh")
    newcomer.connect()  # raised ConnectionRefusedByServer(id_in_use) when the old one had spoken within 1 s
    assert newcomer.connected
    assert srv.wait_count("clientdisconnect", 1) == [("fresh",)]
    assert len(srv.wait_count("clientconnect", 2)) == 2
