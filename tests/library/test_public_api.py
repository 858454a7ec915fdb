"""The public names: what is exported, and what is on its way out."""

from __future__ import annotations

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
