"""mcd's control socket when a connection cannot get its thread: the accept
thread raised, died, and mcd answered no control connection again (the
process went on, deaf). Now that connection is closed, mcd says why once,
and the next connection is served."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from mc_control import ControlClient
from mc_daemon import control as control_module
from mc_daemon.core import DaemonCore


def test_a_connection_that_gets_no_thread_is_closed_and_the_next_is_served(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mcd.control")
    real_start = threading.Thread.start
    refused: list[str] = []

    def start_or_fail_once(thread: threading.Thread) -> None:
        if thread.name == "mcd-control" and not refused:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_or_fail_once)
    root = Path(tempfile.mkdtemp(prefix="mc", dir="/tmp"))  # a short path: Unix sockets take ~107 bytes
    path = root / "mcd.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    server = control_module.ControlServer(DaemonCore(store=None), path, request_shutdown=lambda: None)
    server.start(listener)
    try:
        with socket.socket(socket.AF_UNIX) as first:
            first.connect(str(path))
            first.settimeout(10)
            assert first.recv(1) == b""  # closed: no thread to serve it
        client = ControlClient(path, timeout=10)
        try:
            assert client.request("list")["instances"] == []
        finally:
            client.close()
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)
    messages = [record.getMessage() for record in caplog.records]
    assert [m for m in messages if m.startswith("cannot accept control connections")] == [
        "cannot accept control connections: [Errno 11] can't start new thread; trying again every 1 s"
        " (those already connected go on)"
    ]
    assert any(m.startswith("accepting control connections again") for m in messages)
