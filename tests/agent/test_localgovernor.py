"""The agent's local governors: semaphores on the fake clock, and in a running agent (exec
watchers, the HTTP routes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from machinery.agent.localgovernor import LocalGovernor
from machinery.api.governor import router
from machinery.core.clock import FakeClock
from machinery.core.governor import GovernorError, GovernorTimeout, UnknownGovernor
from tests.agent.conftest import RunningAgent

# -- the semaphore ---------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def hold(
    governor: LocalGovernor,
    name: str,
    holder: str,
    log: list[str],
    release: asyncio.Event,
    timeout: float = 60,
) -> int:
    async with governor.acquire(name, timeout, holder=holder) as sequence:
        log.append(f"enter {holder}")
        await release.wait()
        log.append(f"exit {holder}")
        return sequence


async def test_an_unknown_governor_is_created_with_capacity_one(clock: FakeClock) -> None:
    governor = LocalGovernor(clock)
    assert await governor.names() == []
    with pytest.raises(UnknownGovernor, match=r"^unknown governor jobs$"):
        await governor.view("jobs")
    async with governor.acquire("jobs", 10, holder="a") as sequence:
        assert sequence == 1
        info = await governor.view("jobs")
        assert (info.name, info.capacity, info.lease) == ("jobs", 1, 0.0)
        assert info.holders == [{"holder": "a", "sequence": 1, "acquired": clock.now()}]
        with pytest.raises(GovernorTimeout):
            async with governor.acquire("jobs", 0, holder="b"):
                pass
    assert await governor.names() == ["jobs"]
    assert (await governor.view("jobs")).holders == []


async def test_capacity_is_never_exceeded_and_waiters_are_served_in_order(
    clock: FakeClock,
) -> None:
    governor = LocalGovernor(clock)
    await governor.add("jobs", 2)
    log: list[str] = []
    releases = {name: asyncio.Event() for name in "abcdef"}
    tasks = {}
    for name in "abcdef":
        tasks[name] = asyncio.create_task(hold(governor, "jobs", name, log, releases[name]))
        await clock.settle()  # queue in this order
    assert log == ["enter a", "enter b"]
    assert governor.waiting("jobs") == 4
    # Release out of order: the longest waiting still goes first.
    for name in "bacdef":
        releases[name].set()
        await clock.settle()
        held = sum(1 for line in log if line.startswith("enter")) - sum(
            1 for line in log if line.startswith("exit")
        )
        assert held <= 2
    assert [line for line in log if line.startswith("enter")] == [f"enter {n}" for n in "abcdef"]
    assert [await tasks[n] for n in "abcdef"] == [1, 2, 3, 4, 5, 6]
    assert (await governor.view("jobs")).holders == []


async def test_a_waiter_times_out_on_the_clock_and_the_next_one_is_served(
    clock: FakeClock,
) -> None:
    governor = LocalGovernor(clock)
    log: list[str] = []
    first_release, later = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(hold(governor, "jobs", "a", log, first_release))
    await clock.settle()
    impatient = asyncio.create_task(hold(governor, "jobs", "b", log, later, timeout=30))
    await clock.settle()
    patient = asyncio.create_task(hold(governor, "jobs", "c", log, later, timeout=300))
    await clock.settle()
    await clock.advance(29.9)
    assert not impatient.done()
    await clock.advance(0.1)
    with pytest.raises(
        GovernorTimeout, match=r"^no slot in the jobs Governor became free within 30s$"
    ):
        await impatient
    assert governor.waiting("jobs") == 1
    first_release.set()
    later.set()
    assert await first == 1
    assert await patient == 2
    assert log == ["enter a", "exit a", "enter c", "exit c"]


async def test_a_cancelled_waiter_leaves_the_queue(clock: FakeClock) -> None:
    governor = LocalGovernor(clock)
    log: list[str] = []
    release = asyncio.Event()
    holder = asyncio.create_task(hold(governor, "jobs", "a", log, release))
    await clock.settle()
    waiter = asyncio.create_task(hold(governor, "jobs", "b", log, release))
    await clock.settle()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert governor.waiting("jobs") == 0
    release.set()
    await holder
    # A slot granted in the same step the waiter is cancelled in is handed back, not leaked.
    async with governor.acquire("jobs", 0, holder="c"):
        racer = asyncio.create_task(hold(governor, "jobs", "d", log, release))
        await clock.settle()
    racer.cancel()  # granted by the release above, cancelled before it could run
    with contextlib.suppress(asyncio.CancelledError):
        await racer
    assert (await governor.view("jobs")).holders == []
    async with governor.acquire("jobs", 0, holder="e") as sequence:
        assert sequence == 4


async def test_the_slot_is_released_when_the_block_fails(clock: FakeClock) -> None:
    governor = LocalGovernor(clock)
    with pytest.raises(RuntimeError):
        async with governor.acquire("jobs", 0, holder="a"):
            raise RuntimeError("boom")
    async with governor.acquire("jobs", 0, holder="b") as sequence:
        assert sequence == 2


async def test_resizing_serves_waiters_and_shrinking_keeps_holders(clock: FakeClock) -> None:
    governor = LocalGovernor(clock)
    log: list[str] = []
    release = {name: asyncio.Event() for name in "abc"}
    tasks = [asyncio.create_task(hold(governor, "jobs", n, log, release[n])) for n in "abc"]
    await clock.settle()
    assert log == ["enter a"]
    await governor.add("jobs", 3)
    await clock.settle()
    assert log == ["enter a", "enter b", "enter c"]
    await governor.add("jobs", 1)
    assert len((await governor.view("jobs")).holders) == 3  # nobody is thrown out
    late = asyncio.create_task(hold(governor, "jobs", "d", log, asyncio.Event(), timeout=5))
    release["a"].set()
    release["b"].set()
    await clock.settle()
    assert "enter d" not in log  # still one over capacity
    release["c"].set()
    await asyncio.gather(*tasks)
    await clock.settle()
    assert log[-1] == "enter d"
    late.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await late


async def test_evicting_frees_the_slot_once(clock: FakeClock) -> None:
    governor = LocalGovernor(clock)
    log: list[str] = []
    stuck, never = asyncio.Event(), asyncio.Event()
    crashed = asyncio.create_task(hold(governor, "jobs", "node1:m:w:00000001", log, stuck))
    await clock.settle()
    waiter = asyncio.create_task(hold(governor, "jobs", "node2:m:w:00000002", log, never))
    await clock.settle()
    assert not await governor.evict("jobs", "node2")  # holds nothing yet
    assert not await governor.evict("jobs", "node")  # a prefix is a whole ':' part
    assert await governor.evict("jobs", "node1")
    await clock.settle()
    assert log == ["enter node1:m:w:00000001", "enter node2:m:w:00000002"]
    info = await governor.view("jobs")
    assert [h["holder"] for h in info.holders] == ["node2:m:w:00000002"]
    # The evicted block ending does not free node2's slot.
    stuck.set()
    await crashed
    assert [h["holder"] for h in (await governor.view("jobs")).holders] == ["node2:m:w:00000002"]
    assert await governor.evict("jobs", "node2:m:w:00000002")
    assert (await governor.view("jobs")).holders == []
    with pytest.raises(UnknownGovernor):
        await governor.evict("other", "x")
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter


async def test_bad_names_and_capacities(clock: FakeClock) -> None:
    governor = LocalGovernor(clock)
    with pytest.raises(GovernorError, match=r"invalid governor name 'a\.b'"):
        await governor.add("a.b", 1)
    with pytest.raises(GovernorError, match=r"invalid governor name ''"):
        async with governor.acquire("", 1, holder="x"):
            pass
    with pytest.raises(GovernorError, match="capacity must be at least 1"):
        await governor.add("jobs", 0)
    assert await governor.names() == []


async def test_capacities_survive_a_restart_with_a_file(clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "governors.json"
    governor = LocalGovernor(clock, path=path)
    await governor.add("jobs", 3)
    await governor.add("backups", 2)
    assert json.loads(path.read_text()) == {"backups": 2, "jobs": 3}
    again = LocalGovernor(clock, path=path)
    assert await again.names() == ["backups", "jobs"]
    assert (await again.view("jobs")).capacity == 3
    path.write_text("not json")
    assert await LocalGovernor(clock, path=path).names() == []


# -- in a running agent ----------------------------------------------------------------------

MACHINE = """\
name: {name}
version: 1.0.0
initial_state: busy
transitions:
  - name: failed
    from: [busy]
    destination: broken
