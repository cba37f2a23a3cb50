"""Scenario 9: how fast a simulated week of a schedule runs (``machinery test``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.common import Result
from machinery.simulation.scenario import load_scenario_file, run_scenario_file

SCENARIO = (
    Path(__file__).resolve().parents[1] / "examples" / "nightly-backup" / "nightly-backup.test.yaml"
)


def run(quick: bool) -> Result:
    scenario_file = load_scenario_file(SCENARIO)
    scenario_file.scenarios = [s for s in scenario_file.scenarios if s.name.startswith("a week")]
    rounds = 2 if quick else 5
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        [result] = asyncio.run(run_scenario_file(scenario_file))
        timings.append(time.perf_counter() - started)
        assert result.passed, result.failure
    best = min(timings)
    return Result(
        scenario="9. scenario: a week of a nightly schedule",
        figure=f"{best * 1000:.0f} ms ({7 * 86400 / best:,.0f}x real time)",
        target="< 1 s",
        met=best < 1,
        details={"best_ms": round(best * 1000, 1), "rounds": rounds},
    )
