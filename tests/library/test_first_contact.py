"""What a new user met first: defaults that refused a benign load, errors
outside the library's tree, host names that hung a client, settings that
could not be set to the value they had."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable

import pytest
from support import Recorder, refuse_resolving_threads, server_frames, wait_for_resolvers_to_end

from missioncommander import (
    Client,
    ClientState,
    ConnectError,
    ConnectionRefusedByServer,
    ConnectTimeout,
    Message,
    MissionCommanderError,
    Server,
    StateError,
    UnknownClient,
    _resolver,
)
from missioncommander._events import Challenge

MakeClient = Callable[..., Client]


def test_the_defaults_let_3000_clients_arriving_at_once_from_one_address_in(make_client: MakeClient) -> None:
    """A fleet that connects together (after a server restart, say) is not
    a flood: its handshakes succeed, and only those that stay silent or
    fail use up ``max_connection_rate``'s allowance."""
    count = 3000
    with Server(interface="127.0.0.1", port=0, max_clients=count) as server:
        connected = threading.Semaphore(0)
        clients = [make_client(server, client_id=f"c{i}", connect_timeout=60.0) for i in range(count)]
        for client in clients:
            client.subscribe("connect", connected.release)
            client.connect(wait=False)
        for _ in range(count):
            assert connected.acquire(timeout=60), f"{len(server.clients)} of {count} got in"
        assert len(server.clients) == count
        assert all(c.last_close_reason is None for c in clients)  # nobody was refused, not even once


def silent_connections(port: int, count: int) -> list[socket.socket]:
    """Connections that never say HELLO: what a flood looks like."""
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]


def test_handshakes_may_wait_together_for_as_long_as_handshake_timeout_allows() -> None:
    """A client process starting thousands of clients says HELLO on most of
    them seconds after its connects were accepted.  Pending handshakes from
    one address are allowed ``max_connection_rate * handshake_timeout`` (as
    many as a flood at that rate keeps open anyway): here 20/s over 10 s,
    so 150 that say nothing yet are all let in (over 2 s, 110 of them were
    refused)."""
    with Server(interface="127.0.0.1", port=0, max_connection_rate=20.0, handshake_timeout=10.0) as server:
        fleet = silent_connections(server.port, 150)
        try:
            firsts = [next(server_frames(sock), None) for sock in fleet]
            assert all(isinstance(first, Challenge) for first in firsts), firsts
            assert server.stats()["refusals"] == {}
        finally:
            for sock in fleet:
                sock.close()


def test_a_client_refused_for_rate_is_told_and_gets_in_with_backoff(make_client: MakeClient) -> None:
    # 2 per second, and 20 pending at most: 20 silent connections use it up.
    with Server(interface="127.0.0.1", port=0, max_connection_rate=2.0) as server:
        flood = silent_connections(server.port, 20)
        try:
            clients = [make_client(server, client_id=f"r{i}", connect_timeout=15.0) for i in range(3)]
            for client in clients:
                client.connect()  # waits through rate_limited refusals instead of failing
            assert sorted(server.clients) == ["r0", "r1", "r2"]
            assert "rate_limited" in (clients[0].last_close_reason or "")  # it was refused at first
        finally:
            for sock in flood:
                sock.close()


def test_a_rate_refusal_that_outlasts_connect_timeout_names_its_code(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0, max_connection_rate=0.01) as server:
        (silent,) = silent_connections(server.port, 1)  # the allowance of one, used up
        try:
            late = make_client(server, client_id="late", connect_timeout=0.5)
            with pytest.raises(ConnectionRefusedByServer) as info:
                late.connect()
            assert info.value.code == "rate_limited"
            assert "rate_limited" in (late.last_close_reason or "")
        finally:
            silent.close()


def test_a_client_pointed_at_another_kind_of_server_says_what_it_began_with(make_client: MakeClient) -> None:
    """An SSH server's port, say: the client said only "frame of 1397966893
    bytes exceeds the maximum of 16384"."""
    banner = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def greet() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(banner)
                conn.recv(1)  # until the client hangs up

        greeter = threading.Thread(target=greet, daemon=True)
        greeter.start()
        client = make_client(address="127.0.0.1", port=listener.getsockname()[1])
        with pytest.raises(ConnectError) as info:
            client.connect()
        greeter.join(10)
    said = str(info.value)
    assert f"the server does not speak MissionCommander's protocol: it began with {banner!r}" in said, said
    assert client.last_close_reason is not None and "does not speak" in client.last_close_reason


def test_send_to_an_unknown_client_raises_a_library_error(server: Server) -> None:
    with pytest.raises(UnknownClient, match="no client 'nobody' is connected") as info:
        server.send("nobody", Message("x"))
    assert isinstance(info.value, MissionCommanderError) and isinstance(info.value, KeyError)
    with pytest.raises(UnknownClient):
        server.disconnect_client("nobody")


@pytest.mark.parametrize("host", ["server..example.com", "a" * 64 + ".example.com", "x." * 130 + "com", "-bad.com"])
def test_a_host_name_that_can_never_resolve_is_refused_when_set(host: str) -> None:
    client = Client()
    with pytest.raises(ValueError, match="not a valid host name"):
        client.address = host


