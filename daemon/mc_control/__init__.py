"""The mcd control contract, and a small client for it.

This package is imported by ``mcctl`` on every run, so importing it costs
only standard-library modules: the pydantic models of every command live in
``mc_control.schema``, imported by the daemon (and by tests that check the
CLI against them), never on mcctl's one-shot path.
"""

from __future__ import annotations

from .client import ControlClient, ControlError, DaemonUnreachable, default_socket_path
from .codes import API_VERSION, EXIT_CODES, ErrorCode

__all__ = [
    "API_VERSION",
    "EXIT_CODES",
    "ControlClient",
    "ControlError",
    "DaemonUnreachable",
    "ErrorCode",
    "default_socket_path",
]
