"""Scenario files (``*.test.yaml``) and running them.

A scenario gives facts, data and a start state, then a script of steps: things that happen in the
world (a command's outcome, a file changing, time passing, a key-value update, a switch, another
machine's state) and expectations (the state, the transitions fired since the last expectation,
data, published events, the commands that would have run). See ``docs/testing-machines.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from machinery.lang.duration import DurationError, parse_duration
from machinery.simulation.engine import CommandOutcome, Simulation, SimulationError
from machinery.spec.diagnostics import Diagnostic, Position
from machinery.spec.validate import MANIFEST_NAME
from machinery.spec.yamlfile import load_yaml

__all__ = [
    "Coverage",
    "MachineCoverage",
    "ScenarioFile",
    "ScenarioResult",
    "load_scenario_file",
    "run_scenario_file",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ExecStep(_Model):
    watcher: str
    exit: int = 0
    output: str = ""
    once: bool = Field(False, description="only the next run; later runs go back to the default")


class FileStep(_Model):
    path: str
    write: str | None = None
    touch: bool = False
    remove: bool = False

    @model_validator(mode="after")
    def _one_action(self) -> FileStep:
        if sum((self.write is not None, self.touch, self.remove)) != 1:
            raise ValueError("a file step needs exactly one of write, touch, remove")
        return self


class KVStep(_Model):
    bucket: str
    key: str
    value: Any = None
    delete: bool = False


class SwitchStep(_Model):
    watcher: str
    on: bool


class MachineStep(_Model):
    name: str
    state: str
    event: str | None = None


class Expect(_Model):
    state: str | None = None
    transitions: list[str] | None = Field(
        None, description="events fired since the previous expectation, in order ([] = none)"
    )
    data: dict[str, Any] | None = Field(None, description="these keys have these values")
    data_absent: list[str] | None = None
    events: list[dict[str, Any]] | None = Field(
        None, description="watcher states published since the previous expectation (subsets)"
    )
    commands: list[list[str]] | None = Field(
        None, description="commands run since the previous expectation, with their arguments"
    )
    available: list[str] | None = None
    file: dict[str, str | None] | None = Field(None, description="path: content (null: absent)")


class Step(_Model):
    advance: str | None = None
    exec: ExecStep | None = None
    file: FileStep | None = None
    kv: KVStep | None = None
    switch: SwitchStep | None = None
    machine: MachineStep | None = None
    transition: str | None = None
    data: dict[str, Any] | None = None
    facts: dict[str, Any] | None = None
    expect: Expect | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a step is exactly one of {', '.join(type(self).model_fields)}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)


class Scenario(_Model):
    name: str
    facts: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    start: str | None = None
    identity: str = "simulation"
    commands: dict[str, ExecStep | dict[str, Any]] = Field(
        default_factory=dict, description="default outcome of each watcher's commands"
    )
    steps: list[Step]


class ScenarioDocument(_Model):
    machine: str = "."
    scenarios: list[Scenario]


@dataclass
class ScenarioFile:
    path: Path
    machine_dir: Path
    scenarios: list[Scenario]
    positions: dict[tuple[int, int], Position]  # (scenario, step) -> position


@dataclass
class ScenarioResult:
    file: Path
    name: str
    passed: bool
    seconds: float
    failure: str | None = None
    transitions: list[tuple[str, str]] = field(default_factory=list)  # (event, source state)
    states: set[str] = field(default_factory=set)


class ScenarioFileError(Exception):
    """A scenario file that cannot be read; carries diagnostics."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


def load_scenario_file(path: Path) -> ScenarioFile:
    """Read and check a scenario file (a single scenario or a ``scenarios:`` list)."""
    doc = load_yaml(path.read_text(), str(path))
    errors = [d for d in doc.diagnostics if d.is_error]
    if errors or doc.data is None:
        raise ScenarioFileError(
            errors or [Diagnostic(str(path), Position(), "empty scenario file")]
        )
    data = doc.data
    single = isinstance(data, dict) and "steps" in data
    if single:
        data = {
            "machine": data.pop("machine", "."),
            "scenarios": [{"name": path.name.removesuffix(".test.yaml"), **data}],
        }
    try:
        document = ScenarioDocument.model_validate(data)
    except ValidationError as exc:
        diagnostics = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            if single and loc[:2] == ("scenarios", 0):
                loc = loc[2:]
            where = ".".join(str(p) for p in loc[:-1] if p != "body")
            if error["type"] == "extra_forbidden":
                message = f"unknown key {loc[-1]!r}" + (f" in {where}" if where else "")
                diagnostics.append(Diagnostic(str(path), doc.key_position(loc), message))
            else:
                where = ".".join(str(p) for p in loc)
                diagnostics.append(
                    Diagnostic(str(path), doc.value_position(loc), f"{where}: {error['msg']}")
                )
        raise ScenarioFileError(diagnostics) from None
    prefix: tuple[Any, ...] = () if single else ("scenarios",)
    positions = {}
    for i, scenario in enumerate(document.scenarios):
        for j in range(len(scenario.steps)):
            loc = (*prefix, "steps", j) if single else (*prefix, i, "steps", j)
            positions[(i, j)] = doc.value_position(loc)
    machine_dir = (path.parent / document.machine).resolve()
    if not (machine_dir / MANIFEST_NAME).is_file():
        raise ScenarioFileError(
            [Diagnostic(str(path), Position(), f"no {MANIFEST_NAME} in {machine_dir}")]
        )
    return ScenarioFile(path, machine_dir, document.scenarios, positions)


