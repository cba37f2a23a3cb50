"""The mutation testing configuration (make mutate) is valid: checked here, without a run."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mutation.config import ROOT, ConfigError, load_config
from mutation.run import render_table

# The modules issue 18 names as guarding correctness and safety: all must stay configured.
REQUIRED = {
    "core/fsm.py",
    "core/machine.py",
    "core/ratelimit.py",
    "core/extract.py",
    "core/process.py",
    "lang/cmdline.py",
    "lang/duration.py",
    "events/cloudevents.py",
    "watchers/exec.py",
    "watchers/file.py",
    "api/guard.py",
    "agent/store.py",
    "agent/spool.py",
    "nats/publisher.py",
    "spec/validate.py",
}


def test_every_required_module_is_configured_with_existing_tests() -> None:
    config = load_config()
    assert set(config.modules) >= REQUIRED
    for module in config.modules.values():
        assert (ROOT / module.source).is_file()
        assert module.tests and all((ROOT / test).is_file() for test in module.tests)


def test_the_generated_mutmut_section_is_read_by_mutmut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mutmut import configuration

    module = load_config().modules["core/fsm.py"]
    pyproject = (ROOT / "pyproject.toml").read_text() + module.mutmut_section()
    tomllib.loads(pyproject)  # still valid TOML
    (tmp_path / "pyproject.toml").write_text(pyproject)
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    config = configuration._load_config()
    assert config.only_mutate == ["src/machinery/core/fsm.py"]
    assert config.pytest_add_cli_args_test_selection == list(module.tests)
    assert config.source_paths == [Path("src")]
    assert config.use_git_change_detection is False


def test_the_report_table_lists_every_module() -> None:
    table = render_table({})
    for name in load_config().modules:
        assert f"| `{name}` |" in table


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no [modules"),
        ('[modules."core/nope.py"]\ntests = ["tests/core/test_fsm.py"]\n', "does not exist"),
        ('[modules."core/fsm.py"]\ntests = ["tests/core/test_nope.py"]\n', "does not exist"),
        ('[modules."core/fsm.py"]\ntests = []\n', "non-empty list"),
        ('[modules."../setup.py"]\ntests = ["tests/core/test_fsm.py"]\n', "inside src/machinery"),
        ('[modules."core/fsm.py"]\ntests = ["/etc/passwd"]\n', "not under tests/"),
        ('[modules."core/fsm.py"]\ntests = ["tests/core/test_fsm.py"]\nwhat = 1\n', "unknown keys"),
        (
            '[modules."core/fsm.py"]\ntests = ["tests/core/test_fsm.py"]\n'
            '[modules."core/fsm.py".equivalent]\n"machinery.core.clock.xnow__mutmut_1" = "x"\n',
            "is not a mutant of machinery.core.fsm",
        ),
        (
            '[modules."core/fsm.py"]\ntests = ["tests/core/test_fsm.py"]\n'
            '[modules."core/fsm.py".equivalent]\n"machinery.core.fsm.xf__mutmut_1" = " "\n',
            "needs a reason",
        ),
        ('[modules."core/fsm.py"\n', "cannot read"),
    ],
)
def test_bad_configurations_are_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "modules.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(path)


def test_make_mutate_is_not_part_of_make_test_and_the_check_runs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    test_line = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "mutate" not in test_line
    assert "\nmutate: " in makefile
    done = subprocess.run(
        [sys.executable, "-m", "mutation", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert "configuration valid" in done.stdout
