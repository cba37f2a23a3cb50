"""The exec watcher on a fake clock, running real commands."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from machinery.agent.localgovernor import LocalGovernor
from machinery.core.clock import FakeClock
from tests.support import (
    Recorder,
    assert_took,
    make_machine,
    make_node,
    running,
    wait_until,
    write_machine,
)

MACHINE = """\
name: runner
version: 1.0.0
initial_state: idle
transitions:
  - name: start
    from: [idle]
    destination: busy
  - name: again
    from: [busy]
    destination: busier
  - name: back
    from: [busy, busier]
    destination: busy
  - name: stay
    from: [busy]
    destination: busy
  - name: failed
    from: [busy, busier]
    destination: broken
  - name: done
    from: [busy, busier]
    destination: idle
watchers:
  - name: job
    type: exec
    state_match: [busy, busier]
    fail_transition: {fail}
    success_transition: {success}
    interval: {interval}
    properties:
{properties}
"""


def machine_dir(
    tmp_path: Path,
    properties: str,
    *,
    interval: str = "1m",
    fail: str = "failed",
    success: str = "''",
    files: dict[str, str] | None = None,
) -> Path:
    text = MACHINE.format(
        fail=fail,
        success=success,
        interval=interval,
        properties="\n".join("      " + line for line in properties.strip().splitlines()),
    )
    return write_machine(tmp_path / "runner", text, files)


COUNTER = {
    "count.sh": """\
        #!/bin/sh
        echo run >> runs.log
        """
}


def runs(directory: Path) -> int:
    log = directory / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


async def test_runs_on_transitions_into_and_within_states_and_on_interval_never_at_start(
    tmp_path: Path,
) -> None:
    directory = machine_dir(tmp_path, "command: ./count.sh", files=COUNTER)
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(120)  # not active in idle: interval ticks are skipped
        assert runs(directory) == 0
        assert machine.watchers[0].status.outcome == "skipped"
        await machine.transition("start")  # into busy: runs
        await wait_until(lambda: runs(directory) == 1)
        await machine.transition("again")  # busy -> busier, both matching: runs again
        await wait_until(lambda: runs(directory) == 2)
        await machine.transition("back")
        await wait_until(lambda: runs(directory) == 3)
        await machine.transition("stay")  # self-transition: silent, no run
        await clock.advance(30)
        assert runs(directory) == 3
        await clock.advance(30)  # the one-minute interval
        await wait_until(lambda: runs(directory) == 4)
        await wait_until(lambda: len(recorder.states("job")) == 4)
    assert [s.payload["previous_outcome"] for s in recorder.states("job")] == ["success"] * 4


async def test_no_interval_means_only_on_transitions(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "command: ./count.sh", interval="''", files=COUNTER)
    clock = FakeClock()
    machine = make_machine(directory, clock=clock, initial_state="busy")
    async with running(machine):
        await clock.advance(3600)
        assert runs(directory) == 0  # active in its initial state, but never triggered
        await machine.transition("again")
        await wait_until(lambda: runs(directory) == 1)


async def test_failure_fires_fail_transition_and_publishes_state(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "command: /bin/false")
    recorder = Recorder()
    clock = FakeClock(start=1_700_000_000)
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await machine.transition("start")
        await wait_until(lambda: machine.state == "broken")
    assert recorder.transitions() == [("start", "idle", "busy"), ("failed", "busy", "broken")]
    [state] = recorder.states("job")
    payload = state.payload
    assert list(payload) == [
        "protocol",
        "identity",
        "id",
        "version",
        "timestamp",
        "type",
        "machine",
        "name",
        "command",
        "previous_outcome",
        "previous_run_time",
    ]
    assert payload["protocol"] == "io.choria.machine.watcher.exec.v1.state"
    assert payload["type"] == "exec" and payload["name"] == "job" and payload["machine"] == "runner"
    assert payload["command"] == "/bin/false"
    assert payload["previous_outcome"] == "error"
    assert isinstance(payload["previous_run_time"], int) and payload["previous_run_time"] > 0
    assert state.text.startswith(
        "node1.example.net runner#job command: /bin/false, previous: error ran: "
    )


async def test_success_fires_success_transition_and_can_be_unannounced(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path, "command: /bin/true\nsuppress_success_announce: true", success="done"
    )
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        await machine.transition("start")
        await wait_until(lambda: machine.state == "idle")
    assert recorder.states("job") == []
    assert recorder.transitions()[-1] == ("done", "busy", "idle")


@pytest.mark.parametrize("signal_name", ["KILL", "TERM", "SEGV"])
async def test_a_command_killed_by_a_signal_is_a_failure(tmp_path: Path, signal_name: str) -> None:
    # Go's exec reports a signalled command as an *ExitError, so Choria calls it a failure; it
    # has no exit status of 0 however the runner encodes it (Python: a negative returncode).
    directory = machine_dir(
        tmp_path,
        "command: ./die.sh",
        success="done",
        files={"die.sh": f"#!/bin/sh\nkill -{signal_name} $$\n"},
    )
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        await machine.transition("start")
        await wait_until(lambda: machine.state != "busy", what="the watcher to fire")
    assert machine.state == "broken"
    assert recorder.transitions()[-1] == ("failed", "busy", "broken")
    watcher = machine.watchers[0]
    assert watcher.status.outcomes["error"] == 1
    assert "success" not in watcher.status.outcomes
    assert watcher.status.last_error is not None
    [state] = recorder.states("job")
    assert state.payload["previous_outcome"] == "error"


async def test_parse_as_data_stores_each_key(tmp_path: Path) -> None:
    script = {
        "emit.sh": """\
        #!/bin/sh
        echo '{"temperature": 21.5, "nested": {"a": [1, 2]}, "ok": true}'
        """
    }
    directory = machine_dir(
        tmp_path, "command: ./emit.sh\nparse_as_data: true", success="done", files=script
    )
    machine = make_machine(directory)
    async with running(machine):
        await machine.transition("start")
        await wait_until(lambda: machine.state == "idle")
    assert machine.data.snapshot() == {"temperature": 21.5, "nested": {"a": [1, 2]}, "ok": True}
    assert json.loads((directory / "machine_data.json").read_text())["temperature"] == 21.5


async def test_parse_as_data_with_bad_json_is_an_error(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "command: /bin/echo not json\nparse_as_data: true")
    machine = make_machine(directory)
    async with running(machine):
        await machine.transition("start")
        await wait_until(lambda: machine.state == "broken")
    assert "could not parse output as JSON" in (machine.watchers[0].status.last_error or "")


async def test_fact_with_spaces_and_quotes_reaches_the_command_as_one_argument(
    tmp_path: Path,
) -> None:
    script = {
        "args.sh": """\
        #!/bin/sh
        for a in "$@"; do printf '%s\\n' "$a" >> args.log; done
        """
    }
    hostile = 'a b "c" ; rm -rf / $(touch pwned) --evil'
    directory = machine_dir(
        tmp_path,
        'command: ./args.sh --name={{ lookup "facts.name" "x" }} {{ lookup "facts.name" "" }} '
        '\'{{ lookup "facts.missing" "" }}\' {{ lookup "facts.missing" "" }} last',
        success="done",
        files=script,
    )
    machine = make_machine(directory, facts={"name": hostile})
    async with running(machine):
        await machine.transition("start")
        await wait_until(lambda: machine.state == "idle")
    args = (directory / "args.log").read_text().split("\n")[:-1]
    assert args == [f"--name={hostile}", hostile, "", "last"]
    assert not (directory / "pwned").exists()


async def test_environment_is_fresh_with_machine_variables_and_data_files(tmp_path: Path) -> None:
    script = {
        "env.sh": """\
        #!/bin/sh
        env > env.log
        cat "$WATCHER_DATA" > data.log
        cat "$WATCHER_FACTS" > facts.log
        """
    }
    os.environ["MACHINERY_TEST_SECRET"] = "do-not-leak"
    try:
        directory = machine_dir(
            tmp_path,
            'command: env.sh\nenvironment:\n  - "GREETING=hello {{ lookup \\"facts.who\\" \\"x\\" }}"',
            success="done",
            files=script,
        )
        machine = make_machine(directory, facts={"who": "world"})
        machine.data.put("k", "v")
        async with running(machine):
            await machine.transition("start")
            await wait_until(lambda: machine.state == "idle")
    finally:
        del os.environ["MACHINERY_TEST_SECRET"]
    env = dict(
        line.split("=", 1)
        for line in (directory / "env.log").read_text().splitlines()
        if "=" in line
    )
    assert env["MACHINE_NAME"] == "runner"
    assert env["MACHINE_WATCHER_NAME"] == "job"
    assert env["GREETING"] == "hello world"
    assert env["PATH"].endswith(":" + str(directory))
    assert "MACHINERY_TEST_SECRET" not in env
    assert json.loads((directory / "data.log").read_text()) == {"k": "v"}
    assert json.loads((directory / "facts.log").read_text()) == {"who": "world"}
    assert not Path(env["WATCHER_DATA"]).exists()  # temp files are removed after the run


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    script = {
        "hang.sh": """\
        #!/bin/sh
        trap '' TERM
        sh -c 'trap "" TERM; echo $$ > grandchild.pid; sleep 60' &
        echo $$ > child.pid
        sleep 60
        """
    }
    directory = machine_dir(tmp_path, "command: ./hang.sh\ntimeout: 300ms", files=script)
    machine = make_machine(directory)
    started = time.monotonic()
    async with running(machine):
        await machine.transition("start")
        await wait_until(lambda: machine.state == "broken", timeout=10)
    assert_took(time.monotonic() - started, 10.0, "exec watcher command group killed at 300 ms")
    assert "timed out" in (machine.watchers[0].status.last_error or "")
    for name in ("child.pid", "grandchild.pid"):
        pid = int((directory / name).read_text())
        await wait_until(lambda pid=pid: not _alive(pid), timeout=5, what=f"{name} to die")


async def test_stopping_the_machine_kills_running_commands(tmp_path: Path) -> None:
    script = {
        "slow.sh": """\
        #!/bin/sh
        echo $$ > child.pid
        sleep 60
        """
    }
    directory = machine_dir(tmp_path, "command: ./slow.sh\ntimeout: 1h", files=script)
    machine = make_machine(directory)
    async with running(machine):
        await machine.transition("start")
        child = directory / "child.pid"
        await wait_until(lambda: child.exists() and child.read_text().strip() != "")
        pid = int(child.read_text())
        assert _alive(pid)
    await wait_until(lambda: not _alive(pid), timeout=5, what="the command to be killed")


async def test_command_not_found_is_an_error(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "command: does-not-exist-anywhere")
    machine = make_machine(directory)
    async with running(machine):
        await machine.transition("start")
        await wait_until(lambda: machine.state == "broken")
    assert "command not found" in (machine.watchers[0].status.last_error or "")


async def test_output_is_capped(tmp_path: Path) -> None:
    from machinery.core.process import CommandRequest, ProcessRunner

    result = await ProcessRunner().run(
        CommandRequest(
            ["sh", "-c", "head -c 5000000 /dev/zero"],
            tmp_path,
            {"PATH": os.defpath},
            timeout=10,
            output_limit=1000,
        )
    )
    assert result.exit_code == 0
    assert len(result.output) == 1000 and result.truncated


async def test_gather_initial_state_runs_first_within_thirty_seconds(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path, "command: ./count.sh\ngather_initial_state: true", interval="5m", files=COUNTER
    )
    clock = FakeClock()
    machine = make_machine(directory, clock=clock, initial_state="busy")
    async with running(machine):
        await clock.advance(30)
        await wait_until(lambda: runs(directory) == 1)
        await clock.advance(60)
        assert runs(directory) == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return False


# -- governors -----------------------------------------------------------------------------------

GOVERNED_MACHINE = """\
name: {name}
version: 1.0.0
initial_state: busy
transitions:
  - name: failed
    from: [busy]
    destination: broken
