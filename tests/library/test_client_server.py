"""Client and Server over loopback: events, states, sends, refusals."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
from support import Recorder, free_port, resolve_as_ipv6_then_ipv4, wait_until

from missioncommander import (
    Client,
    ClientState,
    ConnectError,
    ConnectionRefusedByServer,
    Message,
    MessageTooLarge,
    Server,
    StateError,
)

S = ClientState
CONNECTED = S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTED
IDLE = S.STATE_OK | S.STATE_NOT_CONNECTED

MakeClient = Callable[..., Client]


def transitions(rec: Recorder) -> list[tuple[ClientState, ClientState]]:
    return [(t.old_state, t.new_state) for (t,) in rec.of("statechange")]


def test_connect_send_receive_disconnect_events_and_states(server: Server, make_client: MakeClient) -> None:
    srv = Recorder().attach(server, "clientconnect", "clientdisconnect", "message")
    client = make_client(server, client_id="abcXYZ")
    rec = Recorder().attach(client, "connect", "disconnect", "message", "statechange", "reconnect")
    client.connect()
    assert client.state == CONNECTED
    assert srv.wait_count("clientconnect", 1) == [("abcXYZ",)]
    assert server.clients == ["abcXYZ"]

    client.send(Message("echo", {"message": "hello"}))
    assert srv.wait_count("message", 1) == [("abcXYZ", Message("echo", {"message": "hello"}))]
    server.send("abcXYZ", Message("reply", {"n": 1}))
    server.send("*", Message("all", {}))
    assert rec.wait_count("message", 2) == [(Message("reply", {"n": 1}),), (Message("all"),)]

    client.disconnect()
    client.disconnect()  # idempotent
    assert client.state == IDLE
    assert srv.wait_count("clientdisconnect", 1) == [("abcXYZ",)]
    rec.wait_for(lambda: len(rec.of("statechange")) == 4)
    assert transitions(rec) == [
        (IDLE, S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTING),
        (S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTING, CONNECTED),
        (CONNECTED, S.STATE_OK | S.STATE_RUNNING | S.STATE_DISCONNECTING),
        (S.STATE_OK | S.STATE_RUNNING | S.STATE_DISCONNECTING, IDLE),
    ]
    names = rec.names()
    assert names.index("connect") < names.index("disconnect")
    assert "reconnect" not in names
    assert client.last_close_reason == "disconnected by this client"
    assert server.clients == []


def test_a_callback_that_cannot_take_its_events_arguments_is_refused_at_subscribe(
    server: Server, make_client: MakeClient
) -> None:
    """Not at every event, on a callback thread, in the log: the mistake is
    said where it was made.  What may take the arguments is taken."""
    client = make_client(server)
    with pytest.raises(TypeError, match=r"a client 'connect' callback is called with no arguments; .*\(a, b\)"):
        client.subscribe("on_connect", lambda a, b: None)
    with pytest.raises(TypeError, match=r"a server 'message' callback is called with \(client_id, message\)"):
        server.subscribe("message", lambda message: None)
    with pytest.raises(TypeError, match=r"a client 'message' callback is called with \(message\)"):
        client.subscribe("message", lambda client_id, message: None)
    with pytest.raises(TypeError, match="'request' callback"):
        client.subscribe("request", lambda *, message: None)  # keyword-only: never passed so
    rec = Recorder()
    lock = threading.Lock()
    lock.acquire()

    class Handler:
        def on_message(self, message: Message) -> None:
            rec.callback("method")(message)

    for event, callback in (
        ("connect", rec.callback("varargs")),  # (*args)
        ("statechange", lambda transition, extra=None: rec.callback("default")(transition)),
        ("message", Handler().on_message),
        ("connect", lock.release),  # a builtin: no signature to read, taken
        ("message", functools.partial(lambda tag, message: rec.callback(tag)(message), "partial")),
    ):
        client.subscribe(event, callback)
    client.connect()
    assert lock.acquire(timeout=10)
    server.send(client.client_id, Message("hi"))
    rec.wait_for(lambda: {"varargs", "default", "method", "partial"} <= set(rec.names()))


def test_event_name_forms(server: Server, make_client: MakeClient) -> None:
    client = make_client(server)
    rec = Recorder()
    for form in ("on_connect", "ConNEct", "onCon-nect", "CONNECT", "on-connect"):
        client.subscribe(form, rec.callback(form))
    with pytest.raises(ValueError, match="known events: connect, disconnect, reconnect, message"):
        client.subscribe("connected", rec.callback("x"))
    with pytest.raises(ValueError, match="clientconnect"):
        server.subscribe("on_connect", rec.callback("x"))
    # A slip of the keyboard is named: the list alone left it to the reader.
    with pytest.raises(ValueError, match=r"unknown event 'mesage' \(did you mean 'message'\?\); known events"):
        client.subscribe("mesage", rec.callback("x"))
    with pytest.raises(ValueError, match=r"unknown event 'on_client_conect' \(did you mean 'clientconnect'\?\)"):
        server.subscribe("on_client_conect", rec.callback("x"))
    with pytest.raises(TypeError):
        client.subscribe("connect", "not callable")  # type: ignore[arg-type]
    client.unsubscribe("on-CONNECT", rec.callback("unknown"))  # unknown callback: ignored
    cb = rec.callback("gone")
    client.subscribe("connect", cb)
    client.unsubscribe("On_Connect", cb)
    client.connect()
    rec.wait_for(lambda: len(rec.events) == 5)
    assert sorted(rec.names()) == sorted(["on_connect", "ConNEct", "onCon-nect", "CONNECT", "on-connect"])


def test_connect_failure_leaves_connect_failed(make_client: MakeClient) -> None:
    probe = Server(interface="127.0.0.1", port=0)
    probe.start()
    port = probe.port
    probe.stop()  # nothing listens there now
    client = make_client(address="127.0.0.1", port=port)
    with pytest.raises(ConnectError, match="Connection refused"):
        client.connect()
    assert client.state == S.STATE_OK | S.STATE_NOT_CONNECTED | S.STATE_CONNECT_FAILED
    assert "refused" in (client.last_close_reason or "")
    with pytest.raises(StateError, match=r"the client is not connected \(.*\); connect\(\) first"):
        client.send(Message("x"))
    client.connect(wait=False)  # it goes on trying; still no session to queue in
    with pytest.raises(StateError, match="cannot send yet: the client has no session until it first connects"):
        client.send(Message("x"))
    client.disconnect()


def test_a_server_on_localhost_listens_on_the_loopback(make_client: MakeClient) -> None:
    """interface="localhost" is what users type (uvicorn and Flask take it):
    it means 127.0.0.1, which a client's "localhost" reaches too."""
    with Server(interface="localhost", port=0) as server:
        assert server.interface == "localhost"
        got = Recorder()
        server.subscribe("message", got.callback("message"))
        for address in ("localhost", "127.0.0.1"):
            client = make_client(address=address, port=server.port, client_id=address)
            client.connect()
            client.send(Message("hi"))
            client.disconnect()
        got.wait_for(lambda: len(got.events) == 2)
        assert sorted(args[0] for _, args in got.events) == ["127.0.0.1", "localhost"]


