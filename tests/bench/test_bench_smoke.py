"""The benchmark runs at tiny sizes, so it cannot rot (no timing asserted)."""

from __future__ import annotations

import os
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
