"""The daemon's saved state: a snapshot and a log of the changes since.

``state.json`` holds every instance as it was at some generation; each save
after it appends one line to ``state.log`` with what changed (the entries
set and the names removed), so a save costs the same with one instance as
with a thousand.  When the log outgrows the snapshot, and when the daemon
stops, the snapshot is written whole and the log starts again.

What this module promises, whatever it finds on disk:

* ``load`` never raises for a bad file.  Anything it cannot use whole (bad
  encoding, bad JSON, the wrong shape, wrong types inside, a directory or a
  symlink where the file should be, no permission) is moved aside as
  ``state.json.corrupt-<time>`` or ``state.log.corrupt-<time>`` (so nothing
  is lost) with one log line, and the daemon starts with whatever part of
  it was usable.  A last log line cut short (mcd killed while appending it)
  is dropped with a warning: its change was never reported saved.  What
  was found is also kept in ``StateStore.problems``, for the daemon's
  status to tell whoever asks (a log line alone goes unseen).
* Nothing is written through a link someone planted: the snapshot's
  temporary file is created with ``O_EXCL`` (``tempfile.mkstemp``) and the
  log opened with ``O_NOFOLLOW``, mode 0600, in a directory that only this
  user can write to.  A failed save raises ``SaveError``, so the caller can
  tell whoever changed something; the save after a failed append writes
  the snapshot whole, so a torn line is never followed by good ones.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mc_control.codes import strict_json

from .files import secure_directory

log = logging.getLogger("mcd.state")

FORMAT_VERSION = 1
_SECTIONS = ("clients", "servers")

#: Encoded members (``encode_member``) by section, then by name.
Sections = dict[str, dict[str, bytes]]


class SaveError(Exception):
    """The state could not be written; the previous file is untouched."""


class StateStore:
    """``state.json`` and ``state.log`` in ``directory`` (see the module's docstring).

    ``save`` writes the snapshot whole: a temporary file, fsynced, renamed
    over the old one, the directory fsynced, so a crash at any point leaves
    either the old or the new file, never a torn one; then the log is
    removed.  ``write`` appends the difference from the last write to the
    log and fsyncs it, or saves whole when the log has grown past the
    snapshot (or nothing was written yet by this store).
    """

    #: The log is folded into the snapshot once it is larger than this and
    #: than the snapshot itself: a few hundred changes of a large state.
    COMPACT_AT = 64 * 1024

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"
        self.log_path = directory / "state.log"
        self._generation = 0  # of the newest change on disk
        self._written: Sections | None = None  # what the files hold now, when this store wrote it
        self._snapshot_size = 0
        self._log_size = 0
        #: What ``load`` found wrong and did about it, one sentence each.
        self.problems: list[str] = []

    # -- loading ---------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """The saved state, or as much of it as is usable (see the module's docstring)."""
        data = self._load_snapshot()
        snapshot_generation = data.get("generation", 0)
        if not isinstance(snapshot_generation, int):
            snapshot_generation = 0
        self._generation = max(self._generation, snapshot_generation)
        log_damaged = not self._replay_log(data, snapshot_generation)
        if not data:
            return {}
        usable, problems = _usable(data)
        if problems:
            self._move_aside(self.path, "has corrupt entries: " + "; ".join(problems[:5]), keep_usable=True)
        if problems or log_damaged:
            try:
                self.save(usable)  # so the usable part survives even if nothing changes before a crash
            except SaveError as exc:
                log.error("%s", exc)
                self.problems.append(f"what was usable could not be saved again: {exc}")
        return usable

    def _load_snapshot(self) -> dict[str, Any]:
        try:
            raw = self._read(self.path)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._move_aside(self.path, f"cannot be read ({exc.strerror or exc})")
            return {}
        try:
            data = strict_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._move_aside(self.path, f"is corrupt: not valid JSON ({exc})")
            return {}
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            self._move_aside(self.path, f"is corrupt: not a version {FORMAT_VERSION} state file")
            return {}
        for section in _SECTIONS:
            if not isinstance(data.get(section, {}), dict):
                # The file's skeleton is wrong, so nothing in it can be trusted.
                self._move_aside(self.path, f"is corrupt: {section!r} is not an object")
                return {}
        return data

    def _replay_log(self, data: dict[str, Any], after: int) -> bool:
        """Apply the log's changes newer than the snapshot to ``data``; False
        when the log was damaged (and moved aside)."""
        try:
            raw = self._read(self.log_path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            self._move_aside(self.log_path, f"cannot be read ({exc.strerror or exc})", keep_usable=True)
            return False
        *lines, unfinished = raw.split(b"\n")
        for number, line in enumerate(lines, 1):
            change = _change(line)
            if change is None:
                self._move_aside(self.log_path, f"is corrupt at line {number}", keep_usable=True)
                return False
            generation, changed, removed = change
            self._generation = max(self._generation, generation)
            if generation <= after:
                continue  # already in the snapshot (mcd stopped between writing it and removing the log)
            for section, entries in changed.items():
                data.setdefault(section, {}).update(entries)
            for section, names in removed.items():
                for name in names:
                    data.get(section, {}).pop(name, None)
        if unfinished:
            problem = (
                f"state log {self.log_path} ends in a change cut short (mcd stopped while saving it); it is dropped"
            )
            log.warning("%s", problem)
            self.problems.append(problem)
        return True

    def _read(self, path: Path) -> bytes:
        # O_NOFOLLOW: a symlink in the file's place is refused (ELOOP), never read through.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IsADirectoryError(0, "not a regular file")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _move_aside(self, path: Path, why: str, keep_usable: bool = False) -> None:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        what = "with what was usable" if keep_usable else "empty"
        try:
            os.replace(path, aside)
        except OSError as exc:
            problem = (
                f"state file {path} {why}, and it cannot be moved aside ({exc.strerror or exc});"
                f" starting {what}, the file is left as it is"
            )
        else:
            problem = f"state file {path} {why}; moved it to {aside} and starting {what}"
        log.error("%s", problem)
        self.problems.append(problem)

    # -- saving ----------------------------------------------------------------

    def save(self, data: dict[str, Any]) -> None:
        """Write ``data`` (its ``clients`` and ``servers``) as the whole
        snapshot; ``SaveError`` (the old files kept) when it cannot."""
        self.save_sections(
            {
                section: {name: encode_member(name, entry) for name, entry in data.get(section, {}).items()}
                for section in _SECTIONS
            }
        )

    def write(self, sections: Sections) -> None:
        """Record ``sections``: one log line with what differs from the last
        write, or the whole snapshot when that is due; ``SaveError`` when it
        cannot (and the next write is then a whole snapshot)."""
        written = self._written
        if written is None or self._log_size > max(self.COMPACT_AT, self._snapshot_size):
            self.save_sections(sections)
            return
        changed: Sections = {}
        removed: dict[str, list[str]] = {}
        for section in _SECTIONS:
            now, before = sections.get(section, {}), written.get(section, {})
            members = {name: member for name, member in now.items() if before.get(name) != member}
            if members:
                changed[section] = members
            gone = [name for name in before if name not in now]
            if gone:
                removed[section] = sorted(gone)
        if not changed and not removed:
            return
        generation = self._generation + 1
        line = b"".join(
            [
                b'{"gen":',
                str(generation).encode(),
                b',"del":',
                encode_entry(removed),
                b',"set":{',
                b",".join(
                    encode_entry(section) + b":{" + b",".join(members.values()) + b"}"
                    for section, members in changed.items()
                ),
                b"}}\n",
            ]
        )
        self._written = None  # until the line is known whole on disk
        try:
            secure_directory(self.directory, "state directory")
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(0, f"{self.log_path} is not a regular file")
                _write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if self._log_size == 0:
                _fsync_directory(self.directory)  # the log's name is part of the save
        except OSError as exc:
            raise SaveError(f"cannot save state to {self.log_path}: {exc.strerror or exc}") from exc
        self._generation = generation
        self._log_size += len(line)
        self._written = {section: dict(sections.get(section, {})) for section in _SECTIONS}

    def save_sections(self, sections: Sections) -> None:
        """Write the whole snapshot from encoded members, then drop the log."""
        generation = self._generation + 1
        body = encode_state(sections, generation)
        self._written = None
        tmp: str | None = None
        try:
            secure_directory(self.directory, "state directory")
            fd, tmp = tempfile.mkstemp(prefix=".state.json.", suffix=".tmp", dir=self.directory)
            try:
                _write_all(fd, body + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            tmp = None
            # The snapshot has every change the log has (their generations are
            # lower), so a crash before this unlink only leaves lines to skip.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.log_path)
            _fsync_directory(self.directory)
        except OSError as exc:
            raise SaveError(f"cannot save state to {self.path}: {exc.strerror or exc}") from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self._generation = generation
        self._snapshot_size = len(body)
        self._log_size = 0
        self._written = {section: dict(sections.get(section, {})) for section in _SECTIONS}

    @property
    def logged(self) -> bool:
        """Whether this store appended to the log since its last whole save."""
        return self._log_size > 0


def _write_all(fd: int, data: bytes) -> None:
    left = memoryview(data)
    while left:
        left = left[os.write(fd, left) :]


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _change(line: bytes) -> tuple[int, dict[str, dict[str, Any]], dict[str, list[str]]] | None:
    """A log line's generation, entries set and names removed; None when it is not one."""
    try:
        change = strict_json(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(change, dict):
        return None
    generation, changed, removed = change.get("gen"), change.get("set", {}), change.get("del", {})
    if not isinstance(generation, int) or not isinstance(changed, dict) or not isinstance(removed, dict):
        return None
    if not all(section in _SECTIONS and isinstance(entries, dict) for section, entries in changed.items()):
        return None
    if not all(
        section in _SECTIONS and isinstance(names, list) and all(isinstance(n, str) for n in names)
        for section, names in removed.items()
    ):
        return None
    return generation, changed, removed


def _usable(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The entries of ``data`` with the right shape, and what was wrong with the rest."""
    usable: dict[str, Any] = {"version": FORMAT_VERSION}
    problems: list[str] = []
    for section in _SECTIONS:
        entries = data.get(section, {})
        kept: dict[str, Any] = {}
        for name, saved in entries.items():
            if not isinstance(saved, dict):
                problems.append(f"{section}.{name} is not an object")
            elif not isinstance(saved.get("settings", {}), dict):
                problems.append(f"{section}.{name}.settings is not an object")
            elif not isinstance(saved.get("desired", False), bool):
                problems.append(f"{section}.{name}.desired is not true or false")
            else:
                kept[name] = saved
        usable[section] = kept
    return usable, problems


def encode_entry(value: Any) -> bytes:
    """One piece of the state file, encoded as the whole file is."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def encode_member(name: str, entry: Any) -> bytes:
    """``"name":entry`` as the state file has it, for ``encode_state``."""
    return encode_entry(name) + b":" + encode_entry(entry)


def encode_state(sections: Sections, generation: int | None = None) -> bytes:
    """The state file's body from its sections' members, each encoded once
    (``encode_member``) and keyed by name: a save then costs a join, not an
    encoding of every instance.  ``generation``: of the newest change it holds."""
    parts = [b"{"]
    for section in sorted(sections):
        members = sections[section]
        parts += [encode_entry(section), b":{", b",".join(members[name] for name in sorted(members)), b"},"]
    if generation is not None:
        parts += [b'"generation":', str(generation).encode(), b","]
    parts += [b'"version":', encode_entry(FORMAT_VERSION), b"}"]
    return b"".join(parts)


class StateWriter:
    """Saves the daemon's state on one thread of its own, coalescing changes.

    ``changed()`` is cheap and never does I/O, so callers may hold their own
    locks; whatever changed while a save was running is written by the next
    one, so a burst of changes costs one or two writes, not one each.  The
    snapshot is taken by ``snapshot()`` at write time, outside the caller's
    locks.  A failed save is retried with backoff (1 s doubling to 30 s) until
    one succeeds, or at once when something changes again, and ``error`` says
    what is wrong meanwhile.
    """

    RETRY_FIRST = 1.0
    RETRY_MAX = 30.0

    def __init__(self, store: StateStore, snapshot: Callable[[], Sections]) -> None:
        self.store = store
        self.snapshot = snapshot
        #: Why the last save failed; None once one succeeds.
        self.error: str | None = None
        self._cond = threading.Condition()
        self._wanted = 0  # generation of the newest change
        self._attempted = 0  # generation the last finished attempt covered
        self._saved = 0  # generation known to be on disk
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="mcd-state-writer", daemon=True)
        self._thread.start()

    def changed(self) -> int:
        """Note a change; returns its generation (for ``wait``)."""
        with self._cond:
            self._wanted += 1
            self._cond.notify_all()
            return self._wanted

    def wait(self, generation: int, timeout: float) -> str | None:
        """Wait until ``generation`` was written; None when it was, else why not
        (the save failed, and is being retried, or it took longer than ``timeout``)."""
        with self._cond:
            done = self._cond.wait_for(lambda: self._attempted >= generation or self._closing, timeout)
            if self._saved >= generation:
                return None
            if not done:
                return f"the state was not saved within {timeout:g} s; it will be"
            return self.error or "the state was not saved"

    def wait_saved(self, generation: int, timeout: float) -> bool:
        """Wait until ``generation`` is on disk, through any retries; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._saved >= generation, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _more_than(self, generation: int) -> bool:
        return self._closing or self._wanted > generation

    def _run(self) -> None:
        delay = 0.0
        generation = 0
        while True:
            with self._cond:
                # After a failure, wait out the backoff, unless something changes:
                # whoever changed it waits for an answer, and the disk may be fixed.
                if delay:
                    self._cond.wait_for(functools.partial(self._more_than, generation), delay)
                self._cond.wait_for(lambda: self._wanted > self._saved or self._closing)
                if self._wanted <= self._saved and self._closing:
                    break
                generation = self._wanted
            failed = self._attempt(self.store.write)
            with self._cond:
                self._attempted = max(self._attempted, generation)
                if failed is None:
                    if self.error is not None:
                        log.warning("state saved again to %s", self.store.path)
                    self._saved = generation
                    self.error = None
                    delay = 0.0
                else:
                    if self.error != failed:
                        log.error("%s; retrying", failed)
                    self.error = failed
                    delay = min(self.RETRY_MAX, max(self.RETRY_FIRST, 2 * delay))
                    if self._closing:
                        self._cond.notify_all()
                        return
                self._cond.notify_all()
        # Leave one whole file at rest: whoever reads it (or the next start) has no log to apply.
        if self.store.logged and (failed := self._attempt(self.store.save_sections)) is not None:
            log.error("%s", failed)

    def _attempt(self, write: Callable[[Sections], None]) -> str | None:
        """Write the snapshot with ``write``; why it failed, or None."""
        try:
            write(self.snapshot())
        except SaveError as exc:
            return str(exc)
        except Exception as exc:  # a bug in the snapshot: keep the daemon alive, say so
            log.exception("cannot build the state to save")
            return f"cannot build the state to save: {exc}"
        return None
