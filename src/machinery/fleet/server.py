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

Current states: agents with NATS answer fleet control requests (docs/fleet.md). The dashboard
discovers them (``$SRV.PING.machinery``) when it connects and every ``refresh`` seconds, and asks
every node for its machines when it starts, when it reconnects, and when a node appears or comes
back, so no machine waits for its next transition to show its state. A node that answered once
and stops answering discovery is marked as not answering.

Read-only unless given a :class:`FleetControl` (``--seed-file``): then ``POST
/api/fleet/transition`` fires a transition on one node's machine or on every node a filter
selects, each request signed with the operators' key. The browser must send the dashboard's own
bearer token, and requests from another origin are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

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
from machinery.nats.connection import BrokerConnection, ConnectionState

if TYPE_CHECKING:
    from machinery.core.signing import KeyPair

__all__ = ["SUBJECT", "EventHub", "FleetControl", "FleetDashboard", "create_fleet_app"]

log = logging.getLogger("machinery.fleet")

SUBJECT = "choria.machine.>"
IDENTITY_PATTERN = r"^[^/\x00-\x1f\x7f]{1,255}$"
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$"

Identity = Annotated[str, Path(pattern=IDENTITY_PATTERN, max_length=255)]
Name = Annotated[str, Path(pattern=NAME_PATTERN, max_length=128)]


MAX_CONTROL_BODY = 16 * 1024
MAX_WHERE = 20


