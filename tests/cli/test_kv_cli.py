"""``machinery kv`` against NATS directly (--nats) and through an agent's /api/v1/kv, and that
API itself."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from typer.testing import CliRunner, Result

from machinery.cli.kv import app
from tests.agent.conftest import agent_factory  # noqa: F401  (the fixture, for this module)
from tests.natsserver import NatsServer

TOKEN = "kv-token-for-tests-only-0123456789"


@pytest.fixture(autouse=True)
def _drop_dead_log_handlers() -> None:
    """Other CLI tests leave root handlers writing to CliRunner streams that are closed since;
    a log line through one of them (httpx logs every request) fails the command."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
            root.removeHandler(handler)


def kv(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input)


def ok(*args: str, input: bytes | None = None) -> str:
    result = kv(*args, input=input)
    assert result.exit_code == 0, result.output
    return result.stdout


# -- directly on NATS ---------------------------------------------------------------------------


def test_nats_round_trip(nats_server: NatsServer) -> None:
    url = ["--nats", nats_server.url]
    assert ok("add", "CFG", "--history", "3", *url) == "bucket CFG ready\n"
    assert ok("ls", *url) == "CFG\n"
    assert ok("put", "CFG", "mode", "maintenance", *url) == "CFG.mode stored at revision 1\n"
    assert ok("put", "CFG", "web.port", "-", *url, input=b"8080") == (
        "CFG.web.port stored at revision 2\n"
    )
    assert ok("get", "CFG", "mode", *url) == "maintenance\n"
    assert ok("get", "CFG", "web.port", *url) == "8080\n"
    body = json.loads(ok("get", "CFG", "mode", "--format", "json", *url))
    assert body["value"] == "maintenance" and body["revision"] == 1
    assert set(body) == {"bucket", "key", "value", "revision", "created"}
    assert ok("ls", "CFG", *url) == "mode\nweb.port\n"
    assert json.loads(ok("ls", "CFG", "--format", "json", *url)) == ["mode", "web.port"]
    assert ok("del", "CFG", "mode", *url) == "CFG.mode deleted\n"
    missing = kv("get", "CFG", "mode", *url)
    assert missing.exit_code == 1
    assert "key mode not found in bucket CFG" in missing.stderr


def test_nats_binary_values(nats_server: NatsServer) -> None:
    url = ["--nats", nats_server.url]
    ok("add", "BIN", *url)
    blob = bytes(range(256))
    ok("put", "BIN", "blob", "-", *url, input=blob)
    body = json.loads(ok("get", "BIN", "blob", "--format", "json", *url))
    assert body["encoding"] == "base64"
    assert base64.b64decode(body["value"]) == blob
    assert kv("get", "BIN", "blob", *url).stdout_bytes == blob + b"\n"


def test_nats_watch_prints_current_values_then_changes(nats_server: NatsServer) -> None:
    url = ["--nats", nats_server.url]
    ok("add", "CFG", *url)
    ok("put", "CFG", "a", "1", *url)
    ok("put", "CFG", "b", "2", *url)
    ok("del", "CFG", "b", *url)

    def later() -> None:
        # Not through CliRunner: it swaps sys.stdout, so two cannot run at once.
        async def put() -> None:
            client = await nats.connect(nats_server.url)
            try:
                await (await client.jetstream().key_value("CFG")).put("a", b"3")
            finally:
                await client.close()

        asyncio.run(put())

    timer = threading.Timer(0.5, later)
    timer.start()
    try:
        lines = ok("watch", "CFG", "--count", "3", "--format", "json", *url).splitlines()
    finally:
        timer.join()
    entries = [json.loads(line) for line in lines]
    assert [(e["key"], e["operation"], e["value"]) for e in entries] == [
        ("a", "PUT", "1"),
        ("b", "DEL", ""),
        ("a", "PUT", "3"),
    ]
    text = ok("watch", "CFG", "a", "--count", "1", *url)
    assert text.endswith("] PUT CFG.a #4: 3\n")


def test_nats_errors(nats_server: NatsServer) -> None:
    url = ["--nats", nats_server.url]
    result = kv("get", "NOPE", "k", *url)
    assert result.exit_code == 1 and "bucket NOPE not found" in result.stderr
    result = kv("add", "bad name", *url)
    assert result.exit_code == 1 and "invalid bucket name" in result.stderr
    result = kv("put", "CFG", "k", "v", "--nats", "nats://127.0.0.1:1")
    assert result.exit_code == 1 and "cannot connect to nats://127.0.0.1:1" in result.stderr
    result = kv("ls", "--nats", nats_server.url, "--agent", "http://127.0.0.1:1")
    assert result.exit_code == 1 and "either --agent or --nats" in result.stderr
    result = kv("add", "X", "--ttl", "soon", *url)
    assert result.exit_code == 1 and "invalid --ttl" in result.stderr


def test_buckets_are_shared_with_other_nats_clients(nats_server: NatsServer) -> None:
    async def made_elsewhere() -> None:
        client = await nats.connect(nats_server.url)
        try:
            kv_bucket = await client.jetstream().create_key_value(bucket="CHORIA_PLUGINS")
            await kv_bucket.put("plugins", b'{"x": 1}')
        finally:
            await client.close()

    asyncio.run(made_elsewhere())
    assert ok("get", "CHORIA_PLUGINS", "plugins", "--nats", nats_server.url) == '{"x": 1}\n'


# -- through the agent --------------------------------------------------------------------------


async def in_thread(*args: str, input: bytes | None = None) -> Result:
    return await asyncio.to_thread(kv, *args, input=input)


