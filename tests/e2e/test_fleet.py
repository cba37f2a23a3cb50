"""A fleet: a 3-server NATS cluster on loopback and 5 agent processes with their own identities.

One scenario, in phases that share the (slow to build) fleet:

1. a key-value update in watch mode reaches the machines of every agent (p99 under 100 ms,
   measured from the put to the transition event arriving on NATS), and ``machinery watch
   --nats`` sees every agent's events;
2. a governor of 2 never lets more than 2 commands run at once across the fleet;
3. killing a NATS server (the one most agents use) loses no event: the JetStream stream that
   captures ``choria.machine.>`` holds every transition of every agent, in order, once;
4. a holder killed with its agent frees its slot once its lease runs out.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.js.api import KeyValueConfig, StreamConfig

from tests.e2e.agent_process import AgentProcess
from tests.natsserver import NatsServer, cluster
from tests.support import assert_took

AGENTS = 5
LATENCY_ROUNDS = 20
OUTAGE_ROUNDS = 5
LEASE_SECONDS = 3

FLEET = """\
name: fleet
version: 1.0.0
initial_state: a
transitions:
  - name: to_b
    from: [a]
    destination: b
  - name: to_a
    from: [b]
    destination: a
watchers:
  - name: ping
    type: kv
    state_match: [a]
    success_transition: to_b
    properties:
      bucket: FLEET
      key: ping
      mode: watch
  - name: pong
    type: kv
    state_match: [b]
    success_transition: to_a
    properties:
      bucket: FLEET
      key: pong
      mode: watch
"""

WORKER = """\
name: worker
version: 1.0.0
initial_state: idle
transitions:
  - name: go
    from: [idle]
    destination: working
  - name: done
    from: [working]
    destination: finished
watchers:
  - name: trigger
    type: kv
    state_match: [idle]
    success_transition: go
    properties:
      bucket: FLEET
      key: go
      mode: watch
  - name: job
    type: exec
    state_match: [working]
    success_transition: done
    properties:
      command: ./job.sh
      timeout: 60s
      governor: FLEETGOV
      governor_timeout: 2m
"""

JOB = """\
#!/bin/sh
echo "start {identity} $(date +%s%N)" >> {log}
sleep 0.4
echo "end {identity} $(date +%s%N)" >> {log}
"""

STUCK = """\
name: stuck
version: 1.0.0
initial_state: idle
transitions:
  - name: go
    from: [idle]
    destination: holding
  - name: done
    from: [holding]
    destination: finished
watchers:
  - name: trigger
    type: kv
    state_match: [idle]
    success_transition: go
    properties:
      bucket: FLEET
      key: stuck_{key}
      mode: watch
  - name: hold
    type: exec
    state_match: [holding]
    success_transition: done
    properties:
      command: ./hold.sh
      timeout: 5m
      governor: STUCKGOV
      governor_timeout: 2m
