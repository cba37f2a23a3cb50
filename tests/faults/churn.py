"""Many command runs of every kind, measuring what they leave behind.

Used by ``tests/faults/test_process_faults.py`` (1,000 runs) and ``make soak`` (10,000 runs): a
mix of commands that succeed, fail, print a lot, leave a grandchild behind, hang, ignore SIGTERM,
are stopped half-way or cannot start, through :class:`ProcessRunner` directly and through an exec
watcher. Before and after, it counts this process's open descriptors, asyncio tasks, unreaped
children, leftover temporary files and live processes in the commands' process groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from machinery.core.clock import FakeClock
from machinery.core.machine import WatcherRuntime
from machinery.core.process import CommandRequest, CommandResult, ProcessRunner
from tests.faults.procinfo import fd_count, zombies_of
from tests.support import make_machine, running, wait_until, write_machine

__all__ = ["ChurnReport", "churn"]

# (kind, weight per 100 runs): mostly quick commands, a few expensive faults.
_MIX = (
    ("ok", 55),
    ("fail", 10),
    ("output", 10),
    ("big", 5),
    ("grandchild", 5),
    ("hang", 4),
    ("ignore_term", 3),
    ("cancel", 4),
    ("not_found", 4),
)
_TIMEOUT = 0.05


@dataclass
class ChurnReport:
    runs: int = 0
    watcher_runs: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    fd_delta: int = 0
    task_delta: int = 0
    zombies: int = 0
    leftover_processes: int = 0
    temp_files_delta: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.runs} runs ({self.watcher_runs} through an exec watcher), "
            f"fd delta {self.fd_delta}, task delta {self.task_delta}, zombies {self.zombies}, "
            f"leftover processes {self.leftover_processes}, temp files delta "
            f"{self.temp_files_delta}, {len(self.unexpected)} unexpected results, "
            f"{self.seconds:.1f}s; kinds: {dict(sorted(self.kinds.items()))}"
        )


def _schedule(runs: int) -> list[str]:
    pattern = [kind for kind, weight in _MIX for _ in range(weight)]
    # Interleave kinds rather than running them in blocks.
    pattern = (
        pattern[::7]
        + pattern[1::7]
        + pattern[2::7]
        + pattern[3::7]
        + pattern[4::7]
        + (pattern[5::7] + pattern[6::7])
    )
    return [pattern[i % len(pattern)] for i in range(runs)]


def _request(kind: str, directory: Path) -> CommandRequest:
    env = {"PATH": os.defpath}
    argv: list[str] = {
        "ok": ["true"],
        "fail": ["false"],
        "output": ["sh", "-c", "echo out; echo err >&2; exit 3"],
        "big": ["head", "-c", "300000", "/dev/zero"],
        # The grandchild does not hold the output pipe: it dies with its group when sh exits.
        "grandchild": ["sh", "-c", "sleep 30 >/dev/null 2>&1 & exit 0"],
        "hang": ["sleep", "30"],
        "ignore_term": ["sh", "-c", "trap '' TERM; sleep 30 & wait"],
        "cancel": ["sleep", "30"],
        "not_found": ["machinery-no-such-command"],
    }[kind]
    return CommandRequest(
        argv,
        directory,
        env,
        timeout=_TIMEOUT if kind in ("hang", "ignore_term") else 10.0,
        output_limit=1000,
    )


def _check(kind: str, result: CommandResult | None) -> str | None:
    """Why ``result`` is not what ``kind`` must give (None when it is)."""
    if kind == "cancel":
        return None if result is None else "a cancelled run returned a result"
    assert result is not None
    expected = {
        "ok": result.exit_code == 0 and result.error is None,
        "fail": result.exit_code == 1,
        "output": result.exit_code == 3 and result.output == b"out\nerr\n",
        "big": result.exit_code == 0 and len(result.output) == 1000 and result.truncated,
        "grandchild": result.exit_code == 0,
        "hang": result.timed_out and result.exit_code is None,
        "ignore_term": result.timed_out and result.exit_code is None,
        "not_found": result.error is not None and "command not found" in result.error,
    }[kind]
    return None if expected else f"{kind}: {result!r}"


def _temp_files() -> int:
    return sum(1 for name in os.listdir(tempfile.gettempdir()) if name.startswith("machinery-"))


def _live_in_groups(groups: set[int]) -> int:
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) in groups:
            count += 1
    return count


def _ran_since(watcher: WatcherRuntime, runs: int) -> bool:
    return watcher.status.runs > runs


WATCHED = """\
name: churner
version: 1.0.0
initial_state: busy
transitions:
  - name: failed
    from: [busy]
    destination: busy
watchers:
  - name: job
    type: exec
    state_match: [busy]
    interval: 1s
    properties:
      command: ./step.sh {{ lookup "data.n" "0" }}
      timeout: 2s
      parse_as_data: true
"""

STEP = """\
#!/bin/sh
n=$(( $1 + 1 ))
sleep 30 >/dev/null 2>&1 &
printf '{"n": %d}' "$n"
"""


async def churn(runs: int, directory: Path, *, watcher_share: int = 10) -> ChurnReport:
    """Run ``runs`` commands (one in ``watcher_share`` through an exec watcher) and measure."""
    report = ChurnReport()
    runner = ProcessRunner(kill_grace=0.05)
    directory.mkdir(parents=True, exist_ok=True)
    gc.collect()
    await asyncio.sleep(0)
    fds_before = fd_count()
    tasks_before = len(asyncio.all_tasks())
    temp_before = _temp_files()
    groups: set[int] = set()
    started = time.monotonic()

    for kind in _schedule(runs - runs // watcher_share):
        request = _request(kind, directory)
        result: CommandResult | None = None
        if kind == "cancel":
            task = asyncio.ensure_future(runner.run(request))
            await asyncio.sleep(0.02)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            result = await runner.run(request)
            if result.pid is not None:
                groups.add(result.pid)
        problem = _check(kind, result)
        if problem is not None:
            report.unexpected.append(problem)
        report.kinds[kind] += 1
        report.runs += 1

    # The exec watcher path: templates, temporary data and facts files, parse_as_data, a
    # grandchild left behind on every run.
    machine_directory = write_machine(directory / "churner", WATCHED, {"step.sh": STEP})
    clock = FakeClock()
    machine = make_machine(machine_directory, clock=clock, runner=runner)
    watcher_runs = runs // watcher_share
    async with running(machine):
        await wait_until(lambda: bool(machine.watchers), what="watchers")
        watcher = machine.watchers[0]
        for _ in range(watcher_runs):
            before = watcher.status.runs
            await clock.advance(1)
            await wait_until(functools.partial(_ran_since, watcher, before), timeout=10)
            if watcher.status.outcome != "success":
                report.unexpected.append(f"exec watcher: {watcher.status.last_error}")
            report.runs += 1
            report.watcher_runs += 1
    if machine.data.get("n") != watcher_runs:
        report.unexpected.append(f"exec watcher data n={machine.data.get('n')} != {watcher_runs}")

    # Let transports whose pipes just closed finish, then measure.
    for _ in range(20):
        await asyncio.sleep(0.01)
    gc.collect()
    report.seconds = time.monotonic() - started
    report.fd_delta = fd_count() - fds_before
    report.task_delta = len(asyncio.all_tasks()) - tasks_before
    report.zombies = len(zombies_of())
    report.leftover_processes = _live_in_groups(groups)
    report.temp_files_delta = _temp_files() - temp_before
    return report
