"""The public names: what is exported, and what is on its way out."""

from __future__ import annotations

import pickle

import pytest

import missioncommander


def test_every_exported_name_exists_and_the_frozen_payload_types_are_public() -> None:
    for name in missioncommander.__all__:
        assert getattr(missioncommander, name) is not None
    assert {"FrozenDict", "FrozenList"} <= set(missioncommander.__all__)
    message = missioncommander.Message("s", {"a": {"b": [1]}})
    assert isinstance(message.payload, missioncommander.FrozenDict)


def test_connection_lost_is_deprecated_but_still_importable() -> None:
    assert "ConnectionLost" not in missioncommander.__all__
    with pytest.warns(DeprecationWarning, match="never raised"):
        from missioncommander import ConnectionLost
    assert issubclass(ConnectionLost, missioncommander.MissionCommanderError)
    with pytest.raises(AttributeError):
        missioncommander.NoSuchThing  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "error",
    [
        missioncommander.RemoteError("KeyError", "'no such widget'", "Traceback ..."),
        missioncommander.NoResponder(),
        missioncommander.ConnectionRefusedByServer("id_in_use", "client id 'a' is in use"),
        missioncommander.RemoteProtocolError("bad_frame", "MESSAGE body is not UTF-8 JSON"),
        missioncommander.LocalProtocolError("frame_too_large", "too large"),
        missioncommander.RequestTimeout("no reply within 1 s"),
        missioncommander.UnknownClient("no client 'z' is connected"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_survive_pickling_as_a_process_pool_hands_them_back(error: Exception) -> None:
    error.add_note("raised in a worker")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error) and copy.args == error.args
    assert vars(copy) == vars(error)  # code, reason, type_name, message, remote_traceback, the note
