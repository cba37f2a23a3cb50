"""An in-process agent on real files, inotify and a loopback HTTP port."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from machinery.agent.config import load_settings
from machinery.agent.daemon import Agent

ROOT = Path(__file__).resolve().parents[2]


class RunningAgent:
    def __init__(self, agent: Agent, task: asyncio.Task[int], store: Path) -> None:
        self.agent = agent
        self.task = task
        self.store = store
        self.http = httpx.AsyncClient(base_url=agent.http_url or "", timeout=10)

    def entry_status(self, name: str) -> str | None:
        entry = self.agent.store.find(name) if self.agent.store else None
        return None if entry is None else entry.status.value

    async def wait(
        self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = ""
    ) -> float:
        """Poll until true; returns how long it took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not predicate():
            if loop.time() - started > timeout:
                raise AssertionError(f"timed out waiting for {what or predicate}")
            await asyncio.sleep(0.005)
        return loop.time() - started


@pytest.fixture
def agent_factory(tmp_path: Path) -> Callable[..., Any]:
    started: list[RunningAgent] = []

    @contextlib.asynccontextmanager
    async def start(examples: tuple[str, ...] = (), **settings: Any) -> AsyncIterator[RunningAgent]:
        store = tmp_path / "store"
        store.mkdir(exist_ok=True)
        for name in examples:
            shutil.copytree(
                ROOT / "examples" / name,
                store / name,
                ignore=shutil.ignore_patterns("world", "machine_data.json"),
            )
        flags = {
            "store": str(store),
            "state_dir": str(tmp_path / "state"),
            "http.listen": "127.0.0.1:0",
            "identity": "agent.example.net",
            "rate_limit": False,
            **settings,
        }
        agent = Agent(load_settings(flags=flags, environ={}), install_signals=False)
        task = asyncio.ensure_future(agent.run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while agent.http_url is None or agent.store is None or not agent.store.ready.is_set():
            if task.done():
                task.result()
            assert loop.time() < deadline, "agent did not start"
            await asyncio.sleep(0.01)
        running = RunningAgent(agent, task, store)
        started.append(running)
        try:
            yield running
        finally:
            await running.http.aclose()
            agent.stop()
            assert await asyncio.wait_for(task, 10) == 0

    return start
