"""Scenario 10: footprint. An idle agent's memory on the bundled examples with the HTTP API
serving, and how quickly the command line answers, each against a bare interpreter measured
in the same run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.agentproc import Agent
from bench.common import Result

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# One manifest for `machinery validate`: the Raspberry Pi use case of the issue.
VALIDATED = EXAMPLES / "hvac" / "machine.yaml"
RSS_TARGET_MIB = 48.0
VERSION_TARGET = 5.0
VALIDATE_TARGET = 8.0


def installed_like_env(pycache: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the measured processes: bytecode cached (in ``pycache``, not the
    source tree) as an installed package has it, whatever the caller's settings."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(pycache), **(extra or {})}


def bare_interpreter_rss_kib() -> int:
    """RSS of ``python -c`` doing nothing but reading its own status."""
    code = (
        "import sys\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmRSS:'): sys.stdout.write(line.split()[1])\n"
    )
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)


def _wall(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
    return time.perf_counter() - started


def command_times(rounds: int, env: dict[str, str]) -> dict[str, float]:
    """Best wall time of each command over interleaved rounds (the least disturbed run)."""
    commands = {
        "bare": [sys.executable, "-c", "pass"],
        "version": [sys.executable, "-m", "machinery", "--version"],
        "validate": [sys.executable, "-m", "machinery", "validate", str(VALIDATED)],
    }
    for argv in commands.values():  # warm-up: bytecode cached, files in the page cache
        _wall(argv, env)
    best = {name: float("inf") for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            best[name] = min(best[name], _wall(argv, env))
    return best


def idle_agent_rss(base: Path, settle: float, env: dict[str, str]) -> tuple[int, int]:
    """RSS (KiB) of an agent running every bundled example, after one request to
    ``/api/v1/machines`` and one to ``/metrics``; and how many machines it runs."""
    agent = Agent(base, env)
    for example in sorted(EXAMPLES.iterdir()):
        if (example / "machine.yaml").is_file():
            shutil.copytree(example, agent.store / example.name)
    try:
        agent.start()
        deadline = time.monotonic() + 120
        while True:
            machines = agent.machines()
            expected = sum(1 for _ in agent.store.iterdir())
            if len(machines) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        agent.client.get(agent.url + "/metrics").raise_for_status()
        time.sleep(settle)
        return agent.rss_kib(), len(machines)
    finally:
        agent.stop()


def run(quick: bool) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        env = installed_like_env(Path(tmp) / "pycache")
        times = command_times(3 if quick else 15, env)
        rss, machines = idle_agent_rss(Path(tmp) / "agent", 1.0 if quick else 5.0, env)
    bare_rss = bare_interpreter_rss_kib()
    version_ratio = times["version"] / times["bare"]
    validate_ratio = times["validate"] / times["bare"]
    rss_mib = rss / 1024
    return [
        Result(
            scenario="10a. idle agent RSS, bundled examples, HTTP API serving",
            figure=(
                f"{rss_mib:.1f} MiB ({machines} machines; bare interpreter "
                f"{bare_rss / 1024:.1f} MiB)"
            ),
            target=f"<= {RSS_TARGET_MIB:.0f} MiB",
            met=rss_mib <= RSS_TARGET_MIB if not quick else None,
            details={
                "rss_kib": rss,
                "bare_interpreter_kib": bare_rss,
                "above_bare_kib": rss - bare_rss,
                "machines": machines,
            },
        ),
        Result(
            scenario="10b. `machinery --version` against `python -c pass`",
            figure=f"{version_ratio:.1f}x ({times['version'] * 1000:.0f} ms vs "
            f"{times['bare'] * 1000:.0f} ms)",
            target=f"<= {VERSION_TARGET:.0f}x",
            met=version_ratio <= VERSION_TARGET if not quick else None,
            details={k: round(v * 1000, 1) for k, v in times.items()},
        ),
        Result(
            scenario="10c. `machinery validate` of one manifest against `python -c pass`",
            figure=f"{validate_ratio:.1f}x ({times['validate'] * 1000:.0f} ms vs "
            f"{times['bare'] * 1000:.0f} ms)",
            target=f"<= {VALIDATE_TARGET:.0f}x",
            met=validate_ratio <= VALIDATE_TARGET if not quick else None,
            details={"manifest": str(VALIDATED.relative_to(EXAMPLES.parent))},
        ),
    ]
