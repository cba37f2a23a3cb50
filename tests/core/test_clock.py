import asyncio

from machinery.core.clock import FakeClock, SystemClock, Ticker


async def test_fake_sleep_wakes_exactly_at_deadline() -> None:
    clock = FakeClock()
    woke: list[float] = []

    async def sleeper(delay: float) -> None:
        await clock.sleep(delay)
        woke.append(clock.monotonic())

    tasks = [asyncio.ensure_future(sleeper(d)) for d in (3, 1, 2)]
    await clock.advance(2.5)
    assert woke == [1, 2]
    await clock.advance(10)
    assert woke == [1, 2, 3]
    await asyncio.gather(*tasks)


async def test_fake_week_runs_instantly_with_a_ticker() -> None:
    clock = FakeClock()
    ticks: list[float] = []
    ticker = Ticker(clock, 3600, lambda: ticks.append(clock.monotonic()))
    await clock.advance(7 * 86400)
    ticker.stop()
    assert len(ticks) == 7 * 24
    assert ticks[:3] == [3600, 7200, 10800]


async def test_ticker_first_delay_and_stop() -> None:
    clock = FakeClock()
    ticks: list[float] = []
    ticker = Ticker(clock, 10, lambda: ticks.append(clock.monotonic()), first_delay=2)
    await clock.advance(25)
    assert ticks == [2, 12, 22]
    ticker.stop()
    await clock.advance(100)
    assert ticks == [2, 12, 22]
    assert clock.pending() == 0


async def test_wall_clock_jumps_do_not_move_monotonic_time() -> None:
    clock = FakeClock(start=1000)
    clock.set_wall(5000)
    assert clock.now() == 5000
    assert clock.monotonic() == 0
    await clock.advance(1)
    assert clock.now() == 5001


async def test_cancelled_sleep_releases_its_timer() -> None:
    clock = FakeClock()
    task = asyncio.ensure_future(clock.sleep(100))
    await clock.settle()
    task.cancel()
    await asyncio.sleep(0)
    assert clock.pending() == 0


async def test_system_clock_sleeps_for_real() -> None:
    clock = SystemClock()
    start = clock.monotonic()
    await clock.sleep(0.01)
    assert clock.monotonic() - start >= 0.009
