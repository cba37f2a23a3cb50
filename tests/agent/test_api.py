"""The HTTP API against a real in-process agent on a loopback port."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from machinery.agent.config import load_settings
from machinery.api.app import create_app
from tests.agent.test_store import LAMP, write

TOKEN = "s3cret-token-for-tests-only"


async def test_machines_and_one_machine(agent_factory: Any) -> None:
    async with agent_factory(("hvac", "container-manager")) as run:
        write(run.store, "broken", "name: broken\n")
        await run.wait(lambda: run.entry_status("broken") == "invalid")
        body = (await run.http.get("/api/v1/machines")).json()
        names = [m["name"] for m in body["machines"]]
        assert names == ["ContainerManager", "HVAC", "broken"]
        hvac = body["machines"][1]
        assert hvac["status"] == "running" and hvac["state"] == "unknown"
        assert hvac["available_transitions"] == ["variables_changed", "variables_unknown"]
        assert hvac["scout"] is False and "current_state" not in hvac
        broken = body["machines"][2]
        assert broken["status"] == "invalid"
        assert any("no transitions defined" in e for e in broken["errors"])
        assert broken["diagnostics"][0]["line"] == 1
        one = await run.http.get("/api/v1/machines/HVAC")
        assert one.status_code == 200 and one.json()["name"] == "HVAC"
        missing = await run.http.get("/api/v1/machines/nope")
        assert missing.status_code == 404 and missing.json() == {"error": "machine nope not found"}


async def test_a_machine_with_unknown_keys_runs_and_shows_its_warnings(
    agent_factory: Any,
) -> None:
    # Choria runs it, ignoring the key: so does the agent, and says so wherever errors show.
    async with agent_factory() as run:
        text = LAMP.format(name="lamp").replace(
            "      command: /bin/true\n", "      command: /bin/true\n      retries: 3\n"
        )
        write(run.store, "lamp", text)
        await run.wait(lambda: run.entry_status("lamp") == "running")
        lamp = (await run.http.get("/api/v1/machines/lamp")).json()
        assert lamp["status"] == "running" and "errors" not in lamp
        [warning] = lamp["warnings"]
        assert warning.endswith(
            "machine.yaml:18:7: warning: watcher 'check': properties: unknown property "
            "'retries' is ignored; valid properties: command, disown, environment, "
            "gather_initial_state, governor, governor_timeout, parse_as_data, "
            "suppress_success_announce, timeout"
        ), warning
        [diagnostic] = lamp["diagnostics"]
        assert (diagnostic["severity"], diagnostic["line"], diagnostic["column"]) == (
            "warning",
            18,
            7,
        )


async def test_transition_semantics_match_choria(agent_factory: Any) -> None:
    async with agent_factory() as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        ok = await run.http.post(
            "/api/v1/machines/lamp/transition", json={"transition": "switch_on"}
        )
        assert ok.status_code == 200
        assert ok.json() == {
            "success": True,
            "machine": "lamp",
            "transition": "switch_on",
            "from_state": "off",
            "to_state": "on",
            "changed": True,
        }
        invalid = await run.http.post(
            "/api/v1/machines/lamp/transition", json={"transition": "switch_on"}
        )
        assert invalid.status_code == 409
        assert invalid.json()["error"] == (
            "Could not perform switch_on transition: transition switch_on "
            "is not valid while in on state"
        )
        bad = await run.http.post("/api/v1/machines/lamp/transition", json={"transition": "x y"})
        assert bad.status_code == 422 and "error" in bad.json()
        extra = await run.http.post(
            "/api/v1/machines/lamp/transition", json={"transition": "a", "b": 1}
        )
        assert extra.status_code == 422


async def test_history_and_watchers(agent_factory: Any) -> None:
    async with agent_factory() as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        for event in ("switch_on", "switch_off", "switch_on"):
            assert (
                await run.http.post("/api/v1/machines/lamp/transition", json={"transition": event})
            ).status_code == 200
        history = (await run.http.get("/api/v1/machines/lamp/history", params={"limit": 2})).json()
        assert [h["transition"] for h in history["history"]] == ["switch_on", "switch_off"]
        assert history["history"][0]["from_state"] == "off"
        older = (
            await run.http.get(
                "/api/v1/machines/lamp/history", params={"before": history["history"][-1]["seq"]}
            )
        ).json()
        assert [h["transition"] for h in older["history"]] == ["switch_on"]
        watchers = (await run.http.get("/api/v1/machines/lamp/watchers")).json()["watchers"]
        [check] = watchers
        assert check["name"] == "check" and check["type"] == "exec" and check["active"] is True
        await run.wait(lambda: run.agent.store.find("lamp").machine.watchers[0].status.runs >= 1)
        check = (await run.http.get("/api/v1/machines/lamp/watchers")).json()["watchers"][0]
        assert check["status"]["outcome"] == "success"
        assert check["status"]["next_run"] > check["status"]["last_run"]
        assert check["state"]["protocol"] == "io.choria.machine.watcher.exec.v1.state"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/machines/..%2F..%2Fetc",
        "/api/v1/machines/a%20b",
        "/api/v1/machines/" + "x" * 200,
        "/api/v1/machines/%00",
        "/api/v1/machines/-dash/history",
    ],
)
async def test_names_in_paths_are_validated(agent_factory: Any, path: str) -> None:
    async with agent_factory() as run:
        response = await run.http.get(path)
        assert response.status_code in (404, 422), response.text
        assert "error" in response.json()


async def test_server_sent_events_stream_cloudevents(agent_factory: Any) -> None:
    async with agent_factory() as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        received: list[dict[str, Any]] = []

        async def listen() -> None:
            async with run.http.stream(
                "GET", "/api/v1/events", params={"kind": "transitions"}
            ) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        received.append(json.loads(line[5:]))
                        return

        listener = asyncio.ensure_future(listen())
        await run.wait(lambda: run.agent.bus.subscriber_count == 1, what="subscriber")
        await run.http.post("/api/v1/machines/lamp/transition", json={"transition": "switch_on"})
        await asyncio.wait_for(listener, 5)
        [event] = received
        assert event["type"] == "io.choria.machine.v1.transition"
        assert event["data"]["transition"] == "switch_on"
        await run.wait(lambda: run.agent.bus.subscriber_count == 0, what="unsubscribed")


async def test_sse_clients_are_bounded(agent_factory: Any) -> None:
    async with (
        agent_factory(**{"http.max_sse_clients": 1}) as run,
        run.http.stream("GET", "/api/v1/events") as first,
    ):
        assert first.status_code == 200
        await run.wait(lambda: run.agent.bus.subscriber_count == 1)
        second = await run.http.get("/api/v1/events")
        assert second.status_code == 503 and "at most 1" in second.json()["error"]


async def test_healthz_and_openapi(agent_factory: Any) -> None:
    async with agent_factory(("hvac",)) as run:
        health = (await run.http.get("/healthz")).json()
        assert (
            health["status"] == "ok"
            and health["machines"] == 1
            and health["identity"] == "agent.example.net"
        )
        spec = (await run.http.get("/openapi.json")).json()
        assert "/api/v1/machines/{name}/transition" in spec["paths"]


# -- token rules, in-process without a socket (a non-loopback listener is never opened) -------


class FakeAgent:
    """Just enough of an Agent for the token rules."""

    def __init__(
        self, tmp_path: Path, listen: str, token: str | None, require: bool = False
    ) -> None:
        flags: dict[str, Any] = {
            "store": str(tmp_path),
            "state_dir": str(tmp_path / "s"),
            "http.listen": listen,
            "http.require_token": require,
        }
        self.settings = load_settings(flags=flags, environ={}).settings
        self.token = token
        self.node = None
        self.store = None
        self.db = None
        self.writer = None


async def post(agent: FakeAgent, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(agent))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        return await client.post(
            "/api/v1/machines/lamp/transition",
            json={"transition": "switch_on"},
            headers=headers or {},
        )


async def test_loopback_needs_no_token(tmp_path: Path) -> None:
    response = await post(FakeAgent(tmp_path, "127.0.0.1:8347", None))
    assert response.status_code == 404  # past the token check, to the machine lookup


async def test_non_loopback_without_a_configured_token_refuses_changes(tmp_path: Path) -> None:
    response = await post(FakeAgent(tmp_path, "0.0.0.0:8347", None))
    assert response.status_code == 403
    assert "need a token" in response.json()["error"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": f"Bearer {TOKEN}"}, 404),
    ],
)
async def test_non_loopback_token_rules(
    tmp_path: Path, headers: dict[str, str], status: int
) -> None:
    response = await post(FakeAgent(tmp_path, "0.0.0.0:8347", TOKEN), headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


async def test_token_can_be_required_on_loopback(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path, "127.0.0.1:8347", TOKEN, require=True)
    assert (await post(agent)).status_code == 401
    assert (await post(agent, {"Authorization": f"Bearer {TOKEN}"})).status_code == 404


SWITCHED = """\
name: fan
version: 1.0.0
initial_state: "off"
transitions:
  - name: turn_on
    from: ["off"]
    destination: "on"
  - name: turn_off
    from: ["on"]
    destination: "off"
  - name: pause
    from: ["off", "on"]
    destination: paused
