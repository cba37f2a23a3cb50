"""A full disk: the agent's state directory and its store on a 4 MiB tmpfs, filled while machines
keep transitioning, writing machine data and managing a file.

While full: machines keep running, the API answers, state-write errors are logged and counted
(``machinery_state_write_errors_total``), data-file and managed-file writes become error outcomes,
nothing is corrupted. Once space returns everything is written again. Needs ``mount -t tmpfs``
(root); skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import sqlite3
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agent_process import AgentProcess

DISK_USER = """\
name: diskuser
version: 1.0.0
initial_state: a
transitions:
  - name: to_b
    from: [a]
    destination: b
  - name: to_a
    from: [b]
    destination: a
watchers:
  - name: in_a
    type: exec
    state_match: [a]
    success_transition: to_b
    fail_transition: to_b
    interval: 500ms
    properties:
      command: ./step.sh a
      parse_as_data: true
  - name: in_b
    type: exec
    state_match: [b]
    success_transition: to_a
    fail_transition: to_a
    interval: 500ms
    properties:
      command: ./step.sh b
      parse_as_data: true
  - name: managed
    type: file
    interval: 1s
    properties:
      path: managed.txt
      contents: "{{ lookup \\"data.at\\" \\"\\" }}\\n"
      owner: root
      group: root
      mode: "0644"
"""

# Each state's command runs on entering it, so the machine flips as fast as the command: the
# sleep keeps it to about ten transitions a second.
STEP = """\
#!/bin/sh
sleep 0.1
printf '{"last": "%s", "at": %s, "pad": "%s"}' "$1" "$(date +%s%N)" "$(head -c 2000 /dev/zero | tr '\\0' x)"
"""


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str = "4m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip()}); see docs/reliability.md"
        )
    try:
        yield path
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as handle:
        while True:
            try:
                written += handle.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]


def metric(agent: AgentProcess, name: str) -> float:
    import httpx

    text = httpx.get(agent.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^{name}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def watcher_outcomes(agent: AgentProcess) -> dict[str, dict[str, int]]:
    watchers = agent.get("/api/v1/machines/diskuser/watchers")["watchers"]
    return {w["name"]: dict(w["status"]["outcomes"]) for w in watchers}


def history_count(agent: AgentProcess) -> int:
    return len(agent.get("/api/v1/machines/diskuser/history", params={"limit": 1000})["history"])


def check_files(state: Path, machine: Path) -> None:
    db = sqlite3.connect(f"file:{state / 'machinery.db'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    data = machine / "machine_data.json"
    if data.exists():
        assert isinstance(json.loads(data.read_text()), dict)


def test_a_full_disk_is_survived_and_recovered(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "tiny") as tiny:
        agent = AgentProcess(tmp_path)  # its log stays off the tiny disk
        agent.store, agent.state = tiny / "store", tiny / "state"
        agent.store.mkdir()
        machine = agent.store / "diskuser"
        machine.mkdir()
        (machine / "machine.yaml").write_text(textwrap.dedent(DISK_USER))
        (machine / "step.sh").write_text(STEP)
        (machine / "step.sh").chmod(0o755)
        try:
            agent.start()
            agent.wait(lambda: history_count(agent) >= 6, timeout=20, what="a few transitions")
            errors_before = metric(agent, "machinery_state_write_errors_total")
            filled = fill(tiny / "filler")
            full_at = metric(agent, "machinery_transitions_total")
            # Machines keep running and the API answers while the disk is full.
            agent.wait(
                lambda: metric(agent, "machinery_transitions_total") >= full_at + 10,
                timeout=20,
                what="transitions on a full disk",
            )
            agent.wait(
                lambda: metric(agent, "machinery_state_write_errors_total") > errors_before,
                timeout=20,
                what="counted state write errors",
            )
            agent.wait(
                lambda: (
                    watcher_outcomes(agent)["in_a"].get("error", 0) > 0
                    and watcher_outcomes(agent)["managed"].get("error", 0) > 0
                ),
                timeout=20,
                what="data-file and managed-file errors as outcomes",
            )
            while_full = metric(agent, "machinery_state_write_errors_total")
            outcomes_full = watcher_outcomes(agent)
            check_files(agent.state, machine)
            rows_full = history_count(agent)
            # Space returns: writes resume.
            (tiny / "filler").unlink()
            errors_after_free = metric(agent, "machinery_state_write_errors_total")
            agent.wait(
                lambda: history_count(agent) > rows_full + 4, timeout=20, what="history again"
            )
            agent.wait(
                lambda: (
                    watcher_outcomes(agent)["managed"].get("changed", 0)
                    > outcomes_full["managed"].get("changed", 0)
                ),
                timeout=20,
                what="the managed file written again",
            )
            settled = metric(agent, "machinery_state_write_errors_total")
            time.sleep(1.0)
            assert metric(agent, "machinery_state_write_errors_total") == settled
            data = json.loads((machine / "machine_data.json").read_text())
            assert data["last"] in ("a", "b") and time.time_ns() - int(data["at"]) < 10e9
            code, _ = agent.stop()
            assert code == 0
            check_files(agent.state, machine)
            log = agent.log.read_text()
        finally:
            agent.kill()
    assert "could not write" in log and "state records" in log
    print(
        f"full disk: filled {filled >> 10} KiB; while full {int(while_full - errors_before)} "
        f"state records could not be written (counted, logged), exec outcomes "
        f"{outcomes_full['in_a']}, managed file {outcomes_full['managed']}; no corruption; "
        f"after freeing space history grew from {rows_full} rows and the errors stopped at "
        f"{int(settled)} ({int(settled - errors_after_free)} more while the last full writes "
        "drained)"
    )
    assert while_full > errors_before
