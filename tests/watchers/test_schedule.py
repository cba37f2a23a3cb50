"""The schedule watcher: cron windows on a fake clock, days in milliseconds."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from machinery.core.clock import FakeClock
from machinery.core.machine import Machine
from machinery.core.notifications import TransitionNotification
from machinery.spec.diagnostics import ManifestError
from machinery.watchers.registry import check_manifest
from machinery.watchers.schedule import (
    MAX_SLEEP,
    ScheduleError,
    ScheduleWatcher,
    parse_schedule,
    resolve_zone,
)
from tests.support import (
    CORPUS,
    Recorder,
    assert_took,
    make_machine,
    make_node,
    running,
    write_machine,
)

# 2026-01-01T00:00:00Z was a Thursday; the 3rd a Saturday.
THURSDAY = 1_767_225_600.0
SATURDAY = THURSDAY + 2 * 86400
HOUR = 3600.0

MACHINE = """\
name: lights
version: 1.0.0
initial_state: dark
transitions:
  - name: turn_on
    from: [dark, lit]
    destination: lit
  - name: turn_off
    from: [dark, lit]
    destination: dark
  - name: maintain
    from: [dark, lit]
    destination: maintenance
  - name: resume_dark
    from: [maintenance]
    destination: dark
  - name: resume_lit
    from: [maintenance]
    destination: lit
