"""The machine runtime on a fake clock: FSM semantics, rate limiting, data, splay, hosts."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from machinery.agent.host import MachineGroup
from machinery.core.clock import FakeClock
from machinery.core.fsm import Outcome
from machinery.core.machine import MachineStatus
from tests.support import Recorder, make_machine, make_node, running, wait_until, write_machine

TWO_STATES = """\
name: lamp
version: 1.0.0
initial_state: "off"
splay_start: {splay}
transitions:
  - name: switch_on
    from: ["off"]
    destination: "on"
  - name: switch_off
    from: ["on"]
    destination: "off"
  - name: stay
    from: ["off", "on"]
    destination: "off"
watchers:
  - name: check
    type: exec
    state_match: ["on"]
    properties:
      command: /bin/true
"""


def lamp(tmp_path: Path, splay: int = 0) -> Path:
    return write_machine(tmp_path / "lamp", TWO_STATES.format(splay=splay))


async def test_transition_publishes_choria_shaped_notification(tmp_path: Path) -> None:
    recorder = Recorder()
    clock = FakeClock(start=1_700_000_000)
    machine = make_machine(lamp(tmp_path), clock=clock, recorder=recorder)
    result = await machine.transition("switch_on")
    assert result.outcome is Outcome.CHANGED
    [event] = recorder.events
    assert event.data() == {
        "protocol": "io.choria.machine.v1.transition",
        "identity": "node1.example.net",
        "id": machine.instance_id,
        "version": "1.0.0",
        "timestamp": 1_700_000_000,
        "machine": "lamp",
        "transition": "switch_on",
        "from_state": "off",
        "to_state": "on",
    }
    assert machine.state == "on"


async def test_self_transition_is_silent(tmp_path: Path) -> None:
    recorder = Recorder()
    machine = make_machine(lamp(tmp_path), recorder=recorder)
    result = await machine.transition("stay")
    assert result.outcome is Outcome.SELF and result.valid
    assert recorder.events == []


async def test_invalid_event_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    machine = make_machine(lamp(tmp_path), recorder=recorder)
    with caplog.at_level(logging.WARNING):
        result = await machine.transition("switch_off")
    assert result.outcome is Outcome.INVALID
    assert machine.state == "off"
    assert recorder.events == []
    assert "lamp#machine: Could not fire 'switch_off' event while in off" in caplog.text


async def test_rate_limiter_delays_fast_transitions_on_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    machine = make_machine(lamp(tmp_path), clock=clock, rate_limit=True)
    await machine.transition("switch_on")  # first one is free
    pending = asyncio.ensure_future(machine.transition("switch_off"))
    await clock.settle()
    assert not pending.done()  # sleeping 25ms +-50% on the fake clock
    await clock.advance(0.04)
    assert pending.done() and machine.state == "off"
    # Self-transitions count too: the third waits on the 50ms step.
    third = asyncio.ensure_future(machine.transition("stay"))
    await clock.advance(0.02)
    assert not third.done()
    await clock.advance(0.06)
    assert third.done()
    assert machine.rate_limiter.count == 3


async def test_events_invalid_in_the_current_state_are_neither_counted_nor_delayed(
    tmp_path: Path,
) -> None:
    # Spec 1.2: the limiter applies to transitions Can() allows; an invalid event is refused
    # at once, without a sleep and without growing the ladder.
    clock = FakeClock()
    machine = make_machine(lamp(tmp_path), clock=clock, rate_limit=True)
    await machine.transition("switch_on")
    assert machine.rate_limiter.count == 1
    waited = []
    for _ in range(5):
        invalid = asyncio.ensure_future(machine.transition("switch_on"))  # already on
        await clock.settle()
        if not invalid.done():  # let a wrongly delayed one finish, so the test fails cleanly
            waited.append(invalid)
            await clock.advance(10)
        assert invalid.result().outcome is Outcome.INVALID
    assert waited == [], "an invalid event waited on the rate limiter"
    assert machine.rate_limiter.count == 1
    assert machine.rate_limiter.total_delay == 0
    # The next valid one waits the second step of the ladder (25 ms +-50%), not a later one.
    pending = asyncio.ensure_future(machine.transition("switch_off"))
    await clock.settle()
    assert not pending.done()
    await clock.advance(0.0375)
    assert pending.done() and machine.state == "off"
    assert machine.rate_limiter.count == 2


async def test_splay_start_reports_starting_then_running(tmp_path: Path) -> None:
    clock = FakeClock()
    machine = make_machine(lamp(tmp_path, splay=30), clock=clock, seed=3)
    async with running(machine):
        await clock.settle()
        assert machine.status is MachineStatus.STARTING
        assert machine.start_time is None
        await clock.advance(30)
        assert machine.status is MachineStatus.RUNNING
        assert machine.start_time is not None
    assert machine.status is MachineStatus.STOPPED


async def test_each_load_gets_a_new_instance_id_and_keeps_data(tmp_path: Path) -> None:
    directory = lamp(tmp_path)
    first = make_machine(directory)
    first.data.put("answer", 42)
    second = make_machine(directory)
    assert first.instance_id != second.instance_id
    assert second.data.get("answer") == 42
    assert json.loads((directory / "machine_data.json").read_text()) == {"answer": 42}


async def test_corrupt_data_file_is_a_warning_and_an_empty_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = lamp(tmp_path)
    (directory / "machine_data.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        machine = make_machine(directory)
    assert machine.data.snapshot() == {}
    assert "Could not load data file, discarding" in caplog.text


async def test_status_dict_matches_choria_machine_state(tmp_path: Path) -> None:
    machine = make_machine(lamp(tmp_path))
    status = machine.status_dict()
    assert status["start_time"] == -62135596800
    assert status["available_transitions"] == ["stay", "switch_on"]
    assert status["scout"] is False
    assert set(status) == {
        "name",
        "version",
        "state",
        "path",
        "id",
        "start_time",
        "available_transitions",
        "scout",
    }


SUBSCRIBER = """\
name: follower
version: 1.0.0
initial_state: idle
transitions:
  - name: follow
    from: [idle]
    destination: following
    subscribe:
      - machine_name: lamp
        event: switch_on
