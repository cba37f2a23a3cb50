"""The one place time comes from.

Intervals, timers, splay, schedules and the transition rate limiter all take a :class:`Clock`.
:class:`SystemClock` is real time on the running event loop; :class:`FakeClock` only moves when a
test calls :meth:`FakeClock.advance`, so a week-long schedule is tested in milliseconds and never
depends on how busy the machine is.

Two readings are kept apart: ``monotonic()`` for durations (never jumps) and ``now()`` for wall
time (cron windows, event timestamps), which may jump when the system clock is set.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "TICK_LATENESS",
    "Clock",
    "FakeClock",
    "Lateness",
    "SystemClock",
    "Ticker",
    "TimerHandle",
]


class TimerHandle(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None: ...


class Clock(ABC):
    """Time for the machine runtime."""

    @abstractmethod
    def now(self) -> float:
        """Wall-clock time, Unix seconds."""

    def now_ns(self) -> int:
        """Wall-clock time, Unix nanoseconds (for timestamps Choria publishes to the ns)."""
        seconds = self.now()
        whole = math.floor(seconds)
        return whole * 1_000_000_000 + round((seconds - whole) * 1e9)

    @abstractmethod
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; only differences mean anything."""

    @abstractmethod
    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` on the event loop after ``delay`` seconds."""

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``; cancellation interrupts it."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        handle = self.call_later(seconds, _resolve, future)
        try:
            await future
        finally:
            handle.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SystemClock(Clock):
    """Real time, scheduled on the running asyncio loop."""

    def now(self) -> float:
        return time.time()

    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(delay, 0.0), callback, *args)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class _FakeHandle:
    __slots__ = ("args", "callback", "cancelled", "deadline")

    def __init__(
        self, deadline: float, callback: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        self.deadline = deadline
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock(Clock):
    """A clock that stands still until told to move.

    ``advance(seconds)`` moves time forward, firing every due callback in deadline order and
    letting the event loop run the tasks they wake before moving on, so code that sleeps in a
    loop sees every step. ``set_wall`` moves the wall clock alone (a clock jump).
    """

    def __init__(self, start: float = 1_767_225_600.0, *, settle_rounds: int = 50) -> None:
        # Default start: 2026-01-01T00:00:00Z, a fixed point so tests are reproducible.
        self._wall_offset = start
        self._monotonic = 0.0
        self._timers: list[tuple[float, int, _FakeHandle]] = []
        self._sequence = itertools.count()
        self._settle_rounds = settle_rounds

    def now(self) -> float:
        return self._wall_offset + self._monotonic

    def monotonic(self) -> float:
        return self._monotonic

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        handle = _FakeHandle(self._monotonic + max(delay, 0.0), callback, args)
        heapq.heappush(self._timers, (handle.deadline, next(self._sequence), handle))
        return handle

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock to ``wall`` without moving monotonic time."""
        self._wall_offset = wall - self._monotonic

    def pending(self) -> int:
        """How many callbacks are scheduled and not cancelled."""
        return sum(1 for _, _, handle in self._timers if not handle.cancelled)

    def next_deadline(self) -> float | None:
        """Monotonic time of the next scheduled callback, if any."""
        self._drop_cancelled()
        return self._timers[0][0] if self._timers else None

    async def settle(self) -> None:
        """Let every task that is ready run until the loop has nothing immediate to do."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        if ready is None:  # not CPython's loop: a fixed number of turns
            for _ in range(self._settle_rounds):
                await asyncio.sleep(0)
            return
        # CPython's loop keeps its runnable callbacks in _ready: turn until it stays empty (this
        # is what makes a simulated week take milliseconds instead of seconds).
        for _ in range(self._settle_rounds * 20):
            await asyncio.sleep(0)
            if not ready:
                return

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due callbacks in order."""
        target = self._monotonic + max(seconds, 0.0)
        await self.settle()
        while True:
            self._drop_cancelled()
            if not self._timers or self._timers[0][0] > target:
                break
            deadline, _, handle = heapq.heappop(self._timers)
            self._monotonic = max(self._monotonic, deadline)
            handle.callback(*handle.args)
            await self.settle()
        self._monotonic = target
        await self.settle()

    async def run_until_idle(self, limit: float = 86400.0) -> None:
        """Advance to each pending deadline in turn (at most ``limit`` seconds ahead)."""
        end = self._monotonic + limit
        while (deadline := self.next_deadline()) is not None and deadline <= end:
            await self.advance(deadline - self._monotonic)

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)


class Lateness:
    """How late interval ticks fire, as a cumulative histogram (for ``/metrics``).

    A tick is late when the loop was too busy to run its timer on time: this is the scheduling
    jitter operators care about on a node with thousands of machines.
    """

    BOUNDS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(self.BOUNDS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        for i, bound in enumerate(self.BOUNDS):
            if seconds <= bound:
                self.buckets[i] += 1
                return
        self.buckets[-1] += 1

    def quantile(self, q: float) -> float:
        """An upper bound of the ``q`` quantile (the bucket it falls in)."""
        wanted = q * self.count
        seen = 0
        for i, count in enumerate(self.buckets):
            seen += count
            if seen >= wanted and count:
                return self.BOUNDS[i] if i < len(self.BOUNDS) else float("inf")
        return 0.0


TICK_LATENESS = Lateness()


class Ticker:
    """Calls ``callback`` every ``interval`` seconds at a fixed rate.

    Like Go's ticker: deadlines are ``start + n * interval`` so slow callbacks do not make the
    schedule drift, and ticks missed while the loop was busy are dropped rather than bunched.
    """

    __slots__ = ("_callback", "_clock", "_handle", "_interval", "_next")

    def __init__(
        self,
        clock: Clock,
        interval: float,
        callback: Callable[[], None],
        *,
        first_delay: float | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("ticker interval must be positive")
        self._clock = clock
        self._interval = interval
        self._callback = callback
        delay = interval if first_delay is None else first_delay
        self._next = clock.monotonic() + delay
        self._handle: TimerHandle | None = clock.call_later(delay, self._fire)

    @property
    def next_deadline(self) -> float:
        """Monotonic time of the next tick."""
        return self._next

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        now = self._clock.monotonic()
        TICK_LATENESS.observe(max(now - self._next, 0.0))
        self._next += self._interval
        if self._next <= now:
            missed = int((now - self._next) // self._interval) + 1
            self._next += missed * self._interval
        self._handle = self._clock.call_later(self._next - now, self._fire)
        self._callback()
