"""Machines that run together in one process, and what they share.

:class:`MachineGroup` is the :class:`~machinery.core.machine.MachineHost` of ``machinery run``
and of the agent: it answers ``foreign_state_required`` lookups and delivers transitions to the
machines that ``subscribe`` to them (spec 1.8 and 1.9), and owns the tasks it starts for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from machinery.core.machine import Machine
from machinery.core.notifications import TransitionNotification

__all__ = ["MachineGroup"]

log = logging.getLogger("machinery.host")


class MachineGroup:
    """The machines of one process, by name (the first loaded wins a duplicate name)."""

    def __init__(self) -> None:
        self._machines: list[Machine] = []
        # (publishing machine, event) -> [(subscriber, its transition)]
        self._subscriptions: dict[tuple[str, str], list[tuple[Machine, str]]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._machines))

    def __len__(self) -> int:
        return len(self._machines)

    def add(self, machine: Machine) -> None:
        self._machines.append(machine)
        for transition in machine.spec.transitions:
            for sub in transition.subscribe:
                self._subscriptions[(sub.machine_name, sub.event)].append(
                    (machine, transition.name)
                )

    def remove(self, machine: Machine) -> None:
        with contextlib.suppress(ValueError):
            self._machines.remove(machine)
        for key, subscribers in list(self._subscriptions.items()):
            remaining = [(m, t) for m, t in subscribers if m is not machine]
            if remaining:
                self._subscriptions[key] = remaining
            else:
                del self._subscriptions[key]

    def get(self, name: str) -> Machine | None:
        for machine in self._machines:
            if machine.name == name:
                return machine
        return None

    # -- MachineHost -----------------------------------------------------------------------

    def lookup_state(self, machine_name: str) -> str | None:
        machine = self.get(machine_name)
        return None if machine is None else machine.state

    def transitioned(self, machine: Machine, notification: TransitionNotification) -> None:
        subscribers = self._subscriptions.get((machine.name, notification.transition))
        if not subscribers:
            return
        for subscriber, transition in subscribers:
            # Delivered asynchronously, as in Choria: the firing machine holds its own lock.
            task = asyncio.get_running_loop().create_task(
                self._deliver(subscriber, transition, machine.name, notification.transition),
                name=f"subscription {machine.name}#{notification.transition}->{subscriber.name}",
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, subscriber: Machine, transition: str, source: str, event: str) -> None:
        subscriber.log_info(
            subscriber.name, f"Triggering {transition} transition via {source}#{event}"
        )
        try:
            await subscriber.transition(transition)
        except Exception:
            log.exception("delivering %s#%s to %s failed", source, event, subscriber.name)

    async def aclose(self) -> None:
        """Cancel subscription deliveries still in flight."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
