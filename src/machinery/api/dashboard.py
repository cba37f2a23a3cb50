"""The dashboard: a single-page UI served from package data, for an agent or the fleet view.

``router()`` serves ``/`` (the page) and ``/static/{file}`` (its scripts, styles and icon).
Everything is bundled in :mod:`machinery.api.static`; nothing is fetched from elsewhere, there is
no build step. The same page runs in two modes, written into ``<html data-mode>``:

- ``agent``: the agent's own dashboard, on its JSON API (``/api/v1/...``) and event stream.
- ``fleet``: ``machinery dashboard --nats URL``, on the fleet server's ``/api/fleet/...`` (see
  :mod:`machinery.fleet`); what needs a node's own API (firing transitions) is hidden.

Caching: the page references each asset as ``/static/NAME?v=HASH`` (a hash of its content), and
such a request is cacheable for a year; any other asset request (the modules the script imports)
must revalidate, with an ``ETag``. The page itself is never cached, so an upgraded agent serves
its new UI at once. A strict Content-Security-Policy allows only the page's own origin.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from machinery import __version__

__all__ = ["CONTENT_SECURITY_POLICY", "StaticAsset", "load_assets", "router"]

Mode = Literal["agent", "fleet"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class StaticAsset:
    """One bundled file, with its content type and a short content hash."""

    name: str
    body: bytes
    content_type: str
    digest: str

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'


def load_assets() -> dict[str, StaticAsset]:
    """Every file of the static package (read once: the package data does not change)."""
    assets: dict[str, StaticAsset] = {}
    for item in resources.files("machinery.api.static").iterdir():
        name = item.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if not item.is_file() or suffix not in _CONTENT_TYPES:
            continue
        body = item.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:16]
        assets[name] = StaticAsset(name, body, _CONTENT_TYPES[suffix], digest)
    return assets


def _render_page(assets: dict[str, StaticAsset], mode: Mode, control: bool = False) -> bytes:
    page = assets["index.html"].body.decode()
    for name, asset in assets.items():
        page = page.replace(f"/static/{name}?v=", f"/static/{name}?v={asset.digest}")
    page = page.replace(
        'data-mode="agent"', f'data-mode="{mode}"' + (' data-control="on"' if control else "")
    )
    page = page.replace("{{VERSION}}", __version__)
    if mode == "fleet":
        page = page.replace("<title>machinery</title>", "<title>machinery fleet</title>")
    return page.encode()


def router(*, mode: Mode = "agent", control: bool = False) -> APIRouter:
    """Routes for the dashboard page and its assets (kept out of the OpenAPI document);
    ``control``: a fleet dashboard that may fire transitions (shows the token field)."""
    assets = load_assets()
    page = _render_page(assets, mode, control)
    page_etag = '"' + hashlib.sha256(page).hexdigest()[:16] + '"'
    routes = APIRouter(include_in_schema=False)

    @routes.api_route("/", methods=["GET", "HEAD"])
    async def index(request: Request) -> Response:
        headers = {
            "Cache-Control": _REVALIDATE,
            "ETag": page_etag,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            **_SECURITY_HEADERS,
        }
        if request.headers.get("if-none-match") == page_etag:
            return Response(status_code=304, headers=headers)
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    @routes.api_route("/static/{name}", methods=["GET", "HEAD"])
    async def static(name: str, request: Request) -> Response:
        asset = assets.get(name)
        if asset is None or name == "index.html":
            raise HTTPException(404, f"no such file: {name}")
        versioned = request.query_params.get("v") == asset.digest
        headers = {
            "Cache-Control": _IMMUTABLE if versioned else _REVALIDATE,
            "ETag": asset.etag,
            **_SECURITY_HEADERS,
        }
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.content_type, headers=headers)

    return routes
