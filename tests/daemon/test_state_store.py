"""The state file: a write that fails part way leaves the old state whole."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from mc_daemon import core as core_module
from mc_daemon.state import SaveError, Sections, StateStore, StateWriter, encode_member


def _disk_fills_mid_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every os.write writes half of its bytes, then fails as a full disk does."""
    real_write = os.write

    def half_then_fail(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_fail)


def test_a_failed_write_leaves_the_previous_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path / "state")
    good = {"clients": {"a": {"settings": {"port": 1}, "desired": True}}, "servers": {}}
    store.save(good)
    before = (store.path).read_bytes()

    _disk_fills_mid_write(monkeypatch)
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


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "[]",
        '{"version": 99}',
        '{"version": 1, "clients": []}',
        "[" * 100_000 + "]" * 100_000,  # json raised RecursionError, and mcd did not start
        '{"version": 1, "clients": {"a": {"settings": {"port": NaN}}}, "servers": {}}',
    ],
)
def test_a_corrupt_file_is_moved_aside(tmp_path: Path, content: str) -> None:
    store = StateStore(tmp_path)
    store.path.write_text(content)
    assert store.load() == {}
    assert not store.path.exists()
    (aside,) = tmp_path.glob("state.json.corrupt-*")
    assert aside.read_text() == content
    (problem,) = store.problems  # for mcd's status, beside the log line
    assert problem.startswith(f"state file {store.path} is corrupt") and problem.endswith(f"{aside} and starting empty")


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


def _members(state: dict[str, dict[str, Any]]) -> Sections:
    return {
        section: {name: encode_member(name, entry) for name, entry in entries.items()}
        for section, entries in state.items()
    }


def test_the_writer_retries_a_failed_save_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path)
    state = {"clients": {"a": {}}, "servers": {}}
    failures = threading.Semaphore(2)  # the first two saves fail, as on a full disk
    real_write = store.write

    def flaky_write(sections: Sections) -> None:
        if failures.acquire(blocking=False):
            raise SaveError("cannot save state: No space left on device")
        real_write(sections)

    monkeypatch.setattr(store, "write", flaky_write)
    monkeypatch.setattr(StateWriter, "RETRY_FIRST", 0.01)
    writer = StateWriter(store, lambda: _members(state))
    try:
        generation = writer.changed()
        assert writer.wait(generation, timeout=5) == "cannot save state: No space left on device"
        assert writer.wait_saved(generation, timeout=10)
        assert StateStore(tmp_path).load()["clients"] == {"a": {}}
        assert writer.error is None and writer.wait(generation, timeout=1) is None
    finally:
        writer.close()


def test_the_writer_coalesces_a_burst_and_writes_the_last_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state: dict[str, dict[str, Any]] = {"clients": {}, "servers": {}}
    writer = StateWriter(store, lambda: _members(state))
    try:
        generation = 0
        for n in range(200):
            state["clients"] = {f"c{n}": {}}
            generation = writer.changed()
        assert writer.wait(generation, timeout=10) is None
        assert StateStore(tmp_path).load()["clients"] == {"c199": {}}
    finally:
        writer.close()
    assert json.loads(store.path.read_text())["clients"] == {"c199": {}}  # whole at rest
    assert not store.log_path.exists()


def test_a_change_appends_one_line_of_what_changed(tmp_path: Path) -> None:
    """A save's cost does not grow with the state: after the first, whole,
    write, each write appends only the entries that changed."""
    store = StateStore(tmp_path)
    state = {"clients": {f"c{n}": {"settings": {"port": n}, "desired": True} for n in range(500)}, "servers": {}}
    store.write(_members(state))
    snapshot = store.path.read_bytes()
    assert not store.log_path.exists()
    state["clients"]["c7"] = {"settings": {"port": 70}, "desired": False}
    state["servers"]["s"] = {"settings": {}, "desired": True}
    del state["clients"]["c9"]
    store.write(_members(state))
    store.write(_members(state))  # nothing changed: nothing written
    assert store.path.read_bytes() == snapshot
    (line,) = store.log_path.read_bytes().splitlines()
    assert len(line) < 200
    assert stat.S_IMODE(store.log_path.stat().st_mode) == 0o600
    assert StateStore(tmp_path).load() == {"version": 1, **state}


def test_the_log_is_folded_into_the_snapshot_when_it_outgrows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StateStore, "COMPACT_AT", 1000)
    store = StateStore(tmp_path)
    state: dict[str, dict[str, Any]] = {"clients": {}, "servers": {}}
    largest = 0
    for n in range(100):
        state["clients"][f"c{n}"] = {"settings": {"port": n}, "desired": True}
        store.write(_members(state))
        size = store.log_path.stat().st_size if store.log_path.exists() else 0
        largest = max(largest, size)
        assert StateStore(tmp_path).load() == {"version": 1, **state}
    assert 1000 < largest < 2000 + len(store.path.read_bytes())


def test_a_change_cut_short_is_dropped_and_the_rest_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path)
    store.write(_members({"clients": {"a": {}}, "servers": {}}))
    store.write(_members({"clients": {"a": {}, "b": {}}, "servers": {}}))
    with store.log_path.open("ab") as f:
        f.write(b'{"gen":99,"del":{},"set":{"clients":{"c":')  # mcd killed mid-append
    reloaded = StateStore(tmp_path)
    assert reloaded.load()["clients"] == {"a": {}, "b": {}}
    assert "cut short" in caplog.text
    assert [("cut short" in p, "dropped" in p) for p in reloaded.problems] == [(True, True)]
    assert not list(tmp_path.glob("*.corrupt-*"))


