"""What the time bounds in the tests are set against: ``bench/test-timings.md``.

python -m bench.test_timings [--rounds N] [PYTEST ARGS...]

Runs the test files that bound a wall-clock time (``tests.support.assert_took``) with
``MACHINERY_TEST_TIMINGS`` set, so each bounded time is recorded, and writes for each one the
median and the largest figure seen against its bound. A bound below 10x the largest figure is
flagged: on a loaded 2-core box it would flake.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.__main__ import machine_description

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "bench" / "test-timings.md"
MIN_RATIO = 10.0


def bounded_test_files() -> list[str]:
    """The test files that call assert_took."""
    return sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if "assert_took(" in path.read_text(encoding="utf-8")
    )


def render(records: list[dict[str, object]], rounds: int, elapsed: float) -> str:
    by_what: dict[tuple[str, str], list[float]] = defaultdict(list)
    bounds: dict[tuple[str, str], float] = {}
    for record in records:
        test = str(record["test"]).split("[")[0]
        key = (test, str(record["what"]))
        by_what[key].append(float(str(record["seconds"])))
        bounds[key] = float(str(record["bound"]))
    lines = [
        "# Time bounds in the tests, against what the machine shows",
        "",
        f"- machine: {machine_description()}",
        f"- command: `python -m bench.test_timings --rounds {rounds}` ({elapsed:.0f} s), while the",
        "  rest of the machine was in its usual use (other test runs in parallel)",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        "Every absolute time a test asserts goes through `tests.support.assert_took`; its bound",
        f"must be at least {MIN_RATIO:.0f}x the largest figure here (a loaded CI box is slower).",
        "",
        "| test | what | samples | median | max | bound | bound / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for (test, what), figures in sorted(by_what.items()):
        bound = bounds[(test, what)]
        worst = max(figures)
        ratio = bound / worst if worst > 0 else float("inf")
        flag = "" if ratio >= MIN_RATIO else " **too tight**"
        lines.append(
            f"| `{test}` | {what} | {len(figures)} | {statistics.median(figures) * 1000:.1f} ms "
            f"| {worst * 1000:.1f} ms | {bound:g} s | {ratio:.0f}x{flag} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args, pytest_args = parser.parse_known_args()
    files = bounded_test_files()
    records: list[dict[str, object]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        record = Path(scratch) / "timings.jsonl"
        for _ in range(args.rounds):
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            done = subprocess.run(
                [*command, *pytest_args, *files],
                cwd=ROOT,
                env={**os.environ, "MACHINERY_TEST_TIMINGS": str(record)},
                check=False,
            )
            if done.returncode != 0:
                print("some tests failed: the figures of those that ran are kept", file=sys.stderr)
        if record.exists():
            records = [json.loads(line) for line in record.read_text().splitlines() if line]
    OUTPUT.write_text(render(records, args.rounds, time.monotonic() - started))
    print(f"{len(records)} figures written to {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
