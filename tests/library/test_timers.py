"""Every timer of Client and Server, on a fake driver: a fake clock, no sockets.

The peer is played with a sans-IO ``Connection`` of the other role; time
moves only when the test says so (``driver.advance``), so a 15-second
heartbeat timeout takes no time at all and cannot be flaky.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest
from support import wait_until
from support.fake_driver import FakeDriver, FakeTransport

from missioncommander import Client, ClientState, Message, Server, StateError
from missioncommander._connection import Connection
from missioncommander._events import AckReceived, ErrorReceived, Hello, PingReceived, Role, Welcome
from missioncommander._frames import message_frames
from missioncommander._inbox import ACK_DELAY
from missioncommander._reconnect import reconnect_delay, retry_hint

S = ClientState
CONNECTED = S.STATE_OK | S.STATE_RUNNING | S.STATE_CONNECTED
RECONNECTING = S.STATE_OK | S.STATE_RUNNING | S.STATE_UNEXP_CLOSED | S.STATE_RECONNECTING
DISCONNECTING = S.STATE_OK | S.STATE_RUNNING | S.STATE_DISCONNECTING


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver()


# -- a client against a scripted server ------------------------------------------------


def _serve(driver: FakeDriver, transport: FakeTransport, heartbeat_timeout: float = 15.0) -> Connection:
    """Play the server's side of a handshake on ``transport``."""
    server = Connection(Role.SERVER, now=driver.now)
    transport.feed(server.send_challenge("n" * 32, auth=False))
    (hello,) = server.receive_data(transport.take(), driver.now)
    assert isinstance(hello, Hello)
    transport.feed(server.send_welcome("token", False, 0, 65536, heartbeat_timeout, driver.now))
    driver.run()
    return server


@pytest.fixture
def connected(driver: FakeDriver) -> Iterator[tuple[Client, FakeTransport, Connection]]:
    client = Client(_driver=driver, address="127.0.0.1", port=5000, client_id="c1")
    client.connect(wait=False)
    driver.run()
    transport = driver.connects[-1].accept()
    server = _serve(driver, transport)
    assert client.state == CONNECTED
    yield client, transport, server


def test_an_idle_client_pings_at_its_interval(
    connected: tuple[Client, FakeTransport, Connection], driver: FakeDriver
) -> None:
    client, transport, server = connected
    assert client.heartbeat_interval == 5.0
    transport.take()
    driver.advance(4.9)
    assert transport.take() == b""
    driver.advance(0.2)
    assert server.receive_data(transport.take(), driver.now) == [PingReceived()]


def test_a_client_gives_up_on_a_silent_server_after_its_heartbeat_timeout(
    connected: tuple[Client, FakeTransport, Connection], driver: FakeDriver
) -> None:
    client, transport, _ = connected
    driver.advance(client.heartbeat_timeout - 0.1)
    assert client.state == CONNECTED and not transport.closed
    driver.advance(0.2)
    assert transport.closed and "heartbeat timeout" in (transport.close_reason or "")
    assert client.state == RECONNECTING
    assert driver.next_deadline() is not None  # the reconnect is scheduled


def test_connect_while_a_disconnect_waits_for_the_server_is_refused(
    connected: tuple[Client, FakeTransport, Connection], driver: FakeDriver
) -> None:
    """disconnect() waits (up to DISCONNECT_WAIT) for the server to close
    first; a connect() meanwhile (from a `disconnect` callback, taking the
    event for a lost connection) did nothing, in silence, and the client
    ended disconnected.  Here the loop does not turn until the test says,
    so the disconnect is under way for as long as the test looks."""
    client, _, _ = connected
    leaving = threading.Thread(target=client.disconnect)
    leaving.start()
    wait_until(lambda: client.state == DISCONNECTING)
    with pytest.raises(StateError, match=r"connect\(\) once disconnect\(\) has returned"):
        client.connect(wait=False)
    wait_until(lambda: (driver.run(), not leaving.is_alive())[1])  # the loop turns: the goodbye, the close
    assert client.state == S.STATE_OK | S.STATE_NOT_CONNECTED
    client.connect(wait=False)  # afterwards, as the message says
    driver.run()
    assert client.state & S.STATE_CONNECTING


