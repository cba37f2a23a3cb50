"""Running a machine in a simulated world: the real watcher logic, no real side effects.

A :class:`Simulation` loads a machine into a private copy of its directory, on a
:class:`~machinery.core.clock.FakeClock`, with a scripted command runner (commands are recorded
with their final arguments, never executed; their exit codes and output come from the script),
an in-memory key-value store and a pretend set of neighbouring machines. ``machinery test`` and
``machinery simulate`` both drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machinery.core.clock import FakeClock
from machinery.core.datastore import DATA_FILE_NAME, DataStore
from machinery.core.facts import Facts
from machinery.core.kv import BucketNotFound, KVEntry, KVOperation, KVRevisionMismatch
from machinery.core.machine import Machine
from machinery.core.node import Node
from machinery.core.notifications import (
    MachineEvent,
    TransitionNotification,
    WatcherStateNotification,
)
from machinery.core.process import CommandRequest, CommandResult
from machinery.core.wakeup import FILE_EVENT
from machinery.spec.validate import MANIFEST_NAME, Manifest
from machinery.watchers.registry import (
    WatcherRegistry,
    check_manifest,
    default_registry,
    load_manifest,
)

__all__ = ["CommandOutcome", "SimulatedCommand", "Simulation", "SimulationError"]

# Watchers that reach outside the node (downloads, the broker, writing other machines) do
# nothing in a simulation.
INERT_TYPES = frozenset({"archive", "gossip", "machines", "plugins"})
_SETTLE_ROUNDS = 200


class SimulationError(Exception):
    """The simulation cannot do what was asked (unknown watcher, bad path...)."""


@dataclass
class CommandOutcome:
    """What a simulated command does: its exit code and output."""

    exit: int = 0
    output: str = ""
    once: bool = False


@dataclass(frozen=True)
class SimulatedCommand:
    """A command a watcher would have run."""

    watcher: str
    argv: tuple[str, ...]
    time: float


class ScriptedRunner:
    """A CommandRunner that records commands and answers from the script."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.outcomes: dict[str, list[CommandOutcome]] = {}
        self.default = CommandOutcome()
        self.commands: list[SimulatedCommand] = []

    def script(self, watcher: str, outcome: CommandOutcome) -> None:
        queue = self.outcomes.setdefault(watcher, [])
        if not outcome.once:
            queue[:] = [o for o in queue if o.once]
            queue.append(outcome)
            return
        # One-off outcomes come before the standing one (kept last), in the order scripted.
        standing = len(queue) if not queue or queue[-1].once else len(queue) - 1
        queue.insert(standing, outcome)

    async def run(self, request: CommandRequest) -> CommandResult:
        watcher = request.env.get("MACHINE_WATCHER_NAME", "")
        self.commands.append(SimulatedCommand(watcher, tuple(request.argv), self.clock.now()))
        queue = self.outcomes.get(watcher) or []
        outcome = queue[0] if queue else self.default
        if outcome.once:
            queue.pop(0)
        await asyncio.sleep(0)
        return CommandResult(outcome.exit, outcome.output.encode(), 0.0)


