"""The fleet dashboard: its model, NATS in (live and replayed), the browser view of five agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from typer.testing import CliRunner

from machinery.agent.config import NatsSettings
from machinery.cli.dashboard import app as dashboard_cli
from machinery.core.notifications import TransitionNotification, WatcherStateNotification
from machinery.events.cloudevents import encode_cloudevent, go_json
from machinery.fleet.model import FleetModel
from machinery.fleet.server import FleetDashboard
from tests.dashboard.conftest import RECORDER
from tests.e2e.agent_process import AgentProcess
from tests.natsserver import NatsServer
from tests.support import assert_took

pytestmark = pytest.mark.timeout(180)


def transition(
    identity: str, machine: str, event: str, source: str, target: str, at: int, **extra: Any
) -> TransitionNotification:
    return TransitionNotification(
        identity=identity,
        id=extra.get("id", "id-1"),
        version=extra.get("version", "1.0.0"),
        timestamp=at,
        machine=machine,
        transition=event,
        from_state=source,
        to_state=target,
    )


def watcher_state(
    identity: str, machine: str, name: str, at: int, **fields: Any
) -> WatcherStateNotification:
    payload = {
        "protocol": "io.choria.machine.watcher.exec.v1.state",
        "identity": identity,
        "id": "id-1",
        "version": "1.0.0",
        "timestamp": at,
        "type": "exec",
        "machine": machine,
        "name": name,
        "command": "check.sh",
        **fields,
    }
    return WatcherStateNotification("exec", payload, f"{machine}#{name}")


# -- the model ------------------------------------------------------------------------------


def test_model_builds_nodes_machines_graph_history_and_watchers() -> None:
    model = FleetModel(now=lambda: 1_000.0)
    model.apply(transition("web1", "app", "start", "unknown", "idle", 100))
    model.apply(transition("web1", "app", "fail", "idle", "broken", 110))
    model.apply(transition("web1", "app", "fix", "broken", "idle", 120))
    model.apply(transition("web1", "app", "fail", "idle", "broken", 130))
    model.apply(
        watcher_state(
            "web1", "app", "check", 131, previous_outcome="error", previous_run_time=25_000_000
        )
    )
    model.apply(
        watcher_state(
            "web1", "app", "check", 141, previous_outcome="success", previous_run_time=15_000_000
        )
    )
    model.apply(watcher_state("db1", "backup", "dump", 90, previous_outcome="success"))

    nodes = model.nodes_document()
    assert [n["identity"] for n in nodes] == ["db1", "web1"]
    web = nodes[1]
    assert web["first_seen"] == 100 and web["last_seen"] == 141
    summary = web["machines"][0]
    assert summary == {
        "name": "app",
        "identity": "web1",
        "status": "observed",
        "available_transitions": None,
        "version": "1.0.0",
        "id": "id-1",
        "state": "broken",
        "state_entered": 130.0,
        "first_seen": 100.0,
        "last_seen": 141.0,
        "last_transition": {
            "seq": 4,
            "machine": "app",
            "id": "id-1",
            "version": "1.0.0",
            "transition": "fail",
            "from_state": "idle",
            "to_state": "broken",
            "timestamp": 130.0,
        },
        "watchers": 1,
    }
    # A machine seen only through its watchers: its state is not known yet.
    assert nodes[0]["machines"][0]["state"] is None

    document = model.machine_document("web1", "app")
    assert document is not None
    graph = document["graph"]
    assert graph["initial"] == "unknown" and graph["current"] == "broken"
    assert graph["states"] == ["unknown", "idle", "broken"]
    assert [(e["source"], e["transition"], e["destination"]) for e in graph["edges"]] == [
        ("unknown", "start", "idle"),
        ("idle", "fail", "broken"),
        ("broken", "fix", "idle"),
    ]
    assert [h["transition"] for h in document["history"]] == ["fail", "fix", "fail", "start"]
    [check] = document["watchers"]
    assert check["name"] == "check" and check["type"] == "exec" and check["active"] is None
    assert check["status"]["outcome"] == "success"
    assert check["status"]["last_run"] == 141
    assert check["status"]["last_duration"] == pytest.approx(0.015)
    assert check["status"]["durations"] == [[131, 0.025], [141, 0.015]]
    assert check["status"]["runs"] == 2
    assert check["state"]["command"] == "check.sh"
    assert model.machine_document("web1", "nope") is None
    assert model.machine_document("nope", "app") is None
    assert model.events == 7 and model.machine_count == 2


def test_model_keeps_the_newest_state_when_events_arrive_out_of_order() -> None:
    model = FleetModel()
    model.apply(transition("n", "m", "go", "a", "b", 200))
    model.apply(transition("n", "m", "back", "b", "a", 150))  # older: a replay overlap
    machine = model.machine("n", "m")
    assert machine is not None
    assert machine.state == "b" and machine.state_entered == 200
    assert len(machine.transitions) == 2 and ("b", "back", "a") in machine.edges
    model.apply(watcher_state("n", "m", "w", 300, previous_outcome="success"))
    model.apply(watcher_state("n", "m", "w", 250, previous_outcome="error"))
    assert machine.watchers["w"].outcome == "success"
    assert machine.watchers["w"].events == 2
    # A restarted machine: a new instance id and version.
    model.apply(transition("n", "m", "go", "a", "b", 400, id="id-2", version="2.0.0"))
    assert (machine.id, machine.version) == ("id-2", "2.0.0")


def test_model_memory_is_bounded() -> None:
    now = [10_000.0]
    model = FleetModel(
        max_nodes=3, max_machines=2, max_watchers=2, forget_after=600, now=lambda: now[0]
    )
    for i in range(5):
        model.apply(transition(f"node{i}", "m", "go", "a", "b", 9_000 + i))
    assert sorted(model.nodes) == ["node2", "node3", "node4"]  # the least recent went first
    for name in ("m2", "m3"):
        model.apply(transition("node4", name, "go", "a", "b", 9_100))
    assert sorted(model.nodes["node4"].machines) == ["m", "m2"]
    assert model.ignored == 1
    for name in ("w1", "w2", "w3"):
        model.apply(watcher_state("node4", "m", name, 9_100))
    assert sorted(model.nodes["node4"].machines["m"].watchers) == ["w1", "w2"]
    for i in range(300):
        model.apply(transition("node4", "m", "go", "a", "b", 9_200 + i))
        model.apply(watcher_state("node4", "m", "w1", 9_200 + i, previous_run_time=1000))
    machine = model.nodes["node4"].machines["m"]
    assert len(machine.transitions) == 200
    assert len(machine.watchers["w1"].durations) == 60
    # Nodes silent for longer than forget_after are dropped.
    now[0] = 9_003 + 601
    assert [n["identity"] for n in model.nodes_document()] == ["node4"]
    # Events without an identity or machine name are ignored.
    model.apply(transition("", "m", "go", "a", "b", 1))
    assert model.ignored == 2


def test_receive_decodes_cloudevents_and_choria_bare_data() -> None:
    dashboard = FleetDashboard(NatsSettings(servers=["nats://127.0.0.1:1"]))
    event = transition("web1", "app", "go", "a", "b", 100)
    assert dashboard.receive(encode_cloudevent(event, "e-1").encode()) == event
    bare = transition("web2", "app", "go", "a", "b", 101)
    assert dashboard.receive(go_json(bare.data()).encode()) == bare
    assert dashboard.receive(b"not json") is None
    assert dashboard.receive(b'{"protocol": "something.else"}') is None
    assert (dashboard.received, dashboard.undecodable) == (4, 2)
    assert sorted(dashboard.model.nodes) == ["web1", "web2"]


# -- against NATS ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_dashboard(url: str, **options: Any) -> AsyncIterator[FleetDashboard]:
    dashboard = FleetDashboard(NatsSettings(servers=[url]), listen_port=0, **options)
    sock = dashboard.bind()
    task = asyncio.create_task(dashboard.run(sock))
    try:
        deadline = time.monotonic() + 10
        while dashboard.source == "none":
            assert not task.done(), task
            assert time.monotonic() < deadline, "the dashboard did not subscribe"
            await asyncio.sleep(0.02)
        yield dashboard
    finally:
        dashboard.stop()
        await asyncio.wait_for(task, 10)


def start_agents(base: Path, url: str, count: int) -> list[AgentProcess]:
    agents = []
    for i in range(count):
        agent = AgentProcess(
            base / f"agent{i}",
            env={"MACHINERY_NATS__SERVERS": url},
            args=["--identity", f"node{i}.example.net"],
        )
        agent.copy_example("hvac")
        if i == 0:
            agent.copy_example("container-manager")
        agents.append(agent)
    return agents


async def until(predicate: Any, timeout: float = 20.0, what: str = "") -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def agent_state(agent: AgentProcess, machine: str) -> str:
    async with httpx.AsyncClient(base_url=agent.url, timeout=10) as http:
        return str((await http.get(f"/api/v1/machines/{machine}")).json()["state"])


async def force(agent: AgentProcess, machine: str, event: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=agent.url, timeout=10) as http:
        answer = await http.post(
            f"/api/v1/machines/{machine}/transition", json={"transition": event}
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


async def test_fleet_view_shows_five_agents_and_a_live_transition(
    tmp_path: Path, nats_server: NatsServer, open_page: Any
) -> None:
    async with running_dashboard(nats_server.url) as dashboard:
        assert dashboard.source == "core"  # no stream on this broker: live events only
        agents = start_agents(tmp_path, nats_server.url, 5)
        try:
            await asyncio.gather(*(asyncio.to_thread(a.start) for a in agents))
            identities = [f"node{i}.example.net" for i in range(5)]
            # Every agent's HVAC has made its first transition, and the model has it.
            await until(
                lambda: all(
                    (m := dashboard.model.machine(i, "HVAC")) is not None and m.state
                    for i in identities
                ),
                what="every node's HVAC state",
            )
            await until(
                lambda: (
                    dashboard.model.machine("node0.example.net", "ContainerManager") is not None
                ),
                what="node0's ContainerManager",
            )
            async with open_page(dashboard.url) as watched:
                page = watched.page
                await watched.wait_live()
                assert await page.get_attribute("html", "data-mode") == "fleet"
                await page.wait_for_selector("tr.machine-row >> nth=5")
                rows = await page.eval_on_selector_all(
                    "tr.machine-row", "rows => rows.map(r => [r.dataset.node, r.dataset.machine])"
                )
                assert sorted(tuple(r) for r in rows) == sorted(
                    [(i, "HVAC") for i in identities] + [("node0.example.net", "ContainerManager")]
                )
                for identity in identities:
                    row = page.locator(
                        f'tr.machine-row[data-node="{identity}"][data-machine="HVAC"]'
                    )
                    model_state = dashboard.model.machine(identity, "HVAC").state
                    await watched.until(
                        '(a) => document.querySelector(`tr.machine-row[data-node="${a[0]}"][data-machine="HVAC"] .state-pill`)?.textContent === a[1]',
                        [identity, model_state],
                    )
                    # The node answered the dashboard's question: its own status, not "observed".
                    assert await row.locator(".badge").inner_text() == "running"
                chips = await page.locator(".nodes a.node-chip").all_inner_texts()
                assert len(chips) == 6 and chips[0].startswith("All nodes")
                # Fleet mode: nothing that needs a node's own API.
                assert await page.locator("#token-form").is_hidden()

                # A transition on node2 shows in its row, live.
                await page.evaluate(
                    """() => {
                      window.__cells = [];
                      const read = () => document.querySelector('tr.machine-row[data-node="node2.example.net"][data-machine="HVAC"] .state-pill')?.textContent;
                      new MutationObserver(() => window.__cells.push({state: read(), t: Date.now() / 1000}))
                        .observe(document.getElementById('main'), {subtree: true, childList: true, characterData: true});
                    }"""
                )
                node2 = agents[2]
                event = (
                    "variables_unknown"
                    if await agent_state(node2, "HVAC") != "unknown"
                    else "variables_changed"
                )
                answer = await force(node2, "HVAC", event)
                answered = time.time()
                target = answer["to_state"]
                seen = await watched.until(
                    "(a) => window.__cells.find(c => c.state === a.s && c.t >= a.t)?.t",
                    {"s": target, "t": answered - 0.05},
                    timeout=30,
                )
                assert_took(seen - answered, 20.0, "a forced transition shown in the fleet table")
                await watched.screenshot("dashboard-fleet.png")

                # The machine page of node2's HVAC: the graph as seen, its current state, live.
                await page.click('tr.machine-row[data-node="node2.example.net"] a.machine-link')
                await page.wait_for_selector("#graph svg g.state")
                assert (
                    await page.evaluate("location.hash") == "#/node/node2.example.net/machine/HVAC"
                )
                await watched.until(
                    "(s) => document.querySelector('#graph g.state[aria-current=\"true\"]')?.dataset.state === s",
                    dashboard.model.machine("node2.example.net", "HVAC").state,
                )
                assert await page.locator("#transition-buttons").count() == 0
                watcher_rows = await page.locator("#watchers tbody th").all_inner_texts()
                assert watcher_rows and set(watcher_rows) <= {"variables", "off", "on", "monitor"}
                await page.evaluate(RECORDER)
                event = (
                    "variables_unknown"
                    if await agent_state(node2, "HVAC") != "unknown"
                    else "variables_changed"
                )
                answer = await force(node2, "HVAC", event)
                answered = time.time()
                seen = await watched.until(
                    "(a) => window.__states.find(x => x.state === a.s && x.t >= a.t)?.t",
                    {"s": answer["to_state"], "t": answered - 0.05},
                    timeout=30,
                )
                assert_took(
                    seen - answered, 20.0, "a forced transition shown on the fleet machine page"
                )
                await watched.until(
                    "(e) => document.querySelector('#timeline li .tl-via code')?.textContent === e",
                    event,
                )
                # The events panel can be narrowed to one node.
                await page.select_option("#filter-node", "node2.example.net")
                nodes = await page.eval_on_selector_all(
                    "#events-list li .ev-node",
                    "items => [...new Set(items.map(i => i.textContent))]",
                )
                assert nodes == ["node2.example.net"]
                await watched.screenshot("dashboard-fleet-machine.png")
                assert watched.unexpected_errors() == []
        finally:
            for agent in agents:
                with contextlib.suppress(Exception):
                    agent.stop()
                agent.kill()


async def test_history_is_replayed_from_the_stream_then_followed_live(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    client = await nats.connect(nats_server.url)
    try:
        await client.jetstream().add_stream(name="CHORIA_MACHINE", subjects=["choria.machine.>"])
    finally:
        await client.close()
    [agent] = start_agents(tmp_path, nats_server.url, 1)
    try:
        await asyncio.to_thread(agent.start)
        event = (
            "variables_unknown"
            if await agent_state(agent, "HVAC") != "unknown"
            else "variables_changed"
        )
        await force(agent, "HVAC", event)
        await asyncio.sleep(0.5)  # let it reach the stream
        state = await agent_state(agent, "HVAC")
        # The dashboard starts after all that, and still knows.
        async with running_dashboard(nats_server.url, replay=600) as dashboard:
            assert dashboard.source == "jetstream:CHORIA_MACHINE"
            await until(
                lambda: (
                    (m := dashboard.model.machine("node0.example.net", "HVAC")) is not None
                    and m.state == state
                ),
                what="the replayed state",
            )
            machine = dashboard.model.machine("node0.example.net", "HVAC")
            assert any(t["transition"] == event for t in machine.transitions)
            # ... and carries on live, and re-publishes each event unchanged to SSE clients.
            async with httpx.AsyncClient(base_url=dashboard.url, timeout=10) as http:
                health = (await http.get("/healthz")).json()
                assert health["mode"] == "fleet" and health["nats"]["connected"] is True
                async with http.stream(
                    "GET", "/api/fleet/events?kind=transitions&identity=node0.example.net"
                ) as stream:
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    nxt = "variables_unknown" if state != "unknown" else "variables_changed"
                    await force(agent, "HVAC", nxt)
                    data = None
                    async with asyncio.timeout(10):
                        async for line in stream.aiter_lines():
                            if line.startswith("data:"):
                                data = json.loads(line[5:].strip())
                                break
            assert data is not None
            assert (
                data["specversion"] == "1.0" and data["type"] == "io.choria.machine.v1.transition"
            )
            assert data["data"]["transition"] == nxt and data["subject"] == "node0.example.net"
            await until(
                lambda: (
                    dashboard.model.machine("node0.example.net", "HVAC").transitions[-1][
                        "transition"
                    ]
                    == nxt
                ),
                what="the live transition",
            )
            async with httpx.AsyncClient(base_url=dashboard.url, timeout=10) as http:
                one = await http.get("/api/fleet/nodes/node0.example.net/machines/HVAC")
                assert one.status_code == 200
                assert one.json()["history"][0]["transition"] == nxt
                missing = await http.get("/api/fleet/nodes/node0.example.net/machines/nope")
                assert missing.status_code == 404
                assert missing.json() == {"error": "machine nope on node0.example.net not seen"}
                page = await http.get("/")
                assert 'data-mode="fleet"' in page.text
                assert "<title>machinery fleet</title>" in page.text
    finally:
        with contextlib.suppress(Exception):
            agent.stop()
        agent.kill()


async def test_the_command_serves_until_sigterm(nats_server: NatsServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from machinery.cli.dashboard import app; app(prog_name='machinery dashboard')",
        "--nats",
        nats_server.url,
        "--listen",
        "127.0.0.1:0",
        "--replay",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("machinery fleet dashboard on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            deadline = time.monotonic() + 10
            while True:
                health = (await http.get("/healthz")).json()
                if health["nats"]["source"] == "core":
                    break
                assert time.monotonic() < deadline, health
                await asyncio.sleep(0.05)
            assert health["nats"]["connected"] is True
            assert (await http.get("/")).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nowhere"], "must be HOST:PORT"),
        (["--replay", "soon"], "--replay"),
        (["--forget-after", "10x"], "--forget-after"),
        (["--nats", " , "], "give at least one server"),
    ],
)
def test_the_command_refuses_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(dashboard_cli, ["--nats", "nats://127.0.0.1:1", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_the_command_needs_a_broker() -> None:
    result = CliRunner().invoke(dashboard_cli, [], env={"MACHINERY_NATS__SERVERS": ""})
    assert result.exit_code == 2
    assert "--nats" in result.output
