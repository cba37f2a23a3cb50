"""The kv watcher: Choria's decision table on both stores, value parsing, watch mode, republish
triggers, broker outages, and an agent driven by ``machinery kv put``.

The machine's clock is fake; the store calls are real I/O (SQLite in a thread, or a real
nats-server), so each step waits, bounded, for the outcomes it expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import api
from typer.testing import CliRunner

from machinery.agent.config import NatsSettings
from machinery.agent.localkv import LocalKV
from machinery.agent.state import StateDB
from machinery.cli.kv import app as kv_app
from machinery.core.clock import FakeClock
from machinery.core.kv import KVStore
from machinery.core.machine import Machine
from machinery.nats.connection import BrokerConnection
from machinery.nats.kv import NatsKV
from machinery.spec.yamlfile import load_yaml
from machinery.watchers.kv import KVWatcher, json_equal, parse_value
from machinery.watchers.registry import check_manifest
from tests.agent.conftest import agent_factory  # noqa: F401  (the fixture, for this module)
from tests.natsserver import NatsServer
from tests.support import CORPUS, Recorder, make_machine, running, wait_until, write_machine


@pytest.fixture(autouse=True)
def _drop_dead_log_handlers() -> None:
    """Other CLI tests leave root handlers writing to CliRunner streams that are closed since;
    a log line through one of them (httpx logs every request) fails the command."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
            root.removeHandler(handler)


MACHINE = """\
name: kvm
version: 1.0.0
initial_state: idle
transitions:
  - name: changed
    from: [idle]
    destination: updated
  - name: ack
    from: [updated]
    destination: idle
  - name: failed
    from: [idle, updated]
    destination: broken
  - name: recover
    from: [broken]
    destination: idle
  - name: pause
    from: [idle, updated]
    destination: paused
  - name: resume
    from: [paused]
    destination: idle
watchers:
  - name: cfg
    type: kv
    state_match: [idle, updated, broken]
    success_transition: changed
    fail_transition: failed
{interval}    properties:
      bucket: CFG
{properties}
"""


def machine_dir(
    tmp_path: Path, properties: str = "key: mode", interval: str | None = "10s"
) -> Path:
    body = "\n".join("      " + line for line in properties.strip().splitlines())
    line = f"    interval: {interval}\n" if interval else ""
    return write_machine(tmp_path / "kvm", MACHINE.format(interval=line, properties=body))


class Backend:
    """A store as the agent provides it: LocalKV, or NatsKV on a BrokerConnection."""

    def __init__(
        self,
        kind: str,
        store: KVStore,
        broker: BrokerConnection | None = None,
        server: NatsServer | None = None,
    ) -> None:
        self.kind = kind
        self.store = store
        self.broker = broker
        self.server = server


