"""The store manager inside a real agent: add, change, break, fix and remove machines."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from machinery.agent.store import (
    command_problem,
    eligible_name,
    executable_problem,
    permission_problem,
    static_program,
)
from machinery.spec.yamlfile import MAX_FILE_BYTES
from tests.support import assert_took

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


async def test_add_change_break_fix_remove_are_each_picked_up_promptly(agent_factory: Any) -> None:
    # No rescan as a safety net: a change inotify missed would show as a 1 h wait, not 10 s.
    async with agent_factory(("hvac",), rescan_interval="1h") as run:
        store = run.store
        assert run.entry_status("HVAC") == "running"

        write(store, "lamp", LAMP.format(name="lamp"))
        took = await run.wait(lambda: run.entry_status("lamp") == "running", what="added")
        assert_took(took, 5.0, "in-process agent: store machine added")
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
        assert_took(took, 5.0, "in-process agent: store machine changed (restarted)")
        second = run.agent.store.find("lamp").machine
        assert second.instance_id != first.instance_id
        assert second.data.get("kept") is True  # data survives a reload

        write(store, "lamp", "name: lamp\nversion: [\n")
        took = await run.wait(lambda: run.entry_status("lamp") == "invalid", what="invalid")
        assert_took(took, 5.0, "in-process agent: store machine broken (invalid)")
        entry = run.agent.store.find("lamp")
        assert entry.errors and entry.errors[0].startswith(f"{store / 'lamp' / 'machine.yaml'}:")
        assert run.entry_status("HVAC") == "running"  # the others are untouched

        write(store, "lamp", LAMP.format(name="lamp"))
        took = await run.wait(lambda: run.entry_status("lamp") == "running", what="fixed")
        assert_took(took, 5.0, "in-process agent: store machine fixed")

        shutil.rmtree(store / "lamp")
        took = await run.wait(lambda: run.agent.store.find("lamp") is None, what="removed")
        assert_took(took, 5.0, "in-process agent: store machine removed")
        assert [m.name for m in run.agent.group] == ["HVAC"]


async def test_a_huge_manifest_is_invalid_without_touching_the_others(agent_factory: Any) -> None:
    async with agent_factory(("hvac",)) as run:
        huge = LAMP.format(name="lamp") + "# padding\n" * (MAX_FILE_BYTES // 10 + 1)
        write(run.store, "lamp", huge)
        await run.wait(lambda: run.entry_status("lamp") == "invalid", what="invalid")
        entry = run.agent.store.find("lamp")
        assert f"file is larger than {MAX_FILE_BYTES // 1024} KiB" in entry.errors[0]
        assert run.entry_status("HVAC") == "running"


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


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
async def test_a_group_or_world_writable_machine_directory_is_refused(
    agent_factory: Any, mode: int
) -> None:
    # Anyone who can write the directory can swap machine.yaml for their own, whatever the
    # manifest's own mode: the directory is checked as well as the file.
    async with agent_factory() as run:
        directory = write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        directory.chmod(mode)
        await run.wait(lambda: run.entry_status("lamp") == "refused", what="refused")
        entry = run.agent.store.find("lamp")
        assert entry.errors[0].endswith(
            f"{directory} is writable by group or others (mode {mode:04o})"
        ), entry.errors
        assert not list(run.agent.group)
        directory.chmod(0o755)
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


# -- the programs a machine runs -------------------------------------------------------------------


def script(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def test_static_program() -> None:
    assert static_program('./check.sh --host {{ lookup "facts.fqdn" "x" }}') == "./check.sh"
    assert static_program("'bin/my check' -v") == "bin/my check"
    assert static_program('check_load -w {{ o "warn" 5 }}') == "check_load"  # nagios' functions
    assert static_program('{{ lookup "data.tool" "./a.sh" }} -v') is None
    assert static_program('./bin/{{ lookup "data.tool" "a.sh" }}') is None
    assert static_program("") is None
    assert static_program("'' x") is None


def test_command_problem(tmp_path: Path) -> None:
    uid = os.geteuid()
    script(tmp_path / "check.sh")
    script(tmp_path / "bin" / "run.sh")
    assert command_problem(tmp_path, "./check.sh", uid) is None
    assert command_problem(tmp_path, "bin/run.sh", uid) is None
    (tmp_path / "check.sh").chmod(0o757)
    found = command_problem(tmp_path, "./check.sh", uid)
    assert found is not None and found[0] == tmp_path / "check.sh"
    assert "writable by group or others (mode 0757)" in found[1]
    # A directory leading to the program that others can write is as bad.
    (tmp_path / "bin").chmod(0o777)
    found = command_problem(tmp_path, "bin/run.sh", uid)
    assert found is not None and found[0] == tmp_path / "bin"
    # Bare names, absolute paths and missing files are not judged here.
    assert command_problem(tmp_path, "check.sh", uid) is None
    assert command_problem(tmp_path, str(tmp_path / "check.sh"), uid) is None
    assert command_problem(tmp_path, "./missing.sh", uid) is None
    # Relative paths that resolve outside the machine directory are refused, safe or not.
    (tmp_path / "bin").chmod(0o755)
    machine = tmp_path / "machine"
    machine.mkdir()
    (machine / "linked.sh").symlink_to(tmp_path / "check.sh")
    (tmp_path / "check.sh").chmod(0o755)
    for program in ("../check.sh", "./linked.sh", "./../bin/run.sh"):
        found = command_problem(machine, program, uid)
        assert found is not None and found[0] == machine / program
        assert found[1] == f"{machine / program} resolves outside the machine directory {machine}"
    # A link that stays inside is judged by its target.
    script(machine / "tools" / "real.sh")
    (machine / "alias.sh").symlink_to("tools/real.sh")
    assert command_problem(machine, "./alias.sh", uid) is None
    (machine / "tools").chmod(0o777)
    found = command_problem(machine, "./alias.sh", uid)
    assert found is not None and found[0] == machine / "tools"


def test_executable_problem(tmp_path: Path) -> None:
    uid = os.geteuid()
    (tmp_path / "machine.yaml").write_text("name: x\n")
    (tmp_path / "notes.txt").write_text("world-writable, but nothing runs it")
    (tmp_path / "notes.txt").chmod(0o666)
    script(tmp_path / "lib" / "deep" / "tool.sh")
    assert executable_problem(tmp_path, uid) is None
    script(tmp_path / "lib" / "deep" / "tool.sh", 0o775)
    found = executable_problem(tmp_path, uid)
    assert found is not None and found[0] == tmp_path / "lib" / "deep" / "tool.sh"
    assert "(mode 0775)" in found[1]
    script(tmp_path / "lib" / "deep" / "tool.sh")
    (tmp_path / "lib").chmod(0o777)  # anyone could replace tool.sh
    found = executable_problem(tmp_path, uid)
    assert found is not None and found[0] == tmp_path / "lib"
    (tmp_path / "lib").chmod(0o755)
    # A link to a directory is not followed; a link to a file is judged by its target.
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    script(outside / "evil.sh", 0o777)
    (tmp_path / "elsewhere").symlink_to(outside)
    assert executable_problem(tmp_path, uid) is None
    (tmp_path / "linked.sh").symlink_to(outside / "evil.sh")
    found = executable_problem(tmp_path, uid)
    assert found is not None and found[0] == tmp_path / "linked.sh"


async def test_unsafe_programs_are_refused_until_fixed(agent_factory: Any) -> None:
    async with agent_factory() as run:
        text = LAMP.format(name="lamp").replace("/bin/true", "bin/check.sh --quiet")
        directory = write(run.store, "lamp", text)
        script(directory / "bin" / "check.sh", 0o777)
        await run.wait(lambda: run.entry_status("lamp") == "refused", what="refused")
        body = (await run.http.get("/api/v1/machines/lamp")).json()
        assert body["status"] == "refused"
        assert body["errors"] == [
            f"watcher 'check' runs bin/check.sh: {directory / 'bin' / 'check.sh'} is writable by "
            "group or others (mode 0777)"
        ]
        assert not list(run.agent.group)
        # Still unsafe: refused again at every rescan without loading the manifest again.
        entry = run.agent.store.find("lamp")
        loaded_at = entry.loaded_at
        run.agent.store.rescan()
        await asyncio.sleep(0.2)
        assert run.entry_status("lamp") == "refused"
        assert entry.loaded_at == loaded_at
        (directory / "bin" / "check.sh").chmod(0o755)
        run.agent.store.rescan()
        await run.wait(lambda: run.entry_status("lamp") == "running", what="accepted again")


async def test_unsafe_executables_and_templated_programs(agent_factory: Any) -> None:
    async with agent_factory() as run:
        # The program is a template: it cannot be checked before it is rendered...
        text = LAMP.format(name="lamp").replace(
            "/bin/true", """'{{ lookup "data.tool" "./tools/check.sh" }}'"""
        )
        directory = write(run.store, "lamp", text)
        await run.wait(lambda: run.entry_status("lamp") == "running", what="running")
        # ...but every executable in the machine directory is, when the machine loads.
        script(directory / "tools" / "check.sh", 0o777)
        write(run.store, "lamp", text.replace("interval: 1m", "interval: 2m"))
        await run.wait(lambda: run.entry_status("lamp") == "refused", what="refused")
        entry = run.agent.store.find("lamp")
        assert entry.errors == [
            f"executable in the machine directory: {directory / 'tools' / 'check.sh'} is "
            "writable by group or others (mode 0777)"
        ]


async def test_program_checks_are_off_with_the_permission_checks(agent_factory: Any) -> None:
    async with agent_factory(check_permissions=False) as run:
        directory = write(
            run.store, "lamp", LAMP.format(name="lamp").replace("/bin/true", "./check.sh")
        )
        script(directory / "check.sh", 0o777)
        await run.wait(lambda: run.entry_status("lamp") == "running")