@pytest.mark.parametrize("kind", ["local", "nats"])
async def test_agent_round_trip(
    agent_factory: Callable[..., Any],  # noqa: F811
    request: pytest.FixtureRequest,
    kind: str,
) -> None:
    settings: dict[str, Any] = {}
    if kind == "nats":
        settings["nats.servers"] = [request.getfixturevalue("nats_server").url]
    async with agent_factory(**settings) as agent:
        url = ["--agent", agent.agent.http_url]
        assert (await in_thread("ls", *url)).stdout == ""
        assert (await in_thread("add", "CFG", *url)).stdout == "bucket CFG ready\n"
        put = await in_thread("put", "CFG", "mode", "on", *url)
        assert put.stdout == "CFG.mode stored at revision 1\n", put.output
        await in_thread("put", "CFG", "blob", "-", *url, input=b"\xff\x00")
        assert (await in_thread("get", "CFG", "mode", *url)).stdout == "on\n"
        assert (await in_thread("get", "CFG", "blob", *url)).stdout_bytes == b"\xff\x00\n"
        body = json.loads((await in_thread("get", "CFG", "blob", "--format", "json", *url)).stdout)
        assert body["encoding"] == "base64" and body["revision"] == 2
        assert (await in_thread("ls", *url)).stdout == "CFG\n"
        assert (await in_thread("ls", "CFG", *url)).stdout == "blob\nmode\n"
        assert (await in_thread("del", "CFG", "blob", *url)).stdout == "CFG.blob deleted\n"
        missing = await in_thread("get", "CFG", "blob", *url)
        assert missing.exit_code == 1 and "key blob not found in bucket CFG" in missing.stderr
        nobucket = await in_thread("put", "NOPE", "k", "v", *url)
        assert nobucket.exit_code == 1 and "bucket NOPE not found" in nobucket.stderr

        # watch: the current value, then a change made while it runs.
        watching = asyncio.ensure_future(
            in_thread("watch", "CFG", "mode", "--count", "2", "--format", "json", *url)
        )
        await asyncio.sleep(0.3)
        # Through the API, not a second CliRunner (they cannot run at once).
        assert (await agent.http.put("/api/v1/kv/CFG/mode", content=b"off")).status_code == 200
        result = await asyncio.wait_for(watching, 10)
        assert result.exit_code == 0, result.output
        entries = [json.loads(line) for line in result.stdout.splitlines()]
        assert [(e["value"], e["operation"]) for e in entries] == [("on", "PUT"), ("off", "PUT")]


async def test_agent_api(
    agent_factory: Callable[..., Any],  # noqa: F811
) -> None:
    async with agent_factory() as agent:
        http: httpx.AsyncClient = agent.http
        assert (await http.get("/api/v1/kv")).json() == {"buckets": []}
        created = await http.post("/api/v1/kv/CFG", params={"ttl": 3600})
        assert created.json() == {"bucket": "CFG", "history": 1, "ttl": 3600}
        put = await http.put("/api/v1/kv/CFG/web/port.x", content=b"80")
        assert put.json() == {"bucket": "CFG", "key": "web/port.x", "revision": 1}
        got = (await http.get("/api/v1/kv/CFG/web/port.x")).json()
        assert got["value"] == "80" and "encoding" not in got and got["created"] > 0
        assert (await http.get("/api/v1/kv/CFG")).json() == {
            "bucket": "CFG",
            "keys": ["web/port.x"],
        }
        response = await http.get("/api/v1/kv/CFG/nope")
        assert response.status_code == 404 and "not found" in response.json()["error"]
        assert (await http.get("/api/v1/kv/NOPE")).status_code == 404
        assert (await http.get("/api/v1/kv/NOPE/watch")).status_code == 404
        assert (await http.get("/api/v1/kv/CFG/a..b")).status_code == 422
        assert (await http.get("/api/v1/kv/CFG/watch", params={"key": "a b"})).status_code == 422
        big = await http.put("/api/v1/kv/CFG/big", content=b"x" * (1024 * 1024 + 1))
        assert big.status_code == 413
        deleted = await http.delete("/api/v1/kv/CFG/web/port.x")
        assert deleted.json() == {"bucket": "CFG", "key": "web/port.x", "deleted": True}
        assert (await http.get("/api/v1/kv/CFG/web/port.x")).status_code == 404
        # The stream: event "kv", one JSON entry per event, deletes included.
        async with http.stream("GET", "/api/v1/kv/CFG/watch", params={"key": ">"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            seen: list[str] = []
            while len([x for x in seen if x.startswith("data:")]) < 1:
                seen.append(await asyncio.wait_for(anext(lines), 5))
        data = json.loads(next(x for x in seen if x.startswith("data:"))[5:])
        assert (data["key"], data["operation"]) == ("web/port.x", "DEL")
        assert "event: kv" in seen
        schema = (await http.get("/openapi.json")).json()
        assert "/api/v1/kv/{bucket}/{key}" in schema["paths"]


async def test_agent_changes_need_the_token_when_required(
    tmp_path: Path,
    agent_factory: Callable[..., Any],  # noqa: F811
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    async with agent_factory(
        **{"http.require_token": True, "http.token_file": str(token_file)}
    ) as agent:
        url = ["--agent", agent.agent.http_url]
        refused = await in_thread("add", "CFG", *url)
        assert refused.exit_code == 1 and "bearer token" in refused.stderr
        assert (await in_thread("add", "CFG", *url, "--token-file", str(token_file))).exit_code == 0
        assert (await in_thread("ls", *url)).stdout == "CFG\n"  # reading needs no token
        refused = await in_thread("put", "CFG", "k", "v", *url)
        assert refused.exit_code == 1
        refused = await in_thread("del", "CFG", "k", *url)
        assert refused.exit_code == 1


def test_agent_unreachable() -> None:
    result = kv("ls", "--agent", "http://127.0.0.1:1")
    assert result.exit_code == 1 and "cannot reach the agent" in result.stderr
