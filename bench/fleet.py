"""Scenario 10: fleet control at 1,000 nodes against one local nats-server.

The nodes are simulated in a few processes (``bench/fleetnodes.py``): each runs the agent's own
fleet service (:class:`machinery.nats.service.FleetService`: subjects, filters, signature checks,
replies) with its own NATS connection, identity and 10 machines. Measured, with the code the
``machinery fleet`` commands and the fleet dashboard use:

- ``fleet ls``: discovery, then the ``machines`` question to every node, until every discovered
  node answered (p99 over rounds; target p99 < 2 s);
- a fleet transition of one machine on every node, signed, in batches of 100 (target < 10 s);
- the fleet dashboard (``machinery dashboard`` as a process) under 2,000 transition events/s from
  those nodes for 10 s: it must receive every event, apply it to its model and be caught up within
  1 s of the burst's end, with every machine in the state its node last published.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats

from bench.common import Result, latency_summary, percentile
from bench.nats_publish import NatsServerProcess
from machinery.core.signing import generate_keypair
from machinery.nats.control import Filter
from machinery.nats.fleetclient import discover, gather, select_nodes, transition_nodes

ROOT = Path(__file__).resolve().parents[1]


def _start_nodes(url: str, nodes: int, processes: int, key_hex: str) -> list[subprocess.Popen[str]]:
    per = -(-nodes // processes)
    started = []
    for first in range(0, nodes, per):
        count = min(per, nodes - first)
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.fleetnodes", url, str(first), str(count), key_hex],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    for process in started:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"simulated nodes did not start (exit {process.poll()})")
    return started


def _start_dashboard(url: str) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINERY_")}
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "machinery", "dashboard", "--nats", url),
            *("--listen", "127.0.0.1:0", "--replay", "0", "--log-level", "warning"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    # "machinery fleet dashboard on http://127.0.0.1:PORT/ (NATS ...)"
    return process, line.split(" on ", 1)[1].split(" ", 1)[0]


async def _measure(
    url: str, nodes: int, rounds: int, rate: float, seconds: float
) -> dict[str, Any]:
    key = generate_keypair()
    details: dict[str, Any] = {"nodes": nodes, "machines_per_node": 10}
    processes = await asyncio.to_thread(
        _start_nodes, url, nodes, max(1, min(4, nodes // 50)), key.public_hex
    )
    dashboard = None
    client = await nats.connect(url)
    try:
        # Every node registered: discovery finds them all.
        deadline = time.monotonic() + 120
        while len(await discover(client, wait=2.0)) < nodes:
            if time.monotonic() > deadline:
                raise RuntimeError("not every simulated node was discovered")

        # -- fleet ls ------------------------------------------------------------------------
        durations = []
        incomplete = 0
        for _ in range(rounds):
            started = time.perf_counter()
            found = await discover(client)
            replies = await gather(client, "machines", {"version": 1}, set(found))
            durations.append(time.perf_counter() - started)
            complete = (
                len(replies.matched) == nodes
                and not replies.missing
                and all(len(body.get("machines", [])) == 10 for body in replies.matched.values())
            )
            incomplete += not complete
        details["ls"] = latency_summary(durations)
        details["ls_incomplete_rounds"] = incomplete
        ls_p99 = percentile(durations, 0.99)

        # -- fleet transition in batches of 100 ----------------------------------------------
        started = time.perf_counter()
        targets, _ = await select_nodes(client, Filter(machine="svc0"))
        outcomes = await transition_nodes(
            client, targets, "svc0", "maintenance", key, Filter(machine="svc0"), batch=100
        )
        transition_s = time.perf_counter() - started
        done = sum(1 for o in outcomes if o.outcome.value == "done")
        details["transition_s"] = round(transition_s, 3)
        details["transition_done"] = done
        # Back to running (not timed), so the next run starts the same.
        await transition_nodes(
            client, targets, "svc0", "resume", key, Filter(machine="svc0"), batch=100
        )

        # -- the dashboard under an event burst ----------------------------------------------
        dashboard, base = await asyncio.to_thread(_start_dashboard, url)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 120
            while True:  # it asked every node for its machines first
                health = (await http.get("/healthz")).json()
                if health["machines"] >= nodes * 10 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            details["dashboard_initial_machines"] = health["machines"]
            received_before = health["nats"]["received"]
            inbox = client.new_inbox()
            reports: list[int] = []
            published: dict[tuple[str, str], str] = {}

            async def collect(msg: Any) -> None:
                report = json.loads(msg.data)
                for identity, machines in report["states"].items():
                    for name, state in machines.items():
                        published[(identity, name)] = state
                reports.append(int(report["sent"]))

            subscription = await client.subscribe(inbox, cb=collect)
            order = {"rate": rate / len(processes), "seconds": seconds, "reply": inbox}
            await client.publish("bench.fleet.burst", json.dumps(order).encode())
            burst_started = time.monotonic()
            while len(reports) < len(processes):
                await asyncio.sleep(0.05)
                if time.monotonic() - burst_started > seconds + 60:
                    raise RuntimeError("the burst did not end")
            burst_ended = time.monotonic()
            await subscription.unsubscribe()
            sent = sum(reports)
            achieved = sent / (burst_ended - burst_started)
            lag = None
            while time.monotonic() - burst_ended < 30:
                received = (await http.get("/healthz")).json()["nats"]["received"]
                if received - received_before >= sent:
                    lag = time.monotonic() - burst_ended
                    break
                await asyncio.sleep(0.05)
            details["burst_events"] = sent
            details["burst_rate_per_s"] = round(achieved)
            details["dashboard_caught_up_s"] = None if lag is None else round(lag, 3)
            # Every machine's state in the model is the last one its node published.
            document = (await http.get("/api/fleet/nodes")).json()
            states = {
                (node["identity"], machine["name"]): machine["state"]
                for node in document["nodes"]
                for machine in node["machines"]
            }
            details["dashboard_machines"] = len(states)
            details["dashboard_states_wrong"] = sum(
                1 for key, state in published.items() if states.get(key) != state
            )
        details["_ls_p99"] = ls_p99
        details["_lag"] = lag
        details["_rate_ok"] = achieved >= 0.9 * rate
        details["_states"] = states
        return details
    finally:
        await client.close()
        if dashboard is not None:
            dashboard.terminate()
            dashboard.wait(10)
        for process in processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def run(quick: bool) -> Result:
    nodes = 50 if quick else 1000
    rounds = 5 if quick else 20
    rate = 200.0 if quick else 2000.0
    seconds = 3.0 if quick else 10.0
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServerProcess(Path(tmp))
        server.start()
        try:
            details = asyncio.run(_measure(server.url, nodes, rounds, rate, seconds))
        finally:
            server.stop()
    ls_p99 = details.pop("_ls_p99")
    lag = details.pop("_lag")
    rate_ok = details.pop("_rate_ok")
    states = details.pop("_states")
    all_states_known = len(states) == nodes * 10 and all(states.values())
    details["dashboard_all_states_known"] = all_states_known
    met = (
        ls_p99 < 2.0
        and details["ls_incomplete_rounds"] == 0
        and details["transition_s"] < 10.0
        and details["transition_done"] == nodes
        and lag is not None
        and lag <= 1.0
        and rate_ok
        and all_states_known
        and details["dashboard_states_wrong"] == 0
    )
    return Result(
        scenario=f"11. fleet: {nodes} nodes x 10 machines",
        figure=(
            f"ls p99 {ls_p99 * 1000:.0f} ms (all answered), transition in batches of 100 "
            f"{details['transition_s']:.2f} s ({details['transition_done']} done), dashboard "
            f"at {details['burst_rate_per_s']} events/s caught up "
            f"{'never' if lag is None else f'{lag * 1000:.0f} ms'} after the burst"
        ),
        target="ls p99 < 2 s (1,000 nodes, all answered); transition < 10 s; "
        "dashboard current under 2,000 events/s (caught up <= 1 s)",
        met=None if quick else met,
        details=details,
    )
