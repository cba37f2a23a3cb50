"""The HTTP API of a real in-process agent (``agent_factory``, a loopback port) under random
requests: bodies of the transition and switch routes, query parameters, names in paths.

Property: every answer is JSON; errors are 4xx with ``{"error": ...}``; never a 5xx, except
Choria's documented 500 for a switch that refuses the change (``watcher is disabled``). After the
barrage the agent still answers and its machines are where the accepted requests put them.
Hypothesis drives a synchronous client in a worker thread while the agent runs on the loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agent.test_api import SWITCHED
from tests.agent.test_store import LAMP, write
from tests.fuzz.strategies import HOSTILE_STRINGS, hostile_json, hostile_text

SETTINGS = settings(
    max_examples=30,
    deadline=timedelta(seconds=5),
    suppress_health_check=list(HealthCheck),
    database=None,
)

NAMES = ["lamp", "fan", "HVAC", "nope", *HOSTILE_STRINGS[:20]]
segment = st.one_of(st.sampled_from(NAMES), hostile_text, st.text(max_size=20))


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


class Checker:
    """Sends requests and checks the answers; counts what it saw."""

    def __init__(self, url: str) -> None:
        # TCP_NODELAY: a body sent after its headers would otherwise wait for a delayed ACK.
        transport = httpx.HTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        self.client = httpx.Client(base_url=url, timeout=10, transport=transport)
        self.statuses: Counter[int] = Counter()
        self.refused_switch = 0
        self.slowest = 0.0

    def check(self, response: httpx.Response, *, choria: bool = False) -> None:
        status = response.status_code
        self.slowest = max(self.slowest, response.elapsed.total_seconds())
        self.statuses[status] += 1
        if choria and status == 500:
            # Choria's answer for a switch that refuses the change, kept for compatibility.
            assert response.json() == {"error": "watcher is disabled"}, response.text
            self.refused_switch += 1
            return
        assert status < 500, f"{response.request.method} {response.request.url}: {response.text}"
        if 300 <= status < 400:
            # Starlette's trailing-slash redirect (/api/v1/machines/ -> /api/v1/machines).
            assert status == 307 and response.headers["location"], response.headers
            return
        if response.headers.get("content-type", "").startswith("text/plain"):
            assert response.text in ("ON", "OFF")
            return
        body = response.json()
        if status >= 400:
            assert isinstance(body, dict) and isinstance(body.get("error"), str), body


def body_bytes() -> st.SearchStrategy[tuple[bytes, str]]:
    json_bodies = st.one_of(
        hostile_json,
        st.fixed_dictionaries({"transition": st.one_of(hostile_json, st.sampled_from(
            ["switch_on", "switch_off", "turn_on", "turn_off", "pause", "go"]))}),
        st.fixed_dictionaries({"on": hostile_json}),
    ).map(lambda value: json.dumps(value).encode())  # fmt: skip
    raw = st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"", b"{", b"[" * 50_000 + b"]" * 50_000, b"ON", b"OFF", b"null",
                         b'{"transition": "switch_on"' + b" " * 100_000 + b"}"]),
    )  # fmt: skip
    content_types = st.sampled_from(
        ["application/json", "text/plain", "", "application/x-www-form-urlencoded",
         "application/json; charset=latin-1", "multipart/form-data; boundary=x"]
    )  # fmt: skip
    return st.tuples(st.one_of(json_bodies, raw), content_types)


def fuzz_requests(url: str) -> Checker:
    checker = Checker(url)

    @SETTINGS
    @given(st.sampled_from(["lamp", "fan", "HVAC", "nope"]), body_bytes())
    def transitions(name: str, body: tuple[bytes, str]) -> None:
        content, content_type = body
        headers = {"content-type": content_type} if content_type else {}
        checker.check(
            checker.client.post(
                f"/api/v1/machines/{name}/transition", content=content, headers=headers
            )
        )

    @SETTINGS
    @given(
        st.sampled_from(["machine", "homeassistant"]),
        st.sampled_from([("fan", "switch"), ("fan", "power"), ("lamp", "check"), ("x", "y")]),
        body_bytes(),
    )
    def switches(route: str, target: tuple[str, str], body: tuple[bytes, str]) -> None:
        content, content_type = body
        path = f"/choria/{route}/switch/v1/{target[0]}/{target[1]}"
        headers = {"content-type": content_type} if content_type else {}
        checker.check(checker.client.post(path, content=content, headers=headers), choria=True)
        checker.check(checker.client.get(path), choria=True)

    @SETTINGS
    @given(
        st.sampled_from(["history", "watchers", "graph", ""]),
        st.dictionaries(
            st.sampled_from(["limit", "before", "x", "machine", "kind", "type"]),
            st.one_of(hostile_text, st.integers(-(2**70), 2**70).map(str)),
            max_size=3,
        ),
        st.sampled_from(["lamp", "HVAC", "nope"]),
    )
    def queries(what: str, params: dict[str, str], name: str) -> None:
        path = f"/api/v1/machines/{name}" + (f"/{what}" if what else "")
        checker.check(checker.client.get(path, params=params))

    @SETTINGS
    @given(segment, segment, st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    def paths(first: str, second: str, method: str) -> None:
        for path in (
            f"/api/v1/machines/{quote(first)}",
            f"/api/v1/machines/{quote(first)}/{quote(second)}",
            f"/api/v1/machines/{quote(first)}/transition",
            f"/choria/machine/switch/v1/{quote(first)}/{quote(second)}",
            f"/choria/machine/metric/v1/{quote(first)}/{quote(second)}",
        ):
            checker.check(checker.client.request(method, path, content=b"{}"), choria=True)

    try:
        for run in (transitions, switches, queries, paths):
            run()
    finally:
        checker.client.close()
    return checker


async def test_random_requests_get_json_answers_and_never_a_5xx(agent_factory: Any) -> None:
    async with agent_factory(("hvac",)) as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        fan = write(run.store, "fan", SWITCHED)
        (fan / "power.sh").write_text('#!/bin/sh\necho \'{"metrics": {"watts": 1}}\'\n')
        (fan / "power.sh").chmod(0o755)
        for name in ("lamp", "fan", "HVAC"):
            await run.wait(lambda name=name: run.entry_status(name) == "running", what=name)
        checker = await asyncio.to_thread(fuzz_requests, run.agent.http_url or "")
        print(
            f"API fuzz: {sum(checker.statuses.values())} requests, statuses "
            f"{dict(sorted(checker.statuses.items()))}, {checker.refused_switch} refused switches, "
            f"slowest answer {checker.slowest * 1000:.0f} ms"
        )
        # Still answering, and consistent: each machine is in a state of its own manifest.
        health = await run.http.get("/healthz")
        assert health.status_code == 200 and health.json()["machines"] == 3
        for name in ("lamp", "fan"):
            machine = run.agent.store.find(name).machine
            assert machine.state in machine.spec.states()
        assert 200 in checker.statuses and 422 in checker.statuses
