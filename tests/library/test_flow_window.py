"""Flow control by windows: each side announces its inbox bounds in its
HELLO or WELCOME, and the peer keeps what it has on the wire to it (written,
not acknowledged) within them, so an inbox never has to stop reading, and
the ACKs behind its data are never stuck (docs/PROTOCOL.md, "Flow control").

On a fake driver: a scripted peer, the frames counted exactly.
"""

from __future__ import annotations

import threading

import pytest
from support import wait_until
from support.fake_driver import FakeDriver, FakeTransport, connected_client

from missioncommander import Message, Server
from missioncommander._connection import Connection
from missioncommander._errors import RemoteProtocolError
from missioncommander._events import AckReceived, Hello, MessageReceived, Role, Welcome, Window
from missioncommander._frames import FrameType, encode_json_frame, message_frames, parse_frame
from missioncommander._session import SendSession
from missioncommander._streams import UNBOUNDED


def _body(n: int, pad: int = 0) -> bytes:
    return Message("m", {"n": n, "pad": "x" * pad}).encode()


def _written(peer: Connection, transport: FakeTransport, driver: FakeDriver) -> list[int]:
    driver.run()
    return [e.seq for e in peer.receive_data(transport.take(), driver.now) if isinstance(e, MessageReceived)]


# -- the sending side --------------------------------------------------------------


def test_a_client_writes_no_more_than_the_servers_window_and_an_ack_opens_it() -> None:
    driver = FakeDriver()
    client, transport, peer, _hello = connected_client(driver, Window(2, 1 << 20))
    for n in range(1, 6):
        client.send(Message("m", {"n": n}))
    assert _written(peer, transport, driver) == [1, 2]
    assert client.stats()["queued"] == 5  # all kept; three wait for room
    transport.feed(peer.send_ack(1, driver.now))
    assert _written(peer, transport, driver) == [3]
    transport.feed(peer.send_ack(3, driver.now))
    assert _written(peer, transport, driver) == [4, 5]


def test_the_figures_show_the_peers_window_and_what_waits_for_it() -> None:
    driver = FakeDriver()
    client, transport, peer, _hello = connected_client(driver, Window(2, 5000))
    for n in range(1, 6):
        client.send(Message("m", {"n": n}))
    _written(peer, transport, driver)
    figures = client.stats()
    assert (figures["peer_max_inbound"], figures["peer_max_inbound_bytes"]) == (2, 5000)
    assert (figures["queued"], figures["unwritten"]) == (5, 3)  # 2 on the wire, 3 wait for room
    older = connected_client(FakeDriver(), None)[0]  # a peer that announces no window
    assert (older.stats()["peer_max_inbound"], older.stats()["peer_max_inbound_bytes"]) == (None, None)


def test_the_window_counts_bytes_and_a_message_bigger_than_it_still_goes_alone() -> None:
    driver = FakeDriver()
    small, big = len(_body(1, 100)), len(_body(1, 5000))
    client, transport, peer, _hello = connected_client(driver, Window(100, 2 * small + 10))
    for n in (1, 2, 3):
        client.send(Message("m", {"n": n, "pad": "x" * 100}))
    assert _written(peer, transport, driver) == [1, 2]
    client.send(Message("m", {"n": 4, "pad": "x" * 5000}))  # over the whole window
    transport.feed(peer.send_ack(2, driver.now))
    assert _written(peer, transport, driver) == [3]  # 4 would pass the window while 3 is out
    transport.feed(peer.send_ack(3, driver.now))
    assert _written(peer, transport, driver) == [4]  # nothing else out: it goes
    assert big > 2 * small + 10


def test_a_peer_that_announces_no_window_gets_everything_at_once() -> None:
    driver = FakeDriver()
    client, transport, peer, _hello = connected_client(driver, None)
    for n in range(1, 301):
        client.send(Message("m", {"n": n}))
    assert _written(peer, transport, driver) == list(range(1, 301))


def test_a_resume_writes_again_within_the_window() -> None:
    driver = FakeDriver()
    client, transport, peer, _hello = connected_client(driver, Window(3, 1 << 20), reconnect_delay=0.01)
    for n in range(1, 8):
        client.send(Message("m", {"n": n}))
    assert _written(peer, transport, driver) == [1, 2, 3]
    transport.feed(peer.send_ack(1, driver.now))
    assert _written(peer, transport, driver) == [4]
    transport.drop()
    driver.advance(1.0)
    transport = driver.connects[-1].accept()
    peer = Connection(Role.SERVER, now=driver.now)
    transport.feed(peer.send_challenge("n" * 32, auth=False))
    (hello,) = peer.receive_data(transport.take(), driver.now)
    assert isinstance(hello, Hello) and hello.session == "token"
    # The server had taken up to 2: 3 and 4 again, then 5, within a window of 3.
    transport.feed(peer.send_welcome("token", True, 2, 65536, 15.0, driver.now, window=Window(3, 1 << 20)))
    assert _written(peer, transport, driver) == [3, 4, 5]
    transport.feed(peer.send_ack(5, driver.now))
    assert _written(peer, transport, driver) == [6, 7]


