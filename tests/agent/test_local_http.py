"""``machinery run --http``'s routes: the agent's rules for state changes and bodies."""

from __future__ import annotations

import asyncio

import httpx

from machinery.api.local import local_app
from machinery.core.node import Node

SWITCH = "/choria/machine/switch/v1/heater/switch"


def call(listen: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=local_app(Node(identity="t"), listen))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(go())


def test_loopback_listener_lets_changes_through_to_the_routes() -> None:
    answer = call("127.0.0.1:0", "POST", SWITCH, json={"on": True})
    assert (answer.status_code, answer.json()) == (400, {"error": "switch not found"})


def test_other_listeners_refuse_changes_but_answer_reads() -> None:
    refused = call("0.0.0.0:0", "POST", SWITCH, json={"on": True})
    assert refused.status_code == 403
    read = call("0.0.0.0:0", "GET", SWITCH)
    assert (read.status_code, read.json()) == (400, {"error": "switch not found"})


def test_oversized_bodies_are_refused_before_they_are_read() -> None:
    answer = call("127.0.0.1:0", "POST", SWITCH, content=b"x" * (3 * 1024 * 1024))
    assert answer.status_code == 413