def test_a_client_that_keeps_sending_sends_no_ping(
    connected: tuple[Client, FakeTransport, Connection], driver: FakeDriver
) -> None:
    client, transport, server = connected
    seen = []
    for n in range(30):  # 30 s, a message a second: never an idle interval
        client.send(Message("tick", {"n": n}))
        driver.run()
        seen += server.receive_data(transport.take(), driver.now)
        transport.feed(server.send_ack(n + 1, driver.now))  # the server is alive
        driver.advance(1.0)
    seen += server.receive_data(transport.take(), driver.now)
    assert [e.seq for e in seen if not isinstance(e, PingReceived)] == list(range(1, 31))  # type: ignore[union-attr]
    assert PingReceived() not in seen


def test_reconnect_backoff_doubles_up_to_its_cap_with_full_jitter(
    driver: FakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws: list[tuple[float, float]] = []

    def top_of_range(low: float, high: float) -> float:
        draws.append((low, high))
        return high

    monkeypatch.setattr("missioncommander._reconnect.random.uniform", top_of_range)
    client = Client(
        _driver=driver, address="127.0.0.1", port=5000, client_id="c1", reconnect_delay=0.5, reconnect_max_delay=3.0
    )
    client.connect(wait=False)
    driver.run()
    transport = driver.connects[-1].accept()
    _serve(driver, transport)
    transport.drop()  # the connection breaks; every attempt after it is refused
    for wait in (0.5, 1.0, 2.0, 3.0, 3.0, 3.0):
        attempts = len(driver.connects)
        driver.advance(wait - 0.001)
        assert len(driver.connects) == attempts, f"an attempt before its {wait} s wait was over"
        driver.advance(0.002)
        assert len(driver.connects) == attempts + 1, f"no attempt after {wait} s"
        driver.connects[-1].refuse()
        driver.run()
    assert client.state == RECONNECTING
    assert all(low == 0.0 for low, _ in draws)  # full jitter: anywhere from 0


def test_reconnect_delay_stays_between_zero_and_its_ceiling() -> None:
    for retries in range(40):
        ceiling = min(30.0, 0.5 * 2**retries)
        assert reconnect_delay(retries, 0.5, 30.0, lambda lo, hi: lo) == 0.0
        assert reconnect_delay(retries, 0.5, 30.0, lambda lo, hi: hi) == ceiling
    assert 0.0 <= reconnect_delay(100, 0.5, 30.0) <= 30.0


def test_with_several_servers_the_backoff_grows_once_per_round_of_them() -> None:
    def top(low: float, high: float) -> float:
        return high  # the ceiling

    assert [reconnect_delay(retries, 0.5, 30.0, top, servers=3) for retries in range(9)] == [
        *[0.5] * 3,
        *[1.0] * 3,
        *[2.0] * 3,
    ]
    assert reconnect_delay(3 * 20, 0.5, 30.0, top, servers=3) == 30.0


def test_a_retry_after_from_the_server_caps_the_backoff_with_some_spread() -> None:
    top = lambda lo, hi: hi  # noqa: E731
    assert reconnect_delay(12, 0.5, 30.0, top, retry_after=4.0) == pytest.approx(4.8)  # 30 s ceiling: capped
    assert reconnect_delay(12, 0.5, 30.0, top, retry_after=20.0) == 21.0  # the spread: a fifth, at most 1 s
    assert reconnect_delay(0, 0.5, 30.0, top, retry_after=4.0) == 0.5  # the backoff is sooner: it stands
    assert reconnect_delay(12, 0.5, 30.0, lambda lo, hi: lo, retry_after=4.0) == 0.0


def test_a_client_refused_with_retry_after_comes_back_soon_after_it(driver: FakeDriver) -> None:
    """A cluster node refuses a client whose id a dead node's lease still
    holds, saying when the lease runs out: however far the backoff has
    grown, the next attempt comes within a fifth of that after it."""
    client = Client(
        _driver=driver, address="127.0.0.1", port=5000, client_id="c1", reconnect_delay=1.0, reconnect_max_delay=60.0
    )
    client.connect(wait=False)
    driver.run()
    for _ in range(12):  # the backoff's ceiling grows to the 60 s cap
        attempts = len(driver.connects)
        driver.connects[-1].refuse()
        driver.run()
        for _ in range(600):
            if len(driver.connects) > attempts:
                break
            driver.advance(0.1)
    attempts = len(driver.connects)
    server = Connection(Role.SERVER, now=driver.now)
    transport = driver.connects[-1].accept()
    transport.feed(server.send_challenge("n" * 32, auth=False))
    driver.run()
    server.receive_data(transport.take(), driver.now)
    transport.feed(server.send_error("id_in_use", "client id 'c1' is held by node n2; retry", True, retry_after=3.0))
    driver.run()
    driver.advance(3.6 + 0.001)
    assert len(driver.connects) == attempts + 1, "no attempt within 3 s and a fifth after the refusal"
    assert client.last_close_reason is not None and "held by node n2" in client.last_close_reason


@pytest.mark.parametrize(("told", "p90"), [(False, 10.0), (True, 7.0)])
def test_a_client_of_three_nodes_resumes_soon_after_a_dead_nodes_lease(told: bool, p90: float) -> None:
    """The case the rule is for: the client's node is killed, the other two
    refuse it ("held by the dead node; retry") until its 6 s lease runs
    out.  Simulated with the client's rule (one attempt per server in turn,
    each refusal quick): resumed within 10 s of the kill in nine runs of
    ten (doubling per attempt, half the runs waited 10 s and a tenth 32 s);
    when the refusals say when the lease runs out (``retry_after``, as
    cluster nodes do), within 1 s of it (p90 6.2 s, the longest 6.5 s)."""
    rng = random.Random(7)

    def resumed_after(lease: float = 6.0) -> float:
        now = 0.0
        free_at = None
        for retries in range(10_000):  # far more attempts than 6 s can hold
            server = (retries + 1) % 3  # the client was on server 0, now dead
            if server != 0 and now >= lease:
                return now
            if told and server != 0:  # the live ones refuse saying when; the dead one says nothing
                free_at = lease
            hint, free_at = retry_hint(free_at, now)
            now += reconnect_delay(retries + 1, 0.5, 30.0, rng.uniform, servers=3, retry_after=hint)
        raise AssertionError("never resumed")

    waits = sorted(resumed_after() for _ in range(2000))
    assert waits[len(waits) * 9 // 10] < p90


def test_a_connect_attempt_with_no_answer_times_out_and_is_retried(driver: FakeDriver) -> None:
    client = Client(_driver=driver, address="127.0.0.1", port=5000, connect_timeout=2.0, reconnect_delay=0.1)
    client.connect(wait=False)
    driver.run()
    first = driver.connects[-1]
    driver.advance(1.9)
    assert not first.cancelled
    driver.advance(0.2)
    assert first.cancelled
    assert client.last_close_reason == "no answer from 127.0.0.1:5000 within 2 s"
    assert client.state & S.STATE_CONNECTING
    driver.advance(0.2)  # the retry's wait is at most reconnect_delay * 2
    assert len(driver.connects) == 2


def test_a_client_acks_what_it_took_after_the_ack_delay_or_every_64(
    connected: tuple[Client, FakeTransport, Connection], driver: FakeDriver
) -> None:
    _, transport, server = connected
    transport.take()
    transport.feed(b"".join(message_frames(1, [b'["m",{}]'])))
    driver.run()
    assert transport.take() == b""  # not at once: acks are batched
    driver.advance(ACK_DELAY)
    assert server.receive_data(transport.take(), driver.now) == [AckReceived(1)]
    transport.feed(b"".join(message_frames(2, [b'["m",{}]'] * 64)))
    driver.run()
    assert AckReceived(65) in server.receive_data(transport.take(), driver.now)  # 64 taken: no waiting


# -- a server against scripted clients ---------------------------------------------------


def _hello(driver: FakeDriver, transport: FakeTransport, client_id: str = "c1") -> tuple[Connection, list[object]]:
    """Play a client's side of a handshake: its connection, and what the
    server answered so far (a WELCOME, an ERROR, or nothing yet)."""
    client = Connection(Role.CLIENT, now=driver.now)
    client.receive_data(transport.take(), driver.now)  # the CHALLENGE
    transport.feed(client.send_hello(client_id, None, 0, 65536, 15.0, driver.now))
    driver.run()
    return client, list(client.receive_data(transport.take(), driver.now))


@pytest.fixture
def server(driver: FakeDriver) -> Iterator[Server]:
    srv = Server(_driver=driver, interface="127.0.0.1", port=0, handshake_timeout=3.0, session_expiry=20.0)
    srv.start()
    yield srv


def test_a_server_closes_a_connection_that_never_says_hello(server: Server, driver: FakeDriver) -> None:
    incoming = driver.listeners[0].connect()
    transport = incoming.transport
    assert transport is not None
    client = Connection(Role.CLIENT, now=driver.now)
    client.receive_data(transport.take(), driver.now)  # the CHALLENGE
    driver.advance(2.9)
    assert not transport.closed
    driver.advance(0.2)
    (error,) = client.receive_data(transport.take(), driver.now)
    assert isinstance(error, ErrorReceived) and error.code == "handshake_timeout"
    assert transport.closed


def test_a_detached_session_expires_after_session_expiry(server: Server, driver: FakeDriver) -> None:
    transport = driver.listeners[0].connect().transport
    assert transport is not None
    _, answer = _hello(driver, transport)
    assert isinstance(answer[0], Welcome) and server.clients == ["c1"] and server.detached_clients == []
    transport.drop()
    assert server.detached_clients == ["c1"]
    driver.advance(19.9)
    assert server.clients == ["c1"] and server.detached_clients == ["c1"]  # detached: it may still resume
    driver.advance(0.2)
    assert server.clients == [] and server.detached_clients == []


def test_a_second_hello_for_a_live_id_probes_the_first_and_waits_for_its_pong(
    server: Server, driver: FakeDriver
) -> None:
    first = driver.listeners[0].connect().transport
    assert first is not None
    first_client, _ = _hello(driver, first)
    second = driver.listeners[0].connect().transport
    assert second is not None
    second_client, answer = _hello(driver, second)
    assert answer == []  # not yet: the first link is asked first
    assert first_client.receive_data(first.take(), driver.now) == [PingReceived()]  # are you there?
    first.feed(first_client.send_pong(driver.now))
    driver.run()
    (refusal,) = second_client.receive_data(second.take(), driver.now)
    assert isinstance(refusal, ErrorReceived) and refusal.code == "id_in_use"
    assert not first.closed


def test_a_second_hello_takes_over_an_id_whose_first_link_does_not_answer(server: Server, driver: FakeDriver) -> None:
    first = driver.listeners[0].connect().transport
    assert first is not None
    first_client, _ = _hello(driver, first)
    second = driver.listeners[0].connect().transport
    assert second is not None
    second_client, answer = _hello(driver, second)
    assert answer == []
    assert first_client.receive_data(first.take(), driver.now) == [PingReceived()]
    driver.advance(min(server.heartbeat_timeout, 3.0) - 0.1)
    assert second.take() == b"" and not first.closed  # still waiting for the PONG
    driver.advance(0.2)
    assert first.closed
    (welcome,) = second_client.receive_data(second.take(), driver.now)
    assert isinstance(welcome, Welcome)
    assert server.clients == ["c1"]
