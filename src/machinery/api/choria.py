"""Choria's machine HTTP routes (spec 7.3): HTTP switches, Home Assistant switches, metrics.

They read the node-wide registries the httpswitch and metric watchers fill. Unlike Choria, the
agent serves them (Choria's daemon never wires them), and a POST answers with the switch's real
state after the request, not merely whether it was accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from machinery.core.node import Node
from machinery.watchers.httpswitch import (
    HttpSwitchRegistry,
    HttpSwitchWatcher,
    SwitchError,
    home_assistant_state,
    parse_home_assistant_body,
)
from machinery.watchers.metric import MetricRegistry

__all__ = ["choria_router"]

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$"
Name = Annotated[str, Path(pattern=NAME_PATTERN, max_length=128)]


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    on: bool = Field(description="true turns the switch on, false off")


class SwitchState(BaseModel):
    is_on: bool
    is_off: bool | None = None
    status: str | None = None
    detail: dict[str, Any] | None = None


class MetricState(BaseModel):
    labels: dict[str, str]
    metrics: dict[str, float]
    time: int


class Error(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": Error}, 500: {"model": Error}}
# With a text/plain route FastAPI would document the JSON errors as text: say so explicitly.
_JSON_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
TEXT_ROUTE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string", "enum": ["ON", "OFF"]}}}},
    400: {"model": Error, **_JSON_ERROR},
    500: {"model": Error, **_JSON_ERROR},
}


def choria_router(node: Callable[[], Node | None], require_token: Callable[..., Any]) -> APIRouter:
    """The routes, for the node returned by ``node()`` (None while it is not running)."""
    router = APIRouter(tags=["choria"])

    def switch(machine: str, watcher: str) -> HttpSwitchWatcher:
        current = node()
        registry = current.service("httpswitch") if current is not None else None
        found = registry.get(machine, watcher) if isinstance(registry, HttpSwitchRegistry) else None
        if found is None:
            raise HTTPException(400, "switch not found")
        return found

    async def change(target: HttpSwitchWatcher, on: bool) -> bool:
        try:
            return await target.set_switch(on)
        except SwitchError as exc:
            raise HTTPException(500, str(exc)) from None

    @router.get(
        "/choria/machine/switch/v1/{machine}/{watcher}",
        response_model=SwitchState,
        response_model_exclude_none=True,
        responses=ERRORS,
    )
    async def get_switch(machine: Name, watcher: Name) -> SwitchState:
        return SwitchState(**switch(machine, watcher).describe_switch())

    @router.post(
        "/choria/machine/switch/v1/{machine}/{watcher}",
        response_model=SwitchState,
        response_model_exclude_none=True,
        responses=ERRORS,
        dependencies=[Depends(require_token)],
    )
    async def post_switch(machine: Name, watcher: Name, request: SwitchRequest) -> SwitchState:
        """Turn the switch on or off; ``is_on`` is its state afterwards."""
        return SwitchState(is_on=await change(switch(machine, watcher), request.on))

    @router.get(
        "/choria/homeassistant/switch/v1/{machine}/{watcher}",
        response_class=PlainTextResponse,
        responses=TEXT_ROUTE_RESPONSES,
    )
    async def get_home_assistant(machine: Name, watcher: Name) -> PlainTextResponse:
        return PlainTextResponse(home_assistant_state(switch(machine, watcher)))

    @router.post(
        "/choria/homeassistant/switch/v1/{machine}/{watcher}",
        response_class=PlainTextResponse,
        responses=TEXT_ROUTE_RESPONSES,
        dependencies=[Depends(require_token)],
    )
    async def post_home_assistant(
        machine: Name, watcher: Name, request: Request
    ) -> PlainTextResponse:
        """Home Assistant's RESTful switch: a body starting with ``ON`` turns it on."""
        target = switch(machine, watcher)
        body = await _bounded_body(request)
        await change(target, parse_home_assistant_body(body))
        return PlainTextResponse(home_assistant_state(target))

    @router.get(
        "/choria/machine/metric/v1/{machine}/{watcher}",
        response_model=MetricState,
        responses=ERRORS,
    )
    async def get_metric(machine: Name, watcher: Name) -> MetricState:
        current = node()
        registry = current.service("metrics") if current is not None else None
        found = registry.get(machine, watcher) if isinstance(registry, MetricRegistry) else None
        if found is None:
            raise HTTPException(400, "metric not found")
        return MetricState(**found)

    return router


async def _bounded_body(request: Request, limit: int = 4096) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(400, "request body too large")
    return body
