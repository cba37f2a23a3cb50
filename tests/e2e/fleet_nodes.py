"""Three real agents on one real nats-server, for the fleet control tests.

- ``web1.example.net``: role web, Debian, trusts KEY;
- ``web2.example.net``: role web, Red Hat, trusts KEY;
- ``db1.example.net``: role db, trusts no key (accepts no state change over NATS).

Each runs two machines: ``svc`` (running <-> maintenance) and ``other`` (idle).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.client import Client as NATS

from machinery.core.signing import KeyPair, generate_keypair
from tests.e2e.agent_process import AgentProcess
from tests.natsserver import NatsServer

KEY: KeyPair = generate_keypair()
NODES = {
    "web1.example.net": ({"role": "web", "os": {"family": "debian"}}, True),
    "web2.example.net": ({"role": "web", "os": {"family": "redhat"}}, True),
    "db1.example.net": ({"role": "db", "os": {"family": "debian"}}, False),
}

SVC = """\
name: svc
version: 1.0.0
initial_state: running
transitions:
  - name: maintenance
    from: [running]
    destination: maintenance
  - name: resume
    from: [maintenance]
    destination: running
watchers:
  - name: tick
    type: timer
    state_match: [maintenance]
    properties:
      timer: 1h
"""

OTHER = """\
name: other
version: 2.0.0
initial_state: idle
transitions:
  - name: go
    from: [idle]
    destination: busy
watchers:
  - name: tick
    type: timer
    state_match: [busy]
    properties:
      timer: 1h
"""

T = TypeVar("T")


class Fleet:
    def __init__(self, server: NatsServer, agents: dict[str, AgentProcess]) -> None:
        self.server = server
        self.agents = agents

    def state(self, identity: str, machine: str = "svc") -> str | None:
        entry = self.agents[identity].machine(machine)
        return None if entry is None else entry.get("state")

    def states(self, machine: str = "svc") -> dict[str, str | None]:
        return {identity: self.state(identity, machine) for identity in self.agents}

    def reset(self) -> None:
        """Every svc back to running (through each agent's loopback HTTP API)."""
        for identity, agent in self.agents.items():
            if self.state(identity) != "running":
                agent.post("/api/v1/machines/svc/transition", {"transition": "resume"})
        for agent in self.agents.values():
            agent.wait(
                lambda agent=agent: (
                    (m := agent.machine("svc")) is not None and m["state"] == "running"
                ),
                what="svc running",
            )

    def ask(self, work: Callable[[NATS], Awaitable[T]]) -> T:
        """Run ``work`` with a fresh NATS client."""

        async def main() -> T:
            client = await nats.connect(self.server.url)
            try:
                return await work(client)
            finally:
                await client.close()

        return asyncio.run(main())


def start_fleet(base: Path) -> Iterator[Fleet]:
    server = NatsServer(base / "nats").start()
    agents: dict[str, AgentProcess] = {}
    try:
        for identity, (facts, trusts) in NODES.items():
            home = base / identity
            home.mkdir()
            (home / "facts.json").write_text(json.dumps(facts))
            env = {
                "MACHINERY_NATS__SERVERS": server.url,
                "MACHINERY_FACTS": str(home / "facts.json"),
            }
            if trusts:
                env["MACHINERY_CONTROL__PUBLIC_KEYS"] = KEY.public_hex
            agent = AgentProcess(home, env=env, args=["--identity", identity])
            for name, manifest in (("svc", SVC), ("other", OTHER)):
                (agent.store / name).mkdir()
                (agent.store / name / "machine.yaml").write_text(manifest)
            agents[identity] = agent
        for agent in agents.values():
            agent.start()
        fleet = Fleet(server, agents)
        for identity, agent in agents.items():
            agent.wait(
                lambda identity=identity: (
                    fleet.state(identity) == "running" and fleet.state(identity, "other") == "idle"
                ),
                what="machines running",
            )
        yield fleet
    finally:
        for agent in agents.values():
            agent.kill()
        server.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from start_fleet(tmp_path_factory.mktemp("fleet"))


def signed(
    machine: str, transition: str, where: list[str], key: KeyPair = KEY, **changes: Any
) -> dict[str, Any]:
    from machinery.nats.control import parse_where, sign_request, transition_request

    request = transition_request(machine, transition, parse_where(where))
    request.update(changes)
    return sign_request(request, key)
