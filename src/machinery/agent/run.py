"""``machinery run``: machines from some directories, in the foreground, until interrupted.

The counterpart of ``choria machine run``: no broker, events on the console and optionally in a
JSON-lines file. SIGINT and SIGTERM stop every machine (watchers stopped, commands killed as a
group) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machinery.agent.host import MachineGroup
from machinery.core.clock import Clock, SystemClock
from machinery.core.datastore import DataStoreError
from machinery.core.facts import Facts, FactsError
from machinery.core.inotify import FileMonitor
from machinery.core.loop import handle_signals
from machinery.core.machine import Machine
from machinery.core.node import Node
from machinery.core.notifications import Notifier
from machinery.core.process import ProcessRunner
from machinery.events.sinks import ConsoleNotifier, JsonLinesNotifier
from machinery.spec.validate import Manifest
from machinery.watchers.registry import WatcherRegistry, check_manifest, default_registry

__all__ = ["RunOptions", "default_identity", "run_machines"]

log = logging.getLogger("machinery.run")


def default_identity() -> str:
    """The node identity when none is configured: the host's fully qualified name."""
    return socket.getfqdn() or socket.gethostname() or "unknown"


@dataclass
class RunOptions:
    directories: Sequence[Path]
    facts: Path | None = None
    data: Path | None = None
    identity: str | None = None
    events: str | None = None
    rate_limit: bool = True
    registry: WatcherRegistry | None = None
    clock: Clock = field(default_factory=SystemClock)


def _load_all(options: RunOptions, registry: WatcherRegistry) -> list[Manifest] | None:
    manifests = []
    failed = False
    for directory in options.directories:
        manifest, diagnostics = check_manifest(directory, registry)
        for diagnostic in diagnostics:
            print(diagnostic, file=sys.stderr)
        if manifest is None:
            failed = True
        else:
            manifests.append(manifest)
    return None if failed else manifests


def _read_data(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read data file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"data file {path} must hold a JSON object")
    return data


async def run_machines(options: RunOptions) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code."""
    registry = options.registry or default_registry()
    manifests = _load_all(options, registry)
    if manifests is None:
        return 1
    try:
        facts = Facts.from_file(options.facts) if options.facts else Facts()
        initial_data = _read_data(options.data) if options.data else {}
    except (FactsError, ValueError) as exc:
        print(f"machinery: {exc}", file=sys.stderr)
        return 1
    notifiers: list[Notifier] = [ConsoleNotifier()]
    jsonl: JsonLinesNotifier | None = None
    if options.events:
        try:
            jsonl = JsonLinesNotifier(options.events)
        except OSError as exc:
            print(f"machinery: cannot open events file {options.events}: {exc}", file=sys.stderr)
            return 1
        notifiers.append(jsonl)
    group = MachineGroup()
    node = Node(
        identity=options.identity or default_identity(),
        clock=options.clock,
        facts=facts,
        runner=ProcessRunner(),
        notifiers=notifiers,
        host=group,
        file_monitor=FileMonitor(),
        rate_limit=options.rate_limit,
    )
    machines = []
    for manifest in manifests:
        machine = Machine(manifest, node, watcher_factory=registry.create)
        try:
            machine.data.update(initial_data)
        except DataStoreError as exc:
            machine.log_error("machine", str(exc))
        group.add(machine)
        machines.append(machine)

    stopping = asyncio.Event()

    def request_stop(signum: int) -> None:
        if not stopping.is_set():
            log.info("received %s, stopping", signal.Signals(signum).name)
            stopping.set()

    try:
        with handle_signals(request_stop):
            async with asyncio.TaskGroup() as tasks:
                running = [
                    tasks.create_task(machine.run(), name=f"machine {machine.name}")
                    for machine in machines
                ]
                await stopping.wait()
                for task in running:
                    task.cancel()
    finally:
        await group.aclose()
        if node.file_monitor is not None:
            node.file_monitor.close()
        if jsonl is not None:
            jsonl.close()
    return 0
