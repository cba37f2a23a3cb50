"""The machine runtime: one manifest brought to life.

A :class:`Machine` owns its FSM, rate limiter, data store and watchers. ``run()`` is a task that
lives as long as the machine: it sleeps the start splay, then runs every watcher as a child task
and stops them all when cancelled. Watchers, the API and subscriptions change state through one
door, :meth:`Machine.transition`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import uuid
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from machinery.core.clock import Clock
from machinery.core.datastore import DATA_FILE_NAME, DataStore
from machinery.core.facts import Facts
from machinery.core.fsm import FSM, FireResult, Outcome
from machinery.core.inotify import FileMonitor
from machinery.core.node import Node
from machinery.core.notifications import (
    MachineEvent,
    TransitionNotification,
    WatcherStateNotification,
)
from machinery.core.process import CommandRunner
from machinery.core.ratelimit import RateLimiter
from machinery.lang.gjson import lookup as gjson_lookup
from machinery.lang.template import Template
from machinery.spec.models import WatcherProperties, WatcherSpec
from machinery.spec.validate import Manifest

__all__ = [
    "Machine",
    "MachineHost",
    "MachineStatus",
    "WatcherFactory",
    "WatcherRuntime",
    "WatcherStatus",
]

log = logging.getLogger("machinery.machine")

_WATCHER_RESTART_DELAY = 5.0
DURATION_SAMPLES = 50


class MachineStatus(enum.StrEnum):
    LOADED = "loaded"
    STARTING = "starting"  # sleeping its start splay
    RUNNING = "running"
    FAILED = "failed"  # its watchers could not be created
    STOPPED = "stopped"


@dataclass(slots=True)
class WatcherStatus:
    """What the API and dashboard show about a watcher; kept up to date by the watcher."""

    outcome: str = "unknown"
    last_run: float | None = None  # wall time of the last run or check
    last_duration: float | None = None  # seconds
    next_run: float | None = None  # monotonic deadline of the next scheduled run
    runs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    # Recent (wall time, seconds) of timed runs, flattened, for the dashboard's charts; created on
    # the first timed run and kept small: thousands of watchers each keep one.
    durations: array[float] | None = None

    def record(self, outcome: str, *, wall: float, duration: float | None = None) -> None:
        self.outcome = outcome
        self.last_run = wall
        self.last_duration = duration
        self.runs += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if duration is not None:
            if self.durations is None:
                self.durations = array("d")
            self.durations.extend((wall, duration))
            if len(self.durations) > 2 * DURATION_SAMPLES:
                del self.durations[:2]

    def recent_durations(self) -> list[tuple[float, float]]:
        """``(wall time, seconds)`` of the last timed runs, oldest first."""
        samples = self.durations or array("d")
        return [(samples[i], samples[i + 1]) for i in range(0, len(samples), 2)]


class WatcherRuntime(Protocol):
    """A running watcher, as the machine sees it (see :mod:`machinery.watchers.base`)."""

    spec: WatcherSpec
    status: WatcherStatus

    @property
    def name(self) -> str: ...

    @property
    def type_name(self) -> str: ...

    async def run(self) -> None: ...

    def notify_state_change(self) -> None: ...

    def current_state(self) -> WatcherStateNotification: ...

    def close(self) -> None: ...


WatcherFactory = Callable[["Machine", WatcherSpec, WatcherProperties], WatcherRuntime]


class MachineHost(Protocol):
    """Where a machine lives: other machines' states and cross-machine subscriptions."""

    def lookup_state(self, machine_name: str) -> str | None: ...

    def transitioned(self, machine: Machine, notification: TransitionNotification) -> None: ...


