"""How the agent shows its machines: one definition for the HTTP API and the NATS service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from machinery.agent.store import MachineEntry
    from machinery.core.machine import Machine

__all__ = ["machine_summary", "watcher_views"]


def machine_summary(entry: MachineEntry) -> dict[str, Any]:
    """A machine as listed: Choria's MachineState, our ``status``, the errors of a broken
    manifest, and ``state_entered`` (wall time, Unix seconds) for a running machine."""
    summary = entry.to_dict()
    if entry.machine is not None:
        summary["state_entered"] = round(entry.machine.state_entered, 3)
    return summary


def watcher_views(machine: Machine) -> list[dict[str, Any]]:
    """Each watcher of ``machine``: its spec, whether it is active, its runs and last state."""
    items = []
    for watcher in machine.watchers:
        status = watcher.status
        next_run = None
        if status.next_run is not None:
            next_run = machine.clock.now() + (status.next_run - machine.clock.monotonic())
        items.append(
            {
                "name": watcher.name,
                "type": watcher.type_name,
                "state_match": list(watcher.spec.state_match),
                "active": machine.should_watch(watcher.spec),
                "interval": watcher.spec.interval,
                "status": {
                    "outcome": status.outcome,
                    "last_run": status.last_run,
                    "last_duration": status.last_duration,
                    "next_run": next_run,
                    "runs": status.runs,
                    "outcomes": status.outcomes,
                    "last_error": status.last_error,
                    "durations": status.recent_durations(),
                },
                "state": watcher.current_state().payload,
            }
        )
    return items
