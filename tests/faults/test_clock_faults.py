"""Wall-clock jumps forward and back at the machine level: one machine with a schedule, a timer and
an exec watcher on an interval, on the FakeClock: a day and a half simulated in about a second.

Timers and intervals run on the monotonic clock: a jump of the wall clock never fires them early,
late or twice, and never skips them. Schedules follow the wall clock as docs/watchers/schedule.md
says: a window skipped over by a forward jump is not opened, an open window keeps its length, a
cron time is not opened twice when the clock goes back a little.
"""

from __future__ import annotations

import math
from pathlib import Path

from machinery.core.clock import FakeClock
from machinery.core.machine import Machine
from tests.support import Recorder, make_machine, running, wait_until, write_machine

THURSDAY = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HOUR = 3600.0
TICK = 660.0  # the exec interval: 11 minutes, never on the same instant as a window or timer

PLANT = """\
name: plant
version: 1.0.0
initial_state: idle
transitions:
  - name: open
    from: [idle]
    destination: window
  - name: close
    from: [window, overdue]
    destination: idle
  - name: late
    from: [window]
    destination: overdue
watchers:
  - name: cron
    type: schedule
    success_transition: open
    fail_transition: close
    properties:
      schedules: ["0 8 * * *"]
      duration: 1h
      timezone: UTC
  - name: guard
    type: timer
    state_match: [window]
    fail_transition: late
    properties:
      timer: 20m
  - name: beat
    type: exec
    interval: 11m
    properties:
      command: ./beat.sh
"""

BEAT = """\
#!/bin/sh
echo beat >> beats.log
"""


class Plant:
    def __init__(self, machine: Machine, clock: FakeClock, recorder: Recorder) -> None:
        self.machine = machine
        self.clock = clock
        self.recorder = recorder
        self.directory = machine.directory

    def beats(self) -> int:
        log = self.directory / "beats.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def expected_beats(self) -> int:
        # Every interval tick (monotonic) plus one run per real transition.
        return math.floor(self.clock.monotonic() / TICK + 1e-9) + len(self.recorder.transitions())

    async def advance_to(self, monotonic: float) -> None:
        """Advance in steps of at most a minute, letting each command finish before the next."""
        while self.clock.monotonic() < monotonic - 1e-9:
            await self.clock.advance(min(60.0, monotonic - self.clock.monotonic()))
            await wait_until(
                lambda: self.beats() == self.expected_beats(),
                timeout=10,
                what=f"{self.expected_beats()} beats at monotonic {self.clock.monotonic():.0f}",
            )


async def test_wall_clock_jumps_do_not_move_timers_or_intervals(tmp_path: Path) -> None:
    directory = write_machine(tmp_path / "plant", PLANT, {"beat.sh": BEAT})
    clock = FakeClock(start=THURSDAY + 6 * HOUR)  # Thursday 06:00 UTC, monotonic 0
    recorder = Recorder()
    plant = Plant(make_machine(directory, clock=clock, recorder=recorder), clock, recorder)
    machine = plant.machine

    def transitions() -> list[str]:
        return [name for name, _, _ in recorder.transitions()]

    async with running(machine):
        await plant.advance_to(1800)
        beat = next(w for w in machine.watchers if w.name == "beat")
        next_tick = beat.status.next_run
        # Forward a whole day at Thursday 06:30: Thursday's 08:00 window is skipped over.
        clock.set_wall(THURSDAY + 24 * HOUR + 6.5 * HOUR)
        assert beat.status.next_run == next_tick  # monotonic: unmoved
        await plant.advance_to(7200 - 60)  # Friday 07:59
        assert transitions() == []
        await plant.advance_to(7200)  # Friday 08:00 by the new wall clock
        assert machine.state == "window"
        # Forward twelve hours with the window open and the timer running.
        await plant.advance_to(7500)
        clock.set_wall(clock.now() + 12 * HOUR)
        await plant.advance_to(7200 + 1200 - 60)
        assert machine.state == "window"  # the timer has not fired early
        await plant.advance_to(7200 + 1200)
        assert machine.state == "overdue"  # exactly 20 minutes (monotonic) after opening
        await plant.advance_to(7200 + 3600 - 60)
        assert machine.state == "overdue"  # the open window keeps its length
        await plant.advance_to(7200 + 3600)
        assert machine.state == "idle"
        assert transitions() == ["open", "late", "close"]
        # Now 21:00 Friday (wall). Saturday's 08:00 is eleven hours on.
        saturday = 7200 + 3600 + 11 * HOUR
        await plant.advance_to(saturday)
        assert machine.state == "window"
        # Back thirty minutes at 08:05 while the window is open and the timer runs.
        await plant.advance_to(saturday + 300)
        clock.set_wall(clock.now() - 30 * 60)
        await plant.advance_to(saturday + 1200 - 60)
        assert machine.state == "window"  # no late firing either
        await plant.advance_to(saturday + 1200)
        assert machine.state == "overdue"
        await plant.advance_to(saturday + 3600)
        assert machine.state == "idle"  # the window kept its hour
        # The wall clock passed 08:00 a second time inside that hour: no second window, and
        # none after it closed, until Sunday's.
        sunday = saturday + 3600 + 23.5 * HOUR
        await plant.advance_to(sunday - 60)
        assert transitions() == ["open", "late", "close", "open", "late", "close"]
        await plant.advance_to(sunday)
        assert machine.state == "window"
    ticks = math.floor(clock.monotonic() / TICK)
    print(
        f"clock jumps (+1 day, +12 h, -30 min) over {clock.monotonic() / HOUR:.1f} simulated hours: "
        f"{len(recorder.transitions())} transitions exactly on time, {plant.beats()} exec runs "
        f"({ticks} interval ticks + one per transition), no tick early, late, doubled or skipped"
    )
    assert plant.beats() == ticks + len(recorder.transitions())


async def test_a_jump_back_past_the_last_window_follows_the_new_clock(tmp_path: Path) -> None:
    # Documented: more than an hour back is taken as a correction of a wrong clock.
    directory = write_machine(tmp_path / "plant", PLANT, {"beat.sh": BEAT})
    clock = FakeClock(start=THURSDAY + 7 * HOUR)
    recorder = Recorder()
    plant = Plant(make_machine(directory, clock=clock, recorder=recorder), clock, recorder)
    async with running(plant.machine):
        await plant.advance_to(HOUR + 3600 + 600)  # 09:10: opened at 08:00 and closed
        assert [t for t, _, _ in recorder.transitions()] == ["open", "late", "close"]
        clock.set_wall(clock.now() - 3 * HOUR)  # back to 06:10
        await plant.advance_to(clock.monotonic() + 110 * 60)  # 08:00 by the corrected clock
        assert plant.machine.state == "window"
    print("a 3-hour jump back after the window: the corrected clock's 08:00 opens it again")
