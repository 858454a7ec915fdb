"""The connection state machine and session streams, with a fake clock."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from missioncommander._auth import auth_proof, proof_matches
from missioncommander._connection import Connection
from missioncommander._errors import LocalProtocolError, QueueFullError, RemoteProtocolError
from missioncommander._events import (
    AckReceived,
    Challenge,
    ErrorReceived,
    Hello,
    MessageReceived,
    PingReceived,
    Role,
    ShutdownReceived,
    Welcome,
)
from missioncommander._frames import (
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameType,
    encode_frame,
    encode_json_frame,
    message_frames,
    message_header,
    parse_frame,
)
from missioncommander._streams import UNBOUNDED, InboundStream, OutboundStream
from missioncommander._transitions import ConnState


def handshake() -> tuple[Connection, Connection]:
    """A client and a server wired together with no network."""
    client = Connection(Role.CLIENT, now=0.0)
    server = Connection(Role.SERVER, now=0.0)
    (challenge,) = client.receive_data(server.send_challenge("n" * 32, auth=False), now=0.0)
    assert challenge == Challenge(PROTOCOL_VERSION, "n" * 32, False)
    (hello,) = server.receive_data(client.send_hello("c1", None, 0, 65536, 15.0, now=0.0), now=0.0)
    assert isinstance(hello, Hello)
    (welcome,) = client.receive_data(server.send_welcome("tok", False, 0, 65536, 9.0, now=0.0), now=0.0)
    assert isinstance(welcome, Welcome)
    return client, server


def test_handshake_opens_both_sides_and_records_peer_limits() -> None:
    client, server = handshake()
    assert client.state is server.state is ConnState.OPEN
    assert client.peer_heartbeat_timeout == 9.0
    assert server.peer_heartbeat_timeout == 15.0
    assert server.peer_max_frame_size == 65536


def test_a_peer_not_let_in_yet_may_send_only_small_frames() -> None:
    """Before the handshake is over a frame may be 16 KiB at most, whatever
    max_frame_size is: a peer nobody let in made a server buffer up to
    16 MiB per connection (20 such connections: 300 MB).  Refused at the
    header, before the body arrives; once open, the full limit."""
    from missioncommander._frames import HANDSHAKE_MAX_FRAME_SIZE

    server = Connection(Role.SERVER, now=0.0)
    server.send_challenge("n" * 32, auth=False)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data((15 * 2**20).to_bytes(4, "big") + b"\x02", 0.0)
    assert info.value.code == "frame_too_large"
    client = Connection(Role.CLIENT, now=0.0)
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data((HANDSHAKE_MAX_FRAME_SIZE + 1).to_bytes(4, "big") + bytes([FrameType.CHALLENGE]), 0.0)
    assert info.value.code == "frame_too_large"
    client, server = handshake()  # open: a message of 1 MiB is fine (the default limit is 16 MiB)
    body = b'["s",{"t":"' + b"x" * 2**20 + b'"}]'
    (event,) = server.receive_data(message_header(1, len(body)) + body, now=1.0)
    assert isinstance(event, MessageReceived) and len(event.payload["t"]) == 2**20
    (event,) = client.receive_data(message_header(1, len(body)) + body, now=1.0)
    assert isinstance(event, MessageReceived)


def test_messages_flow_after_handshake() -> None:
    client, server = handshake()
    body = b'["s",{"n":1}]'
    events = server.receive_data(message_header(1, len(body)) + body + client.send_ack(4, now=1.0), now=1.0)
    assert events == [MessageReceived(1, "s", {"n": 1}, body), AckReceived(4)]


def test_a_read_of_exactly_one_message_is_read_like_any_other() -> None:
    """One whole small MESSAGE per read (a request, a reply) takes a short
    way through receive_data; it must read, check and fail the same."""
    _client, server = handshake()
    body = b'["s",{"n":1}]'
    frame = message_header(1, len(body)) + body
    assert server.receive_data(memoryview(bytearray(frame)), now=1.0) == [MessageReceived(1, "s", {"n": 1}, body)]
    # Behind a partial frame, the same bytes complete that one first.
    second = message_header(2, len(body)) + body
    assert server.receive_data(second[:3], now=1.0) == []
    assert server.receive_data(second[3:] + frame[:-1], now=1.0) == [MessageReceived(2, "s", {"n": 1}, body)]
    assert server.receive_data(frame[-1:], now=1.0) == [MessageReceived(1, "s", {"n": 1}, body)]
    assert server.last_received == 1.0
    bad = b'["s",[1]]'
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(message_header(3, len(bad)) + bad, now=2.0)
    assert info.value.code == "bad_frame"
    assert server.state is ConnState.CLOSED
    # Over the frame limit: refused, never decoded.
    small = Connection(Role.SERVER, max_frame_size=1024, now=0.0)
    peer = Connection(Role.CLIENT, now=0.0)
    peer.receive_data(small.send_challenge("n" * 32, auth=False), now=0.0)
    small.receive_data(peer.send_hello("c1", None, 0, 65536, 15.0, now=0.0), now=0.0)
    small.send_welcome("tok", False, 0, 1024, 9.0, now=0.0)
    big = json.dumps(["s", {"pad": "x" * 2000}]).encode()
    with pytest.raises(RemoteProtocolError) as info:
        small.receive_data(message_header(1, len(big)) + big, now=0.0)
    assert info.value.code == "frame_too_large"


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(FrameType.PING),
        encode_json_frame(FrameType.SHUTDOWN, {"reason": "x"}),
        encode_frame(FrameType.ACK, b"\0" * 8),
    ],
)
def test_server_accepts_only_hello_first(frame: bytes) -> None:
    server = Connection(Role.SERVER)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(frame, now=0.0)
    assert info.value.code == "unexpected_frame"
    assert server.state is ConnState.CLOSED
    # After a protocol error the server may still tell the peer why.
    assert server.send_error("unexpected_frame", "no").startswith(b"\0\0")


# A TLS 1.2/1.3 ClientHello's record header (what a client with tls set
# writes first) and an HTTP request: neither is a frame.
TLS_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize(
    ("first_bytes", "said"),
    [
        (TLS_CLIENT_HELLO, "the client began a TLS handshake, and this server has no TLS"),
        (HTTP_REQUEST, "the client sent an HTTP request"),
    ],
    ids=["tls", "http"],
)
def test_another_protocols_first_bytes_are_named(first_bytes: bytes, said: str) -> None:
    server = Connection(Role.SERVER)
    with pytest.raises(RemoteProtocolError, match=said) as info:
        server.receive_data(first_bytes, now=0.0)
    assert info.value.code == "frame_too_large"  # what the bytes are as a frame
    assert server.state is ConnState.CLOSED
    # Only a connection's first bytes are judged so: later, the same bytes
    # are just a frame too large.
    for receiver in handshake():
        with pytest.raises(RemoteProtocolError, match="exceeds the maximum") as later:
            receiver.receive_data(first_bytes, now=0.0)
        assert later.value.code == "frame_too_large"


def refused_as_foreign(role: Role, first_bytes: bytes, code: str) -> None:
    """A connection of ``role`` whose peer began with ``first_bytes`` closes
    with ``code``, saying what the peer began with, escaped."""
    conn = Connection(role)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(first_bytes, now=0.0)
    assert info.value.code == code and conn.state is ConnState.CLOSED
    said = str(info.value)
    peer = "client" if role is Role.SERVER else "server"
    assert f"the {peer} does not speak MissionCommander's protocol: it began with {first_bytes!r}" in said
    assert "\x1b" not in said and "\u202e" not in said  # escaped, never raw


@pytest.mark.parametrize(
    ("first_bytes", "code"),
    [
        (b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n", "frame_too_large"),
        (b"hello?\r\n", "frame_too_large"),  # typed into telnet or nc
        (b"\0\0\0\x05\x7f\x1b[31m\xe2\x80\xae", "bad_frame"),  # a type no frame has, escapes in it
    ],
    ids=["ssh", "typed", "binary"],
)
def test_another_protocols_client_is_said_with_what_it_began_with(first_bytes: bytes, code: str) -> None:
    """A server said only "frame of 1397966893 bytes exceeds the maximum"
    of an SSH client (or anything typed at its port); now what it began
    with, as escaped bytes, as a client says of a server."""
    refused_as_foreign(Role.SERVER, first_bytes, code)
    # A frame of a known type that breaks a rule is the protocol's error, said as such.
    server = Connection(Role.SERVER)
    with pytest.raises(RemoteProtocolError) as known:
        server.receive_data(encode_frame(FrameType.HELLO, b"\x1b[31m"), now=0.0)
    assert "does not speak" not in str(known.value)


@pytest.mark.parametrize(
    ("first_bytes", "code"),
    [
        (b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n", "frame_too_large"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "frame_too_large"),
        (b"220 mail.example.com ESMTP\r\n", "frame_too_large"),
        (b"\0\0\0\x05\x7f\x1b[31m\xe2\x80\xae", "bad_frame"),  # a type no frame has, escapes in it
    ],
    ids=["ssh", "http", "smtp", "binary"],
)
def test_a_client_told_no_challenge_but_another_servers_first_bytes_shows_them(first_bytes: bytes, code: str) -> None:
    """A client pointed at another kind of server that speaks first (its
    banner) used to say only "frame of 1397966893 bytes exceeds the
    maximum"; now what the server began with, as escaped bytes."""
    refused_as_foreign(Role.CLIENT, first_bytes, code)
    # A frame of a known type that breaks a rule is the protocol's error,
    # said as such (test_client_waits_for_the_challenge: a WELCOME first).
    client = Connection(Role.CLIENT)
    with pytest.raises(RemoteProtocolError, match="CHALLENGE body is not UTF-8 JSON") as known:
        client.receive_data(encode_frame(FrameType.CHALLENGE, b"\x1b[31m"), now=0.0)
    assert "does not speak" not in str(known.value)
    # After the CHALLENGE the same bytes are just a bad frame.
    client = Connection(Role.CLIENT)
    client.receive_data(Connection(Role.SERVER).send_challenge("n" * 32, auth=False), now=0.0)
    with pytest.raises(RemoteProtocolError) as later:
        client.receive_data(first_bytes, now=0.0)
    assert "does not speak" not in str(later.value)


