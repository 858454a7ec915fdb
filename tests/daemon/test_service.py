"""`mcd install-service`: a unit that systemd accepts and that starts this mcd."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def mcd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mc_daemon", *args], check=False, capture_output=True, text=True, timeout=60
    )


def exec_start(unit: str) -> list[str]:
    (line,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_the_unit_runs_this_python_with_the_options_given(tmp_path: Path) -> None:
    unit_dir, sock, state = tmp_path / "units", tmp_path / "run dir" / "mcd.sock", tmp_path / "state"
    out = mcd("install-service", "--unit-dir", str(unit_dir), "--socket", str(sock), "--state-dir", str(state))
    assert out.returncode == 0, out.stderr
    unit = (unit_dir / "mcd.service").read_text()
    assert exec_start(unit) == [sys.executable, "-m", "mc_daemon", "--socket", str(sock), "--state-dir", str(state)]
    assert "systemctl --user daemon-reload && systemctl --user enable --now mcd" in out.stdout
    assert mcd("install-service", "--print", "--socket", str(sock), "--state-dir", str(state)).stdout == unit
    again = mcd("install-service", "--unit-dir", str(unit_dir), "--socket", str(sock), "--state-dir", str(state))
    assert "unchanged" in again.stdout
    metrics = mcd("install-service", "--print", "--metrics", "9100", "--metrics-per-client").stdout
    assert exec_start(metrics)[-3:] == ["--metrics", "9100", "--metrics-per-client"]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (Debian: systemd)")
def test_systemd_analyze_verify_accepts_the_written_unit(tmp_path: Path) -> None:
    assert mcd("install-service", "--unit-dir", str(tmp_path)).returncode == 0
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    out = subprocess.run(
        [SYSTEMD_ANALYZE or "", "--user", "verify", str(tmp_path / "mcd.service")],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "mcd.service" not in out.stderr  # no warning about the unit itself


def test_the_units_command_starts_mcd_as_systemd_would(tmp_path: Path) -> None:
    """Type=notify: the command must come up and send READY=1, and stop on SIGTERM."""
    sock = tmp_path / "mcd.sock"
    unit = mcd("install-service", "--print", "--socket", str(sock), "--state-dir", str(tmp_path / "state")).stdout
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(exec_start(unit), env=env, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for _ in range(10):  # READY=1 comes after at most a STATUS= or two
            seen.append(notify.recv(4096).decode())
            if "READY=1" in seen[-1]:
                break
        assert "READY=1" in seen[-1], seen
    except TimeoutError:
        pytest.fail("the unit's command sent no READY=1 within 30 s")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        notify.close()
    assert proc.returncode == 0, err
    assert sock.exists() is False


def test_an_unwritable_unit_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = mcd("install-service", "--unit-dir", str(blocker / "units"))
    assert out.returncode == 1
    assert out.stderr.startswith("mcd: cannot write ")
    assert "Traceback" not in out.stderr
