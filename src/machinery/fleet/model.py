"""What the fleet dashboard knows: every node, machine and watcher seen in the events on NATS.

The model is built only from Choria's events (transitions and watcher states), so it knows what
they tell: a machine's current state once it has made a transition (or since the replayed
history began), the states and transitions seen so far (the graph grows as the fleet moves),
each watcher's last published state, outcome and run time. It knows nothing an event does not
carry: a watcher's schedule, which watchers are active, the transitions a machine could take.

Memory is bounded: at most ``max_nodes`` nodes (the least recently heard from is forgotten
first), ``max_machines`` machines per node and ``max_watchers`` watchers per machine, and a
fixed number of transitions and duration samples per machine and watcher. Nodes silent for
``forget_after`` seconds are dropped.

Times are the events' own (their ``timestamp``), so a replay from a JetStream stream rebuilds
the same picture as watching live; an event older than the machine's current state does not
move the machine back (it still joins the history and the graph).

Agents that answer fleet control requests also give a **snapshot** of their machines
(:meth:`FleetModel.apply_snapshot`): every machine's current state, status and available
transitions, at once, without waiting for a transition. A node that answered once and then stops
answering discovery is marked ``answering: false`` until it answers again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from machinery.core.notifications import (
    MachineEvent,
    TransitionNotification,
    WatcherStateNotification,
)

__all__ = ["FleetModel", "MachineView", "NodeView", "WatcherView"]

HISTORY = 200
SAMPLES = 60


@dataclass(slots=True)
class WatcherView:
    """One watcher, from its state events."""

    name: str
    type: str
    last_seen: float
    outcome: str | None = None
    last_duration: float | None = None
    events: int = 0
    durations: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    state: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The same shape as the agent API's watcher items (unknown fields are null)."""
        return {
            "name": self.name,
            "type": self.type,
            "state_match": [],
            "active": None,
            "interval": None,
            "status": {
                "outcome": self.outcome,
                "last_run": self.last_seen,
                "last_duration": self.last_duration,
                "next_run": None,
                "runs": self.events,
                "outcomes": {},
                "last_error": None,
                "durations": [list(sample) for sample in self.durations],
            },
            "state": self.state,
        }


@dataclass(slots=True)
class MachineView:
    """One machine on one node."""

    identity: str
    name: str
    version: str
    id: str
    first_seen: float
    last_seen: float
    state: str | None = None
    state_entered: float | None = None
    initial: str | None = None
    transitions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    states: list[str] = field(default_factory=list)
    edges: dict[tuple[str, str, str], int] = field(default_factory=dict)
    watchers: dict[str, WatcherView] = field(default_factory=dict)
    # From the node's own answer (a snapshot), when it gave one.
    status: str | None = None
    available: list[str] | None = None

    def summary(self) -> dict[str, Any]:
        """The machine as the list shows it (field names as in the agent API)."""
        last = self.transitions[-1] if self.transitions else None
        return {
            "name": self.name,
            "identity": self.identity,
            "status": self.status or "observed",
            "available_transitions": self.available,
            "version": self.version,
            "id": self.id,
            "state": self.state,
            "state_entered": self.state_entered,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "last_transition": dict(last) if last else None,
            "watchers": len(self.watchers),
        }

    def graph(self) -> dict[str, Any]:
        """States and transitions seen, in the agent API's graph shape."""
        return {
            "machine": self.name,
            "initial": self.initial or (self.states[0] if self.states else ""),
            "current": self.state or "",
            "states": list(self.states),
            "edges": [
                {"source": s, "transition": t, "destination": d, "description": ""}
                for (s, t, d) in self.edges
            ],
        }


@dataclass(slots=True)
class NodeView:
    """One node (agent identity)."""

    identity: str
    first_seen: float
    last_seen: float
    machines: dict[str, MachineView] = field(default_factory=dict)
    # None: never asked (a node known from its events only); else whether it answers now.
    answering: bool | None = None
    last_answer: float | None = None


