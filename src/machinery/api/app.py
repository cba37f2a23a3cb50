"""The agent's HTTP API (FastAPI), served by uvicorn in the agent's own loop.

``/api/v1/...`` is machinery's JSON API; ``/choria/...`` are Choria's switch and metric routes;
``/healthz`` is for load balancers and supervisors; ``/openapi.json`` documents it all. Names in
paths are validated, every error is JSON ``{"error": "..."}``, and anything that changes state
needs the bearer token when the listener is not loopback (or always, if configured).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from machinery import __version__
from machinery.agent.views import machine_summary, watcher_views
from machinery.api.choria import choria_router
from machinery.api.dashboard import router as dashboard_router
from machinery.api.governor import router as governor_router
from machinery.api.guard import RequestGuard, token_dependency
from machinery.api.kv import router as kv_router
from machinery.api.streams import StreamSlots
from machinery.core.clock import SystemClock
from machinery.core.machine import Machine
from machinery.events.bus import SubscriberLimitError, event_query
from machinery.events.cloudevents import shared_cloudevent
from machinery.nats.connection import redact_url
from machinery.spec.graph import to_dot

if TYPE_CHECKING:
    from machinery.agent.daemon import Agent
    from machinery.agent.store import MachineEntry

__all__ = ["NAME_PATTERN", "create_app", "install_error_handlers"]

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$"
TRANSITION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$"

MachineName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=128, description="machine name")]
WatcherName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=128, description="watcher name")]


class ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong")


class MachineStatus(BaseModel):
    """Choria's MachineState, plus ``status`` and, for broken manifests, their errors."""

    model_config = ConfigDict(extra="allow")

    name: str
    path: str
    status: str = Field(description="loading, starting, running, invalid, refused, failed, stopped")
    version: str | None = None
    state: str | None = None
    id: str | None = None
    start_time: int | None = None
    available_transitions: list[str] | None = None
    scout: bool | None = None
    current_state: dict[str, Any] | None = None
    errors: list[str] | None = None
    diagnostics: list[dict[str, Any]] | None = None
    warnings: list[str] | None = None
    state_entered: float | None = Field(
        None, description="wall time (Unix seconds) the machine entered its current state"
    )


def _machine_status(entry: MachineEntry) -> MachineStatus:
    """The entry as the API shows it, with when its machine entered its current state."""
    return MachineStatus(**machine_summary(entry))


class MachineList(BaseModel):
    machines: list[MachineStatus]


class TransitionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transition: str = Field(pattern=TRANSITION_PATTERN, max_length=128, description="event to fire")


class TransitionResult(BaseModel):
    success: bool = Field(description="the event was valid in the state the machine was in")
    machine: str
    transition: str
    from_state: str
    to_state: str
    changed: bool = Field(description="false for a self-transition")


class HistoryItem(BaseModel):
    seq: int
    machine: str
    id: str
    version: str
    transition: str
    from_state: str
    to_state: str
    timestamp: float


class History(BaseModel):
    machine: str
    history: list[HistoryItem]


class WatcherInfo(BaseModel):
    name: str
    type: str
    state_match: list[str]
    active: bool
    interval: float | None
    status: dict[str, Any]
    state: dict[str, Any]


class GraphEdge(BaseModel):
    source: str
    transition: str
    destination: str
    description: str = ""


class Graph(BaseModel):
    machine: str
    initial: str
    current: str
    states: list[str]
    edges: list[GraphEdge]
    dot: str


class WatcherList(BaseModel):
    machine: str
    watchers: list[WatcherInfo]


class Health(BaseModel):
    status: str
    version: str
    identity: str
    uptime: float
    machines: int
    invalid_machines: int


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
}
CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
}


def install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON ``{"error": "..."}`` (validation errors also keep their details)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors()
        )
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"error": f"invalid request: {problems}", "detail": detail}, 422)


