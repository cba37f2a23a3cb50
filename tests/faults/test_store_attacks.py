"""What arrives in the machine store, tried as an attacker would (issue 13, items 1, 2, 8, 9).

A FIFO or device named ``machine.yaml``, a ``machine.yaml`` or program linked out of its machine
directory, control characters in a directory's name and a templated program rendered to an unsafe
script: each reproduced against a real agent (a process where signals and the API matter), each
bounded in time. The agent must keep serving its API and its other machines, and stop on SIGTERM.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from machinery.core.wakeup import TICK
from tests.agent.test_store import LAMP, script, write
from tests.e2e.agent_process import AgentProcess

# Generous bounds (a loaded 2-core box): the issue asks for an answer in under a second.
API_BOUND = 5.0
SECRET = "canaryroot:*:19000:0:99999:7:::\nsecret-token-line: canary-hunter2\n"
CANARIES = ("canaryroot", "19000", "99999", "secret-token-line", "canary-hunter2")


def _healthz(agent: AgentProcess) -> None:
    """The API answers within the bound (raises otherwise)."""
    httpx.get(agent.url + "/healthz", timeout=API_BOUND).raise_for_status()


def _entry(agent: AgentProcess, name: str) -> dict[str, Any] | None:
    response = httpx.get(agent.url + "/api/v1/machines", timeout=API_BOUND)
    for entry in response.json()["machines"]:
        if entry["name"] == name:
            return dict(entry)
    return None


def _device(path: Path) -> bool:
    """Make ``path`` a character device like /dev/null; False where this box does not allow it."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        return False
    return True


def _stopped_by_sigterm(agent: AgentProcess) -> None:
    code, _took = agent.stop(timeout=20)
    assert code == 0, agent.log.read_text()[-3000:]


# -- item 1: only regular files are manifests --------------------------------------------------


def test_fifo_and_device_manifests_at_start_neither_freeze_nor_stop_the_agent(
    tmp_path: Path,
) -> None:
    agent = AgentProcess(tmp_path)
    write(agent.store, "lamp", LAMP.format(name="lamp"))
    (agent.store / "fifo").mkdir()
    os.mkfifo(agent.store / "fifo" / "machine.yaml", 0o600)
    (agent.store / "device").mkdir()
    has_device = _device(agent.store / "device" / "machine.yaml")
    (agent.store / "folder" / "machine.yaml").mkdir(parents=True)
    try:
        agent.start(timeout=20)  # on the old code: never serves its API
        agent.wait(lambda: (_entry(agent, "lamp") or {}).get("status") == "running", what="lamp")
        fifo = _entry(agent, "fifo")
        assert fifo is not None and fifo["status"] == "invalid"
        assert fifo["errors"] == [
            f"{agent.store / 'fifo' / 'machine.yaml'}: cannot read: "
            "not a regular file (a FIFO (named pipe))"
        ]
        folder = _entry(agent, "folder")
        assert folder is not None and folder["status"] == "invalid"
        assert "not a regular file (a directory)" in folder["errors"][0]
        if has_device:
            device = _entry(agent, "device")
            assert device is not None and device["status"] == "invalid"
            assert "not a regular file (a character device)" in device["errors"][0]
        else:
            print("mknod not permitted here: the device case ran only in the unit test")
        _healthz(agent)
        _stopped_by_sigterm(agent)  # on the old code: SIGTERM is never handled
    finally:
        agent.kill()


def test_a_fifo_manifest_added_while_running_stops_nothing(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path)
    write(agent.store, "lamp", LAMP.format(name="lamp"))
    try:
        agent.start(timeout=20)
        agent.wait(lambda: (_entry(agent, "lamp") or {}).get("status") == "running", what="lamp")
        (agent.store / "late").mkdir()
        os.mkfifo(agent.store / "late" / "machine.yaml", 0o600)
        (agent.store / "late-device").mkdir()
        has_device = _device(agent.store / "late-device" / "machine.yaml")

        def refused() -> bool:
            # Every poll is an API call that must answer within the bound.
            late = _entry(agent, "late")
            device = _entry(agent, "late-device")
            return (
                late is not None
                and late["status"] == "invalid"
                and (not has_device or (device is not None and device["status"] == "invalid"))
            )

        agent.wait(refused, timeout=20, what="the FIFO refused")
        late = _entry(agent, "late")
        assert late is not None and "(a FIFO (named pipe))" in late["errors"][0]
        lamp = _entry(agent, "lamp")
        assert lamp is not None and lamp["status"] == "running"
        _healthz(agent)
        _stopped_by_sigterm(agent)
    finally:
        agent.kill()


