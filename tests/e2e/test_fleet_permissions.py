"""The broker permissions docs/fleet.md gives, on a real nats-server with real agents."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from machinery.nats.fleetclient import discover, gather, request_node
from tests.e2e.agent_process import AgentProcess
from tests.e2e.fleet_nodes import KEY, OTHER, SVC, signed
from tests.nats.test_connection_auth import ConfiguredServer

ROOT = Path(__file__).resolve().parents[2]
NODES = ("web1.example.net", "db1.example.net")


def documented_configuration() -> str:
    text = (ROOT / "docs" / "fleet.md").read_text()
    match = re.search(r"```conf\n(.*?)```", text, re.DOTALL)
    assert match, "docs/fleet.md has no ```conf block"
    return match.group(1)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConfiguredServer, Path]]:
    base = tmp_path_factory.mktemp("permissions")
    server = ConfiguredServer(base / "nats", documented_configuration()).start()
    agents = []
    try:
        for identity in NODES:
            env = {
                "MACHINERY_NATS__SERVERS": server.url(),
                "MACHINERY_NATS__USER": identity,
                "MACHINERY_NATS__PASSWORD": identity.partition(".")[0] + "-secret",
                "MACHINERY_CONTROL__PUBLIC_KEYS": KEY.public_hex,
            }
            agent = AgentProcess(base / identity, env=env, args=["--identity", identity])
            for name, manifest in (("svc", SVC), ("other", OTHER)):
                (agent.store / name).mkdir()
                (agent.store / name / "machine.yaml").write_text(manifest)
            agents.append(agent.start())
        yield server, base
    finally:
        for agent in agents:
            agent.kill()
        server.stop()


def connect_as(server: ConfiguredServer, user: str, errors: list[str] | None = None) -> Any:
    async def on_error(error: Exception) -> None:
        if errors is not None:
            errors.append(str(error))

    return nats.connect(
        server.url(), user=user, password=f"{user.partition('.')[0]}-secret", error_cb=on_error
    )


def test_operator_and_dashboard_can_ask(broker: tuple[ConfiguredServer, Path]) -> None:
    server, _ = broker

    async def main(user: str) -> set[str]:
        client = await connect_as(server, user)
        try:
            found = await discover(client)
            replies = await gather(client, "machines", {}, set(found))
            assert not replies.missing
            return set(replies.matched)
        finally:
            await client.close()

    for user in ("operator", "dashboard"):
        # The agents register once connected: poll with a bound.
        deadline = time.monotonic() + 20
        while (answered := asyncio.run(main(user))) != set(NODES):
            assert time.monotonic() < deadline, f"{user} saw only {answered}"


def test_operator_transitions_through_the_cli(
    broker: tuple[ConfiguredServer, Path], tmp_path: Path
) -> None:
    server, _ = broker
    seed = tmp_path / "seed"
    seed.write_text(KEY.seed_hex)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINERY_")}
    env |= {"MACHINERY_NATS__USER": "operator", "MACHINERY_NATS__PASSWORD": "operator-secret"}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "machinery", "fleet", "transition", "svc", "maintenance"),
            *("--seed-file", str(seed), "--where", "identity=web1*", "--format", "json"),
            *("--nats", server.url()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert [o["outcome"] for o in json.loads(done.stdout)] == ["done"]


def test_dashboard_user_cannot_send_transitions(broker: tuple[ConfiguredServer, Path]) -> None:
    server, _ = broker
    errors: list[str] = []

    async def main() -> Any:
        client = await connect_as(server, "dashboard", errors)
        try:
            request = signed("other", "go", ["identity=db1*"])
            answer = await request_node(client, "db1.example.net", "transition", request, timeout=1)
            replies = await gather(client, "transition", request, set(NODES), timeout=1)
            state = await request_node(
                client, "db1.example.net", "machine", {"machine": "other"}, timeout=5
            )
            return answer, replies, state
        finally:
            await client.close()

    answer, replies, state = asyncio.run(main())
    assert answer is None and replies.replies == {}
    assert any("permissions violation" in error.lower() for error in errors), errors
    assert state is None  # node subjects are not the dashboard's to ask, not even reads

    async def as_operator() -> Any:
        client = await connect_as(server, "operator")
        try:
            return await request_node(
                client, "db1.example.net", "machine", {"machine": "other"}, timeout=5
            )
        finally:
            await client.close()

    assert asyncio.run(as_operator())["machine"]["state"] == "idle"


def test_an_agent_cannot_listen_in_another_nodes_name(
    broker: tuple[ConfiguredServer, Path],
) -> None:
    server, _ = broker
    errors: list[str] = []

    async def main() -> None:
        client = await connect_as(server, "web1.example.net", errors)
        try:
            await client.subscribe("machinery.node.db1.example.net.transition")
            await client.flush()
            await asyncio.sleep(0)  # the violation arrives as an asynchronous error
            wait = asyncio.get_running_loop().time() + 5
            while not errors and asyncio.get_running_loop().time() < wait:
                await asyncio.sleep(0.02)
        finally:
            await client.close()

    asyncio.run(main())
    assert any("permissions violation" in error.lower() for error in errors), errors