@pytest.mark.parametrize("bad_line", [b'{"gen":3,"set":{"clients":[]}}', b"[" * 100_000])
def test_a_corrupt_log_is_moved_aside_and_what_came_before_it_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad_line: bytes
) -> None:
    store = StateStore(tmp_path)
    store.write(_members({"clients": {"a": {}}, "servers": {}}))
    store.write(_members({"clients": {"a": {}, "b": {}}, "servers": {}}))
    with store.log_path.open("ab") as f:
        f.write(bad_line + b'\n{"gen":4,"set":{"clients":{"d":{}}}}\n')
    reloaded = StateStore(tmp_path)
    assert reloaded.load()["clients"] == {"a": {}, "b": {}}
    (aside,) = tmp_path.glob("state.log.corrupt-*")
    assert b'"d"' in aside.read_bytes()  # nothing lost: the damaged log is kept
    assert "corrupt at line 2" in caplog.text
    assert reloaded.problems == [
        f"state file {store.log_path} is corrupt at line 2; moved it to {aside} and starting with what was usable"
    ]
    assert json.loads(store.path.read_text())["clients"] == {"a": {}, "b": {}}  # saved whole at once


def test_lines_the_snapshot_already_holds_are_not_applied_again(tmp_path: Path) -> None:
    """mcd stopped between writing the snapshot and removing the log: the
    old lines are older than the snapshot, and a removal stays removed."""
    store = StateStore(tmp_path)
    store.write(_members({"clients": {"a": {}}, "servers": {}}))
    store.write(_members({"clients": {"a": {}, "b": {}}, "servers": {}}))
    old_log = store.log_path.read_bytes()
    store.save_sections(_members({"clients": {"a": {}}, "servers": {}}))  # b removed, log folded in
    store.log_path.write_bytes(old_log)
    assert StateStore(tmp_path).load()["clients"] == {"a": {}}


def test_a_failed_append_is_followed_by_a_whole_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path)
    store.write(_members({"clients": {"a": {}}, "servers": {}}))
    store.write(_members({"clients": {"a": {}, "b": {}}, "servers": {}}))
    _disk_fills_mid_write(monkeypatch)
    with pytest.raises(SaveError, match="No space left on device"):
        store.write(_members({"clients": {"a": {}, "b": {}, "c": {}}, "servers": {}}))
    monkeypatch.undo()
    store.write(_members({"clients": {"a": {}, "b": {}, "c": {}, "d": {}}, "servers": {}}))
    assert not store.log_path.exists()  # the torn line went with the log
    assert StateStore(tmp_path).load()["clients"] == {"a": {}, "b": {}, "c": {}, "d": {}}


def test_a_symlink_in_the_logs_place_is_not_written_through(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.write(_members({"clients": {"a": {}}, "servers": {}}))
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    store.log_path.symlink_to(target)
    with pytest.raises(SaveError):
        store.write(_members({"clients": {"a": {}, "b": {}}, "servers": {}}))
    assert target.read_bytes() == b""


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


def test_a_change_made_while_an_entry_is_built_is_saved_with_the_next_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """The state writer's thread builds an instance's entry while a command
    on another thread changes it (``server.start`` during a restore).  The
    entry built across the change may be written once, but the next save
    (which the change asks for) must show the change: the entry is not kept
    as current.  The interleaving is made here: the change lands between
    the entry's reading of ``desired`` and its keeping."""
    core = core_module.DaemonCore(store=None)
    instance = core.get("server", "s")
    real_encode = core_module.encode_member
    landed: list[bool] = []

    def encode_then_a_command_lands(name: str, entry: dict[str, Any]) -> bytes:
        encoded = real_encode(name, entry)
        if not landed:
            landed.append(True)
            instance.desired = True  # another thread's server.start, meanwhile
        return encoded

    monkeypatch.setattr(core_module, "encode_member", encode_then_a_command_lands)
    assert json.loads(instance.saved_entry().partition(b":")[2])["desired"] is False  # built before it
    assert json.loads(instance.saved_entry().partition(b":")[2])["desired"] is True  # the next save's


def test_the_status_says_how_much_of_the_restore_is_left(tmp_path: Path) -> None:
    """Commands wait for the restore at start: ``daemon.status`` (which does
    not) says why, counting the saved instances still to come."""
    saved = {f"c{i}": {"settings": {"address": "127.0.0.1", "port": 1}, "desired": False} for i in range(3)}
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "servers": {}, "clients": saved}))
    core = core_module.DaemonCore(StateStore(tmp_path))
    seen: list[int | None] = []

    def look() -> bool:  # called before each instance; never asks to stop
        seen.append(core.daemon_status().get("restoring"))
        return False

    try:
        assert core.daemon_status()["restoring"] == 0 and not core.restored.is_set()  # the file not read yet
        core.restore(should_stop=look)
        assert seen == [3, 2, 1]
        assert "restoring" not in core.daemon_status() and core.restored.is_set()
    finally:
        core.shutdown()
    assert "restoring" not in core_module.DaemonCore(store=None).daemon_status()  # nothing to restore


def test_a_command_that_waits_looks_again_without_an_event() -> None:
    """A client's failed attempt changes its count without an event: when
    the statechange to connecting came before the refusal, `client.connect
    wait=attempt` waited out its whole timeout (seen once in CI).  What a
    command waits for is looked at again every RECHECK seconds."""
    core = core_module.DaemonCore(store=None)
    looks: list[int] = []

    def third_look_holds() -> bool:  # no event is ever published here
        looks.append(1)
        return len(looks) >= 3

    assert core.wait_for(third_look_holds, timeout=10.0)
    assert not core.wait_for(lambda: False, timeout=0.3)
