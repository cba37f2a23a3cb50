"""The machinery command line: validate, graph, schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