def test_an_ipv6_address_is_written_in_brackets_wherever_a_port_follows_it(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """'::1:30000' reads as an address of one group more: '[::1]:30000'."""
    with caplog.at_level(logging.INFO, logger="missioncommander"), Server(interface="::1", port=0) as server:
        client = make_client(address="::1", port=server.port, client_id="v6")
        client.connect()
        where = f"[::1]:{server.port}"
        assert repr(server).startswith(f"<Server {where} ") and f" -> {where} " in repr(client)
        assert re.fullmatch(r"\[::1\]:\d+", server.stats("v6")["peer"])
        client.disconnect()
    lines = [record.getMessage() for record in caplog.records]
    assert f"server listening on {where}" in lines and f"client 'v6' connected to {where}" in lines
    assert any(re.fullmatch(r"client 'v6' connected from \[::1\]:\d+ \(new session\)", line) for line in lines)


def test_wait_connected_after_connect_without_waiting(make_client: MakeClient) -> None:
    """A client started before its server (connect(wait=False)) has no
    session to send in: it waits with wait_connected(), as the asyncio
    client does (the threaded one had no way but a connect callback)."""
    port = free_port()
    client = make_client(address="127.0.0.1", port=port)
    with pytest.raises(StateError, match="it will not connect by itself"):
        client.wait_connected(timeout=5)  # not started: nothing to wait for
    client.connect(wait=False)
    with pytest.raises(StateError, match=r"wait_connected\(\) waits for it"):
        client.send(Message("early"))
    with pytest.raises(TimeoutError, match="still STATE_OK"):
        client.wait_connected(timeout=0.05)
    assert client.wait_state(S.STATE_RUNNING, timeout=0) & S.STATE_RUNNING
    server = Server(interface="127.0.0.1", port=port)
    got = Recorder()
    server.subscribe("message", got.callback("message"))
    server.start()
    try:
        client.wait_connected(timeout=10)
        assert client.connected
        client.send(Message("now"))
        got.wait_for(lambda: len(got.events) == 1)
    finally:
        server.stop()


def test_wait_connected_ends_when_the_client_stops_trying(make_client: MakeClient) -> None:
    client = make_client(address="127.0.0.1", port=free_port())
    client.connect(wait=False)
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            client.wait_connected(timeout=30)
        except BaseException as exc:  # the test reads it
            outcome.append(exc)
        else:
            outcome.append(None)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_until(lambda: client._state_waits is not None)  # the waiter waits (under the lock until it does)
    client.disconnect()
    waiter.join(10)
    assert not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], StateError), outcome
    assert "it will not connect by itself" in str(outcome[0])


