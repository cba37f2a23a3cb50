"""``python -m soak [--minutes 10]``: process churn, then the store soak; exits 1 on a violation.

1. 10,000 command runs of every kind (tests/faults/churn.py): descriptors, asyncio tasks,
   zombies, leftover processes and temporary files before and after.
2. The store soak (soak/run.py): the examples plus generated machines under load, with broker
   restarts, hung commands, broken manifests and 100 SIGKILL rounds of the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path


def _churn(runs: int) -> list[str]:
    from machinery.core.loop import install_child_watcher
    from tests.faults.churn import churn

    install_child_watcher()
    with tempfile.TemporaryDirectory(prefix="machinery-churn-") as directory:
        report = asyncio.run(churn(runs, Path(directory)))
    print(report.summary(), flush=True)
    print(
        f"{report.runs} runs, fd delta {report.fd_delta}, task delta {report.task_delta}, "
        f"zombies {report.zombies}",
        flush=True,
    )
    problems = []
    if report.unexpected:
        problems.append(
            f"{len(report.unexpected)} unexpected command results: {report.unexpected[:3]}"
        )
    if report.fd_delta > 0 or report.task_delta != 0:
        problems.append(f"leaks: fd delta {report.fd_delta}, task delta {report.task_delta}")
    if report.zombies or report.leftover_processes or report.temp_files_delta > 0:
        problems.append(
            f"left behind: {report.zombies} zombies, {report.leftover_processes} processes, "
            f"{report.temp_files_delta} temporary files"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="store soak length (10)")
    parser.add_argument("--machines", type=int, default=50, help="generated machines (50)")
    parser.add_argument("--kill-rounds", type=int, default=100, help="SIGKILL rounds (100)")
    parser.add_argument("--churn-runs", type=int, default=10_000, help="command runs (10,000)")
    parser.add_argument("--seed", type=int, default=20260201)
    parser.add_argument("--no-nats", action="store_true", help="run without a broker")
    parser.add_argument("--keep", action="store_true", help="keep the soak's files")
    args = parser.parse_args(argv)

    started = time.monotonic()
    problems: list[str] = []
    if args.churn_runs:
        print(f"== process churn: {args.churn_runs} runs", flush=True)
        problems += _churn(args.churn_runs)

    from soak.run import run_soak

    print(
        f"== store soak: {args.minutes:g} minutes, {args.machines} generated machines", flush=True
    )
    report = run_soak(
        args.minutes, args.machines, args.kill_rounds, args.seed, not args.no_nats, args.keep
    )
    print(report.summary(), flush=True)
    problems += report.violations
    took = (time.monotonic() - started) / 60
    if problems:
        print(f"SOAK FAILED after {took:.1f} minutes:", flush=True)
        for problem in problems:
            print(f"  - {problem}", flush=True)
        return 1
    print(f"soak passed in {took:.1f} minutes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
