"""The gossip watcher against a real nats-server: messages, registrations, per-message TTLs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from machinery.agent.config import NatsSettings
from machinery.core.clock import FakeClock
from machinery.core.machine import Machine
from machinery.nats.connection import BrokerConnection
from machinery.watchers.gossip import (
    NEVER,
    GossipRegistration,
    GossipWatcher,
    invalid_subject,
    registration_payload,
    registration_subject,
)
from machinery.watchers.registry import check_manifest
from tests.natsserver import NatsServer
from tests.support import Recorder, make_machine, running, wait_until, write_machine

MACHINE = """\
name: svc
version: 1.0.0
initial_state: running
transitions:
  - name: stop
    from: [running]
    destination: stopped
  - name: start
    from: [stopped]
    destination: running
watchers:
  - name: announce
    type: gossip
    state_match: [running]
{interval}    properties:
{properties}
"""

SIMPLE = """\
subject: "services.{{ lookup \\"facts.site\\" }}.web"
payload: '{"host": "{{ .identity }}"}'
"""


def machine_dir(tmp_path: Path, properties: str = SIMPLE, interval: str | None = "30s") -> Path:
    body = "\n".join("      " + line for line in properties.strip().splitlines())
    line = f"    interval: {interval}\n" if interval else ""
    return write_machine(tmp_path / "svc", MACHINE.format(interval=line, properties=body))


@contextlib.asynccontextmanager
async def broker_for(server: NatsServer) -> AsyncIterator[BrokerConnection]:
    broker = BrokerConnection(NatsSettings(servers=[server.url]), name="test")
    task = asyncio.ensure_future(broker.run())
    try:
        assert await broker.wait_connected(10)
        yield broker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Inbox:
    """A real subscriber collecting every message on a subject."""

    def __init__(self) -> None:
        self.messages: list[Msg] = []

    async def receive(self, msg: Msg) -> None:
        self.messages.append(msg)


@contextlib.asynccontextmanager
async def subscriber(server: NatsServer, subject: str) -> AsyncIterator[Inbox]:
    client = await nats.connect(server.url)
    inbox = Inbox()
    try:
        await client.subscribe(subject, cb=inbox.receive)
        await client.flush()
        yield inbox
    finally:
        await client.close()


def gossip_machine(
    directory: Path, broker: BrokerConnection | None, clock: FakeClock, **options: Any
) -> Machine:
    machine = make_machine(
        directory, clock=clock, facts={"site": "lon"}, identity="web1.example.net", **options
    )
    if broker is not None:
        machine.node.provide("nats", broker)
    return machine


async def test_publishes_at_once_then_every_interval(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    clock = FakeClock()
    recorder = Recorder()
    async with (
        broker_for(nats_server) as broker,
        subscriber(nats_server, "services.>") as inbox,
    ):
        machine = gossip_machine(machine_dir(tmp_path), broker, clock, recorder=recorder)
        async with running(machine):
            await wait_until(lambda: len(inbox.messages) == 1)
            msg = inbox.messages[0]
            assert msg.subject == "services.lon.web"
            assert json.loads(msg.data) == {"host": "web1.example.net"}
            assert not msg.headers  # no TTL asked for
            await clock.advance(29)
            await asyncio.sleep(0.1)
            assert len(inbox.messages) == 1
            await clock.advance(1)
            await wait_until(lambda: len(inbox.messages) == 2)
            await clock.advance(60)
            await wait_until(lambda: len(inbox.messages) == 4)
            watcher = machine.watchers[0]
            assert isinstance(watcher, GossipWatcher)
            state = watcher.current_state()
            assert state.payload["previous_subject"] == "services.lon.web"
            assert state.payload["previous_payload"] == '{"host": "web1.example.net"}'
            assert state.payload["previous_gossip"] == int(clock.now())
            assert list(state.payload)[-3:] == [
                "previous_subject",
                "previous_payload",
                "previous_gossip",
            ]
            assert state.text == (
                f"web1.example.net svc#announce subject: services.lon.web, previous: "
                f"{int(clock.now())}"
            )
            assert watcher.status.outcomes == {"published": 4}
    # It never fires transitions and never publishes its state by itself.
    assert recorder.events == []


async def test_stops_outside_its_states_and_starts_again(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    clock = FakeClock()
    async with (
        broker_for(nats_server) as broker,
        subscriber(nats_server, "services.>") as inbox,
    ):
        machine = gossip_machine(machine_dir(tmp_path), broker, clock)
        async with running(machine):
            await wait_until(lambda: len(inbox.messages) == 1)
            await machine.transition("stop")
            await clock.settle()
            watcher = machine.watchers[0]
            assert isinstance(watcher, GossipWatcher)
            assert not watcher.gossiping
            await clock.advance(300)
            await asyncio.sleep(0.1)
            assert len(inbox.messages) == 1
            await machine.transition("start")
            await wait_until(lambda: len(inbox.messages) == 2)  # at once on entering
            assert watcher.gossiping
            await clock.advance(30)
            await wait_until(lambda: len(inbox.messages) == 3)


async def test_templates_are_rendered_for_every_message(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    properties = 'subject: "load"\npayload: "{{ lookup \\"data.load\\" 0 }}"'
    clock = FakeClock()
    async with broker_for(nats_server) as broker, subscriber(nats_server, "load") as inbox:
        machine = gossip_machine(machine_dir(tmp_path, properties), broker, clock)
        async with running(machine):
            await wait_until(lambda: len(inbox.messages) == 1)
            machine.data.put("load", 7)
            await clock.advance(30)
            await wait_until(lambda: len(inbox.messages) == 2)
    assert [m.data for m in inbox.messages] == [b"0", b"7"]


async def test_ttl_sends_the_header_nats_honours(tmp_path: Path, nats_server: NatsServer) -> None:
    properties = SIMPLE + "ttl_seconds: 30"
    clock = FakeClock()
    async with broker_for(nats_server) as broker, subscriber(nats_server, "services.>") as inbox:
        machine = gossip_machine(machine_dir(tmp_path, properties), broker, clock)
        async with running(machine):
            await wait_until(lambda: len(inbox.messages) == 1)
    assert inbox.messages[0].headers == {"Nats-TTL": "30s"}


async def test_registration_expires_from_a_kv_bucket(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    properties = """\
registration:
  Cluster: prod
  service: web
  protocol: http
  ip: 192.0.2.10
  port: 8080
  priority: 5
  annotations:
    zone: a
    rack: "7"
