"""Issue 13, items 4-6, against a real in-process agent on a loopback port: foreign Host names and
cross-origin state changes are refused, a configured token is required on loopback too, and KV
watches count in the stream limit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from machinery.agent.config import ConfigError, load_settings
from tests.agent.test_store import LAMP, write

TOKEN = "s3cret-token-for-tests-only"


async def lamp_state(run: Any) -> str:
    return str((await run.http.get("/api/v1/machines/lamp")).json()["state"])


@pytest.mark.parametrize(
    "host",
    ["attacker.example", "attacker.example:8347", "127.0.0.1.attacker.example", "[::2]", "a b"],
)
async def test_foreign_host_names_are_refused(agent_factory: Any, host: str) -> None:
    """DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1 sends
    ``Host: attacker.example``; it reads nothing and changes nothing."""
    async with agent_factory() as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        read = await run.http.get("/api/v1/machines", headers={"Host": host})
        assert read.status_code == 421, read.text
        assert "allowed_hosts" in read.json()["error"] or "malformed" in read.json()["error"]
        change = await run.http.post(
            "/api/v1/machines/lamp/transition",
            json={"transition": "switch_on"},
            headers={"Host": host},
        )
        assert change.status_code == 421
        assert await lamp_state(run) == "off"


async def test_own_names_are_accepted(agent_factory: Any) -> None:
    async with agent_factory(**{"http.allowed_hosts": ["Agent.Example.ORG"]}) as run:
        port = run.agent.http_url.rsplit(":", 1)[1]
        for host in [
            f"127.0.0.1:{port}",
            "127.0.0.1",
            f"localhost:{port}",
            "LOCALHOST",
            "dashboard.localhost",
            "[::1]:8347",
            "agent.example.net",  # the identity
            f"agent.example.org:{port}",  # configured
        ]:
            response = await run.http.get("/healthz", headers={"Host": host})
            assert response.status_code == 200, (host, response.text)


def test_allowed_hosts_from_the_environment(tmp_path: Path) -> None:
    environ = {"MACHINERY_HTTP__ALLOWED_HOSTS": "agent.example.org, [2001:db8::1]"}
    settings = load_settings(flags={"store": str(tmp_path)}, environ=environ).settings
    assert settings.http.allowed_hosts == ["agent.example.org", "2001:db8::1"]
    with pytest.raises(ConfigError, match="not an IP address or host name"):
        load_settings(
            flags={"store": str(tmp_path)},
            environ={"MACHINERY_HTTP__ALLOWED_HOSTS": "bad host/"},
        )


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://attacker.example", "Content-Type": "text/plain"},
        {"Origin": "null", "Content-Type": "text/plain"},
        {"Origin": "http://localhost:3000"},  # another local web application
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_cross_origin_state_changes_are_refused(
    agent_factory: Any, headers: dict[str, str]
) -> None:
    """A web page's ``text/plain`` POST (no CORS preflight) neither flips a machine nor creates
    a KV bucket."""
    async with agent_factory() as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        flip = await run.http.post(
            "/api/v1/machines/lamp/transition",
            content=b'{"transition": "switch_on"}',
            headers=headers,
        )
        assert flip.status_code == 403, flip.text
        assert "refused" in flip.json()["error"]
        bucket = await run.http.post("/api/v1/kv/pwned", headers=headers)
        assert bucket.status_code == 403
        assert await lamp_state(run) == "off"
        assert "pwned" not in (await run.http.get("/api/v1/kv")).json()["buckets"]


async def test_same_origin_and_non_browser_changes_work(agent_factory: Any) -> None:
    """The dashboard (same origin), the CLI and Home Assistant (no Origin) keep working."""
    async with agent_factory() as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        origin = run.agent.http_url
        dashboard = await run.http.post(
            "/api/v1/machines/lamp/transition",
            json={"transition": "switch_on"},
            headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"},
        )
        assert dashboard.status_code == 200, dashboard.text
        plain = await run.http.post(
            "/api/v1/machines/lamp/transition", json={"transition": "switch_off"}
        )
        assert plain.status_code == 200
        typed = await run.http.post(
            "/api/v1/kv/mine", headers={"Sec-Fetch-Site": "none"}
        )  # typed in the address bar
        assert typed.status_code == 200


async def test_a_configured_token_is_required_on_loopback(
    agent_factory: Any, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    async with agent_factory(**{"http.token_file": str(token_file)}) as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        body = {"transition": "switch_on"}
        refused = await run.http.post("/api/v1/machines/lamp/transition", json=body)
        assert refused.status_code == 401
        assert (await run.http.post("/api/v1/kv/b")).status_code == 401
        assert await lamp_state(run) == "off"
        wrong = await run.http.post(
            "/api/v1/machines/lamp/transition",
            json=body,
            headers={"Authorization": "Bearer not-the-token-at-all"},
        )
        assert wrong.status_code == 401
        allowed = await run.http.post(
            "/api/v1/machines/lamp/transition",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert allowed.status_code == 200
        assert (await run.http.get("/api/v1/machines")).status_code == 200  # reads stay open


async def test_kv_watches_count_in_the_stream_limit(agent_factory: Any) -> None:
    async with agent_factory(**{"http.max_sse_clients": 2}) as run:
        assert (await run.http.post("/api/v1/kv/b")).status_code == 200
        assert (await run.http.put("/api/v1/kv/b/k", content=b"v")).status_code == 200
        async with (
            run.http.stream("GET", "/api/v1/kv/b/watch") as first,
            run.http.stream("GET", "/api/v1/events") as second,
        ):
            assert first.status_code == 200 and second.status_code == 200
            lines = first.aiter_lines()
            while not (await asyncio.wait_for(anext(lines), 5)).startswith("event: kv"):
                pass
            await run.wait(lambda: run.agent.bus.subscriber_count == 1)
            third = await run.http.get("/api/v1/kv/b/watch")
            assert third.status_code == 503 and "at most 2" in third.json()["error"]
            fourth = await run.http.get("/api/v1/events")
            assert fourth.status_code == 503
        # Closed streams give their slots back.
        async with run.http.stream("GET", "/api/v1/kv/b/watch") as again:
            assert again.status_code == 200


async def test_allowed_hosts_apply_on_reload(agent_factory: Any) -> None:
    async with agent_factory() as run:
        proxied = {"Host": "proxy.example.org"}
        assert (await run.http.get("/healthz", headers=proxied)).status_code == 421
        settings = run.agent.settings
        http = settings.http.model_copy(update={"allowed_hosts": ["proxy.example.org"]})
        run.agent._apply(settings.model_copy(update={"http": http}))  # what SIGHUP applies
        assert (await run.http.get("/healthz", headers=proxied)).status_code == 200
