"""Scenario 2: the full pipeline: transition, CloudEvent, JSON-lines file and SQLite history."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import Result
from bench.machines import build
from machinery.agent.state import StateDB, StateWriter
from machinery.core.node import Node
from machinery.events.sinks import JsonLinesNotifier

MANIFEST = """\
name: bench_pipeline
version: 1.0.0
initial_state: a
transitions:
  - name: flip
    from: [a]
    destination: b
  - name: flop
    from: [b]
    destination: a
watchers:
  - name: quiet
    type: httpswitch
    properties: {}
"""


async def _measure(count: int, directory: Path) -> float:
    db = StateDB(directory / "state")
    writer = StateWriter(db)
    jsonl = JsonLinesNotifier(directory / "events.jsonl")
    node = Node(identity="bench", rate_limit=False, notifiers=[jsonl, writer])
    machine = build(directory / "m", MANIFEST, node)
    started = time.perf_counter()
    for i in range(count // 2):
        await machine.transition("flip")
        await machine.transition("flop")
        if i % 256 == 0:
            await asyncio.sleep(0)  # let the JSON-lines sink write its batch
    await asyncio.sleep(0)
    jsonl.flush()
    await asyncio.to_thread(writer.flush, 60)
    elapsed = time.perf_counter() - started
    lines = len((directory / "events.jsonl").read_bytes().splitlines())
    rows = db.count("history")
    assert lines == count, (lines, count)  # every event written
    assert rows >= min(count, 1000), rows  # history recorded (pruned to 1000 per machine)
    writer.close()
    db.close()
    jsonl.close()
    return count / elapsed


def run(quick: bool) -> Result:
    count = 20_000 if quick else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        rate = asyncio.run(_measure(count, Path(tmp)))
    return Result(
        scenario="2. full pipeline transitions/s (event, JSON lines, SQLite history)",
        figure=f"{rate:,.0f}/s",
        target=">= 20,000/s",
        met=rate >= 20_000,
        details={"transitions": count, "per_second": round(rate)},
    )
