"""The state file: a write that fails part way leaves the old state whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mc_daemon.state import StateStore


def test_a_failed_write_leaves_the_previous_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path / "state")
    good = {"clients": {"a": {"settings": {"port": 1}, "desired": True}}, "servers": {}}
    store.save(good)
    before = (store.path).read_bytes()

    real_write = os.write

    def half_then_fail(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_fail)
    store.save({"clients": {"b": {"settings": {}, "desired": False}}, "servers": {}})
    monkeypatch.undo()

    assert store.path.read_bytes() == before
    assert store.load()["clients"] == good["clients"]
    assert [p.name for p in store.directory.iterdir()] == ["state.json"]  # no temporary file left


def test_a_failed_rename_leaves_the_previous_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path)
    store.save({"clients": {}, "servers": {"s": {"settings": {"port": 5}, "desired": True}}})
    monkeypatch.setattr(os, "replace", lambda *_a: (_ for _ in ()).throw(OSError(5, "I/O error")))
    store.save({"clients": {}, "servers": {}})
    monkeypatch.undo()
    assert json.loads(store.path.read_text())["servers"]["s"]["settings"]["port"] == 5


@pytest.mark.parametrize("content", ["", "{", "[]", '{"version": 99}', '{"version": 1, "clients": []}'])
def test_a_corrupt_file_is_moved_aside(tmp_path: Path, content: str) -> None:
    store = StateStore(tmp_path)
    store.path.write_text(content)
    assert store.load() == {}
    assert not store.path.exists()
    (aside,) = tmp_path.glob("state.json.corrupt-*")
    assert aside.read_text() == content
