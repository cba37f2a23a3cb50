"""The watcher interface: one class per type, the same small surface for all.

A watcher type is a subclass of :class:`Watcher` that declares

- ``type_name`` and ``properties_model`` (its ``properties`` as a pydantic model),
- its interval rules (``default_interval``, ``min_interval``, ``uses_interval``),
- ``check_definition()`` for load-time checks beyond the model,
- ``run()`` (its life: react to ticks and state changes, report outcomes),
- ``state_fields()`` and ``describe_payload()`` (its published state and one-line text).

:class:`PolledWatcher` implements ``run()`` for the common case of "check on every interval tick
and on every state change, never two checks at once".
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from machinery.core.clock import Ticker
from machinery.core.machine import WatcherStatus
from machinery.core.notifications import WatcherStateNotification
from machinery.core.wakeup import STATE_CHANGED, TICK, Wakeup
from machinery.lang.gojson import GoJSONError
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec

if TYPE_CHECKING:
    from machinery.core.machine import Machine

__all__ = ["PolledWatcher", "Watcher"]

P = TypeVar("P", bound=WatcherProperties)

log = logging.getLogger("machinery.watcher")


class Watcher(ABC, Generic[P]):
    """Base class of every watcher type."""

    type_name: ClassVar[str]
    properties_model: ClassVar[type[WatcherProperties]]
    default_interval: ClassVar[float | None] = None
    min_interval: ClassVar[float] = 0.5
    uses_interval: ClassVar[bool] = True

    def __init__(self, machine: Machine, spec: WatcherSpec, properties: P) -> None:
        self.machine = machine
        self.spec = spec
        self.properties = properties
        self.status = WatcherStatus()
        self._wakeup = Wakeup()

    # -- the static side (see machinery.spec.kinds.WatcherKind) ---------------------------

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        """Extra load-time checks for this type; the default has none."""
        return ()

    # -- identity ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def interval(self) -> float:
        """The effective watcher-level interval in seconds (0: none)."""
        if self.spec.interval is not None:
            return self.spec.interval
        return self.default_interval or 0.0

    # -- the running side ----------------------------------------------------------------

    @abstractmethod
    async def run(self) -> None:
        """Live until cancelled."""

    def notify_state_change(self) -> None:
        """The machine changed state (never called for self-transitions)."""
        self._wakeup.set(STATE_CHANGED)

    def close(self) -> None:
        """The machine is going away: release anything held outside ``run()``."""

    @abstractmethod
    def state_fields(self) -> dict[str, Any]:
        """The type's own fields of the published state, after the common header."""

    @classmethod
    @abstractmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        """Choria's one-line text for a state payload of this type (``String()`` in Go); also
        used for events read back from files and NATS."""

    def current_state(self) -> WatcherStateNotification:
        payload = self.machine.header(self.type_name, self.name)
        payload.update(self.state_fields())
        return WatcherStateNotification(self.type_name, payload, self.describe_payload(payload))

    # -- helpers for subclasses ----------------------------------------------------------

    def should_watch(self) -> bool:
        return self.machine.should_watch(self.spec)

    def publish(self) -> None:
        state = self.current_state()
        try:
            state.encoded_data()  # encoded once here, reused by every sink
        except GoJSONError as exc:
            # Choria's json.Marshal fails on the same values (NaN, infinities) and the event is
            # not published; say why once here rather than in every sink.
            self.log_error(f"Could not publish the watcher state: {exc}")
            return
        self.machine.publish(state)

    async def fire(self, event: str) -> None:
        if event:
            await self.machine.transition(event)

    async def fire_success(self) -> None:
        await self.fire(self.spec.success_transition)

    async def fire_fail(self) -> None:
        await self.fire(self.spec.fail_transition)

    def record(self, outcome: str, duration: float | None = None) -> None:
        """Note an outcome (and how long the run took) for the API, dashboard and metrics."""
        self.status.record(outcome, wall=self.machine.clock.now(), duration=duration)
        observer = self.machine.node.service("watcher-observer")
        if observer is not None:
            observer.watcher_run(self.machine.name, self.name, self.type_name, outcome, duration)

    def log_info(self, message: str) -> None:
        self.machine.log_info(self.name, message)

    def log_warning(self, message: str) -> None:
        self.machine.log_warning(self.name, message)

    def log_error(self, message: str) -> None:
        self.machine.log_error(self.name, message)

    def log_debug(self, message: str) -> None:
        self.machine.log_debug(self.name, message)


class PolledWatcher(Watcher[P]):
    """A watcher that checks on every interval tick and every state change.

    Checks never overlap; signals arriving during a check coalesce into one check after it,
    like Choria's one-slot channels.
    """

    def first_delay(self) -> float | None:
        """Delay before the first tick (None: one interval)."""
        return None

    async def on_start(self) -> None:
        """Called once when the watcher starts, before waiting for the first signal."""

    @abstractmethod
    async def check(self, reasons: int) -> None:
        """One check; ``reasons`` are the :mod:`machinery.core.wakeup` flags that woke it."""

    async def run(self) -> None:
        ticker = None
        if self.interval > 0:
            first = self.first_delay()
            if first is None and self.machine.node.stagger_ticks:
                first = self.interval * (1 + self.machine.random.random())
            ticker = Ticker(
                self.machine.clock,
                self.interval,
                lambda: self._wakeup.set(TICK),
                first_delay=first,
            )
        try:
            await self.on_start()
            while True:
                if ticker is not None:
                    self.status.next_run = ticker.next_deadline
                reasons = await self._wakeup.wait()
                await self.check(reasons)
        finally:
            if ticker is not None:
                ticker.stop()
            self.status.next_run = None
