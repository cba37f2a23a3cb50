"""Running mutmut on one module in a scratch copy, and reporting the score."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from mutation.config import ALSO_COPY, ROOT, TARGET, Module

WORK_DIR = ROOT / ".mutation"
RESULTS_PATH = ROOT / "mutation" / "results.json"
REPORT_PATH = ROOT / "docs" / "mutation.md"
REPORT_BEGIN = "<!-- mutation-results:begin -->"
REPORT_END = "<!-- mutation-results:end -->"
EQUIVALENT_BEGIN = "<!-- mutation-equivalent:begin -->"
EQUIVALENT_END = "<!-- mutation-equivalent:end -->"

# mutmut's statuses: a mutant is killed when a test failed, timed out (the mutant loops), or
# crashed the test process; anything else is a survivor until a test kills it or it is listed
# as equivalent.
_KILLED = frozenset({"killed", "timeout", "caught by type check", "segfault"})
_RESULT_LINE = re.compile(r"^\s+(\S+__mutmut_\d+): (.+)$")


@dataclass
class ModuleResult:
    """What one mutation run of one module found."""

    module: str
    mutants: int
    killed: int
    equivalent: list[str]
    survivors: dict[str, str]  # mutant -> status
    seconds: float
    ran_at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))

    @property
    def scored(self) -> int:
        return self.mutants - len(self.equivalent)

    @property
    def score(self) -> float:
        return self.killed / self.scored if self.scored else 1.0

    @property
    def meets_target(self) -> bool:
        return self.score >= TARGET

    def summary(self) -> str:
        verdict = "ok" if self.meets_target else f"BELOW the {TARGET:.0%} target"
        lines = [
            f"{self.module}: {self.killed}/{self.scored} killed ({self.score:.1%}), "
            f"{len(self.equivalent)} equivalent, {len(self.survivors)} surviving, "
            f"{self.seconds:.0f}s: {verdict}"
        ]
        lines += [f"  survived: {name} ({status})" for name, status in self.survivors.items()]
        return "\n".join(lines)


def _ignore(_directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in ("__pycache__", ".pytest_cache", ".hypothesis")}


def prepare(module: Module) -> Path:
    """A fresh scratch copy of the project for ``module``: src/, tests/ and a pyproject.toml
    whose ``[tool.mutmut]`` mutates only this module against only its tests."""
    work = WORK_DIR / module.slug
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "src", work / "src", ignore=_ignore)
    for name in ("tests", *ALSO_COPY):
        shutil.copytree(ROOT / name, work / name, ignore=_ignore)
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    if "[tool.mutmut]" in pyproject:
        raise RuntimeError("pyproject.toml has its own [tool.mutmut]: configure mutation/ instead")
    (work / "pyproject.toml").write_text(pyproject + module.mutmut_section(), "utf-8")
    return work


def _mutmut(work: Path, *args: str, timeout: float, log: Path | None = None) -> str:
    command = [sys.executable, "-m", "mutmut", *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        if log is None:
            done = subprocess.run(
                command,
                check=False,
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            output = done.stdout + done.stderr
        else:
            with log.open("w") as sink:
                done = subprocess.run(
                    command,
                    check=False,
                    cwd=work,
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
            output = log.read_text("utf-8", "replace")
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"mutmut {args[0]} did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        raise RuntimeError(f"mutmut {args[0]} failed ({done.returncode}):\n{output[-3000:]}")
    return output


def run_module(module: Module, *, timeout: float) -> ModuleResult:
    """Mutate ``module`` with one worker and score what its tests kill."""
    started = time.monotonic()
    work = prepare(module)
    print(f"mutation: {module.path}: running mutmut in {work.relative_to(ROOT)}", flush=True)
    _mutmut(
        work,
        "run",
        "--max-children",
        "1",
        *module.functions,
        timeout=timeout,
        log=work / "mutmut-run.log",
    )
    return collect(module, work, time.monotonic() - started)


def collect(module: Module, work: Path, seconds: float) -> ModuleResult:
    """Score the finished mutmut run of ``module`` in ``work``."""
    statuses: dict[str, str] = {}
    for line in _mutmut(work, "results", "--all", "true", timeout=600).splitlines():
        found = _RESULT_LINE.match(line)
        if found and found.group(1).startswith(module.dotted + ".x"):
            statuses[found.group(1)] = found.group(2).strip()
    if module.functions:
        patterns = [re.compile(_glob_to_regex(p)) for p in module.functions]
        statuses = {n: s for n, s in statuses.items() if any(p.fullmatch(n) for p in patterns)}
    if not statuses:
        raise RuntimeError(f"mutmut made no mutants (see {work / 'mutmut-run.log'})")
    equivalent = sorted(n for n in statuses if n in module.equivalent)
    killed = sum(1 for n, s in statuses.items() if s in _KILLED and n not in module.equivalent)
    survivors = {
        n: s for n, s in sorted(statuses.items()) if s not in _KILLED and n not in module.equivalent
    }
    _write_survivor_diffs(work, survivors)
    return ModuleResult(module.path, len(statuses), killed, equivalent, survivors, seconds)


def _glob_to_regex(pattern: str) -> str:
    return "".join(".*" if c == "*" else re.escape(c) for c in pattern)


# Each diff costs a mutmut start (about a second): past this many, `mutmut show NAME` on demand.
_MAX_DIFFS = 100


def _write_survivor_diffs(work: Path, survivors: dict[str, str]) -> None:
    # The diff of each survivor, for whoever writes the test that kills it.
    with (work / "survivors.diff").open("w") as out:
        for name in list(survivors)[:_MAX_DIFFS]:
            out.write(_mutmut(work, "show", name, timeout=120))
            out.write("\n")
        if len(survivors) > _MAX_DIFFS:
            out.write(f"# ... and {len(survivors) - _MAX_DIFFS} more: mutmut show NAME\n")


def load_results() -> dict[str, dict[str, object]]:
    """The last result of each module, from mutation/results.json."""
    if not RESULTS_PATH.exists():
        return {}
    results: dict[str, dict[str, object]] = json.loads(RESULTS_PATH.read_text("utf-8"))
    return results


def write_report(result: ModuleResult) -> None:
    """Record ``result`` in mutation/results.json and the table in docs/mutation.md."""
    results = load_results()
    results[result.module] = {
        "ran_at": result.ran_at,
        "mutmut": version("mutmut"),
        "mutants": result.mutants,
        "killed": result.killed,
        "equivalent": len(result.equivalent),
        "survivors": result.survivors,
        "seconds": round(result.seconds),
    }
    _atomic_write(RESULTS_PATH, json.dumps(results, indent=2, sort_keys=True) + "\n")
    update_report(results)


def update_report(results: dict[str, dict[str, object]]) -> None:
    """Rewrite the generated parts of docs/mutation.md: the scores and the equivalent mutants."""
    if not REPORT_PATH.exists():
        return
    text = REPORT_PATH.read_text("utf-8")
    text = _replace_between(text, REPORT_BEGIN, REPORT_END, render_table(results))
    text = _replace_between(text, EQUIVALENT_BEGIN, EQUIVALENT_END, render_equivalents())
    _atomic_write(REPORT_PATH, text)


def _replace_between(text: str, begin_marker: str, end_marker: str, body: str) -> str:
    begin, end = text.find(begin_marker), text.find(end_marker)
    if not 0 <= begin < end:
        return text
    return text[: begin + len(begin_marker)] + "\n" + body + text[end:]


def render_equivalents() -> str:
    """The equivalent mutants of every module with their reasons, from mutation/modules.toml."""
    from mutation.config import load_config

    lines: list[str] = []
    for module in load_config().modules.values():
        if not module.equivalent:
            continue
        lines += ["", f"### `{module.path}`", ""]
        for name, reason in sorted(module.equivalent.items()):
            short = name.removeprefix(module.dotted + ".")
            lines.append(f"- `{short}`: {reason}")
    return "\n".join(lines).lstrip("\n") + "\n"


def render_table(results: dict[str, dict[str, object]]) -> str:
    """The per-module score table of docs/mutation.md, every configured module in order."""
    from mutation.config import load_config

    rows = [
        "| module | mutants | killed | equivalent | surviving | score | run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in load_config().modules:
        entry = results.get(name)
        if entry is None:
            rows.append(f"| `{name}` | | | | | | not yet run |")
            continue
        mutants, killed, equivalent = (
            int(str(entry[k])) for k in ("mutants", "killed", "equivalent")
        )
        survivors = entry["survivors"]
        surviving = len(survivors) if isinstance(survivors, dict) else 0
        scored = mutants - equivalent
        score = f"{killed / scored:.1%}" if scored else "n/a"
        rows.append(
            f"| `{name}` | {mutants} | {killed} | {equivalent} | {surviving} | {score} "
            f"| {entry['ran_at']}, {entry['seconds']}s |"
        )
    return "\n".join(rows) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text, "utf-8")
    os.replace(staged, path)
