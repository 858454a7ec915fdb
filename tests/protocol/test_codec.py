"""The frame codec, with bytes alone."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from missioncommander import FrozenDict, FrozenList, Message
from missioncommander._errors import RemoteProtocolError
from missioncommander._events import (
    AckReceived,
    ByeReceived,
    Challenge,
    ErrorReceived,
    Hello,
    MessageReceived,
    PingReceived,
    ShutdownReceived,
    Welcome,
)
from missioncommander._frames import (
    FrameDecoder,
    FrameType,
    encode_ack,
    encode_frame,
    encode_json_frame,
    message_header,
    parse_frame,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
payloads = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
frame_args = st.tuples(st.integers(0, 2**64 - 1), st.text(min_size=1, max_size=10), payloads)


def message_frame(seq: int, subject: str, payload: dict[str, object]) -> bytes:
    body = json.dumps([subject, payload]).encode()
    return message_header(seq, len(body)) + body


@given(
    frames=st.lists(frame_args, max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_frames_survive_any_split(frames: list[tuple[int, str, dict[str, object]]], cuts: list[int]) -> None:
    stream = b"".join(message_frame(*f) for f in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    decoder = FrameDecoder()
    got = []
    start = 0
    for point in [*points, len(stream)]:
        for ftype, body in decoder.feed(stream[start:point]):
            got.append(parse_frame(ftype, body))
        start = point
    assert [(e.seq, e.subject, e.payload) for e in got if isinstance(e, MessageReceived)] == frames
    assert decoder.buffered == 0


def feed_through_a_reused_buffer(
    decoder: FrameDecoder, frames: list[tuple[int, str, dict[str, object]]], cuts: list[int]
) -> list[tuple[int, str, dict[str, object]]]:
    """Feed the frames as the I/O loop does: views of one buffer, cut at
    ``cuts`` and overwritten after each feed, so a frame that spans feeds
    must have been copied.  Returns (seq, subject, payload) of what came out."""
    stream = b"".join(message_frame(*f) for f in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    buffer = bytearray(len(stream))
    got = []
    start = 0
    for point in [*points, len(stream)]:
        size = point - start
        buffer[:size] = stream[start:point]
        for ftype, body in decoder.feed(memoryview(buffer)[:size]):
            got.append(parse_frame(ftype, body))
        buffer[:] = b"\xff" * len(buffer)
        start = point
    return [(e.seq, e.subject, dict(e.payload)) for e in got if isinstance(e, MessageReceived)]


@settings(max_examples=200)
@given(frames=st.lists(frame_args, min_size=1, max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_frames_survive_any_split_through_a_reused_read_buffer(
    frames: list[tuple[int, str, dict[str, object]]], cuts: list[int]
) -> None:
    decoder = FrameDecoder()
    assert feed_through_a_reused_buffer(decoder, frames, cuts) == frames
    assert decoder.buffered == 0


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 10, 70_000, 300_000]), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
)
def test_large_frames_are_collected_whole_across_any_split(sizes: list[int], cuts: list[int]) -> None:
    # Frames of 64 KiB and more that arrive in pieces are collected piece by
    # piece and joined once; small ones around them keep their own path.
    frames: list[tuple[int, str, dict[str, object]]] = [
        (i + 1, "big", {"pad": chr(97 + i) * size, "n": i}) for i, size in enumerate(sizes)
    ]
    decoder = FrameDecoder(max_frame_size=10**7)
    assert feed_through_a_reused_buffer(decoder, frames, cuts) == frames
    assert decoder.buffered == 0


def test_a_large_received_message_encodes_to_the_bytes_it_arrived_as() -> None:
    frame = message_frame(9, "big", {"pad": "y" * 100_000})
    ((ftype, body),) = list(FrameDecoder().feed(frame))
    event = parse_frame(ftype, body)
    assert isinstance(event, MessageReceived)
    message = Message._from_wire(event.subject, event.payload, event.encoded)
    assert message.encode() == frame[13:]
    assert type(message.encode()) is bytes


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    decoder = FrameDecoder(max_frame_size=4096)
    try:
        for ftype, body in decoder.feed(data):
            parse_frame(ftype, body)
    except RemoteProtocolError as exc:
        assert exc.code in {"bad_frame", "frame_too_large"}


def test_oversized_length_is_refused_before_buffering() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    with pytest.raises(RemoteProtocolError) as info:
        list(decoder.feed(struct.pack("!IB", 1025, FrameType.MESSAGE)))
    assert info.value.code == "frame_too_large"


def test_zero_length_frame_is_bad() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        list(FrameDecoder().feed(b"\0\0\0\0"))
    assert info.value.code == "bad_frame"


def test_truncated_frame_waits_for_more() -> None:
    frame = encode_ack(7)
    decoder = FrameDecoder()
    assert list(decoder.feed(frame[:-1])) == []
    assert decoder.buffered == len(frame) - 1
    assert [parse_frame(*f) for f in decoder.feed(frame[-1:])] == [AckReceived(7)]


@pytest.mark.parametrize(
    ("ftype", "body"),
    [
        (FrameType.MESSAGE, b"\0" * 7),  # shorter than its sequence number
        (FrameType.MESSAGE, b"\0" * 8 + b"\xff\xfe"),  # invalid UTF-8
        (FrameType.MESSAGE, b"\0" * 8 + b"[1,"),  # invalid JSON
        (FrameType.MESSAGE, b"\0" * 8 + b'{"a":1}'),  # not [subject, payload]
        (FrameType.MESSAGE, b"\0" * 8 + b'["", {}]'),  # empty subject
        (FrameType.MESSAGE, b"\0" * 8 + b'["s", []]'),  # payload not an object
        (FrameType.MESSAGE, b"\0" * 8 + b'["s", {"x": NaN}]'),  # not JSON
        (FrameType.MESSAGE, b"\0" * 8 + b"[" * 100_000),  # nesting bomb
        (FrameType.MESSAGE, b"\0" * 8 + b'["s", {}] x'),  # trailing garbage
        (FrameType.MESSAGE, b"\0" * 8 + b'["s", {"x": NaN}, 1]'),  # NaN, found on the fast path
        # request ids: positive, below 2**53 (a peer's 4,000-digit id was carried around)
        (FrameType.MESSAGE, b"\0" * 8 + b'["s", {}, {"reply": 0}]'),
        (FrameType.MESSAGE, b"\0" * 8 + b'["s", {}, {"request": 9007199254740992}]'),
        (
            FrameType.MESSAGE,
            b"\0" * 8 + b'["s", {}, {"reply": 9007199254740992, "error": {"code": "c", "type": "t", "message": "m"}}]',
        ),
        # JSON numbers Python would read as infinity, which cannot be sent on
        (FrameType.MESSAGE, b"\0" * 8 + b'["s", {"x": 1e400}]'),  # the fast path
        (FrameType.MESSAGE, b"\0" * 8 + b'["s", {"x": [-1e400]}]'),  # the full decoder
        (FrameType.ERROR, b'{"code": "x", "message": "m", "retry": true, "retry_after": 1e999}'),
        (FrameType.MESSAGE, b"\0" * 8 + b"null"),
        (FrameType.ACK, b"\0" * 4),
        (FrameType.PING, b"x"),
        (FrameType.HELLO, b"[]"),
        (FrameType.HELLO, b'{"version": 1}'),
        (
            FrameType.HELLO,
            b'{"version": true, "client_id": "a", "last_seq": 0, "max_frame_size": 9999, "heartbeat_timeout": 1}',
        ),
        (
            FrameType.HELLO,
            b'{"version": 1, "client_id": "", "last_seq": 0, "max_frame_size": 9999, "heartbeat_timeout": 1}',
        ),
        (
            FrameType.HELLO,
            b'{"version": 1, "client_id": "a", "last_seq": -1, "max_frame_size": 9999, "heartbeat_timeout": 1}',
        ),
        (  # '*' is every client where a server sends: no client's id
            FrameType.HELLO,
            b'{"version": 1, "client_id": "*", "last_seq": 0, "max_frame_size": 9999, "heartbeat_timeout": 1}',
        ),
        *(  # ids a client's setting refuses: a HELLO's too (logs, tables, Redis keys)
            (
                FrameType.HELLO,
                b'{"version": 2, "client_id": ' + bad_id + b', "last_seq": 0, "max_frame_size": 9999,'
                b' "heartbeat_timeout": 1}',
            )
            for bad_id in (b'"   "', b'"a\\u001b[2Jb"', b'"a\\nb"', b'"a\\u009bb"', b'"' + b"x" * 1025 + b'"')
        ),
        (FrameType.ERROR, b'{"code": 1}'),
        (FrameType.ERROR, b'{"code": "x", "message": "m", "retry": true, "retry_after": -1}'),
        (FrameType.ERROR, b'{"code": "x", "message": "m", "retry": true, "retry_after": "soon"}'),
        (FrameType.ERROR, b'{"code": "x", "message": "m", "retry": true, "retry_after": 1e999}'),
        (FrameType.CHALLENGE, b'{"version": 1, "nonce": "short", "auth": false}'),
        (FrameType.CHALLENGE, b'{"version": 1, "nonce": "nnnnnnnnnnnnnnnnnnnn", "auth": 0}'),
        (99, b""),
    ],
)
def test_bad_bodies_are_bad_frames(ftype: int, body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_frame(ftype, body)
    assert info.value.code == "bad_frame"


def assert_deeply_frozen(value: object) -> None:
    if isinstance(value, dict):
        assert type(value) is FrozenDict
        with pytest.raises(TypeError, match="read-only"):
            value["z"] = 1
        for item in value.values():
            assert_deeply_frozen(item)
    elif isinstance(value, list):
        assert type(value) is FrozenList
        with pytest.raises(TypeError, match="read-only"):
            value.append(3)
        for item in value:
            assert_deeply_frozen(item)


@pytest.mark.parametrize(
    "body",
    [
        b'["s",{"a":1,"c":"x","d":null,"e":1.5,"f":true}]',  # flat: the one-pass path
        b'["s",{"a":{"b":1},"c":"x"}]',  # an object inside, no array: the one-pass path
        b' [ "s" , {"a" : {"b": 1}, "c": "x"} ] ',  # whitespace around: the full decoder
        b'["s",{"a":{"b":[1,{"d":[2]}]},"c":"["}]',  # arrays inside: decoded, then frozen
    ],
)
def test_received_messages_are_frozen_whatever_the_path(body: bytes) -> None:
    event = parse_frame(FrameType.MESSAGE, b"\0" * 8 + body)
    assert isinstance(event, MessageReceived)
    message = Message._from_wire(event.subject, event.payload, event.encoded)
    subject, payload = json.loads(body)
    assert message == Message(subject, payload) and message.subject == subject
    assert_deeply_frozen(message.payload)
    assert message.payload is event.payload  # frozen as it was decoded, not copied again


@given(payloads)
def test_any_received_payload_is_frozen_and_equal_to_what_was_sent(payload: dict[str, object]) -> None:
    sent = Message("s", payload)
    event = parse_frame(FrameType.MESSAGE, b"\0" * 8 + sent.encode())
    assert isinstance(event, MessageReceived)
    received = Message._from_wire(event.subject, event.payload, event.encoded)
    assert received == sent
    assert_deeply_frozen(received.payload)


def test_every_frame_type_round_trips() -> None:
    hello = {
        "version": 1,
        "client_id": "c",
        "session": None,
        "last_seq": 3,
        "max_frame_size": 4096,
        "heartbeat_timeout": 2.5,
    }
    welcome = {
        "version": 1,
        "session": "t",
        "resumed": True,
        "last_seq": 1,
        "max_frame_size": 5000,
        "heartbeat_timeout": 1,
    }
    cases = [
        (encode_json_frame(FrameType.HELLO, hello), Hello(1, "c", None, 3, 4096, 2.5)),
        (encode_json_frame(FrameType.WELCOME, welcome), Welcome(1, "t", True, 1, 5000, 1.0)),
        (encode_frame(FrameType.PING), PingReceived()),
        (
            encode_json_frame(FrameType.CHALLENGE, {"version": 1, "nonce": "n" * 32, "auth": True}),
            Challenge(1, "n" * 32, True),
        ),
        (encode_json_frame(FrameType.SHUTDOWN, {"reason": "r"}), ShutdownReceived("r")),
        (encode_json_frame(FrameType.BYE, {"reason": "b"}), ByeReceived("b")),
        (
            encode_json_frame(FrameType.ERROR, {"code": "x", "message": "m", "retry": True}),
            ErrorReceived("x", "m", True),
        ),
        (
            encode_json_frame(FrameType.ERROR, {"code": "x", "message": "m", "retry": True, "retry_after": 4.25}),
            ErrorReceived("x", "m", True, 4.25),
        ),
        # What the peer wrote for people arrives with its control characters
        # escaped: it goes into logs and last_close_reason as text, never as
        # a terminal escape or a line break (é and the like stay as they are).
        (
            encode_json_frame(FrameType.ERROR, {"code": "x\x1b", "message": "é\x1b[2J\nfake\x9b", "retry": False}),
            ErrorReceived("x\\x1b", "é\\x1b[2J\\nfake\\x9b", False),
        ),
        (encode_json_frame(FrameType.BYE, {"reason": "a\rb"}), ByeReceived("a\\rb")),
        # And the bidi controls, which would reorder the rest of a log line.
        (encode_json_frame(FrameType.BYE, {"reason": "evil\u202etxt.exe"}), ByeReceived("evil\\u202etxt.exe")),
        (encode_json_frame(FrameType.SHUTDOWN, {"reason": "\x07"}), ShutdownReceived("\\x07")),
    ]
    for frame, expected in cases:
        ((ftype, body),) = list(FrameDecoder().feed(frame))
        assert parse_frame(ftype, body) == expected


@given(st.sampled_from(["request", "reply"]), st.integers(min_value=1, max_value=2**53 - 1))
def test_a_one_key_meta_is_the_compact_json_of_the_general_one(key: str, value: int) -> None:
    from missioncommander._frames import message_event, meta_suffix, with_id, with_meta

    body = Message("ask", {"n": [1, 2], "text": "é"}).encode()
    assert with_id(body, key, value) == with_meta(body, {key: value})
    assert with_id(body, key, value).endswith(meta_suffix(key, value))
    assert message_event(bytes(8) + with_id(body, key, value)).meta == {key: value}
