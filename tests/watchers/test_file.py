"""The file watcher: mtime changes, missing files, inotify, and managed contents."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from machinery.core.clock import FakeClock, SystemClock
from machinery.core.inotify import FileMonitor
from machinery.watchers.file import CREATE_SETTLE
from tests.support import Recorder, make_machine, running, wait_until, write_machine

MACHINE = """\
name: files
version: 1.0.0
initial_state: watching
transitions:
  - name: changed
    from: [watching, missing, paused]
    destination: watching
  - name: gone
    from: [watching, missing]
    destination: missing
  - name: pause
    from: [watching, missing]
    destination: paused
watchers:
  - name: target
    type: file
    state_match: [watching, missing]
    success_transition: changed
    fail_transition: gone
    interval: {interval}
    properties:
{properties}
"""


def machine_dir(tmp_path: Path, properties: str, interval: str = "5s") -> Path:
    body = "\n".join("      " + line for line in properties.strip().splitlines())
    return write_machine(tmp_path / "files", MACHINE.format(interval=interval, properties=body))


def outcomes(recorder: Recorder) -> list[str]:
    return recorder.outcomes("target")


async def test_first_check_reports_changed_then_unchanged(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "path: data.txt")
    (directory / "data.txt").write_text("x")
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(4)
        assert outcomes(recorder) == []  # no check at start
        await clock.advance(1)
        assert outcomes(recorder) == ["changed"]
        await clock.advance(20)
        assert outcomes(recorder) == ["changed"]  # unchanged publishes nothing
    assert machine.watchers[0].status.outcomes["unchanged"] == 4


async def test_gather_initial_state_suppresses_the_first_change(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "path: data.txt\ngather_initial_state: true")
    (directory / "data.txt").write_text("x")
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(12)
        assert outcomes(recorder) == []
        _bump_mtime(directory / "data.txt")
        await clock.advance(5)
        assert outcomes(recorder) == ["changed"]


# Whole seconds plus a fraction, set with os.utime in nanoseconds: a watcher that kept only
# seconds (or a float's microseconds) would miss every change below, wherever the wall clock is.
_BASE_NS = 1_700_000_000 * 1_000_000_000 + 100_000_000


async def test_changes_within_the_same_second_are_seen_to_the_nanosecond(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "path: data.txt\ngather_initial_state: true")
    data = directory / "data.txt"
    data.write_text("x")
    os.utime(data, ns=(_BASE_NS, _BASE_NS))
    assert data.stat().st_mtime_ns == _BASE_NS  # the file system keeps nanoseconds
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(5)
        assert outcomes(recorder) == []  # the gathered mtime: unchanged
        expected: list[str] = []
        for later in (_BASE_NS + 500_000_000, _BASE_NS + 500_000_001, _BASE_NS + 500_001_001):
            os.utime(data, ns=(later, later))
            assert data.stat().st_mtime_ns == later
            await clock.advance(5)
            expected.append("changed")
            assert outcomes(recorder) == expected, f"missed the change to {later} ns"
            await machine.transition("changed")  # self-transition: back to watching, silent
        # An mtime moved back (a restored backup) is not a change, as in Choria.
        os.utime(data, ns=(_BASE_NS, _BASE_NS))
        await clock.advance(5)
        assert outcomes(recorder) == expected


async def test_missing_file_is_an_error_and_recreation_a_change(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "path: data.txt")
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(5)
        # The error moves the machine to "missing", and that state change triggers another
        # check, which fails again: Choria publishes both.
        assert outcomes(recorder) == ["error", "error"]
        assert machine.state == "missing"
        (directory / "data.txt").write_text("x")
        await clock.advance(5)
        assert outcomes(recorder) == ["error", "error", "changed"]
        assert machine.state == "watching"
        payload = recorder.states("target")[-1].payload
        assert payload["path"] == str(directory / "data.txt")
        assert recorder.states("target")[-1].text == (
            f"node1.example.net files#target path: {directory / 'data.txt'}, previous: changed"
        )


async def test_changes_while_inactive_are_reported_later(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "path: data.txt")
    (directory / "data.txt").write_text("x")
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(5)
        await machine.transition("pause")
        await clock.advance(5)
        assert machine.watchers[0].status.outcome == "skipped"
        _bump_mtime(directory / "data.txt")
        await clock.advance(20)
        assert outcomes(recorder) == ["changed"]
        await machine.transition("changed")  # back to watching: state change triggers a check
        await wait_until(lambda: outcomes(recorder) == ["changed", "changed"])


async def test_inotify_reacts_without_waiting_for_the_interval(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "path: data.txt\ngather_initial_state: true", interval="1h")
    (directory / "data.txt").write_text("x")
    monitor = FileMonitor()
    assert monitor.available
    recorder = Recorder()
    machine = make_machine(directory, clock=SystemClock(), recorder=recorder, file_monitor=monitor)
    try:
        async with running(machine):
            await wait_until(
                lambda: machine.watchers and machine.watchers[0]._subscription is not None
            )
            started = time.monotonic()
            (directory / "data.txt").write_text("y")
            await wait_until(lambda: outcomes(recorder) == ["changed"], timeout=2)
            assert time.monotonic() - started < 1
            os.unlink(directory / "data.txt")
            await wait_until(
                lambda: outcomes(recorder)[:2] == ["changed", "error"],
                timeout=2,
                what=f"error after unlink, got {outcomes(recorder)}",
            )
            os.replace(_write(tmp_path / "staged", "z"), directory / "data.txt")
            await wait_until(lambda: outcomes(recorder)[-1:] == ["changed"], timeout=2)
    finally:
        monitor.close()


async def test_a_new_file_is_looked_at_when_written_not_when_it_appears(tmp_path: Path) -> None:
    # A writer's new file appears empty (IN_CREATE) before it is written: a check then would see
    # a half-written file (an empty hvac.json, say). It is looked at on IN_CLOSE_WRITE; a file
    # created whole without a close (a hard link) once CREATE_SETTLE has passed.
    directory = machine_dir(tmp_path, "path: data.txt", interval="5s")
    monitor = FileMonitor()
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder, file_monitor=monitor)
    try:
        async with running(machine):
            watcher = machine.watchers[0]
            await clock.advance(5)
            assert outcomes(recorder) == ["error", "error"]  # missing
            await wait_until(lambda: watcher._subscription is not None, what="subscribed")
            with open(directory / "data.txt", "w") as handle:
                await wait_until(lambda: watcher._settling is not None, what="IN_CREATE seen")
                await clock.advance(0)
                assert outcomes(recorder) == ["error", "error"]  # not looked at while empty
                handle.write('{"target": 21}\n')
            await wait_until(lambda: outcomes(recorder)[-1:] == ["changed"], what="on close")
            assert watcher._settling is None
            assert len(outcomes(recorder)) == 3

            os.unlink(directory / "data.txt")
            await wait_until(lambda: outcomes(recorder)[-1:] == ["error"], what="removed")
            seen = len(outcomes(recorder))
            os.link(_write(tmp_path / "elsewhere", "x"), directory / "data.txt")
            await wait_until(lambda: watcher._settling is not None, what="IN_CREATE of the link")
            await clock.advance(CREATE_SETTLE - 0.01)
            assert len(outcomes(recorder)) == seen
            await clock.advance(0.01)
            await wait_until(lambda: outcomes(recorder)[-1:] == ["changed"], what="settled")
    finally:
        monitor.close()


async def test_managed_contents_are_written_and_repaired(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path,
        'path: app.conf\ncontents: "port={{ lookup \\"facts.port\\" 80 }}\\n"\n'
        f'owner: {_user()}\ngroup: {_group()}\nmode: "0640"',
    )
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder, facts={"port": 8080})
    target = directory / "app.conf"
    async with running(machine):
        await clock.advance(5)
        assert target.read_text() == "port=8080\n"
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        assert outcomes(recorder) == ["changed"]
        await clock.advance(5)
        assert outcomes(recorder) == ["changed"]  # in shape: unchanged, nothing published
        target.write_text("port=1\n")  # someone edits it
        await clock.advance(5)
        assert target.read_text() == "port=8080\n"
        target.chmod(0o666)  # or loosens its mode
        await clock.advance(5)
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        assert outcomes(recorder) == ["changed", "changed", "changed"]
    assert not [p for p in directory.iterdir() if p.name.startswith(".app.conf")]


async def test_managed_contents_with_unknown_owner_is_an_error(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path,
        f'path: app.conf\ncontents: "x"\nowner: no-such-user-here\ngroup: {_group()}\nmode: "0600"',
    )
    clock = FakeClock()
    machine = make_machine(directory, clock=clock)
    async with running(machine):
        await clock.advance(5)
        assert machine.state == "missing"
    assert not (directory / "app.conf").exists()


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _group() -> str:
    import grp

    return grp.getgrgid(os.getgid()).gr_name
