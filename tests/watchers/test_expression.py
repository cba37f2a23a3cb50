"""The expression watcher: outcomes, edge triggering, its environment, load-time errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from machinery.core.clock import FakeClock
from machinery.spec.diagnostics import Position, Severity
from machinery.watchers.expression import ExpressionWatcher
from machinery.watchers.registry import check_manifest
from tests.support import Recorder, make_machine, running, write_machine

MACHINE = """\
name: switch
version: 1.0.0
initial_state: "off"
transitions:
  - name: switch_on
    from: ["off"]
    destination: "on"
  - name: switch_off
    from: ["on"]
    destination: "off"
  - name: pause
    from: ["on", "off"]
    destination: paused
  - name: resume
    from: [paused]
    destination: "off"
watchers:
  - name: check
    type: expression
    success_transition: switch_on
    fail_transition: switch_off
{extra}    properties:
{properties}
"""

WANT = """\
success_when: data.want == "on"
fail_when: data.want == "off"
"""


def machine_dir(tmp_path: Path, properties: str = WANT, extra: str = "interval: 10s") -> Path:
    body = "\n".join("      " + line for line in properties.strip().splitlines())
    lines = "".join(f"    {line}\n" for line in extra.strip().splitlines())
    return write_machine(tmp_path / "switch", MACHINE.format(extra=lines, properties=body))


def outcomes(recorder: Recorder) -> list[str]:
    return recorder.outcomes("check")


async def test_success_fires_once_while_the_expression_stays_true(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(10)
        assert outcomes(recorder) == []  # no_match publishes nothing
        assert machine.watchers[0].status.outcome == "no_match"
        machine.data.put("want", "on")
        await clock.advance(10)
        # The transition is a state change, which evaluates again: still true, published, but
        # not fired a second time.
        assert outcomes(recorder) == ["success_when", "success_when"]
        assert recorder.transitions() == [("switch_on", "off", "on")]
        # Moved back by hand while the expression is still true: the edge was already seen.
        await machine.transition("switch_off")
        await clock.advance(30)
        assert machine.state == "off"
        assert outcomes(recorder) == ["success_when"] * 6
        assert recorder.transitions() == [("switch_on", "off", "on"), ("switch_off", "on", "off")]


async def test_success_fires_again_after_no_match(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    machine.data.put("want", "on")
    async with running(machine):
        await clock.advance(10)
        await machine.transition("switch_off")
        machine.data.put("want", "neither")
        await clock.advance(10)
        assert machine.watchers[0].status.outcome == "no_match"
        assert machine.state == "off"
        machine.data.put("want", "on")
        await clock.advance(10)
        assert machine.state == "on"
        assert names(recorder) == ["switch_on", "switch_off", "switch_on"]


async def test_failed_when_is_edge_triggered_too(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(
        machine_dir(tmp_path), clock=clock, recorder=recorder, initial_state="on"
    )
    machine.data.put("want", "off")
    async with running(machine):
        await clock.advance(10)
        assert recorder.transitions() == [("switch_off", "on", "off")]
        assert outcomes(recorder) == ["failed_when", "failed_when"]
        await clock.advance(20)
        assert outcomes(recorder) == ["failed_when"] * 4
        assert len(recorder.transitions()) == 1
        # success_when is checked first and wins when both are true.
        machine.data.put("want", "on")
        await clock.advance(10)
        assert recorder.transitions()[-1] == ("switch_on", "off", "on")
        assert outcomes(recorder)[-2:] == ["success_when", "success_when"]


async def test_re_entering_a_matching_state_fires_again(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, extra='interval: 10s\nstate_match: ["off"]')
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    machine.data.put("want", "on")
    async with running(machine):
        await clock.advance(10)
        assert machine.state == "on"
        # In "on" the watcher is skipped: nothing published, but the edge is forgotten.
        assert outcomes(recorder) == ["success_when"]
        assert machine.watchers[0].status.outcome == "skipped"
        await clock.advance(10)
        assert machine.watchers[0].status.outcomes == {"success_when": 1, "skipped": 2}
        await machine.transition("switch_off")
        await clock.settle()
        # Back in "off": the state change evaluates at once and fires again.
        assert machine.state == "on"
        assert names(recorder) == ["switch_on", "switch_off", "switch_on"]
        assert outcomes(recorder) == ["success_when", "success_when"]


async def test_not_evaluated_at_start_and_default_interval_is_ten_seconds(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path, extra=""), clock=clock, recorder=recorder)
    machine.data.put("want", "on")
    async with running(machine):
        await clock.advance(9.9)
        assert machine.watchers[0].status.runs == 0
        assert outcomes(recorder) == []
        await clock.advance(0.1)
        assert outcomes(recorder) == ["success_when", "success_when"]
        assert machine.watchers[0].status.runs == 2


async def test_data_changes_are_picked_up_on_the_next_tick(tmp_path: Path) -> None:
    properties = "success_when: data.temp != nil && data.temp < 20"
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path, properties), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(10)
        machine.data.put("temp", 25)
        await clock.advance(10)
        assert machine.watchers[0].status.outcomes == {"no_match": 2}
        machine.data.put("temp", 15)
        await clock.advance(5)
        assert machine.state == "off"  # not before the tick
        await clock.advance(5)
        assert machine.state == "on"


async def test_published_state_and_text(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    machine.data.put("want", "on")
    async with running(machine):
        await clock.advance(10)
    state = recorder.states("check")[0]
    assert state.payload == {
        "protocol": "io.choria.machine.watcher.expression.v1.state",
        "identity": "node1.example.net",
        "id": machine.instance_id,
        "version": "1.0.0",
        "timestamp": int(clock.now()),
        "type": "expression",
        "machine": "switch",
        "name": "check",
        "previous_outcome": "success_when",
    }
    assert state.text == "node1.example.net switch#check previous: success_when"
    assert ExpressionWatcher.describe_payload(state.payload) == state.text


async def test_facts_are_a_map_and_get_fact_and_identity_work(tmp_path: Path) -> None:
    properties = (
        "success_when: |\n"
        "  facts.os.family == 'RedHat' && get_fact('os.release.major') == 9 &&\n"
        "  get_fact('nope.x') == nil && facts.nope?.x == nil &&\n"
        "  identity == 'web1.example.net' && 'web' in facts.roles"
    )
    clock = FakeClock()
    recorder = Recorder()
    facts = {"os": {"family": "RedHat", "release": {"major": 9}}, "roles": ["web", "db"]}
    machine = make_machine(
        machine_dir(tmp_path, properties),
        clock=clock,
        recorder=recorder,
        facts=facts,
        identity="web1.example.net",
    )
    async with running(machine):
        await clock.advance(10)
        assert machine.state == "on"
        assert machine.watchers[0].status.last_error is None


async def test_get_fact_of_the_spec_example(tmp_path: Path) -> None:
    properties = "success_when: get_fact('fqdn') == 'x'"
    clock = FakeClock()
    machine = make_machine(machine_dir(tmp_path, properties), clock=clock, facts={"fqdn": "x"})
    async with running(machine):
        await clock.advance(10)
        assert machine.state == "on"


async def test_runtime_errors_publish_error_and_fire_nothing(tmp_path: Path) -> None:
    properties = "success_when: data.config.enabled == true"
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path, properties), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(20)
        assert outcomes(recorder) == ["error", "error"]
        assert recorder.transitions() == []
        watcher = machine.watchers[0]
        assert watcher.status.last_error == (
            "success_when: cannot fetch enabled from <nil> (at character 13)"
        )
        # Fixing the data: success_when follows an error, so it fires.
        machine.data.put("config", {"enabled": True})
        await clock.advance(10)
        assert machine.state == "on"
        assert outcomes(recorder) == ["error", "error", "success_when", "success_when"]
        assert watcher.status.last_error is None


async def test_non_bool_result_is_an_error(tmp_path: Path) -> None:
    properties = "success_when: data.level"
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path, properties), clock=clock, recorder=recorder)
    machine.data.put("level", 5)
    async with running(machine):
        await clock.advance(10)
        assert outcomes(recorder) == ["error"]
        assert machine.watchers[0].status.last_error == (
            "success_when: expected bool, got int (at character 1)"
        )
        machine.data.put("level", True)
        await clock.advance(10)
        assert machine.state == "on"


async def test_fail_when_error_after_success_when_false(tmp_path: Path) -> None:
    properties = "success_when: data.a == 1\nfail_when: data.b < 1"
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path, properties), clock=clock, recorder=recorder)
    machine.data.put("a", 2)
    async with running(machine):
        await clock.advance(10)
        assert outcomes(recorder) == ["error"]
        assert machine.watchers[0].status.last_error == (
            "fail_when: invalid operation: < (mismatched types <nil> and int) (at character 8)"
        )


async def test_skipped_outside_matching_states_publishes_nothing(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, extra="interval: 10s\nstate_match: [paused]")
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    machine.data.put("want", "on")
    async with running(machine):
        await clock.advance(30)
        watcher = machine.watchers[0]
        assert watcher.status.outcomes == {"skipped": 3}
        assert isinstance(watcher, ExpressionWatcher)
        assert watcher.previous_outcome == "skipped"
        assert outcomes(recorder) == []
        assert recorder.transitions() == []


async def test_only_fail_when(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(
        machine_dir(tmp_path, "fail_when: len(data.errors ?? []) > 2"),
        clock=clock,
        recorder=recorder,
        initial_state="on",
    )
    machine.data.put("errors", ["a", "b"])
    async with running(machine):
        await clock.advance(10)
        assert machine.watchers[0].status.outcome == "no_match"
        machine.data.put("errors", ["a", "b", "c"])
        await clock.advance(10)
        assert recorder.transitions() == [("switch_off", "on", "off")]


# -- load-time checks ---------------------------------------------------------------------


def write_manifest(tmp_path: Path, properties: str, extra: str = "interval: 10s") -> Path:
    directory = machine_dir(tmp_path, properties, extra)
    return directory / "machine.yaml"


def diagnostics_of(path: Path) -> list[tuple[Position, str]]:
    manifest, diagnostics = check_manifest(path)
    errors = [d for d in diagnostics if d.severity is Severity.ERROR]
    assert (manifest is None) == bool(errors)
    return [(d.position, d.message) for d in errors]


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_valid_manifest_loads(tmp_path: Path) -> None:
    assert diagnostics_of(write_manifest(tmp_path, WANT)) == []


def test_syntax_error_points_inside_a_plain_scalar(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "success_when: data.temp < < 20")
    line = line_of(path, "success_when")
    # "      success_when: " is 20 characters; the second "<" is at offset 12 of the value.
    assert diagnostics_of(path) == [
        (Position(line, 21 + 12), "invalid success_when expression: unexpected token '<'")
    ]


def test_syntax_error_points_inside_a_quoted_scalar(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "success_when: data.ok\nfail_when: \"data.x == 'a' &&\"")
    line = line_of(path, "fail_when")
    # '      fail_when: ' is 17 characters, then the quote; the end of the text is offset 16.
    assert diagnostics_of(path) == [
        (Position(line, 18 + 1 + 16), "invalid fail_when expression: unexpected end of expression")
    ]


def test_error_on_the_second_line_of_a_block_scalar(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "success_when: |\n  data.a == 1 &&\n  data.b =! 2")
    line = line_of(path, "data.b")
    column = path.read_text().splitlines()[line - 1].index("=!") + 1
    assert diagnostics_of(path) == [
        (Position(line, column), "invalid success_when expression: unexpected token '='")
    ]


def test_unknown_names_suggest_the_known_ones(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "success_when: dta.temp < 20\nfail_when: get_facts('x') == 1")
    assert diagnostics_of(path) == [
        (
            Position(line_of(path, "success_when"), 21),
            "invalid success_when expression: unknown name 'dta'; did you mean 'data'?",
        ),
        (
            Position(line_of(path, "fail_when"), 18),
            "invalid fail_when expression: unknown name 'get_facts'; did you mean 'get_fact'?",
        ),
    ]


def test_an_expression_that_cannot_be_bool_is_refused(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "success_when: data.count + 1")
    assert diagnostics_of(path) == [
        (
            Position(line_of(path, "success_when"), 21),
            "invalid success_when expression: expected bool, but the expression gives "
            "a number, string or array",
        )
    ]


def test_invalid_regex_is_reported_at_load(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "success_when: identity matches 'web[0-9'")
    [(position, message)] = diagnostics_of(path)
    assert position == Position(line_of(path, "success_when"), 21 + 17)
    assert message.startswith("invalid success_when expression: invalid regular expression")


@pytest.mark.parametrize("properties", ["{}", "success_when: ''\nfail_when: ''"])
def test_one_expression_is_required(tmp_path: Path, properties: str) -> None:
    path = write_manifest(tmp_path, properties)
    messages = [message for _, message in diagnostics_of(path)]
    assert messages == ["success_when or fail_when is required"]


def test_unknown_property_is_a_warning_as_choria_ignores_it(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "success_when: data.ok\nsucess_when: data.x")
    assert diagnostics_of(path) == []
    manifest, _ = check_manifest(path)
    assert manifest is not None
    [warning] = manifest.warnings
    assert warning.position.line == line_of(path, "sucess_when")
    assert "unknown property 'sucess_when' is ignored; did you mean 'success_when'?" in str(warning)


def test_interval_minimum_is_500ms(tmp_path: Path) -> None:
    assert diagnostics_of(write_manifest(tmp_path, WANT, extra="interval: 500ms")) == []
    path = write_manifest(tmp_path, WANT, extra="interval: 100ms")
    [(position, message)] = diagnostics_of(path)
    assert position.line == line_of(path, "interval")
    assert "500ms" in message


def test_the_documented_example_manifest_is_valid(tmp_path: Path) -> None:
    guide = Path(__file__).resolve().parents[2] / "docs" / "watchers" / "expression.md"
    text = guide.read_text()
    blocks = text.split("```yaml\n")[1:]
    assert blocks
    for index, block in enumerate(blocks):
        path = tmp_path / f"m{index}" / "machine.yaml"
        path.parent.mkdir()
        path.write_text(textwrap.dedent(block.split("```")[0]))
        assert diagnostics_of(path) == []


def names(recorder: Recorder) -> list[str]:
    return [t[0] for t in recorder.transitions()]


async def test_a_failing_get_fact_is_an_error(tmp_path: Path) -> None:
    properties = "success_when: get_fact('a.#(b==') == 1 || get_fact(1) == nil"
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(machine_dir(tmp_path, properties), clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(10)
        assert outcomes(recorder) == ["error"]
        error = machine.watchers[0].status.last_error
        assert error is not None
        assert error.startswith("success_when: get_fact(): ")
        assert error.endswith("(at character 1)")


async def test_now_reads_the_node_clock(tmp_path: Path) -> None:
    # A backup older than a day is stale: decided on the fake clock, not the host's.
    properties = """\
success_when: now() - date(data.backup) < duration("24h")
fail_when: now() - date(data.backup) >= duration("24h")
"""
    clock = FakeClock(start=1_767_225_600.0)  # 2026-01-01T00:00:00Z
    machine = make_machine(machine_dir(tmp_path, properties), clock=clock)
    machine.data.put("backup", "2025-12-31T12:00:00Z")
    async with running(machine):
        await clock.advance(10)
        assert machine.state == "on"
        await clock.advance(12 * 3600)  # now 36 hours after the backup
        assert machine.state == "off"
