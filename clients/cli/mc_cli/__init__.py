"""mcctl, the MissionCommander command-line controller (one-shot and shell)."""

from __future__ import annotations

__version__ = "0.1.0"
