"""Scripted command outcomes: a one-off outcome (``once``) wins over a standing one."""

from __future__ import annotations

import textwrap
from pathlib import Path

from typer.testing import CliRunner

from machinery.cli.main import app

runner = CliRunner()

MACHINE = """\
name: probe
version: 1.0.0
initial_state: up
transitions:
  - name: failed
    from: [up]
    destination: down
  - name: recover
    from: [down]
    destination: up
watchers:
  # Runs every 10s in up, and on entering it (after `recover`).
  - name: check
    type: exec
    state_match: [up]
    interval: 10s
    fail_transition: failed
    properties:
      command: ./check.sh
"""


def test_a_one_off_outcome_runs_before_the_standing_one_and_then_gives_way(
    tmp_path: Path,
) -> None:
    (tmp_path / "machine.yaml").write_text(MACHINE)
    (tmp_path / "probe.test.yaml").write_text(
        textwrap.dedent("""\
            name: a single failure among successes
            steps:
              - exec: {watcher: check, exit: 0}
              - exec: {watcher: check, exit: 1, once: true}
              - advance: 10s
              - expect: {state: down, transitions: [failed]}
              - transition: recover
              - advance: 1m
              - expect: {state: up, transitions: [recover]}
            """)
    )
    result = runner.invoke(app, ["test", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "1 passed" in result.output


def test_one_off_outcomes_run_in_the_order_scripted(tmp_path: Path) -> None:
    (tmp_path / "machine.yaml").write_text(MACHINE)
    (tmp_path / "probe.test.yaml").write_text(
        textwrap.dedent("""\
            name: two failures, then the standing success
            steps:
              - exec: {watcher: check, exit: 1, output: first, once: true}
              - exec: {watcher: check, exit: 0}
              - exec: {watcher: check, exit: 1, output: second, once: true}
              - advance: 10s
              - expect: {state: down, transitions: [failed]}
              - transition: recover
              - expect: {state: down, transitions: [recover, failed]}
              - transition: recover
              - advance: 1m
              - expect: {state: up, transitions: [recover]}
            """)
    )
    result = runner.invoke(app, ["test", str(tmp_path)])
    assert result.exit_code == 0, result.output
