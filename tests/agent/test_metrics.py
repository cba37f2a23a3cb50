"""/metrics during a scripted run, checked against the events the run produced."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.agent.test_store import LAMP, write


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_match_the_events_of_a_scripted_run(agent_factory: Any) -> None:
    async with agent_factory() as run:
        write(run.store, "lamp", LAMP.format(name="lamp").replace("/bin/true", "/bin/false"))
        write(run.store, "broken", "name: broken\n")
        await run.wait(
            lambda: (
                run.entry_status("lamp") == "running" and run.entry_status("broken") == "invalid"
            )
        )
        events: list[dict[str, Any]] = []

        async def listen() -> None:
            async with run.http.stream("GET", "/api/v1/events") as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        events.append(json.loads(line[5:]))

        listener = asyncio.ensure_future(listen())
        await run.wait(lambda: run.agent.bus.subscriber_count == 1)
        for event in ("switch_on", "switch_off", "switch_on", "switch_off"):
            await run.http.post("/api/v1/machines/lamp/transition", json={"transition": event})
        machine = run.agent.store.find("lamp").machine
        await run.wait(
            lambda: machine.watchers[0].status.runs >= 2 and len(events) >= 6, what="runs"
        )
        response = await run.http.get("/metrics")
        listener.cancel()
        assert response.headers["content-type"].startswith("text/plain")
        found = samples(response.text)

    transitions = [e for e in events if e["type"] == "io.choria.machine.v1.transition"]
    assert len(transitions) == 4
    for t in transitions:
        data = t["data"]
        assert (
            value(
                found,
                "machinery_transitions_total",
                machine="lamp",
                transition=data["transition"],
                from_state=data["from_state"],
                to_state=data["to_state"],
            )
            == 2
        )
    exec_states = [e for e in events if e["type"] == "io.choria.machine.watcher.exec.v1.state"]
    errors = value(
        found,
        "machinery_watcher_runs_total",
        machine="lamp",
        watcher="check",
        type="exec",
        outcome="error",
    )
    assert errors == len(exec_states) >= 2  # /bin/false: every run an error, every error published
    assert (
        value(
            found,
            "machinery_watcher_run_duration_seconds_count",
            machine="lamp",
            watcher="check",
            type="exec",
        )
        == errors
    )
    assert (
        value(found, "machinery_machine_state", machine="lamp", version="1.0.0", state="off") == 1
    )
    assert value(found, "machinery_machines", status="running") == 1
    assert value(found, "machinery_machines", status="invalid") == 1
    assert value(found, "machinery_machine_load_errors_total") == 1
    assert value(found, "machinery_events_total", type="io.choria.machine.v1.transition") == 4
    assert value(found, "machinery_nats_connected") == 0
    assert (
        value(
            found,
            "machinery_build_info",
            version=__import__("machinery").__version__,
            python=__import__("platform").python_version(),
        )
        == 1
    )
    assert value(found, "process_open_fds") > 0
    assert all(name.startswith(("machinery_", "process_")) for name, _ in found)
