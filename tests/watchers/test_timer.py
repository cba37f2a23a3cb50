"""The timer watcher on a fake clock."""

from __future__ import annotations

import logging
import random
import textwrap
from pathlib import Path

import pytest

from machinery.core.clock import FakeClock
from machinery.core.machine import Machine
from machinery.watchers.registry import check_manifest
from machinery.watchers.timer import SUCCESS_REFUSED, TimerWatcher
from tests.support import CORPUS, Recorder, make_machine, running, write_machine

HOUR = 3600.0

MACHINE = """\
name: maint
version: 1.0.0
initial_state: normal
transitions:
  - name: maintenance
    from: [normal]
    destination: maintenance
  - name: extend
    from: [maintenance]
    destination: extended
  - name: shorten
    from: [extended]
    destination: maintenance
  - name: end
    from: [maintenance, extended]
    destination: normal
watchers:
  - name: expire
    type: timer
    state_match: [maintenance, extended]
    fail_transition: end
{extra}    properties:
{properties}
"""


def machine_dir(tmp_path: Path, properties: str = "timer: 2h", extra: str = "") -> Path:
    body = textwrap.indent(textwrap.dedent(properties).strip(), "      ")
    extra = textwrap.indent(textwrap.dedent(extra).strip(), "    ") + "\n" if extra else ""
    return write_machine(tmp_path / "maint", MACHINE.format(properties=body, extra=extra))


def watcher(machine: Machine) -> TimerWatcher:
    if not machine.watchers:
        machine.build_watchers()
    found = machine.watchers[0]
    assert isinstance(found, TimerWatcher)
    return found


def states(recorder: Recorder) -> list[tuple[int, str]]:
    return [(s.payload["timestamp"], s.payload["state"]) for s in recorder.states("expire")]


def problems(directory: Path) -> list[str]:
    _, diagnostics = check_manifest(directory)
    return [str(d).split(": ", 1)[1] for d in diagnostics]


async def test_expiry_fires_fail_transition(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000)
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(HOUR)
        assert recorder.events == []  # not active in normal: nothing at start
        await machine.transition("maintenance")
        await clock.settle()
        assert watcher(machine).running
        assert watcher(machine).status.next_run == clock.monotonic() + 2 * HOUR
        await clock.advance(2 * HOUR - 0.001)
        assert machine.state == "maintenance"
        await clock.advance(0.001)
        assert machine.state == "normal"
        assert not watcher(machine).running
        assert watcher(machine).status.next_run is None
        await clock.advance(10 * HOUR)
    assert recorder.transitions() == [
        ("maintenance", "normal", "maintenance"),
        ("end", "maintenance", "normal"),
    ]
    assert states(recorder) == [(1_003_600, "running"), (1_010_800, "stopped")]
    assert watcher(machine).status.outcomes == {"running": 1, "stopped": 1}
    assert clock.pending() == 0


async def test_moving_between_matching_states_restarts_the_timer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(start=1_000_000)
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    caplog.set_level(logging.INFO, logger="machinery.machine")
    async with running(machine):
        await clock.settle()
        await machine.transition("maintenance")
        await clock.advance(HOUR)
        await machine.transition("extend")
        await clock.advance(HOUR + 1800)
        await machine.transition("shorten")
        await clock.advance(2 * HOUR - 1)
        assert machine.state == "maintenance"
        await clock.advance(1)
        assert machine.state == "normal"
    assert states(recorder) == [
        (1_000_000, "running"),
        (1_003_600, "running"),
        (1_009_000, "running"),
        (1_016_200, "stopped"),
    ]
    assert "maint#expire: Timer was running, resetting to 2h0m0s" in caplog.text
    assert clock.pending() == 0


