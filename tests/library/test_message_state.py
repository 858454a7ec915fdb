"""Message, ClientState and ClientStateTransition."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from missioncommander import ClientState, ClientStateTransition, Message, _message
from missioncommander._frames import message_event


def test_message_payload_defaults_to_empty_and_body_aliases_payload() -> None:
    m = Message("ping")
    assert m.payload == {} and m.body is m.payload
    assert repr(Message("echo", {"a": 1})) == "Message(subject='echo', payload={'a': 1})"


def test_message_is_read_only_deeply() -> None:
    m = Message("s", {"a": {"b": [1, {"c": 2}]}})
    with pytest.raises(AttributeError):
        m.subject = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del m.payload  # type: ignore[misc]
    for mutate in (
        lambda: m.payload.__setitem__("a", 1),
        lambda: m.payload.update({"x": 1}),
        lambda: m.payload.pop("a"),
        lambda: m.payload["a"].__setitem__("z", 1),
        lambda: m.payload["a"]["b"].append(3),
        lambda: m.payload["a"]["b"][1].clear(),  # noqa: PLW0108
        lambda: m.payload["a"]["b"].__setitem__(0, 9),
    ):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    assert m.payload == {"a": {"b": [1, {"c": 2}]}}


def test_a_frozen_payload_is_shared_not_copied() -> None:
    """Sending on what was received (echo, forwarding) costs no copy: the
    payload is read-only already."""
    first = Message("s", {"a": [1, {"b": 2}]})
    again = Message("t", first.payload)
    assert again.payload is first.payload
    assert Message("u", {"inner": first.payload["a"]}).payload["inner"] is first.payload["a"]


def test_message_copies_the_callers_dict() -> None:
    payload = {"list": [1], "d": {"k": "v"}}
    m = Message("s", payload)
    payload["list"].append(2)
    payload["d"]["k"] = "changed"
    payload["new"] = True
    assert m.payload == {"list": [1], "d": {"k": "v"}}
    flat = {"n": 1, "s": "text", "none": None}  # plain leaves only: the fast copy
    m = Message("s", flat)
    flat["n"] = 2
    flat["added"] = True
    assert m.payload == {"n": 1, "s": "text", "none": None}


@pytest.mark.parametrize(
    ("subject", "payload", "error"),
    [
        (1, None, TypeError),
        (None, None, TypeError),
        ("", None, ValueError),
        ("s", [1, 2], TypeError),
        ("s", "text", TypeError),
        ("s", {"x": {1, 2}}, TypeError),
        ("s", {"x": object()}, TypeError),
        ("s", {1: "non-str key"}, TypeError),
        ("s", {"x": float("nan")}, ValueError),
        ("s", {"x": [float("inf")]}, ValueError),
        ("s", {"x": "caf\udce9"}, ValueError),  # a lone surrogate (os.fsdecode of Latin-1 bytes)
        ("s", {"caf\udce9": 1}, ValueError),
        ("s", {"x": {"y": ["\ud800"]}}, ValueError),
        ("caf\udce9", None, ValueError),
    ],
)
def test_message_validates_at_construction(subject: object, payload: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        Message(subject, payload)  # type: ignore[arg-type]


def test_a_payload_nested_too_deeply_is_a_value_error_and_one_a_peer_sent_goes_on() -> None:
    """RecursionError escaped Message() (mcd answered "internal error", with
    a traceback in its log): too deep is bad input, as the rest is. A peer's
    payload as deep as the decoder takes is shared when sent on, not copied."""
    deep: dict[str, object] = {}
    for _ in range(5_000):
        deep = {"a": deep}
    with pytest.raises(ValueError, match="nested too deeply"):
        Message("s", deep)
    with pytest.raises(ValueError, match="nested too deeply"):
        Message("s", {"a": [deep]})  # through the thorough path too
    shallow: dict[str, object] = {"leaf": 1}
    for _ in range(100):
        shallow = {"a": [shallow]}
    assert Message("s", shallow).payload["a"][0]["a"][0] is not None
    body = b"\0" * 8 + b'["s",' + b'{"a":' * 900 + b"1" + b"}" * 900 + b"]"
    received = message_event(body)
    assert Message("t", received.payload).encode() == b'["t",' + body[13:]


def test_message_equality_encoding_and_pickle() -> None:
    a = Message("s", {"x": [1, 2], "y": None})
    assert a == Message("s", {"y": None, "x": (1, 2)})
    assert a != Message("t", {"x": [1, 2], "y": None})
    assert a != "s"
    assert a.encode() == b'["s",{"x":[1,2],"y":null}]'
    assert Message("é", {"k": "ü"}).encode() == '["é",{"k":"ü"}]'.encode()
    assert pickle.loads(pickle.dumps(a)) == a
    assert copy.deepcopy(a) == a
    with pytest.raises(TypeError):
        hash(a)


def test_client_state_values_are_the_contract() -> None:
    expected = {
        "STATE_UNDEFINED": 0, "STATE_NEEDS_INIT": 1, "STATE_OK": 2, "STATE_RUNNING": 4,
        "STATE_NOT_CONNECTED": 8, "STATE_CONNECTING": 16, "STATE_CONNECTED": 32, "STATE_CONNECT_FAILED": 64,
        "STATE_RECONNECTING": 128, "STATE_RECONNECT_FAILED": 256, "STATE_DISCONNECTING": 512,
        "STATE_DISCONNECT_FAILED": 1024, "STATE_UNEXP_CLOSED": 2048,
    }  # fmt: skip
    assert {name: m.value for name, m in ClientState.__members__.items()} == expected


def test_client_state_get_name() -> None:
    s = ClientState
    assert s.get_name(s.STATE_OK | s.STATE_RUNNING | s.STATE_CONNECTED) == "STATE_OK | STATE_RUNNING | STATE_CONNECTED"
    assert s.get_name(0) == "STATE_UNDEFINED"
    assert s.get_name(s.STATE_UNEXP_CLOSED) == "STATE_UNEXP_CLOSED"
    assert s.get_name(2 | 8) == "STATE_OK | STATE_NOT_CONNECTED"


def test_a_state_names_itself() -> None:
    """`client.state.get_name()` is what people try first: it raised
    TypeError (a static method wants the state as its argument)."""
    state = ClientState.STATE_OK | ClientState.STATE_RUNNING | ClientState.STATE_CONNECTED
    assert state.get_name() == "STATE_OK | STATE_RUNNING | STATE_CONNECTED"
    assert state.get_name(ClientState.STATE_OK) == "STATE_OK"  # given a state, it names that one, as before
    assert ClientState.STATE_UNDEFINED.get_name() == "STATE_UNDEFINED"
    assert "get_name" not in ClientState.__members__


def test_a_state_prints_its_names_and_stays_a_number_where_one_is_asked() -> None:
    """``print(client.state)`` showed ``38`` (an IntFlag's str is its number
    since Python 3.11): a person printing it wants the names."""
    state = ClientState.STATE_OK | ClientState.STATE_RUNNING | ClientState.STATE_CONNECTED
    logged = "%s" % state  # noqa: UP031  # as logging formats its arguments
    assert str(state) == f"{state}" == logged == "STATE_OK | STATE_RUNNING | STATE_CONNECTED"
    assert str(ClientState(0)) == "STATE_UNDEFINED"
    assert (int(state), f"{state:d}", json.dumps({"state": state})) == (38, "38", '{"state": 38}')


def test_transition_is_immutable_and_stamped() -> None:
    t = ClientStateTransition(ClientState.STATE_OK, ClientState.STATE_CONNECTED)
    assert t.old_state is ClientState.STATE_OK and t.new_state is ClientState.STATE_CONNECTED
    assert isinstance(t.timestamp, float) and t.timestamp > 1e9
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.new_state = ClientState.STATE_OK  # type: ignore[misc]
    assert "STATE_OK -> STATE_CONNECTED" in repr(t)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)


@given(payload=st.dictionaries(st.text(max_size=8), json_values, max_size=5), subject=st.text(min_size=1))
def test_both_encoders_write_json_that_reads_back_the_same(payload: dict[str, object], subject: str) -> None:
    """With the ``fast`` extra (orjson) or without it, the bytes on the wire
    decode to the same message; integers beyond 64 bits fall back to the
    standard library, which writes them exactly."""
    try:
        stdlib = _message.encode_json([subject, payload])
    except UnicodeEncodeError:
        return  # a lone surrogate: not UTF-8 (Message refuses it at construction)
    assert json.loads(stdlib) == [subject, payload]
    fast = _message._encode([subject, payload])
    assert json.loads(fast) == [subject, payload]


def test_the_fast_encoder_is_used_when_installed_and_steps_aside_for_big_integers() -> None:
    pytest.importorskip("orjson")
    assert _message._fast_dumps is not None
    assert _message._encode(["s", {"x": 1.5e-7}]) == b'["s",{"x":1.5e-7}]'  # orjson's float style
    big = 2**70
    assert json.loads(Message("s", {"n": big}).encode()) == ["s", {"n": big}]
