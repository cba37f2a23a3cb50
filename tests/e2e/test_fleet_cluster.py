"""Fleet control across a real 3-server NATS cluster: agents on different servers all answer;
with one server killed, its node is reported as not answering, not as a failure."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from machinery.nats.fleetclient import FleetReplies, discover, gather
from tests.e2e.agent_process import AgentProcess
from tests.e2e.fleet_nodes import SVC
from tests.natsserver import NatsServer, cluster

pytestmark = pytest.mark.timeout(300)

IDENTITIES = [f"n{i}.cluster.example.net" for i in range(3)]


@pytest.fixture
def clustered(tmp_path: Path) -> Iterator[tuple[list[NatsServer], list[AgentProcess]]]:
    servers = cluster(tmp_path / "cluster", 3)
    for server in servers:
        # Clients are not told about the other servers: an agent whose server dies stays away
        # (otherwise it would reconnect to another one within a second).
        server.extra_args = ["--no_advertise"]
    agents: list[AgentProcess] = []
    try:
        for server in servers:
            server.start()
        for identity, server in zip(IDENTITIES, servers, strict=True):
            agent = AgentProcess(
                tmp_path / identity,
                env={"MACHINERY_NATS__SERVERS": server.url},
                args=["--identity", identity],
            )
            (agent.store / "svc").mkdir()
            (agent.store / "svc" / "machine.yaml").write_text(SVC)
            agents.append(agent)
        for agent in agents:
            agent.start()
        yield servers, agents
    finally:
        for agent in agents:
            agent.kill()
        for server in servers:
            server.stop()


def fleet_ls(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINERY_")}
    return subprocess.run(
        [sys.executable, "-m", "machinery", "fleet", "ls", "--format", "json", "--nats", url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_agents_on_every_server_answer_and_a_dead_server_is_a_report_not_an_error(
    clustered: tuple[list[NatsServer], list[AgentProcess]],
) -> None:
    servers, _agents = clustered
    # Routes form and every agent registers: asked through server 0, all three answer.
    deadline = time.monotonic() + 30
    while True:
        done = fleet_ls(servers[0].url)
        assert done.returncode == 0, done.stderr
        answered = {node["identity"] for node in json.loads(done.stdout) if node["answered"]}
        if answered == set(IDENTITIES):
            break
        assert time.monotonic() < deadline, f"only {answered} answered:\n{done.stderr}"
    # The same through another server.
    other = fleet_ls(servers[1].url)
    assert {node["identity"] for node in json.loads(other.stdout)} == set(IDENTITIES)

    async def discover_kill_gather() -> tuple[set[str], FleetReplies]:
        client = await nats.connect(servers[0].url)
        try:
            found = set(await discover(client))
            servers[2].kill()  # n2's only server, between the discovery and the question
            replies = await gather(client, "machines", {}, found, timeout=2.0)
            return found, replies
        finally:
            await client.close()

    found, replies = asyncio.run(discover_kill_gather())
    assert found == set(IDENTITIES)
    assert replies.missing == ["n2.cluster.example.net"]
    assert set(replies.matched) == {"n0.cluster.example.net", "n1.cluster.example.net"}

    # The command goes on with the nodes it can reach: no error, n2 is simply not there.
    after = fleet_ls(servers[0].url)
    assert after.returncode == 0, after.stderr
    nodes: list[dict[str, Any]] = json.loads(after.stdout)
    assert {n["identity"] for n in nodes if n["answered"]} == {
        "n0.cluster.example.net",
        "n1.cluster.example.net",
    }
    assert "2 node(s) answered" in after.stderr
