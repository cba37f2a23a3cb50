"""Governors: at most N holders of a named slot at once (spec 1.12).

exec and archive watchers take a slot in a governor before acting. With NATS the slots are
shared by the whole fleet (JetStream key-value with compare-and-set and expiring leases); without
it, a governor is a semaphore shared by the machines of one agent. The node service is
``node.service("governor")``.

Watchers take their slot through :func:`governed`, which also logs, builds the holder name and
announces Choria's governor lifecycle events (``enter``, ``exit``, ``timeout``) on the NATS
subject ``choria.lifecycle.event.governor.<machine>`` when ``node.service("nats")`` is connected,
or logs them otherwise. Node key used besides ``governor`` and ``nats``:
``governor.unavailable`` (a set of ``(machine, watcher)`` already warned that no governor
service exists, so the warning is logged once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from machinery.lang.duration import format_go_duration

if TYPE_CHECKING:
    from machinery.core.machine import Machine

__all__ = [
    "DEFAULT_LEASE",
    "EVENT_PROTOCOL",
    "Governor",
    "GovernorError",
    "GovernorInfo",
    "GovernorTimeout",
    "UnknownGovernor",
    "event_subject",
    "governed",
    "governor_event",
    "validate_name",
]

DEFAULT_LEASE = 300.0
EVENT_PROTOCOL = "io.choria.lifecycle.v1.governor"
# The names JetStream accepts for a key-value bucket, so a name that works with the agent's
# local governors keeps working once NATS is configured.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class GovernorError(Exception):
    """A governor could not be used (unknown, misconfigured, broker away)."""


class GovernorTimeout(GovernorError):
    """No slot became free within the timeout."""


class UnknownGovernor(GovernorError):
    """No governor of that name exists (NATS governors are created explicitly)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown governor {name}")
        self.name = name


@dataclass(frozen=True, slots=True)
class GovernorInfo:
    """A governor's capacity and who holds its slots."""

    name: str
    capacity: int
    lease: float
    holders: list[dict[str, object]] = field(default_factory=list)


class Governor(Protocol):
    """Named concurrency limits."""

    def acquire(
        self, name: str, timeout: float, *, holder: str
    ) -> AbstractAsyncContextManager[int]:
        """``async with governor.acquire(name, timeout, holder=...) as sequence:`` holds a slot
        for the block; raises GovernorTimeout when none frees up in ``timeout`` seconds."""
        ...

    async def add(self, name: str, capacity: int, *, lease: float = 300.0) -> None:
        """Create or resize a governor."""
        ...

    async def view(self, name: str) -> GovernorInfo: ...

    async def evict(self, name: str, holder: str) -> bool:
        """Free a slot held by ``holder`` (a crashed node, say); True if one was freed."""
        ...

    async def names(self) -> list[str]: ...


def validate_name(name: str) -> str:
    """``name`` if it can name a governor (letters, digits, ``_`` and ``-``), else GovernorError."""
    if not NAME_PATTERN.match(name):
        raise GovernorError(
            f"invalid governor name {name!r}: use 1 to 64 letters, digits, '_' or '-'"
        )
    return name


def event_subject(machine: str) -> str:
    """The NATS subject of a machine's governor lifecycle events."""
    return f"choria.lifecycle.event.governor.{machine}"


def governor_event(
    *,
    identity: str,
    component: str,
    governor: str,
    sequence: int,
    event_type: str,
    timestamp: float,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Choria's governor lifecycle event (``io.choria.lifecycle.v1.governor``)."""
    return {
        "protocol": EVENT_PROTOCOL,
        "id": event_id or str(uuid.uuid4()),
        "identity": identity,
        "component": component,
        "timestamp": int(timestamp),
        "governor": governor,
        "sequence": sequence,
        "event_type": event_type,
    }


async def _announce(
    machine: Machine, watcher: str, governor: str, sequence: int, event_type: str
) -> None:
    event = governor_event(
        identity=machine.identity,
        component=machine.name,
        governor=governor,
        sequence=sequence,
        event_type=event_type,
        timestamp=machine.clock.now(),
    )
    body = json.dumps(event, separators=(",", ":"))
    broker = machine.node.service("nats")
    client = getattr(broker, "client", None) if getattr(broker, "is_connected", False) else None
    if client is not None:
        try:
            # A publish only queues the message: it cannot hold the watcher up.
            await client.publish(event_subject(machine.name), body.encode())
            return
        except Exception as exc:  # nats-py raises several unrelated types
            machine.log_debug(watcher, f"could not publish a governor event: {exc}")
    machine.log_info(watcher, f"Governor event: {body}")


@contextlib.asynccontextmanager
async def governed(
    machine: Machine, watcher: str, name: str, timeout: float
) -> AsyncIterator[int | None]:
    """Hold a slot in governor ``name`` for the block, on behalf of ``machine``'s ``watcher``.

    Yields the slot's sequence number, or None when the node has no governor service at all
    (``machinery run``): the block then runs ungoverned, after a warning logged once. Failing
    to get a slot (timeout, unknown governor, broker away) raises :class:`GovernorError` with
    the reason, after a ``timeout`` lifecycle event; the block's own exceptions pass through.
    """
    service: Governor | None = machine.node.service("governor")
    if service is None:
        warned: set[tuple[str, str]] = machine.node.shared("governor.unavailable", set)
        if (machine.name, watcher) not in warned:
            warned.add((machine.name, watcher))
            machine.log_warning(
                watcher,
                f"Governor {name} is not used: no governor service is available here (run the "
                "machine in the agent to have governors)",
            )
        yield None
        return
    machine.log_info(
        watcher,
        f"Obtaining a slot in the {name} Governor with {format_go_duration(timeout)} timeout",
    )
    holder = f"{machine.identity}:{machine.name}:{watcher}:{machine.random.getrandbits(32):08x}"
    entered: list[int] = []

    async def exited() -> None:
        if entered:
            await _announce(machine, watcher, name, entered[0], "exit")

    async with contextlib.AsyncExitStack() as stack:
        # Registered first so it runs last: ``exit`` is announced once the slot is free again.
        stack.push_async_callback(exited)
        try:
            sequence = await stack.enter_async_context(
                service.acquire(name, timeout, holder=holder)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await _announce(machine, watcher, name, 0, "timeout")
            if isinstance(exc, GovernorError):
                raise
            raise GovernorError(str(exc) or type(exc).__name__) from exc
        entered.append(sequence)
        await _announce(machine, watcher, name, sequence, "enter")
        yield sequence