ttl_seconds: 1
"""
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        # A KV bucket as nats-py (and machinery kv add) create them: per-message TTLs allowed.
        kv = await js.create_key_value(bucket="CHORIA_SERVICES")
        info = await js.stream_info("KV_CHORIA_SERVICES")
        assert info.config.allow_msg_ttl is True
        clock = FakeClock()
        async with broker_for(nats_server) as broker:
            machine = gossip_machine(
                machine_dir(tmp_path, properties, interval="1h"), broker, clock
            )
            key = f"prod.http.web.{machine.instance_id}"
            async with running(machine):
                entry = None

                async def stored() -> Any:
                    with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                        return await kv.get(key)
                    return None

                for _ in range(200):
                    entry = await stored()
                    if entry is not None:
                        break
                    await asyncio.sleep(0.02)
                assert entry is not None, "the registration was not stored"
                assert json.loads(entry.value) == {
                    "cluster": "prod",
                    "service": "web",
                    "protocol": "http",
                    "address": "192.0.2.10",
                    "port": 8080,
                    "priority": 5,
                    "annotations": {"rack": "7", "zone": "a"},
                }
                raw = await js.get_msg("KV_CHORIA_SERVICES", subject=f"$KV.CHORIA_SERVICES.{key}")
                assert raw.headers is not None and raw.headers.get("Nats-TTL") == "1s"
                # The server honours the TTL: the registration expires by itself.
                for _ in range(250):
                    if await stored() is None:
                        break
                    await asyncio.sleep(0.02)
                assert await stored() is None, "the registration did not expire"
    finally:
        await client.close()


async def test_choria_ttl_header_is_ignored_by_nats(nats_server: NatsServer) -> None:
    # Why machinery sends Nats-TTL: the server ignores Choria's Nats-TTLSeconds, so Choria's
    # registrations never expire.
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        kv = await js.create_key_value(bucket="TTLS")
        # Acknowledged publishes: both are stored before the checks below.
        await js.publish("$KV.TTLS.choria", b"1", headers={"Nats-TTLSeconds": "1s"})
        await js.publish("$KV.TTLS.machinery", b"1", headers={"Nats-TTL": "1s"})

        async def exists(key: str) -> bool:
            try:
                await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return False
            return True

        assert await exists("choria") and await exists("machinery")
        for _ in range(250):
            if not await exists("machinery"):
                break
            await asyncio.sleep(0.02)
        assert not await exists("machinery")
        assert await exists("choria")
    finally:
        await client.close()


async def test_registration_with_prefix(tmp_path: Path, nats_server: NatsServer) -> None:
    properties = """\