class FleetModel:
    """Nodes, machines and watchers from events; see the module docstring."""

    def __init__(
        self,
        *,
        max_nodes: int = 10_000,
        max_machines: int = 1_000,
        max_watchers: int = 200,
        forget_after: float | None = 86_400.0,
        now: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.max_nodes = max_nodes
        self.max_machines = max_machines
        self.max_watchers = max_watchers
        self.forget_after = forget_after
        self._now = now or time.time
        self.nodes: dict[str, NodeView] = {}
        self.events = 0
        self.ignored = 0
        self._sequence = 0

    # -- updates ----------------------------------------------------------------------------

    def apply(self, event: MachineEvent, received: float | None = None) -> MachineView | None:
        """Take one event into the model; returns its machine (None if it was ignored)."""
        identity, name = event.identity, event.machine
        if not identity or not name:
            self.ignored += 1
            return None
        when = float(event.timestamp) if event.timestamp > 0 else (received or self._now())
        machine = self._machine(event, when)
        if machine is None:
            self.ignored += 1
            return None
        self.events += 1
        if isinstance(event, TransitionNotification):
            self._transition(machine, event, when)
        elif isinstance(event, WatcherStateNotification):
            self._watcher(machine, event, when)
        return machine

    def apply_snapshot(self, identity: str, machines: Any, when: float) -> int:
        """Take a node's own list of its machines (the ``machines`` fleet reply) as the truth
        at ``when``; returns how many machines were taken. A transition event newer than the
        snapshot still wins (events carry whole seconds, so a state entered in the same second
        as an event counts as older than it)."""
        node = self._node(identity, when)
        node.answering = True
        node.last_answer = when
        taken = 0
        if not isinstance(machines, list):
            return 0
        for item in machines:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            name = item["name"]
            if not name:
                continue
            machine = self._machine_of(node, name, item, when)
            if machine is None:
                continue
            taken += 1
            status, state = item.get("status"), item.get("state")
            machine.status = status if isinstance(status, str) else None
            available = item.get("available_transitions")
            machine.available = (
                [t for t in available if isinstance(t, str)]
                if isinstance(available, list)
                else None
            )
            if not isinstance(state, str) or not state:
                continue
            entered = item.get("state_entered")
            entered = float(int(entered)) if isinstance(entered, (int, float)) else float(int(when))
            if machine.state_entered is None or entered >= machine.state_entered:
                machine.state = state
                machine.state_entered = entered
                if machine.initial is None:
                    machine.initial = state
            if state not in machine.states:
                machine.states.append(state)
        return taken

    def mark_answering(self, answering: set[str], when: float) -> None:
        """After discovery: nodes that answered before and are not in ``answering`` are marked
        as not answering; the others as answering."""
        for identity, node in self.nodes.items():
            if identity in answering:
                if node.answering is False:
                    node.answering = True
                node.last_answer = when if node.answering else node.last_answer
            elif node.answering:
                node.answering = False

    def _node(self, identity: str, when: float) -> NodeView:
        node = self.nodes.get(identity)
        if node is None:
            if len(self.nodes) >= self.max_nodes:
                oldest = min(self.nodes.values(), key=lambda n: n.last_seen)
                del self.nodes[oldest.identity]
            node = NodeView(identity, when, when)
            self.nodes[identity] = node
        node.last_seen = max(node.last_seen, when)
        return node

    def _machine_of(
        self, node: NodeView, name: str, data: dict[str, Any], when: float
    ) -> MachineView | None:
        machine = node.machines.get(name)
        if machine is None:
            if len(node.machines) >= self.max_machines:
                return None
            machine = MachineView(
                identity=node.identity,
                name=name,
                version=str(data.get("version", "")),
                id=str(data.get("id", "")),
                first_seen=when,
                last_seen=when,
            )
            node.machines[name] = machine
        if when >= machine.last_seen:
            machine.last_seen = when
            # A restarted or upgraded machine announces its new instance id and version.
            machine.version = str(data.get("version", machine.version))
            machine.id = str(data.get("id", machine.id))
        return machine

    def _machine(self, event: MachineEvent, when: float) -> MachineView | None:
        node = self._node(event.identity, when)
        return self._machine_of(node, event.machine, event.data(), when)

    def _transition(self, machine: MachineView, event: TransitionNotification, when: float) -> None:
        for state in (event.from_state, event.to_state):
            if state not in machine.states:
                machine.states.append(state)
        if machine.initial is None:
            machine.initial = event.from_state
        key = (event.from_state, event.transition, event.to_state)
        machine.edges[key] = machine.edges.get(key, 0) + 1
        self._sequence += 1
        machine.transitions.append(
            {
                "seq": self._sequence,
                "machine": machine.name,
                "id": event.id,
                "version": event.version,
                "transition": event.transition,
                "from_state": event.from_state,
                "to_state": event.to_state,
                "timestamp": when,
            }
        )
        if machine.state_entered is None or when >= machine.state_entered:
            if event.to_state != machine.state:
                # What a snapshot said could be fired was about the state just left.
                machine.available = None
            machine.state = event.to_state
            machine.state_entered = when

    def _watcher(self, machine: MachineView, event: WatcherStateNotification, when: float) -> None:
        payload = event.payload
        name = str(payload.get("name", ""))
        if not name:
            return
        watcher = machine.watchers.get(name)
        if watcher is None:
            if len(machine.watchers) >= self.max_watchers:
                return
            watcher = WatcherView(name=name, type=event.watcher_type, last_seen=when)
            machine.watchers[name] = watcher
        watcher.events += 1
        if when < watcher.last_seen:
            return  # an older state (a replay overlap): counted, not shown
        watcher.last_seen = when
        watcher.state = dict(payload)
        outcome = payload.get("previous_outcome")
        if isinstance(outcome, str) and outcome:
            watcher.outcome = outcome
        run_time = payload.get("previous_run_time")
        if isinstance(run_time, (int, float)) and not isinstance(run_time, bool):
            watcher.last_duration = run_time / 1e9
            watcher.durations.append((when, watcher.last_duration))

    # -- reading ----------------------------------------------------------------------------

    def prune(self) -> int:
        """Forget nodes silent for longer than ``forget_after``; returns how many."""
        if not self.forget_after:
            return 0
        cutoff = self._now() - self.forget_after
        stale = [identity for identity, node in self.nodes.items() if node.last_seen < cutoff]
        for identity in stale:
            del self.nodes[identity]
        return len(stale)

    def machine(self, identity: str, name: str) -> MachineView | None:
        node = self.nodes.get(identity)
        return None if node is None else node.machines.get(name)

    @property
    def machine_count(self) -> int:
        return sum(len(node.machines) for node in self.nodes.values())

    def nodes_document(self) -> list[dict[str, Any]]:
        """Every node with its machines' summaries, sorted by identity and name."""
        self.prune()
        return [
            {
                "identity": node.identity,
                "first_seen": node.first_seen,
                "last_seen": node.last_seen,
                "answering": node.answering,
                "last_answer": node.last_answer,
                "machines": [node.machines[m].summary() for m in sorted(node.machines)],
            }
            for node in sorted(self.nodes.values(), key=lambda n: n.identity)
        ]

    def machine_document(self, identity: str, name: str) -> dict[str, Any] | None:
        """One machine: summary, graph, watchers and history (newest first)."""
        machine = self.machine(identity, name)
        if machine is None:
            return None
        return {
            "summary": machine.summary(),
            "graph": machine.graph(),
            "watchers": [machine.watchers[w].document() for w in sorted(machine.watchers)],
            "history": [dict(item) for item in reversed(machine.transitions)],
        }
