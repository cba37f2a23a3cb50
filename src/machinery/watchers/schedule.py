"""The ``schedule`` watcher (spec 3.3): be "on" during cron-defined windows.

Each entry of ``schedules`` opens a window at its cron time; the window stays open for
``duration``. The watcher is **on** while at least one window is open (windows may overlap) and
**off** otherwise. Whenever that on/off state changes, or the machine changes state, it is
evaluated as Choria does: entering **on** fires ``success_transition``, entering **off** (or
becoming eligible while no window was ever open) fires ``fail_transition``; nothing fires at start,
and a window already in progress when the watcher starts is ignored.

Time: cron is evaluated against the wall clock (``clock.now()``) in the watcher's time zone, but
the watcher never sleeps longer than :data:`MAX_SLEEP` on a wall time computed once; it wakes and
re-derives what is due from the wall clock, so a clock that is set forward or back is noticed
within a minute. Open windows are timed on the monotonic clock, so a jump never shortens or
lengthens a window that is already open. See ``docs/watchers/schedule.md`` for the exact rules.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter
from pydantic import Field

from machinery.core.clock import Ticker, TimerHandle
from machinery.core.wakeup import TICK
from machinery.lang.duration import format_go_duration
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import Duration
from machinery.watchers.base import Watcher

__all__ = [
    "DESCRIPTORS",
    "MAX_SLEEP",
    "ScheduleError",
    "ScheduleProperties",
    "ScheduleWatcher",
    "local_zone",
    "parse_schedule",
    "resolve_zone",
]

DEFAULT_DURATION = 60.0
# The longest the scheduler sleeps on one wall-clock computation before looking again.
MAX_SLEEP = 60.0
# Choria evaluates every 500ms; we only need to when another machine's state matters, because
# nothing tells a watcher when a foreign machine changes state.
FOREIGN_POLL = 0.5
# A cron time within this of "now" counts as reached (float rounding of wall time).
_EPSILON = 1e-3
# Wall and monotonic time disagreeing by more than this between two wakes is a clock jump.
_JUMP_TOLERANCE = 1.0
# Set back by more than this before the last time handled, the old clock was simply wrong: follow
# the new one instead of refusing to open already-opened cron times again.
_FORGET_AFTER = 3600.0
# Opening more windows than this at once (after a huge forward jump) is not useful.
_MAX_CATCH_UP = 10_000

# The flag a window opening or closing sets on the watcher's wakeup.
_WINDOW = 1 << 8

DESCRIPTORS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_LOCAL_NAMES = ("", "local")


class ScheduleError(ValueError):
    """A schedule or time zone that cannot be used."""


def parse_schedule(text: str, zone: tzinfo = UTC) -> str:
    """Check one schedule and return the 5-field cron expression it stands for.

    Accepts a 5-field expression (minute hour day-of-month month day-of-week) or one of the
    :data:`DESCRIPTORS`; raises :class:`ScheduleError` with the reason otherwise.
    """
    expression = text.strip()
    if not expression:
        raise ScheduleError("schedule is empty")
    if expression.startswith("@"):
        if expression not in DESCRIPTORS:
            known = ", ".join(DESCRIPTORS)
            raise ScheduleError(
                f"unsupported schedule descriptor {expression!r}; use one of {known}"
            )
        return DESCRIPTORS[expression]
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"invalid schedule {expression!r}: expected exactly 5 fields "
            f"(minute hour day-of-month month day-of-week), found {len(fields)}"
        )
    expression = " ".join(fields)
    try:
        iterator = croniter(expression, datetime.now(zone))
    except CroniterBadCronError as exc:
        raise ScheduleError(f"invalid schedule {expression!r}: {exc}") from None
    except (CroniterError, ValueError, KeyError) as exc:
        raise ScheduleError(f"invalid schedule {expression!r}: {exc}") from None
    try:
        iterator.get_next(float)
    except CroniterBadDateError:
        raise ScheduleError(f"schedule {expression!r} never matches a date") from None
    return expression


def resolve_zone(name: str) -> tzinfo:
    """The time zone called ``name`` (IANA); empty or ``Local`` is the system's local zone."""
    if name.strip().lower() in _LOCAL_NAMES:
        return local_zone()
    try:
        return ZoneInfo(name.strip())
    except (KeyError, ValueError, OSError):
        raise ScheduleError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Amsterdam or UTC"
        ) from None


def local_zone() -> tzinfo:
    """The system's local time zone, with its daylight saving rules when they can be found."""
    configured = os.environ.get("TZ", "").lstrip(":")
    if configured:
        try:
            if configured.startswith("/"):
                with open(configured, "rb") as handle:
                    return ZoneInfo.from_file(handle, key=configured)
            return ZoneInfo(configured)
        except (KeyError, ValueError, OSError):
            pass
    try:
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        pass
    # No rules to be found: the current offset is the best we can do.
    return datetime.now().astimezone().tzinfo or UTC