def test_machinery_validate_on_a_fifo_answers(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "machine.yaml", 0o600)
    for target in (tmp_path, tmp_path / "machine.yaml"):
        result = subprocess.run(
            [sys.executable, "-m", "machinery", "validate", str(target)],
            capture_output=True,
            text=True,
            timeout=60,  # on the old code: hangs until something writes to the FIFO
        )
        assert result.returncode == 1
        assert "not a regular file (a FIFO (named pipe))" in result.stderr
        assert "Traceback" not in result.stderr


# -- item 2: nothing outside the machine directory ---------------------------------------------


async def test_a_manifest_linked_out_of_its_directory_is_refused_unquoted(
    agent_factory: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    async with agent_factory() as run:
        (run.store / "leak").mkdir()
        (run.store / "leak" / "machine.yaml").symlink_to(secret)
        # A link that stays inside the machine directory is followed.
        inside = run.store / "versioned"
        (inside / "versions").mkdir(parents=True)
        (inside / "versions" / "v2.yaml").write_text(LAMP.format(name="versioned"))
        (inside / "machine.yaml").symlink_to(Path("versions") / "v2.yaml")
        # A relative link climbing out is as outside as an absolute one.
        (run.store / "climb").mkdir()
        (run.store / "climb" / "machine.yaml").symlink_to(Path("..") / ".." / "shadow")
        await run.wait(
            lambda: all(
                run.entry_status(name) in ("invalid", "running")
                for name in ("leak", "versioned", "climb")
            ),
            what="loaded",
        )
        assert run.entry_status("versioned") == "running"
        body = (await run.http.get("/api/v1/machines")).text
        for name in ("leak", "climb"):
            assert run.entry_status(name) == "invalid"
            entry = (await run.http.get(f"/api/v1/machines/{name}")).json()
            assert entry["errors"] == [
                f"{run.store / name / 'machine.yaml'}: cannot read: "
                "a symbolic link out of its directory (not followed)"
            ]
        for canary in CANARIES:
            assert canary not in body, f"{canary!r} of the linked file reached the API"
        assert str(secret) not in body  # where the link points is not told either


async def test_a_program_linked_or_climbing_out_of_its_directory_is_refused(
    agent_factory: Any, tmp_path: Path
) -> None:
    outside = script(tmp_path / "outside" / "tool.sh")  # safe by itself: mode 0755, ours
    async with agent_factory() as run:
        linked = write(
            run.store, "linked", LAMP.format(name="linked").replace("/bin/true", "./tool.sh")
        )
        (linked / "tool.sh").symlink_to(outside)
        climbing = write(
            run.store,
            "climbing",
            LAMP.format(name="climbing").replace("/bin/true", "../../outside/tool.sh"),
        )
        await run.wait(
            lambda: run.entry_status("linked") == run.entry_status("climbing") == "refused",
            what="refused",
        )
        assert run.agent.store.find("linked").errors == [
            f"watcher 'check' runs ./tool.sh: {linked / 'tool.sh'} resolves outside the machine "
            f"directory {linked}"
        ]
        assert run.agent.store.find("climbing").errors == [
            f"watcher 'check' runs ../../outside/tool.sh: {climbing / '../../outside/tool.sh'} "
            f"resolves outside the machine directory {climbing}"
        ]
        # Still refused at every rescan, without loading the manifest again.
        loaded_at = {name: run.agent.store.find(name).loaded_at for name in ("linked", "climbing")}
        for directory in (linked, climbing):
            await run.agent.store._reconcile(directory)  # what a rescan does with each
        for name, when in loaded_at.items():
            assert run.entry_status(name) == "refused"
            assert run.agent.store.find(name).loaded_at == when, f"{name} was parsed again"


# -- item 9: the rendered program is checked when it runs --------------------------------------

TEMPLATED = """\
name: templated
version: 1.0.0
initial_state: "off"
transitions:
  - name: switch_on
    from: ["off"]
    destination: "on"
  - name: broke
    from: ["on"]
    destination: broken
watchers:
  - name: tool
    type: exec
    state_match: ["on"]
    fail_transition: broke
    interval: 1m
    properties:
      command: ./{{ lookup "facts.tool" "missing.sh" }}
"""


async def _run_templated(run: Any) -> Any:
    """Turn the machine on (its watcher runs the command once) and wait for the outcome."""
    machine = run.agent.store.find("templated").machine
    await machine.transition("switch_on")
    await run.wait(lambda: machine.state == "broken", timeout=10, what="the command's outcome")
    return machine.watchers[0]


@pytest.mark.parametrize(
    ("tool", "unsafe"),
    [
        ("../../outside/evil.sh", "resolves outside the machine directory"),
        ("bin/evil.sh", "is writable by group or others (mode 0777)"),
    ],
)
async def test_a_templated_program_rendered_to_an_unsafe_script_does_not_run(
    agent_factory: Any, tmp_path: Path, tool: str, unsafe: str
) -> None:
    marker = tmp_path / "ran"
    evil = f"#!/bin/sh\ntouch {marker}\n"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "evil.sh").write_text(evil)
    (tmp_path / "outside" / "evil.sh").chmod(0o777)
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"tool": tool}))
    async with agent_factory(facts=str(facts)) as run:
        directory = run.store / "templated"
        script(directory / "bin" / "evil.sh").write_text(evil)  # safe (0755) when it loads
        write(run.store, "templated", TEMPLATED)
        await run.wait(lambda: run.entry_status("templated") == "running", what="loaded")
        # Made unsafe after the store's checks at load passed it.
        (directory / "bin" / "evil.sh").chmod(0o777)
        watcher = await _run_templated(run)
        assert not marker.exists(), "the unsafe script ran"
        error = watcher.status.last_error
        assert error is not None and error.startswith(f"refusing to run ./{tool}: "), error
        assert unsafe in error


