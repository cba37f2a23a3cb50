"""Choria's one-line texts for events, as ``machine watch`` and the console print them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from machinery.core.notifications import MachineEvent

__all__ = ["console_line", "describe_watcher_state", "watch_line"]


def describe_watcher_state(watcher_type: str, payload: Mapping[str, Any]) -> str:
    """The ``String()`` text of a watcher state payload of any known type."""
    from machinery.watchers.registry import default_registry

    registry = default_registry()
    if watcher_type in registry:
        try:
            return registry[watcher_type].describe_payload(payload)
        except (TypeError, ValueError, KeyError, ArithmeticError):
            pass  # a payload we cannot read (another version, or hostile): the generic text
    return (
        f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} "
        f"{watcher_type} watcher state"
    )


def console_line(event: MachineEvent) -> str:
    """What ``machinery run`` logs for an event: Choria's console notifier lines (spec 4.5)."""
    if event.protocol == "io.choria.machine.v1.transition":
        data = event.data()
        return (
            f"{data['machine']} transitioned via event {data['transition']}: "
            f"{data['from_state']} => {data['to_state']}"
        )
    return event.describe()


def watch_line(event: MachineEvent, *, local_time: bool = True) -> str:
    """What ``machinery watch`` prints: ``[HH:MM:SS] <text>``, the event's time."""
    try:
        stamp = time.localtime(event.timestamp) if local_time else time.gmtime(event.timestamp)
        when = time.strftime("%H:%M:%S", stamp)
    except (OverflowError, OSError, ValueError):
        when = str(event.timestamp)  # beyond what the platform's clock can show
    return f"[{when}] {event.describe()}"
