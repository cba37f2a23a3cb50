"""``machinery governor``: straight to a real NATS broker, and through a running agent's API."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import nats
import pytest
from typer.testing import CliRunner

from machinery.cli.governor import app
from machinery.nats.governor import bucket_name
from tests.agent.conftest import agent_factory  # noqa: F401  (a fixture)
from tests.agent.test_localgovernor import governor_routes
from tests.natsserver import NatsServer

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_stale_console_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other CLI tests leave a console handler on a stream CliRunner has closed since; the
    governor's log lines would then turn into logging errors in our output."""
    root = logging.getLogger()
    kept = [h for h in root.handlers if type(h) is not logging.StreamHandler]
    monkeypatch.setattr(root, "handlers", kept)


def when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def crashed_holder(url: str, governor: str, holder: str, acquired: float, lease: float) -> None:
    """Write a slot the way a node that then crashed would have."""

    async def write() -> None:
        client = await nats.connect(url)
        try:
            kv = await client.jetstream().key_value(bucket_name(governor))
            value = {"holder": holder, "expires": acquired + lease, "acquired": acquired}
            await kv.create("slot_0", json.dumps(value).encode())
        finally:
            await client.close()

    asyncio.run(write())


# -- straight to NATS --------------------------------------------------------------------------


def test_add_view_list_and_evict_on_nats(nats_server: NatsServer) -> None:
    url = ["--nats", nats_server.url]
    result = runner.invoke(app, ["list", *url])
    assert (result.exit_code, result.output) == (0, "No governors\n")

    result = runner.invoke(app, ["add", "nightly", "2", "--lease", "1m", *url])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "Governor nightly (nats)\n  capacity: 2\n  lease:    1m0s\n  holders:  0\n"
    )
    result = runner.invoke(app, ["add", "backups", "1", "--replicas", "1", *url])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["add", "backups", "1", "--replicas", "9", *url])
    assert result.exit_code == 2  # at most 5

    acquired = time.time() - 120
    crashed_holder(nats_server.url, "nightly", "node7:m:w:00000007", acquired, 60)
    result = runner.invoke(app, ["view", "nightly", *url])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "Governor nightly (nats)\n"
        "  capacity: 2\n"
        "  lease:    1m0s\n"
        "  holders:  1\n"
        f"    slot_0  node7:m:w:00000007  since {when(acquired)}  lease until "
        f"{when(acquired + 60)} (expired)\n"
    )
    result = runner.invoke(app, ["view", "nightly", "--format", "json", *url])
    document = json.loads(result.output)
    assert document["name"] == "nightly"
    assert document["backend"] == "nats"
    assert (document["capacity"], document["lease"]) == (2, 60.0)
    [holder] = document["holders"]
    assert holder["holder"] == "node7:m:w:00000007"
    assert holder["expired"] is True

    result = runner.invoke(app, ["list", *url])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "name     backend  held  capacity  lease\n"
        "backups  nats        0         1  5m0s\n"
        "nightly  nats        1         2  1m0s\n"
    )
    result = runner.invoke(app, ["list", "--format", "json", *url])
    assert [g["name"] for g in json.loads(result.output)] == ["backups", "nightly"]

    result = runner.invoke(app, ["evict", "nightly", "node8", *url])
    assert result.exit_code == 1
    assert "machinery: node8 holds no slot in the nightly Governor" in result.output
    result = runner.invoke(app, ["evict", "nightly", "node7", *url])
    assert (result.exit_code, result.output) == (0, "Evicted node7 from the nightly Governor\n")
    result = runner.invoke(app, ["view", "nightly", "--format", "json", *url])
    assert json.loads(result.output)["holders"] == []


def test_errors_on_nats(nats_server: NatsServer) -> None:
    url = ["--nats", nats_server.url]
    result = runner.invoke(app, ["view", "nightly", *url])
    assert result.exit_code == 1
    assert "machinery: unknown governor nightly" in result.output
    result = runner.invoke(app, ["add", "nightly", "1", "--lease", "soon", *url])
    assert result.exit_code == 1
    assert "invalid duration 'soon'" in result.output
    result = runner.invoke(app, ["add", "nightly", "0", *url])
    assert result.exit_code == 2  # refused by the argument parser
    result = runner.invoke(app, ["add", "bad.name", "1", *url])
    assert result.exit_code == 1
    assert "invalid governor name 'bad.name'" in result.output
    nats_server.stop()
    result = runner.invoke(app, ["list", *url])
    assert result.exit_code == 1
    assert f"machinery: cannot connect to {nats_server.url}" in result.output


# -- through the agent -------------------------------------------------------------------------


async def cli(*args: str) -> Any:
    # The agent answers from this test's event loop: the CLI must not block it.
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def test_the_agent_api_by_default(agent_factory: Callable[..., Any]) -> None:  # noqa: F811
    async with agent_factory() as run:
        governor_routes(run)
        agent = ["--agent", run.agent.http_url]
        result = await cli("list", *agent)
        assert (result.exit_code, result.output) == (0, "No governors\n")
        result = await cli("add", "nightly", "3", *agent)
        assert result.exit_code == 0, result.output
        assert result.output == (
            "Governor nightly (local)\n  capacity: 3\n  lease:    -\n  holders:  0\n"
        )
        governor = run.agent.node.service("governor")
        async with governor.acquire("nightly", 0, holder="agent.example.net:m:w:0000000a"):
            acquired = (await governor.view("nightly")).holders[0]["acquired"]
            result = await cli("view", "nightly", *agent)
            assert result.exit_code == 0, result.output
            assert result.output == (
                "Governor nightly (local)\n"
                "  capacity: 3\n"
                "  lease:    -\n"
                "  holders:  1\n"
                f"    #1  agent.example.net:m:w:0000000a  since {when(acquired)}\n"
            )
            result = await cli("list", *agent)
            assert result.output == (
                "name     backend  held  capacity  lease\nnightly  local       1         3  -\n"
            )
            result = await cli("evict", "nightly", "agent.example.net:m:w:0000000a", *agent)
            assert result.exit_code == 0, result.output
            assert result.output == (
                "Evicted agent.example.net:m:w:0000000a from the nightly Governor\n"
            )
            assert (await governor.view("nightly")).holders == []
        result = await cli("view", "other", *agent)
        assert result.exit_code == 1
        assert "machinery: unknown governor other" in result.output
        result = await cli("evict", "nightly", "nobody", *agent)
        assert result.exit_code == 1
        assert "machinery: nobody holds no slot in the nightly Governor" in result.output
    result = await cli("list", *agent)
    assert result.exit_code == 1
    assert "cannot reach the agent" in result.output