def test_waiting_for_a_state_in_an_inline_callback_is_refused(server: Server, make_client: MakeClient) -> None:
    client = make_client(server, inline_callbacks=True)
    refused: list[BaseException] = []

    def on_message(message: Message) -> None:
        try:
            client.wait_state(S.STATE_RECONNECTING, timeout=5)
        except StateError as exc:
            refused.append(exc)

    client.subscribe("message", on_message)
    client.connect()
    wait_until(lambda: server.clients)
    server.send(client.client_id, Message("hi"))
    wait_until(lambda: refused)
    assert "would block it" in str(refused[0])
    client.wait_state(S.STATE_CONNECTED, timeout=0)  # from any other thread, at once when it is so


def test_a_name_is_tried_address_by_address(
    server: Server, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = resolve_as_ipv6_then_ipv4(monkeypatch, "dual.test")
    client = make_client(address="dual.test", port=server.port)
    client.connect()  # ::1 refuses; 127.0.0.1 answers, in the same attempt
    assert client.connected and client.failed_attempts == 0 and asked == ["dual.test"]
    client.disconnect()
    client.connect(wait=False)  # resolved again, off the I/O thread
    wait_until(lambda: client.connected)
    assert asked == ["dual.test", "dual.test"]


EXITS_WITHOUT_DISCONNECT = """
import sys
from missioncommander import Client, Message
client = Client(address="127.0.0.1", port=int(sys.argv[1]), client_id="brief")
client.connect()
for n in range(200):
    client.send(Message("last-words", {"n": n}))
"""  # and the program ends: no disconnect()


def test_what_a_program_sent_before_it_ended_reaches_the_server(server: Server) -> None:
    rec = Recorder().attach(server, "message", "clientdisconnect")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, "-c", EXITS_WITHOUT_DISCONNECT, str(server.port)], env=env, timeout=60, check=False
    )
    assert done.returncode == 0
    rec.wait_count("message", 200)
    assert [msg.payload["n"] for _cid, msg in rec.of("message")] == list(range(200))
    # A goodbye, not a broken connection: the session ends at once.
    rec.wait_count("clientdisconnect", 1)
    wait_until(lambda: server.clients == [])


def test_context_managers(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0) as server:
        rec = Recorder().attach(server, "message")
        with make_client(server) as client:
            assert client.state == CONNECTED
            client.send(Message("hi"))
            rec.wait_count("message", 1)
        assert client.state == IDLE
    assert not server.running


def test_a_subject_and_payload_passed_as_they_are_are_refused_with_the_form_to_write(
    server: Server, make_client: MakeClient
) -> None:
    """The slip a user of other libraries makes: send("subject", {...})."""
    client = make_client(server, client_id="c1")
    client.connect()
    rec = Recorder().attach(server, "message")
    form = r"^message must be a Message, as Message\(subject, payload\), not str$"
    for call in (
        lambda: client.send("subject", {"n": 1}),  # type: ignore[arg-type]
        lambda: client.request("subject", {"n": 1}),  # type: ignore[arg-type]
        lambda: server.send("c1", "subject", {"n": 1}),  # type: ignore[arg-type]
        lambda: server.request("c1", "subject", {"n": 1}),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match=form):
            call()
    client.send(Message("subject", {"n": 1}))  # nothing went out before it
    rec.wait_count("message", 1)
    assert rec.of("message") == [("c1", Message("subject", {"n": 1}))]


