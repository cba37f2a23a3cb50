"""Events to NATS through the spool: exact CloudEvents, in order, none lost across an outage."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.js.api import StreamConfig

from tests.agent.test_store import LAMP, write
from tests.natsserver import NatsServer

OUTAGE_EVENTS = int(os.environ.get("OUTAGE_EVENTS", "10000"))
OUTAGE_SECONDS = float(os.environ.get("OUTAGE_SECONDS", "30"))


async def subscriber(url: str, subject: str = "choria.machine.>") -> tuple[Any, list[Any]]:
    client = await nats.connect(url)
    received: list[Any] = []

    async def handler(message: Any) -> None:
        received.append(message)

    await client.subscribe(subject, cb=handler)
    await client.flush()
    return client, received


async def test_transitions_and_watcher_states_reach_nats_as_choria_cloudevents(
    agent_factory: Any, nats_server: NatsServer
) -> None:
    client, received = await subscriber(nats_server.url)
    try:
        async with agent_factory(**{"nats.servers": nats_server.url}) as run:
            await run.wait(lambda: run.agent.broker.is_connected, what="connected")
            write(run.store, "lamp", LAMP.format(name="lamp"))
            await run.wait(lambda: run.entry_status("lamp") == "running")
            await run.http.post(
                "/api/v1/machines/lamp/transition", json={"transition": "switch_on"}
            )
            await run.wait(lambda: len(received) >= 2, what="transition and exec state on NATS")
            health = await run.http.get("/api/v1/agent")
            assert health.json()["nats"]["state"] == "connected"
        by_subject = {m.subject: m for m in received}
        transition = by_subject["choria.machine.transition"]
        event = json.loads(transition.data)
        assert list(event) == [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "datacontenttype",
            "time",
            "data",
        ]
        assert event["type"] == "io.choria.machine.v1.transition"
        assert event["subject"] == "agent.example.net"
        assert event["data"]["transition"] == "switch_on"
        assert transition.headers["Nats-Msg-Id"] == event["id"]
        state = json.loads(by_subject["choria.machine.watcher.exec.state"].data)
        assert state["type"] == "io.choria.machine.watcher.exec.v1.state"
    finally:
        await client.close()


async def test_agent_runs_the_same_without_its_broker(agent_factory: Any, tmp_path: Path) -> None:
    dead = NatsServer(tmp_path / "dead")  # never started
    async with agent_factory(**{"nats.servers": dead.url}) as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        ok = await run.http.post(
            "/api/v1/machines/lamp/transition", json={"transition": "switch_on"}
        )
        assert ok.status_code == 200
        assert run.agent.broker.state.value == "connecting"
        await run.wait(
            lambda: run.agent.spool is not None and run.agent.spool.depth >= 1, what="spooled"
        )


async def test_no_event_lost_or_duplicated_across_a_broker_outage(
    agent_factory: Any, nats_server: NatsServer
) -> None:
    # Events are kept by a JetStream stream, as on Choria's brokers.
    admin = await nats.connect(nats_server.url)
    js = admin.jetstream()
    await js.add_stream(
        StreamConfig(name="CHORIA_MACHINE", subjects=["choria.machine.>"], duplicate_window=300)
    )
    await admin.close()
    async with agent_factory(**{"nats.servers": nats_server.url}) as run:
        await run.wait(lambda: run.agent.broker.is_connected, what="connected")
        write(run.store, "lamp", LAMP.format(name="lamp").replace("interval: 1m", "interval: 1h"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        machine = run.agent.store.find("lamp").machine
        nats_server.stop()
        down_since = asyncio.get_running_loop().time()
        await run.wait(lambda: not run.agent.broker.is_connected, what="disconnect")
        for i in range(OUTAGE_EVENTS // 2):
            await machine.transition("switch_on")
            await machine.transition("switch_off")
            if i % 500 == 0:
                await asyncio.sleep(0)
        await run.wait(
            lambda: run.agent.spool.depth >= OUTAGE_EVENTS, timeout=60, what="all spooled"
        )
        remaining = OUTAGE_SECONDS - (asyncio.get_running_loop().time() - down_since)
        if remaining > 0:
            await asyncio.sleep(remaining)  # the broker stays down this long, whatever happens
        nats_server.start()
        await run.wait(lambda: run.agent.spool.depth == 0, timeout=120, what="spool drained")
    admin = await nats.connect(nats_server.url)
    try:
        js = admin.jetstream()
        transitions = []
        consumer = await js.pull_subscribe("choria.machine.transition", durable="check")
        while True:
            try:
                batch = await consumer.fetch(1000, timeout=2)
            except TimeoutError:  # nats-py raises its own subclass, or asyncio's, when done
                break
            for message in batch:
                transitions.append(json.loads(message.data))
                await message.ack()
    finally:
        await admin.close()
    ids = [t["id"] for t in transitions]
    assert len(ids) == len(set(ids)), "an event arrived twice"
    names = [t["data"]["transition"] for t in transitions if t["data"]["machine"] == "lamp"]
    assert len(names) >= OUTAGE_EVENTS
    # In order: the outage's switch_on/switch_off pairs alternate exactly.
    tail = names[-OUTAGE_EVENTS:]
    assert tail == ["switch_on", "switch_off"] * (OUTAGE_EVENTS // 2)


async def test_a_full_spool_drops_the_oldest_and_says_so(
    agent_factory: Any, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "late")  # started once the spool has overflowed
    async with agent_factory(**{"nats.servers": server.url, "spool.max_events": 40}) as run:
        write(run.store, "lamp", LAMP.format(name="lamp").replace("interval: 1m", "interval: 1h"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        machine = run.agent.store.find("lamp").machine
        for _ in range(50):
            await machine.transition("switch_on")
            await machine.transition("switch_off")
        spool = run.agent.spool
        await run.wait(lambda: spool.dropped > 0, what="oldest events dropped")
        metrics = (await run.http.get("/metrics")).text
        assert f"machinery_spool_dropped_total {float(spool.dropped)}" in metrics
        server.start()
        try:
            client, received = await subscriber(server.url, ">")
            try:
                await run.wait(lambda: spool.depth == 0, timeout=30, what="spool drained")
                await run.wait(
                    lambda: any(m.subject == "machinery.agent.spool_dropped" for m in received),
                    what="the drop warning on NATS",
                )
            finally:
                await client.close()
        finally:
            server.stop()
    warnings = [
        json.loads(m.data) for m in received if m.subject == "machinery.agent.spool_dropped"
    ]
    assert warnings[0]["type"] == "io.machinery.agent.v1.spool_dropped"
    assert warnings[0]["data"]["identity"] == "agent.example.net"
    assert sum(w["data"]["dropped"] for w in warnings) == warnings[-1]["data"]["dropped_total"]
    # What survived is the newest events, still in order: the last transition is the last one.
    transitions = [
        json.loads(m.data)["data"]["transition"]
        for m in received
        if m.subject == "choria.machine.transition"
    ]
    assert 0 < len(transitions) <= 40
    assert transitions[-1] == "switch_off"
    assert all(a != b for a, b in itertools.pairwise(transitions))
