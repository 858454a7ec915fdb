"""Property and fuzz tests: any input either parses or is refused cleanly.

The default run is bounded (a few hundred cases each).  A long campaign:
    MC_FUZZ_EXAMPLES=200000 MC_FUZZ_LIVE=20000 python3 -m pytest tests/security/test_fuzz.py
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Recorder, wait_until
from support.mcd import Mcd

from mc_daemon.core import CoreError, DaemonCore
from mc_daemon.dispatch import Dispatcher
from missioncommander import Client, Message, Server
from missioncommander._connection import Connection
from missioncommander._errors import RemoteProtocolError
from missioncommander._events import Role
from missioncommander._frames import FrameType, encode_frame, encode_json_frame

EXAMPLES = int(os.environ.get("MC_FUZZ_EXAMPLES", "300"))
LIVE_CASES = int(os.environ.get("MC_FUZZ_LIVE", "200"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=15,
)
field_names = st.sampled_from(
    ["version", "client_id", "session", "last_seq", "max_frame_size", "heartbeat_timeout", "nonce", "auth",
     "resumed", "proof", "cnonce", "reason", "code", "message", "retry"]
)  # fmt: skip
frame_bodies = st.dictionaries(field_names, json_values, max_size=8).map(lambda d: json.dumps(d).encode())
frames = st.one_of(
    st.tuples(st.sampled_from(list(FrameType)), frame_bodies).map(lambda t: encode_frame(t[0], t[1])),
    st.tuples(st.sampled_from(list(FrameType)), st.binary(max_size=40)).map(lambda t: encode_frame(t[0], t[1])),
    st.integers(0, 2**40).map(
        lambda seq: encode_frame(FrameType.MESSAGE, struct.pack("!Q", seq & (2**64 - 1)) + b'["s",{}]')
    ),
    st.binary(max_size=30),
)


@fuzz
@given(role=st.sampled_from(list(Role)), stream=st.lists(frames, max_size=8))
def test_the_handshake_state_machine_takes_any_frame_sequence(role: Role, stream: list[bytes]) -> None:
    conn = Connection(role)
    if role is Role.SERVER:
        conn.send_challenge("n" * 32, auth=False)
    for chunk in stream:
        try:
            conn.receive_data(chunk, now=0.0)
        except RemoteProtocolError as exc:
            assert exc.code in {"bad_frame", "frame_too_large", "unexpected_frame"}
            return


@pytest.fixture(scope="module")
def dispatcher() -> Dispatcher:
    return Dispatcher(DaemonCore(store=None), lambda: None, {})


commands = st.sampled_from(["hello", "client.set", "server.send", "subscribe", "client.connect", "nope", "list"])
requests = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"cmd": commands},
        optional={
            "id": json_values,
            "name": json_values,
            "key": json_values,
            "value": json_values,
            "payload": json_values,
            "since": json_values,
            "instances": json_values,
        },
    ),
)


@fuzz
@given(request=requests)
def test_the_control_parser_accepts_or_refuses_any_json(dispatcher: Dispatcher, request: object) -> None:
    try:
        dispatcher.parse(request)
    except CoreError as exc:
        assert exc.code in {"invalid_request", "unknown_command"} and exc.message


def _garbage(rng: random.Random) -> bytes:
    """Random bytes, or something frame-shaped with random contents."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 1:
        return encode_frame(rng.choice(list(FrameType)), rng.randbytes(rng.randrange(0, 60)))
    if kind == 2:
        return struct.pack("!IB", rng.randrange(2**32), rng.randrange(256)) + rng.randbytes(rng.randrange(20))
    fields = {"version": 1, "client_id": rng.choice(["", "x", "fuzz"]), "session": rng.choice([None, "t", 5])}
    return encode_json_frame(FrameType.HELLO, fields) + rng.randbytes(rng.randrange(10))


def test_fuzz_a_live_server(make_client: Callable[..., Client]) -> None:
    rng = random.Random(20261124)
    with Server(interface="127.0.0.1", port=0, handshake_timeout=1.0, max_connection_rate=None) as server:
        good = make_client(server, client_id="good")
        rec = Recorder().attach(good, "message")
        good.connect()
        for _ in range(LIVE_CASES):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                try:
                    sock.sendall(_garbage(rng))
                    sock.shutdown(socket.SHUT_WR)
                    sock.settimeout(5)
                    while sock.recv(65536):
                        pass
                except OSError:
                    pass  # reset by the server: fine
        # It still serves a well-behaved client, and every bad connection is gone.
        server.send("good", Message("still", {}))
        rec.wait_count("message", 1)
        assert good.connected
        wait_until(lambda: len(server._links) == 1, what="bad connections closed")


def test_fuzz_a_live_daemon() -> None:
    rng = random.Random(42)
    daemon = Mcd().start()
    try:
        for _ in range(LIVE_CASES // 2):
            line = rng.choice(
                [
                    rng.randbytes(rng.randrange(1, 200)) + b"\n",
                    json.dumps({"cmd": rng.choice(["client.set", "x", "subscribe"]), "v": rng.random()}).encode()
                    + b"\n",
                    json.dumps([rng.random()] * rng.randrange(5)).encode() + b"\n",
                ]
            )
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(daemon.socket))
                try:
                    sock.sendall(line)
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(65536):
                        pass
                except OSError:
                    pass
        assert daemon.request("hello")["api_version"] == 1
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert "Traceback" not in daemon.log()
    finally:
        daemon.close()
