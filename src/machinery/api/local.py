"""The HTTP server of ``machinery run --http``: Choria's machine routes (HTTP switches, Home
Assistant switches, metrics) for the machines of a local run, and nothing else.

Choria serves these routes only under ``choria machine run --http``. The rules of the agent's API
apply: state changes are free on a loopback listener; a local run has no token, so on any other
address they are refused, and request bodies are bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from fastapi import FastAPI

from machinery import __version__
from machinery.agent.config import HttpSettings
from machinery.api.app import install_error_handlers
from machinery.api.choria import choria_router
from machinery.api.guard import RequestGuard, token_dependency
from machinery.core.node import Node

if TYPE_CHECKING:
    from machinery.agent.daemon import Agent

__all__ = ["LocalHttp", "local_app"]


@dataclass(frozen=True)
class _HttpOnly:
    identity: str
    http: HttpSettings


@dataclass(frozen=True)
class LocalHttp:
    """What the request guard reads of an agent (``settings.identity``, ``settings.http`` and
    ``token``), for a run of node ``identity`` listening on ``listen``: no token, so changes are
    allowed on loopback only."""

    listen: str
    identity: str = ""
    settings: _HttpOnly = field(init=False)
    token: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        settings = _HttpOnly(self.identity, HttpSettings(listen=self.listen))
        object.__setattr__(self, "settings", settings)


def local_app(node: Node, listen: str) -> FastAPI:
    """The routes for the machines of ``node``, served on ``listen`` (HOST:PORT)."""
    app = FastAPI(
        title="machinery run",
        version=__version__,
        description="Choria's machine HTTP routes for the machines of a local run.",
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    # The guard and the token dependency only read ``settings`` (identity, http) and ``token``.
    policy = cast("Agent", LocalHttp(listen, node.identity))
    app.add_middleware(RequestGuard, agent=policy)
    app.include_router(choria_router(lambda: node, token_dependency(policy)))
    return app
