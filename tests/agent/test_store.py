"""The store manager inside a real agent: add, change, break, fix and remove machines."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from machinery.agent.store import eligible_name, permission_problem

LAMP = """\
name: {name}
version: 1.0.0
initial_state: "off"
transitions:
  - name: switch_on
    from: ["off"]
    destination: "on"
  - name: switch_off
    from: ["on"]
    destination: "off"
watchers:
  - name: check
    type: exec
    state_match: ["on"]
    interval: 1m
    properties:
      command: /bin/true
"""


def write(store: Path, directory: str, text: str) -> Path:
    target = store / directory
    target.mkdir(exist_ok=True)
    staged = target / ".machine.yaml.tmp"
    staged.write_text(text)
    os.replace(staged, target / "machine.yaml")
    return target


async def test_add_change_break_fix_remove_each_within_a_second(agent_factory: Any) -> None:
    async with agent_factory(("hvac",)) as run:
        store = run.store
        assert run.entry_status("HVAC") == "running"

        write(store, "lamp", LAMP.format(name="lamp"))
        took = await run.wait(lambda: run.entry_status("lamp") == "running", what="added")
        assert took < 1
        first = run.agent.store.find("lamp").machine
        assert first is not None
        first.data.put("kept", True)

        write(store, "lamp", LAMP.format(name="lamp").replace("interval: 1m", "interval: 2m"))
        took = await run.wait(
            lambda: (
                (e := run.agent.store.find("lamp")) is not None
                and e.machine is not None
                and e.machine is not first
            ),
            what="restart",
        )
        assert took < 1
        second = run.agent.store.find("lamp").machine
        assert second.instance_id != first.instance_id
        assert second.data.get("kept") is True  # data survives a reload

        write(store, "lamp", "name: lamp\nversion: [\n")
        took = await run.wait(lambda: run.entry_status("lamp") == "invalid", what="invalid")
        assert took < 1
        entry = run.agent.store.find("lamp")
        assert entry.errors and entry.errors[0].startswith(f"{store / 'lamp' / 'machine.yaml'}:")
        assert run.entry_status("HVAC") == "running"  # the others are untouched

        write(store, "lamp", LAMP.format(name="lamp"))
        took = await run.wait(lambda: run.entry_status("lamp") == "running", what="fixed")
        assert took < 1

        shutil.rmtree(store / "lamp")
        took = await run.wait(lambda: run.agent.store.find("lamp") is None, what="removed")
        assert took < 1
        assert [m.name for m in run.agent.group] == ["HVAC"]


async def test_touching_scripts_or_the_manifest_does_not_restart(agent_factory: Any) -> None:
    async with agent_factory(("hvac",)) as run:
        machine = run.agent.store.find("HVAC").machine
        (run.store / "hvac" / "monitor.sh").write_text("#!/bin/sh\nexit 0\n")
        os.utime(run.store / "hvac" / "machine.yaml")
        run.agent.store.rescan()
        await run.wait(
            lambda: not run.agent.store._queued and not run.agent.store._pending, what="quiet"
        )
        assert run.agent.store.find("HVAC").machine is machine


async def test_staging_directories_are_ignored(agent_factory: Any) -> None:
    async with agent_factory() as run:
        for name in (".hidden", "tmp", "tmpstuff", "download-temp"):
            write(run.store, name, LAMP.format(name=name.strip(".").replace("-", "_")))
        write(run.store, "real", LAMP.format(name="real"))
        await run.wait(lambda: run.entry_status("real") == "running")
        assert [e.directory.name for e in run.agent.store.sorted_entries()] == ["real"]


async def test_unsafe_permissions_are_refused_until_fixed(agent_factory: Any) -> None:
    async with agent_factory() as run:
        directory = write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        (directory / "machine.yaml").chmod(0o666)
        await run.wait(lambda: run.entry_status("lamp") == "refused", what="refused")
        entry = run.agent.store.find("lamp")
        assert "writable by group or others (mode 0666)" in entry.errors[0]
        assert not list(run.agent.group)
        (directory / "machine.yaml").chmod(0o644)
        await run.wait(lambda: run.entry_status("lamp") == "running", what="accepted again")


async def test_permission_checks_can_be_turned_off(agent_factory: Any) -> None:
    async with agent_factory(check_permissions=False) as run:
        directory = write(run.store, "lamp", LAMP.format(name="lamp"))
        directory.chmod(0o777)
        await run.wait(lambda: run.entry_status("lamp") == "running")


async def test_duplicate_machine_names_are_refused(agent_factory: Any) -> None:
    async with agent_factory() as run:
        write(run.store, "a", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        write(run.store, "b", LAMP.format(name="lamp"))
        await run.wait(
            lambda: (
                (e := run.agent.store.entries.get(run.store / "b")) is not None
                and e.problem is not None
            )
        )
        assert "already used by" in run.agent.store.entries[run.store / "b"].problem


async def test_rescan_is_a_safety_net_without_inotify(agent_factory: Any) -> None:
    async with agent_factory(rescan_interval="200ms") as run:
        assert run.agent.node.file_monitor is not None
        run.agent.node.file_monitor.close()  # as if inotify were unavailable
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running", timeout=5, what="rescan")


async def test_machines_resume_their_state_after_an_agent_restart(agent_factory: Any) -> None:
    async with agent_factory() as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        response = await run.http.post(
            "/api/v1/machines/lamp/transition", json={"transition": "switch_on"}
        )
        assert response.status_code == 200
    async with agent_factory() as run:
        assert run.agent.store.find("lamp").machine.state == "on"
        # A changed manifest starts from its initial state, as Choria does.
        write(run.store, "lamp", LAMP.format(name="lamp").replace("interval: 1m", "interval: 5m"))
        await run.wait(
            lambda: (
                run.agent.store.find("lamp").machine is not None
                and run.agent.store.find("lamp").machine.state == "off"
            ),
            what="reload",
        )


def test_eligible_names() -> None:
    assert eligible_name("web")
    assert not eligible_name(".git")
    assert not eligible_name("tmp")
    assert not eligible_name("mm_x-temp")


def test_permission_problem(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0o644)
    assert permission_problem(path, os.geteuid()) is None
    path.chmod(0o620)
    assert "writable by group" in (permission_problem(path, os.geteuid()) or "")
    if os.geteuid() == 0:
        path.chmod(0o644)
        os.chown(path, 12345, 12345)
        assert "owned by uid 12345" in (permission_problem(path, os.geteuid()) or "")
    else:
        pytest.skip("ownership by another user needs root to set up")