"""

HOLD = """\
#!/bin/sh
echo $$ > {pidfile}
exec sleep 300
"""


def identity(i: int) -> str:
    return f"node{i}.fleet.example.net"


def install(agent: AgentProcess, name: str, manifest: str, scripts: dict[str, str]) -> None:
    directory = agent.store / name
    directory.mkdir(parents=True)
    for script, text in scripts.items():
        path = directory / script
        path.write_text(text)
        path.chmod(0o755)
    (directory / "machine.yaml").write_text(manifest)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "machinery", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[NatsServer]]:
    started = cluster(tmp_path / "cluster", 3)
    try:
        for server in started:
            server.start()
        yield started
    finally:
        for server in started:
            server.stop()


async def prepare_broker(url: str) -> None:
    """The bucket, the event stream and the governors, replicated on all three servers."""
    deadline = time.monotonic() + 30
    while True:  # JetStream needs the cluster formed and a meta leader elected
        try:
            client = await nats.connect(url)
            js = client.jetstream(timeout=5)
            await js.create_key_value(KeyValueConfig(bucket="FLEET", replicas=3))
            await js.add_stream(
                StreamConfig(
                    name="CHORIA_MACHINE",
                    subjects=["choria.machine.>"],
                    num_replicas=3,
                    duplicate_window=300,
                )
            )
            await client.close()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    for name, capacity in (("FLEETGOV", "2"), ("STUCKGOV", "1")):
        await asyncio.to_thread(
            cli,
            "governor",
            "add",
            name,
            capacity,
            "--lease",
            f"{LEASE_SECONDS}s",
            "--replicas",
            "3",
            "--nats",
            url,
        )


async def stream_transitions(url: str) -> list[dict[str, Any]]:
    """Every transition the stream holds, read message by message (no consumer: creating one
    waits for JetStream's meta leader, which may be re-elected after a server died)."""
    client = await nats.connect(url)
    try:
        js = client.jetstream(timeout=5)
        state = (await js.stream_info("CHORIA_MACHINE")).state
        found: list[dict[str, Any]] = []
        for sequence in range(state.first_seq, state.last_seq + 1):
            message = await js.get_msg("CHORIA_MACHINE", sequence)
            if message.subject == "choria.machine.transition" and message.data:
                found.append(json.loads(message.data))
        return found
    finally:
        await client.close()


def overlap(log: Path) -> tuple[int, int]:
    """(most commands running at once, commands run) from the jobs' start/end lines."""
    marks = []
    for line in log.read_text().splitlines():
        kind, _, stamp = line.split()
        marks.append((int(stamp), 1 if kind == "start" else -1))
    running = peak = 0
    for _, change in sorted(marks, key=lambda mark: (mark[0], mark[1])):
        running += change
        peak = max(peak, running)
    return peak, sum(1 for _, change in marks if change == 1)


async def test_a_fleet_of_five_agents_on_a_three_server_cluster(
    tmp_path: Path, servers: list[NatsServer]
) -> None:
    urls = [server.url for server in servers]
    await prepare_broker(urls[0])

    job_log = tmp_path / "jobs.log"
    pidfiles = [tmp_path / f"hold{i}.pid" for i in range(2)]
    agents = []
    for i in range(AGENTS):
        agent = AgentProcess(
            tmp_path / f"agent{i}",
            env={"MACHINERY_NATS__SERVERS": ",".join(urls)},
            args=["--identity", identity(i)],
        )
        install(agent, "fleet", FLEET, {})
        install(
            agent,
            "worker",
            WORKER,
            {"job.sh": JOB.format(identity=identity(i), log=job_log)},
        )
        if i < 2:
            install(
                agent,
                "stuck",
                STUCK.format(key=i),
                {"hold.sh": HOLD.format(pidfile=pidfiles[i])},
            )
        agents.append(agent)

    received: list[tuple[float, dict[str, Any]]] = []
    governed: list[dict[str, Any]] = []
    observer = await nats.connect(servers=urls)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "machinery", "watch", "--nats", urls[0], "--transitions"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:

        async def on_transition(message: Any) -> None:
            received.append((time.monotonic(), json.loads(message.data)))

        async def on_governor(message: Any) -> None:
            governed.append(json.loads(message.data))

        await observer.subscribe("choria.machine.transition", cb=on_transition)
        await observer.subscribe("choria.lifecycle.event.governor.>", cb=on_governor)
        await observer.flush()
        kv = await observer.jetstream().key_value("FLEET")

        await asyncio.gather(*(asyncio.to_thread(agent.start, 30) for agent in agents))
        for agent in agents:
            await asyncio.to_thread(
                agent.wait,
                lambda agent=agent: (
                    all(
                        (agent.machine(name) or {}).get("status") == "running"
                        for name in ("fleet", "worker")
                    )
                    and agent.get("/api/v1/agent")["nats"]["state"] == "connected"
                ),
                30,
                "machines running and the broker connected",
            )

        # -- 1. key-value updates reach every agent ----------------------------------------
        latencies: list[float] = []
        for round_ in range(LATENCY_ROUNDS):
            for key, transition in (("ping", "to_b"), ("pong", "to_a")):
                seen = len(received)
                started = time.monotonic()
                await kv.put(key, str(round_).encode())

                def arrivals(transition: str = transition, seen: int = seen) -> list[float]:
                    return [
                        at
                        for at, event in received[seen:]
                        if event["data"]["machine"] == "fleet"
                        and event["data"]["transition"] == transition
                    ]

                await until(lambda: len(arrivals()) >= AGENTS, 10, f"{transition} everywhere")
                latencies.extend(at - started for at in arrivals())
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"\nkv watch -> transition on NATS, {len(latencies)} samples: "
            f"median {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {latencies[-1] * 1000:.1f} ms"
        )
        # The target (p99 under 100 ms) is measured in bench/; here a bound 10x above it.
        assert_took(p99, 1.0, "kv watch -> transition on NATS, p99 across agents")

        # `machinery watch --nats` saw every agent's transitions.
        watcher.send_signal(signal.SIGINT)
        output, _ = watcher.communicate(timeout=10)
        for i in range(AGENTS):
            assert f"{identity(i)} fleet transitioned via event to_b" in output, output[-2000:]

        # -- 2. a governor of 2 across the fleet -------------------------------------------
        await kv.put("go", b"now")
        for agent in agents:
            await asyncio.to_thread(
                agent.wait,
                lambda agent=agent: (agent.machine("worker") or {}).get("state") == "finished",
                60,
                "every worker finished",
            )
        peak, runs = overlap(job_log)
        assert runs == AGENTS
        assert peak == 2, f"{peak} commands ran at once under a governor of 2"
        entered = [e for e in governed if e["governor"] == "FLEETGOV"]
        assert sorted(e["identity"] for e in entered if e["event_type"] == "enter") == sorted(
            identity(i) for i in range(AGENTS)
        )

        # -- 3. a NATS server dies: no event is lost ---------------------------------------
        using = defaultdict(int)
        for agent in agents:
            using[agent.get("/api/v1/agent")["nats"]["connected_url"]] += 1
        victim = next(s for s in servers if s.url == max(using, key=lambda url: using[url]))
        victim.kill()
        for round_ in range(LATENCY_ROUNDS, LATENCY_ROUNDS + OUTAGE_ROUNDS):
            for key, state in (("ping", "b"), ("pong", "a")):
                for attempt in range(100):  # the bucket's leader may be moving
                    try:
                        await kv.put(key, str(round_).encode())
                        break
                    except Exception:
                        if attempt == 99:
                            raise
                        await asyncio.sleep(0.2)
                for agent in agents:
                    await asyncio.to_thread(
                        agent.wait,
                        lambda agent=agent, state=state: (
                            (agent.machine("fleet") or {}).get("state") == state
                        ),
                        30,
                        f"fleet in {state} after the server died",
                    )
        for agent in agents:
            await asyncio.to_thread(
                agent.wait,
                lambda agent=agent: agent.get("/api/v1/agent")["publisher"]["spool_depth"] == 0,
                30,
                "the spool drained",
            )
        alive = next(s.url for s in servers if s is not victim)
        expected = ["to_b", "to_a"] * (LATENCY_ROUNDS + OUTAGE_ROUNDS)
        transitions: list[dict[str, Any]] = []
        failure: BaseException | None = None
        deadline = time.monotonic() + 30
        while True:
            try:
                transitions = await stream_transitions(alive)
            except (nats.errors.Error, TimeoutError) as exc:
                failure = exc  # the stream's leader may still be moving after the server died
            by_node: dict[str, list[str]] = defaultdict(list)
            for event in transitions:
                if event["data"]["machine"] == "fleet":
                    by_node[event["data"]["identity"]].append(event["data"]["transition"])
            if all(by_node[identity(i)] == expected for i in range(AGENTS)):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"victim {victim.url}, alive {alive}, agents on {dict(using)}, "
                    f"last failure {failure!r}: "
                    f"{ {node: (len(names), names[-4:]) for node, names in by_node.items()} }"
                )
            await asyncio.sleep(0.5)
        ids = [event["id"] for event in transitions]
        assert len(ids) == len(set(ids)), "an event was stored twice"

        # -- 4. a killed holder's slot is freed after its lease ----------------------------
        def enters(node: str) -> list[dict[str, Any]]:
            return [
                e
                for e in governed
                if e["governor"] == "STUCKGOV"
                and e["event_type"] == "enter"
                and e["identity"] == node
            ]

        await kv.put("stuck_0", b"hold")
        await until(lambda: bool(enters(identity(0))), 30, "node0 holding STUCKGOV")
        await kv.put("stuck_1", b"hold")
        await asyncio.sleep(LEASE_SECONDS / 2)  # node1 is waiting, well within the lease
        assert not enters(identity(1)), "two holders in a governor of 1"
        agents[0].kill()
        killed = time.monotonic()
        await until(lambda: bool(enters(identity(1))), 30, "node1 taking the freed slot")
        freed_after = time.monotonic() - killed
        print(f"slot of a killed holder freed after {freed_after:.1f} s (lease {LEASE_SECONDS} s)")
    finally:
        if watcher.poll() is None:
            os.killpg(watcher.pid, signal.SIGKILL)
            watcher.wait()
        await observer.close()
        for agent in agents:
            agent.kill()
        for pidfile in pidfiles:
            # The held commands ran in their own process groups: stop them too.
            if pidfile.exists():
                try:
                    os.killpg(int(pidfile.read_text()), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