def test_server_can_restart_after_stop(make_client: MakeClient) -> None:
    server = Server(interface="127.0.0.1", port=0)
    for _ in range(2):
        server.start()
        client = make_client(server)
        client.connect()
        client.disconnect()
        server.stop()
    with pytest.raises(StateError):
        server.send("*", Message("x"))


def test_broadcast_reaches_every_client_and_unknown_target_raises(server: Server, make_client: MakeClient) -> None:
    recs = []
    for i in range(5):
        c = make_client(server, client_id=f"c{i}")
        recs.append(Recorder().attach(c, "message"))
        c.connect()
    for i in range(10):
        server.send("*", Message("b", {"i": i}))
    for rec in recs:
        assert [m.payload["i"] for (m,) in rec.wait_count("message", 10)] == list(range(10))
    with pytest.raises(KeyError, match="nobody"):
        server.send("nobody", Message("x"))
    with pytest.raises(TypeError):
        server.send("*", {"not": "a message"})  # type: ignore[arg-type]


def test_server_shutdown_fires_servershutdown_and_client_stops(make_client: MakeClient) -> None:
    server = Server(interface="127.0.0.1", port=0)
    server.start()
    client = make_client(server)
    state_in_callback: list[ClientState] = []
    rec = Recorder().attach(client, "servershutdown", "statechange", "reconnect")
    client.subscribe("servershutdown", lambda: state_in_callback.append(client.state))
    client.connect()
    server.stop()
    rec.wait_count("servershutdown", 1)
    rec.wait_for(lambda: client.state == IDLE, what="client stopped")
    assert state_in_callback == [CONNECTED]  # it stops after the callback returns
    assert "server shut down" in (client.last_close_reason or "")
    last = rec.of("statechange")[-1][0]
    assert (last.old_state, last.new_state) == (CONNECTED, IDLE)
    assert rec.of("reconnect") == []


def test_a_connect_while_a_shutdown_stops_the_client_starts_it_again(make_client: MakeClient) -> None:
    """A server's shutdown stops its client once the servershutdown
    callbacks have returned.  A ``connect(wait=False)`` meanwhile (from such
    a callback, or mcd's ``client.connect`` a moment after its hosted server
    stopped) found the client still running, did nothing, and the stop
    followed: the client stayed disconnected."""
    server = Server(interface="127.0.0.1", port=0)
    server.start()
    port = server.port
    client = make_client(server, client_id="again")
    rec = Recorder().attach(client, "servershutdown", "connect")
    client.subscribe("servershutdown", lambda: client.connect(wait=False))
    client.connect()
    server.stop()
    rec.wait_count("servershutdown", 1)
    wait_until(lambda: bool(client.state & S.STATE_CONNECTING), what="the client trying again")
    back = Server(interface="127.0.0.1", port=port)
    back.start()
    try:
        rec.wait_count("connect", 2)  # the first connect, and the one after the shutdown
        wait_until(lambda: back.clients == ["again"], what="the new server's client")
        assert client.state == CONNECTED
    finally:
        client.disconnect()
        back.stop()


def test_a_connect_just_after_stop_returned_is_not_undone_by_the_shutdown(make_client: MakeClient) -> None:
    """``stop()`` returned once its goodbyes were written, while clients had
    not read them: a ``connect()`` made then found the client connected, did
    nothing, and the SHUTDOWN read a moment later stopped it (mcd: a script
    that stopped and restarted a hosted server and connected its 300 hosted
    clients again left 43 disconnected).  ``stop()`` now returns once each
    client has closed its end, as it does on reading the SHUTDOWN."""
    server = Server(interface="127.0.0.1", port=0)
    server.start()
    port = server.port
    clients = [make_client(server, client_id=f"c{i}") for i in range(50)]
    for client in clients:
        client.connect(wait=False)
    wait_until(lambda: len(server.clients) == 50, what="50 clients connected")
    server.stop()
    for client in clients:
        client.connect(wait=False)
    back = Server(interface="127.0.0.1", port=port)
    back.start()
    try:
        wait_until(lambda: len(back.clients) == 50, what="every client back on the new server")
    finally:
        for client in clients:
            client.disconnect()
        back.stop()


