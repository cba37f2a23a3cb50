"""The request guard on its own: token rules, its answers, and the body limit, to the byte."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request

from machinery.api.guard import RequestGuard, token_dependency, token_refusal
from tests.agent.test_api import TOKEN, FakeAgent

LIMIT = 10


def guarded(agent: FakeAgent) -> FastAPI:
    """A small app behind the guard: every method echoes how many body bytes it read."""
    app = FastAPI()

    @app.api_route("/x", methods=["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"])
    async def echo(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    app.add_middleware(RequestGuard, agent=agent, max_body=LIMIT)  # type: ignore[arg-type]
    return app


async def call(
    agent: FakeAgent, method: str, headers: dict[str, str] | None = None, content: Any = None
) -> httpx.Response:
    transport = httpx.ASGITransport(app=guarded(agent))
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        return await client.request(method, "/x", headers=headers or {}, content=content)


def remote(tmp_path: Path, token: str | None = TOKEN) -> FakeAgent:
    return FakeAgent(tmp_path, "0.0.0.0:8347", token)


def test_refusals_in_full(tmp_path: Path) -> None:
    assert token_refusal(FakeAgent(tmp_path, "127.0.0.1:8347", None), None) is None  # type: ignore[arg-type]
    no_token = token_refusal(remote(tmp_path, None), f"Bearer {TOKEN}")  # type: ignore[arg-type]
    assert no_token is not None
    assert (no_token.status_code, no_token.detail) == (
        403,
        "state changes on a non-loopback listener need a token: set http.token_file",
    )
    wrong = token_refusal(remote(tmp_path), "Bearer nope")  # type: ignore[arg-type]
    assert wrong is not None
    assert (wrong.status_code, wrong.detail) == (401, "a valid bearer token is required")
    assert wrong.headers == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN} "],
)
def test_the_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored(
    tmp_path: Path, authorization: str
) -> None:
    # RFC 7235: the authentication scheme is case-insensitive.
    assert token_refusal(remote(tmp_path), authorization) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "authorization",
    [None, "", TOKEN, f"Token {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer "],
)
def test_anything_but_the_bearer_token_is_refused(
    tmp_path: Path, authorization: str | None
) -> None:
    refusal = token_refusal(remote(tmp_path), authorization)  # type: ignore[arg-type]
    assert refusal is not None and refusal.status_code == 401


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_every_state_change_is_refused_early_with_a_complete_answer(
    tmp_path: Path, method: str
) -> None:
    response = await call(remote(tmp_path), method, content=b"x" * 100)
    assert response.status_code == 401
    assert response.json() == {"error": "a valid bearer token is required"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["connection"] == "close"
    assert response.headers["www-authenticate"] == "Bearer"
    allowed = await call(remote(tmp_path), method, {"Authorization": f"Bearer {TOKEN}"}, b"ok")
    assert allowed.status_code == 200 and allowed.json() == {"read": 2}


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
async def test_reads_need_no_token(tmp_path: Path, method: str) -> None:
    response = await call(remote(tmp_path), method)
    assert response.status_code in (200, 405)
    assert "www-authenticate" not in response.headers


async def test_a_non_loopback_agent_without_a_token_says_so(tmp_path: Path) -> None:
    response = await call(remote(tmp_path, None), "POST")
    assert response.status_code == 403
    assert response.json() == {
        "error": "state changes on a non-loopback listener need a token: set http.token_file"
    }
    assert "www-authenticate" not in response.headers


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_a_declared_length_is_checked_before_reading_to_the_byte(tmp_path: Path) -> None:
    fits = await call(remote(tmp_path), "PUT", AUTH, b"x" * LIMIT)
    assert fits.status_code == 200 and fits.json() == {"read": LIMIT}
    over = await call(remote(tmp_path), "PUT", AUTH, b"x" * (LIMIT + 1))
    assert over.status_code == 413
    assert over.json() == {"error": f"request bodies are limited to {LIMIT} bytes"}
    assert over.headers["connection"] == "close"


async def _chunks(*sizes: int) -> AsyncIterator[bytes]:
    for size in sizes:
        yield b"x" * size


async def test_an_undeclared_length_is_counted_as_it_arrives_to_the_byte(tmp_path: Path) -> None:
    fits = await call(remote(tmp_path), "PUT", AUTH, _chunks(4, 4, 2))
    assert fits.status_code == 200 and fits.json() == {"read": LIMIT}
    over = await call(remote(tmp_path), "PUT", AUTH, _chunks(4, 4, 3))
    assert over.status_code == 413
    assert over.json() == {"detail": f"request bodies are limited to {LIMIT} bytes"}


async def test_a_length_that_is_not_a_number_is_counted_instead(tmp_path: Path) -> None:
    headers = {**AUTH, "Content-Length": "ten"}
    over = await call(remote(tmp_path), "PUT", headers, _chunks(6, 6))
    assert over.status_code == 413


async def test_the_raw_answer_has_lowercase_asgi_headers(tmp_path: Path) -> None:
    # ASGI requires lowercase header names; the guard answers without the app, so it writes
    # them itself.
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not be reached")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = RequestGuard(app, agent=remote(tmp_path))  # type: ignore[arg-type]
    scope = {"type": "http", "method": "DELETE", "headers": [], "path": "/x"}
    await guard(scope, receive, send)
    body = b'{"error": "a valid bearer token is required"}'
    assert sent == [
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"www-authenticate", b"Bearer"),
            ],
        },
        {"type": "http.response.body", "body": body},
    ]


def test_the_route_dependency_applies_the_same_rule(tmp_path: Path) -> None:
    require_token = token_dependency(remote(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(HTTPException) as caught:
        require_token(authorization=None)
    assert caught.value.status_code == 401
    require_token(authorization=f"Bearer {TOKEN}")  # no exception
