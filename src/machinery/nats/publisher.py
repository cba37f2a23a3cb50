"""Events to NATS on Choria's subjects, through the spool.

:class:`EventPublisher` is a notifier on the agent's event bus: each event is encoded once and
appended to the spool. Its ``run()`` task drains the spool in order whenever the broker is
connected, confirms each batch with a round trip (``flush``), and only then deletes it. Delivery
is at least once: a batch interrupted by a disconnect is sent again from its first message. Each
message carries its CloudEvent id as ``Nats-Msg-Id``, so a JetStream stream capturing
``choria.machine.>`` (as Choria's brokers run) discards those repeats.
"""

from __future__ import annotations

import asyncio
import logging

from machinery.agent.spool import EventSpool, SpooledEvent
from machinery.core.notifications import MachineEvent
from machinery.events.cloudevents import encode_cloudevent, new_event_id
from machinery.nats.connection import BrokerConnection

__all__ = ["EventPublisher"]

log = logging.getLogger("machinery.nats")

_BATCH = 1000
_FLUSH_TIMEOUT = 10
_RETRY = 1.0


class EventPublisher:
    """Spools every event and publishes the spool to NATS, in order."""

    def __init__(self, spool: EventSpool, connection: BrokerConnection) -> None:
        self.spool = spool
        self.connection = connection
        self.published = 0
        self.failures = 0
        self.last_published: float | None = None

    def notify(self, event: MachineEvent) -> None:
        event_id = new_event_id()
        self.spool.append(event.subject, event_id, encode_cloudevent(event, event_id).encode())

    async def run(self) -> None:
        acknowledged = 0
        while True:
            await self.spool.wait()
            if not await self.connection.wait_connected(None):
                return
            batch = await self.spool.read(acknowledged, _BATCH)
            if not batch:
                continue
            try:
                await self._publish(batch)
            except Exception as exc:  # the broker went away mid-batch: resend it later
                self.failures += 1
                log.warning("publishing %d events failed, will retry: %s", len(batch), exc)
                await asyncio.sleep(_RETRY)
                continue
            acknowledged = batch[-1].seq
            self.spool.acknowledge(acknowledged, len(batch))

    async def _publish(self, batch: list[SpooledEvent]) -> None:
        client = self.connection.client
        if client is None or not self.connection.is_connected:
            raise ConnectionError("not connected")
        for item in batch:
            await client.publish(item.subject, item.payload, headers={"Nats-Msg-Id": item.msg_id})
        await client.flush(timeout=_FLUSH_TIMEOUT)
        self.published += len(batch)
        self.last_published = asyncio.get_running_loop().time()

    def status(self) -> dict[str, object]:
        return {
            "spool_depth": self.spool.depth,
            "appended": self.spool.appended,
            "published": self.published,
            "dropped": self.spool.dropped,
            "failures": self.failures,
        }