watchers:
  - name: job
    type: exec
    state_match: [busy]
    fail_transition: failed
    interval: 500ms
    properties:
      command: ./exclusive.sh
      governor: nightly
      governor_timeout: 20s
"""

EXCLUSIVE = """\
#!/bin/sh
mkdir {shared}/lock 2>/dev/null || echo overlap >> {shared}/overlaps.log
echo "start $MACHINE_NAME" >> {shared}/order.log
sleep 0.1
echo "end $MACHINE_NAME" >> {shared}/order.log
rmdir {shared}/lock 2>/dev/null
exit 0
"""


def governor_routes(running: RunningAgent) -> None:
    """Make sure the running agent serves the governor routes (a test-only registration until
    the API includes them)."""
    app = running.agent._http_server.config.app
    if not any(getattr(route, "path", None) == "/api/v1/governors" for route in app.routes):
        app.include_router(router(running.agent, lambda: None))


def write_machines(tmp_path: Path, names: list[str]) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in names:
        directory = tmp_path / "store" / name
        directory.mkdir(parents=True)
        (directory / "machine.yaml").write_text(MACHINE.format(name=name))
        script = directory / "exclusive.sh"
        script.write_text(EXCLUSIVE.format(shared=shared))
        script.chmod(0o755)
    return shared


async def test_two_machines_of_an_agent_never_overlap_in_a_governor_of_one(
    tmp_path: Path, agent_factory: Callable[..., Any]
) -> None:
    shared = write_machines(tmp_path, ["first", "second"])
    order = shared / "order.log"

    def lines() -> list[str]:
        return order.read_text().splitlines() if order.exists() else []

    async with agent_factory() as running:
        governor = running.agent.node.service("governor")
        assert isinstance(governor, LocalGovernor)
        await running.wait(
            lambda: all(lines().count(f"end {name}") >= 4 for name in ("first", "second")),
            timeout=20,
            what="four runs of each machine",
        )
        info = await governor.view("nightly")
    assert not (shared / "overlaps.log").exists()
    log = lines()
    complete = log[: len(log) - len(log) % 2]
    for i in range(0, len(complete), 2):
        assert complete[i + 1] == "end " + complete[i].removeprefix("start ")
    assert info.capacity == 1


async def test_the_http_routes(tmp_path: Path, agent_factory: Callable[..., Any]) -> None:
    async with agent_factory() as running:
        governor_routes(running)
        http = running.http
        response = await http.get("/api/v1/governors")
        assert response.status_code == 200
        assert response.json() == {"backend": "local", "governors": []}
        response = await http.get("/api/v1/governors/nightly")
        assert (response.status_code, response.json()) == (
            404,
            {"error": "unknown governor nightly"},
        )
        response = await http.put("/api/v1/governors/nightly", json={"capacity": 2, "lease": "1m"})
        assert response.status_code == 200
        assert response.json() == {
            "name": "nightly",
            "backend": "local",
            "capacity": 2,
            "lease": 0.0,
            "holders": [],
        }
        response = await http.put("/api/v1/governors/nightly", json={"capacity": 0})
        assert response.status_code == 422
        response = await http.put("/api/v1/governors/nightly", json={"capacity": 1, "lease": "x"})
        assert response.status_code == 422
        assert "lease" in response.json()["error"]
        response = await http.put("/api/v1/governors/bad.name", json={"capacity": 1})
        assert response.status_code == 422
        governor = running.agent.node.service("governor")
        async with governor.acquire("nightly", 0, holder="node9:m:w:0000abcd"):
            body = (await http.get("/api/v1/governors/nightly")).json()
            [holder] = body["holders"]
            assert holder["holder"] == "node9:m:w:0000abcd"
            assert holder["sequence"] == 1
            listed = (await http.get("/api/v1/governors")).json()["governors"]
            assert [(g["name"], len(g["holders"])) for g in listed] == [("nightly", 1)]
            response = await http.delete("/api/v1/governors/nightly/holders/node8")
            assert (response.status_code, response.json()) == (
                404,
                {"error": "node8 holds no slot in the nightly Governor"},
            )
            response = await http.delete("/api/v1/governors/nightly/holders/node9")
            assert response.status_code == 200
            assert response.json() == {"governor": "nightly", "holder": "node9", "evicted": True}
            assert (await http.get("/api/v1/governors/nightly")).json()["holders"] == []
        response = await http.delete("/api/v1/governors/other/holders/node9")
        assert (response.status_code, response.json()) == (404, {"error": "unknown governor other"})