def create_app(agent: Agent) -> FastAPI:
    """The API for ``agent``."""
    app = FastAPI(
        title="machinery agent",
        version=__version__,
        description="Machines on this node: their state, history and watchers, live events.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )

    install_error_handlers(app)

    def machine_or_404(name: str) -> Machine:
        store = agent.store
        entry = store.find(name) if store is not None else None
        if entry is None or entry.machine is None:
            reason = "is not valid" if entry is not None else "not found"
            raise HTTPException(404, f"machine {name} {reason}")
        return entry.machine

    require_token = token_dependency(agent)
    app.add_middleware(RequestGuard, agent=agent)
    streams = StreamSlots(agent.settings.http.max_sse_clients)
    clock = agent.node.clock if agent.node is not None else SystemClock()

    app.include_router(choria_router(lambda: agent.node, require_token))
    app.include_router(dashboard_router(mode="agent"))
    app.include_router(governor_router(agent, require_token))
    app.include_router(kv_router(agent, require_token, streams=streams, clock=clock))

    @app.get("/healthz", response_model=Health, tags=["agent"])
    async def get_health() -> Health:
        health = agent.health()
        return Health(
            status="ok",
            version=__version__,
            identity=agent.settings.identity,
            uptime=round(health["uptime"], 3),
            machines=health["machines"],
            invalid_machines=health["invalid_machines"],
        )

    @app.get(
        "/api/v1/machines",
        response_model=MachineList,
        response_model_exclude_none=True,
        tags=["machines"],
    )
    async def list_machines() -> MachineList:
        entries = agent.store.sorted_entries() if agent.store is not None else []
        return MachineList(machines=[_machine_status(e) for e in entries])

    @app.get(
        "/api/v1/machines/{name}",
        response_model=MachineStatus,
        response_model_exclude_none=True,
        responses=ERRORS,
        tags=["machines"],
    )
    async def get_machine(name: MachineName) -> MachineStatus:
        entry = agent.store.find(name) if agent.store is not None else None
        if entry is None:
            raise HTTPException(404, f"machine {name} not found")
        return _machine_status(entry)

    @app.post(
        "/api/v1/machines/{name}/transition",
        response_model=TransitionResult,
        responses=CHANGE_ERRORS,
        dependencies=[Depends(require_token)],
        tags=["machines"],
    )
    async def post_transition(name: MachineName, request: TransitionRequest) -> TransitionResult:
        target = machine_or_404(name)
        event = request.transition
        if not target.fsm.can(event):
            raise HTTPException(
                409,
                f"Could not perform {event} transition: transition {event} is not valid while "
                f"in {target.state} state",
            )
        result = await target.transition(event)
        return TransitionResult(
            success=result.valid,
            machine=target.name,
            transition=event,
            from_state=result.source,
            to_state=result.destination,
            changed=result.changed,
        )

    @app.get(
        "/api/v1/machines/{name}/history",
        response_model=History,
        responses=ERRORS,
        tags=["machines"],
    )
    async def get_history(
        name: MachineName,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ) -> History:
        store = agent.store
        if store is None or store.find(name) is None or agent.db is None:
            raise HTTPException(404, f"machine {name} not found")
        if agent.writer is not None:
            await asyncio.to_thread(agent.writer.flush, 2.0)
        rows = await asyncio.to_thread(agent.db.history, name, limit=limit, before=before)
        return History(machine=name, history=[HistoryItem(**r.to_dict()) for r in rows])

    @app.get(
        "/api/v1/machines/{name}/watchers",
        response_model=WatcherList,
        responses=ERRORS,
        tags=["machines"],
    )
    async def get_watchers(name: MachineName) -> WatcherList:
        target = machine_or_404(name)
        items = [WatcherInfo(**view) for view in watcher_views(target)]
        return WatcherList(machine=target.name, watchers=items)

    @app.get(
        "/api/v1/machines/{name}/graph",
        response_model=Graph,
        responses=ERRORS,
        tags=["machines"],
    )
    async def get_graph(name: MachineName) -> Graph:
        """The state graph: states, edges (with transition descriptions), the current state,
        and Choria's DOT text."""
        target = machine_or_404(name)
        descriptions = {t.name: t.description for t in target.spec.transitions if t.description}
        edges = [
            GraphEdge(
                source=source,
                transition=event,
                destination=destination,
                description=descriptions.get(event, ""),
            )
            for source, event, destination in target.fsm.edges()
        ]
        states = target.fsm.states()
        if target.spec.initial_state not in states:
            states.append(target.spec.initial_state)
        return Graph(
            machine=target.name,
            initial=target.spec.initial_state,
            current=target.state,
            states=states,
            edges=edges,
            dot=to_dot(target.spec, current=target.state),
        )

    @app.get(
        "/api/v1/events",
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}, 503: {"model": ErrorResponse}},
        tags=["events"],
    )
    async def stream_events(
        request: Request,
        machine: Annotated[str | None, Query(max_length=128)] = None,
        type: Annotated[str | None, Query(max_length=200, description="CloudEvent type")] = None,
        kind: Annotated[str | None, Query(pattern="^(transitions|watchers)$")] = None,
    ) -> EventSourceResponse:
        """Server-sent events: each ``data`` is one CloudEvent (JSON)."""

        accepts = event_query(machine=machine, protocol=type, kind=kind)
        streams.check()
        try:
            subscription = agent.bus.subscribe(accepts)
            subscriber = await subscription.__aenter__()
        except SubscriberLimitError as exc:
            raise HTTPException(503, str(exc)) from None

        async def stream() -> AsyncIterator[dict[str, str]]:
            if not streams.take():  # KV watches took the last slots meanwhile
                await subscription.__aexit__(None, None, None)
                yield {"event": "error", "data": json.dumps({"error": "too many event streams"})}
                return
            try:
                while True:
                    sequence, event = await subscriber.get()
                    yield {
                        "id": str(sequence),
                        "event": "machine",
                        "data": shared_cloudevent(event)[1],
                    }
            finally:
                streams.give()
                await subscription.__aexit__(None, None, None)

        return EventSourceResponse(
            stream(), ping=15, send_timeout=30, shutdown_event=agent.sse_shutdown
        )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
        tags=["agent"],
    )
    async def get_metrics() -> PlainTextResponse:
        """Prometheus metrics (see docs/metrics.md)."""
        # Thousands of machines make a big page: render it in a thread so a scrape does not
        # delay the machines' timers.
        body = (
            await asyncio.to_thread(generate_latest, agent.metrics.registry)
            if agent.metrics is not None
            else b""
        )
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/agent", tags=["agent"])
    async def get_agent() -> dict[str, Any]:
        """The agent's settings (secrets masked) and counters."""
        settings = json.loads(agent.settings.model_dump_json())
        for key in ("password", "token"):
            if settings["nats"].get(key):
                settings["nats"][key] = "***"
        settings["nats"]["servers"] = [redact_url(url) for url in settings["nats"]["servers"]]
        store = agent.store
        return {
            "version": __version__,
            "identity": agent.settings.identity,
            "started": agent.started,
            "uptime": time.time() - agent.started,
            "settings": settings,
            "store": {
                "loads": store.loads if store else 0,
                "load_errors": store.load_errors if store else 0,
                "reloads": store.reloads if store else 0,
            },
            "events": {"published": agent.bus.sequence, "subscribers": agent.bus.subscriber_count},
            "nats": agent.broker.status(),
            "publisher": agent.publisher.status() if agent.publisher is not None else None,
        }

    return app
