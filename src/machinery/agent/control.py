"""Fleet control: the agent's side of the NATS service (see :mod:`machinery.nats.service`).

Started by the daemon only when NATS is configured; nats-py and PyNaCl are imported from here on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from machinery import __version__
from machinery.agent.views import machine_summary, watcher_views
from machinery.nats.control import REFUSALS, ControlError, RequestAuthenticator
from machinery.nats.service import FleetService

if TYPE_CHECKING:
    from machinery.agent.daemon import Agent

__all__ = ["AgentControl", "fleet_service"]


class AgentControl:
    """The agent as a :class:`~machinery.nats.service.ControlTarget`."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.identity = agent.settings.identity

    def facts(self) -> Mapping[str, Any]:
        return self.agent.node.facts.get() if self.agent.node is not None else {}

    def machine_summaries(self) -> list[dict[str, Any]]:
        store = self.agent.store
        return [machine_summary(entry) for entry in store.sorted_entries()] if store else []

    async def machine_detail(self, name: str, history: int) -> dict[str, Any] | None:
        agent = self.agent
        entry = agent.store.find(name) if agent.store is not None else None
        if entry is None:
            return None
        detail = machine_summary(entry)
        detail["watchers"] = watcher_views(entry.machine) if entry.machine is not None else []
        rows = []
        if history and agent.db is not None:
            if agent.writer is not None:
                await asyncio.to_thread(agent.writer.flush, 2.0)
            rows = await asyncio.to_thread(agent.db.history, name, limit=history)
        detail["history"] = [row.to_dict() for row in rows]
        return detail

    async def transition(self, name: str, event: str) -> dict[str, Any]:
        entry = self.agent.store.find(name) if self.agent.store is not None else None
        if entry is None or entry.machine is None:
            reason = "is not valid" if entry is not None else "not found"
            raise ControlError("not_found", f"machine {name} {reason}")
        machine = entry.machine
        if not machine.fsm.can(event):
            raise ControlError(
                "invalid",
                f"Could not perform {event} transition: transition {event} is not valid while "
                f"in {machine.state} state",
            )
        result = await machine.transition(event)
        return {
            "success": result.valid,
            "machine": machine.name,
            "transition": event,
            "from_state": result.source,
            "to_state": result.destination,
            "changed": result.changed,
        }

    def agent_status(self) -> dict[str, Any]:
        agent = self.agent
        health = agent.health()
        return {
            "version": __version__,
            "identity": self.identity,
            "started": agent.started,
            "uptime": round(time.time() - agent.started, 3),
            "machines": health["machines"],
            "invalid_machines": health["invalid_machines"],
            "nats": agent.broker.status(),
            "spool": agent.publisher.status() if agent.publisher is not None else None,
            "control": {"public_keys": len(agent.settings.control.public_keys)},
        }

    def count(self, verb: str, outcome: str) -> None:
        metrics = self.agent.metrics
        if metrics is None:
            return
        metrics.control_requests.labels(verb, outcome).inc()
        if outcome in REFUSALS:
            metrics.control_refusals.labels(outcome).inc()


def fleet_service(agent: Agent) -> FleetService:
    """The agent's fleet control service, trusting the keys in ``control.public_keys``."""
    keys = [bytes.fromhex(key) for key in agent.settings.control.public_keys]
    clock = agent.node.clock if agent.node is not None else None
    authenticator = RequestAuthenticator(keys, now=clock.now if clock else time.time)
    return FleetService(agent.broker, AgentControl(agent), authenticator)
