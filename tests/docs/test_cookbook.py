"""The cookbook: every example validates clean, has scenarios that a broken copy fails, and a page.

The examples are found by globbing ``examples/*/machine.yaml``, so a new example is covered the
moment it is added. ``machinery test examples`` itself (all scenarios pass) runs in
tests/simulation/test_machinery_test.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from machinery.cli.main import app
from machinery.spec.yamlfile import load_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
COOKBOOK = ROOT / "docs" / "cookbook"
INDEX = COOKBOOK / "README.md"
# The examples that predate the cookbook: their design is explained in their manifests' comments.
PAGE_EXEMPT = {"container-manager", "hvac", "nightly-backup"}
MIN_SCENARIO_FILES = 14

runner = CliRunner()


def example_names() -> list[str]:
    return sorted(path.parent.name for path in EXAMPLES.glob("*/machine.yaml"))


def cookbook_names() -> list[str]:
    return [name for name in example_names() if name not in PAGE_EXEMPT]


def scenario_files(example: Path) -> list[Path]:
    return sorted(example.glob("*.test.yaml"))


def mermaid_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```mermaid\n(.*?)```", text, re.DOTALL)]


def markdown_links(text: str) -> set[str]:
    return set(re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text))


@pytest.mark.parametrize("example", example_names())
def test_example_validates_without_warnings(example: str) -> None:
    result = runner.invoke(app, ["validate", str(EXAMPLES / example), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    diagnostics = [d for r in report["results"] for d in r["diagnostics"]]
    assert diagnostics == [], diagnostics


@pytest.mark.parametrize("example", example_names())
def test_example_scripts_are_safe_to_run(example: str) -> None:
    for script in sorted(EXAMPLES.joinpath(example).glob("*.sh")) + sorted(
        EXAMPLES.joinpath(example).glob("*.py")
    ):
        mode = script.stat().st_mode
        assert mode & 0o100, f"{script.name} is not executable"
        # Group-writable is left to the checkout's umask (002 is common); world-writable never is.
        assert not mode & 0o002, f"{script.name} is world-writable"
        first_line = script.read_text().splitlines()[0]
        assert first_line == "#!/bin/sh" or re.fullmatch(
            r"#!(/usr/bin/env )?/?\S*python3", first_line
        ), f"{script.name}: {first_line}"


@pytest.mark.parametrize("example", example_names())
def test_example_has_scenarios(example: str) -> None:
    assert scenario_files(EXAMPLES / example), f"{example} has no *.test.yaml"


def test_the_examples_hold_enough_scenario_files() -> None:
    count = sum(len(scenario_files(EXAMPLES / name)) for name in example_names())
    assert count >= MIN_SCENARIO_FILES, f"only {count} scenario files under examples/"


@pytest.mark.parametrize("example", cookbook_names())
def test_example_has_a_page_with_its_current_graph(example: str) -> None:
    page = COOKBOOK / f"{example}.md"
    assert page.is_file(), f"{example} has no docs/cookbook/{example}.md"
    text = page.read_text()
    graph = runner.invoke(app, ["graph", str(EXAMPLES / example), "--format", "mermaid"])
    assert graph.exit_code == 0, graph.output
    svgs = [link for link in markdown_links(text) if link.endswith(".svg")]
    if svgs:
        assert all((page.parent / link).is_file() for link in svgs), svgs
    else:
        assert graph.output.strip() in mermaid_blocks(text), (
            f"docs/cookbook/{example}.md lacks the current graph: "
            f"machinery graph examples/{example} --format mermaid"
        )
    assert f"examples/{example}" in text, "the page names its example directory"


def test_the_index_lists_every_page_and_the_readme_links_it() -> None:
    index = INDEX.read_text()
    linked = markdown_links(index)
    pages = sorted(p.name for p in COOKBOOK.glob("*.md") if p != INDEX)
    assert pages
    missing = [page for page in pages if page not in linked]
    assert not missing, f"docs/cookbook/README.md does not link {missing}"
    for name in cookbook_names():
        assert f"{name}.md" in linked, f"the index has no row for {name}"
    assert "docs/cookbook/README.md" in markdown_links((ROOT / "README.md").read_text())


def mutant(tmp_path: Path, example: str) -> Path:
    """A copy of the example with every transition's destination pointed at the initial state."""
    copy = tmp_path / example
    shutil.copytree(
        EXAMPLES / example, copy, ignore=shutil.ignore_patterns("world", "machine_data.json")
    )
    manifest = copy / "machine.yaml"
    # Read as YAML 1.2, as machinery does (`on` and `off` are strings); safe_dump quotes them.
    document = load_yaml(manifest.read_text(), str(manifest)).data
    for transition in document["transitions"]:
        transition["destination"] = document["initial_state"]
    manifest.write_text(yaml.safe_dump(document, sort_keys=False))
    return copy


@pytest.mark.parametrize("example", example_names())
def test_a_machine_that_never_leaves_its_initial_state_fails_every_scenario_file(
    tmp_path: Path, example: str
) -> None:
    copy = mutant(tmp_path, example)
    loads = runner.invoke(app, ["validate", str(copy)])
    assert loads.exit_code == 0, f"the mutant must still load:\n{loads.output}"
    result = runner.invoke(app, ["test", str(copy)])
    assert result.exit_code == 1, result.output
    failing = {
        line.split("::", 1)[0].rsplit("/", 1)[-1]
        for line in result.output.splitlines()
        if line.endswith(" FAILED")
    }
    assert failing == {path.name for path in scenario_files(copy)}, result.output
    # They fail on an expectation, not on something the mutation broke in the scenario itself.
    assert re.search(r"step \d+ \(expect, line \d+\)", result.output), result.output


@pytest.mark.parametrize("example", example_names())
def test_example_scenarios_fire_no_event_its_state_refuses(example: str) -> None:
    # A watcher firing an event its state does not accept logs a warning at every run: noise in
    # an operator's log, and usually a missing self-transition. (A subprocess: the machines' log
    # lines go to the real stderr.)
    result = subprocess.run(
        [sys.executable, "-m", "machinery", "test", str(EXAMPLES / example), "--verbose"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    refused = sorted({line.strip() for line in output.splitlines() if "Could not fire" in line})
    assert not refused, refused
