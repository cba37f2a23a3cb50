"""Scenario 2: the full pipeline: transition, CloudEvent, JSON-lines file and SQLite history;
and 2b: the same pipeline with the NATS publisher attached to a live broker (a JetStream stream
keeping the events, as on Choria's brokers), against the pipeline without it in the same run."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import StreamConfig

from bench.common import Result
from bench.machines import build
from bench.nats_publish import NatsServerProcess
from machinery.agent.config import NatsSettings
from machinery.agent.spool import EventSpool
from machinery.agent.state import StateDB, StateWriter
from machinery.core.node import Node
from machinery.core.notifications import Notifier
from machinery.events.sinks import JsonLinesNotifier
from machinery.nats.connection import BrokerConnection
from machinery.nats.publisher import EventPublisher

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


async def _measure(count: int, directory: Path, nats_url: str | None = None) -> float:
    """Transitions per second until every sink has everything: the JSON-lines file, the SQLite
    history and, with ``nats_url``, the broker's acknowledgements."""
    db = StateDB(directory / "state")
    writer = StateWriter(db)
    jsonl = JsonLinesNotifier(directory / "events.jsonl")
    notifiers: list[Notifier] = [jsonl, writer]
    publisher: EventPublisher | None = None
    tasks: list[asyncio.Task[None]] = []
    spool: EventSpool | None = None
    if nats_url is not None:
        spool = EventSpool(db.path, writer)
        connection = BrokerConnection(NatsSettings(servers=[nats_url]))
        publisher = EventPublisher(spool, connection)
        notifiers.insert(0, publisher)  # the agent's order: the publisher first
        tasks = [asyncio.create_task(connection.run()), asyncio.create_task(publisher.run())]
        assert await connection.wait_connected(10)
    node = Node(identity="bench", rate_limit=False, notifiers=notifiers)
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
    while publisher is not None and publisher.published < count:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    lines = len((directory / "events.jsonl").read_bytes().splitlines())
    rows = db.count("history")
    assert lines == count, (lines, count)  # every event written
    assert rows >= min(count, 1000), rows  # history recorded (pruned to 1000 per machine)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    writer.close()
    if spool is not None:
        spool.close()
    db.close()
    jsonl.close()
    return count / elapsed


async def _stream(url: str) -> None:
    admin = await nats.connect(url)
    await admin.jetstream().add_stream(
        StreamConfig(name="CHORIA_MACHINE", subjects=["choria.machine.>"], duplicate_window=120)
    )
    await admin.close()


def run(quick: bool) -> list[Result]:
    count = 20_000 if quick else 200_000
    rounds = 1 if quick else 3
    without: list[float] = []
    attached: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        server = NatsServerProcess(base / "js")
        server.start()
        try:
            asyncio.run(_stream(server.url))
            for n in range(rounds):  # interleaved, so both see the same machine load
                without.append(asyncio.run(_measure(count, base / f"plain{n}")))
                attached.append(asyncio.run(_measure(count, base / f"nats{n}", server.url)))
        finally:
            server.stop()
    rate, with_nats = max(without), max(attached)
    ratio = with_nats / rate
    return [
        Result(
            scenario="2. full pipeline transitions/s (event, JSON lines, SQLite history)",
            figure=f"{rate:,.0f}/s",
            target=">= 20,000/s",
            met=rate >= 20_000,
            details={"transitions": count, "per_second": round(rate)},
        ),
        Result(
            scenario="2b. full pipeline with events to NATS (JetStream) vs without",
            figure=f"{ratio:.2f}x ({with_nats:,.0f}/s vs {rate:,.0f}/s)",
            target=">= 0.8x",
            met=ratio >= 0.8 if not quick else None,
            details={
                "transitions": count,
                "with_nats_per_s": round(with_nats),
                "without_per_s": round(rate),
                "rounds": rounds,
            },
        ),
    ]
