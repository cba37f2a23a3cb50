"""The mutation configuration: ``mutation/modules.toml``, checked."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PATH = ROOT / "mutation" / "modules.toml"
PACKAGE_DIR = ROOT / "src" / "machinery"
TARGET = 0.90  # killed / non-equivalent mutants, per module
# What the tests read besides src/ and tests/ (the agent tests start from the bundled examples).
ALSO_COPY = ("examples", "docs")


class ConfigError(ValueError):
    """A mutation configuration that cannot be run."""


@dataclass(frozen=True)
class Module:
    """One module to mutate and the tests that exercise it."""

    path: str  # relative to src/machinery, e.g. "core/fsm.py"
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()
    equivalent: dict[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """The module's path from the repository root."""
        return f"src/machinery/{self.path}"

    @property
    def dotted(self) -> str:
        """The module's import name, the prefix of its mutant names."""
        return "machinery." + self.path.removesuffix(".py").replace("/", ".")

    @property
    def slug(self) -> str:
        return self.path.removesuffix(".py").replace("/", "-")

    def mutmut_section(self) -> str:
        """The ``[tool.mutmut]`` table for a scratch copy that mutates only this module."""
        quoted = json.dumps  # a JSON string is a valid TOML basic string
        tests = ", ".join(quoted(t) for t in self.tests)
        return (
            "\n[tool.mutmut]\n"
            'source_paths = ["src"]\n'
            f"only_mutate = [{quoted(self.source)}]\n"
            f"pytest_add_cli_args_test_selection = [{tests}]\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider"]\n'
            f"also_copy = [{', '.join(quoted(d) for d in ALSO_COPY)}]\n"
            "use_git_change_detection = false\n"
        )


@dataclass(frozen=True)
class Config:
    modules: dict[str, Module]


def load_config(path: Path = CONFIG_PATH, root: Path = ROOT) -> Config:
    """Read and check the configuration: every module and test file exists, every equivalent
    mutant is named for its own module and has a reason."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    table = data.get("modules")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f'{path}: no [modules."..."] tables')
    modules: dict[str, Module] = {}
    for name, entry in table.items():
        where = f"{path.name}: module {name!r}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: not a table")
        unknown = set(entry) - {"tests", "functions", "equivalent"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        if not name.endswith(".py") or ".." in Path(name).parts or name.startswith("/"):
            raise ConfigError(f"{where}: must be a .py path inside src/machinery")
        if not (root / "src" / "machinery" / name).is_file():
            raise ConfigError(f"{where}: src/machinery/{name} does not exist")
        tests = entry.get("tests")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise ConfigError(f"{where}: tests must be a non-empty list of test files")
        for test in tests:
            if not test.startswith("tests/") or ".." in Path(test).parts:
                raise ConfigError(f"{where}: test {test!r} is not under tests/")
            if not (root / test).is_file():
                raise ConfigError(f"{where}: test file {test} does not exist")
        functions = entry.get("functions", [])
        if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
            raise ConfigError(f"{where}: functions must be a list of mutant name patterns")
        module = Module(name, tuple(tests), tuple(functions))
        for pattern in functions:
            if not pattern.startswith(module.dotted + ".x"):
                raise ConfigError(f"{where}: function {pattern!r} is not in {module.dotted}")
        equivalent = entry.get("equivalent", {})
        if not isinstance(equivalent, dict):
            raise ConfigError(f"{where}: equivalent must be a table of mutant = reason")
        for mutant, reason in equivalent.items():
            if not mutant.startswith(module.dotted + ".x") or "__mutmut_" not in mutant:
                raise ConfigError(f"{where}: {mutant!r} is not a mutant of {module.dotted}")
            if not isinstance(reason, str) or not reason.strip():
                raise ConfigError(f"{where}: equivalent mutant {mutant} needs a reason")
        modules[name] = Module(name, tuple(tests), tuple(functions), dict(equivalent))
    return Config(modules)
