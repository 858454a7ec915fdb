"""Bad input from raw sockets: the offender is told and closed, others carry on."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable

import pytest
from support import Recorder, server_frames

from missioncommander import Client, Message, Server
from missioncommander._events import ErrorReceived
from missioncommander._frames import FrameDecoder, FrameType, encode_frame, encode_json_frame

MakeClient = Callable[..., Client]


def hello(client_id: str = "raw", version: int = 1) -> bytes:
    return encode_json_frame(
        FrameType.HELLO,
        {"version": version, "client_id": client_id, "session": None, "last_seq": 0, "max_frame_size": 65536,
         "heartbeat_timeout": 15},
    )  # fmt: skip


def read_until_closed(sock: socket.socket) -> list[object]:
    """Every frame the server sends until it closes the connection."""
    return list(server_frames(sock))


def error_codes(events: list[object]) -> list[str]:
    return [e.code for e in events if isinstance(e, ErrorReceived)]


@pytest.fixture
def bystander(server: Server, make_client: MakeClient) -> tuple[Client, Recorder]:
    client = make_client(server, client_id="bystander")
    rec = Recorder().attach(client, "message", "reconnect")
    client.connect()
    return client, rec


def check_bystander(server: Server, bystander: tuple[Client, Recorder], n: int) -> None:
    client, rec = bystander
    server.send("bystander", Message("still-here", {"n": n}))
    rec.wait_count("message", n)
    assert client.connected and rec.of("reconnect") == []


BAD_STREAMS = {
    "garbage": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "frame_too_large"),
    "oversized_length": (struct.pack("!IB", 2**31, 3), "frame_too_large"),
    "zero_length": (b"\0\0\0\0", "bad_frame"),
    "unknown_type": (encode_frame(77, b""), "bad_frame"),  # type: ignore[arg-type]
    "invalid_utf8": (encode_frame(FrameType.HELLO, b"\xff\xfe{}"), "bad_frame"),
    "invalid_json": (encode_frame(FrameType.HELLO, b"{not json"), "bad_frame"),
    "json_not_object": (encode_frame(FrameType.HELLO, b"[1]"), "bad_frame"),
    "message_before_hello": (encode_frame(FrameType.MESSAGE, b"\0" * 8 + b'["s",{}]'), "unexpected_frame"),
    "ping_before_hello": (encode_frame(FrameType.PING), "unexpected_frame"),
    "wrong_version": (hello(version=99), "version_unsupported"),
    "frame_before_welcome": (hello() + encode_frame(FrameType.PING), "unexpected_frame"),
}
# Sent after a complete handshake.
BAD_AFTER_HANDSHAKE = {
    "message_gap": (encode_frame(FrameType.MESSAGE, struct.pack("!Q", 5) + b'["s",{}]'), "sequence_gap"),
    "bogus_ack": (encode_frame(FrameType.ACK, struct.pack("!Q", 10)), "bad_frame"),
    "shutdown_from_client": (encode_json_frame(FrameType.SHUTDOWN, {"reason": "x"}), "unexpected_frame"),
    "second_hello": (hello(), "unexpected_frame"),
    "bad_message_body": (encode_frame(FrameType.MESSAGE, struct.pack("!Q", 1) + b'{"s":1}'), "bad_frame"),
    "oversized_after_handshake": (struct.pack("!IB", 2**24 + 1, 3), "frame_too_large"),
}


@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
def test_bad_stream_gets_an_error_and_a_close(case: str, server: Server, bystander: tuple[Client, Recorder]) -> None:
    data, code = BAD_STREAMS[case]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(data)
        events = read_until_closed(sock)
    assert code in error_codes(events)
    check_bystander(server, bystander, 1)


@pytest.mark.parametrize("case", sorted(BAD_AFTER_HANDSHAKE))
def test_bad_frame_after_handshake(case: str, server: Server, bystander: tuple[Client, Recorder]) -> None:
    data, code = BAD_AFTER_HANDSHAKE[case]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(hello(f"raw-{case}"))
        decoder = FrameDecoder()
        sock.settimeout(10)
        frames: list[tuple[int, bytes]] = []
        while len(frames) < 2:  # the server's CHALLENGE, then its WELCOME
            frames.extend(decoder.feed(sock.recv(65536)))
        assert [f[0] for f in frames[:2]] == [FrameType.CHALLENGE, FrameType.WELCOME]
        sock.sendall(data)
        events = read_until_closed(sock)
    assert code in error_codes(events)
    check_bystander(server, bystander, 1)


def test_truncated_frame_then_close_is_harmless(server: Server, bystander: tuple[Client, Recorder]) -> None:
    for data in (hello()[:7], hello() + encode_frame(FrameType.MESSAGE, b"\0" * 8 + b'["s",{}]')[:10]):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(data)
    # The bystander is unaffected and a new client still gets in.
    check_bystander(server, bystander, 1)


def test_silent_peer_is_dropped_after_the_handshake_timeout(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0, handshake_timeout=0.3) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            events = read_until_closed(sock)  # we say nothing
        assert error_codes(events) == ["handshake_timeout"]
        client = make_client(server)
        client.connect()


def test_many_bad_peers_at_once_do_not_disturb_the_good_one(server: Server, bystander: tuple[Client, Recorder]) -> None:
    streams = list(BAD_STREAMS.values())

    def attack(i: int) -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(streams[i % len(streams)][0])
            read_until_closed(sock)

    threads = [threading.Thread(target=attack, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for n in range(1, 6):
        check_bystander(server, bystander, n)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    check_bystander(server, bystander, 6)


def test_client_survives_a_server_that_speaks_garbage(make_client: MakeClient) -> None:
    """A fake server that answers HELLO with garbage: the client fails cleanly."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def fake_server() -> None:
        conn, _ = listener.accept()
        with conn:
            # No CHALLENGE, and a WELCOME that lacks its fields.
            conn.sendall(encode_frame(FrameType.WELCOME, json.dumps({"version": 1}).encode()))
            conn.recv(65536)  # the client's ERROR frame, then its close

    t = threading.Thread(target=fake_server)
    t.start()
    client = make_client(address="127.0.0.1", port=port)
    with pytest.raises(ConnectionError):
        client.connect()
    t.join(10)
    listener.close()
    assert "protocol error" in (client.last_close_reason or "") or "handshake" in (client.last_close_reason or "")
