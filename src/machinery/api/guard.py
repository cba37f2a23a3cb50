"""Who may change things, from where, and how much a request may send.

Every request must name this agent in its ``Host`` header: the address the client connected
to, a loopback name, the identity, the host name or one of ``http.allowed_hosts``. A page on
another site that rebinds its DNS name to 127.0.0.1 therefore reads nothing.

State changes (every ``POST``, ``PUT``, ``PATCH`` and ``DELETE``) are also refused when a browser
says they come from another origin (an ``Origin`` that is not this agent, or ``Sec-Fetch-Site``
other than ``same-origin``/``none``): a web page cannot drive the loopback API. Clients that are
not browsers (the CLI, Home Assistant) send neither header and are not affected.

State changes are free on a loopback listener only while no token is configured: with
``http.token_file`` (or ``http.require_token``) every state change on every listener needs
``Authorization: Bearer <token>``, so a reverse proxy on the same host cannot bypass it. The
rules are applied by :class:`RequestGuard` before anything of the body is read (FastAPI reads
bodies before it runs dependencies, so an unauthenticated client could otherwise make the agent
buffer any amount); the token rule again by the routes' ``require_token`` dependency, which
documents it in the OpenAPI schema. Bodies are bounded for everybody.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from fastapi import Header, HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from machinery.agent.daemon import Agent

__all__ = [
    "MAX_BODY_BYTES",
    "HostRules",
    "RequestGuard",
    "origin_refusal",
    "token_dependency",
    "token_refusal",
]

MAX_BODY_BYTES = 2 * 1024 * 1024  # a 1 MiB key-value value, with room to spare
_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values of requests a page on another origin did not start.
_OWN_FETCH_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``Host``-style ``name[:port]`` -> (lower-case name without brackets, port or None);
    None when it is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    else:
        name, _, port_text = value.partition(":")
    if not name:
        return None
    if not port_text:
        return name, None
    if not port_text.isdigit() or len(port_text) > 5:
        return None
    return name, int(port_text)


def _is_loopback_name(name: str) -> bool:
    # *.localhost always resolves to loopback in browsers (RFC 6761), so it cannot be rebound.
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostRules:
    """The names a request may use in its ``Host`` header."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(n.strip("[]").lower() for n in names if n)

    @classmethod
    def for_agent(cls, agent: Agent) -> HostRules:
        """The agent's identity and host name, its listener's address and the configured names."""
        http = agent.settings.http
        return cls([agent.settings.identity, socket.gethostname(), http.host, *http.allowed_hosts])

    def refusal(self, host: str | None, server: tuple[str, int] | None) -> str | None:
        """Why a request with this ``Host`` that arrived on ``server`` is refused, or None."""
        if host is None:
            return None  # HTTP/1.0 without Host: not a browser
        split = _split_host(host)
        if split is None:
            return "the Host header is malformed"
        name = split[0]
        if name in self.names or _is_loopback_name(name):
            return None
        if server is not None and name == server[0].lower():
            return None  # the address the client connected to
        return (
            f"{name} is not a name of this agent: add it to http.allowed_hosts "
            "(refused so that a web page cannot reach the API through DNS rebinding)"
        )


def origin_refusal(headers: Headers) -> str | None:
    """Why a state change carrying these browser headers is refused, or None."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in _OWN_FETCH_SITES:
        return f"state changes from a {fetch_site} web page are refused"
    origin = headers.get("origin")
    if origin is None:
        return None  # not a browser
    host = _split_host(headers.get("host", ""))
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return "the Origin header is malformed"
    scheme = parts.scheme.lower()
    if host is not None and scheme in _DEFAULT_PORTS and parts.hostname:
        # A Host without a port means the client used its scheme's default port.
        default = _DEFAULT_PORTS[scheme]
        if parts.hostname.lower() == host[0] and (origin_port or default) == (host[1] or default):
            return None
    return f"state changes from another origin ({origin}) are refused"


def token_refusal(agent: Agent, authorization: str | None) -> HTTPException | None:
    """Why a state change with this ``Authorization`` header is refused, or None."""
    http = agent.settings.http
    if agent.token is None and http.is_loopback and not http.require_token:
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
        self._hosts = HostRules.for_agent(agent)
        self._hosts_from = agent.settings.http

    @property
    def hosts(self) -> HostRules:
        """The Host rules of the agent's current settings (``http.allowed_hosts`` changes on
        SIGHUP)."""
        if self.agent.settings.http is not self._hosts_from:
            self._hosts = HostRules.for_agent(self.agent)
            self._hosts_from = self.agent.settings.http
        return self._hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        misdirected = self.hosts.refusal(headers.get("host"), scope.get("server"))
        if misdirected is not None:
            await _answer(send, 421, misdirected)
            return
        if scope["method"] not in _CHANGES:
            await self.app(scope, receive, send)
            return
        foreign = origin_refusal(headers)
        if foreign is not None:
            await _answer(send, 403, foreign)
            return
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
