"""The fleet dashboard server: NATS in, the dashboard and a JSON/SSE API out.

:class:`FleetDashboard` connects to NATS (reconnecting forever, like the agent), takes every event
on ``choria.machine.>`` into a :class:`~machinery.fleet.model.FleetModel`, and serves on one
HTTP listener (loopback by default):

- ``/``: the dashboard page in fleet mode (see :mod:`machinery.api.dashboard`);
- ``GET /api/fleet/nodes``: every node and its machines' summaries, and the broker's status;
- ``GET /api/fleet/nodes/{identity}/machines/{name}``: one machine: summary, the graph seen so
  far, watchers, recent transitions;
- ``GET /api/fleet/events``: server-sent events, each ``data`` the CloudEvent as it came from
  NATS (filters ``identity``, ``machine``, ``kind=transitions|watchers``);
- ``GET /healthz``.

History: when the broker has a JetStream stream capturing ``choria.machine.>`` (Choria's brokers
run ``CHORIA_MACHINE``), the events of the last ``replay`` seconds are read from it first, through
an ordered consumer that then carries on live, so the dashboard starts with the fleet's current
states instead of waiting for the next transitions. Without the stream it subscribes to the
subjects directly and learns from what happens from then on.

Nothing here changes anything on a node: the fleet view is read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, HTTPException, Path, Query, Request
from sse_starlette.sse import EventSourceResponse

from machinery import __version__
from machinery.agent.config import NatsSettings
from machinery.api.app import install_error_handlers
from machinery.api.dashboard import router as dashboard_router
from machinery.core.notifications import MachineEvent
from machinery.events.bus import event_query
from machinery.events.cloudevents import CloudEventError, decode_cloudevent, encode_cloudevent
from machinery.fleet.model import FleetModel
from machinery.nats.connection import BrokerConnection

__all__ = ["SUBJECT", "EventHub", "FleetDashboard", "create_fleet_app"]

log = logging.getLogger("machinery.fleet")

SUBJECT = "choria.machine.>"
IDENTITY_PATTERN = r"^[^/\x00-\x1f\x7f]{1,255}$"
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$"

Identity = Annotated[str, Path(pattern=IDENTITY_PATTERN, max_length=255)]
Name = Annotated[str, Path(pattern=NAME_PATTERN, max_length=128)]


@dataclass(frozen=True, slots=True)
class Published:
    """One event for the live stream: its sequence, the event, its CloudEvent text."""

    sequence: int
    event: MachineEvent
    text: str


class _Listener:
    def __init__(self, size: int, accepts: Callable[[MachineEvent], bool]) -> None:
        self.queue: asyncio.Queue[Published] = asyncio.Queue(size)
        self.accepts = accepts
        self.dropped = 0

    def offer(self, item: Published) -> None:
        if not self.accepts(item.event):
            return
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(item)


class EventHub:
    """Fans events out to the live streams; a slow client loses its oldest events."""

    def __init__(self, *, max_listeners: int = 64, queue_size: int = 1000) -> None:
        self.max_listeners = max_listeners
        self.queue_size = queue_size
        self.sequence = 0
        self._listeners: set[_Listener] = set()

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    def publish(self, event: MachineEvent, text: str) -> None:
        self.sequence += 1
        item = Published(self.sequence, event, text)
        for listener in self._listeners:
            listener.offer(item)

    @contextlib.asynccontextmanager
    async def listen(
        self, accepts: Callable[[MachineEvent], bool] = lambda _e: True
    ) -> AsyncIterator[asyncio.Queue[Published]]:
        if len(self._listeners) >= self.max_listeners:
            raise OverflowError(f"at most {self.max_listeners} event streams")
        listener = _Listener(self.queue_size, accepts)
        self._listeners.add(listener)
        try:
            yield listener.queue
        finally:
            self._listeners.discard(listener)


class FleetDashboard:
    """The fleet dashboard: ``await dashboard.run()`` until ``stop()``."""

    def __init__(
        self,
        nats: NatsSettings,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 8348,
        stream: str | None = "CHORIA_MACHINE",
        replay: float = 3600.0,
        model: FleetModel | None = None,
        max_sse_clients: int = 64,
    ) -> None:
        self.nats = nats
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.stream = stream
        self.replay = replay
        self.model = model or FleetModel()
        self.hub = EventHub(max_listeners=max_sse_clients)
        self.broker = BrokerConnection(nats, name="machinery fleet dashboard")
        self.url: str | None = None
        self.source = "none"  # "core" (live only) or "jetstream:<stream>" (replay, then live)
        self.received = 0
        self.undecodable = 0
        self.started = time.time()
        self._stop = asyncio.Event()
        self._server: Any = None
        # Ends the live streams when the dashboard stops (made in run(): it needs the loop).
        self.shutdown: anyio.Event | None = None

    # -- events -------------------------------------------------------------------------------

    def receive(self, payload: bytes) -> MachineEvent | None:
        """Take one message from NATS: into the model, then out to the live streams."""
        self.received += 1
        try:
            event = decode_cloudevent(payload)
        except CloudEventError as exc:
            self.undecodable += 1
            log.debug("skipping a message: %s", exc)
            return None
        text = payload.decode("utf-8", "replace")
        try:
            is_cloudevent = "specversion" in json.loads(text)
        except ValueError:
            is_cloudevent = False
        if not is_cloudevent:
            # Choria before 0.13 published the bare data: stream it as a CloudEvent anyway.
            text = encode_cloudevent(event)
        self.model.apply(event, time.time())
        self.hub.publish(event, text)
        return event

    async def _subscribe(self) -> None:
        client = self.broker.client
        assert client is not None

        async def received(message: Any) -> None:
            self.receive(message.data)

        if self.stream and self.replay > 0:
            try:
                from nats.js.api import ConsumerConfig, DeliverPolicy

                js = client.jetstream()
                await js.stream_info(self.stream)
                start = datetime.fromtimestamp(time.time() - self.replay, UTC)
                await js.subscribe(
                    SUBJECT,
                    stream=self.stream,
                    cb=received,
                    ordered_consumer=True,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_TIME,
                        opt_start_time=start,
                    ),
                )
            except Exception as exc:  # no JetStream, no such stream, no permission
                log.info(
                    "no history from stream %s (%s): showing events from now on",
                    self.stream,
                    exc or type(exc).__name__,
                )
            else:
                self.source = f"jetstream:{self.stream}"
                log.info("reading %s from stream %s, then live", SUBJECT, self.stream)
                return
        await client.subscribe(SUBJECT, cb=received)
        self.source = "core"
        log.info("subscribed to %s", SUBJECT)

    async def _consume(self) -> None:
        await self.broker.wait_connected(None)
        await self._subscribe()

    # -- the run ------------------------------------------------------------------------------

    def bind(self) -> socket.socket:
        """Listen (port 0: any free port) and set ``url``; ``run()`` binds if not done."""
        from machinery.api.server import bind

        sock = bind(self.listen_host, self.listen_port)
        host, port = sock.getsockname()[:2]
        self.url = (
            f"http://[{host}]:{port}/"
            if sock.family == socket.AF_INET6
            else f"http://{host}:{port}/"
        )
        return sock

    async def run(self, sock: socket.socket | None = None) -> None:
        import uvicorn

        from machinery.api.server import QuietServer

        sock = sock or self.bind()
        self.shutdown = anyio.Event()
        config = uvicorn.Config(
            create_fleet_app(self),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = QuietServer(config)
        try:
            async with asyncio.TaskGroup() as tasks:
                broker = tasks.create_task(self.broker.run(), name="nats")
                consumer = tasks.create_task(self._consume(), name="consume")
                http = tasks.create_task(self._server.serve(sockets=[sock]), name="http")
                await self._stop.wait()
                self.shutdown.set()
                self._server.should_exit = True
                await http
                consumer.cancel()
                broker.cancel()
        finally:
            sock.close()

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        broker = self.broker.status()
        return {
            "connected": self.broker.is_connected,
            "state": broker["state"],
            "servers": broker["servers"],
            "connected_url": broker["connected_url"],
            "last_error": broker["last_error"],
            "source": self.source,
            "received": self.received,
            "undecodable": self.undecodable,
        }


def create_fleet_app(dashboard: FleetDashboard) -> FastAPI:
    """The fleet dashboard's HTTP app."""
    app = FastAPI(
        title="machinery fleet dashboard",
        version=__version__,
        description="Every node's machines, as their events on NATS tell.",
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(dashboard_router(mode="fleet"))
    model = dashboard.model

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "mode": "fleet",
            "uptime": round(time.time() - dashboard.started, 3),
            "nodes": len(model.nodes),
            "machines": model.machine_count,
            "nats": dashboard.status(),
        }

    @app.get("/api/fleet/nodes")
    async def nodes() -> dict[str, Any]:
        return {
            "version": __version__,
            "broker": dashboard.status(),
            "events": model.events,
            "nodes": model.nodes_document(),
        }

    @app.get("/api/fleet/nodes/{identity}/machines/{name}")
    async def machine(identity: Identity, name: Name) -> dict[str, Any]:
        document = model.machine_document(identity, name)
        if document is None:
            raise HTTPException(404, f"machine {name} on {identity} not seen")
        return document

    @app.get("/api/fleet/events", response_class=EventSourceResponse)
    async def events(
        request: Request,
        identity: Annotated[str | None, Query(max_length=255)] = None,
        machine: Annotated[str | None, Query(max_length=128)] = None,
        kind: Annotated[str | None, Query(pattern="^(transitions|watchers)$")] = None,
    ) -> EventSourceResponse:
        """Server-sent events: each ``data`` is one CloudEvent, as published on NATS."""

        accepts = event_query(identity=identity, machine=machine, kind=kind)
        try:
            listening = dashboard.hub.listen(accepts)
            queue = await listening.__aenter__()
        except OverflowError as exc:
            raise HTTPException(503, str(exc)) from None

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                while True:
                    item = await queue.get()
                    yield {"id": str(item.sequence), "event": "machine", "data": item.text}
            finally:
                await listening.__aexit__(None, None, None)

        return EventSourceResponse(
            stream(), ping=15, send_timeout=30, shutdown_event=dashboard.shutdown
        )

    return app
