"""Scenario 4a: a file change to its transition event, through inotify (p50/p99/max)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import Result, latency_summary
from bench.machines import build
from machinery.core.inotify import FileMonitor
from machinery.core.node import Node
from machinery.core.notifications import MachineEvent, TransitionNotification

MANIFEST = """\
name: bench_file
version: 1.0.0
initial_state: a
transitions:
  - name: toggle
    from: [a]
    destination: b
  - name: toggle
    from: [b]
    destination: a
watchers:
  - name: watched
    type: file
    success_transition: toggle
    interval: 1h
    properties:
      path: watched.txt
      gather_initial_state: true
"""


class _Timer:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.at = 0.0

    def notify(self, event: MachineEvent) -> None:
        if isinstance(event, TransitionNotification):
            self.at = time.perf_counter()
            self.event.set()


async def _measure(samples: int, directory: Path) -> list[float]:
    timer = _Timer()
    monitor = FileMonitor()
    node = Node(identity="bench", notifiers=[timer], file_monitor=monitor, rate_limit=False)
    target = directory / "watched.txt"
    target.write_text("0")
    machine = build(directory, MANIFEST, node)
    task = asyncio.ensure_future(machine.run())
    try:
        while not machine.watchers or machine.watchers[0].status.next_run is None:
            await asyncio.sleep(0.01)
        latencies = []
        for i in range(samples):
            timer.event.clear()
            started = time.perf_counter()
            target.write_text(str(i))
            await asyncio.wait_for(timer.event.wait(), 5)
            latencies.append(timer.at - started)
            await asyncio.sleep(0.002)
        return latencies
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        monitor.close()


def run(quick: bool) -> Result:
    samples = 50 if quick else 500
    with tempfile.TemporaryDirectory() as tmp:
        latencies = asyncio.run(_measure(samples, Path(tmp)))
    summary = latency_summary(latencies)
    return Result(
        scenario="4a. file change -> transition event",
        figure=f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms",
        target="p99 < 50 ms",
        met=summary["p99_ms"] < 50,
        details={**summary, "samples": samples},
    )
