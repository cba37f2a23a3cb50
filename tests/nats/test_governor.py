"""NATS governors against real nats-server processes: several governor instances on their own
connections stand in for nodes; leases run on the real clock, kept short, with bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from machinery.agent.config import NatsSettings
from machinery.core.clock import SystemClock
from machinery.core.governor import GovernorError, GovernorTimeout, UnknownGovernor
from machinery.nats.connection import BrokerConnection
from machinery.nats.governor import NatsGovernor, backoff_delay, bucket_name
from tests.agent.conftest import agent_factory  # noqa: F401  (a fixture)
from tests.natsserver import NatsServer, cluster
from tests.support import (
    Recorder,
    assert_took,
    make_machine,
    make_node,
    running,
    wait_until,
    write_machine,
)

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def connected(*urls: str) -> AsyncIterator[BrokerConnection]:
    """A BrokerConnection, as the agent runs it, connected to ``urls``."""
    connection = BrokerConnection(NatsSettings(servers=list(urls)), name="governor test")
    task = asyncio.create_task(connection.run())
    try:
        assert await connection.wait_connected(10), connection.last_error
        yield connection
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def nodes(count: int, *urls: str, **options: Any) -> AsyncIterator[list[NatsGovernor]]:
    """``count`` governors, each on its own connection (node ``i`` uses ``urls[i % len]``)."""
    async with contextlib.AsyncExitStack() as stack:
        governors = []
        for i in range(count):
            connection = await stack.enter_async_context(connected(urls[i % len(urls)]))
            governors.append(NatsGovernor(connection, SystemClock(), **options))
        yield governors


def max_overlap(spans: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    current = highest = 0
    for _, step in points:  # at equal times an exit (-1) sorts before an entry
        current += step
        highest = max(highest, current)
    return highest


# -- administration and errors ---------------------------------------------------------------


async def test_unknown_governors_add_view_and_names(nats_server: NatsServer) -> None:
    async with nodes(1, nats_server.url) as [governor]:
        with pytest.raises(UnknownGovernor, match=r"^unknown governor nightly$"):
            async with governor.acquire("nightly", 5, holder="a"):
                pass
        with pytest.raises(UnknownGovernor):
            await governor.view("nightly")
        with pytest.raises(UnknownGovernor):
            await governor.evict("nightly", "a")
        assert await governor.names() == []
        await governor.add("nightly", 2, lease=90)
        await governor.add("backups", 1)
        assert await governor.names() == ["backups", "nightly"]
        info = await governor.view("nightly")
        assert (info.name, info.capacity, info.lease, info.holders) == ("nightly", 2, 90.0, [])
        assert (await governor.view("backups")).lease == 300.0
        with pytest.raises(GovernorError, match="capacity must be at least 1"):
            await governor.add("nightly", 0)
        with pytest.raises(GovernorError, match="lease must be longer than 0s"):
            await governor.add("nightly", 1, lease=0)
        with pytest.raises(GovernorError, match=r"invalid governor name 'a b'"):
            await governor.add("a b", 1)
        # The bucket is a plain JetStream key-value bucket.
        client = governor.connection.client
        assert client is not None
        kv = await client.jetstream().key_value(bucket_name("nightly"))
        config = json.loads((await kv.get("config")).value)
        assert config == {"capacity": 2, "lease": 90, "slots": 2}


async def test_holders_are_recorded_with_their_lease(nats_server: NatsServer) -> None:
    async with nodes(2, nats_server.url) as [first, second]:
        await first.add("jobs", 2, lease=60)
        before = time.time()
        async with first.acquire("jobs", 5, holder="node1:m:w:00000001") as sequence:
            info = await second.view("jobs")
            [holder] = info.holders
            assert holder["slot"] == "slot_0"
            assert holder["holder"] == "node1:m:w:00000001"
            assert holder["revision"] == sequence
            assert before <= holder["acquired"] <= time.time()
            assert holder["expires"] == pytest.approx(holder["acquired"] + 60)
            assert holder["expired"] is False
        assert (await second.view("jobs")).holders == []


async def test_a_full_governor_times_out(nats_server: NatsServer) -> None:
    async with nodes(2, nats_server.url) as [first, second]:
        await first.add("jobs", 1)
        async with first.acquire("jobs", 5, holder="a"):
            started = time.monotonic()
            with pytest.raises(
                GovernorTimeout, match=r"^no slot in the jobs Governor became free within 1\.5s$"
            ):
                async with second.acquire("jobs", 1.5, holder="b"):
                    pass
            took = time.monotonic() - started
            assert took >= 1.5  # a lower bound: load only makes it later
            assert_took(took - 1.5, 1.5, "a full governor: the time past its 1.5 s timeout")
            with pytest.raises(GovernorTimeout):
                async with second.acquire("jobs", 0, holder="b"):
                    pass
        async with second.acquire("jobs", 0, holder="b"):
            pass


async def test_the_broker_away_is_an_error_not_a_hang(nats_server: NatsServer) -> None:
    async with nodes(1, nats_server.url) as [governor]:
        await governor.add("jobs", 1)
        nats_server.kill()
        await wait_until(lambda: not governor.connection.is_connected, what="disconnect")
        started = time.monotonic()
        with pytest.raises(GovernorError, match=r"^not connected to NATS$"):
            async with governor.acquire("jobs", 300, holder="a"):
                pass
        assert_took(time.monotonic() - started, 30.0, "governor acquire failing, broker down")
        with pytest.raises(GovernorError, match="not connected to NATS"):
            await governor.view("jobs")
        nats_server.start()
        await wait_until(lambda: governor.connection.is_connected, timeout=20, what="reconnect")
        async with governor.acquire("jobs", 5, holder="a"):
            pass
    unconfigured = NatsGovernor(BrokerConnection(NatsSettings()), SystemClock())
    with pytest.raises(GovernorError, match=r"^NATS is not configured$"):
        async with unconfigured.acquire("jobs", 5, holder="a"):
            pass
    never = BrokerConnection(NatsSettings(servers=["nats://127.0.0.1:1"]))
    lonely = NatsGovernor(never, SystemClock(), connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(GovernorError, match=r"^not connected to NATS$"):
        async with lonely.acquire("jobs", 60, holder="a"):
            pass
    assert_took(time.monotonic() - started, 5.0, "governor acquire, no broker (connect 0.3 s)")


def test_backoff_is_choria_five_sec() -> None:
    import random

    rng = random.Random(1)
    first = [backoff_delay(0, rng) for _ in range(200)]
    assert min(first) >= 0.25 and max(first) < 0.75
    last = [backoff_delay(50, rng) for _ in range(200)]
    assert min(last) >= 2.5 and max(last) < 7.5
    assert max(last) > 5  # jitter goes both ways


# -- concurrency -----------------------------------------------------------------------------


async def test_a_governor_of_two_never_admits_three_across_nodes(
    nats_server: NatsServer,
) -> None:
    async with nodes(3, nats_server.url) as governors:
        await governors[0].add("jobs", 2)
        spans: list[tuple[float, float]] = []
        sequences: list[int] = []

        async def work(governor: NatsGovernor, holder: str) -> None:
            async with governor.acquire("jobs", 60, holder=holder) as sequence:
                entered = time.monotonic()
                sequences.append(sequence)
                await asyncio.sleep(0.25)
                spans.append((entered, time.monotonic()))

        started = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(
                *(work(g, f"node{n}:m:w:{i}") for n, g in enumerate(governors) for i in range(3))
            ),
            60,
        )
        elapsed = time.monotonic() - started
        assert len(spans) == 9
        assert max_overlap(spans) == 2  # never three, and really two at once
        assert len(set(sequences)) == 9
        # Nine 0.25 s jobs, two at a time: a hang check only (the bound is 10x the figure in
        # bench/test-timings.md, so it cannot tell waking on release from polling alone).
        assert_took(elapsed, 60.0, "nine 0.25 s governed jobs, two at a time, three nodes")
        assert (await governors[1].view("jobs")).holders == []


async def test_shrinking_keeps_holders_and_admits_fewer(nats_server: NatsServer) -> None:
    async with nodes(2, nats_server.url) as [first, second]:
        await first.add("jobs", 2)
        async with first.acquire("jobs", 5, holder="a"), first.acquire("jobs", 5, holder="b"):
            await second.add("jobs", 1)
            info = await second.view("jobs")
            assert info.capacity == 1
            assert [h["holder"] for h in info.holders] == ["a", "b"]
        async with second.acquire("jobs", 5, holder="c"):
            with pytest.raises(GovernorTimeout):
                async with second.acquire("jobs", 0.5, holder="d"):
                    pass


async def test_cancelled_holders_and_waiters_leave_no_slot_taken(
    nats_server: NatsServer,
) -> None:
    async with nodes(2, nats_server.url) as [first, second]:
        await first.add("jobs", 1)

        async def hold(governor: NatsGovernor, entered: asyncio.Event | None = None) -> None:
            async with governor.acquire("jobs", 30, holder="x"):
                if entered is not None:
                    entered.set()
                await asyncio.sleep(3600)

        entered = asyncio.Event()
        holder = asyncio.create_task(hold(first, entered))
        await asyncio.wait_for(entered.wait(), 10)
        waiter = asyncio.create_task(hold(second))
        await asyncio.sleep(0.3)
        waiter.cancel()
        holder.cancel()
        await asyncio.gather(holder, waiter, return_exceptions=True)
        assert (await first.view("jobs")).holders == []
        # Cancelled at every point of taking and giving back, including mid compare-and-set.
        for step in range(30):
            task = asyncio.create_task(hold(first))
            await asyncio.sleep(step * 0.001)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert (await second.view("jobs")).holders == [], f"leaked at step {step}"


# -- leases, crashes and eviction ------------------------------------------------------------

HOLDER = textwrap.dedent(
    """\
    import asyncio, sys
    from machinery.agent.config import NatsSettings
    from machinery.core.clock import SystemClock
    from machinery.nats.connection import BrokerConnection
    from machinery.nats.governor import NatsGovernor

    async def main():
        connection = BrokerConnection(NatsSettings(servers=[sys.argv[1]]))
        asyncio.create_task(connection.run())
        assert await connection.wait_connected(10)
        governor = NatsGovernor(connection, SystemClock())
        async with governor.acquire("jobs", 10, holder="crashy:m:w:00000001"):
            print("held", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@contextlib.contextmanager
def holder_process(url: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


async def lease_scenario(
    holder_url: str, waiter_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A live holder keeps its slot past its lease by refreshing it; once it is killed (no
    release, no refresh) a waiter on another node takes the slot over after the lease."""
    lease = 2.0
    async with nodes(1, waiter_url) as [governor]:
        await governor.add("jobs", 1, lease=lease)
        with holder_process(holder_url) as process:
            loop = asyncio.get_running_loop()
            # Three leases long, it keeps the slot: its refreshes keep the lease ahead.
            with pytest.raises(GovernorTimeout):
                async with governor.acquire("jobs", 2 * lease, holder="waiter"):
                    pass
            [held] = (await governor.view("jobs")).holders
            assert held["holder"] == "crashy:m:w:00000001"
            assert held["expires"] - held["acquired"] > lease  # refreshed since it was taken
            assert held["expired"] is False
            os.killpg(process.pid, signal.SIGKILL)
            await loop.run_in_executor(None, process.wait)
            killed = time.monotonic()
            async with governor.acquire("jobs", 30, holder="waiter") as sequence:
                waited = time.monotonic() - killed
                [taken] = (await governor.view("jobs")).holders
                assert taken["holder"] == "waiter"
                assert taken["revision"] == sequence
        # Not before the lease (from its last refresh, plus the allowed skew) ran out; not long
        # after either (one backoff step at most).
        assert lease + governor.skew - lease / 3 - 0.1 < waited < lease + governor.skew + 7.5 + 1
    assert any(
        "Took over slot slot_0 of the jobs Governor from crashy:m:w:00000001" in m
        for m in caplog.messages
    )


async def test_a_killed_holder_frees_its_slot_after_its_lease(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.wait_for(lease_scenario(nats_server.url, nats_server.url, caplog), 60)


async def test_a_killed_holder_frees_its_slot_in_a_cluster(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    servers = cluster(tmp_path / "cluster", 3)
    try:
        for server in servers:
            server.start()
        # A replicated bucket needs the cluster formed and a meta leader elected.
        async with nodes(1, servers[0].url, replicas=3) as [admin]:
            deadline = time.monotonic() + 30
            while True:
                try:
                    await admin.add("jobs", 1, lease=2)
                    break
                except GovernorError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        # The holder is on one server, the waiter on another.
        await asyncio.wait_for(lease_scenario(servers[1].url, servers[2].url, caplog), 60)
    finally:
        for server in servers:
            server.stop()


async def test_eviction_frees_a_slot_and_the_evicted_holder_lets_go(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with nodes(3, nats_server.url) as [stuck_node, operator, waiting_node]:
        await operator.add("jobs", 1, lease=1.5)
        waiter_in = asyncio.Event()

        async def waiter() -> None:
            async with waiting_node.acquire("jobs", 30, holder="node2:m:w:00000002"):
                waiter_in.set()
                await asyncio.sleep(1.5)  # past the evicted holder's next refresh and exit

        async with stuck_node.acquire("jobs", 5, holder="node1:m:w:00000001"):
            task = asyncio.create_task(waiter())
            await asyncio.sleep(0.3)
            assert not waiter_in.is_set()
            assert not await operator.evict("jobs", "node3")
            assert not await operator.evict("jobs", "node")  # a prefix is a whole part
            assert await operator.evict("jobs", "node1")
            await asyncio.wait_for(waiter_in.wait(), 10)
            # The evicted block notices at its next refresh...
            await wait_until(
                lambda: any("Lost slot slot_0 of the jobs Governor" in m for m in caplog.messages),
                what="the lost slot noticed",
            )
        # ...and its exit does not free the slot the waiter now holds.
        [holder] = (await operator.view("jobs")).holders
        assert holder["holder"] == "node2:m:w:00000002"
        await asyncio.wait_for(task, 10)
        assert (await operator.view("jobs")).holders == []
        assert any(
            "Evicted node1:m:w:00000001 from the jobs Governor" in m for m in caplog.messages
        )


# -- watchers and lifecycle events -----------------------------------------------------------

RUNNER = """\
name: runner
version: 1.0.0
initial_state: idle
transitions:
  - name: start
    from: [idle, busy, broken]
    destination: busy
  - name: failed
    from: [busy]
    destination: broken
watchers:
  - name: job
    type: exec
    state_match: [busy]
    fail_transition: failed
    properties:
      command: /bin/true
      governor: jobs
      governor_timeout: 1s
"""


async def lifecycle_subscriber(url: str) -> tuple[Any, list[dict[str, Any]], list[str]]:
    client = await nats.connect(url)
    events: list[dict[str, Any]] = []
    subjects: list[str] = []

    async def received(message: Any) -> None:
        subjects.append(message.subject)
        events.append(json.loads(message.data))

    await client.subscribe("choria.lifecycle.event.governor.>", cb=received)
    await client.flush()
    return client, events, subjects


async def test_exec_watcher_publishes_governor_lifecycle_events(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    client, events, subjects = await lifecycle_subscriber(nats_server.url)
    try:
        async with connected(nats_server.url) as connection, nodes(1, nats_server.url) as [other]:
            clock = SystemClock()
            recorder = Recorder()
            node = make_node(clock=clock, recorder=recorder)
            governor = NatsGovernor(connection, clock)
            node.provide("nats", connection)
            node.provide("governor", governor)
            await governor.add("jobs", 1)
            machine = make_machine(write_machine(tmp_path / "runner", RUNNER), node=node)
            async with running(machine):
                await machine.transition("start")
                await wait_until(lambda: len(events) == 2, what="enter and exit")
                assert machine.state == "busy"
                async with other.acquire("jobs", 5, holder="elsewhere"):
                    await machine.transition("failed")
                    await machine.transition("start")  # runs again, and finds no slot
                    await wait_until(lambda: len(events) == 3, what="the timeout event")
                    await wait_until(lambda: machine.state == "broken")
                assert recorder.transitions()[-2:] == [
                    ("start", "broken", "busy"),
                    ("failed", "busy", "broken"),
                ]
        assert subjects == ["choria.lifecycle.event.governor.runner"] * 3
        enter, exit_, timeout = events
        for event in events:
            assert list(event) == [
                "protocol",
                "id",
                "identity",
                "component",
                "timestamp",
                "governor",
                "sequence",
                "event_type",
            ]
            assert event["protocol"] == "io.choria.lifecycle.v1.governor"
            assert event["identity"] == "node1.example.net"
            assert event["component"] == "runner"
            assert event["governor"] == "jobs"
            assert abs(event["timestamp"] - time.time()) < 60
        assert len({e["id"] for e in events}) == 3
        assert (enter["event_type"], exit_["event_type"], timeout["event_type"]) == (
            "enter",
            "exit",
            "timeout",
        )
        assert enter["sequence"] == exit_["sequence"] > 0
        assert timeout["sequence"] == 0
        assert machine.watchers[0].status.last_error == (
            "Cannot enter Governor jobs: no slot in the jobs Governor became free within 1s"
        )
    finally:
        await client.close()


MACHINE = """\
name: {name}
version: 1.0.0
initial_state: busy
transitions:
  - name: failed
    from: [busy]
    destination: broken
watchers:
  - name: job
    type: exec
    state_match: [busy]
    fail_transition: failed
    interval: 500ms
    properties:
      command: ./exclusive.sh
      governor: nightly
      governor_timeout: 30s
"""

EXCLUSIVE = """\
#!/bin/sh
mkdir {shared}/lock 2>/dev/null || echo overlap >> {shared}/overlaps.log
echo "start $MACHINE_NAME" >> {shared}/order.log
sleep 0.1
echo "end $MACHINE_NAME" >> {shared}/order.log
rmdir {shared}/lock 2>/dev/null
exit 0
"""


def runs(order: Path, name: str) -> int:
    lines = order.read_text().splitlines() if order.exists() else []
    return lines.count(f"end {name}")


async def test_an_agent_with_nats_governs_its_machines_and_announces_it(
    nats_server: NatsServer,
    tmp_path: Path,
    agent_factory: Callable[..., Any],  # noqa: F811
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("first", "second"):
        directory = tmp_path / "store" / name
        directory.mkdir(parents=True)
        (directory / "machine.yaml").write_text(MACHINE.format(name=name))
        (directory / "exclusive.sh").write_text(EXCLUSIVE.format(shared=shared))
        (directory / "exclusive.sh").chmod(0o755)
    order = shared / "order.log"
    client, events, _ = await lifecycle_subscriber(nats_server.url)
    try:
        async with nodes(1, nats_server.url) as [admin]:
            await admin.add("nightly", 1)
            async with agent_factory(**{"nats.servers": nats_server.url}) as run:
                assert isinstance(run.agent.node.service("governor"), NatsGovernor)
                await run.wait(
                    lambda: all(runs(order, name) >= 2 for name in ("first", "second")),
                    timeout=30,
                    what="two runs of each machine",
                )
            assert not (shared / "overlaps.log").exists()
            assert (await admin.view("nightly")).holders == []
        await wait_until(lambda: len(events) >= 8, what="the runs' events")
        log = order.read_text().splitlines()
        for i in range(0, len(log) - 1, 2):
            assert log[i + 1] == "end " + log[i].removeprefix("start ")
        components = {e["component"] for e in events}
        assert components == {"first", "second"}
        for component in components:
            types = [e["event_type"] for e in events if e["component"] == component]
            assert types[: len(types) - len(types) % 2] == ["enter", "exit"] * (len(types) // 2)
        assert {e["identity"] for e in events} == {"agent.example.net"}
    finally:
        await client.close()
