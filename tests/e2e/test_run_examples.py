"""End to end: ``machinery run examples/<x>`` in a real process, driven by changing its world."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
IDENTITY = "e2e.example.net"


class Run:
    def __init__(self, process: subprocess.Popen[bytes], events: Path, log: Path) -> None:
        self.process = process
        self.events_file = events
        self.log_file = log

    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.exists():
            return []
        text = self.events_file.read_text()
        # Only whole lines: the agent may be half way through writing the last one.
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line]

    def wait_until(self, predicate: Any, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.poll() is not None:
                raise AssertionError(f"machinery exited early:\n{self.log_file.read_text()}")
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def transitions(self) -> list[tuple[str, str, str, str]]:
        return [
            (
                e["data"]["machine"],
                e["data"]["transition"],
                e["data"]["from_state"],
                e["data"]["to_state"],
            )
            for e in self.events()
            if e["type"] == "io.choria.machine.v1.transition"
        ]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[tuple[str, str, str, str]]:
        deadline = time.monotonic() + timeout
        while len(self.transitions()) < count:
            if self.process.poll() is not None:
                raise AssertionError(f"machinery exited early:\n{self.log_file.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} transitions, got {self.transitions()}\n{self.log_file.read_text()}"
                )
            time.sleep(0.02)
        return self.transitions()


@pytest.fixture
def run_example(tmp_path: Path) -> Iterator[Any]:
    runs: list[Run] = []

    def start(*names: str) -> tuple[Run, list[Path]]:
        dirs = []
        for name in names:
            target = tmp_path / name
            if not target.exists():  # a machine nested in an example copied before it
                shutil.copytree(
                    ROOT / "examples" / name,
                    target,
                    ignore=shutil.ignore_patterns("world", "machine_data.json"),
                )
            dirs.append(target)
        events, log = tmp_path / "events.jsonl", tmp_path / "run.log"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "machinery",
                "run",
                *map(str, dirs),
                "--events",
                str(events),
                "--identity",
                IDENTITY,
                "--no-rate-limit",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),
            cwd=tmp_path,
        )
        run = Run(process, events, log)
        runs.append(run)
        deadline = time.monotonic() + 15
        while log.read_text().count("Starting Choria Machine") < len(names):
            assert time.monotonic() < deadline, log.read_text()
            assert process.poll() is None, log.read_text()
            time.sleep(0.02)
        return run, dirs

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def stop(run: Run, signum: int = signal.SIGTERM) -> float:
    started = time.monotonic()
    run.process.send_signal(signum)
    code = run.process.wait(timeout=10)
    elapsed = time.monotonic() - started
    assert code == 0, run.log_file.read_text()
    return elapsed


def wait_for_lines(path: Path, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= count):
        assert time.monotonic() < deadline, f"{path} has fewer than {count} lines"
        time.sleep(0.01)


def monitor_runs(run: Run) -> list[dict[str, Any]]:
    return [e for e in run.events() if e["data"].get("name") == "monitor"]


def touch(path: Path) -> None:
    path.write_text(path.read_text())


def check_cloudevents(events: list[dict[str, Any]]) -> None:
    ids = set()
    for event in events:
        assert list(event) == [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "datacontenttype",
            "time",
            "data",
        ]
        assert event["specversion"] == "1.0"
        assert UUID.match(event["id"]) and event["id"] not in ids
        ids.add(event["id"])
        assert event["source"] == "io.choria.machine"
        assert event["subject"] == IDENTITY
        assert event["datacontenttype"] == "application/json"
        data = event["data"]
        assert event["type"] == data["protocol"]
        assert data["identity"] == IDENTITY
        assert UUID.match(data["id"])
        assert event["time"] == datetime.fromtimestamp(data["timestamp"], UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        assert abs(data["timestamp"] - time.time()) < 120
        if event["type"] == "io.choria.machine.v1.transition":
            assert list(data) == [
                "protocol",
                "identity",
                "id",
                "version",
                "timestamp",
                "machine",
                "transition",
                "from_state",
                "to_state",
            ]
        else:
            assert list(data)[:8] == [
                "protocol",
                "identity",
                "id",
                "version",
                "timestamp",
                "type",
                "machine",
                "name",
            ]
            assert data["protocol"] == f"io.choria.machine.watcher.{data['type']}.v1.state"


def test_hvac_follows_the_room_temperature(run_example: Any) -> None:
    run, [hvac] = run_example("hvac")
    world = hvac / "world"
    world.mkdir()
    (world / "temperature").write_text("25\n")

    touch(hvac / "hvac.json")  # the file watcher's first look: variables are known
    run.wait_for(2)  # variables_changed, then the monitor finds it too warm
    wait_for_lines(world / "hvac.log", 2)  # off, then on: let on.sh finish before going on
    # Entering running runs the monitor once more (still too warm: a silent self-transition).
    # Let it finish: a run still going when the world changes below would fire air_bad late.
    run.wait_until(lambda: len(monitor_runs(run)) >= 2, "the monitor's second run")
    (world / "temperature").write_text("18\n")
    os.unlink(hvac / "hvac.json")  # variables gone: back to unknown
    run.wait_for(3)
    (hvac / "hvac.json").write_text('{"target": 21}\n')
    run.wait_for(4)
    wait_for_lines(world / "hvac.log", 4)
    # Entering idle runs the monitor: 18 is below 21, so it succeeds (a silent air_good).
    run.wait_until(
        lambda: any(e["data"].get("previous_outcome") == "success" for e in monitor_runs(run)),
        "the monitor's run in idle",
    )
    time_to_stop = stop(run)

    assert run.transitions() == [
        ("HVAC", "variables_changed", "unknown", "idle"),
        ("HVAC", "air_bad", "idle", "running"),
        ("HVAC", "variables_unknown", "running", "unknown"),
        ("HVAC", "variables_changed", "unknown", "idle"),
    ]
    assert (world / "hvac").read_text().strip() == "off"
    # off runs on entering idle, on on entering running, off again on entering unknown and idle.
    assert [line.split()[1] for line in (world / "hvac.log").read_text().splitlines()] == [
        "off",
        "on",
        "off",
        "off",
    ]
    events = run.events()
    check_cloudevents(events)
    machine_ids = {e["data"]["id"] for e in events}
    assert len(machine_ids) == 1
    watcher_states = [
        (e["data"]["name"], e["data"]["previous_outcome"])
        for e in events
        if e["data"]["protocol"] != "io.choria.machine.v1.transition"
    ]
    assert ("variables", "error") in watcher_states
    assert ("monitor", "error") in watcher_states and ("monitor", "success") in watcher_states
    assert time_to_stop < 2


def test_container_manager_deploys_and_rolls_out_a_new_tag(run_example: Any) -> None:
    run, [manager] = run_example("container-manager")
    touch(manager / "manifest.json")
    run.wait_for(2)
    assert (
        manager / "world" / "container"
    ).read_text().strip() == "registry.example.net/ops/example:v1"
    manifest = json.loads((manager / "manifest.json").read_text())
    manifest["tag"] = "v2"
    (manager / "manifest.json").write_text(json.dumps(manifest))
    run.wait_for(4)
    assert stop(run, signal.SIGINT) < 2
    assert run.transitions() == [
        ("ContainerManager", "absent", "unknown", "deploy"),
        ("ContainerManager", "deployed", "deploy", "monitor"),
        ("ContainerManager", "absent", "monitor", "deploy"),
        ("ContainerManager", "deployed", "deploy", "monitor"),
    ]
    assert (
        manager / "world" / "container"
    ).read_text().strip() == "registry.example.net/ops/example:v2"
    check_cloudevents(run.events())


def test_invalid_machine_is_reported_and_nothing_runs(tmp_path: Path) -> None:
    machine = tmp_path / "bad"
    machine.mkdir()
    (machine / "machine.yaml").write_text("name: bad\nversion: 1.0.0\ninitial_state: a\n")
    result = subprocess.run(
        [sys.executable, "-m", "machinery", "run", str(machine)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"{machine / 'machine.yaml'}:1:1: no transitions defined" in result.stderr
    assert "Traceback" not in result.stderr


FACTS_MACHINE = """\
name: greeter
version: 1.0.0
initial_state: waiting
transitions:
  - name: greeted
    from: [waiting]
    destination: done
watchers:
  - name: trigger
    type: file
    success_transition: greeted
    state_match: [waiting]
    properties:
      path: go
  - name: greet
    type: exec
    state_match: [done]
    properties:
      command: ./greet.sh {{ lookup "facts.greeting" "none" }} {{ lookup "data.who" "nobody" }}
"""


def test_run_with_facts_and_data_files(tmp_path: Path) -> None:
    machine = tmp_path / "greeter"
    machine.mkdir()
    (machine / "machine.yaml").write_text(FACTS_MACHINE)
    (machine / "greet.sh").write_text('#!/bin/sh\nprintf "%s|%s" "$1" "$2" > greeting\n')
    (machine / "greet.sh").chmod(0o755)
    (tmp_path / "facts.json").write_text('{"greeting": "hello there"}')
    (tmp_path / "data.json").write_text('{"who": "operator"}')
    log = tmp_path / "run.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "machinery",
            "run",
            str(machine),
            "--facts",
            str(tmp_path / "facts.json"),
            "--data",
            str(tmp_path / "data.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )
    try:
        deadline = time.monotonic() + 15
        while "Starting Choria Machine" not in log.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.02)
        (machine / "go").write_text("now")
        while not (machine / "greeting").exists():
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.02)
        assert (machine / "greeting").read_text() == "hello there|operator"
        assert json.loads((machine / "machine_data.json").read_text()) == {"who": "operator"}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_run_refuses_bad_facts(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples" / "hvac", tmp_path / "hvac")
    (tmp_path / "facts.json").write_text("[1, 2]")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "machinery",
            "run",
            str(tmp_path / "hvac"),
            "--facts",
            str(tmp_path / "facts.json"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "must hold a JSON object" in result.stderr
