"""The benchmarks in quick mode: they must keep running (targets are not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmarks_run_in_quick_mode() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for scenario in (
        "1. bare FSM",
        "3. exec watcher",
        "4a. file change",
        "4b. kv update to transition (local store",
        "4b. kv update to transition (NATS JetStream",
        "3a. agent with",
        "7. store reaction",
        "2b. full pipeline with events to NATS",
        "10a. idle agent RSS",
        "10b. `machinery --version`",
        "10c. `machinery validate`",
    ):
        assert scenario in result.stdout, result.stdout