async def test_a_safe_templated_program_runs(agent_factory: Any, tmp_path: Path) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"tool": "bin/fine.sh"}))
    marker = tmp_path / "ran"
    async with agent_factory(facts=str(facts)) as run:
        directory = run.store / "templated"
        script(directory / "bin" / "fine.sh").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        write(run.store, "templated", TEMPLATED)
        await run.wait(lambda: run.entry_status("templated") == "running", what="loaded")
        watcher = await _run_templated(run)
        assert marker.exists()
        assert watcher.status.last_error == "exit status 1"


async def test_rendered_programs_are_not_checked_with_the_permission_checks_off(
    agent_factory: Any, tmp_path: Path
) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"tool": "bin/open.sh"}))
    marker = tmp_path / "ran"
    async with agent_factory(facts=str(facts), check_permissions=False) as run:
        directory = run.store / "templated"
        script(directory / "bin" / "open.sh", 0o777).write_text(
            f"#!/bin/sh\ntouch {marker}\nexit 1\n"
        )
        write(run.store, "templated", TEMPLATED)
        await run.wait(lambda: run.entry_status("templated") == "running", what="loaded")
        await _run_templated(run)
        assert marker.exists()


# -- item 8: control characters never reach the log or the terminal raw ------------------------


def test_control_characters_in_directory_names_are_escaped_in_the_log_and_status(
    tmp_path: Path,
) -> None:
    agent = AgentProcess(tmp_path)
    name = "evil\nFORGED ERROR line\x1b[31m\x9b\u202e"
    write(agent.store, name, "name: [broken\n")
    try:
        agent.start(timeout=20)
        agent.wait(lambda: _entry(agent, name) is not None, what="the entry")
        status = subprocess.run(
            [sys.executable, "-m", "machinery", "status", "--agent", agent.url],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        _stopped_by_sigterm(agent)
    finally:
        agent.kill()
    log = agent.log.read_text()
    assert "evil\\nFORGED ERROR line\\x1b[31m\\x9b\\u202e" in log
    for text in (log, status.stdout):
        assert "\x1b" not in text and "\x9b" not in text and "\u202e" not in text
        assert not any(line.startswith("FORGED") for line in text.splitlines())
    assert "evil\\nFORGED ERROR line\\x1b[31m\\x9b\\u202e" in status.stdout


NAGIOS = """\
name: checked
version: 1.0.0
initial_state: watching
transitions:
  - name: stop
    from: [watching]
    destination: stopped
watchers:
  - name: plugin
    type: nagios
    interval: 1m
    properties:
      plugin: ./{{ o "tool" "missing.sh" }} --warn 5
"""


async def test_a_nagios_plugin_rendered_out_of_its_directory_is_unknown_not_run(
    agent_factory: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    script(tmp_path / "outside" / "evil.sh").write_text(f"#!/bin/sh\ntouch {marker}\n")
    overrides = tmp_path / "overrides.json"  # Scout overrides: what `o` renders
    overrides.write_text(json.dumps({"checked": {"tool": "../../outside/evil.sh"}}))
    async with agent_factory(overrides_file=str(overrides)) as run:
        write(run.store, "checked", NAGIOS)
        await run.wait(lambda: run.entry_status("checked") == "running", what="loaded")
        watcher = run.agent.store.find("checked").machine.watchers[0]
        await watcher.check(TICK)  # its interval tick, now (the agent staggers the first)
        assert not marker.exists(), "the plugin outside the machine directory ran"
        error = watcher.status.last_error
        assert error is not None and "refusing to run ./../../outside/evil.sh: " in error, error
        assert "resolves outside the machine directory" in error