class ScheduleProperties(WatcherProperties):
    """Properties of the schedule watcher."""

    schedules: list[str] = Field(
        default_factory=list,
        description="cron schedules (5 fields, or @yearly/@monthly/@weekly/@daily/@hourly)",
    )
    duration: Duration = Field(
        DEFAULT_DURATION, description="how long each window stays on (below 1s: 1m)"
    )
    start_splay: Duration = Field(
        0.0, description="random delay before a window turns on; at most half the duration"
    )
    skip_trigger_on_reenter: bool = Field(
        False, description="do not fire success again when re-entering a state in the same window"
    )
    timezone: str = Field(
        "", description="IANA time zone the schedules are read in; empty: the local zone"
    )


def effective_duration(properties: ScheduleProperties) -> float:
    """The window length actually used: below one second means the default minute."""
    return properties.duration if properties.duration >= 1.0 else DEFAULT_DURATION


class _Schedule:
    """One entry of ``schedules``, with its next cron time cached."""

    __slots__ = ("_from", "_next", "expression", "text", "zone")

    def __init__(self, text: str, expression: str, zone: tzinfo) -> None:
        self.text = text
        self.expression = expression
        self.zone = zone
        # The cached answer holds for any ``after`` in [_from, _next).
        self._from = float("inf")
        self._next = float("-inf")

    def next_after(self, after: float) -> float:
        """The first cron time strictly after wall time ``after`` (inf: none)."""
        if self._from <= after < self._next:
            return self._next
        try:
            found: float = croniter(
                self.expression, datetime.fromtimestamp(after, self.zone)
            ).get_next(float)
        except CroniterBadDateError:
            found = float("inf")
        self._from, self._next = after, found
        return found


class _Window:
    """One opened cron time: its on and off timers."""

    __slots__ = ("handles", "occurrence", "on")

    def __init__(self, occurrence: float) -> None:
        self.occurrence = occurrence
        self.handles: list[TimerHandle] = []
        self.on = False