class Machine:
    """A running machine. Create it from a checked :class:`Manifest`."""

    def __init__(
        self,
        manifest: Manifest,
        node: Node,
        *,
        watcher_factory: WatcherFactory,
        data: DataStore | None = None,
        initial_state: str | None = None,
    ) -> None:
        self.manifest = manifest
        self.spec = manifest.spec
        self.node = node
        self.directory: Path = manifest.directory
        self.data = data if data is not None else DataStore(self.directory / DATA_FILE_NAME)
        self.instance_id = str(uuid.uuid4())
        self.fsm = FSM(
            self.spec.initial_state,
            ((t.name, t.from_, t.destination) for t in self.spec.transitions),
        )
        if initial_state is not None:
            self.fsm.force_state(initial_state)
        self.rate_limiter = RateLimiter(node.clock, enabled=node.rate_limit, rng=node.random)
        self.status = MachineStatus.LOADED
        self.start_time: float | None = None
        self.state_entered: float = node.clock.now()
        self.transitions_total = 0
        self._lock = asyncio.Lock()
        self._watcher_factory = watcher_factory
        self.watchers: list[WatcherRuntime] = []
        self.start_error: str | None = None
        # Templates fall back to the standard functions themselves: only lookup is per machine.
        self._functions: dict[str, Callable[..., object]] = {"lookup": self._lookup}
        if self.data.load_warning:
            self.log_warning("machine", self.data.load_warning)

    # What watchers use most, named for convenience.

    @property
    def clock(self) -> Clock:
        return self.node.clock

    @property
    def identity(self) -> str:
        return self.node.identity or "unknown"

    @property
    def facts(self) -> Facts:
        return self.node.facts

    @property
    def runner(self) -> CommandRunner:
        return self.node.runner

    @property
    def random(self) -> random.Random:
        return self.node.random

    @property
    def host(self) -> MachineHost | None:
        return self.node.host

    @property
    def file_monitor(self) -> FileMonitor | None:
        return self.node.file_monitor

    # -- identity ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def state(self) -> str:
        return self.fsm.state

    def available_transitions(self) -> list[str]:
        return self.fsm.available()

    def __repr__(self) -> str:
        return f"<Machine {self.name} {self.version} state={self.state}>"

    # -- logging -------------------------------------------------------------------------

    def log_info(self, component: str, message: str) -> None:
        log.info("%s#%s: %s", self.name, component, message)

    def log_warning(self, component: str, message: str) -> None:
        log.warning("%s#%s: %s", self.name, component, message)

    def log_error(self, component: str, message: str) -> None:
        log.error("%s#%s: %s", self.name, component, message)

    def log_debug(self, component: str, message: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s#%s: %s", self.name, component, message)

    # -- lifecycle -----------------------------------------------------------------------

    def build_watchers(self) -> None:
        """Create every watcher; if one fails none runs (as in Choria), and the error is kept."""
        watchers: list[WatcherRuntime] = []
        try:
            for spec, properties in zip(self.spec.watchers, self.manifest.properties, strict=True):
                watchers.append(self._watcher_factory(self, spec, properties))
        except Exception as exc:
            for watcher in watchers:
                watcher.close()
            self.start_error = f"could not create watchers: {exc}"
            self.status = MachineStatus.FAILED
            self.log_error("manager", f"Could not start manager: {exc}")
            raise
        self.watchers = watchers

    async def run(self) -> None:
        """Run until cancelled: splay, start watchers, supervise them; stop them on exit."""
        self.status = MachineStatus.STARTING
        try:
            if self.spec.splay_start > 0:
                delay = self.random.randrange(self.spec.splay_start)
                self.log_info("machine", f"Sleeping {delay}s before starting Autonomous Agent")
                await self.clock.sleep(delay)
            if not self.watchers:
                try:
                    self.build_watchers()
                except Exception:
                    return
            self.log_info(
                "machine",
                f"Starting Choria Machine {self.name} version {self.version} from "
                f"{self.directory} in state {self.state}",
            )
            self.start_time = self.clock.now()
            self.status = MachineStatus.RUNNING
            await self._run_watchers()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug in the runtime must not take other machines down with this one.
            log.exception("%s#machine: failed", self.name)
            self.status = MachineStatus.FAILED
        finally:
            for watcher in self.watchers:
                watcher.close()
            if self.status is not MachineStatus.FAILED:
                self.status = MachineStatus.STOPPED
            self.start_time = None

    async def _run_watchers(self) -> None:
        async with asyncio.TaskGroup() as group:
            for watcher in self.watchers:
                group.create_task(self._supervise(watcher), name=f"{self.name}#{watcher.name}")
                if watcher.spec.announce_interval:
                    group.create_task(
                        self._announce(watcher, watcher.spec.announce_interval),
                        name=f"{self.name}#{watcher.name}:announce",
                    )

    async def _supervise(self, watcher: WatcherRuntime) -> None:
        # A watcher bug must not take the machine down: log it and start the watcher again.
        while True:
            try:
                await watcher.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                watcher.status.last_error = f"{type(exc).__name__}: {exc}"
                log.exception(
                    "%s#%s: watcher failed, restarting in %ss",
                    self.name,
                    watcher.name,
                    _WATCHER_RESTART_DELAY,
                )
                await self.clock.sleep(_WATCHER_RESTART_DELAY)

    async def _announce(self, watcher: WatcherRuntime, interval: float) -> None:
        while True:
            await self.clock.sleep(interval)
            self.publish(watcher.current_state())

    # -- state changes -------------------------------------------------------------------

    async def transition(self, event: str) -> FireResult:
        """Fire ``event``: the single entry point for every state change (spec 1.2)."""
        async with self._lock:
            if not event:
                return FireResult(Outcome.EMPTY, event, self.state, self.state)
            if not self.fsm.can(event):
                self.log_warning("machine", f"Could not fire '{event}' event while in {self.state}")
                return FireResult(Outcome.INVALID, event, self.state, self.state)
            delay = self.rate_limiter.next_delay()
            if delay > 0:
                await self.clock.sleep(delay)
            result = self.fsm.fire(event)
            if result.changed:
                self._entered(result)
            return result

    def _entered(self, result: FireResult) -> None:
        self.transitions_total += 1
        self.state_entered = self.clock.now()
        notification = TransitionNotification(
            identity=self.identity,
            id=self.instance_id,
            version=self.version,
            timestamp=int(self.state_entered),
            machine=self.name,
            transition=result.event,
            from_state=result.source,
            to_state=result.destination,
        )
        host = self.node.host
        if host is not None:
            host.transitioned(self, notification)
        for watcher in self.watchers:
            watcher.notify_state_change()
        self._emit(notification)

    def publish(self, state: WatcherStateNotification) -> None:
        """Publish a watcher's state to every notifier."""
        self._emit(state)

    def _emit(self, event: MachineEvent) -> None:
        for notifier in self.node.notifiers:
            try:
                notifier.notify(event)
            except Exception:
                log.exception("%s#machine: notifier %r failed", self.name, notifier)

    # -- what watchers use ---------------------------------------------------------------

    def should_watch(self, spec: WatcherSpec) -> bool:
        """Choria's base activation rule (spec 1.8): state_match AND foreign states."""
        if spec.state_match and self.state not in spec.state_match:
            return False
        host = self.node.host
        for required in spec.foreign_state_required:
            if host is None or host.lookup_state(required.machine_name) != required.state:
                return False
        return True

    def header(self, watcher_type: str, watcher_name: str) -> dict[str, Any]:
        """The common header of a watcher state payload (spec 3.0)."""
        return {
            "protocol": f"io.choria.machine.watcher.{watcher_type}.v1.state",
            "identity": self.identity,
            "id": self.instance_id,
            "version": self.version,
            "timestamp": int(self.clock.now()),
            "type": watcher_type,
            "machine": self.name,
            "name": watcher_name,
        }

    def template_dot(self) -> dict[str, Any]:
        """What ``.`` is in a property template."""
        return {"facts": self.facts.get(), "data": self.data.snapshot(), "identity": self.identity}

    @property
    def template_functions(self) -> Mapping[str, Callable[..., object]]:
        return self._functions

    def render(self, template: Template) -> str:
        """Render a property template against this machine's facts and data."""
        if template.is_static:
            return template.source
        return template.render(self.template_dot(), self._functions)

    def _lookup(self, path: str, default: object = None) -> object:
        document = {"facts": self.facts.get(), "data": self.data.snapshot()}
        found, value = gjson_lookup(document, str(path))
        if not found:
            self.log_debug("template", f"Query did not match any data, returning default: {path}")
            return default
        return value

    # -- status --------------------------------------------------------------------------

    def status_dict(self) -> dict[str, Any]:
        """Choria's MachineState object (spec 7.1)."""
        nagios = [w for w in self.watchers if w.type_name == "nagios"]
        result: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "path": str(self.directory),
            "id": self.instance_id,
            "start_time": int(self.start_time) if self.start_time else -62135596800,
            "available_transitions": self.available_transitions(),
            "scout": bool(nagios),
        }
        if nagios:
            result["current_state"] = nagios[-1].current_state().payload
        return result
