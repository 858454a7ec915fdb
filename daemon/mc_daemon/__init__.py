"""mcd, the MissionCommander daemon: ``DaemonCore`` (instances, events,
persistence) and the control server that exposes it on a Unix socket."""

from __future__ import annotations

from .core import CoreError, DaemonCore

__all__ = ["CoreError", "DaemonCore"]
