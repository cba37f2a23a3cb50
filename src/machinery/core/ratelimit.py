"""The fast-transition rate limiter (spec 1.2, Choria #1042).

Every valid event (self-transitions included) counts. From the second one on, the caller first
waits a delay taken from a growing table (0 ms up to 5 s, with ±50 % jitter), so a machine stuck
in a loop of transitions slows to one every few seconds; after a quiet minute the count resets.
"""

from __future__ import annotations

import random

from machinery.core.clock import Clock

__all__ = ["GRACE_MS", "RateLimiter"]

# Choria's FiveSecStartGrace backoff table, in milliseconds.
GRACE_MS: tuple[int, ...] = (
    0, 25, 50, 75, 100, 125, 150, 200, 250, 500,
    750, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000,
)  # fmt: skip
_QUIET_PERIOD = 60.0


class RateLimiter:
    """Per-machine transition rate limiter on an injectable clock and random source."""

    __slots__ = ("_clock", "_count", "_random", "_reset_at", "enabled", "total_delay")

    def __init__(
        self, clock: Clock, *, enabled: bool = True, rng: random.Random | None = None
    ) -> None:
        self._clock = clock
        self._random = rng or random.Random()
        self._count = 0
        self._reset_at: float | None = None
        self.enabled = enabled
        self.total_delay = 0.0

    @property
    def count(self) -> int:
        """Transitions counted since the last quiet minute."""
        self._expire()
        return self._count

    def next_delay(self) -> float:
        """The delay the next transition must wait (seconds), and count it."""
        if not self.enabled:
            return 0.0
        self._expire()
        delay = 0.0
        if self._count > 0:
            base = GRACE_MS[min(self._count, len(GRACE_MS) - 1)] / 1000.0
            delay = base * self._random.uniform(0.5, 1.5)
            self._reset_at = self._clock.monotonic() + delay + _QUIET_PERIOD
        elif self._reset_at is None:
            self._reset_at = self._clock.monotonic() + _QUIET_PERIOD
        self._count += 1
        self.total_delay += delay
        return delay

    async def wait(self) -> float:
        """Count a transition and sleep its delay; returns the delay."""
        delay = self.next_delay()
        if delay > 0:
            await self._clock.sleep(delay)
        return delay

    def _expire(self) -> None:
        # Choria's reset timer fires every quiet minute and re-arms itself; computing it lazily
        # gives the same counts without a timer per machine.
        if self._reset_at is None:
            return
        now = self._clock.monotonic()
        if now >= self._reset_at:
            self._count = 0
            periods = int((now - self._reset_at) // _QUIET_PERIOD) + 1
            self._reset_at += periods * _QUIET_PERIOD