class MemoryKV:
    """An in-memory KVStore for simulations."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], KVEntry] = {}
        self.sequences: dict[str, int] = {}
        self._watchers: list[tuple[str, str, asyncio.Queue[KVEntry]]] = []

    def _bucket(self, bucket: str) -> None:
        if bucket not in self.sequences:
            self.sequences[bucket] = 0  # simulations create buckets on first use

    async def get(self, bucket: str, key: str) -> KVEntry | None:
        entry = self.entries.get((bucket, key))
        return None if entry is None or entry.deleted else entry

    async def put(self, bucket: str, key: str, value: bytes) -> int:
        return self._store(bucket, key, value, KVOperation.PUT)

    async def create(self, bucket: str, key: str, value: bytes) -> int:
        if await self.get(bucket, key) is not None:
            raise KVRevisionMismatch(f"{key} exists")
        return await self.put(bucket, key, value)

    async def update(self, bucket: str, key: str, value: bytes, last_revision: int) -> int:
        current = self.entries.get((bucket, key))
        if current is None or current.revision != last_revision:
            raise KVRevisionMismatch(f"{key} changed")
        return await self.put(bucket, key, value)

    async def delete(self, bucket: str, key: str) -> None:
        self._store(bucket, key, b"", KVOperation.DELETE)

    async def keys(self, bucket: str) -> list[str]:
        if bucket not in self.sequences:
            raise BucketNotFound(bucket)
        return sorted(k for (b, k), e in self.entries.items() if b == bucket and not e.deleted)

    async def watch(self, bucket: str, key: str = ">") -> AsyncIterator[KVEntry]:
        queue: asyncio.Queue[KVEntry] = asyncio.Queue()
        for (b, k), entry in sorted(self.entries.items()):
            if b == bucket and _matches(key, k):
                queue.put_nowait(entry)
        item = (bucket, key, queue)
        self._watchers.append(item)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(item)

    async def create_bucket(
        self, bucket: str, *, history: int = 1, ttl: float | None = None
    ) -> None:
        self._bucket(bucket)

    async def buckets(self) -> list[str]:
        return sorted(self.sequences)

    def _store(self, bucket: str, key: str, value: bytes, operation: KVOperation) -> int:
        self._bucket(bucket)
        self.sequences[bucket] += 1
        entry = KVEntry(bucket, key, value, self.sequences[bucket], operation)
        self.entries[(bucket, key)] = entry
        for watched, pattern, queue in self._watchers:
            if watched == bucket and _matches(pattern, key):
                queue.put_nowait(entry)
        return entry.revision


def _matches(pattern: str, key: str) -> bool:
    if pattern in (">", ""):
        return True
    wanted, parts = pattern.split("."), key.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return True
        if i >= len(parts) or (token != "*" and token != parts[i]):
            return False
    return len(parts) == len(wanted)


class _Neighbours:
    """The other machines of the simulated node, as far as this one can tell."""

    def __init__(self, simulation: Simulation) -> None:
        self.simulation = simulation
        self.states: dict[str, str] = {}

    def lookup_state(self, machine_name: str) -> str | None:
        return self.states.get(machine_name)

    def transitioned(self, machine: Machine, notification: TransitionNotification) -> None:
        # A machine may subscribe to its own transitions.
        self.simulation.deliver(machine.name, notification.transition)


@dataclass
class Simulation:
    """One machine in a simulated world. Use :meth:`open` (an async context manager)."""

    source: Path
    manifest: Manifest
    workdir: Path
    clock: FakeClock
    runner: ScriptedRunner
    kv: MemoryKV
    node: Node
    machine: Machine
    events: list[MachineEvent] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    neighbours: _Neighbours | None = None
    _pending: set[asyncio.Task[Any]] = field(default_factory=set)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        directory: Path,
        *,
        facts: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        start: str | None = None,
        identity: str = "simulation",
        registry: WatcherRegistry | None = None,
        start_wall: float | None = None,
    ) -> AsyncIterator[Simulation]:
        """Load the machine in ``directory`` into a private copy and start it."""
        registry = registry or default_registry()
        # Check the real manifest first, so problems point at the author's file, not the copy.
        checked, diagnostics = check_manifest(directory, registry)
        if checked is None:
            errors = "; ".join(str(d) for d in diagnostics if d.is_error)
            raise SimulationError(f"the machine does not load: {errors}")
        with tempfile.TemporaryDirectory(prefix="machinery-sim-") as tmp:
            workdir = Path(tmp) / directory.name
            shutil.copytree(
                directory,
                workdir,
                symlinks=True,
                ignore=shutil.ignore_patterns(DATA_FILE_NAME, "*.test.yaml"),
            )
            manifest = load_manifest(workdir, registry)
            if start is not None and start not in manifest.spec.states():
                raise SimulationError(f"start state {start!r} is not a state of {manifest.name}")
            clock = FakeClock() if start_wall is None else FakeClock(start=start_wall)
            runner = ScriptedRunner(clock)
            kv = MemoryKV()
            node = Node(
                identity=identity,
                clock=clock,
                facts=Facts(data=facts or {}),
                runner=runner,
                rate_limit=False,
            )
            store = DataStore(workdir / DATA_FILE_NAME)
            store.update(data or {})
            machine = Machine(
                manifest, node, watcher_factory=registry.create, data=store, initial_state=start
            )
            simulation = cls(directory, manifest, workdir, clock, runner, kv, node, machine)
            simulation.neighbours = _Neighbours(simulation)
            node.host = simulation.neighbours
            node.notifiers.append(simulation)
            node.provide("kv", kv)
            try:
                await simulation._start()
                yield simulation
            finally:
                await simulation._stop()

    # -- lifecycle ----------------------------------------------------------------------------

    async def _start(self) -> None:
        self.machine.build_watchers()
        for watcher in self.machine.watchers:
            if watcher.type_name in INERT_TYPES:
                watcher.run = _idle  # type: ignore[method-assign]
            elif watcher.type_name == "file":
                # Files outside the machine directory (/etc/motd) live in the sandbox too.
                path = self._sandboxed(str(watcher.path))  # type: ignore[attr-defined]
                path.parent.mkdir(parents=True, exist_ok=True)
                watcher.path = path  # type: ignore[attr-defined]
        self.task = asyncio.ensure_future(self.machine.run())
        if self.machine.spec.splay_start:
            await self.clock.advance(self.machine.spec.splay_start)
        await self.settle()

    async def _stop(self) -> None:
        for task in [self.task, *self._pending]:
            if task is not None:
                task.cancel()
        for task in [self.task, *self._pending]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def notify(self, event: MachineEvent) -> None:
        self.events.append(event)

    async def settle(self) -> None:
        """Let the machine finish reacting to whatever just happened."""
        seen = (len(self.events), len(self.runner.commands))
        for _ in range(_SETTLE_ROUNDS):
            await self.clock.settle()
            now = (len(self.events), len(self.runner.commands))
            if now == seen:
                return
            seen = now
        recent = [t.transition for t in self.transitions()[-6:]]
        raise SimulationError(
            f"the machine keeps changing without time passing, a transition loop? "
            f"(last transitions: {', '.join(recent)})"
        )

    # -- what scenarios do --------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.machine.state

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds)
        await self.settle()

    async def fire(self, event: str) -> bool:
        """Fire ``event`` as the API would; True when it was valid in the current state."""
        result = await self.machine.transition(event)
        await self.settle()
        return result.valid

    def script(self, watcher: str, outcome: CommandOutcome) -> None:
        self._watcher(watcher)
        self.runner.script(watcher, outcome)

    async def write_file(
        self, path: str, content: str | None = None, *, remove: bool = False
    ) -> None:
        """Create, change, touch or remove a file in the machine's (private) directory, and
        wake the file watchers that follow it, as inotify would."""
        target = self._path(path)
        if remove:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                target.touch()
                stamp = target.stat().st_mtime_ns + 1_000_000
                os.utime(target, ns=(stamp, stamp))
            else:
                target.write_text(content)
        for watcher in self.machine.watchers:
            if watcher.type_name == "file" and Path(getattr(watcher, "path", "")) == target:
                watcher._wakeup.set(FILE_EVENT)  # type: ignore[attr-defined]
        await self.settle()

    def read_file(self, path: str) -> str | None:
        target = self._path(path)
        return target.read_text() if target.exists() else None

    async def set_data(self, values: dict[str, Any]) -> None:
        self.machine.data.update(values)
        await self.settle()

    async def set_facts(self, facts: dict[str, Any]) -> None:
        self.node.facts = Facts(data=facts)
        await self.settle()

    async def kv_put(self, bucket: str, key: str, value: Any) -> None:
        raw = value if isinstance(value, str) else json.dumps(value)
        await self.kv.put(bucket, key, raw.encode())
        await self.settle()

    async def kv_delete(self, bucket: str, key: str) -> None:
        await self.kv.delete(bucket, key)
        await self.settle()

    async def switch(self, watcher: str, on: bool) -> bool:
        target = self._watcher(watcher)
        if target.type_name != "httpswitch":
            raise SimulationError(
                f"watcher {watcher!r} is a {target.type_name} watcher, not httpswitch"
            )
        result: bool = await target.set_switch(on)
        await self.settle()
        return result

    async def neighbour(self, name: str, state: str, event: str | None = None) -> None:
        """Another machine of the node is in ``state`` (and fired ``event``, for subscriptions)."""
        assert self.neighbours is not None
        self.neighbours.states[name] = state
        if event:
            self.deliver(name, event)
        await self.settle()

    def deliver(self, machine_name: str, event: str) -> None:
        for transition in self.machine.spec.transitions:
            for sub in transition.subscribe:
                if sub.machine_name == machine_name and sub.event == event:
                    task = asyncio.ensure_future(self.machine.transition(transition.name))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)

    # -- reading results -----------------------------------------------------------------------

    def transitions(self) -> list[TransitionNotification]:
        return [e for e in self.events if isinstance(e, TransitionNotification)]

    def watcher_states(self) -> list[WatcherStateNotification]:
        return [e for e in self.events if isinstance(e, WatcherStateNotification)]

    def _watcher(self, name: str) -> Any:
        for watcher in self.machine.watchers:
            if watcher.name == name:
                return watcher
        names = ", ".join(w.name for w in self.machine.watchers)
        raise SimulationError(f"no watcher {name!r} in {self.machine.name} (watchers: {names})")

    def _path(self, path: str) -> Path:
        target = self._sandboxed(path)
        if target.name == MANIFEST_NAME and target.parent == self.workdir.resolve():
            raise SimulationError("the manifest itself cannot be changed in a simulation")
        return target

    def _sandboxed(self, path: str) -> Path:
        """Where ``path`` lives in the simulation: inside the private machine directory, with
        absolute paths under its ``.root/``; never outside it."""
        root = self.workdir.resolve()
        if os.path.isabs(path) and Path(path).resolve().is_relative_to(root):
            target = Path(path).resolve()
        elif os.path.isabs(path):
            target = (root / ".root" / os.path.relpath(path, "/")).resolve()
        else:
            target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise SimulationError(f"{path!r} is outside the machine's directory")
        return target


async def _idle() -> None:
    await asyncio.Event().wait()
