"""The soak's machine store: the bundled examples plus generated machines that use the exec, file,
expression, timer and schedule watchers, and one machine whose command can be made to hang."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

__all__ = ["GENERATED_PREFIX", "broken_manifest", "build_store", "generated_manifest"]

ROOT = Path(__file__).resolve().parents[1]
GENERATED_PREFIX = "gen-"

GENERATED = """\
name: {name}
version: 1.0.0
initial_state: idle
transitions:
  - name: start
    from: [idle]
    destination: working
  - name: done
    from: [working]
    destination: idle
  - name: fail
    from: [idle, working]
    destination: broken
  - name: repair
    from: [broken]
    destination: idle
  - name: poke
    from: [idle, working, broken]
    destination: poked
  - name: settle
    from: [poked]
    destination: idle
watchers:
  - name: check
    type: exec
    state_match: [working]
    success_transition: done
    fail_transition: fail
    interval: {interval}s
    properties:
      command: ./check.sh {{{{ lookup "data.n" "0" }}}}
      parse_as_data: true
      timeout: 5s
  - name: trigger
    type: file
    success_transition: poke
    interval: 10s
    properties:
      path: trigger.txt
      gather_initial_state: true
  - name: healthy
    type: expression
    state_match: [broken]
    success_transition: repair
    interval: 5s
    properties:
      success_when: len(data) >= 0
  - name: back
    type: timer
    state_match: [poked]
    fail_transition: settle
    properties:
      timer: {timer}s
  - name: tick
    type: schedule
    state_match: [idle]
    success_transition: start
    properties:
      schedules: ["* * * * *"]
      duration: 10s
"""

CHECK = """\
#!/bin/sh
# Fails while fail.flag exists (the soak's command failures); otherwise counts its runs.
if [ -e fail.flag ]; then echo "failing on purpose"; exit 1; fi
printf '{"n": %d}' "$(( ${1:-0} + 1 ))"
"""

HANGER = """\
name: hanger
version: 1.0.0
initial_state: watching
transitions:
  - name: hung
    from: [watching]
    destination: recovering
  - name: recovered
    from: [recovering]
    destination: watching
watchers:
  - name: maybe_hang
    type: exec
    state_match: [watching]
    fail_transition: hung
    interval: 3s
    properties:
      command: ./maybe_hang.sh
      timeout: 2s
  - name: wait
    type: timer
    state_match: [recovering]
    fail_transition: recovered
    properties:
      timer: 2s
"""

MAYBE_HANG = """\
#!/bin/sh
# Hangs (ignoring SIGTERM, with a grandchild) while hang.flag exists.
if [ -e hang.flag ]; then
  trap '' TERM
  sh -c 'trap "" TERM; sleep 600' &
  sleep 600
fi
exit 0
"""


def generated_manifest(name: str, rng: random.Random) -> str:
    return GENERATED.format(name=name, interval=rng.choice([5, 7, 10, 15]), timer=rng.randint(2, 6))


def broken_manifest(name: str) -> str:
    """A manifest the agent must refuse (and show as invalid) until it is fixed."""
    return f"name: {name}\nversion: 1.0.0\ninitial_state: idle\ntransitions: [\n"


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def build_store(store: Path, machines: int, seed: int = 1) -> list[str]:
    """Fill ``store``; returns the names of every machine in it."""
    rng = random.Random(seed)
    store.mkdir(parents=True, exist_ok=True)
    names = []
    for example in sorted((ROOT / "examples").iterdir()):
        if (example / "machine.yaml").exists():
            shutil.copytree(
                example, store / example.name,
                ignore=shutil.ignore_patterns("world", "machine_data.json", "*.test.yaml"),
            )  # fmt: skip
            names.append(example.name)
    for index in range(machines):
        name = f"{GENERATED_PREFIX}{index:03d}"
        directory = store / name
        directory.mkdir()
        (directory / "machine.yaml").write_text(generated_manifest(name, rng))
        _executable(directory / "check.sh", CHECK)
        (directory / "trigger.txt").write_text("0\n")
        names.append(name)
    hanger = store / "hanger"
    hanger.mkdir()
    (hanger / "machine.yaml").write_text(HANGER)
    _executable(hanger / "maybe_hang.sh", MAYBE_HANG)
    names.append("hanger")
    return names