@contextlib.asynccontextmanager
async def open_backend(
    kind: str, tmp_path: Path, server: NatsServer | None
) -> AsyncIterator[Backend]:
    if kind == "local":
        db = StateDB(tmp_path / "state")
        store = LocalKV(db.path)
        try:
            yield Backend(kind, store)
        finally:
            store.close()
            db.close()
        return
    assert server is not None
    broker = BrokerConnection(NatsSettings(servers=[server.url]), name="test")
    task = asyncio.ensure_future(broker.run())
    try:
        assert await broker.wait_connected(10)
        yield Backend(kind, NatsKV(broker, timeout=0.5), broker, server)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(params=["local", "nats"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    server = request.getfixturevalue("nats_server") if request.param == "nats" else None
    async with open_backend(request.param, tmp_path, server) as opened:
        yield opened


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend("local", tmp_path, None) as opened:
        yield opened


@pytest.fixture
async def natsbackend(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Backend]:
    async with open_backend("nats", tmp_path, nats_server) as opened:
        yield opened


class Rig:
    """A running kv machine and what it did."""

    def __init__(self, machine: Machine, backend: Backend, clock: FakeClock) -> None:
        self.machine = machine
        self.backend = backend
        self.store = backend.store
        self.clock = clock
        self.watcher = machine.watchers[0]
        assert isinstance(self.watcher, KVWatcher)
        self.outcomes: list[str] = []
        record = self.watcher.record

        def spy(outcome: str, duration: float | None = None) -> None:
            self.outcomes.append(outcome)
            record(outcome, duration)

        self.watcher.record = spy  # type: ignore[method-assign]

    @property
    def data(self) -> dict[str, Any]:
        return self.machine.data.snapshot()

    async def until(self, *expected: str) -> None:
        """Wait for exactly these outcomes so far, then make sure no other follows."""
        try:
            await wait_until(
                lambda: (
                    self.outcomes[: len(expected)] == list(expected)
                    and len(self.outcomes) >= len(expected)
                ),
            )
        except AssertionError:
            raise AssertionError(f"expected {list(expected)}, got {self.outcomes}") from None
        await self.clock.settle()
        await asyncio.sleep(0.05)  # real time for a stray store call to show up
        await self.clock.settle()
        assert self.outcomes == list(expected)

    async def tick(self, seconds: float = 10.0) -> None:
        await self.clock.advance(seconds)


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    backend: Backend,
    properties: str = "key: mode",
    *,
    interval: str | None = "10s",
    data: dict[str, Any] | None = None,
    facts: dict[str, Any] | None = None,
    bucket: bool = True,
    recorder: Recorder | None = None,
) -> AsyncIterator[Rig]:
    directory = machine_dir(tmp_path, properties, interval)
    if data is not None:
        (directory / "machine_data.json").write_text(json.dumps(data))
    if bucket:
        await backend.store.create_bucket("CFG")
    clock = FakeClock()
    machine = make_machine(directory, clock=clock, facts=facts, recorder=recorder or Recorder())
    machine.node.provide("kv", backend.store)
    if backend.broker is not None:
        machine.node.provide("nats", backend.broker)
    machine.build_watchers()
    setup = Rig(machine, backend, clock)
    async with running(machine):
        yield setup


# -- the decision table (spec 3.7, step 7), on both stores --------------------------------------


async def test_missing_key_and_nothing_before_is_unchanged(
    tmp_path: Path, backend: Backend
) -> None:
    recorder = Recorder()
    async with rig(tmp_path, backend, recorder=recorder) as r:
        await r.until("unchanged")  # polled at start
        await r.tick(9)
        await r.until("unchanged")
        await r.tick(1)
        await r.until("unchanged", "unchanged")
        assert r.machine.state == "idle"
        assert r.data == {}
    assert recorder.transitions() == []
    assert recorder.states() == []  # the kv watcher never publishes by itself


async def test_a_new_value_is_stored_and_is_a_change(tmp_path: Path, backend: Backend) -> None:
    recorder = Recorder()
    await backend.store.create_bucket("CFG")
    await backend.store.put("CFG", "mode", b"maintenance")
    async with rig(tmp_path, backend, recorder=recorder) as r:
        # The change fires success_transition; that state change polls again, within the
        # interval, so that poll is skipped.
        await r.until("changed", "skipped")
        assert r.data == {"CFG_mode": "maintenance"}
        assert r.machine.state == "updated"
        await r.tick()
        await r.until("changed", "skipped", "unchanged")
        await r.store.put("CFG", "mode", b"normal")
        await r.tick()
        await r.until("changed", "skipped", "unchanged", "changed")
        assert r.data == {"CFG_mode": "normal"}
        assert r.watcher.previous_state == "changed"
    assert recorder.transitions() == [("changed", "idle", "updated")]
    assert recorder.states() == []
    assert json.loads((tmp_path / "kvm" / "machine_data.json").read_text()) == {
        "CFG_mode": "normal"
    }


async def test_a_deleted_key_is_removed_from_data(tmp_path: Path, backend: Backend) -> None:
    await backend.store.create_bucket("CFG")
    await backend.store.put("CFG", "mode", b"on")
    async with rig(tmp_path, backend) as r:
        await r.until("changed", "skipped")
        await r.machine.transition("ack")
        await r.until("changed", "skipped", "skipped")
        await r.store.delete("CFG", "mode")
        await r.tick()
        await r.until("changed", "skipped", "skipped", "changed", "skipped")
        assert r.data == {}
        assert r.machine.state == "updated"
        await r.tick()
        await r.until("changed", "skipped", "skipped", "changed", "skipped", "unchanged")


async def test_a_value_left_in_machine_data_is_the_previous_value(
    tmp_path: Path, backend: Backend
) -> None:
    await backend.store.create_bucket("CFG")
    await backend.store.put("CFG", "mode", b"on")
    async with rig(tmp_path, backend, data={"CFG_mode": "on"}) as r:
        await r.until("unchanged")
        assert r.machine.state == "idle"


async def test_a_missing_key_with_a_previous_value_is_a_deletion(
    tmp_path: Path, backend: Backend
) -> None:
    async with rig(tmp_path, backend, data={"CFG_mode": "on", "other": 1}) as r:
        await r.until("changed", "skipped")
        assert r.data == {"other": 1}
        assert r.machine.state == "updated"


async def test_a_failing_get_is_an_error(tmp_path: Path, backend: Backend) -> None:
    recorder = Recorder()
    async with rig(tmp_path, backend, bucket=False, recorder=recorder) as r:
        # The bucket does not exist. Until a get works, every poll tries (Choria binds the
        # bucket before its rate limit), so the state change into broken polls again.
        await r.until("error", "error")
        assert r.machine.state == "broken"
        assert "CFG" in (r.watcher.status.last_error or "")
        await r.store.create_bucket("CFG")
        await r.store.put("CFG", "mode", b"on")
        await r.machine.transition("recover")
        await r.until("error", "error", "changed", "skipped")
        assert r.machine.state == "updated"
        assert r.watcher.status.last_error is None
    assert recorder.transitions() == [
        ("failed", "idle", "broken"),
        ("recover", "broken", "idle"),
        ("changed", "idle", "updated"),
    ]


async def test_same_value_new_revision_with_on_matching_update(
    tmp_path: Path, backend: Backend
) -> None:
    await backend.store.create_bucket("CFG")
    await backend.store.put("CFG", "mode", b"on")
    async with rig(tmp_path, backend, "key: mode\non_matching_update: true") as r:
        await r.until("changed", "skipped")
        await r.store.put("CFG", "mode", b"on")  # same value, newer revision
        await r.tick()
        await r.until("changed", "skipped", "changed")
        await r.tick()  # no new revision
        await r.until("changed", "skipped", "changed", "unchanged")


async def test_same_value_new_revision_without_on_matching_update(
    tmp_path: Path, backend: Backend
) -> None:
    await backend.store.create_bucket("CFG")
    await backend.store.put("CFG", "mode", b"on")
    async with rig(tmp_path, backend) as r:
        await r.until("changed", "skipped")
        await r.store.put("CFG", "mode", b"on")
        await r.tick()
        await r.until("changed", "skipped", "unchanged")


async def test_on_matching_update_ignores_the_first_revision_seen(
    tmp_path: Path, backend: Backend
) -> None:
    await backend.store.create_bucket("CFG")
    await backend.store.put("CFG", "mode", b"on")
    await backend.store.put("CFG", "mode", b"on")
    properties = "key: mode\non_matching_update: true"
    async with rig(tmp_path, backend, properties, data={"CFG_mode": "on"}) as r:
        await r.until("unchanged")  # known value, first revision seen
        await r.store.put("CFG", "mode", b"on")
        await r.tick()
        await r.until("unchanged", "changed", "skipped")


async def test_on_successful_get_makes_every_get_a_change(tmp_path: Path, backend: Backend) -> None:
    await backend.store.create_bucket("CFG")
    await backend.store.put("CFG", "mode", b"on")
    properties = "key: mode\non_successful_get: true"
    async with rig(tmp_path, backend, properties, data={"CFG_mode": "on"}) as r:
        await r.until("changed", "skipped")
        await r.tick()
        await r.until("changed", "skipped", "changed")
        await r.store.delete("CFG", "mode")
        await r.tick()
        await r.until("changed", "skipped", "changed", "changed")  # the deletion
        await r.tick()
        await r.until("changed", "skipped", "changed", "changed", "unchanged")  # no key: no get


async def test_inactive_watcher_skips_and_catches_up(tmp_path: Path, backend: Backend) -> None:
    async with rig(tmp_path, backend) as r:
        await r.until("unchanged")
        await r.machine.transition("pause")
        await r.until("unchanged", "skipped")
        await r.store.put("CFG", "mode", b"on")
        await r.tick()
        await r.until("unchanged", "skipped", "skipped")
        assert r.data == {}
        await r.machine.transition("resume")
        await r.until("unchanged", "skipped", "skipped", "changed", "skipped")
        assert r.data == {"CFG_mode": "on"}


async def test_polls_are_rate_limited_to_the_interval(tmp_path: Path, backend: Backend) -> None:
    async with rig(tmp_path, backend) as r:
        await r.until("unchanged")
        await r.tick(4)
        await r.machine.transition("pause")  # inactive: skipped without touching the store
        await r.clock.settle()
        await r.machine.transition("resume")  # 4s after the last poll: rate limited
        await r.until("unchanged", "skipped", "skipped")
        await r.tick(5.4)  # 9.4s rounds to 9s: still rate limited
        await r.machine.transition("pause")
        await r.clock.settle()
        await r.machine.transition("resume")
        await r.until("unchanged", "skipped", "skipped", "skipped", "skipped")
        await r.tick(0.6)  # the 10s tick
        await r.until("unchanged", "skipped", "skipped", "skipped", "skipped", "unchanged")


# -- values -------------------------------------------------------------------------------------


async def test_values_are_parsed_and_compared_deeply(tmp_path: Path, local: Backend) -> None:
    store = local.store
    async with rig(tmp_path, local) as r:
        await r.until("unchanged")
        steps: list[tuple[bytes, Any, str]] = [
            (b' {"a": 1, "b": [true, null]} ', {"a": 1, "b": [True, None]}, "changed"),
            (b'{"b": [true, null], "a": 1.0}', {"a": 1, "b": [True, None]}, "unchanged"),
            (b'{"a": true, "b": [true, null]}', {"a": True, "b": [True, None]}, "changed"),
            (b"[1, 2]", [1, 2], "changed"),
            (b"[1, 2", "[1, 2", "changed"),  # not [...]: the raw text
            (b"  hello \n", "  hello \n", "changed"),  # raw text is not trimmed
            (b"{broken}", {}, "changed"),  # unparseable object: empty, with a warning
            (b"[broken]", [], "changed"),
            (b"", "", "changed"),
        ]
        expected = ["unchanged"]
        for raw, value, outcome in steps:
            await store.put("CFG", "mode", raw)
            await r.tick()
            expected.append(outcome)
            if expected.count("changed") == 1 and outcome == "changed":
                expected.append("skipped")  # the first change's transition polls again
            await r.until(*expected)
            assert r.data["CFG_mode"] == value, raw


def test_parse_value_rules() -> None:
    warnings: list[str] = []
    assert parse_value(b"{nope}", warn=warnings.append) == {}
    assert parse_value(b'{"x": NaN}', warn=warnings.append) == {}
    assert len(warnings) == 2 and "unmarshal failed" in warnings[0]
    assert parse_value(b'"quoted"') == '"quoted"'
    assert parse_value(b"42") == "42"  # numbers stay text, as in Choria
    assert parse_value(b"\xff{") == "\ufffd{"
    assert parse_value(b'{"web": {"port": 80}}', query="web.port") == 80
    assert parse_value(b'{"web": {}}', query="web.port") == '{"web": {}}'
    assert parse_value(b"[1]", query="0") == [1]  # query applies to objects only


def test_json_equality_is_typed_like_go() -> None:
    assert json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not json_equal(True, 1)
    assert not json_equal({"a": False}, {"a": 0})
    assert not json_equal([1], [1, 1])
    assert not json_equal({"a": 1}, {"b": 1})
    assert not json_equal(None, "")
    assert json_equal(None, None)
    assert not json_equal("1", 1)


async def test_hiera_resolves_objects_against_the_facts(tmp_path: Path, local: Backend) -> None:
    document = {
        "hierarchy": {"order": ["fqdn:{{ lookup('facts.networking.fqdn') }}"]},
        "data": {"port": 8080, "tls": False},
        "overrides": {"fqdn:web1.example.net": {"port": 8081}},
    }
    await local.store.create_bucket("CFG")
    await local.store.put("CFG", "config", json.dumps(document).encode())
    facts = {"networking": {"fqdn": "web1.example.net"}}
    properties = "key: config\nhiera_config: true\nquery: port"
    async with rig(tmp_path, local, properties, facts=facts) as r:
        await r.until("changed", "skipped")
        assert r.data == {"CFG_config": 8081}
        await r.store.put("CFG", "config", b"[1, 2]")
        await r.tick()
        await r.until("changed", "skipped", "error", "skipped")
        assert "hiera config not supported for arrays" in (r.watcher.status.last_error or "")
        assert r.machine.state == "broken"


async def test_hiera_without_query_stores_the_resolved_data(tmp_path: Path, local: Backend) -> None:
    document = {
        "hierarchy": {"order": ["{{ facts.role }}"]},
        "data": {"a": 1},
        "overrides": {"web": {"a": 2, "b": 3}},
    }
    await local.store.create_bucket("CFG")
    await local.store.put("CFG", "config", json.dumps(document).encode())
    async with rig(tmp_path, local, "key: config\nhiera_config: true", facts={"role": "web"}) as r:
        await r.until("changed", "skipped")
        assert r.data == {"CFG_config": {"a": 2, "b": 3}}


async def test_a_broken_hiera_document_is_an_error(tmp_path: Path, local: Backend) -> None:
    await local.store.create_bucket("CFG")
    await local.store.put("CFG", "config", b'{"hierarchy": {"order": ["{{ lookup( }}"]}}')
    async with rig(tmp_path, local, "key: config\nhiera_config: true") as r:
        await r.until("error", "skipped")  # bound: the state change poll is rate limited
        assert r.data == {}


async def test_data_key_naming(tmp_path: Path, local: Backend) -> None:
    await local.store.create_bucket("CFG")
    await local.store.put("CFG", "web1.port", b"80")
    properties = (
        'key: "{{ lookup \\"facts.host\\" }}.port"\n'
        "bucket_prefix: false\n"
        'store_key: "port_{{ lookup \\"facts.site\\" }}"'
    )
    async with rig(tmp_path, local, properties, facts={"site": "lon", "host": "web1"}) as r:
        await r.until("changed", "skipped")
        assert r.data == {"port_lon": "80"}


async def test_bucket_prefix_with_store_key(tmp_path: Path, local: Backend) -> None:
    await local.store.create_bucket("CFG")
    await local.store.put("CFG", "mode", b"x")
    async with rig(tmp_path, local, "key: mode\nstore_key: current") as r:
        await r.until("changed", "skipped")
        assert r.data == {"CFG_current": "x"}


async def test_without_a_store_every_poll_is_an_error(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path)
    clock = FakeClock()
    machine = make_machine(directory, clock=clock)
    async with running(machine):
        await clock.settle()
        watcher = machine.watchers[0]
        assert watcher.status.outcome == "error"
        assert "no key-value store" in (watcher.status.last_error or "")
        assert machine.state == "broken"


# -- watch mode ---------------------------------------------------------------------------------


async def test_watch_mode_reacts_to_pushed_changes_without_ticks(
    tmp_path: Path, backend: Backend
) -> None:
    await backend.store.create_bucket("CFG")
    await backend.store.put("CFG", "mode", b"a")
    async with rig(tmp_path, backend, "key: mode\nmode: watch", interval=None) as r:
        await r.until("changed", "unchanged")  # read at start; the state change reads again
        assert r.clock.pending() == 0  # no interval: nothing is scheduled at all
        await r.machine.transition("ack")
        await r.until("changed", "unchanged", "unchanged")
        before = r.clock.monotonic()
        await r.store.put("CFG", "mode", b"b")
        await r.until("changed", "unchanged", "unchanged", "changed", "unchanged")
        assert r.data == {"CFG_mode": "b"}
        await r.machine.transition("ack")
        await r.until("changed", "unchanged", "unchanged", "changed", "unchanged", "unchanged")
        await r.store.delete("CFG", "mode")
        await r.until(
            "changed",
            "unchanged",
            "unchanged",
            "changed",
            "unchanged",
            "unchanged",
            "changed",
            "unchanged",
        )
        assert r.data == {}
        assert r.clock.monotonic() == before  # the fake clock never moved


async def test_watch_mode_skips_while_inactive_and_catches_up(
    tmp_path: Path, backend: Backend
) -> None:
    async with rig(tmp_path, backend, "key: mode\nmode: watch", interval=None) as r:
        await r.until("unchanged")
        await r.machine.transition("pause")
        await r.until("unchanged", "skipped")
        await r.store.put("CFG", "mode", b"x")
        await r.until("unchanged", "skipped", "skipped")  # pushed, but inactive
        await r.machine.transition("resume")
        await r.until("unchanged", "skipped", "skipped", "changed", "unchanged")
        assert r.data == {"CFG_mode": "x"}


async def test_watch_mode_interval_is_a_safety_net(tmp_path: Path, local: Backend) -> None:
    async with rig(tmp_path, local, "key: mode\nmode: watch", interval="1m") as r:
        await r.until("unchanged")
        await r.tick(60)
        await r.until("unchanged", "unchanged")


async def test_watch_mode_follows_a_templated_key(tmp_path: Path, local: Backend) -> None:
    properties = 'key: "{{ lookup \\"data.which\\" \\"a\\" }}"\nmode: watch'
    async with rig(tmp_path, local, properties, interval=None) as r:
        await r.until("unchanged")
        r.machine.data.put("which", "b")
        await r.machine.transition("pause")
        await r.clock.settle()
        await r.machine.transition("resume")  # the state change renders the key again
        await r.until("unchanged", "skipped", "unchanged")
        await r.store.put("CFG", "a", b"ignored")
        await r.store.put("CFG", "b", b"seen")
        await r.until("unchanged", "skipped", "unchanged", "changed", "unchanged")
        assert r.data == {"which": "b", "CFG_b": "seen"}


# -- the broker going away ----------------------------------------------------------------------


async def test_poll_mode_survives_a_broker_outage(tmp_path: Path, natsbackend: Backend) -> None:
    server, broker = natsbackend.server, natsbackend.broker
    assert server is not None and broker is not None
    await natsbackend.store.create_bucket("CFG")
    await natsbackend.store.put("CFG", "mode", b"on")
    async with rig(tmp_path, natsbackend) as r:
        await r.until("changed", "skipped")
        await r.machine.transition("ack")
        await r.until("changed", "skipped", "skipped")
        server.stop()
        await wait_until(lambda: not broker.is_connected, what="disconnected")
        await r.tick()
        await r.until("changed", "skipped", "skipped", "error", "skipped")
        assert r.machine.state == "broken"
        assert "not connected" in (r.watcher.status.last_error or "")
        server.start()
        assert await broker.wait_connected(15)
        await r.store.put("CFG", "mode", b"off")
        await r.machine.transition("recover")
        await r.tick()
        await r.until(
            "changed", "skipped", "skipped", "error", "skipped", "skipped", "changed", "skipped"
        )
        assert r.data == {"CFG_mode": "off"}
        assert r.machine.state == "updated"


async def test_watch_mode_survives_a_broker_outage(tmp_path: Path, natsbackend: Backend) -> None:
    server, broker = natsbackend.server, natsbackend.broker
    assert server is not None and broker is not None
    async with rig(tmp_path, natsbackend, "key: mode\nmode: watch", interval=None) as r:
        await r.until("unchanged")
        server.stop()
        await wait_until(lambda: "error" in r.outcomes, what=f"an error, got {r.outcomes}")
        assert r.machine.state == "broken"
        server.start()
        assert await broker.wait_connected(15)
        await r.machine.transition("recover")
        # The watch retries on the machine's clock.
        for _ in range(6):
            await r.tick(30)
        await r.store.put("CFG", "mode", b"back")
        await wait_until(lambda: r.data == {"CFG_mode": "back"}, what=f"data, got {r.data}")
        assert r.machine.state == "updated"


# -- republish triggers -------------------------------------------------------------------------


async def republish(server: NatsServer) -> None:
    """Republish the CFG bucket's messages to repub.KV.CFG.<key>, as Choria's docs show."""
    client = await nats.connect(server.url)
    try:
        js = client.jetstream()
        info = await js.stream_info("KV_CFG")
        config = info.config
        config.republish = api.RePublish(src="$KV.CFG.>", dest="repub.KV.CFG.>")
        await js.update_stream(config)
    finally:
        await client.close()


async def test_republish_trigger_evaluates_immediately(
    tmp_path: Path, natsbackend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="machinery")
    assert natsbackend.server is not None
    await natsbackend.store.create_bucket("CFG")
    await republish(natsbackend.server)
    properties = "key: mode\nrepublish_trigger: repub.KV.CFG.mode"
    async with rig(tmp_path, natsbackend, properties, interval="1h") as r:
        await r.until("unchanged")
        await wait_until(lambda: r.watcher.republish_subject == "repub.KV.CFG.mode")
        await r.store.put("CFG", "mode", b"on")
        await r.until("unchanged", "changed", "skipped")
        assert r.data == {"CFG_mode": "on"}
        await r.machine.transition("ack")
        await r.until("unchanged", "changed", "skipped", "skipped")
        await r.store.delete("CFG", "mode")
        await r.until("unchanged", "changed", "skipped", "skipped", "changed", "skipped")
        assert r.data == {}
        # A message that was not republished by a stream is ignored with a warning.
        client = await nats.connect(natsbackend.server.url)
        try:
            await client.publish("repub.KV.CFG.mode", b"forged")
            await client.flush()
        finally:
            await client.close()
        await wait_until(lambda: "non republished message" in caplog.text)
        await r.until("unchanged", "changed", "skipped", "skipped", "changed", "skipped")
        assert r.clock.monotonic() == 0


async def test_republished_message_for_another_key_is_an_error(
    tmp_path: Path, natsbackend: Backend
) -> None:
    assert natsbackend.server is not None
    await natsbackend.store.create_bucket("CFG")
    properties = "key: mode\nrepublish_trigger: repub.KV.CFG.>"
    async with rig(tmp_path, natsbackend, properties, interval="1h") as r:
        await r.until("unchanged")
        await wait_until(lambda: r.watcher.republish_subject is not None)
        headers = {
            "Nats-Stream": "KV_CFG",
            "Nats-Subject": "$KV.CFG.other",
            "Nats-Sequence": "7",
            "Nats-Time-Stamp": "2026-01-01T00:00:00Z",
            "Nats-Last-Sequence": "0",
        }
        client = await nats.connect(natsbackend.server.url)
        try:
            await client.publish("repub.KV.CFG.other", b"x", headers=headers)
            await client.publish("repub.KV.CFG.mode", b"by hand", headers=headers)
            await client.flush()
        finally:
            await client.close()
        # other: an error (moving to broken); mode: a change, but not valid from broken.
        await wait_until(lambda: len(r.outcomes) >= 4, what=f"outcomes, got {r.outcomes}")
        await r.clock.settle()
        assert r.outcomes[:2] == ["unchanged", "error"]
        assert "changed" in r.outcomes[2:]
        assert r.data == {"CFG_mode": "by hand"}


async def test_republish_trigger_without_nats_is_ignored(
    tmp_path: Path, local: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="machinery")
    async with rig(tmp_path, local, "key: mode\nrepublish_trigger: repub.x", interval="1m") as r:
        await r.until("unchanged")
        assert "republish_trigger needs a NATS connection" in caplog.text


# -- definition, state and text -----------------------------------------------------------------


def check(tmp_path: Path, properties: str, interval: str | None = "10s") -> list[str]:
    directory = machine_dir(tmp_path, properties, interval)
    _, diagnostics = check_manifest(directory / "machine.yaml")
    return [d.message for d in diagnostics if d.severity.value == "error"]


def test_definition_checks(tmp_path: Path) -> None:
    assert check(tmp_path, "key: mode") == []
    assert check(tmp_path, "key: mode", interval=None) == [
        "kv watcher in poll mode needs an interval"
    ]
    assert check(tmp_path, "key: mode\nmode: watch", interval=None) == []
    assert check(tmp_path, "mode: watch", interval=None) == ["watch mode requires a key"]
    assert check(tmp_path, "on_successful_get: true") == ["poll mode requires a key"]
    assert check(tmp_path, "key: a..b") != []
    assert any("mode" in m for m in check(tmp_path, "key: x\nmode: stream"))
    assert any("invalid query" in m for m in check(tmp_path, "key: x\nquery: 'a.#(b=='"))
    assert any("subject" in m for m in check(tmp_path, "key: x\nrepublish_trigger: 'a b'"))
    assert check(tmp_path, 'key: "{{ .identity }}"') == []


def test_bucket_is_required_and_validated(tmp_path: Path) -> None:
    directory = write_machine(
        tmp_path / "b",
        MACHINE.format(interval="    interval: 1m\n", properties="      key: x").replace(
            "      bucket: CFG\n", "      bucket: 'bad name'\n"
        ),
    )
    _, diagnostics = check_manifest(directory / "machine.yaml")
    assert any("invalid bucket name" in d.message for d in diagnostics)


@pytest.mark.parametrize(
    "name", ["machines-manager", "plugins-machinesmanager", "plugins-manager-builtin"]
)
def test_corpus_kv_watchers_are_valid(tmp_path: Path, name: str) -> None:
    # Only the kv watchers of Choria's manifests: the machines/plugins types are tested elsewhere.
    path = CORPUS / name / "machine.yaml"
    document = load_yaml(path.read_text(), str(path)).data
    document["watchers"] = [w for w in document["watchers"] if w["type"] == "kv"]
    assert len(document["watchers"]) == 2
    path = tmp_path / "machine.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    manifest, diagnostics = check_manifest(path)
    assert manifest is not None, [str(d) for d in diagnostics]


async def test_machines_manager_flow(tmp_path: Path, local: Backend) -> None:
    # Choria's machines manager: INITIAL reads the spec once (on_successful_get), then MANAGE
    # polls it every 5m.
    directory = write_machine(
        tmp_path / "mm",
        """\
        name: machine_manager
        version: 0.0.2
        initial_state: INITIAL
        transitions:
          - name: to_manage
            from: [ INITIAL ]
            destination: MANAGE
        watchers:
          - name: initial_specification
            type: kv
            interval: 1m
            state_match: [ INITIAL ]
            success_transition: to_manage
            properties:
              bucket: MACHINES
              key: spec
              mode: poll
              bucket_prefix: false
              on_successful_get: true
          - name: specification
            type: kv
            interval: 5m
            state_match: [ MANAGE ]
            properties:
              bucket: MACHINES
              key: spec
              mode: poll
              bucket_prefix: false
        """,
    )
    await local.store.create_bucket("MACHINES")
    clock = FakeClock()
    machine = make_machine(directory, clock=clock)
    machine.node.provide("kv", local.store)
    async with running(machine):
        await clock.advance(60)
        await wait_until(lambda: machine.watchers[0].status.runs >= 2)
        assert machine.state == "INITIAL"  # no key yet: nothing to get
        await local.store.put("MACHINES", "spec", b'[{"name": "x"}]')
        await clock.advance(60)
        await wait_until(lambda: machine.state == "MANAGE")
        assert machine.data.get("spec") == [{"name": "x"}]
        specification = machine.watchers[1]
        await wait_until(lambda: specification.status.outcome == "unchanged")
        await local.store.put("MACHINES", "spec", b'[{"name": "y"}]')
        # Its ticker runs from the start (t=300), 180s after the poll on entering MANAGE: that
        # tick is rate limited, as in Choria; the next one reads the new spec.
        await clock.advance(180)
        await wait_until(lambda: specification.status.outcome == "skipped")
        assert machine.data.get("spec") == [{"name": "x"}]
        await clock.advance(300)
        await wait_until(lambda: machine.data.get("spec") == [{"name": "y"}])


async def test_state_payload_and_text(tmp_path: Path, local: Backend) -> None:
    async with rig(tmp_path, local) as r:
        await r.until("unchanged")
        state = r.watcher.current_state()
        payload = state.payload
        assert payload["protocol"] == "io.choria.machine.watcher.kv.v1.state"
        assert {k: payload[k] for k in ("type", "machine", "name")} == {
            "type": "kv",
            "machine": "kvm",
            "name": "cfg",
        }
        assert list(payload)[-4:] == ["state", "bucket", "key", "mode"]
        assert (payload["state"], payload["bucket"], payload["key"], payload["mode"]) == (
            "unchanged",
            "CFG",
            "mode",
            "poll",
        )
        assert (
            state.text
            == "node1.example.net key-value kvm#cfg polling bucket: CFG key: mode state: unchanged"
        )
    text = KVWatcher.describe_payload(
        {
            "identity": "n",
            "machine": "m",
            "name": "w",
            "mode": "watch",
            "bucket": "B",
            "state": "changed",
        }
    )
    assert text == "n key-value m#w watching bucket: B state: changed"


async def test_announce_publishes_the_state(tmp_path: Path, local: Backend) -> None:
    recorder = Recorder()
    directory = machine_dir(tmp_path)
    text = (
        (directory / "machine.yaml")
        .read_text()
        .replace("    interval: 10s\n", "    interval: 10s\n    announce_interval: 1m\n")
    )
    (directory / "machine.yaml").write_text(text)
    await local.store.create_bucket("CFG")
    clock = FakeClock()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    machine.node.provide("kv", local.store)
    async with running(machine):
        await wait_until(lambda: machine.watchers[0].status.runs == 1)
        await clock.advance(60)
        await wait_until(lambda: len(recorder.states("cfg")) == 1)
    assert recorder.states("cfg")[0].payload["state"] == "unchanged"


# -- an agent, driven by machinery kv put -------------------------------------------------------


AGENT_MACHINE = """\
name: kvm
version: 1.0.0
initial_state: idle
transitions:
  - name: configured
    from: [idle]
    destination: ready
watchers:
  - name: cfg
    type: kv
    state_match: [idle]
    success_transition: configured
    interval: {interval}
    properties:
      bucket: CFG
      key: mode
      mode: {mode}
"""


def cli(*args: str) -> str:
    result = CliRunner().invoke(kv_app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize(
    ("kind", "mode", "interval"), [("local", "watch", "1h"), ("nats", "poll", "1s")]
)
async def test_machinery_kv_put_drives_an_agent_machine(
    tmp_path: Path,
    agent_factory: Callable[..., Any],  # noqa: F811
    request: pytest.FixtureRequest,
    kind: str,
    mode: str,
    interval: str,
) -> None:
    write_machine(tmp_path / "store" / "kvm", AGENT_MACHINE.format(mode=mode, interval=interval))
    settings: dict[str, Any] = {}
    if kind == "nats":
        server: NatsServer = request.getfixturevalue("nats_server")
        settings["nats.servers"] = [server.url]
    async with agent_factory(**settings) as agent:
        url = agent.agent.http_url
        assert type(agent.agent.node.service("kv")).__name__ == (
            "LocalKV" if kind == "local" else "NatsKV"
        )
        await asyncio.to_thread(cli, "add", "CFG", "--agent", url)
        assert "CFG" in await asyncio.to_thread(cli, "ls", "--agent", url)

        def machine() -> Machine:
            entry = agent.agent.store.find("kvm")
            assert entry is not None and entry.machine is not None
            return entry.machine

        await agent.wait(lambda: agent.entry_status("kvm") == "running", what="machine running")
        assert machine().state == "idle"
        output = await asyncio.to_thread(cli, "put", "CFG", "mode", "go", "--agent", url)
        assert "CFG.mode stored at revision 1" in output
        await agent.wait(lambda: machine().state == "ready", timeout=10, what="transition")
        assert machine().data.get("CFG_mode") == "go"
        assert await asyncio.to_thread(cli, "get", "CFG", "mode", "--agent", url) == "go\n"
