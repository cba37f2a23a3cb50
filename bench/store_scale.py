"""Scenarios 5 and 7 (agent side): a store of many machines.

Load time and RSS per machine for a store of N machines of three watchers each (file, exec every
5 minutes, expression every 10 seconds), then the reaction latency to adding, changing and
removing a machine while they all run.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

from bench.agentproc import Agent
from bench.common import Result, latency_summary

MACHINE = """\
name: m{n}
version: 1.0.0
initial_state: watching
transitions:
  - name: changed
    from: [watching, hot]
    destination: watching
  - name: too_hot
    from: [watching]
    destination: hot
watchers:
  - name: config
    type: file
    success_transition: changed
    interval: 1m
    properties:
      path: config.json
      gather_initial_state: true
  - name: probe
    type: exec
    interval: 5m
    properties:
      command: /bin/true
  - name: temperature
    type: expression
    interval: 10s
    success_transition: too_hot
    properties:
      success_when: data.temperature != nil && data.temperature > 30
"""


def write(store: Path, n: int, extra: str = "") -> Path:
    directory = store / f"m{n}"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text("{}")
    staged = directory / ".machine.yaml.new"
    staged.write_text(textwrap.dedent(MACHINE.format(n=n)) + extra)
    os.replace(staged, directory / "machine.yaml")
    return directory


def _wait(agent: Agent, predicate, timeout: float = 60) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise RuntimeError("timed out")
        time.sleep(0.005)
    return time.monotonic() - started


def run(quick: bool) -> list[Result]:
    count = 100 if quick else 1000
    probes = 5 if quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        empty = Agent(base / "empty")
        empty.start()
        time.sleep(1)
        baseline_rss = empty.rss_kib()
        empty.stop()

        agent = Agent(base / "full")
        for n in range(count):
            write(agent.store, n)
        time.sleep(0.5)  # let the files settle so nothing waits on settle_delay
        started = time.monotonic()
        agent.start()
        _wait(
            agent,
            lambda: sum(1 for m in agent.machines() if m["status"] == "running") == count,
            timeout=300,
        )
        load_seconds = time.monotonic() - started
        time.sleep(2)
        rss = agent.rss_kib()
        per_machine = (rss - baseline_rss) / count
        cpu_before = agent.cpu_seconds()
        idle_window = 5.0 if quick else 20.0
        time.sleep(idle_window)
        idle_cpu = (agent.cpu_seconds() - cpu_before) / idle_window

        latencies: dict[str, list[float]] = {"add": [], "change": [], "remove": []}
        for i in range(probes):
            n = count + i

            def named(name: str) -> dict[str, object] | None:
                return next((m for m in agent.machines() if m["name"] == name), None)

            started = time.monotonic()
            write(agent.store, n)
            _wait(agent, lambda n=n: (m := named(f"m{n}")) is not None and m["status"] == "running")
            latencies["add"].append(time.monotonic() - started)
            first = named(f"m{n}")
            assert first is not None
            started = time.monotonic()
            write(agent.store, n, extra="# changed\n")
            _wait(
                agent,
                lambda n=n, first=first: (
                    (m := named(f"m{n}")) is not None and m.get("id") not in (None, first["id"])
                ),
            )
            latencies["change"].append(time.monotonic() - started)
            started = time.monotonic()
            import shutil

            shutil.rmtree(agent.store / f"m{n}")
            _wait(agent, lambda n=n: named(f"m{n}") is None)
            latencies["remove"].append(time.monotonic() - started)
        agent.stop()

    all_latencies = [x for values in latencies.values() for x in values]
    summary = latency_summary(all_latencies)
    per_kind = {k: round(statistics.median(v) * 1000, 1) for k, v in latencies.items()}
    return [
        Result(
            scenario=f"3a. agent with {count} machines: load",
            figure=f"{load_seconds:.1f} s to start all, {per_machine:.1f} KiB RSS per machine",
            target="report (issue 7: 10k machines < 30 s, <= 30 KB each)",
            met=None,
            details={
                "machines": count,
                "load_s": round(load_seconds, 2),
                "rss_kib": rss,
                "baseline_rss_kib": baseline_rss,
                "kib_per_machine": round(per_machine, 1),
                "idle_cpu_percent": round(idle_cpu * 100, 2),
            },
        ),
        Result(
            scenario=f"7. store reaction with {count} machines (add/change/remove)",
            figure=f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms",
            target="p99 < 1 s",
            met=summary["p99_ms"] < 1000,
            details={**summary, "median_ms_by_kind": per_kind, "samples": len(all_latencies)},
        ),
    ]