class _Failure(Exception):
    pass


async def run_scenario_file(scenario_file: ScenarioFile) -> list[ScenarioResult]:
    """Run every scenario of a file, each in a fresh simulation."""
    results = []
    for index, scenario in enumerate(scenario_file.scenarios):
        results.append(await _run(scenario_file, index, scenario))
    return results


async def _run(scenario_file: ScenarioFile, index: int, scenario: Scenario) -> ScenarioResult:
    started = time.perf_counter()
    result = ScenarioResult(scenario_file.path, scenario.name, passed=False, seconds=0.0)
    try:
        async with Simulation.open(
            scenario_file.machine_dir,
            facts=scenario.facts,
            data=scenario.data,
            start=scenario.start,
            identity=scenario.identity,
        ) as sim:
            result.states.add(sim.state)
            for watcher, outcome in scenario.commands.items():
                default = (
                    outcome
                    if isinstance(outcome, ExecStep)
                    else ExecStep(watcher=watcher, **outcome)
                )
                sim.script(watcher, CommandOutcome(default.exit, default.output, default.once))
            marks = _Marks()
            try:
                for number, step in enumerate(scenario.steps):
                    try:
                        await _perform(sim, step, marks)
                    except (_Failure, SimulationError) as exc:
                        position = scenario_file.positions.get((index, number), Position())
                        raise _Failure(
                            f"step {number + 1} ({step.kind}, line {position.line}): {exc}"
                        ) from None
                result.passed = True
            except _Failure as exc:
                result.failure = str(exc)
            finally:
                for event in sim.transitions():
                    result.transitions.append((event.transition, event.from_state))
                    result.states.add(event.to_state)
    except SimulationError as exc:
        result.failure = str(exc)
    except Exception as exc:  # a scenario must never take the runner down
        result.failure = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class _Marks:
    """Where the last expectation left off."""

    transitions: int = 0
    events: int = 0
    commands: int = 0


async def _perform(sim: Simulation, step: Step, marks: _Marks) -> None:
    if step.advance is not None:
        try:
            seconds = parse_duration(step.advance)
        except DurationError as exc:
            raise _Failure(str(exc)) from None
        await sim.advance(seconds)
    elif step.exec is not None:
        sim.script(
            step.exec.watcher, CommandOutcome(step.exec.exit, step.exec.output, step.exec.once)
        )
    elif step.file is not None:
        f = step.file
        await sim.write_file(f.path, f.write, remove=f.remove)
    elif step.kv is not None:
        if step.kv.delete:
            await sim.kv_delete(step.kv.bucket, step.kv.key)
        else:
            await sim.kv_put(step.kv.bucket, step.kv.key, step.kv.value)
    elif step.switch is not None:
        await sim.switch(step.switch.watcher, step.switch.on)
    elif step.machine is not None:
        await sim.neighbour(step.machine.name, step.machine.state, step.machine.event)
    elif step.transition is not None:
        if not await sim.fire(step.transition):
            raise _Failure(f"transition {step.transition!r} is not valid in state {sim.state!r}")
    elif step.data is not None:
        await sim.set_data(step.data)
    elif step.facts is not None:
        await sim.set_facts(step.facts)
    elif step.expect is not None:
        _check(sim, step.expect, marks)


def _short(items: list[Any], limit: int = 12) -> str:
    """A list for a message, shortened: scenarios can produce thousands of items."""
    if len(items) <= limit:
        return repr(items)
    return f"{items[:limit]!r}[:-1] ... and {len(items) - limit} more]".replace("][:-1]", "")