def test_disconnect_client_is_terminal_for_the_client(server: Server, make_client: MakeClient) -> None:
    client = make_client(server, client_id="victim")
    srv = Recorder().attach(server, "clientdisconnect")
    rec = Recorder().attach(client, "statechange")
    client.connect()
    server.disconnect_client("victim", "maintenance")
    srv.wait_count("clientdisconnect", 1)
    rec.wait_for(lambda: client.state == IDLE, what="client idle")
    assert client.last_close_reason == "disconnected by the server: maintenance"
    assert server.clients == []
    with pytest.raises(KeyError):
        server.disconnect_client("victim")


def test_duplicate_id_is_refused_while_first_is_alive(server: Server, make_client: MakeClient) -> None:
    first = make_client(server, client_id="same")
    first.connect()
    second = make_client(server, client_id="same")
    with pytest.raises(ConnectionRefusedByServer) as info:
        second.connect()
    assert info.value.code == "id_in_use"
    assert "in use" in str(info.value)
    assert second.state == S.STATE_OK | S.STATE_NOT_CONNECTED | S.STATE_CONNECT_FAILED
    assert first.state == CONNECTED
    rec = Recorder().attach(first, "message")
    server.send("same", Message("still-yours"))
    rec.wait_count("message", 1)


def test_callbacks_may_disconnect_and_send(server: Server, make_client: MakeClient) -> None:
    client = make_client(server)
    done = threading.Event()
    srv = Recorder().attach(server, "message")

    def on_message(message: Message) -> None:
        client.send(Message("reply", {"to": message.subject}))
        client.disconnect()
        done.set()

    client.subscribe("message", on_message)
    client.connect()
    (cid,) = server.clients
    server.send(cid, Message("please-leave"))
    assert done.wait(10)
    assert client.state == IDLE
    assert srv.wait_count("message", 1) == [(cid, Message("reply", {"to": "please-leave"}))]


