"""The agent's event bus: every event to every sink, and to live subscribers.

Sinks (console, state database, metrics, the NATS spool) are called synchronously and must not
block. Subscribers (the SSE stream, the dashboard) each get a bounded queue: a slow client loses
its oldest events (counted), never slows the machines down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from machinery.core.notifications import MachineEvent, Notifier, TransitionNotification

__all__ = ["EventBus", "Subscriber", "SubscriberLimitError", "event_query"]

log = logging.getLogger("machinery.events")


def event_query(
    *,
    machine: str | None = None,
    identity: str | None = None,
    protocol: str | None = None,
    kind: str | None = None,
) -> Callable[[MachineEvent], bool]:
    """The events an event-stream request asks for: those of exactly this ``machine``,
    ``identity`` and CloudEvent type (``protocol``), and of this ``kind`` (``"transitions"`` or
    ``"watchers"``); a parameter left out matches every event."""

    def accepts(event: MachineEvent) -> bool:
        if machine is not None and event.machine != machine:
            return False
        if identity is not None and event.identity != identity:
            return False
        if protocol is not None and event.protocol != protocol:
            return False
        if kind is None:
            return True
        return isinstance(event, TransitionNotification) == (kind == "transitions")

    return accepts


class SubscriberLimitError(RuntimeError):
    """Too many live subscribers."""


@dataclass(eq=False)
class Subscriber:
    """One live consumer of events, with a bounded queue."""

    queue: asyncio.Queue[tuple[int, MachineEvent]]
    accepts: Callable[[MachineEvent], bool]
    dropped: int = 0

    def offer(self, sequence: int, event: MachineEvent) -> None:
        if not self.accepts(event):
            return
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait((sequence, event))

    async def get(self) -> tuple[int, MachineEvent]:
        return await self.queue.get()


class EventBus:
    """A Notifier that fans out to sinks and subscribers."""

    def __init__(self, *, max_subscribers: int = 64, queue_size: int = 1000) -> None:
        self._sinks: list[Notifier] = []
        self._subscribers: set[Subscriber] = set()
        self.max_subscribers = max_subscribers
        self.queue_size = queue_size
        self.sequence = 0

    def add_sink(self, sink: Notifier) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: Notifier) -> None:
        with contextlib.suppress(ValueError):
            self._sinks.remove(sink)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def notify(self, event: MachineEvent) -> None:
        self.sequence += 1
        for sink in self._sinks:
            try:
                sink.notify(event)
            except Exception:
                log.exception("event sink %r failed", sink)
        for subscriber in self._subscribers:
            subscriber.offer(self.sequence, event)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, accepts: Callable[[MachineEvent], bool] = lambda _e: True
    ) -> AsyncIterator[Subscriber]:
        """A live subscription for the duration of the ``async with`` block."""
        if len(self._subscribers) >= self.max_subscribers:
            raise SubscriberLimitError(f"at most {self.max_subscribers} event subscribers")
        subscriber = Subscriber(asyncio.Queue(self.queue_size), accepts)
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)