def test_a_server_writes_within_the_window_its_clients_hello_announced() -> None:
    driver = FakeDriver()
    server = Server(_driver=driver, interface="127.0.0.1", port=0)
    server.start()
    transport = driver.listeners[-1].connect().transport
    assert transport is not None
    peer = Connection(Role.CLIENT, now=driver.now)
    peer.receive_data(transport.take(), driver.now)  # the CHALLENGE
    transport.feed(peer.send_hello("c7", None, 0, 65536, 15.0, driver.now, window=Window(2, 1 << 20)))
    driver.run()
    (welcome,) = peer.receive_data(transport.take(), driver.now)
    assert isinstance(welcome, Welcome)
    assert welcome.window == Window(server.max_inbound, server.max_inbound_bytes)
    for n in range(1, 5):
        server.send("c7", Message("m", {"n": n}))
    server.send("*", Message("m", {"n": 5}))
    assert _written(peer, transport, driver) == [1, 2]
    figures = server.stats("c7")
    assert (figures["peer_max_inbound"], figures["peer_max_inbound_bytes"], figures["unwritten"]) == (2, 1 << 20, 3)
    transport.feed(peer.send_ack(2, driver.now))
    assert _written(peer, transport, driver) == [3, 4]
    transport.feed(peer.send_ack(4, driver.now))
    assert _written(peer, transport, driver) == [5]
    server.stop()


def test_the_send_session_keeps_its_room_through_acks_and_resumes() -> None:
    session = SendSession(100, 1 << 20)
    session.set_window(Window(10, 25))
    for _ in range(6):
        session.out.push(b"x" * 10)
    assert len(session.take_unsent()) > 0 and session.sent_seq == 2 and session.room_bytes == 5
    assert session.take_unsent() == [] and session.sent_seq == 2
    assert session.acked(1) is True and session.room_bytes == 15
    session.take_unsent()
    assert session.sent_seq == 3 and session.room_bytes == 5
    session.resumed(2)  # the peer had up to 2: 3 is written again
    assert session.sent_seq == 2 and session.room_bytes == 25
    session.take_unsent()
    assert session.sent_seq == 4 and session.room_bytes == 5
    assert session.acked(6) is False and session.room_bytes == 25  # everything, written or not
    session.set_window(None)
    assert (session.window, session.window_bytes, session.room_bytes) == (UNBOUNDED, UNBOUNDED, UNBOUNDED)


# -- the receiving side ------------------------------------------------------------


def test_a_client_announces_its_inbox_bounds_as_its_window() -> None:
    driver = FakeDriver()
    _client, _transport, _peer, hello = connected_client(driver, None, max_inbound=40, max_inbound_bytes=5000)
    assert hello.window == Window(40, 5000)


@pytest.mark.parametrize("inline", [True, False])
def test_a_receiver_acknowledges_half_its_window_at_once_not_on_the_timer(inline: bool) -> None:
    """A peer that filled the window waits for the ACK: at half the window
    taken it goes without waiting for ACK_DELAY (the fake clock stands still)."""
    driver = FakeDriver()
    client, transport, peer, _hello = connected_client(driver, None, max_inbound=4, inline_callbacks=inline)
    taken = threading.Event()

    def on_message(message: Message) -> None:
        if message.payload["n"] == 2:
            taken.set()

    client.subscribe("message", on_message)
    transport.feed(b"".join(message_frames(1, [_body(1), _body(2)])))
    driver.run()
    assert taken.wait(10)
    acks: list[AckReceived] = []

    def acked() -> bool:
        driver.run()
        acks.extend(e for e in peer.receive_data(transport.take(), driver.now) if isinstance(e, AckReceived))
        return bool(acks)

    if inline:
        assert acked(), "an inline callback's ACK goes out in the same turn"
    else:  # the callback thread's request for the ACK reaches the loop: the clock never moves
        wait_until(acked, what="the ACK at half the window")
    assert acks == [AckReceived(2)]


def test_half_the_byte_window_taken_is_acknowledged_at_once() -> None:
    driver = FakeDriver()
    size = len(_body(1, 1000))
    client, transport, peer, _hello = connected_client(driver, None, max_inbound_bytes=2 * size, inline_callbacks=True)
    client.subscribe("message", lambda message: None)
    transport.feed(b"".join(message_frames(1, [_body(1, 1000)])))
    driver.run()
    assert [e for e in peer.receive_data(transport.take(), driver.now) if isinstance(e, AckReceived)] == [
        AckReceived(1)
    ]


# -- the handshake fields ------------------------------------------------------------

_HELLO = {
    "version": 2,
    "client_id": "c",
    "session": None,
    "last_seq": 0,
    "max_frame_size": 65536,
    "heartbeat_timeout": 15,
}


def test_hello_and_welcome_carry_the_window_or_none() -> None:
    assert parse_frame(FrameType.HELLO, encode_json_frame(FrameType.HELLO, _HELLO)[5:]) == Hello(
        2, "c", None, 0, 65536, 15.0
    )
    hello = _HELLO | {"max_inbound": 7, "max_inbound_bytes": 900}
    parsed = parse_frame(FrameType.HELLO, encode_json_frame(FrameType.HELLO, hello)[5:])
    assert isinstance(parsed, Hello) and parsed.window == Window(7, 900)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_inbound": 7},
        {"max_inbound_bytes": 900},
        {"max_inbound": 0, "max_inbound_bytes": 900},
        {"max_inbound": 7, "max_inbound_bytes": -1},
        {"max_inbound": True, "max_inbound_bytes": 900},
        {"max_inbound": 7, "max_inbound_bytes": "900"},
    ],
)
def test_a_garbled_window_is_a_bad_frame(fields: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_frame(FrameType.HELLO, encode_json_frame(FrameType.HELLO, _HELLO | fields)[5:])
    assert caught.value.code == "bad_frame"
