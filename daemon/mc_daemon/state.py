"""The daemon's saved state: one JSON file, replaced atomically."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("mcd.state")

FORMAT_VERSION = 1


class StateStore:
    """``state.json`` in ``directory``.

    ``save`` writes a temporary file, fsyncs it, renames it over the old one
    and fsyncs the directory, so a crash at any point leaves either the old
    or the new file, never a torn one.  ``load`` moves a corrupt file aside
    (``state.json.corrupt-<time>``) with a log line and starts empty.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"

    def load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError(f"not a version {FORMAT_VERSION} state file")
            for key in ("clients", "servers"):
                if not isinstance(data.get(key, {}), dict):
                    raise ValueError(f"{key!r} is not an object")
        except ValueError as exc:
            aside = self.path.with_name(f"state.json.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("state file %s is corrupt (%s); moved it to %s and starting empty", self.path, exc, aside)
            return {}
        return data

    def save(self, data: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".state.json.{os.getpid()}.tmp")
        body = json.dumps({"version": FORMAT_VERSION, **data}, indent=2, sort_keys=True) + "\n"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                left = memoryview(body.encode("utf-8"))
                while left:
                    left = left[os.write(fd, left) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            # The old file stays as it was; the daemon keeps running.
            log.error("cannot save state to %s: %s", self.path, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass
