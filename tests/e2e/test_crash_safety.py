"""SIGKILL at random moments during heavy transitions and data writes: nothing is corrupted, and
every restart resumes from a consistent state. ``CRASH_ROUNDS`` sets the rounds."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import sqlite3
import textwrap
import time
from pathlib import Path

from tests.e2e.agent_process import AgentProcess

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "50"))

FLIPPER = """\
name: flipper
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
    interval: 500ms
    properties:
      command: ./step.sh a
      parse_as_data: true
  - name: in_b
    type: exec
    state_match: [b]
    success_transition: to_a
    interval: 500ms
    properties:
      command: ./step.sh b
      parse_as_data: true
"""

STEP = """\
#!/bin/sh
printf '{"last": "%s", "at": %s, "payload": "%s"}' "$1" "$(date +%s%N)" "$(head -c 200 /dev/zero | tr '\\0' x)"
"""


def check_consistency(state_dir: Path, machine_dir: Path) -> tuple[str | None, int]:
    """Assert the database and data file are intact; return the recorded state and row count."""
    db = sqlite3.connect(state_dir / "machinery.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute(
            "SELECT instance, from_state, to_state FROM history WHERE machine = 'flipper' ORDER BY seq"
        ).fetchall()
        recorded = db.execute(
            "SELECT state FROM machine_state WHERE machine = 'flipper'"
        ).fetchone()
    finally:
        db.close()
    for previous, current in itertools.pairwise(rows):
        # Within an instance and across restarts (which resume) every step follows the last.
        assert current[1] == previous[2], (previous, current)
    if rows and recorded is not None:
        assert recorded[0] == rows[-1][2]
    data_file = machine_dir / "machine_data.json"
    if data_file.exists():
        data = json.loads(data_file.read_text())
        assert isinstance(data, dict)
        assert data == {} or data["last"] in ("a", "b")
    return (recorded[0] if recorded else None), len(rows)


def test_sigkill_during_heavy_transitions(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path)
    machine_dir = agent.store / "flipper"
    machine_dir.mkdir()
    (machine_dir / "machine.yaml").write_text(textwrap.dedent(FLIPPER))
    (machine_dir / "step.sh").write_text(STEP)
    (machine_dir / "step.sh").chmod(0o755)
    rng = random.Random(20261129)
    total_rows = 0
    corrupt = 0
    try:
        for _ in range(ROUNDS):
            agent.start()
            # Kick the loop off at once rather than at the first interval tick.
            state = agent.machine("flipper")["state"]
            agent.post(
                "/api/v1/machines/flipper/transition",
                {"transition": "to_b" if state == "a" else "to_a"},
            )
            time.sleep(rng.uniform(0.02, 0.5))
            agent.kill()
            with contextlib.suppress(AssertionError):
                _, total_rows = check_consistency(agent.state, machine_dir)
                continue
            corrupt += 1
            check_consistency(agent.state, machine_dir)  # raise with the details
        agent.start()
        # After the last kill the agent still starts, resumes where the database says, and goes on.
        recorded, _ = check_consistency(agent.state, machine_dir)
        last_seq = max(
            (h["seq"] for h in agent.get("/api/v1/machines/flipper/history")["history"]), default=0
        )
        agent.wait(
            lambda: any(
                h["seq"] > last_seq and h["from_state"] == recorded
                for h in agent.get("/api/v1/machines/flipper/history")["history"]
            ),
            what="a transition out of the resumed state",
        )
        code, _ = agent.stop()
        assert code == 0
        _, total_rows = check_consistency(agent.state, machine_dir)
    finally:
        agent.kill()
    print(f"{ROUNDS} SIGKILL rounds, {corrupt} corrupt files, {total_rows} transitions recorded")
    assert corrupt == 0
    assert total_rows > ROUNDS  # it really was busy
    assert not list(machine_dir.glob(".machine_data.json.*.tmp"))