def test_second_hello_is_unexpected() -> None:
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER)
    client.receive_data(server.send_challenge("n" * 32, auth=False), now=0.0)
    hello = client.send_hello("c1", None, 0, 65536, 15.0, now=0.0)
    with pytest.raises(RemoteProtocolError):
        server.receive_data(hello + hello, now=0.0)


def test_server_may_not_receive_shutdown_but_client_may() -> None:
    client, server = handshake()
    shutdown = encode_json_frame(FrameType.SHUTDOWN, {"reason": "bye"})
    assert client.receive_data(shutdown, now=0.0) == [ShutdownReceived("bye")]
    assert client.state is ConnState.CLOSED
    with pytest.raises(RemoteProtocolError):
        server.receive_data(shutdown, now=0.0)


def test_nothing_counts_after_a_closing_frame() -> None:
    client, _ = handshake()
    data = encode_json_frame(FrameType.SHUTDOWN, {"reason": "x"}) + b"garbage that would not parse"
    assert client.receive_data(data, now=0.0) == [ShutdownReceived("x")]
    assert client.receive_data(b"more", now=0.0) == []


def test_client_waits_for_the_challenge() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="before the server's CHALLENGE"):
        client.send_hello("c1", None, 0, 65536, 15.0, now=0.0)
    welcome = Connection(Role.SERVER)
    with pytest.raises(RemoteProtocolError, match="a WELCOME frame is not allowed"):
        client.receive_data(encode_json_frame(FrameType.WELCOME, {"version": 1, "session": "t", "resumed": False,
            "last_seq": 0, "max_frame_size": 65536, "heartbeat_timeout": 1}), now=0.0)  # fmt: skip
    assert welcome.state is ConnState.HANDSHAKE


