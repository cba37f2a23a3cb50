"""Governor routes: list, view and size governors, evict holders (spec 1.12).

They work on the agent's governor service, whichever it is: NATS governors shared by the fleet
when the agent has NATS, its local governors otherwise (``backend`` in the answers says which).
Changes (``PUT``, ``DELETE``) need the API token like every other state change.

- ``GET /api/v1/governors``: every governor with its capacity and holders.
- ``GET /api/v1/governors/{name}``: one governor (404 if unknown).
- ``PUT /api/v1/governors/{name}`` ``{"capacity": N, "lease": "5m"}``: create or resize.
- ``DELETE /api/v1/governors/{name}/holders/{holder}``: free the slots ``holder`` holds (the
  exact holder, or all whose name starts with ``holder:``, such as a node's identity).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from machinery.agent.localgovernor import LocalGovernor
from machinery.core.governor import (
    DEFAULT_LEASE,
    Governor,
    GovernorError,
    GovernorInfo,
    UnknownGovernor,
)
from machinery.lang.duration import DurationError, parse_duration

if TYPE_CHECKING:
    from machinery.agent.daemon import Agent

__all__ = ["router"]

GOVERNOR_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
HOLDER_PATTERN = r"^[A-Za-z0-9_.:@-]{1,256}$"
GovernorName = Annotated[
    str, Path(pattern=GOVERNOR_PATTERN, max_length=64, description="governor name")
]
HolderName = Annotated[
    str, Path(pattern=HOLDER_PATTERN, max_length=256, description="holder, or a holder prefix")
]


class ErrorBody(BaseModel):
    error: str


class GovernorView(BaseModel):
    name: str
    backend: str = Field(description="nats (shared by the fleet) or local (this agent only)")
    capacity: int
    lease: float = Field(description="lease in seconds; 0 for local governors, which need none")
    holders: list[dict[str, Any]] = Field(description="who holds the slots")


class GovernorList(BaseModel):
    backend: str
    governors: list[GovernorView]


class GovernorChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capacity: int = Field(ge=1, le=100_000, description="how many may hold a slot at once")
    lease: float = Field(
        DEFAULT_LEASE,
        gt=0,
        le=365 * 86400,
        description="NATS governors: how long a crashed holder keeps its slot, such as 5m "
        "(a duration, or seconds)",
    )

    @field_validator("lease", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = parse_duration(value)
            except DurationError as exc:
                raise ValueError(str(exc)) from None
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            raise ValueError("the lease must be longer than 0s")
        return value


class Eviction(BaseModel):
    governor: str
    holder: str
    evicted: bool


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    503: {"model": ErrorBody},
}
CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": ErrorBody},
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
}


def router(agent: Agent, require_token: Callable[..., Any]) -> APIRouter:
    """The governor routes for ``agent``; ``require_token`` guards the changes."""
    routes = APIRouter(tags=["governors"])

    def service() -> tuple[Governor, str]:
        node = agent.node
        found = node.service("governor") if node is not None else None
        if found is None:
            raise HTTPException(503, "this agent has no governor service")
        backend = "local" if isinstance(found, LocalGovernor) else "nats"
        return found, backend

    def view(info: GovernorInfo, backend: str) -> GovernorView:
        return GovernorView(
            name=info.name,
            backend=backend,
            capacity=info.capacity,
            lease=info.lease,
            holders=list(info.holders),
        )

    async def one(governor: Governor, backend: str, name: str) -> GovernorView:
        try:
            return view(await governor.view(name), backend)
        except UnknownGovernor as exc:
            raise HTTPException(404, str(exc)) from None
        except GovernorError as exc:
            raise HTTPException(503, str(exc)) from None

    @routes.get("/api/v1/governors", response_model=GovernorList, responses=ERRORS)
    async def list_governors() -> GovernorList:
        governor, backend = service()
        try:
            names = await governor.names()
        except GovernorError as exc:
            raise HTTPException(503, str(exc)) from None
        found = []
        for name in names:
            try:
                found.append(view(await governor.view(name), backend))
            except UnknownGovernor:
                continue  # removed meanwhile
            except GovernorError as exc:
                raise HTTPException(503, str(exc)) from None
        return GovernorList(backend=backend, governors=found)

    @routes.get("/api/v1/governors/{name}", response_model=GovernorView, responses=ERRORS)
    async def get_governor(name: GovernorName) -> GovernorView:
        governor, backend = service()
        return await one(governor, backend, name)

    @routes.put(
        "/api/v1/governors/{name}",
        response_model=GovernorView,
        responses=CHANGE_ERRORS,
        dependencies=[Depends(require_token)],
    )
    async def put_governor(name: GovernorName, change: GovernorChange) -> GovernorView:
        """Create the governor or change its capacity (and, on NATS, its lease)."""
        governor, backend = service()
        try:
            await governor.add(name, change.capacity, lease=change.lease)
        except GovernorError as exc:
            raise HTTPException(503, str(exc)) from None
        return await one(governor, backend, name)

    @routes.delete(
        "/api/v1/governors/{name}/holders/{holder}",
        response_model=Eviction,
        responses=CHANGE_ERRORS,
        dependencies=[Depends(require_token)],
    )
    async def evict_holder(name: GovernorName, holder: HolderName) -> Eviction:
        """Free the slots of a holder that will not give them back (a crashed node)."""
        governor, _ = service()
        try:
            evicted = await governor.evict(name, holder)
        except UnknownGovernor as exc:
            raise HTTPException(404, str(exc)) from None
        except GovernorError as exc:
            raise HTTPException(503, str(exc)) from None
        if not evicted:
            raise HTTPException(404, f"{holder} holds no slot in the {name} Governor")
        return Eviction(governor=name, holder=holder, evicted=True)

    return routes