watchers:
  - name: sched
    type: schedule
    state_match: [dark, lit]
    success_transition: turn_on
    fail_transition: turn_off
{extra}    properties:
{properties}
"""


def machine_dir(tmp_path: Path, properties: str, extra: str = "") -> Path:
    body = textwrap.indent(textwrap.dedent(properties).strip(), "      ")
    extra = textwrap.indent(textwrap.dedent(extra).strip(), "    ") + "\n" if extra else ""
    return write_machine(tmp_path / "lights", MACHINE.format(properties=body, extra=extra))


def timeline(recorder: Recorder, origin: float) -> list[tuple[float, str]]:
    """Every transition and published schedule state, as (seconds since origin, what)."""
    result: list[tuple[float, str]] = []
    for event in recorder.events:
        if isinstance(event, TransitionNotification):
            result.append((event.timestamp - origin, f"{event.transition}->{event.to_state}"))
        else:
            result.append((event.payload["timestamp"] - origin, f"state={event.payload['state']}"))
    return result


def watcher(machine: Machine) -> ScheduleWatcher:
    found = machine.watchers[0]
    assert isinstance(found, ScheduleWatcher)
    return found


def problems(directory: Path) -> list[str]:
    _, diagnostics = check_manifest(directory)
    return [str(d).split(": ", 1)[1] for d in diagnostics]


# -- a whole day ---------------------------------------------------------------------------


async def test_a_whole_day_of_overlapping_windows_runs_in_milliseconds(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path,
        """
        duration: 1h
        timezone: UTC
        schedules:
          - "0 8 * * *"
          - "30 8 * * *"
          - "0 17 * * *"
          - "0 20 * * SAT,SUN"
          - "0 6 * * MON-FRI"
        """,
    )
    clock = FakeClock(start=SATURDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    started = time.perf_counter()
    async with running(machine):
        await clock.advance(8 * HOUR + 45 * 60)
        assert watcher(machine).open_windows == 2  # 08:00 and 08:30 overlap
        await clock.advance(15 * 3600 + 15 * 60)
        assert watcher(machine).open_windows == 0
    elapsed = time.perf_counter() - started
    assert_took(elapsed, 2.0, "a simulated day of five schedules")
    assert timeline(recorder, SATURDAY) == [
        (8 * HOUR, "state=on"),
        (8 * HOUR, "turn_on->lit"),
        (9.5 * HOUR, "state=off"),  # the 08:30 window keeps it on past 09:00
        (9.5 * HOUR, "turn_off->dark"),
        (17 * HOUR, "state=on"),
        (17 * HOUR, "turn_on->lit"),
        (18 * HOUR, "state=off"),
        (18 * HOUR, "turn_off->dark"),
        (20 * HOUR, "state=on"),  # SAT,SUN; the MON-FRI 06:00 never opened
        (20 * HOUR, "turn_on->lit"),
        (21 * HOUR, "state=off"),
        (21 * HOUR, "turn_off->dark"),
    ]
    status = watcher(machine).status
    assert status.outcomes == {"on": 3, "off": 3}
    assert clock.pending() == 0  # every timer of the watcher is gone after stop


async def test_windows_open_exactly_at_the_cron_time(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 10m\ntimezone: UTC\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(8 * HOUR - 0.01)
        assert machine.state == "dark" and recorder.events == []
        await clock.advance(0.01)
        assert machine.state == "lit"
        assert watcher(machine).state == "on"
        await clock.advance(600 - 0.01)
        assert machine.state == "lit"
        await clock.advance(0.01)
        assert machine.state == "dark"
        assert watcher(machine).state == "off"


async def test_duration_defaults_to_one_minute(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'timezone: UTC\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    machine.build_watchers()
    assert watcher(machine).duration == 60.0
    async with running(machine):
        await clock.advance(9 * HOUR)
    assert recorder.transitions() == [("turn_on", "dark", "lit"), ("turn_off", "lit", "dark")]
    assert [t for t, _ in timeline(recorder, THURSDAY)] == [8 * HOUR] * 2 + [8 * HOUR + 60] * 2


async def test_a_duration_below_one_second_means_one_minute(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 500ms\ntimezone: UTC\nschedules: ["0 8 * * *"]')
    assert problems(directory) == ["warning: duration 500ms is less than 1s; windows last 1m0s"]
    machine = make_machine(directory)
    machine.build_watchers()
    assert watcher(machine).duration == 60.0


async def test_descriptors_daily(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 2h\ntimezone: UTC\nschedules: ["@daily"]')
    clock = FakeClock(start=THURSDAY + 12 * HOUR)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(35 * HOUR)
    assert timeline(recorder, THURSDAY) == [
        (24 * HOUR, "state=on"),
        (24 * HOUR, "turn_on->lit"),
        (26 * HOUR, "state=off"),
        (26 * HOUR, "turn_off->dark"),
    ]


def test_every_descriptor_is_accepted() -> None:
    assert parse_schedule("@yearly") == parse_schedule("@annually") == "0 0 1 1 *"
    assert parse_schedule("@monthly") == "0 0 1 * *"
    assert parse_schedule("@weekly") == "0 0 * * 0"
    assert parse_schedule("@daily") == parse_schedule("@midnight") == "0 0 * * *"
    assert parse_schedule("@hourly") == "0 * * * *"
    assert parse_schedule("  0  8 * *  SAT,SUN ") == "0 8 * * SAT,SUN"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "schedule is empty"),
        ("@every 5m", "unsupported schedule descriptor '@every 5m'; use one of @yearly"),
        ("@reboot", "unsupported schedule descriptor '@reboot'"),
        (
            "0 8 * * * *",
            "invalid schedule '0 8 * * * *': expected exactly 5 fields (minute hour "
            "day-of-month month day-of-week), found 6",
        ),
        ("daily", "invalid schedule 'daily': expected exactly 5 fields"),
        ("61 8 * * *", "invalid schedule '61 8 * * *': "),
        ("0 8 * * FUNDAY", "invalid schedule '0 8 * * FUNDAY': "),
        ("0 0 30 2 *", "schedule '0 0 30 2 *' never matches a date"),
    ],
)
def test_bad_schedules(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text)
    assert str(info.value).startswith(message)


# -- windows and splay ---------------------------------------------------------------------


async def test_start_splay_delays_turning_on_but_not_the_end(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path, 'duration: 1h\nstart_splay: 10m\ntimezone: UTC\nschedules: ["0 8 * * *"]'
    )
    clock = FakeClock(start=THURSDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(8 * HOUR)
        assert watcher(machine).state == "unknown"  # sleeping its splay
        for _ in range(600):
            if machine.state == "lit":
                break
            await clock.advance(1)
        on_at = clock.now() - THURSDAY
        assert 8 * HOUR < on_at <= 8 * HOUR + 600
        await clock.advance(9 * HOUR - on_at - 0.01)
        assert machine.state == "lit"
        await clock.advance(0.02)
        assert machine.state == "dark"  # the window still ends at 09:00
    assert recorder.transitions() == [("turn_on", "dark", "lit"), ("turn_off", "lit", "dark")]


async def test_start_splay_must_fit_in_half_the_duration(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 1h\nstart_splay: 31m\nschedules: ["0 8 * * *"]')
    assert problems(directory) == ["start splay 31m0s is bigger than half the duration 1h0m0s"]
    # Checked against the effective duration: unset means 1m, so 40s is too much.
    directory = machine_dir(tmp_path, 'start_splay: 40s\nschedules: ["0 8 * * *"]')
    assert problems(directory) == ["start splay 40s is bigger than half the duration 1m0s"]
    directory = machine_dir(tmp_path, 'start_splay: 30s\nschedules: ["0 8 * * *"]')
    assert problems(directory) == []


async def test_load_errors_point_at_each_bad_schedule(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path,
        """
        timezone: Mars/Olympus
        schedules:
          - "0 8 * * *"
          - "@every 1h"
          - "0 8 * *"
        """,
    )
    _, diagnostics = check_manifest(directory)
    found = [(d.position.line, d.message) for d in diagnostics]
    assert found == [
        (
            27,
            "unknown time zone 'Mars/Olympus': use an IANA name such as Europe/Amsterdam or UTC",
        ),
        (
            30,
            "unsupported schedule descriptor '@every 1h'; use one of @yearly, @annually, "
            "@monthly, @weekly, @daily, @midnight, @hourly",
        ),
        (
            31,
            "invalid schedule '0 8 * *': expected exactly 5 fields (minute hour day-of-month "
            "month day-of-week), found 4",
        ),
    ]
    directory = machine_dir(tmp_path, "duration: 1h")
    assert problems(directory) == ["at least one schedule is required"]
    with pytest.raises(ManifestError):
        make_machine(directory)


# -- evaluation and the machine state ------------------------------------------------------


async def test_a_window_in_progress_at_start_is_ignored(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 1h\ntimezone: UTC\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY + 8.5 * HOUR)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(HOUR)
        assert recorder.events == []  # nothing at start, nothing when 08:00-09:00 ends
        assert watcher(machine).state == "unknown"
        await clock.advance(24 * HOUR)  # the next day's window triggers
    assert timeline(recorder, THURSDAY) == [
        (32 * HOUR, "state=on"),
        (32 * HOUR, "turn_on->lit"),
        (33 * HOUR, "state=off"),
        (33 * HOUR, "turn_off->dark"),
    ]


async def test_reentry_fires_success_during_a_window_and_fail_outside(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 1h\ntimezone: UTC\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(HOUR)
        await machine.transition("maintain")  # leaves the watcher's states: skipped
        await clock.advance(1)
        assert watcher(machine).previous == "skipped"
        await machine.transition("resume_lit")  # back, no window has ever opened: fail
        await clock.advance(1)
        assert machine.state == "dark"
        assert [s.payload["state"] for s in recorder.states()] == ["unknown"]
        await clock.advance(7 * HOUR)  # 08:00: on
        assert machine.state == "lit"
        await machine.transition("maintain")
        await clock.advance(60)
        await machine.transition("resume_dark")  # window active: success again
        await clock.advance(1)
        assert machine.state == "lit"
        await clock.advance(HOUR)
        assert machine.state == "dark"
    assert recorder.transitions() == [
        ("maintain", "dark", "maintenance"),
        ("resume_lit", "maintenance", "lit"),
        ("turn_off", "lit", "dark"),
        ("turn_on", "dark", "lit"),
        ("maintain", "lit", "maintenance"),
        ("resume_dark", "maintenance", "dark"),
        ("turn_on", "dark", "lit"),
        ("turn_off", "lit", "dark"),
    ]
    assert [s.payload["state"] for s in recorder.states()] == ["unknown", "on", "on", "off"]


async def test_outside_its_states_at_start_the_first_entry_fires(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 1h\ntimezone: UTC\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder, initial_state="maintenance")
    async with running(machine):
        await clock.advance(8.5 * HOUR)
        assert recorder.events == [] and machine.state == "maintenance"
        assert watcher(machine).state == "on" and watcher(machine).previous == "skipped"
        await machine.transition("resume_dark")
        await clock.advance(1)
        assert machine.state == "lit"
    assert recorder.transitions() == [
        ("resume_dark", "maintenance", "dark"),
        ("turn_on", "dark", "lit"),
    ]


async def test_skip_trigger_on_reenter(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path,
        'duration: 1h\ntimezone: UTC\nskip_trigger_on_reenter: true\nschedules: ["0 8 * * *"]',
    )
    clock = FakeClock(start=THURSDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(8 * HOUR + 60)
        await machine.transition("maintain")
        await clock.advance(60)
        await machine.transition("resume_dark")  # same window: no success this time
        await clock.advance(60)
        assert machine.state == "dark"
        await clock.advance(HOUR)  # the window closes: fail as usual
        await clock.advance(23 * HOUR)  # the next day's window fires success again
        assert machine.state == "lit"
    assert recorder.transitions() == [
        ("turn_on", "dark", "lit"),
        ("maintain", "lit", "maintenance"),
        ("resume_dark", "maintenance", "dark"),
        ("turn_on", "dark", "lit"),
    ]
    # The close at 09:00 fired turn_off from dark to dark: a silent self-transition.
    assert [s.payload["state"] for s in recorder.states()] == ["on", "off", "on"]


async def test_skip_trigger_on_reenter_is_per_window(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path,
        'duration: 1h\ntimezone: UTC\nskip_trigger_on_reenter: true\nschedules: ["0 8,10 * * *"]',
    )
    clock = FakeClock(start=THURSDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(8 * HOUR + 60)
        await machine.transition("maintain")  # away while 08:00 closes and 10:00 opens
        await clock.advance(2 * HOUR)
        await machine.transition("resume_dark")  # a new window: success fires
        await clock.advance(1)
        assert machine.state == "lit"
    assert recorder.transitions() == [
        ("turn_on", "dark", "lit"),
        ("maintain", "lit", "maintenance"),
        ("resume_dark", "maintenance", "dark"),
        ("turn_on", "dark", "lit"),
    ]


async def test_foreign_state_changes_are_noticed(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path,
        'duration: 1h\ntimezone: UTC\nschedules: ["0 8 * * *"]',
        extra="foreign_state_required:\n  - machine_name: power\n    state: up",
    )
    power = write_machine(
        tmp_path / "power",
        """\
        name: power
        version: 1.0.0
        initial_state: up
        transitions:
          - name: cut
            from: [up]
            destination: down
          - name: restore
            from: [down]
            destination: up
        watchers:
          - name: idle
            type: schedule
            properties:
              schedules: ["0 0 1 1 *"]
        """,
    )
    # Polling every 500ms (only because of foreign_state_required): start just before 08:00.
    clock = FakeClock(start=THURSDAY + 8 * HOUR - 60)
    recorder = Recorder()
    node = make_node(clock=clock, recorder=recorder)
    lights, other = make_machine(directory, node=node), make_machine(power, node=node)
    async with running(lights, other):
        await clock.advance(120)
        assert lights.state == "lit"
        await other.transition("cut")
        await clock.advance(1)
        assert watcher(lights).previous == "skipped"
        await other.transition("restore")
        await clock.advance(1)  # noticed by polling, like Choria's 500ms ticker
    assert [t for t in recorder.transitions() if t[0].startswith("turn")] == [
        ("turn_on", "dark", "lit"),
    ]
    assert [s.payload["state"] for s in recorder.states("sched")] == ["on", "on"]


# -- time zones ----------------------------------------------------------------------------


async def test_timezone_property(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path, 'duration: 1h\ntimezone: America/New_York\nschedules: ["0 8 * * *"]'
    )
    clock = FakeClock(start=THURSDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(24 * HOUR)
    # 08:00 EST is 13:00 UTC in January.
    assert [t for t, _ in timeline(recorder, THURSDAY)] == [13 * HOUR] * 2 + [14 * HOUR] * 2


async def test_local_time_zone_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    directory = machine_dir(tmp_path, 'duration: 1h\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(24 * HOUR)
    # 08:00 in Tokyo (UTC+9) is 23:00 UTC the day before: next is 2026-01-01T23:00Z.
    assert timeline(recorder, THURSDAY)[:2] == [
        (23 * HOUR, "state=on"),
        (23 * HOUR, "turn_on->lit"),
    ]


async def test_daylight_saving_time_is_followed(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path, 'duration: 1h\ntimezone: Europe/Amsterdam\nschedules: ["0 8 * * *"]'
    )
    # 2026-03-28 00:00Z; clocks go forward in the night of the 29th.
    start = 1_774_656_000.0
    clock = FakeClock(start=start)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(48 * HOUR)
    opened = [t for t, what in timeline(recorder, start) if what == "state=on"]
    assert opened == [7 * HOUR, 30 * HOUR]  # 08:00 CET = 07:00Z, then 08:00 CEST = 06:00Z


def test_time_zone_names() -> None:
    assert str(resolve_zone("UTC")) == "UTC"
    assert str(resolve_zone("Europe/Amsterdam")) == "Europe/Amsterdam"
    resolve_zone("Local")
    resolve_zone("")
    for bad in ("Europe", "../etc/passwd", "Nowhere/Else", "/etc/localtime"):
        with pytest.raises(ScheduleError, match="unknown time zone"):
            resolve_zone(bad)


# -- wall clock jumps ----------------------------------------------------------------------


async def test_clock_jump_forward_into_a_window_opens_it_for_the_rest(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 1h\ntimezone: UTC\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY + 7 * HOUR)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(10)
        clock.set_wall(THURSDAY + 8 * HOUR + 20 * 60)  # 07:00:10 -> 08:20
        await clock.advance(MAX_SLEEP)  # noticed within a minute
        assert machine.state == "lit"
        on_wall = clock.now()
        await clock.advance(THURSDAY + 9 * HOUR - on_wall - 0.01)
        assert machine.state == "lit"
        await clock.advance(0.01)  # ends at 09:00 as planned
        assert machine.state == "dark"
    assert recorder.transitions() == [("turn_on", "dark", "lit"), ("turn_off", "lit", "dark")]


async def test_clock_jump_forward_over_a_whole_window_skips_it(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 1h\ntimezone: UTC\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY + 7 * HOUR)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(10)
        clock.set_wall(THURSDAY + 10 * HOUR)
        await clock.advance(21 * HOUR)  # 10:00 -> 07:00 the next day
        assert recorder.events == []
        await clock.advance(HOUR)
        assert machine.state == "lit"


async def test_clock_jump_back_does_not_open_a_window_twice(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 10m\ntimezone: UTC\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY + 7 * HOUR)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(HOUR + 5 * 60)  # 08:05, the window is open
        clock.set_wall(THURSDAY + 7 * HOUR + 50 * 60)  # back to 07:50
        await clock.advance(5 * 60)  # the window still ends after its 10 minutes
        assert machine.state == "dark"
        await clock.advance(30 * 60)  # the wall clock passes 08:00 again: not reopened
        assert machine.state == "dark"
        await clock.advance(24 * HOUR)  # the next day's 08:00 opens as usual
    assert [what for _, what in timeline(recorder, THURSDAY)] == [
        "state=on",
        "turn_on->lit",
        "state=off",
        "turn_off->dark",
        "state=on",
        "turn_on->lit",
        "state=off",
        "turn_off->dark",
    ]


async def test_clock_set_back_a_long_way_follows_the_new_time(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 10m\ntimezone: UTC\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY + 7 * HOUR)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(HOUR + 20 * 60)  # 08:20: opened and closed
        clock.set_wall(THURSDAY - 24 * HOUR + 7 * HOUR)  # a whole day back: 07:00 yesterday
        await clock.advance(HOUR + 60)  # "yesterday's" 08:00 follows the corrected clock
        assert machine.state == "lit"
    assert recorder.transitions() == [
        ("turn_on", "dark", "lit"),
        ("turn_off", "lit", "dark"),
        ("turn_on", "dark", "lit"),
    ]


# -- payload, text, corpus -----------------------------------------------------------------


async def test_published_state_payload_and_text(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'duration: 1h\ntimezone: UTC\nschedules: ["0 8 * * *"]')
    clock = FakeClock(start=THURSDAY)
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(8 * HOUR)
        await clock.advance(60)
        assert watcher(machine).status.next_run == pytest.approx(clock.monotonic() + 24 * HOUR - 60)
    [state] = recorder.states("sched")
    assert state.payload == {
        "protocol": "io.choria.machine.watcher.schedule.v1.state",
        "identity": "node1.example.net",
        "id": machine.instance_id,
        "version": "1.0.0",
        "timestamp": int(THURSDAY + 8 * HOUR),
        "type": "schedule",
        "machine": "lights",
        "name": "sched",
        "state": "on",
    }
    assert state.text == "node1.example.net lights#sched schedule state: on"
    assert ScheduleWatcher.describe_payload(state.payload) == state.text


async def test_interval_is_ignored_with_a_warning(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'schedules: ["0 8 * * *"]', extra="interval: 1h")
    assert problems(directory) == ["warning: interval is ignored by schedule watchers"]


def test_corpus_fragment_as_a_full_manifest(tmp_path: Path) -> None:
    corpus = CORPUS / "fragments/docs-schedule-watcher.yaml"
    fragment = textwrap.indent(textwrap.dedent(corpus.read_text()), "  ")
    manifest = (
        "name: scheduled\nversion: 1.0.0\ninitial_state: switched_off\n"
        "transitions:\n"
        "  - name: start\n    from: [switched_off, switched_on]\n    destination: switched_on\n"
        "  - name: stop\n    from: [switched_off, switched_on]\n    destination: switched_off\n"
        f"watchers:\n{fragment}"
    )
    directory = tmp_path / "scheduled"
    directory.mkdir()
    (directory / "machine.yaml").write_text(manifest)
    assert problems(directory) == ["warning: interval is ignored by schedule watchers"]
    machine = make_machine(directory)
    machine.build_watchers()
    found = watcher(machine)
    assert found.duration == HOUR and found.splay == 60.0
    assert [s.expression for s in found.schedules] == [
        "0 8 * * *",
        "0 12 * * *",
        "0 17 * * *",
        "0 20 * * SAT,SUN",
    ]


async def test_stopping_during_a_window_leaves_no_timers(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path, 'duration: 1h\nstart_splay: 20m\ntimezone: UTC\nschedules: ["0 8 * * *"]'
    )
    clock = FakeClock(start=THURSDAY + 8 * HOUR - 1)
    machine = make_machine(directory, clock=clock)
    async with running(machine):
        await clock.advance(2)  # the window opened, sleeping its splay
        assert clock.pending() >= 3  # scheduler, turn on, turn off
    assert clock.pending() == 0
