"""The daemon's saved state: one JSON file, replaced atomically.

What this module promises, whatever it finds on disk:

* ``load`` never raises for a bad file.  Anything it cannot use whole (bad
  encoding, bad JSON, the wrong shape, wrong types inside, a directory or a
  symlink where the file should be, no permission) is moved aside as
  ``state.json.corrupt-<time>`` (so nothing is lost) with one log line, and
  the daemon starts with whatever part of it was usable.
* ``save`` never writes through a link someone planted: the temporary file
  is created with ``O_EXCL`` (``tempfile.mkstemp``), mode 0600, in a
  directory that only this user can write to.  A failed save raises
  ``SaveError``, so the caller can tell whoever changed something.
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

from .files import secure_directory

log = logging.getLogger("mcd.state")

FORMAT_VERSION = 1
_SECTIONS = ("clients", "servers")


class SaveError(Exception):
    """The state could not be written; the previous file is untouched."""


class StateStore:
    """``state.json`` in ``directory``.

    ``save`` writes a temporary file, fsyncs it, renames it over the old one
    and fsyncs the directory, so a crash at any point leaves either the old
    or the new file, never a torn one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"

    # -- loading ---------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """The saved state, or as much of it as is usable (see the module's docstring)."""
        try:
            raw = self._read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._move_aside(f"cannot be read ({exc.strerror or exc})")
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._move_aside(f"is corrupt: not valid JSON ({exc})")
            return {}
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            self._move_aside(f"is corrupt: not a version {FORMAT_VERSION} state file")
            return {}
        for section in _SECTIONS:
            if not isinstance(data.get(section, {}), dict):
                # The file's skeleton is wrong, so nothing in it can be trusted.
                self._move_aside(f"is corrupt: {section!r} is not an object")
                return {}
        usable, problems = _usable(data)
        if problems:
            self._move_aside("has corrupt entries: " + "; ".join(problems[:5]), keep_usable=True)
            try:
                self.save(usable)  # so the usable part survives even if nothing changes before a crash
            except SaveError as exc:
                log.error("%s", exc)
        return usable

    def _read(self) -> bytes:
        # O_NOFOLLOW: a symlink in the file's place is refused (ELOOP), never read through.
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IsADirectoryError(0, "not a regular file")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _move_aside(self, why: str, keep_usable: bool = False) -> None:
        aside = self.path.with_name(f"state.json.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            log.error(
                "state file %s %s, and it cannot be moved aside (%s); starting %s, the file is left as it is",
                self.path,
                why,
                exc.strerror or exc,
                "with what was usable" if keep_usable else "empty",
            )
            return
        log.error(
            "state file %s %s; moved it to %s and starting %s",
            self.path,
            why,
            aside,
            "with what was usable" if keep_usable else "empty",
        )

    # -- saving ----------------------------------------------------------------

    def save(self, data: dict[str, Any] | bytes) -> None:
        """Replace the file with ``data`` (or a body ``encode_state`` made);
        ``SaveError`` (the old file kept) when it cannot."""
        body = data if isinstance(data, bytes) else encode_entry({"version": FORMAT_VERSION, **data})
        tmp: str | None = None
        try:
            secure_directory(self.directory, "state directory")
            fd, tmp = tempfile.mkstemp(prefix=".state.json.", suffix=".tmp", dir=self.directory)
            try:
                left = memoryview(body + b"\n")
                while left:
                    left = left[os.write(fd, left) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            tmp = None
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise SaveError(f"cannot save state to {self.path}: {exc.strerror or exc}") from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


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


def encode_state(sections: dict[str, dict[str, bytes]]) -> bytes:
    """The state file's body from its sections' members, each encoded once
    (``encode_member``) and keyed by name: a save then costs a join, not an
    encoding of every instance."""
    parts = [b"{"]
    for section in sorted(sections):
        members = sections[section]
        parts += [encode_entry(section), b":{", b",".join(members[name] for name in sorted(members)), b"},"]
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

    def __init__(self, store: StateStore, snapshot: Callable[[], dict[str, Any] | bytes]) -> None:
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
                    return
                generation = self._wanted
            try:
                self.store.save(self.snapshot())
            except SaveError as exc:
                failed: str | None = str(exc)
            except Exception as exc:  # a bug in the snapshot: keep the daemon alive, say so
                log.exception("cannot build the state to save")
                failed = f"cannot build the state to save: {exc}"
            else:
                failed = None
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
