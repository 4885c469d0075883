"""The chaos run in its quick mode: workers and Redis killed at random, nothing lost or doubled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_quick_chaos_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    summary_path = tmp_path / "chaos.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.chaos",
            "--quick",
            "--timeout",
            "300",
            "--json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["runs"] == summary["terminal"] == 60
    assert summary["lost"] == 0 and summary["doubled"] == 0
    # Every log entry reached the lifecycle stream, and nothing was invented there.
    lifecycle = summary["lifecycle"]
    assert (lifecycle["missing"], lifecycle["invented"], lifecycle["spill_left"]) == (0, 0, 0)
    assert sum(summary["kills"].values()) >= 3  # the chaos really happened
    assert "lost=0 doubled=0" in done.stdout
