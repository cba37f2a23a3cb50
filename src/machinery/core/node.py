"""What the machines of one process share: identity, time, facts, and node-wide services.

A :class:`Node` is built once by ``machinery run`` or the agent and handed to every machine. Tests
and the simulator build their own, with a fake clock and scripted command runner. Watcher types
that need a node-wide service (the nagios textfile exporter, the HTTP switch registry, a governor)
get it through :meth:`Node.shared`, so the core does not need to know about them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from machinery.core.clock import Clock, SystemClock
from machinery.core.facts import Facts
from machinery.core.process import CommandRunner, ProcessRunner

if TYPE_CHECKING:
    from machinery.core.inotify import FileMonitor
    from machinery.core.machine import MachineHost
    from machinery.core.notifications import Notifier

__all__ = ["Node"]

T = TypeVar("T")


@dataclass
class Node:
    """The environment machines run in (one per process)."""

    identity: str = "unknown"
    clock: Clock = field(default_factory=SystemClock)
    facts: Facts = field(default_factory=Facts)
    runner: CommandRunner = field(default_factory=ProcessRunner)
    notifiers: list[Notifier] = field(default_factory=list)
    host: MachineHost | None = None
    file_monitor: FileMonitor | None = None
    rate_limit: bool = True
    # Spread each interval watcher's first tick over one more interval (the agent turns this on):
    # thousands of machines started together would otherwise tick in lockstep.
    stagger_ticks: bool = False
    # node_exporter textfile directory for the nagios and metric watchers (Choria's
    # plugin.choria.prometheus_textfile_directory) and the Scout overrides file.
    textfile_directory: Path | None = None
    overrides_file: Path | None = None
    random: random.Random = field(default_factory=random.Random)
    _services: dict[str, Any] = field(default_factory=dict, repr=False)

    def shared(self, key: str, factory: Callable[[], T]) -> T:
        """The node-wide service called ``key``, created by ``factory`` on first use."""
        if key not in self._services:
            self._services[key] = factory()
        service: T = self._services[key]
        return service

    def provide(self, key: str, service: object) -> None:
        """Install a node-wide service (the agent provides HTTP, KV and governors this way)."""
        self._services[key] = service

    def service(self, key: str) -> Any | None:
        """The service called ``key`` if one was provided or created."""
        return self._services.get(key)