watchers:
  - name: job
    type: exec
    state_match: [busy]
    fail_transition: failed
    interval: 1m
    properties:
      command: ./exclusive.sh
      governor: '{governor}'
{extra}"""

# mkdir is atomic: a second command finding the lock directory proves two ran at once.
EXCLUSIVE = {
    "exclusive.sh": """\
        #!/bin/sh
        mkdir ../lock 2>/dev/null || echo overlap >> ../overlaps.log
        echo "start $MACHINE_NAME" >> ../order.log
        sleep 0.2
        echo "end $MACHINE_NAME" >> ../order.log
        rmdir ../lock 2>/dev/null
        exit 0
        """
}


def governed_dir(
    tmp_path: Path, name: str, governor: str = "serial", extra: str = "", **files: str
) -> Path:
    text = GOVERNED_MACHINE.format(
        name=name,
        governor=governor,
        extra="".join(f"      {line}\n" for line in extra.splitlines()),
    )
    return write_machine(tmp_path / name, text, {**EXCLUSIVE, **files})


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def governor_events(caplog: pytest.LogCaptureFixture, machine: str) -> list[dict[str, Any]]:
    prefix = f"{machine}#job: Governor event: "
    return [
        json.loads(r.getMessage().removeprefix(prefix))
        for r in caplog.records
        if r.getMessage().startswith(prefix)
    ]


async def test_a_governor_of_one_keeps_two_machines_from_overlapping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    recorder = Recorder()
    node = make_node(clock=clock, recorder=recorder)
    governor = LocalGovernor(clock)
    node.provide("governor", governor)
    first = make_machine(governed_dir(tmp_path, "first"), node=node)
    second = make_machine(governed_dir(tmp_path, "second"), node=node)
    order = tmp_path / "order.log"
    async with running(first, second):
        for round_ in range(1, 4):
            await clock.advance(60)  # both interval ticks at once
            await wait_until(lambda r=round_: len(lines(order)) == 4 * r, what="both runs")
            await wait_until(lambda r=round_: len(recorder.states("job")) == 2 * r)
    assert lines(tmp_path / "overlaps.log") == []
    log = lines(order)
    for i in range(0, len(log), 2):
        started, ended = log[i], log[i + 1]
        assert started.startswith("start ") and ended == "end " + started.removeprefix("start ")
    assert [s.payload["previous_outcome"] for s in recorder.states("job")] == ["success"] * 6
    assert (await governor.view("serial")).holders == []
    for machine in ("first", "second"):
        events = governor_events(caplog, machine)
        assert [e["event_type"] for e in events] == ["enter", "exit"] * 3
        assert {e["component"] for e in events} == {machine}
        assert {e["identity"] for e in events} == {"node1.example.net"}
        assert {e["protocol"] for e in events} == {"io.choria.lifecycle.v1.governor"}
        assert all(e["timestamp"] == int(clock.now()) or e["timestamp"] > 0 for e in events)
    # Every run got its own sequence number, entering and leaving with it.
    sequences = sorted(
        e["sequence"]
        for m in ("first", "second")
        for e in governor_events(caplog, m)
        if e["event_type"] == "enter"
    )
    assert sequences == [1, 2, 3, 4, 5, 6]
    assert "first#job: Obtaining a slot in the serial Governor with 5m0s timeout" in caplog.messages


async def test_the_slot_is_held_while_the_command_runs_under_a_templated_name(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, facts={"site": "lon"})
    governor = LocalGovernor(clock)
    node.provide("governor", governor)
    wait_for_go = {
        "exclusive.sh": """\
            #!/bin/sh
            touch started
            i=0
            while [ ! -e go ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
            """
    }
    directory = governed_dir(tmp_path, "runner", governor="deploy_{{ .facts.site }}", **wait_for_go)
    machine = make_machine(directory, node=node)
    async with running(machine):
        await clock.advance(60)
        await wait_until(lambda: (directory / "started").exists())
        info = await governor.view("deploy_lon")
        [holder] = info.holders
        assert re.fullmatch(r"node1\.example\.net:runner:job:[0-9a-f]{8}", str(holder["holder"]))
        assert holder["sequence"] == 1
        assert holder["acquired"] == clock.now()
        (directory / "go").touch()
        await wait_until(lambda: machine.watchers[0].status.outcome == "success")
        assert (await governor.view("deploy_lon")).holders == []


async def test_no_slot_within_the_timeout_is_an_error_and_fires_fail_transition(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    recorder = Recorder()
    node = make_node(clock=clock, recorder=recorder)
    governor = LocalGovernor(clock)
    node.provide("governor", governor)
    directory = governed_dir(tmp_path, "runner", extra="governor_timeout: 30s")
    machine = make_machine(directory, node=node)
    async with governor.acquire("serial", 0, holder="an operator"), running(machine):
        await clock.advance(60)
        await wait_until(lambda: governor.waiting("serial") == 1)
        await clock.advance(29)
        assert machine.state == "busy"
        await clock.advance(1)
        await wait_until(lambda: machine.state == "broken")
    assert lines(tmp_path / "order.log") == []  # the command never ran
    [state] = recorder.states("job")
    assert state.payload["previous_outcome"] == "error"
    assert machine.watchers[0].status.last_error == (
        "Cannot enter Governor serial: no slot in the serial Governor became free within 30s"
    )
    assert recorder.transitions() == [("failed", "busy", "broken")]
    [event] = governor_events(caplog, "runner")
    assert event["event_type"] == "timeout" and event["sequence"] == 0
    assert event["governor"] == "serial"


async def test_a_bad_governor_name_is_an_error(tmp_path: Path) -> None:
    clock = FakeClock()
    node = make_node(clock=clock)
    node.provide("governor", LocalGovernor(clock))
    machine = make_machine(governed_dir(tmp_path, "runner", governor="no spaces"), node=node)
    async with running(machine):
        await clock.advance(60)
        await wait_until(lambda: machine.state == "broken")
    assert machine.watchers[0].status.last_error == (
        "Cannot enter Governor no spaces: invalid governor name 'no spaces': use 1 to 64 "
        "letters, digits, '_' or '-'"
    )


async def test_an_empty_governor_name_runs_ungoverned(tmp_path: Path) -> None:
    clock = FakeClock()
    node = make_node(clock=clock)
    governor = LocalGovernor(clock)
    node.provide("governor", governor)
    directory = governed_dir(tmp_path, "runner", governor='{{ lookup "data.none" "" }}')
    machine = make_machine(directory, node=node)
    async with running(machine):
        await clock.advance(60)
        await wait_until(lambda: machine.watchers[0].status.outcome == "success")
    assert await governor.names() == []


async def test_without_a_governor_service_commands_run_ungoverned_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    directory = governed_dir(tmp_path, "runner")
    machine = make_machine(directory, clock=clock)
    async with running(machine):
        await clock.advance(60)
        await wait_until(lambda: len(lines(tmp_path / "order.log")) == 2)
        await clock.advance(60)
        await wait_until(lambda: len(lines(tmp_path / "order.log")) == 4)
        await wait_until(lambda: machine.watchers[0].status.runs == 2)
    assert machine.state == "busy"
    warnings = [r for r in caplog.records if "no governor service" in r.getMessage()]
    assert [(w.levelno, w.getMessage()) for w in warnings] == [
        (
            logging.WARNING,
            "runner#job: Governor serial is not used: no governor service is available here "
            "(run the machine in the agent to have governors)",
        )
    ]
    assert governor_events(caplog, "runner") == []