registration:
  cluster: prod
  service: db
  protocol: tcp
  ip: "2001:db8::1"
  port: 5432
  prefix: registry.services
"""
    clock = FakeClock()
    async with broker_for(nats_server) as broker, subscriber(nats_server, "registry.>") as inbox:
        machine = gossip_machine(machine_dir(tmp_path, properties), broker, clock)
        async with running(machine):
            await wait_until(lambda: len(inbox.messages) == 1)
    msg = inbox.messages[0]
    assert msg.subject == f"registry.services.prod.tcp.db.{machine.instance_id}"
    assert msg.data == (
        b'{"cluster":"prod","service":"db","protocol":"tcp","address":"2001:db8::1",'
        b'"port":5432,"priority":0}'
    )


async def test_without_a_broker_it_logs_and_skips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="machinery")
    clock = FakeClock()
    machine = gossip_machine(machine_dir(tmp_path), None, clock)
    async with running(machine):
        await clock.advance(60)
        watcher = machine.watchers[0]
        assert watcher.status.outcomes == {"skipped": 3}
        assert machine.state == "running"
    assert caplog.text.count("gossip needs a NATS connection") == 1
    payload = watcher.current_state().payload
    assert payload["previous_gossip"] == NEVER
    assert payload["previous_subject"] == ""


async def test_a_lost_broker_skips_until_it_is_back(
    tmp_path: Path, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="machinery")
    clock = FakeClock()
    async with broker_for(nats_server) as broker:
        machine = gossip_machine(machine_dir(tmp_path), broker, clock)
        async with running(machine):
            watcher = machine.watchers[0]
            await wait_until(lambda: watcher.status.outcomes.get("published") == 1)
            nats_server.stop()
            await wait_until(lambda: not broker.is_connected)
            await clock.advance(30)
            await wait_until(lambda: watcher.status.outcomes.get("skipped") == 1)
            assert "not connected to NATS" in caplog.text
            nats_server.start()
            assert await broker.wait_connected(15)
            async with subscriber(nats_server, "services.>") as inbox:
                # Core NATS is at-most-once: a message sent while the client is still settling
                # after its reconnection can be lost, so allow a few intervals.
                for _ in range(5):
                    await clock.advance(30)
                    with contextlib.suppress(AssertionError):
                        await wait_until(lambda: bool(inbox.messages), timeout=2)
                        break
                assert inbox.messages
                assert watcher.status.outcomes["published"] >= 2


async def test_a_rendered_subject_that_is_invalid_is_not_published(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    properties = 'subject: "x.{{ lookup \\"data.name\\" \\"\\" }}"\npayload: p'
    clock = FakeClock()
    async with broker_for(nats_server) as broker:
        machine = gossip_machine(machine_dir(tmp_path, properties), broker, clock)
        async with running(machine):
            watcher = machine.watchers[0]
            await wait_until(lambda: watcher.status.outcome == "error")
            assert "empty token" in (watcher.status.last_error or "")


def test_registration_helpers() -> None:
    registration = GossipRegistration(cluster="c", service="s", protocol="p", ip="10.0.0.1", port=1)
    assert registration_subject(registration, "id") == "$KV.CHORIA_SERVICES.c.p.s.id"
    assert json.loads(registration_payload(registration)) == {
        "cluster": "c",
        "service": "s",
        "protocol": "p",
        "address": "10.0.0.1",
        "port": 1,
        "priority": 0,
    }
    assert invalid_subject("a.b") is None
    for bad in ("", "a b", "a.*", "a.>", "a..b", ".a", "a.", "a^b"):
        assert invalid_subject(bad), bad


def errors(tmp_path: Path, properties: str) -> list[str]:
    directory = machine_dir(tmp_path, properties)
    _, diagnostics = check_manifest(directory / "machine.yaml")
    return [d.message for d in diagnostics if d.severity.value == "error"]


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ("payload: x", "subject is required"),
        ("subject: x", "payload is required"),
        ("subject: 'a b'\npayload: x", "invalid subject"),
        ("subject: a..b\npayload: x", "empty token"),
        ("ttl_seconds: -1\nsubject: a\npayload: x", "greater than or equal to 0"),
        (
            "subject: a\nregistration: {cluster: c, service: s, protocol: p, ip: 1.2.3.4, port: 1}",
            "subject cannot be set with registration",
        ),
        ("registration: {service: s, protocol: p, ip: 1.2.3.4, port: 1}", "cluster is required"),
        (
            "registration: {cluster: 1c, service: s, protocol: p, ip: 1.2.3.4, port: 1}",
            "invalid cluster",
        ),
        ("registration: {cluster: c, service: s, protocol: p, ip: 1.2.3, port: 1}", "invalid ip"),
        ("registration: {cluster: c, service: s, protocol: p, ip: 1.2.3.4}", "port is required"),
        (
            "registration: {cluster: c, service: s, protocol: p, ip: 1.2.3.4, port: 70000}",
            "less than or equal",
        ),
        (
            "registration: {cluster: c, service: s, protocol: p, ip: 1.2.3.4, port: 1, prefix: 'a b'}",
            "invalid registration subject",
        ),
    ],
)
def test_definition_checks(tmp_path: Path, properties: str, message: str) -> None:
    found = errors(tmp_path, properties)
    assert any(message in m for m in found), found


def test_an_unknown_registration_key_is_a_warning_as_choria_ignores_it(tmp_path: Path) -> None:
    # Registration keys are matched without regard to case: unknown ones in any case too.
    properties = (
        "registration: {cluster: c, service: s, protocol: p, ip: 1.2.3.4, port: 1, NOPE: 1}"
    )
    directory = machine_dir(tmp_path, properties)
    manifest, diagnostics = check_manifest(directory / "machine.yaml")
    assert manifest is not None, [str(d) for d in diagnostics]
    [warning] = [d for d in manifest.warnings if "unknown" in d.message]
    assert "unknown property 'nope' is ignored" in warning.message
    assert manifest.properties[0].registration.port == 1  # type: ignore[attr-defined]


def test_valid_definitions(tmp_path: Path) -> None:
    assert errors(tmp_path, SIMPLE) == []
    assert errors(tmp_path, 'subject: "a.{{ .identity }}"\npayload: x') == []
    registration = "registration: {cluster: c, service: s, protocol: p, ip: '::1', port: 1}"
    assert errors(tmp_path, registration) == []


def test_default_interval_is_15s(tmp_path: Path) -> None:
    machine = make_machine(machine_dir(tmp_path, interval=None))
    machine.build_watchers()
    assert machine.watchers[0].interval == 15
