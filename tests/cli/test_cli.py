"""The machinery command line: validate, graph, schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from machinery.cli.main import app
from tests.spec.test_corpus import CORPUS

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_validate_valid_examples_exit_zero() -> None:
    result = runner.invoke(
        app,
        ["validate", str(ROOT / "examples" / "hvac"), str(ROOT / "examples" / "container-manager")],
    )
    assert result.exit_code == 0, result.output
    assert "hvac: valid" in result.output


def test_validate_invalid_exits_one_with_file_line_col() -> None:
    result = runner.invoke(app, ["validate", str(CORPUS / "hvac"), str(ROOT / "examples" / "hvac")])
    assert result.exit_code == 1
    assert (
        f"{CORPUS / 'hvac' / 'machine.yaml'}:51:25: invalid success_transition 'idle'"
        in result.output
    )


def test_validate_json_format() -> None:
    result = runner.invoke(app, ["validate", "--format", "json", str(CORPUS / "go-empty-invalid")])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["valid"] is False
    [entry] = document["results"]
    assert entry["valid"] is False
    assert entry["diagnostics"][0] == {
        "file": str(CORPUS / "go-empty-invalid" / "machine.yaml"),
        "line": 1,
        "column": 1,
        "severity": "error",
        "message": "a machine name is required",
    }


def test_graph_dot_and_mermaid() -> None:
    result = runner.invoke(app, ["graph", str(CORPUS / "container-manager")])
    assert result.exit_code == 0
    assert result.stdout.startswith("digraph fsm {\n")
    result = runner.invoke(app, ["graph", "--format", "mermaid", str(CORPUS / "container-manager")])
    assert result.stdout.startswith("stateDiagram-v2\n")
    result = runner.invoke(app, ["graph", str(CORPUS / "hvac")])
    assert result.exit_code == 1


def test_schema_prints_json_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["title"] == "machinery machine.yaml"


def test_console_script_runs_in_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "machinery", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.startswith("machinery ")


def test_run_refuses_a_missing_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "is not a directory" in result.output


def test_log_lines_escape_control_characters() -> None:
    import json
    import logging
    import sys

    from machinery.cli.logformat import JsonFormatter, TextFormatter, escape_control

    assert escape_control("plain text, é, 日本") == "plain text, é, 日本"
    assert escape_control("a\nb\rc\td\x00e\x1b[31mf\x7fg\x9bh\u2028i\u202ej") == (
        "a\\nb\\rc\\td\\x00e\\x1b[31mf\\x7fg\\x9bh\\u2028i\\u202ej"
    )
    name = "evil\nFORGED\x1b[2J\x9b\u202e"
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "loading %s", (name,), None)
    text = TextFormatter("%(levelname)s %(message)s").format(record)
    assert text == "ERROR loading evil\\nFORGED\\x1b[2J\\x9b\\u202e"
    line = JsonFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line and "\x9b" not in line
    assert "\u202e" not in line
    assert json.loads(line)["message"] == f"loading {name}"  # JSON keeps the exact text
    try:
        raise ValueError(name)
    except ValueError:
        failed = logging.LogRecord("t", logging.ERROR, __file__, 1, "x", (), sys.exc_info())
    shown = TextFormatter("%(message)s").format(failed)
    assert "Traceback (most recent call last):\n" in shown  # a traceback keeps its lines
    assert "ValueError: evil\\nFORGED\\x1b[2J\\x9b\\u202e" in shown


WATCHER_PROBLEMS = """\
name: drawn
version: 1.0.0
initial_state: idle
transitions:
  - name: start
    from: [idle]
    destination: busy
  - name: stop
    from: [busy]
    destination: idle
watchers:
  - name: future
    type: teleporter
    state_match: [idle]
  - name: check
    type: exec
    state_match: [busy]
    success_transition: stop
    properties:
      timeout: forever
"""


def test_graph_draws_a_machine_whose_watchers_have_problems(tmp_path: Path) -> None:
    # choria machine graph loads the machine without creating its watchers: an unknown type or
    # bad properties do not stop the drawing. The problems go to stderr.
    (tmp_path / "machine.yaml").write_text(WATCHER_PROBLEMS)
    result = runner.invoke(app, ["graph", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "digraph fsm {\n"
        '    "busy" -> "idle" [ label = "stop" ];\n'
        '    "idle" -> "busy" [ label = "start" ];\n'
        "\n"
        '    "busy";\n'
        '    "idle" [color = "red"];\n'
        "}\n"
    )
    assert "unknown watcher type 'teleporter'" in result.stderr
    assert "13:11:" in result.stderr
    assert "timeout" in result.stderr
    mermaid = runner.invoke(app, ["graph", "--format", "mermaid", str(tmp_path)])
    assert mermaid.exit_code == 0 and mermaid.stdout.startswith("stateDiagram-v2\n")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        # Choria's Validate() refuses an unknown state in state_match...
        (("state_match: [busy]", "state_match: [bsy]"), "invalid state 'bsy' in state_match"),
        # ...and FromYAML a subscription without a machine name.
        (
            ("    destination: busy\n", "    destination: busy\n    subscribe: [{event: x}]\n"),
            "machine name is required on subscription for transition 'start'",
        ),
    ],
)
def test_graph_refuses_what_choria_refuses_at_load(
    tmp_path: Path, change: tuple[str, str], problem: str
) -> None:
    text = WATCHER_PROBLEMS.replace(*change)
    assert text != WATCHER_PROBLEMS
    (tmp_path / "machine.yaml").write_text(text)
    result = runner.invoke(app, ["graph", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert problem in result.stderr


def test_validate_warnings_exit_zero_and_strict_makes_them_errors(tmp_path: Path) -> None:
    (tmp_path / "machine.yaml").write_text(
        WATCHER_PROBLEMS.replace("    type: teleporter\n", "    type: file\n    governor: X\n")
        .replace("      timeout: forever\n", "      command: /bin/true\n")
        .replace(
            "    state_match: [idle]\n", "    state_match: [idle]\n    properties: {path: x}\n"
        )
    )
    relaxed = runner.invoke(app, ["validate", str(tmp_path)])
    assert relaxed.exit_code == 0, relaxed.output
    assert "warning: watcher 'future': unknown key 'governor' is ignored" in relaxed.stderr
    assert f"{tmp_path}: valid (1 warning)" in relaxed.stdout
    strict = runner.invoke(app, ["validate", "--strict", str(tmp_path)])
    assert strict.exit_code == 1
    assert "warning:" not in strict.stderr
    assert "watcher 'future': unknown key 'governor' is ignored" in strict.stderr
    assert f"{tmp_path}: invalid, 1 error" in strict.stderr
    as_json = runner.invoke(app, ["validate", "--strict", "--format", "json", str(tmp_path)])
    document = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and document["valid"] is False
    [diagnostic] = document["results"][0]["diagnostics"]
    assert diagnostic["severity"] == "error" and diagnostic["line"] == 14
    relaxed_json = json.loads(
        runner.invoke(app, ["validate", "--format", "json", str(tmp_path)]).stdout
    )
    assert relaxed_json["valid"] is True
    assert relaxed_json["results"][0]["diagnostics"][0]["severity"] == "warning"
