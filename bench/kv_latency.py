"""Scenario 4b: a key-value update to its transition event, kv watcher in watch mode (p50/p99/max).

Measured on both stores the watcher runs against: the agent's local store (SQLite) and NATS
JetStream key-value (a real nats-server on loopback). The clock starts before the ``put`` and
stops when the machine's transition event reaches its notifier.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Result, latency_summary
from bench.machines import build
from bench.nats_publish import NatsServerProcess
from machinery.agent.config import NatsSettings
from machinery.agent.localkv import LocalKV
from machinery.agent.state import StateDB
from machinery.core.kv import KVStore
from machinery.core.node import Node
from machinery.core.notifications import MachineEvent, TransitionNotification
from machinery.nats.connection import BrokerConnection
from machinery.nats.kv import NatsKV

MANIFEST = """\
name: bench_kv
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
  - name: config
    type: kv
    success_transition: toggle
    properties:
      bucket: BENCH
      key: mode
      mode: watch
"""

TARGET_SECONDS = 0.100


class _Timer:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.at = 0.0

    def notify(self, event: MachineEvent) -> None:
        if isinstance(event, TransitionNotification):
            self.at = time.perf_counter()
            self.event.set()


async def _measure(store: KVStore, samples: int, directory: Path) -> list[float]:
    await store.create_bucket("BENCH")
    timer = _Timer()
    node = Node(identity="bench", notifiers=[timer], rate_limit=False)
    node.provide("kv", store)
    machine = build(directory, MANIFEST, node)
    task = asyncio.ensure_future(machine.run())
    try:
        # The watch is up once a first value is seen: it fires the first transition.
        await store.put("BENCH", "mode", b"warm-up")
        await asyncio.wait_for(timer.event.wait(), 10)
        latencies = []
        for i in range(samples):
            timer.event.clear()
            started = time.perf_counter()
            await store.put("BENCH", "mode", str(i).encode())
            await asyncio.wait_for(timer.event.wait(), 5)
            latencies.append(timer.at - started)
            await asyncio.sleep(0.002)
        return latencies
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _local(samples: int, directory: Path) -> list[float]:
    state = StateDB(directory / "state")  # creates the kv tables
    state.close()
    store = LocalKV(state.path)
    try:
        return await _measure(store, samples, directory / "machine")
    finally:
        store.close()


async def _nats(samples: int, url: str, directory: Path) -> list[float]:
    broker = BrokerConnection(NatsSettings(servers=[url]), name="bench")
    running = asyncio.ensure_future(broker.run())
    try:
        if not await broker.wait_connected(10):
            raise RuntimeError("could not connect to nats-server")
        return await _measure(NatsKV(broker), samples, directory / "machine")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def _result(store: str, latencies: list[float], samples: int) -> Result:
    summary: dict[str, Any] = latency_summary(latencies)
    p99 = summary["p99_ms"] / 1000
    return Result(
        scenario=f"4b. kv update to transition ({store}, watch mode)",
        figure=f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms",
        target="p99 < 100 ms",
        met=p99 < TARGET_SECONDS,
        details={"samples": samples, **summary},
    )


def run(quick: bool) -> list[Result]:
    samples = 50 if quick else 500
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        local = asyncio.run(_local(samples, base / "local"))
        server = NatsServerProcess(base / "js")
        server.start()
        try:
            remote = asyncio.run(_nats(samples, server.url, base / "nats"))
        finally:
            server.stop()
    return [_result("local store", local, samples), _result("NATS JetStream", remote, samples)]
