"""Shared test helpers: machines on a fake clock, an event recorder, bounded polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from machinery.agent.host import MachineGroup
from machinery.core.clock import Clock, FakeClock
from machinery.core.facts import Facts
from machinery.core.machine import Machine
from machinery.core.node import Node
from machinery.core.notifications import (
    MachineEvent,
    TransitionNotification,
    WatcherStateNotification,
)
from machinery.watchers.registry import default_registry, load_manifest

# Choria's public example manifests and fixtures (see its README), used as test data.
CORPUS = Path(__file__).resolve().parent / "choria_corpus"


class Recorder:
    """A notifier that keeps every event."""

    def __init__(self) -> None:
        self.events: list[MachineEvent] = []

    def notify(self, event: MachineEvent) -> None:
        self.events.append(event)

    def transitions(self) -> list[tuple[str, str, str]]:
        return [
            (e.transition, e.from_state, e.to_state)
            for e in self.events
            if isinstance(e, TransitionNotification)
        ]

    def states(self, watcher: str | None = None) -> list[WatcherStateNotification]:
        return [
            e
            for e in self.events
            if isinstance(e, WatcherStateNotification)
            and (watcher is None or e.payload["name"] == watcher)
        ]

    def outcomes(self, watcher: str) -> list[str]:
        return [str(s.payload.get("previous_outcome")) for s in self.states(watcher)]


# Set by ``python -m bench.test_timings``: every bounded time is appended here, so the bounds can
# be compared with what the machine really shows (bench/test-timings.md).
TIMINGS_ENV = "MACHINERY_TEST_TIMINGS"


def assert_took(seconds: float, bound: float, what: str) -> None:
    """Assert a wall-clock time measured in a test against an absolute bound.

    A test box is loaded and shared, so an absolute bound must be at least 10x what the machine
    normally shows: the figures and the ratios are in bench/test-timings.md (a bound is a
    regression and hang check, not the performance target; the targets are in bench/results.md).
    """
    record = os.environ.get(TIMINGS_ENV)
    if record:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        line = json.dumps({"what": what, "seconds": seconds, "bound": bound, "test": test})
        with open(record, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    assert seconds < bound, f"{what}: {seconds:.3f}s, bound {bound}s (see bench/test-timings.md)"


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` (real time) until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.005)


def write_machine(directory: Path, manifest: str, files: dict[str, str] | None = None) -> Path:
    """Create a machine directory with ``machine.yaml`` and extra (executable *.sh) files."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "machine.yaml").write_text(textwrap.dedent(manifest))
    for name, content in (files or {}).items():
        path = directory / name
        path.write_text(textwrap.dedent(content))
        if name.endswith(".sh"):
            path.chmod(0o755)
    return directory


def make_node(
    *,
    clock: Clock | None = None,
    facts: dict[str, Any] | None = None,
    recorder: Recorder | None = None,
    rate_limit: bool = False,
    identity: str = "node1.example.net",
    seed: int = 7,
    **kwargs: Any,
) -> Node:
    """A node on a fake clock (unless given another) with a fixed random seed."""
    return Node(
        identity=identity,
        clock=clock or FakeClock(),
        facts=Facts(data=facts or {}),
        notifiers=[recorder] if recorder is not None else [],
        rate_limit=rate_limit,
        random=random.Random(seed),
        **kwargs,
    )


def make_machine(
    directory: Path,
    *,
    node: Node | None = None,
    initial_state: str | None = None,
    **node_options: Any,
) -> Machine:
    """Load the machine in ``directory`` onto ``node`` (or a fresh test node)."""
    manifest = load_manifest(directory)
    return Machine(
        manifest,
        node or make_node(**node_options),
        watcher_factory=default_registry().create,
        initial_state=initial_state,
    )


@contextlib.asynccontextmanager
async def running(
    *machines: Machine, group: MachineGroup | None = None
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run machines as tasks for the duration of the block, then stop them."""
    if group is None and len(machines) > 1:
        group = MachineGroup()
    if group is not None:
        for machine in machines:
            machine.node.host = group
            if machine not in list(group):
                group.add(machine)
    tasks = [asyncio.ensure_future(m.run()) for m in machines]
    try:
        await asyncio.sleep(0)
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if group is not None:
            await group.aclose()


def names(events: Iterable[tuple[str, str, str]]) -> list[str]:
    return [e[0] for e in events]
