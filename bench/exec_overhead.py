"""Scenario 3: an exec watcher run against a bare asyncio subprocess spawn of the same command."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Result
from bench.machines import build
from machinery.core.node import Node

MANIFEST = """\
name: bench_exec
version: 1.0.0
initial_state: run
transitions:
  - name: again
    from: [run]
    destination: run
watchers:
  - name: job
    type: exec
    success_transition: again
    properties:
      command: /bin/true --flag {{ lookup "facts.name" "x" }}
"""


async def _bare(count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        process = await asyncio.create_subprocess_exec(
            "/bin/true",
            "--flag",
            "x",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await process.communicate()
    return (time.perf_counter() - start) / count


async def _watcher(count: int, directory: Path) -> float:
    machine = build(directory, MANIFEST, Node(identity="bench", rate_limit=False))
    machine.build_watchers()
    watcher = machine.watchers[0]
    start = time.perf_counter()
    for _ in range(count):
        await watcher.check(0)  # type: ignore[attr-defined]
    elapsed = (time.perf_counter() - start) / count
    assert watcher.status.outcomes.get("success") == count, watcher.status
    return elapsed


async def _measure(quick: bool) -> tuple[float, float]:
    count = 30 if quick else 200
    rounds = 3 if quick else 7
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            # Interleaved so both see the same machine load.
            bare.append(await _bare(count))
            ours.append(await _watcher(count, Path(tmp) / f"m{i}"))
    return statistics.median(bare), statistics.median(ours)


def run(quick: bool) -> Result:
    bare, ours = asyncio.run(_measure(quick))
    ratio = ours / bare
    return Result(
        scenario="3. exec watcher run vs bare spawn",
        figure=f"{ratio:.2f}x ({ours * 1000:.2f} ms vs {bare * 1000:.2f} ms per run)",
        target="<= 1.5x",
        met=ratio <= 1.5,
        details={"watcher_ms": round(ours * 1000, 3), "bare_ms": round(bare * 1000, 3)},
    )
