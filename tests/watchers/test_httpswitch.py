"""The httpswitch watcher: following states, switching over the API, the node registry."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from machinery.core.clock import FakeClock
from machinery.core.machine import Machine
from machinery.core.notifications import TransitionNotification
from machinery.watchers.httpswitch import (
    REGISTRY_KEY,
    HttpSwitchRegistry,
    HttpSwitchWatcher,
    SwitchError,
    home_assistant_state,
    parse_home_assistant_body,
)
from machinery.watchers.registry import check_manifest
from tests.support import Recorder, make_machine, make_node, running, write_machine

MACHINE = """\
name: heater
version: 1.0.0
initial_state: idle
transitions:
  - name: switch_on
    from: [idle, heating]
    destination: heating
  - name: switch_off
    from: [idle, heating]
    destination: idle
  - name: lockout
    from: [idle, heating]
    destination: locked
  - name: unlock
    from: [locked]
    destination: idle
  - name: service
    from: [idle, heating]
    destination: servicing
  - name: serviced
    from: [servicing]
    destination: idle
watchers:
  - name: switch
    type: httpswitch
    state_match: [idle, heating, locked]
    success_transition: switch_on
    fail_transition: switch_off
    properties:
{properties}
"""

PROPERTIES = """\
on_when: [heating]
off_when: [idle]
disable_when: [locked]
annotations:
  room: kitchen