def _check(sim: Simulation, expect: Expect, marks: _Marks) -> None:
    problems = []
    transitions = sim.transitions()[marks.transitions :]
    fired = [t.transition for t in transitions]
    if expect.state is not None and sim.state != expect.state:
        path = (
            " -> ".join([transitions[0].from_state, *(t.to_state for t in transitions)])
            if transitions
            else sim.state
        )
        problems.append(f"state is {sim.state!r}, expected {expect.state!r} (went {path})")
    if expect.transitions is not None and fired != expect.transitions:
        problems.append(f"transitions fired {_short(fired)}, expected {_short(expect.transitions)}")
    if expect.data is not None:
        snapshot = sim.machine.data.snapshot()
        for key, wanted in expect.data.items():
            if key not in snapshot:
                problems.append(f"data {key!r} is not set, expected {wanted!r}")
            elif snapshot[key] != wanted:
                problems.append(f"data {key!r} is {snapshot[key]!r}, expected {wanted!r}")
    for key in expect.data_absent or []:
        if key in sim.machine.data:
            problems.append(f"data {key!r} is set ({sim.machine.data.get(key)!r}), expected absent")
    if expect.events is not None:
        published = [e.payload for e in sim.watcher_states()[marks.events :]]
        remaining = list(published)
        for wanted in expect.events:
            match = next(
                (p for p in remaining if all(p.get(k) == v for k, v in wanted.items())), None
            )
            if match is None:
                shown = [
                    {
                        k: p.get(k)
                        for k in ("name", "type", "previous_outcome", "state", "status")
                        if k in p
                    }
                    for p in published
                ]
                problems.append(f"no published state matches {wanted}; published: {_short(shown)}")
            else:
                remaining.remove(match)
    if expect.commands is not None:
        ran = [list(c.argv) for c in sim.runner.commands[marks.commands :]]
        if ran != expect.commands:
            problems.append(f"commands run {_short(ran)}, expected {_short(expect.commands)}")
    if expect.available is not None and sim.machine.available_transitions() != sorted(
        expect.available
    ):
        problems.append(
            f"available transitions {sim.machine.available_transitions()}, expected {sorted(expect.available)}"
        )
    for path, wanted_content in (expect.file or {}).items():
        actual = sim.read_file(path)
        if actual != wanted_content:
            problems.append(f"file {path!r} holds {actual!r}, expected {wanted_content!r}")
    marks.transitions = len(sim.transitions())
    marks.events = len(sim.watcher_states())
    marks.commands = len(sim.runner.commands)
    if problems:
        raise _Failure("; ".join(problems))


@dataclass
class MachineCoverage:
    """What the scenarios of one machine exercised."""

    states: list[str]
    edges: list[tuple[str, str, str]]  # (source, event, destination)
    entered: set[str] = field(default_factory=set)
    fired: set[tuple[str, str]] = field(default_factory=set)  # (event, source)

    def missing_states(self) -> list[str]:
        return [s for s in self.states if s not in self.entered]

    def missing_edges(self) -> list[tuple[str, str, str]]:
        # Self-transitions change nothing and publish nothing: they cannot be observed.
        return [e for e in self.edges if e[0] != e[2] and (e[1], e[0]) not in self.fired]


@dataclass
class Coverage:
    """Which states and transitions of each machine the scenarios exercised."""

    machines: dict[Path, MachineCoverage] = field(default_factory=dict)

    def add(
        self,
        machine_dir: Path,
        states: list[str],
        edges: list[tuple[str, str, str]],
        result: ScenarioResult,
    ) -> None:
        entry = self.machines.setdefault(machine_dir, MachineCoverage(states, edges))
        entry.entered.update(result.states)
        entry.fired.update(result.transitions)

    def report(self) -> list[str]:
        lines = []
        for machine_dir, entry in sorted(self.machines.items()):
            observable = [e for e in entry.edges if e[0] != e[2]]
            total = len(entry.states) + len(observable)
            missing_states, missing_edges = entry.missing_states(), entry.missing_edges()
            covered = total - len(missing_states) - len(missing_edges)
            lines.append(
                f"{machine_dir}: {covered}/{total} states and transitions exercised "
                f"({100 * covered // max(total, 1)}%)"
            )
            if missing_states:
                lines.append(f"  states never entered: {', '.join(missing_states)}")
            if missing_edges:
                shown = ", ".join(
                    f"{event} ({source} -> {destination})"
                    for source, event, destination in missing_edges
                )
                lines.append(f"  transitions never fired: {shown}")
        return lines