watchers:
  - name: w
    type: exec
    state_match: [following]
    foreign_state_required:
      - machine_name: lamp
        state: "on"
    success_transition: follow
    properties:
      command: /bin/true
"""


async def test_subscriptions_and_foreign_states_across_machines(tmp_path: Path) -> None:
    recorder = Recorder()
    group = MachineGroup()
    node = make_node(recorder=recorder, host=group)
    lamp_machine = make_machine(lamp(tmp_path), node=node)
    follower = make_machine(write_machine(tmp_path / "follower", SUBSCRIBER), node=node)
    group.add(lamp_machine)
    group.add(follower)
    watcher_spec = follower.spec.watchers[0]
    assert not follower.should_watch(watcher_spec)
    await lamp_machine.transition("switch_on")
    await wait_until(lambda: follower.state == "following", what="subscription")
    assert follower.should_watch(watcher_spec)
    assert ("follow", "idle", "following") in recorder.transitions()
    await group.aclose()


ANNOUNCER = """\
name: announcer
version: 1.0.0
initial_state: a
transitions:
  - name: go
    from: [a]
    destination: b
watchers:
  - name: quiet
    type: exec
    state_match: [b]
    announce_interval: 1m
    properties:
      command: /bin/true
"""


async def test_announce_interval_publishes_state_whatever_the_machine_state(tmp_path: Path) -> None:
    recorder = Recorder()
    clock = FakeClock()
    machine = make_machine(
        write_machine(tmp_path / "announcer", ANNOUNCER), clock=clock, recorder=recorder
    )
    async with running(machine):
        await clock.advance(59)
        assert recorder.states() == []
        await clock.advance(1)
        await clock.advance(60)
    states = recorder.states("quiet")
    assert len(states) == 2
    assert states[0].payload["previous_outcome"] == "unknown"
    assert states[0].payload["timestamp"] == int(clock.now()) - 60
