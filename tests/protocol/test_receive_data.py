"""``Connection.receive_data`` itself, under hypothesis: whatever arrives,
and however the stream is cut, the same events or one documented error."""

from __future__ import annotations

import json
import typing

from hypothesis import given, settings
from hypothesis import strategies as st

from missioncommander._connection import Connection
from missioncommander._errors import RemoteProtocolError
from missioncommander._events import ErrorCode, Event, Role
from missioncommander._frames import FrameType, encode_ack, encode_frame, encode_json_frame, message_header
from missioncommander._transitions import ConnState

DOCUMENTED = {str(code) for code in ErrorCode}
EVENT_TYPES = typing.get_args(Event)

payloads = st.dictionaries(
    st.text(max_size=6), st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12), max_size=4
)


def opened(role: Role) -> Connection:
    """A connection of ``role`` past its handshake (the peer played by a real Connection)."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.receive_data(server.send_challenge("n" * 32, auth=False), 0.0)
    server.receive_data(client.send_hello("c", None, 0, 65536, 15.0, 0.0), 0.0)
    client.receive_data(server.send_welcome("t", False, 0, 65536, 15.0, 0.0), 0.0)
    assert client.state is server.state is ConnState.OPEN
    return client if role is Role.CLIENT else server


def message(seq: int, subject: str, payload: dict[str, object]) -> bytes:
    body = json.dumps([subject, payload]).encode()
    return message_header(seq, len(body)) + body


@st.composite
def open_streams(draw: st.DrawFn) -> bytes:
    """The bytes of a valid stream to an open connection: messages in
    sequence, acks, pings and pongs, maybe a closing BYE."""
    parts: list[bytes] = []
    seq = 0
    for kind in draw(st.lists(st.sampled_from(["message", "ack", "ping", "pong"]), max_size=12)):
        if kind == "message":
            seq += 1
            parts.append(message(seq, draw(st.text(min_size=1, max_size=8)), draw(payloads)))
        elif kind == "ack":
            parts.append(encode_ack(0))
        else:
            parts.append(encode_frame(FrameType.PING if kind == "ping" else FrameType.PONG))
    if draw(st.booleans()):
        parts.append(encode_json_frame(FrameType.BYE, {"reason": draw(st.text(max_size=10))}))
    return b"".join(parts)


def feed(conn: Connection, pieces: list[bytes]) -> tuple[list[Event], str | None]:
    """The events of ``pieces`` fed one by one, and the error code that ended them (None: none)."""
    events: list[Event] = []
    for piece in pieces:
        try:
            events += conn.receive_data(piece, 1.0)
        except RemoteProtocolError as exc:
            return events, exc.code
    return events, None


@settings(max_examples=300)
@given(role=st.sampled_from(list(Role)), is_open=st.booleans(), data=st.binary(max_size=300))
def test_any_bytes_give_events_or_one_documented_error(role: Role, is_open: bool, data: bytes) -> None:
    conn = opened(role) if is_open else Connection(role)
    events, code = feed(conn, [data])
    assert all(isinstance(e, EVENT_TYPES) for e in events)
    if code is not None:
        assert code in DOCUMENTED
        assert conn.state is ConnState.CLOSED
        assert conn.receive_data(data, 2.0) == []  # and nothing after it counts


@settings(max_examples=200)
@given(role=st.sampled_from(list(Role)), stream=open_streams(), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_a_stream_cut_anywhere_gives_the_same_events(role: Role, stream: bytes, cuts: list[int]) -> None:
    whole = feed(opened(role), [stream])
    assert whole[1] is None
    bounds = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True)]
    assert feed(opened(role), pieces) == whole


@settings(max_examples=50)
@given(role=st.sampled_from(list(Role)), stream=open_streams())
def test_a_stream_split_at_every_byte_boundary_gives_the_same_events(role: Role, stream: bytes) -> None:
    whole = feed(opened(role), [stream])
    for cut in range(len(stream) + 1):
        assert feed(opened(role), [stream[:cut], stream[cut:]]) == whole
    assert feed(opened(role), [stream[i : i + 1] for i in range(len(stream))]) == whole


@settings(max_examples=300)
@given(
    role=st.sampled_from(list(Role)),
    seq=st.integers(0, 3),
    body=st.one_of(
        st.builds(lambda s, p: json.dumps([s, p]).encode(), st.text(max_size=6), payloads),
        st.binary(max_size=40),
    ),
)
def test_the_lone_message_shortcut_reads_exactly_like_the_general_path(role: Role, seq: int, body: bytes) -> None:
    """One whole small MESSAGE in one read takes a short way; the same frame
    behind a partial one (the general path) must give the same event or the
    same error."""
    frame = message_header(seq, len(body)) + body
    shortcut = feed(opened(role), [frame])
    general = feed(opened(role), [frame[:2], frame[2:]])
    assert shortcut == general