def test_a_failing_callback_is_logged_and_others_still_run(
    server: Server, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(server)
    rec = Recorder()

    def boom(_: Message) -> None:
        raise RuntimeError("callback bug")

    client.subscribe("message", boom)
    client.subscribe("message", rec.callback("message"))
    client.connect()
    (cid,) = server.clients
    server.send(cid, Message("one"))
    server.send(cid, Message("two"))
    rec.wait_count("message", 2)
    assert client.state == CONNECTED
    client.wait_callbacks(5)
    assert "callback bug" in caplog.text


def test_a_callback_failing_on_every_message_does_not_flood_the_log(
    server: Server, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises on each of a peer's messages logged a
    traceback for each (thousands a second); now one every few seconds,
    with a count of the rest, and the messages still reach the others.
    The callback here is a callable that cannot be hashed, as a dataclass's
    instance cannot: the count is kept all the same."""
    client = make_client(server)
    rec = Recorder()

    @dataclasses.dataclass
    class Boom:
        calls: int = 0

        def __call__(self, _: Message) -> None:
            self.calls += 1
            raise RuntimeError("callback bug")

    boom = Boom()
    client.subscribe("message", boom)
    client.subscribe("message", rec.callback("message"))
    client.connect()
    (cid,) = server.clients
    for n in range(200):
        server.send(cid, Message("n", {"n": n}))
    assert [m.payload["n"] for (m,) in rec.wait_count("message", 200)] == list(range(200))
    client.wait_callbacks(5)
    said = [r for r in caplog.records if "callback" in r.getMessage() and "raised" in r.getMessage()]
    # One said at once, the rest counted: more only if the burst outlasted a 5 s pause.
    assert 1 <= len(said) < 10, [r.getMessage() for r in said]
    assert said[0].exc_info is not None and "callback bug" in caplog.text
    assert boom.calls == 200


def test_callbacks_do_not_run_on_the_io_thread(server: Server, make_client: MakeClient) -> None:
    client = make_client(server)
    names: list[str] = []
    got = threading.Event()
    client.subscribe("connect", lambda: (names.append(threading.current_thread().name), got.set()))
    client.connect()
    assert got.wait(5)
    assert names[0].startswith("missioncommander-callbacks")


def test_send_checks_the_servers_frame_limit(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0, max_frame_size=8192) as server:
        client = make_client(server)
        client.connect()
        with pytest.raises(MessageTooLarge):
            client.send(Message("big", {"x": "y" * 9000}))
        with pytest.raises(TypeError):
            client.send("not a message")  # type: ignore[arg-type]


def test_a_message_larger_than_a_whole_send_queue_is_refused_at_once_on_every_path(make_client: MakeClient) -> None:
    """With max_frame_size raised above max_queued_bytes, such a message
    can never be queued: each send path once said something untrue (the
    server: "queue full (0 messages)"; the client: nothing acknowledged for
    send_timeout, after waiting it; a broadcast: the client "too slow",
    its session ended).  Now MessageTooLarge at once, and nobody is cut."""
    limits = {"max_frame_size": 4_000_000, "max_queued_bytes": 1_000_000}
    with Server(interface="127.0.0.1", port=0, **limits) as server:
        # Timers far beyond the test's own timeout: a path that waited would fail it.
        client = make_client(server, client_id="k", send_timeout=3600.0, **limits)
        client.connect()
        rec = Recorder().attach(server, "message")
        big = Message("big", {"x": "y" * 2_000_000})
        sends: list[Callable[[], object]] = [
            lambda: server.send("k", big),
            lambda: server.send("*", big),
            lambda: client.send(big),
            lambda: client.request(big, timeout=3600.0),
            lambda: server.request("k", big, timeout=3600.0),
        ]
        for send in sends:
            with pytest.raises(MessageTooLarge, match=r"larger than a whole send queue \(max_queued_bytes, 1000000\)"):
                send()
        # The session went on, whole: nothing cut, nothing left in flight.
        client.send(Message("small"))
        rec.wait_count("message", 1)
        assert client.state == CONNECTED and server.stats()["slow_clients_cut"] == 0
        assert client.stats()["requests_in_flight"] == 0 and server.stats()["requests_in_flight"] == 0


def test_ipv6_loopback(make_client: MakeClient) -> None:
    try:
        server = Server(interface="::1", port=0)
        server.start()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        rec = Recorder().attach(server, "message")
        client = make_client(address="::1", port=server.port)
        client.connect()
        client.send(Message("v6"))
        rec.wait_count("message", 1)
    finally:
        server.stop()


def test_client_binds_to_interface_and_port(server: Server, make_client: MakeClient) -> None:
    probe = Server(interface="127.0.0.1", port=0)
    probe.start()
    free = probe.port
    probe.stop()
    client = make_client(server, interface="lo", bind_port=free)
    client.connect()
    wait_until(lambda: server.clients == [client.client_id])


def test_payloads_larger_than_one_read_and_many_small_ones_arrive_intact(
    server: Server, make_client: MakeClient
) -> None:
    # Every connection of a process reads into one shared buffer: a frame
    # that spans reads, or a read that holds many frames, must come out
    # byte for byte (distinct content, so a stale or overwritten buffer shows).
    clients = [make_client(server, client_id=f"c{i}") for i in range(3)]
    recs = [Recorder().attach(c, "message") for c in clients]
    srv = Recorder().attach(server, "message")
    for c in clients:
        c.connect()
    big = [os.urandom(300_000).hex() for _ in clients]  # 600 KB: several reads each
    for i, c in enumerate(clients):
        c.send(Message("big", {"data": big[i]}))
        for n in range(200):
            c.send(Message("small", {"who": i, "n": n}))
    got = srv.wait_count("message", 3 * 201)
    by_client: dict[str, list[Message]] = {}
    for cid, m in got:
        by_client.setdefault(cid, []).append(m)
    for i in range(3):
        msgs = by_client[f"c{i}"]
        assert msgs[0].payload["data"] == big[i]
        assert [m.payload["n"] for m in msgs[1:]] == list(range(200))
    for i in range(3):
        server.send(f"c{i}", Message("big", {"data": big[2 - i]}))
    for i, rec in enumerate(recs):
        assert rec.wait_count("message", 1)[0][0].payload["data"] == big[2 - i]


def test_reprs_say_what_each_end_is_doing(make_client: MakeClient) -> None:
    server = Server(interface="127.0.0.1", port=0)
    assert repr(server) == "<Server 127.0.0.1:0 stopped>"
    server.start()
    try:
        assert repr(server) == f"<Server 127.0.0.1:{server.port} listening, 0 client(s)>"
        client = make_client(server, client_id="c7")
        assert repr(client) == f"<Client 'c7' -> 127.0.0.1:{server.port} STATE_OK | STATE_NOT_CONNECTED>"
        client.connect()
        assert repr(client) == f"<Client 'c7' -> 127.0.0.1:{server.port} STATE_OK | STATE_RUNNING | STATE_CONNECTED>"
        assert repr(server) == f"<Server 127.0.0.1:{server.port} listening, 1 client(s)>"
    finally:
        server.stop()
    assert repr(server) == f"<Server 127.0.0.1:{server.port} stopped>"
