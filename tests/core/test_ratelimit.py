import random

import pytest

from machinery.core.clock import FakeClock
from machinery.core.ratelimit import GRACE_MS, RateLimiter


def limiter(clock: FakeClock, enabled: bool = True) -> RateLimiter:
    return RateLimiter(clock, enabled=enabled, rng=random.Random(1))


def test_first_transition_is_free_then_delays_grow_with_jitter() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    delays = [rl.next_delay() for _ in range(25)]
    assert delays[0] == 0
    for count, delay in enumerate(delays[1:], start=1):
        base = GRACE_MS[min(count, len(GRACE_MS) - 1)] / 1000
        assert 0.5 * base <= delay < 1.5 * base
    assert max(delays) < 7.5


async def test_counter_resets_after_a_quiet_minute() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    for _ in range(5):
        rl.next_delay()
    assert rl.count == 5
    await clock.advance(30)
    assert rl.count == 5
    await clock.advance(40)
    assert rl.count == 0
    assert rl.next_delay() == 0


async def test_each_delay_pushes_the_reset_back() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    rl.next_delay()
    await clock.advance(50)
    rl.next_delay()  # a delayed transition: reset is now ~60s after it
    await clock.advance(20)
    assert rl.count == 2


def test_disabled_limiter_never_delays() -> None:
    rl = limiter(FakeClock(), enabled=False)
    assert all(rl.next_delay() == 0 for _ in range(100))


async def test_wait_sleeps_on_the_clock() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    await rl.wait()
    before = clock.monotonic()
    import asyncio

    task = asyncio.ensure_future(rl.wait())
    await clock.settle()
    assert not task.done()
    await clock.advance(1)
    assert task.done()
    assert task.result() == pytest.approx(rl.total_delay)
    assert clock.monotonic() == before + 1


class _Midpoint(random.Random):
    """A random source whose uniform(a, b) is always the midpoint (jitter factor 1.0), or
    the low end with ``low=True`` (jitter factor 0.5), so delays can be compared exactly."""

    def __init__(self, low: bool = False) -> None:
        super().__init__(0)
        self.low = low

    def random(self) -> float:
        return 0.0 if self.low else 0.5


# Choria's FiveSecStartGrace table (spec 1.2), written out here rather than read from the
# module, so a wrong entry in the code cannot also be the expectation.
CHORIA_LADDER_MS = [0, 25, 50, 75, 100, 125, 150, 200, 250, 500,
                    750, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000]  # fmt: skip


def test_delays_follow_choria_ladder_in_milliseconds_and_saturate_at_five_seconds() -> None:
    rl = RateLimiter(FakeClock(), rng=_Midpoint())
    delays_ms = [round(rl.next_delay() * 1000, 6) for _ in range(25)]
    # The first transition is free; the n-th (counting from 0) waits ladder[n]; then 5000.
    assert delays_ms == [*CHORIA_LADDER_MS, 5000, 5000, 5000, 5000, 5000]
    assert rl.total_delay == pytest.approx(sum(CHORIA_LADDER_MS) / 1000 + 5 * 5.0)


def test_jitter_spans_half_to_one_and_a_half_of_the_ladder_step() -> None:
    low = RateLimiter(FakeClock(), rng=_Midpoint(low=True))
    assert [round(low.next_delay() * 1000, 6) for _ in range(4)] == [0, 12.5, 25, 37.5]


def test_the_count_and_total_delay_follow_each_transition() -> None:
    rl = RateLimiter(FakeClock(), rng=_Midpoint())
    assert rl.count == 0 and rl.total_delay == 0
    rl.next_delay()
    rl.next_delay()
    rl.next_delay()
    assert rl.count == 3
    assert rl.total_delay == pytest.approx(0.075)


# The reset timer (spec 1.2): created by the first transition, pushed to a minute after each
# delayed transition, and on firing it zeroes the counter and re-arms for another minute.


async def test_the_first_transition_arms_the_reset_timer_for_exactly_one_minute() -> None:
    clock = FakeClock()
    rl = RateLimiter(clock, rng=_Midpoint())
    assert rl.next_delay() == 0
    await clock.advance(59.999)
    assert rl.count == 1
    await clock.advance(0.001)  # the timer fires at 60 s: the counter is zero from then on
    assert rl.count == 0


async def test_the_timer_re_arms_every_minute_on_the_minute() -> None:
    clock = FakeClock()
    rl = RateLimiter(clock, rng=_Midpoint())
    rl.next_delay()  # t=0: the timer fires at 60, 120, 180, ...
    await clock.advance(60)
    assert rl.count == 0
    await clock.advance(1)
    assert rl.next_delay() == 0  # t=61: a fresh count, the timer left as it was
    await clock.advance(58)
    assert rl.count == 1  # t=119
    await clock.advance(1)
    assert rl.count == 0  # t=120
    # Several quiet minutes unobserved: the timer kept its rhythm (fires at 240, 300, ...).
    await clock.advance(130)
    assert rl.next_delay() == 0  # t=250
    await clock.advance(49)
    assert rl.count == 1  # t=299
    await clock.advance(1)
    assert rl.count == 0  # t=300


async def test_a_delayed_transition_pushes_the_reset_to_a_minute_after_its_sleep() -> None:
    clock = FakeClock()
    rl = RateLimiter(clock, rng=_Midpoint())
    for _ in range(19):
        rl.next_delay()  # all at t=0; the 19th (index 18) waits 4500 ms
    assert rl.next_delay() == pytest.approx(5.0)  # the 20th: 5000 ms, so the reset is at 65 s
    await clock.advance(64.999)
    assert rl.count == 20
    await clock.advance(0.001)
    assert rl.count == 0
