"""State graphs of a machine: Graphviz DOT exactly as Choria prints it, and Mermaid."""

from __future__ import annotations

from machinery.core.fsm import FSM
from machinery.spec.models import MachineSpec

__all__ = ["to_dot", "to_mermaid"]


def _fsm(spec: MachineSpec) -> FSM:
    return FSM(spec.initial_state, ((t.name, t.from_, t.destination) for t in spec.transitions))


def to_dot(spec: MachineSpec, current: str | None = None) -> str:
    """``choria machine graph`` output (looplab/fsm v1.0.3 format, spec section 5): edges sorted
    by source then event, a blank line, states sorted with the current one in red."""
    fsm = _fsm(spec)
    current = spec.initial_state if current is None else current
    lines = ["digraph fsm {"]
    lines.extend(
        f'    "{source}" -> "{destination}" [ label = "{event}" ];'
        for source, event, destination in fsm.edges()
    )
    lines.append("")
    for state in fsm.states():
        lines.append(f'    "{state}" [color = "red"];' if state == current else f'    "{state}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_label(text: str) -> str:
    return text.replace('"', "#quot;").replace(":", "#colon;")


def to_mermaid(spec: MachineSpec, current: str | None = None) -> str:
    """A Mermaid ``stateDiagram-v2``; states are aliased so any name is safe."""
    fsm = _fsm(spec)
    current = spec.initial_state if current is None else current
    states = fsm.states()
    if spec.initial_state and spec.initial_state not in states:
        states.append(spec.initial_state)
    ids = {state: f"s{i}" for i, state in enumerate(states)}
    lines = ["stateDiagram-v2"]
    lines.extend(f'    state "{_mermaid_label(state)}" as {ids[state]}' for state in states)
    if spec.initial_state:
        lines.append(f"    [*] --> {ids[spec.initial_state]}")
    lines.extend(
        f"    {ids[source]} --> {ids[destination]}: {_mermaid_label(event)}"
        for source, event, destination in fsm.edges()
    )
    if current in ids:
        lines.append("    classDef current fill:#f96,stroke:#c00,stroke-width:2px")
        lines.append(f"    class {ids[current]} current")
    return "\n".join(lines) + "\n"