class ScheduleWatcher(Watcher[ScheduleProperties]):
    """On during cron windows; success when a window opens, fail when the last one closes."""

    type_name = "schedule"
    properties_model = ScheduleProperties
    uses_interval = False

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, ScheduleProperties)
        zone: tzinfo = UTC
        try:
            zone = resolve_zone(properties.timezone)
        except ScheduleError as exc:
            yield Problem(("properties", "timezone"), str(exc))
        if not properties.schedules:
            yield Problem(("properties", "schedules"), "at least one schedule is required")
        for i, text in enumerate(properties.schedules):
            try:
                parse_schedule(text, zone)
            except ScheduleError as exc:
                yield Problem(("properties", "schedules", i), str(exc))
        duration = effective_duration(properties)
        if properties.duration < 1.0:
            yield Problem.warning(
                ("properties", "duration"),
                f"duration {format_go_duration(properties.duration)} is less than 1s; "
                f"windows last {format_go_duration(DEFAULT_DURATION)}",
            )
        if properties.start_splay > duration / 2:
            yield Problem(
                ("properties", "start_splay"),
                f"start splay {format_go_duration(properties.start_splay)} is bigger than half "
                f"the duration {format_go_duration(duration)}",
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.zone = resolve_zone(self.properties.timezone)
        self.schedules = [
            _Schedule(text, parse_schedule(text, self.zone), self.zone)
            for text in self.properties.schedules
        ]
        self.duration = effective_duration(self.properties)
        self.splay = self.properties.start_splay
        self.state = "unknown"
        self.previous = "unknown"
        self._counter = 0
        # Each time the watcher turns on a new window generation starts; skip_trigger_on_reenter
        # compares against the generation that last fired success.
        self._generation = 0
        self._triggered: int | None = None
        self._windows: set[_Window] = set()

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        ticker = None
        if self.spec.foreign_state_required:
            ticker = Ticker(self.machine.clock, FOREIGN_POLL, lambda: self._wakeup.set(TICK))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._scheduler(), name=f"{self.machine.name}#{self.name}:cron")
                # Choria's evaluation ticker runs from the start: outside its states the watcher
                # notes "skipped" at once, so that entering one later fires.
                await self._evaluate()
                while True:
                    await self._wakeup.wait()
                    await self._evaluate()
        finally:
            if ticker is not None:
                ticker.stop()
            self._close_windows()
            self.status.next_run = None

    def close(self) -> None:
        self._close_windows()

    async def _evaluate(self) -> None:
        if not self.should_watch():
            if self.previous != "skipped":
                self.record("skipped")
            self.previous = "skipped"
            return
        state = self.state
        if state == self.previous:
            return
        self.previous = state
        self.record(state)
        if state == "on":
            if self.properties.skip_trigger_on_reenter and self._triggered == self._generation:
                self.log_debug("Skipping success transition on re-entry in the same window")
                return
            self._triggered = self._generation
            self.publish()
            await self.fire_success()
            return
        self._triggered = None
        self.publish()
        await self.fire_fail()

    # -- the cron side -------------------------------------------------------------------

    def next_occurrence(self, after: float) -> float:
        """The first cron time of any schedule strictly after wall time ``after``."""
        return min(schedule.next_after(after) for schedule in self.schedules)

    async def _scheduler(self) -> None:
        clock = self.machine.clock
        wall, mono = clock.now(), clock.monotonic()
        # Cron times up to here are handled; a window in progress at start is not opened.
        cursor = wall + _EPSILON
        while True:
            last_wall, last_mono = wall, mono
            wall, mono = clock.now(), clock.monotonic()
            jump = (wall - last_wall) - (mono - last_mono)
            if abs(jump) > _JUMP_TOLERANCE:
                self.log_warning(f"Wall clock jumped by {format_go_duration(jump)}")
            if wall < cursor - _FORGET_AFTER:
                self.log_warning("Wall clock was set back by more than an hour; following it")
                cursor = wall + _EPSILON
            if wall + _EPSILON >= cursor:
                self._open_due(cursor, wall)
                cursor = wall + _EPSILON
            upcoming = self.next_occurrence(cursor)
            self.status.next_run = (
                mono + max(upcoming - wall, 0.0) if upcoming != float("inf") else None
            )
            await clock.sleep(min(max(upcoming - wall, 0.0), MAX_SLEEP))

    def _open_due(self, cursor: float, wall: float) -> None:
        """Open the windows of every cron time in (cursor, wall] that has not ended yet."""
        # Cron times whose whole window lies before ``wall`` (a forward jump) are missed.
        start = max(cursor, wall - self.duration)
        if start > cursor and self.next_occurrence(cursor) <= start:
            self.log_warning("Wall clock moved past whole schedule windows; they were not opened")
        opened = 0
        for schedule in self.schedules:
            occurrence = schedule.next_after(start)
            while occurrence <= wall + _EPSILON and opened < _MAX_CATCH_UP:
                self._open_window(occurrence, wall)
                opened += 1
                occurrence = schedule.next_after(occurrence)

    def _open_window(self, occurrence: float, wall: float) -> None:
        clock = self.machine.clock
        splay = self.machine.random.uniform(0.0, self.splay) if self.splay > 0 else 0.0
        on_delay = max(occurrence + splay - wall, 0.0)
        off_delay = max(occurrence + self.duration - wall, on_delay)
        window = _Window(occurrence)
        self._windows.add(window)
        late = wall - occurrence
        if late > _JUMP_TOLERANCE:
            self.log_info(
                f"Opening schedule window {format_go_duration(late)} late, "
                f"for the remaining {format_go_duration(off_delay)}"
            )
        elif splay > 0:
            self.log_info(f"Sleeping {format_go_duration(splay)} before turning on the schedule")
        if on_delay > 0:
            window.handles.append(clock.call_later(on_delay, self._window_on, window))
        else:
            self._window_on(window)
        window.handles.append(clock.call_later(off_delay, self._window_off, window))

    def _window_on(self, window: _Window) -> None:
        window.on = True
        self._adjust(1)

    def _window_off(self, window: _Window) -> None:
        self._windows.discard(window)
        if window.on:
            window.on = False
            self._adjust(-1)

    def _adjust(self, delta: int) -> None:
        self._counter = max(self._counter + delta, 0)
        state = "on" if self._counter > 0 else "off"
        if state == "on" and self.state != "on":
            self._generation += 1
        self.state = state
        self._wakeup.set(_WINDOW)

    def _close_windows(self) -> None:
        for window in self._windows:
            for handle in window.handles:
                handle.cancel()
        self._windows.clear()
        if self._counter > 0:
            # The windows are gone: if run() starts again it must see "off", not a stale "on".
            self.state = "off"
        self._counter = 0

    @property
    def open_windows(self) -> int:
        """How many windows are open (turned on and not yet closed)."""
        return self._counter

    # -- published state -----------------------------------------------------------------

    def state_fields(self) -> dict[str, Any]:
        return {"state": self.state}

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        return (
            f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} "
            f"schedule state: {payload.get('state')}"
        )