def test_auth_proofs_bind_both_nonces_the_id_and_the_side() -> None:
    args = ("secret", "snonce" * 4, "cnonce" * 4, "c1")
    client = auth_proof(args[0], "client", *args[1:])
    assert proof_matches(client, auth_proof(args[0], "client", *args[1:]))
    assert client != auth_proof(args[0], "server", *args[1:])
    for changed in (
        ("other", *args[1:]),
        (args[0], "x" * 24, *args[2:]),
        (*args[:2], "y" * 24, "c1"),
        (*args[:3], "c2"),
    ):
        assert not proof_matches(client, auth_proof(changed[0], "client", *changed[1:]))
    assert not proof_matches(client, None)


def test_local_errors_name_the_state() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="cannot send ACK as client in state handshake"):
        client.send_ack(1, now=0.0)
    server = Connection(Role.SERVER)
    with pytest.raises(LocalProtocolError, match="before a HELLO"):
        server.send_welcome("t", False, 0, 65536, 1.0, now=0.0)
    client2, _ = handshake()
    with pytest.raises(LocalProtocolError):
        client2.send_shutdown("clients cannot")
    client2.send_bye("done")
    with pytest.raises(LocalProtocolError):
        client2.send_error("x", "already said bye")


def test_peer_limits_out_of_range_are_refused() -> None:
    server = Connection(Role.SERVER)
    client = Connection(Role.CLIENT)
    client.receive_data(server.send_challenge("n" * 32, auth=False), now=0.0)
    hello = client.send_hello("c1", None, 0, 100, 15.0, now=0.0)
    with pytest.raises(RemoteProtocolError, match="out of range"):
        server.receive_data(hello, now=0.0)


