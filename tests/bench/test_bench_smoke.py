"""The benchmark runs at tiny sizes, so it cannot rot (no timing asserted)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "run.py"


def test_every_scenario_runs_at_tiny_size(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    # As bench/RESULTS.md: analysis around the table, which a run must keep.
    report.write_text(
        "# Results\n\nBefore.\n\n<!-- bench/run.py: table -->\nold table\n"
        "<!-- /bench/run.py: table -->\n\n## Analysis\n\nAfter.\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--reps",
            "1",
            "--scale",
            "20",
            "--systems",
            "missioncommander,mc-pooled,mc-async,mc-uvloop,sockets,asyncio,uvloop",
            "--results",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FAILED" not in out.stderr
    text = report.read_text()
    assert text.startswith("# Results\n\nBefore.\n") and text.endswith("## Analysis\n\nAfter.\n")
    assert "old table" not in text
    scenarios = ("echo", "client->server", "broadcast", "client in mcd", "1 MiB echo", "20 idle", "mcctl client status")
    for scenario in scenarios:
        assert scenario in text
    assert "(" in text and "x MC)" in text  # ratios to MissionCommander


INTERLEAVED = BENCH.parent / "interleaved.py"


def _interleaved(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(INTERLEAVED), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
        check=False,
    )


def test_the_interleaved_echo_and_request_run_at_tiny_size() -> None:
    echo = _interleaved("--systems", "mc-async,missioncommander,asyncio,sockets", "--rounds", "3", "--block", "20")
    assert echo.returncode == 0, echo.stderr[-3000:]
    lines = echo.stdout.splitlines()
    for system in ("mc-async", "missioncommander", "asyncio"):
        # Three rounds' p50s, and the ratio to the reference (the last system).
        [rounds] = [line for line in lines if line.startswith(f"{system} ") and "per round" in line]
        assert len(rounds.split(":")[1].split()) == 3
        assert any(line.startswith(f"{system} ") and "over sockets, round by round: median" in line for line in lines)
    assert not any(line.startswith("sockets ") and "over sockets" in line for line in lines)

    request = _interleaved(
        "--scenario", "request", "--systems", "mc-async,missioncommander", "--rounds", "2", "--block", "20"
    )
    assert request.returncode == 0, request.stderr[-3000:]
    assert "mc-async" in request.stdout and "over missioncommander, round by round" in request.stdout


def test_the_interleaved_benchmark_refuses_what_it_cannot_measure() -> None:
    for args, said in [
        (("--systems", "mc-async,nosuch"), "unknown system(s): nosuch"),
        (("--scenario", "request", "--systems", "mc-async,sockets"), "no request/reply of its own: sockets"),
        (("--systems", "mc-async,sockets", "--reference", "asyncio"), "--reference asyncio is not one of --systems"),
        (("--rounds", "0"), "--rounds and --block must be at least 1"),
        (("--systems", "mc-async,sockets,mc-async"), "name each system once in --systems"),
    ]:
        out = _interleaved(*args)
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


def test_the_interleaved_benchmark_says_why_a_system_did_not_run() -> None:
    # mqtt's server needs a broker: pointed at a port where none listens (and
    # paho-mqtt may be missing too), it cannot start, and that is said
    # without a traceback.
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed = probe.getsockname()[1]
    out = _interleaved(
        "--systems",
        "mc-async,mqtt",
        "--rounds",
        "1",
        "--block",
        "5",
        "--reference",
        "mc-async",
        env={"BENCH_BROKER_PORT": str(closed)},
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "interleaved.py: FAILED: RuntimeError: mqtt server did not start" in out.stderr
    assert "Traceback" not in out.stderr