async def test_leaving_the_states_stops_the_timer_without_a_transition(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(start=1_000_000)
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    caplog.set_level(logging.INFO, logger="machinery.machine")
    async with running(machine):
        await clock.settle()
        await machine.transition("maintenance")
        await clock.advance(HOUR)
        await machine.transition("end")
        await clock.settle()
        assert not watcher(machine).running
        assert clock.pending() == 0
        await clock.advance(5 * HOUR)
    assert recorder.transitions() == [
        ("maintenance", "normal", "maintenance"),
        ("end", "maintenance", "normal"),
    ]
    assert states(recorder) == [(1_000_000, "running"), (1_003_600, "stopped")]
    assert "maint#expire: Stopping timer early on state transition to normal" in caplog.text


async def test_starts_at_start_when_in_a_matching_state(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000)
    recorder = Recorder()
    machine = make_machine(
        machine_dir(tmp_path, "timer: 90s"),
        clock=clock,
        recorder=recorder,
        initial_state="extended",
    )
    async with running(machine):
        await clock.advance(89)
        assert states(recorder) == [(1_000_000, "running")]
        await clock.advance(1)
        assert machine.state == "normal"
    assert recorder.transitions() == [("end", "extended", "normal")]


async def test_stopping_the_machine_cancels_the_timer(tmp_path: Path) -> None:
    clock = FakeClock()
    machine = make_machine(machine_dir(tmp_path), clock=clock, initial_state="maintenance")
    async with running(machine):
        await clock.advance(10)
        assert clock.pending() == 1
    assert clock.pending() == 0
    # close() alone also releases it
    other = make_machine(machine_dir(tmp_path / "b"), clock=clock, initial_state="maintenance")
    timer = watcher(other)
    timer._start()
    assert clock.pending() == 1
    timer.close()
    assert clock.pending() == 0 and not timer.running


async def test_splay_picks_one_random_timer_below_the_setting(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000)
    recorder = Recorder()
    machine = make_machine(
        machine_dir(tmp_path, "timer: 1h\nsplay: true"), clock=clock, recorder=recorder, seed=3
    )
    chosen = watcher(machine).timer
    assert chosen == random.Random(3).random() * HOUR
    assert 0 <= chosen < HOUR
    async with running(machine):
        await clock.settle()
        for _ in range(2):
            await machine.transition("maintenance")
            await clock.advance(chosen - 0.01)
            assert machine.state == "maintenance"
            await clock.advance(0.02)
            assert machine.state == "normal"
    assert watcher(machine).timer == chosen  # the same value every time
    [first, *_] = recorder.states("expire")
    assert first.payload["timer"] == round(chosen * 1e9)


async def test_published_payload_and_text(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000)
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path, "timer: 1h30m"), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.settle()
        await machine.transition("maintenance")
        await clock.advance(1)
    [state] = recorder.states("expire")
    assert state.payload == {
        "protocol": "io.choria.machine.watcher.timer.v1.state",
        "identity": "node1.example.net",
        "id": machine.instance_id,
        "version": "1.0.0",
        "timestamp": 1_000_000,
        "type": "timer",
        "machine": "maint",
        "name": "expire",
        "state": "running",
        "timer": 5_400_000_000_000,
    }
    assert state.text == "node1.example.net timer maint#expire state: running with 1h30m0s timer"
    assert TimerWatcher.describe_payload({**state.payload, "timer": 1_500_000_000}) == (
        "node1.example.net timer maint#expire state: running with 1.5s timer"
    )


async def test_short_or_missing_timers_run_for_one_second(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "timer: 200ms")
    assert problems(directory) == ["warning: timer 200ms is less than 1s; it runs for 1s"]
    assert watcher(make_machine(directory)).timer == 1.0
    directory = machine_dir(tmp_path, "splay: false")
    assert problems(directory) == ["warning: timer is not set; it runs for 1s"]
    clock = FakeClock()
    machine = make_machine(directory, clock=clock, initial_state="maintenance")
    async with running(machine):
        await clock.advance(0.999)
        assert machine.state == "maintenance"
        await clock.advance(0.001)
        assert machine.state == "normal"


def test_success_transition_is_refused(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, extra="success_transition: end")
    assert problems(directory) == [SUCCESS_REFUSED]
    assert SUCCESS_REFUSED == (
        "timer watcher does not support success events; use fail_transition, which fires "
        "when the timer expires"
    )


def test_corpus_fragment_uses_success_transition_and_is_refused(tmp_path: Path) -> None:
    corpus = CORPUS / "fragments/docs-timer-watcher.yaml"
    fragment = textwrap.indent(textwrap.dedent(corpus.read_text()), "  ")
    manifest = (
        "name: override\nversion: 1.0.0\ninitial_state: normal\n"
        "transitions:\n"
        "  - name: override\n    from: [normal]\n    destination: 2hours_off\n"
        "  - name: override_ends\n    from: [2hours_off]\n    destination: normal\n"
        f"watchers:\n{fragment}"
    )
    directory = tmp_path / "override"
    directory.mkdir()
    (directory / "machine.yaml").write_text(manifest)
    _, diagnostics = check_manifest(directory)
    assert [(d.position.line, d.message) for d in diagnostics] == [
        (12, "a timer without fail_transition only reports its state when it expires"),
        (14, SUCCESS_REFUSED),
    ]
    fixed = directory / "machine.yaml"
    fixed.write_text(manifest.replace("success_transition", "fail_transition"))
    assert problems(directory) == []


def test_interval_is_ignored_with_a_warning(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, extra="interval: 1m")
    assert problems(directory) == ["warning: interval is ignored by timer watchers"]


def test_no_fail_transition_is_a_warning(tmp_path: Path) -> None:
    text = MACHINE.replace("    fail_transition: end\n", "").format(
        properties="      timer: 1h", extra=""
    )
    directory = write_machine(tmp_path / "bare", text)
    assert problems(directory) == [
        "warning: a timer without fail_transition only reports its state when it expires"
    ]


async def test_an_expiry_that_raced_a_restart_is_ignored(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.settle()
        await machine.transition("maintenance")
        await clock.advance(HOUR)
        timer = watcher(machine)
        stale = timer._generation
        await machine.transition("extend")  # restarts: the old timer's expiry no longer counts
        await clock.settle()
        timer._on_expiry(stale)
        await clock.settle()
        assert machine.state == "extended" and timer.running
        await clock.advance(2 * HOUR)
        assert machine.state == "normal"
    assert [s.payload["state"] for s in recorder.states("expire")] == [
        "running",
        "running",
        "stopped",
    ]
