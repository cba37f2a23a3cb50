"""Simulated fleet nodes for the fleet benchmark: ``python -m bench.fleetnodes URL FIRST COUNT KEY``.

Each node is what a real agent runs for fleet control, :class:`machinery.nats.service.FleetService`
with its own NATS connection, identity, facts and signature checks (the agent's
:class:`~machinery.nats.control.RequestAuthenticator` trusting ``KEY``); only the machines behind
it are simulated: 10 per node, held in memory, with a two-state graph (running <->
maintenance), so no machine runtime or store is needed for a thousand nodes.

The process also publishes transition events on request: a message on ``bench.fleet.burst``
(``{"rate": per_second_for_this_process, "seconds": n, "reply": subject}``) makes it publish
Choria transition events of its nodes' machines at that rate, then report how many, and every
machine's final state, on ``reply``.
It prints ``ready`` once every node's service is registered, and runs until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from machinery.agent.config import NatsSettings
from machinery.core.notifications import TransitionNotification
from machinery.events.cloudevents import encode_cloudevent
from machinery.nats.connection import BrokerConnection
from machinery.nats.control import ControlError, RequestAuthenticator
from machinery.nats.service import FleetService

MACHINES = 10
GRAPH = {("running", "maintenance"): "maintenance", ("maintenance", "resume"): "running"}


def identity_of(number: int) -> str:
    return f"node{number:05d}.bench.example.net"


class SimulatedNode:
    """A :class:`~machinery.nats.service.ControlTarget` with 10 in-memory machines."""

    def __init__(self, number: int) -> None:
        self.identity = identity_of(number)
        self._facts = {"role": "web" if number % 2 else "db", "rack": f"r{number % 10}"}
        now = time.time()
        self.states = {f"svc{i}": ("running", now) for i in range(MACHINES)}

    def facts(self) -> Mapping[str, Any]:
        return self._facts

    def _summary(self, name: str) -> dict[str, Any]:
        state, entered = self.states[name]
        return {
            "name": name,
            "path": f"/etc/machinery/machines/{name}",
            "status": "running",
            "version": "1.0.0",
            "state": state,
            "id": f"{self.identity}-{name}",
            "start_time": int(entered),
            "available_transitions": [t for (s, t) in GRAPH if s == state],
            "scout": False,
            "current_state": {},
            "state_entered": round(entered, 3),
        }

    def machine_summaries(self) -> list[dict[str, Any]]:
        return [self._summary(name) for name in self.states]

    async def machine_detail(self, name: str, history: int) -> dict[str, Any] | None:
        if name not in self.states:
            return None
        return {**self._summary(name), "watchers": [], "history": []}

    async def transition(self, name: str, event: str) -> dict[str, Any]:
        if name not in self.states:
            raise ControlError("not_found", f"machine {name} not found")
        state, _ = self.states[name]
        destination = GRAPH.get((state, event))
        if destination is None:
            raise ControlError("invalid", f"transition {event} is not valid while in {state}")
        self.states[name] = (destination, time.time())
        return {
            "success": True,
            "machine": name,
            "transition": event,
            "from_state": state,
            "to_state": destination,
            "changed": True,
        }

    def agent_status(self) -> dict[str, Any]:
        return {"identity": self.identity, "machines": MACHINES}

    def count(self, verb: str, outcome: str) -> None:
        pass


async def publish_burst(
    broker: BrokerConnection, nodes: list[SimulatedNode], rate: float, seconds: float
) -> int:
    """Transition events of these nodes' machines at ``rate`` per second for ``seconds``."""
    client = broker.client
    assert client is not None
    tick = 0.02
    sent = 0
    pairs = [(node, name) for node in nodes for name in node.states]
    loop = asyncio.get_running_loop()
    started = loop.time()
    while (elapsed := loop.time() - started) < seconds:
        owed = rate * elapsed - sent
        for _ in range(int(owed)):
            node, name = pairs[sent % len(pairs)]
            state, _ = node.states[name]
            event = "maintenance" if state == "running" else "resume"
            destination = GRAPH[(state, event)]
            node.states[name] = (destination, time.time())
            notification = TransitionNotification(
                identity=node.identity,
                id=f"{node.identity}-{name}",
                version="1.0.0",
                timestamp=int(time.time()),
                machine=name,
                transition=event,
                from_state=state,
                to_state=destination,
            )
            await client.publish(
                "choria.machine.transition", encode_cloudevent(notification).encode()
            )
            sent += 1
        await asyncio.sleep(tick)
    await client.flush()
    return sent


async def main(url: str, first: int, count: int, key: str) -> None:
    nodes = [SimulatedNode(number) for number in range(first, first + count)]
    settings = NatsSettings(servers=[url])
    brokers = []
    services = []
    tasks = []
    for node in nodes:
        broker = BrokerConnection(settings, name=f"bench {node.identity}")
        service = FleetService(broker, node, RequestAuthenticator([bytes.fromhex(key)]))
        brokers.append(broker)
        services.append(service)
        tasks.append(asyncio.create_task(broker.run()))
        tasks.append(asyncio.create_task(service.run()))
    try:
        while not all(service.service is not None for service in services):
            await asyncio.sleep(0.05)
        control = brokers[0]
        client = control.client
        assert client is not None

        async def burst(msg: Any) -> None:
            order = json.loads(msg.data)
            sent = await publish_burst(control, nodes, order["rate"], order["seconds"])
            states = {
                node.identity: {name: state for name, (state, _) in node.states.items()}
                for node in nodes
            }
            report = {"sent": sent, "states": states}
            await client.publish(order["reply"], json.dumps(report).encode())

        await client.subscribe("bench.fleet.burst", cb=burst)
        await client.flush()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the driver closes our stdin
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    url, first, count, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    try:
        asyncio.run(main(url, first, count, key))
    except KeyboardInterrupt:
        pass
