"""The ``timer`` watcher (spec 3.5): fire ``fail_transition`` a while after entering a state.

When the watcher becomes active (at start, or on a state change into one of its states) it
starts a timer and reports ``running``; a change to another matching state restarts it. Leaving
its states stops a running timer early, silently. When the timer expires the watcher reports
``stopped`` and fires ``fail_transition``. Typical use: maintenance windows and overrides that
end by themselves.

The timer is a callback on the machine clock owned by the watcher; it is cancelled when the
watcher stops or is closed, so nothing outlives the machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field

from machinery.core.clock import TimerHandle
from machinery.core.wakeup import STATE_CHANGED
from machinery.lang.duration import format_go_duration
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import Duration
from machinery.watchers.base import Watcher

__all__ = ["MIN_TIMER", "TimerProperties", "TimerWatcher"]

MIN_TIMER = 1.0
SUCCESS_REFUSED = (
    "timer watcher does not support success events; use fail_transition, which fires when "
    "the timer expires"
)

# The flag the expiry callback sets on the watcher's wakeup.
_EXPIRED = 1 << 8


class TimerProperties(WatcherProperties):
    """Properties of the timer watcher."""

    timer: Duration = Field(
        0.0, description="how long after entering a matching state to fire (below 1s: 1s)"
    )
    splay: bool = Field(
        False, description="use a random timer in [0, timer), chosen once when the watcher starts"
    )


def effective_timer(properties: TimerProperties) -> float:
    """The timer length before splay: below one second means one second."""
    return max(properties.timer, MIN_TIMER)


class TimerWatcher(Watcher[TimerProperties]):
    """Counts down while the machine is in a matching state; fails when time is up."""

    type_name = "timer"
    properties_model = TimerProperties
    uses_interval = False

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, TimerProperties)
        if watcher.success_transition:
            yield Problem(("success_transition",), SUCCESS_REFUSED)
        if properties.timer < MIN_TIMER:
            yield Problem.warning(
                ("properties", "timer"),
                "timer is not set; it runs for 1s"
                if properties.timer == 0
                else f"timer {format_go_duration(properties.timer)} is less than 1s; it runs for 1s",
            )
        if not watcher.fail_transition:
            yield Problem.warning(
                (), "a timer without fail_transition only reports its state when it expires"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        timer = effective_timer(self.properties)
        if self.properties.splay:
            # Choria draws once, when the watcher is created: every run uses the same value.
            timer = self.machine.random.random() * timer
        self.timer = timer
        self.state = "stopped"
        self._handle: TimerHandle | None = None
        # Bumped on every start and stop, so an expiry that raced a restart is recognised.
        self._generation = 0
        self._expired: int | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    async def run(self) -> None:
        try:
            self._state_changed()
            while True:
                reasons = await self._wakeup.wait()
                if reasons & _EXPIRED:
                    await self._expire()
                if reasons & STATE_CHANGED:
                    self._state_changed()
        finally:
            self._cancel()

    def close(self) -> None:
        self._cancel()

    def _state_changed(self) -> None:
        if self.should_watch():
            self._start()
        elif self._handle is not None:
            self.log_info(f"Stopping timer early on state transition to {self.machine.state}")
            self._cancel()
            self.state = "stopped"
            self.record("stopped")
            self.publish()

    def _start(self) -> None:
        if self._handle is not None:
            self.log_info(f"Timer was running, resetting to {format_go_duration(self.timer)}")
        self._cancel()
        generation = self._generation
        clock = self.machine.clock
        self._handle = clock.call_later(self.timer, self._on_expiry, generation)
        self.status.next_run = clock.monotonic() + self.timer
        self.state = "running"
        self.record("running")
        self.publish()

    def _on_expiry(self, generation: int) -> None:
        self._expired = generation
        self._wakeup.set(_EXPIRED)

    async def _expire(self) -> None:
        if self._expired != self._generation or self._handle is None:
            return  # the timer was restarted or stopped after it went off
        self._handle = None
        self._expired = None
        self._generation += 1
        self.status.next_run = None
        self.state = "stopped"
        self.record("stopped")
        self.publish()
        await self.fire_fail()

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._generation += 1
        self.status.next_run = None

    def state_fields(self) -> dict[str, Any]:
        return {"state": self.state, "timer": round(self.timer * 1e9)}

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        nanos = payload.get("timer") or 0
        return (
            f"{payload.get('identity')} timer {payload.get('machine')}#{payload.get('name')} "
            f"state: {payload.get('state')} with {format_go_duration(float(nanos) / 1e9)} timer"
        )
