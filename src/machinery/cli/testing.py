"""``machinery test`` and ``machinery simulate``."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from machinery.spec.diagnostics import Diagnostic

__all__ = ["simulate", "test"]


class ReportFormat(StrEnum):
    text = "text"
    junit = "junit"


def _scenario_files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(path.rglob("*.test.yaml")))
        else:
            found.append(path)
    return found


def test(
    paths: Annotated[
        list[Path], typer.Argument(help="Scenario files, or directories to search for *.test.yaml.")
    ],
    format: Annotated[
        ReportFormat, typer.Option("--format", help="text or junit.")
    ] = ReportFormat.text,
    output: Annotated[Path | None, typer.Option(help="Write the report to this file.")] = None,
    coverage: Annotated[
        bool, typer.Option("--coverage", help="Report states and transitions never exercised.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the machines' log lines.")
    ] = False,
) -> None:
    """Run scenario files against their machines, on a simulated clock, with no side effects."""
    import logging

    # Failing commands are the point of many scenarios: their log lines are noise unless asked
    # for. The level is restored afterwards, for callers that go on in the same process.
    machinery_log = logging.getLogger("machinery")
    previous_level = machinery_log.level
    machinery_log.setLevel(logging.INFO if verbose else logging.CRITICAL)
    from machinery.simulation.report import junit_report, text_report
    from machinery.simulation.scenario import (
        Coverage,
        ScenarioFileError,
        ScenarioResult,
        load_scenario_file,
        run_scenario_file,
    )
    from machinery.watchers.registry import load_manifest

    started = time.perf_counter()
    files = _scenario_files(paths)
    if not files:
        typer.echo("machinery test: no *.test.yaml files found", err=True)
        raise typer.Exit(1)
    results: list[ScenarioResult] = []
    errors: list[Diagnostic] = []
    tracked = Coverage()

    async def run_all() -> None:
        for file in files:
            try:
                scenario_file = load_scenario_file(file)
            except ScenarioFileError as exc:
                errors.extend(exc.diagnostics)
                continue
            except OSError as exc:
                from machinery.spec.diagnostics import Position

                errors.append(Diagnostic(str(file), Position(), f"cannot read: {exc.strerror}"))
                continue
            file_results = await run_scenario_file(scenario_file)
            results.extend(file_results)
            if coverage:
                manifest = load_manifest(scenario_file.machine_dir)
                from machinery.core.fsm import FSM

                fsm = FSM(
                    manifest.spec.initial_state,
                    ((t.name, t.from_, t.destination) for t in manifest.spec.transitions),
                )
                for result in file_results:
                    tracked.add(
                        scenario_file.machine_dir, manifest.spec.states(), fsm.edges(), result
                    )

    try:
        asyncio.run(run_all())
    finally:
        machinery_log.setLevel(previous_level)
    seconds = time.perf_counter() - started
    report = (
        junit_report(results, errors, seconds)
        if format is ReportFormat.junit
        else text_report(results, errors, seconds)
    )
    if coverage and format is ReportFormat.text:
        report += "\n".join(["coverage:", *tracked.report()]) + "\n"
    if output is not None:
        output.write_text(report)
    else:
        sys.stdout.write(report)
    failed = errors or any(not r.passed for r in results)
    raise typer.Exit(1 if failed else 0)


def simulate(
    path: Annotated[Path, typer.Argument(help="A machine directory.")],
    script: Annotated[
        Path | None, typer.Option(help="Run these commands instead of asking.")
    ] = None,
    facts: Annotated[Path | None, typer.Option(help="JSON facts file.")] = None,
) -> None:
    """Step a machine through events interactively (or from --script): no side effects."""
    from machinery.simulation.repl import HELP, run_repl

    fact_values = json.loads(facts.read_text()) if facts else None
    if script is not None:
        lines = script.read_text().splitlines()
        code = asyncio.run(run_repl(path, lines, sys.stdout, facts=fact_values))
        raise typer.Exit(code)
    typer.echo(HELP)

    def prompt() -> None:
        sys.stdout.write("machinery> ")
        sys.stdout.flush()

    code = asyncio.run(run_repl(path, sys.stdin, sys.stdout, facts=fact_values, prompt=prompt))
    raise typer.Exit(0)  # interactive mistakes are shown as they happen
