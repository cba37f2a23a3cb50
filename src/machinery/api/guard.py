"""Who may change things, and how much a request may send.

State changes (every ``POST``, ``PUT``, ``PATCH`` and ``DELETE``) are free on a loopback listener
unless ``http.require_token``; otherwise they need ``Authorization: Bearer <token>``. The rule is
applied twice on purpose: by :class:`RequestGuard` before anything of the body is read (FastAPI
reads bodies before it runs dependencies, so an unauthenticated client could otherwise make the
agent buffer any amount), and by the routes' ``require_token`` dependency, which documents it in
the OpenAPI schema. Bodies are bounded for everybody.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Header, HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from machinery.agent.daemon import Agent

__all__ = ["MAX_BODY_BYTES", "RequestGuard", "token_dependency", "token_refusal"]

MAX_BODY_BYTES = 2 * 1024 * 1024  # a 1 MiB key-value value, with room to spare
_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def token_refusal(agent: Agent, authorization: str | None) -> HTTPException | None:
    """Why a state change with this ``Authorization`` header is refused, or None."""
    http = agent.settings.http
    if http.is_loopback and not http.require_token:
        return None
    if agent.token is None:
        return HTTPException(
            403, "state changes on a non-loopback listener need a token: set http.token_file"
        )
    scheme, _, supplied = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        supplied.strip().encode(), agent.token.encode()
    ):
        return HTTPException(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    return None


def token_dependency(agent: Agent) -> Callable[..., None]:
    """The ``require_token`` dependency of the state-changing routes."""

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        refusal = token_refusal(agent, authorization)
        if refusal is not None:
            raise refusal

    return require_token


class RequestGuard:
    """ASGI middleware: refuses unauthorised state changes and oversized bodies early."""

    def __init__(self, app: ASGIApp, *, agent: Agent, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.agent = agent
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _CHANGES:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = token_refusal(self.agent, headers.get("authorization"))
        if refusal is not None:
            await _answer(send, refusal.status_code, refusal.detail, refusal.headers)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _answer(send, 413, self._too_large())
            return
        received = 0

        async def bounded() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, bounded, send)

    def _too_large(self) -> str:
        return f"request bodies are limited to {self.max_body} bytes"


async def _answer(
    send: Send, status: int, message: str, headers: Mapping[str, str] | None = None
) -> None:
    body = json.dumps({"error": message}).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the unread body makes the connection unusable
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