"""


def machine_dir(tmp_path: Path, properties: str = PROPERTIES) -> Path:
    body = textwrap.indent(textwrap.dedent(properties).strip(), "      ")
    return write_machine(tmp_path / "heater", MACHINE.format(properties=body))


def switch(machine: Machine) -> HttpSwitchWatcher:
    if not machine.watchers:
        machine.build_watchers()
    found = machine.watchers[0]
    assert isinstance(found, HttpSwitchWatcher)
    return found


def registry(machine: Machine) -> HttpSwitchRegistry:
    found = machine.node.service(REGISTRY_KEY)
    assert isinstance(found, HttpSwitchRegistry)
    return found


def story(recorder: Recorder) -> list[str]:
    result = []
    for event in recorder.events:
        if isinstance(event, TransitionNotification):
            result.append(f"{event.transition}->{event.to_state}")
        else:
            result.append(f"status={event.payload['status']}")
    return result


def problems(directory: Path) -> list[str]:
    _, diagnostics = check_manifest(directory)
    return [str(d).split(": ", 1)[1] for d in diagnostics]


async def test_follows_states_and_switches_over_the_api(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.settle()
        assert story(recorder) == ["status=off"]  # at start: idle is in off_when
        found = registry(machine).get("heater", "switch")
        assert found is switch(machine)
        assert await found.set_switch(True) is True
        assert machine.state == "heating"
        assert await found.set_switch(False) is False
        assert machine.state == "idle"
        await machine.transition("switch_on")  # a state change from elsewhere
        await clock.settle()
        assert found.is_on
    assert story(recorder) == [
        "status=off",
        "status=on",  # the request
        "switch_on->heating",
        "status=on",  # heating is in on_when
        "status=off",
        "switch_off->idle",
        "status=off",
        "switch_on->heating",
        "status=on",  # following the machine fires nothing
    ]
    assert switch(machine).status.outcomes == {"off": 3, "on": 3}


async def test_answers_the_real_state_after_the_action(tmp_path: Path) -> None:
    # Turning on leads to heating, which this switch reports as off.
    directory = machine_dir(tmp_path, "on_when: []\noff_when: [heating, idle]")
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.settle()
        assert await switch(machine).set_switch(True) is False
        assert switch(machine).switch_status == "off"
    assert story(recorder) == ["status=off", "status=on", "switch_on->heating", "status=off"]


async def test_refused_while_disabled_or_inactive(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.settle()
        await machine.transition("lockout")
        for on in (True, False):
            with pytest.raises(SwitchError) as info:
                await switch(machine).set_switch(on)
            assert info.value.message == str(info.value) == "watcher is disabled"
        await machine.transition("unlock")
        await clock.settle()
        await machine.transition("service")
        with pytest.raises(SwitchError, match=r"^watcher is not in an active state$"):
            await switch(machine).set_switch(True)
        with pytest.raises(SwitchError, match=r"^switch is not in an active state$"):
            await switch(machine).set_switch(False)
        assert machine.state == "servicing"
        await clock.settle()
    assert story(recorder) == [
        "status=off",
        "lockout->locked",
        "unlock->idle",
        "status=off",
        "service->servicing",
    ]


async def test_inactive_at_start_publishes_nothing_until_a_state_change(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(
        machine_dir(tmp_path), clock=clock, recorder=recorder, initial_state="servicing"
    )
    async with running(machine):
        await clock.settle()
        assert recorder.events == []
        assert switch(machine).describe_switch()["status"] == "unknown"
        await machine.transition("serviced")
        await clock.settle()
    assert story(recorder) == ["serviced->idle", "status=off"]


async def test_a_transition_that_cannot_fire_leaves_the_requested_status(tmp_path: Path) -> None:
    text = MACHINE.replace("    success_transition: switch_on\n", "").format(
        properties=textwrap.indent(PROPERTIES, "      ").rstrip()
    )
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(write_machine(tmp_path / "heater", text), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.settle()
        assert await switch(machine).set_switch(True) is True
        assert machine.state == "idle"
    assert story(recorder) == ["status=off", "status=on"]


async def test_describe_switch_payload_and_text(tmp_path: Path) -> None:
    clock = FakeClock(start=1_800_000_000)
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.settle()
        await switch(machine).set_switch(True)
        description = switch(machine).describe_switch()
    detail = {
        "protocol": "io.choria.machine.watcher.httpswitch.v1.state",
        "identity": "node1.example.net",
        "id": machine.instance_id,
        "version": "1.0.0",
        "timestamp": 1_800_000_000,
        "type": "httpswitch",
        "machine": "heater",
        "name": "switch",
        "status": "on",
        "is_on": True,
        "annotations": {"room": "kitchen"},
    }
    assert description == {"is_on": True, "is_off": False, "status": "on", "detail": detail}
    last = recorder.states("switch")[-1]
    assert last.payload == detail
    assert last.text == "node1.example.net heater#switch previous: on"
    assert HttpSwitchWatcher.describe_payload(detail) == last.text
    assert home_assistant_state(switch(machine)) == "ON"


async def test_annotations_are_never_null_and_always_text(tmp_path: Path) -> None:
    machine = make_machine(machine_dir(tmp_path, "on_when: [heating]"))
    assert switch(machine).current_state().payload["annotations"] == {}
    machine = make_machine(
        machine_dir(tmp_path, "annotations:\n  enabled: true\n  floor: 2\n  name: x")
    )
    assert switch(machine).current_state().payload["annotations"] == {
        "enabled": "true",
        "floor": "2",
        "name": "x",
    }


async def test_registered_while_running_only(tmp_path: Path) -> None:
    clock = FakeClock()
    node = make_node(clock=clock)
    machine = make_machine(machine_dir(tmp_path), node=node)
    shared = node.shared(REGISTRY_KEY, HttpSwitchRegistry)
    assert shared.get("heater", "switch") is None
    async with running(machine):
        await clock.settle()
        assert list(shared) == [("heater", "switch")] and len(shared) == 1
        assert shared.get("heater", "other") is None
        assert shared.get("other", "switch") is None
    assert shared.get("heater", "switch") is None and len(shared) == 0
    # close() unregisters too, but only the watcher that is registered
    watcher = switch(machine)
    shared.register("heater", "switch", watcher)
    stranger = switch(make_machine(machine_dir(tmp_path / "b"), node=node))
    stranger.close()
    assert shared.get("heater", "switch") is watcher
    watcher.close()
    assert shared.get("heater", "switch") is None


def test_home_assistant_helpers(tmp_path: Path) -> None:
    assert parse_home_assistant_body(b"ON") is True
    assert parse_home_assistant_body(b"ON\n") is True
    assert parse_home_assistant_body(b"ONWARD") is True  # Choria only looks at the prefix
    assert parse_home_assistant_body(b"OFF") is False
    assert parse_home_assistant_body(b"on") is False
    assert parse_home_assistant_body(b"") is False
    watcher = switch(make_machine(machine_dir(tmp_path)))
    assert home_assistant_state(watcher) == "OFF"  # unknown is not on


def test_states_are_checked_at_load(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path,
        """
        on_when: [heatin, switch_on]
        off_when: [idle, heating]
        disable_when: [nowhere]
        """,
    )
    _, diagnostics = check_manifest(directory)
    assert [(d.position.line, str(d.severity), d.message) for d in diagnostics] == [
        (30, "error", "invalid state 'heatin' in on_when; did you mean 'heating'?"),
        (
            30,
            "error",
            "invalid state 'switch_on' in on_when; 'switch_on' is a transition, not a state",
        ),
        (32, "error", "invalid state 'nowhere' in disable_when"),
    ]
    directory = machine_dir(tmp_path, "on_when: [heating]\noff_when: [idle, heating]")
    assert problems(directory) == [
        "warning: state 'heating' is in both on_when and off_when; on_when wins"
    ]
    directory = machine_dir(tmp_path, "on_when: heating\noff_when: idle")  # lone names
    assert problems(directory) == []
