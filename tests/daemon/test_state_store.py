"""The state file: a write that fails part way leaves the old state whole."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from mc_daemon.state import SaveError, StateStore, StateWriter


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
    with pytest.raises(SaveError, match="No space left on device"):
        store.save({"clients": {"b": {"settings": {}, "desired": False}}, "servers": {}})
    monkeypatch.undo()

    assert store.path.read_bytes() == before
    assert store.load()["clients"] == good["clients"]
    assert [p.name for p in store.directory.iterdir()] == ["state.json"]  # no temporary file left


def test_a_failed_rename_leaves_the_previous_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path)
    store.save({"clients": {}, "servers": {"s": {"settings": {"port": 5}, "desired": True}}})
    monkeypatch.setattr(os, "replace", lambda *_a: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(SaveError, match="I/O error"):
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


def test_a_file_that_is_not_utf8_is_moved_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_bytes(b'{"version": 1, "clients": {"\xff": {}}}')
    assert store.load() == {}
    (aside,) = tmp_path.glob("state.json.corrupt-*")
    assert aside.read_bytes().startswith(b'{"version"')


def test_a_directory_in_place_of_the_file_is_moved_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.mkdir()
    assert store.load() == {}
    assert [p.is_dir() for p in tmp_path.glob("state.json.corrupt-*")] == [True]
    store.save({"clients": {}, "servers": {}})
    assert store.path.is_file()


def test_a_symlink_in_place_of_the_file_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text('{"version": 1, "clients": {"planted": {"settings": {}}}, "servers": {}}')
    store = StateStore(tmp_path / "state")
    store.directory.mkdir()
    store.path.symlink_to(target)
    assert store.load() == {}
    (aside,) = store.directory.glob("state.json.corrupt-*")
    assert aside.is_symlink()
    store.save({"clients": {}, "servers": {}})
    assert not store.path.is_symlink()
    assert "planted" in target.read_text()  # never written through


def test_a_dangling_symlink_is_moved_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.symlink_to(tmp_path / "missing")
    assert store.load() == {}
    assert not store.path.is_symlink()


def test_an_unreadable_file_is_moved_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore(tmp_path)
    store.path.write_text('{"version": 1}')
    real_open = os.open

    def refuse(path: object, *args: object, **kwargs: object) -> int:
        if Path(str(path)) == store.path:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    assert store.load() == {}
    monkeypatch.undo()
    assert "cannot be read (Permission denied)" in caplog.text
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


def test_bad_entries_are_dropped_and_the_rest_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path)
    original = {
        "version": 1,
        "clients": {"good": {"settings": {"port": 1}, "desired": True}, "bad": [], "worse": {"settings": 3}},
        "servers": {"odd": {"desired": "yes"}, "fine": {}},
    }
    store.path.write_text(json.dumps(original))
    loaded = store.load()
    assert loaded["clients"] == {"good": {"settings": {"port": 1}, "desired": True}}
    assert loaded["servers"] == {"fine": {}}
    assert "clients.bad is not an object" in caplog.text and "servers.odd.desired" in caplog.text
    (aside,) = tmp_path.glob("state.json.corrupt-*")
    assert json.loads(aside.read_text()) == original
    assert json.loads(store.path.read_text())["clients"] == loaded["clients"]  # the usable part saved at once


def test_a_state_directory_others_may_write_to_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    StateStore(directory).save({"clients": {}, "servers": {}})
    assert stat.S_IMODE(os.stat(directory).st_mode) & 0o022 == 0
    assert stat.S_IMODE(os.stat(directory / "state.json").st_mode) == 0o600


def test_the_writer_retries_a_failed_save_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path)
    state = {"clients": {"a": {}}, "servers": {}}
    failures = threading.Semaphore(2)  # the first two saves fail, as on a full disk
    real_save = store.save

    def flaky_save(data: dict[str, object]) -> None:
        if failures.acquire(blocking=False):
            raise SaveError("cannot save state: No space left on device")
        real_save(data)

    monkeypatch.setattr(store, "save", flaky_save)
    monkeypatch.setattr(StateWriter, "RETRY_FIRST", 0.01)
    writer = StateWriter(store, lambda: state)
    try:
        generation = writer.changed()
        assert writer.wait(generation, timeout=5) == "cannot save state: No space left on device"
        assert writer.wait_saved(generation, timeout=10)
        assert json.loads(store.path.read_text())["clients"] == {"a": {}}
        assert writer.error is None and writer.wait(generation, timeout=1) is None
    finally:
        writer.close()


def test_the_writer_coalesces_a_burst_and_writes_the_last_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state: dict[str, object] = {"clients": {}, "servers": {}}
    writer = StateWriter(store, lambda: dict(state))
    try:
        generation = 0
        for n in range(200):
            state["clients"] = {f"c{n}": {}}
            generation = writer.changed()
        assert writer.wait(generation, timeout=10) is None
        assert json.loads(store.path.read_text())["clients"] == {"c199": {}}
    finally:
        writer.close()


def test_the_state_assembled_from_encoded_entries_is_the_state_encoded_whole() -> None:
    from mc_daemon.state import FORMAT_VERSION, encode_entry, encode_member, encode_state

    data = {
        "clients": {"b": {"settings": {"port": 2, "address": "x"}, "desired": True}, "a": {"settings": {}}},
        "servers": {"s\u00e9": {"settings": {"auth_tokens": {"c": "t"}}, "desired": False}},
    }
    sections = {key: {name: encode_member(name, entry) for name, entry in data[key].items()} for key in data}
    assembled = encode_state(sections)
    assert assembled == encode_entry({"version": FORMAT_VERSION, **data})
    assert json.loads(assembled) == {"version": FORMAT_VERSION, **data}
    empty = encode_state({"clients": {}, "servers": {}})
    assert json.loads(empty) == {"version": FORMAT_VERSION, "clients": {}, "servers": {}}