def test_heartbeat_pings_when_idle_and_times_out_when_silent() -> None:
    client, _ = handshake()  # the server's timeout is 9 s: ping at least every 3 s
    assert client.heartbeat_due(1.0, heartbeat_interval=5.0, heartbeat_timeout=15.0) == (None, 3.0)
    action, nxt = client.heartbeat_due(3.0, 5.0, 15.0)
    assert (action, nxt) == ("ping", 6.0)
    client.send_ping(now=3.0)
    client.receive_data(encode_frame(FrameType.PONG), now=3.1)
    assert client.heartbeat_due(4.0, 5.0, 15.0) == (None, 6.0)
    assert client.heartbeat_due(18.1, 5.0, 15.0) == ("timeout", 0.0)


def test_ping_is_an_event_for_the_caller_to_answer() -> None:
    client, server = handshake()
    assert server.receive_data(client.send_ping(now=1.0), now=1.0) == [PingReceived()]


# -- streams -------------------------------------------------------------------


def test_outbound_stream_numbers_acks_and_resends() -> None:
    out = OutboundStream(max_items=10, max_bytes=1000)
    seqs = [out.push(f"m{i}".encode()) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert out.ack(2) == 2
    assert [s for s, _ in out.after(0)] == [3, 4, 5]
    assert [s for s, _ in out.after(3)] == [4, 5]
    assert list(out.after(5)) == []
    with pytest.raises(RemoteProtocolError):
        out.ack(6)  # never sent
    out.restart()
    assert [(s, b) for s, b in out.after(0)] == [(1, b"m2"), (2, b"m3"), (3, b"m4")]
    assert out.push(b"x") == 4


def test_outbound_stream_is_bounded_by_count_and_bytes() -> None:
    out = OutboundStream(max_items=2, max_bytes=10)
    out.push(b"12345")
    with pytest.raises(QueueFullError, match="bytes"):
        out.push(b"123456")
    out.push(b"12345")
    with pytest.raises(QueueFullError):
        out.push(b"")
    out.ack(1)
    out.push(b"1")
    assert len(out) == 2
    assert out.queued_bytes == 6
    assert out.offer(b"2") is False  # the count is full: nothing changes
    assert (len(out), out.queued_bytes, out.next_seq) == (2, 6, 4)
    out.ack(2)
    assert out.offer(b"123456") is True
    assert out.offer(b"1234") is False  # 7 + 4 bytes is over 10
    assert [seq for seq, _ in out.after(0)] == [3, 4]


def test_inbound_stream_drops_duplicates_and_refuses_gaps() -> None:
    inbound = InboundStream()
    assert inbound.accept(1) and inbound.accept(2)
    assert not inbound.accept(2)
    assert not inbound.accept(1)
    with pytest.raises(RemoteProtocolError) as info:
        inbound.accept(4)
    assert info.value.code == "sequence_gap"
    assert inbound.unacked == 2


def _body(n: int, size: int = 0) -> bytes:
    return json.dumps(["m", {"n": n, "pad": "x" * size}], separators=(",", ":")).encode()


def _decode(chunks: list[bytes]) -> list[tuple[int, int]]:
    """(seq, n) of every MESSAGE frame in ``chunks``, written back to back."""
    frames = FrameDecoder(max_frame_size=10**7).feed(b"".join(chunks))
    events = [parse_frame(ftype, body) for ftype, body in frames]
    return [(e.seq, e.payload["n"]) for e in events if isinstance(e, MessageReceived)]


def frames_after(out: OutboundStream, seq: int) -> tuple[list[bytes], int]:
    """Everything above ``seq``, with neither bound."""
    chunks, last, _size = out.frames_within(seq, UNBOUNDED, UNBOUNDED)
    return chunks, last


def test_frames_after_joins_small_frames_and_writes_large_bodies_from_where_they_are() -> None:
    out = OutboundStream(max_items=100, max_bytes=10**7)
    big = _body(3, 20_000)
    for body in (_body(1), _body(2), big, _body(4), _body(5)):
        out.push(body)
    chunks, last = frames_after(out, 1)
    assert last == 5
    assert _decode(chunks) == [(2, 2), (3, 3), (4, 4), (5, 5)]
    # Message 2 joined with its header; 3's header alone, then its body
    # itself (no copy); 4 and 5 joined into one buffer.
    assert len(chunks) == 4
    assert chunks[2] is big
    assert frames_after(out, 5) == ([], 5)
    out.ack(3)
    assert _decode(frames_after(out, 0)[0]) == [(4, 4), (5, 5)]


def test_frames_after_a_lone_message_is_one_frame_and_a_lone_large_body_is_not_copied() -> None:
    out = OutboundStream(max_items=100, max_bytes=10**7)
    out.push(_body(1))
    chunks, last = frames_after(out, 0)
    assert (len(chunks), last, _decode(chunks)) == (1, 1, [(1, 1)])
    assert chunks == message_frames(1, [_body(1)])  # the shortcut is the general rule
    big = _body(2, 20_000)
    out.push(big)
    chunks, last = frames_after(out, 1)
    assert (last, _decode(chunks)) == (2, [(2, 2)])
    assert len(chunks) == 2 and chunks[1] is big
    assert chunks == message_frames(2, [big])
    out.ack(2)
    out.push(_body(3))
    # Asked from before what is kept (a resume after acks): the lone message still.
    assert _decode(frames_after(out, 0)[0]) == [(3, 3)]


@given(st.lists(st.sampled_from(["push", "big", "ack", "write", "lose"]), max_size=60))
def test_written_frames_deliver_exactly_once_in_order_whatever_is_lost(ops: list[str]) -> None:
    """The writer's path: frames_after numbers and frames what it writes;
    'lose' is a reconnect that loses what was in flight."""
    out = OutboundStream(max_items=1000, max_bytes=10**8)
    inbound = InboundStream()
    delivered: list[int] = []
    written = 0
    n = 0
    for op in ops:
        if op in ("push", "big"):
            n += 1
            out.push(_body(n, 9000 if op == "big" else 0))
        elif op == "write":
            chunks, written = frames_after(out, written)
            for seq, m in _decode(chunks):
                assert seq == m  # the number on the wire is the message's own
                if inbound.accept(seq):
                    delivered.append(m)
        elif op == "ack":
            out.ack(inbound.last_seq)
        else:
            written = inbound.last_seq
    for seq, m in _decode(frames_after(out, inbound.last_seq)[0]):
        if inbound.accept(seq):
            delivered.append(m)
    assert delivered == list(range(1, n + 1))


@pytest.mark.parametrize(("announced", "kept"), [(1e-9, 0.3), (0.3, 0.3), (15.0, 15.0), (1e12, 86_400.0)])
def test_a_peers_heartbeat_timeout_is_clamped(announced: float, kept: float) -> None:
    """A HELLO asking for heartbeat_timeout=1e-9 must not make us PING it
    100,000 times a second: what a peer may ask is bounded."""
    client = Connection(Role.CLIENT, now=0.0)
    server = Connection(Role.SERVER, now=0.0)
    client.receive_data(server.send_challenge("n" * 32, auth=False), now=0.0)
    server.receive_data(client.send_hello("c1", None, 0, 65536, announced, now=0.0), now=0.0)
    assert server.peer_heartbeat_timeout == kept
    assert server.ping_interval(5.0) == pytest.approx(max(0.1, min(5.0, kept / 3)))
    pings = 0
    now = 0.0
    for _ in range(1000):  # one simulated second, in fake-clock steps
        action, next_check = server.heartbeat_due(now, 5.0, 3.0)
        if action == "ping":
            pings += 1
            server.last_sent = now
        now = max(now + 0.001, next_check)
        if now > 1.0:
            break
    assert pings <= 11


@pytest.mark.parametrize(("server_speaks", "connection_runs"), [(1, 1), (2, 2), (7, PROTOCOL_VERSION)])
def test_the_client_speaks_the_lower_of_the_two_versions(server_speaks: int, connection_runs: int) -> None:
    client = Connection(Role.CLIENT)
    challenge = encode_json_frame(FrameType.CHALLENGE, {"version": server_speaks, "nonce": "n" * 32, "auth": False})
    client.receive_data(challenge, now=0.0)
    hello = client.send_hello("c", None, 0, 65536, 15.0, now=0.0)
    (event,) = Connection(Role.SERVER).receive_data(hello, now=0.0)
    assert isinstance(event, Hello) and event.version == connection_runs == client.version


def test_an_error_may_say_when_its_cause_is_over() -> None:
    server = Connection(Role.SERVER)
    client = Connection(Role.CLIENT)
    (error,) = client.receive_data(server.send_error("id_in_use", "held; retry", retry=True, retry_after=2.34567), 0.0)
    assert error == ErrorReceived("id_in_use", "held; retry", True, 2.346)
    (error,) = Connection(Role.CLIENT).receive_data(Connection(Role.SERVER).send_error("x", "no"), 0.0)
    assert error == ErrorReceived("x", "no", False, None)  # no hint unless given
