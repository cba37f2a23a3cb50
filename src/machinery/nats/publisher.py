"""Events to NATS on Choria's subjects, through the spool.

:class:`EventPublisher` is a notifier on the agent's event bus: each event is encoded once and
appended to the spool. Its ``run()`` task drains the spool in order whenever the broker is
connected, confirms each batch with a round trip (``flush``; for subjects a JetStream stream
stores, the stream's acknowledgements), and only then deletes it. Delivery
is at least once: a batch interrupted by a disconnect is sent again from its first message. Each
message carries its CloudEvent id as ``Nats-Msg-Id``, so a JetStream stream capturing
``choria.machine.>`` (as Choria's brokers run) discards those repeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from machinery.agent.spool import EventSpool, SpooledEvent
from machinery.core.notifications import MachineEvent
from machinery.events.cloudevents import go_json, new_event_id, rfc3339, shared_cloudevent
from machinery.nats.cancellation import restore_cancellation
from machinery.nats.connection import BrokerConnection

__all__ = ["EventPublisher"]

log = logging.getLogger("machinery.nats")

_BATCH = 1000
_FLUSH_TIMEOUT = 10
_RETRY = 1.0
_STREAM_LOOKUP_TIMEOUT = 5.0
_STREAM_LOOKUP_TTL = 30.0
_STREAM_NAMES = "$JS.API.STREAM.NAMES"


SPOOL_DROPPED_TYPE = "io.machinery.agent.v1.spool_dropped"
SPOOL_DROPPED_SUBJECT = "machinery.agent.spool_dropped"


class EventPublisher:
    """Spools every event and publishes the spool to NATS, in order."""

    def __init__(self, spool: EventSpool, connection: BrokerConnection) -> None:
        self.spool = spool
        self.connection = connection
        self.published = 0
        self.failures = 0
        self.refused = 0
        self.last_published: float | None = None
        self._streams: dict[str, tuple[bool, float]] = {}
        self._js: tuple[NATS, JetStreamContext] | None = None
        self._drop_identity = ""
        self._drops_unannounced = 0
        self._drops_total = 0

    def notify(self, event: MachineEvent) -> None:
        event_id, text = shared_cloudevent(event)
        self.spool.append(event.subject, event_id, text.encode())

    def announce_dropped(self, identity: str, dropped: int, total: int) -> None:
        """Note that the spool dropped its oldest events; the fleet hears of it on reconnect.

        The warning is a CloudEvent of type ``io.machinery.agent.v1.spool_dropped`` on subject
        ``machinery.agent.spool_dropped`` (Choria has no such event), published ahead of the
        surviving events. It is not spooled: in a full spool it would push out one more event
        and announce that too.
        """
        self._drop_identity = identity
        self._drops_unannounced += dropped
        self._drops_total = total

    def _drop_warning(self) -> SpooledEvent:
        event_id = new_event_id()
        now = time.time()
        event = {
            "specversion": "1.0",
            "id": event_id,
            "source": "io.machinery.agent",
            "type": SPOOL_DROPPED_TYPE,
            "subject": self._drop_identity,
            "datacontenttype": "application/json",
            "time": rfc3339(now),
            "data": {
                "protocol": SPOOL_DROPPED_TYPE,
                "identity": self._drop_identity,
                "dropped": self._drops_unannounced,
                "dropped_total": self._drops_total,
                "timestamp": int(now),
            },
        }
        return SpooledEvent(0, SPOOL_DROPPED_SUBJECT, event_id, go_json(event).encode())

    async def run(self) -> None:
        acknowledged = 0
        while True:
            await self.spool.wait()
            if not await self.connection.wait_connected(None):
                return
            batch = await self.spool.read(acknowledged, _BATCH)
            if not batch:
                continue
            warned = self._drops_unannounced
            try:
                if warned:
                    await self._publish([self._drop_warning()])
                    self._drops_unannounced -= warned
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
        acks: list[asyncio.Future[Any]] = []
        for item in batch:
            headers = {"Nats-Msg-Id": item.msg_id}
            if await self._captured(client, item.subject):
                acks.append(
                    await self._jetstream(client).publish_async(
                        item.subject, item.payload, headers=headers
                    )
                )
            else:
                await client.publish(item.subject, item.payload, headers=headers)
        await client.flush(timeout=_FLUSH_TIMEOUT)
        if acks:
            # A stream's acknowledgement means it stored the event on a quorum of its
            # replicas: only then may the spool forget it.
            async with asyncio.timeout(_FLUSH_TIMEOUT):
                results = await asyncio.gather(*acks, return_exceptions=True)
            refused = [r for r in results if isinstance(r, nats.js.errors.APIError)]
            for result in results:
                if isinstance(result, BaseException) and result not in refused:
                    raise result
            if refused:
                # The stream answered but would not store them (full, or a limit): retrying
                # cannot help, and holding the spool back for them would stop every event.
                self.refused += len(refused)
                log.warning("the broker's stream refused %d events: %s", len(refused), refused[0])
        self.published += len(batch)
        self.last_published = asyncio.get_running_loop().time()

    def _jetstream(self, client: NATS) -> JetStreamContext:
        # One context per connection: it owns the inbox its acknowledgements come back on.
        if self._js is None or self._js[0] is not client:
            self._js = (client, client.jetstream(timeout=_FLUSH_TIMEOUT))
        return self._js[1]

    async def _captured(self, client: NATS, subject: str) -> bool:
        """Whether a JetStream stream stores ``subject`` (cached for a while per subject).

        For such subjects a flush is not enough: the server that got the event may die
        before the stream has it. Raises when the answer is unknown (JetStream is electing
        a leader), so the batch is retried rather than sent unconfirmed.
        """
        now = asyncio.get_running_loop().time()
        known = self._streams.get(subject)
        if known is not None and known[1] > now:
            return known[0]
        # Asked directly rather than through nats-py's JetStream manager, which reports "no
        # JetStream here" and "JetStream has no quorum now" as the same error: the first means
        # core publishing is all there is, the second that the batch must wait.
        request = json.dumps({"subject": subject}).encode()
        try:
            async with restore_cancellation():
                reply = await client.request(_STREAM_NAMES, request, timeout=_STREAM_LOOKUP_TIMEOUT)
        except nats.errors.NoRespondersError:
            captured = False  # no JetStream on this broker
        else:
            answer = json.loads(reply.data)
            if "error" in answer:
                error = answer["error"]
                raise ConnectionError(
                    f"cannot tell whether a stream stores {subject}: "
                    f"{error.get('description') or error}"
                )
            captured = bool(answer.get("streams"))
        self._streams[subject] = (captured, now + _STREAM_LOOKUP_TTL)
        return captured

    def status(self) -> dict[str, object]:
        return {
            "spool_depth": self.spool.depth,
            "appended": self.spool.appended,
            "published": self.published,
            "dropped": self.spool.dropped,
            "failures": self.failures,
            "refused": self.refused,
        }