watchers:
  - name: switch
    type: httpswitch
    success_transition: turn_on
    fail_transition: turn_off
    properties:
      on_when: ["on"]
      off_when: ["off"]
      disable_when: [paused]
  - name: power
    type: metric
    properties:
      command: ./power.sh
      interval: 1s
"""


async def test_choria_switch_home_assistant_and_metric_routes(agent_factory: Any) -> None:
    async with agent_factory() as run:
        directory = write(run.store, "fan", SWITCHED)
        (directory / "power.sh").write_text(
            '#!/bin/sh\necho \'{"labels": {"room": "lab"}, "metrics": {"watts": 42.5}}\'\n'
        )
        (directory / "power.sh").chmod(0o755)
        await run.wait(lambda: run.entry_status("fan") == "running")
        base = "/choria/machine/switch/v1/fan/switch"
        state = (await run.http.get(base)).json()
        assert state["is_on"] is False and state["status"] == "off"
        assert state["detail"]["protocol"] == "io.choria.machine.watcher.httpswitch.v1.state"
        turned = await run.http.post(base, json={"on": True})
        assert turned.status_code == 200 and turned.json() == {"is_on": True}
        assert run.agent.store.find("fan").machine.state == "on"
        ha = "/choria/homeassistant/switch/v1/fan/switch"
        assert (await run.http.get(ha)).text == "ON"
        off = await run.http.post(ha, content=b"OFF")
        assert off.text == "OFF"  # the real state, not "accepted"
        assert run.agent.store.find("fan").machine.state == "off"
        await run.http.post("/api/v1/machines/fan/transition", json={"transition": "pause"})
        refused = await run.http.post(base, json={"on": True})
        assert refused.status_code == 500 and refused.json() == {"error": "watcher is disabled"}
        unknown = await run.http.get("/choria/machine/switch/v1/fan/nope")
        assert unknown.status_code == 400 and unknown.json() == {"error": "switch not found"}

        metric = "/choria/machine/metric/v1/fan/power"
        await run.wait(
            lambda: (
                run.http is not None
                and run.agent.node.service("metrics").get("fan", "power")["time"] > 0
            ),
            timeout=5,
            what="first metric",
        )
        body = (await run.http.get(metric)).json()
        assert body["labels"] == {"format": "choria", "room": "lab"}
        assert body["metrics"]["watts"] == 42.5
        assert (await run.http.get("/choria/machine/metric/v1/fan/nope")).status_code == 400


async def test_agent_settings_hide_every_nats_secret(agent_factory: Any) -> None:
    secrets = {
        "nats.servers": ["nats://127.0.0.1:1", "nats://someone:url-secret@127.0.0.1:2"],
        "nats.password": "password-secret",
        "nats.token": "token-secret",
    }
    async with agent_factory(**secrets) as run:
        response = await run.http.get("/api/v1/agent")
    body = response.text
    for secret in ("url-secret", "password-secret", "token-secret"):
        assert secret not in body
    nats = response.json()["settings"]["nats"]
    assert nats["servers"] == ["nats://127.0.0.1:1", "nats://***@127.0.0.1:2"]
    assert nats["password"] == nats["token"] == "***"
    assert response.json()["nats"]["servers"] == nats["servers"]


async def test_request_bodies_are_bounded(agent_factory: Any) -> None:
    from machinery.api.guard import MAX_BODY_BYTES

    async with agent_factory() as run:
        await run.http.post("/api/v1/kv/CFG")
        declared = await run.http.put("/api/v1/kv/CFG/big", content=b"x" * (MAX_BODY_BYTES + 1))
        assert declared.status_code == 413
        assert declared.json() == {"error": f"request bodies are limited to {MAX_BODY_BYTES} bytes"}

        def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(3):
                yield b"x" * (1024 * 1024)

        streamed = await run.http.put("/api/v1/kv/CFG/big", content=_aiter(chunks()))
        assert streamed.status_code == 413
        small = await run.http.put("/api/v1/kv/CFG/small", content=b"fine")
        assert small.status_code == 200


async def _aiter(items: Any) -> Any:
    for item in items:
        yield item
