"""Cookbook examples that need the agent's HTTP API, run in a real agent on loopback: the Home
Assistant switch (examples/home-switch) and the canary gate read by a rollout
(examples/canary-gate/wait_for_gate.py, a real subprocess)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HA_SWITCH = "/choria/homeassistant/switch/v1/homeassistant_switch/switch"


def state_of(run: Any, name: str) -> str | None:
    entry = run.agent.store.find(name)
    return None if entry is None or entry.machine is None else str(entry.machine.state)


async def test_home_assistant_drives_the_relay_and_a_stuck_relay_disables_the_switch(
    agent_factory: Any,
) -> None:
    async with agent_factory(("home-switch",)) as run:
        await run.wait(lambda: run.entry_status("homeassistant_switch") == "running", 10)
        world = run.store / "home-switch" / "world"
        relay = world / "relay"
        assert (await run.http.get(HA_SWITCH)).text == "OFF"

        turned = await run.http.post(HA_SWITCH, content=b"ON")
        assert turned.status_code == 200 and turned.text == "ON"
        await run.wait(
            lambda: relay.exists() and relay.read_text() == "on\n", 20, "the relay to turn on"
        )
        state = (await run.http.get("/choria/machine/switch/v1/homeassistant_switch/switch")).json()
        assert state["status"] == "on"
        assert state["detail"]["annotations"] == {"room": "bathroom", "device": "extractor fan"}

        (world / "relay-stuck").touch()
        off = await run.http.post(HA_SWITCH, content=b"OFF")
        assert off.text == "OFF"
        await run.wait(lambda: state_of(run, "homeassistant_switch") == "fault", 20, "fault")
        assert relay.read_text() == "on\n"  # the stuck relay did not move
        refused = await run.http.post(HA_SWITCH, content=b"ON")
        assert refused.status_code == 500 and refused.json() == {"error": "watcher is disabled"}
        assert (await run.http.get(HA_SWITCH)).text == "OFF"


async def wait_for_gate(run: Any, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "canary-gate" / "wait_for_gate.py"),
        "--agent",
        run.agent.http_url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_the_rollout_waits_on_the_canary_gate_and_stops_when_it_closes(
    agent_factory: Any,
) -> None:
    async with agent_factory(("canary-gate",)) as run:
        await run.wait(lambda: run.entry_status("canary_gate") == "running", 10)
        example = run.store / "canary-gate"
        release = example / "release.json"
        release.write_text(release.read_text())  # a deployment lands on the canary
        await run.wait(lambda: state_of(run, "canary_gate") == "soaking", 20, "soaking")

        # Soaking lasts ten minutes: the rollout keeps waiting, and gives up at its timeout.
        code, output = await wait_for_gate(run, "--every", "1", "--timeout", "2")
        assert code == 2, output
        assert "canary_gate is soaking" in output and "did not decide within 2s" in output

        # A bad canary: the next release fails its first check and the gate closes.
        (example / "world").mkdir(exist_ok=True)
        (example / "world" / "error_rate").write_text("7.5\n")
        release.write_text('{"service": "checkout", "version": "2.4.1"}\n')
        await run.wait(lambda: state_of(run, "canary_gate") == "closed", 20, "closed")
        code, output = await wait_for_gate(run, "--every", "1")
        assert code == 1, output
        assert output.strip().endswith("canary_gate is closed")

        code, output = await wait_for_gate(run, "--machine", "no_such_gate")
        assert code == 2 and "404" in output