@dataclass(frozen=True)
class FleetControl:
    """What lets the dashboard change state: the operators' signing key, and the token the
    browser must present."""

    key: KeyPair
    token: str
    timeout: float = 5.0


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
        control: FleetControl | None = None,
        refresh: float = 15.0,
        discover_wait: float = 1.0,
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
        self.control = control
        self.refresh = refresh
        self.discover_wait = discover_wait
        self.queried = 0  # machines questions asked of the fleet
        # Nodes the survey has heard answer; an event from another identity asks for a survey.
        self._known: set[str] = set()
        self._survey_now = asyncio.Event()
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
        if event.identity not in self._known:
            self._known.add(event.identity)  # ask once per new identity, not per event
            self._survey_now.set()
        return event

    # -- asking the nodes -------------------------------------------------------------------

    async def survey(self, *, everything: bool = False) -> None:
        """Discover the agents; ask the new, returned (or, with ``everything``, all) nodes for
        their machines; mark the silent ones."""
        from machinery.nats.fleetclient import discover, gather

        client = self.broker.client
        if client is None:
            return
        found = set(await discover(client, wait=self.discover_wait))
        # New nodes, and nodes that come back, are asked (before they are marked answering).
        ask = {
            identity
            for identity in found
            if everything or (node := self.model.nodes.get(identity)) is None or not node.answering
        }
        self.model.mark_answering(found, time.time())
        if not ask:
            return
        self.queried += 1
        request: dict[str, Any] = {"version": 1}
        if len(ask) == 1 and not everything:
            # One node appeared: the others answer "not matched", with no machines to send.
            from machinery.nats.fleetclient import glob_literal

            request["filter"] = {"identity": glob_literal(next(iter(ask)))}
        replies = await gather(client, "machines", request, set(found))
        now = time.time()
        for identity, body in replies.matched.items():
            if "machines" in body:
                self.model.apply_snapshot(identity, body["machines"], now)
                self._known.add(identity)
        self.model.mark_answering(set(replies.replies), now)

    async def _reask(self, identities: list[str]) -> None:
        """Ask these nodes for their machines again (after firing transitions on them), so what
        can be fired next is known without waiting for the next survey."""
        from machinery.nats.fleetclient import gather, glob_literal

        client = self.broker.client
        if client is None or not identities:
            return
        request: dict[str, Any] = {"version": 1}
        if len(identities) == 1:
            request["filter"] = {"identity": glob_literal(identities[0])}
        replies = await gather(client, "machines", request, set(identities), timeout=2.0)
        now = time.time()
        for identity, body in replies.matched.items():
            if identity in identities and "machines" in body:
                self.model.apply_snapshot(identity, body["machines"], now)

    async def _survey_loop(self) -> None:
        reconnected = asyncio.Event()
        self.broker.on_change(
            lambda state: reconnected.set() if state is ConnectionState.CONNECTED else None
        )
        everything = True
        while True:
            await self.broker.wait_connected(None)
            try:
                await self.survey(everything=everything or reconnected.is_set())
            except Exception as exc:  # a lost connection mid-survey: try again next round
                log.warning("cannot ask the fleet for its machines: %s", exc)
            reconnected.clear()
            everything = False
            self._survey_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh):
                    await self._survey_now.wait()

    async def transition(
        self, machine: str, event: str, *, identity: str | None, where: list[str]
    ) -> dict[str, Any]:
        """Fire ``event`` on ``machine`` of one node or of every node ``where`` selects."""
        from machinery.nats.control import Filter, parse_where
        from machinery.nats.fleetclient import glob_literal, select_nodes, transition_nodes

        assert self.control is not None
        client = self.broker.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        missing: list[str] = []
        if identity is not None:
            selected = Filter(identity=glob_literal(identity), machine=machine)
            targets = [identity]
        else:
            selected = parse_where(where).narrowed(machine=machine)
            targets, found = await select_nodes(
                client, selected, discover_wait=self.discover_wait, timeout=self.control.timeout
            )
            missing = found.missing
        outcomes = await transition_nodes(
            client,
            targets,
            machine,
            event,
            self.control.key,
            selected,
            timeout=self.control.timeout,
        )
        await self._reask([o.identity for o in outcomes if o.outcome.value == "done"])
        counts: dict[str, int] = {}
        for outcome in outcomes:
            counts[outcome.outcome.value] = counts.get(outcome.outcome.value, 0) + 1
        return {
            "machine": machine,
            "transition": event,
            "outcomes": [outcome.to_dict() for outcome in outcomes],
            "counts": counts,
            "missing": missing,
        }

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
                surveyor = tasks.create_task(self._survey_loop(), name="survey")
                http = tasks.create_task(self._server.serve(sockets=[sock]), name="http")
                await self._stop.wait()
                self.shutdown.set()
                self._server.should_exit = True
                await http
                consumer.cancel()
                surveyor.cancel()
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
            "control": self.control is not None,
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
    app.include_router(dashboard_router(mode="fleet", control=dashboard.control is not None))
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

    @app.post("/api/fleet/transition")
    async def fire(request: Request) -> dict[str, Any]:
        """Fire a transition on one node (``identity``) or on a selection (``where``), signed
        with the dashboard's key; needs the dashboard's bearer token, from its own origin."""
        from machinery.nats.control import ControlError

        control = dashboard.control
        if control is None:
            raise HTTPException(
                403, "this dashboard is read-only: start it with --seed-file to fire transitions"
            )
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
            raise HTTPException(403, "requests from another origin are refused")
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            supplied.strip().encode(), control.token.encode()
        ):
            raise HTTPException(
                401,
                "the dashboard's bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "send JSON (Content-Type: application/json)")
        body = await _bounded_body(request, MAX_CONTROL_BODY)
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise HTTPException(400, "the body is not JSON") from None
        machine, event, identity, where = _transition_fields(document)
        try:
            return await dashboard.transition(machine, event, identity=identity, where=where)
        except ControlError as exc:
            raise HTTPException(400, exc.message) from None
        except ConnectionError as exc:
            raise HTTPException(503, str(exc)) from None

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


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request bodies are limited to {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request bodies are limited to {limit} bytes")
    return body


def _transition_fields(document: Any) -> tuple[str, str, str | None, list[str]]:
    """machine, transition, identity and where of a transition request, checked."""
    import re

    name = re.compile(NAME_PATTERN)
    if not isinstance(document, dict):
        raise HTTPException(400, "expected a JSON object")
    unknown = set(document) - {"machine", "transition", "identity", "where"}
    if unknown:
        raise HTTPException(400, f"unknown field {sorted(unknown)[0]!r}")
    machine, event = document.get("machine"), document.get("transition")
    for field_name, value in (("machine", machine), ("transition", event)):
        if not isinstance(value, str) or not name.match(value):
            raise HTTPException(400, f"{field_name} must be a name (letters, digits, _.:@-)")
    identity = document.get("identity")
    where = document.get("where", [])
    if identity is not None and (not isinstance(identity, str) or not 0 < len(identity) <= 255):
        raise HTTPException(400, "identity must be a node identity")
    if (
        not isinstance(where, list)
        or len(where) > MAX_WHERE
        or not all(isinstance(clause, str) and len(clause) <= 1024 for clause in where)
    ):
        raise HTTPException(400, f"where must be a list of at most {MAX_WHERE} clauses")
    if identity is not None and where:
        raise HTTPException(400, "give either identity or where")
    assert isinstance(machine, str) and isinstance(event, str)
    return machine, event, identity, where