@pytest.mark.parametrize(
    ("setting", "value", "hint"),
    [
        ("address", "127.0.0.1:30000", "give the host alone; the port is a setting of its own"),
        ("address", "[::1]:30000", "give the host alone; the port is a setting of its own"),
        ("address", "localhost:30000", "give the host alone; the port is a setting of its own"),
        ("address", "http://example.com", "give the host alone, without http://"),
        ("servers", ["tcp://node-a:30000"], "give the host alone, without tcp://"),
        ("interface", "0.0.0.0:30000", "give the host alone; the port is a setting of its own"),
    ],
)
def test_a_host_pasted_with_its_port_or_scheme_is_refused_saying_what_to_leave_out(
    setting: str, value: object, hint: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(hint)):
        Client(**{setting: value})


def test_a_server_interface_pasted_with_its_port_is_refused_saying_so() -> None:
    with pytest.raises(ValueError, match="the port is a setting of its own"):
        Server(interface="127.0.0.1:30000")


@pytest.mark.parametrize("host", ["server..example.com", "a b", "eth0:x"])
def test_a_bad_host_without_a_port_or_scheme_gets_no_such_hint(host: str) -> None:
    with pytest.raises(ValueError) as info:
        Client(address=host)
    assert "alone" not in str(info.value)


@pytest.mark.parametrize("host", ["localhost", "example.com.", "my_host.local", "ünïcode.example", "::1", "10.1.2.3"])
def test_valid_host_names_are_accepted(host: str) -> None:
    Client().address = host


def test_every_resolver_failure_is_a_connect_error_with_a_reason(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With connect(wait=False) the resolver runs on a helper thread: a failure
    there must end the attempt with a reason, never leave 'connecting' forever."""

    def refuse(*_args: object, **_kwargs: object) -> object:
        raise UnicodeError("label too long")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    client = make_client(address="host.example", port=1, reconnect_attempts=2)
    with pytest.raises(ConnectError, match=r"cannot resolve 'host\.example'"):
        client.connect()
    rec = Recorder().attach(client, "statechange")
    client.connect(wait=False)
    rec.wait_for(
        lambda: any(t.new_state & ClientState.STATE_CONNECT_FAILED for (t,) in rec.of("statechange")),
        timeout=10,
        what="CONNECT_FAILED",
    )
    assert "cannot resolve 'host.example'" in (client.last_close_reason or "")


def test_a_resolver_that_does_not_answer_holds_connect_no_longer_than_connect_timeout(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS down: glibc waits its timeout for each try of each nameserver
    (10 s to 30 s by default) before it says so, and connect() waited with
    it, whatever connect_timeout said."""
    answer = threading.Event()

    def silent(*_args: object, **_kwargs: object) -> object:
        answer.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", silent)
    client = make_client(address="host.example", port=1, connect_timeout=0.3)
    try:
        with pytest.raises(
            ConnectTimeout, match=r"^cannot resolve 'host\.example': the resolver did not answer within 0\.3 s$"
        ):
            client.connect()
    finally:
        answer.set()  # the resolving thread ends
    assert client.state == ClientState.STATE_OK | ClientState.STATE_NOT_CONNECTED  # as after any resolver failure


def test_a_name_still_queued_when_connect_gives_up_is_never_looked_up(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every resolving thread held by a silent DNS: a connect() that timed
    out waiting for one takes its name out of the queue, so the lookup
    does not run (and wait the resolver's time again) when nobody wants it."""
    wait_for_resolvers_to_end()
    monkeypatch.setattr(_resolver, "LIMIT", 1)
    answer = threading.Event()
    asked: list[str] = []

    def silent(host: str, *_args: object, **_kwargs: object) -> object:
        asked.append(host)
        answer.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", silent)
    first = make_client(address="first.example", port=1, connect_timeout=0.3)
    second = make_client(address="second.example", port=1, connect_timeout=0.3)
    try:
        for client in (first, second):  # the first holds the only thread; the second waits for it
            with pytest.raises(ConnectTimeout, match="the resolver did not answer"):
                client.connect()
    finally:
        answer.set()
    wait_for_resolvers_to_end()
    assert asked == ["first.example"]


def test_no_thread_to_resolve_on_is_a_connect_error_with_a_reason(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process at its limit on threads: the resolver's thread cannot
    start, and connect() says so, as any failure to resolve."""
    wait_for_resolvers_to_end()  # a running one would take the name itself
    refuse_resolving_threads(monkeypatch)
    client = make_client(address="host.example", port=1)
    with pytest.raises(
        ConnectError, match=r"^cannot resolve 'host\.example': no thread to do it on \(can't start new thread\)$"
    ):
        client.connect()


def test_setting_the_current_value_while_running_is_allowed(server: Server, make_client: MakeClient) -> None:
    port = server.port
    server.interface = "127.0.0.1"  # unchanged: a no-op, not a StateError
    with pytest.raises(StateError):
        server.interface = "::1"
    client = make_client(server, client_id="same")
    client.connect()
    client.address = "127.0.0.1"
    client.port = port
    client.client_id = "same"
    with pytest.raises(StateError):
        client.client_id = "other"


def test_a_ping_that_crosses_our_goodbye_is_ignored(server: Server, make_client: Callable[..., Client]) -> None:
    """A PING that arrives after this side sent BYE (or SHUTDOWN, or ERROR)
    is dropped quietly: there is no PONG to send on a closed link (it once
    raised LocalProtocolError on the I/O thread while a server stopped)."""
    from missioncommander._events import PingReceived
    from missioncommander._loop import get_loop

    client = make_client(server, client_id="crossing")
    client.connect()
    (link,) = list(server._links)

    def goodbye_then_ping() -> None:
        link.send_final(link.proto.send_bye("test"), "test")
        link.on_event(PingReceived())  # must not raise

    get_loop().run_sync(goodbye_then_ping, timeout=5)
