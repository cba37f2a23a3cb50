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
