"""The file watcher: mtime changes, missing files, inotify, and managed contents."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from machinery.core.clock import FakeClock, SystemClock
from machinery.core.inotify import FileMonitor
from machinery.watchers.file import CREATE_SETTLE, parse_mode
from machinery.watchers.registry import check_manifest
from tests.support import Recorder, assert_took, make_machine, running, wait_until, write_machine

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
            assert_took(time.monotonic() - started, 1.0, "file change to watcher outcome (inotify)")
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


# -- modes, definitions, managed files in detail ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode"),
    [("0644", 0o644), ("644", 0o644), ("0o755", 0o755), ("0O755", 0o755), (" 0600 ", 0o600),
     ("7777", 0o7777), ("0", 0)],
)  # fmt: skip
def test_parse_mode_reads_octal_like_chmod(text: str, mode: int) -> None:
    assert parse_mode(text) == mode


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid mode '': use octal digits such as 0644"),
        ("0o", "invalid mode '0o': use octal digits such as 0644"),
        ("0o0o7", "invalid mode '0o0o7': use octal digits such as 0644"),
        ("0644X", "invalid mode '0644X': use octal digits such as 0644"),
        ("0x1ff", "invalid mode '0x1ff': use octal digits such as 0644"),
        ("08", "invalid mode '08': use octal digits such as 0644"),
        ("10000", "invalid mode '10000': larger than 07777"),
    ],
)
def test_parse_mode_refuses_anything_else_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_mode(text)
    assert str(caught.value) == message


def _diagnostics(tmp_path: Path, properties: str) -> list[str]:
    directory = machine_dir(tmp_path, properties)
    _manifest, diagnostics = check_manifest(directory / "machine.yaml")
    prefix = f"{directory / 'machine.yaml'}:"
    return [f"{d.severity.value}:{str(d).removeprefix(prefix)}" for d in diagnostics]


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ('path: " "', ["error:22:13: path is required"]),
        (
            "path: a\nowner: root",
            ["warning:23:14: warning: owner is only used together with contents"],
        ),
        (
            'path: a\ncontents: x\nowner: root\ngroup: root\nmode: "0o9"',
            ["error:26:13: invalid mode '0o9': use octal digits such as 0644"],
        ),
        (
            "path: a\ncontents: x\nowner: root\ngroup: root",
            ["error:22:7: mode is required when contents is set"],
        ),
        ('path: a\ncontents: x\nowner: root\ngroup: root\nmode: "{{ .facts.mode }}"', []),
    ],
)
def test_definition_problems_point_at_the_property(
    tmp_path: Path, properties: str, expected: list[str]
) -> None:
    found = [d for d in _diagnostics(tmp_path, properties) if "never be" not in d]
    assert found == expected


async def test_managed_file_properties_are_templates(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path,
        'path: app.conf\ncontents: "port={{ .facts.port }}\\n"\n'
        'owner: "{{ .facts.user }}"\n'
        'group: \'{{ lookup "facts.group" "" }}{{ .facts.suffix }}\'\n'
        'mode: \'{{ lookup "facts.mode" "" }}{{ .facts.suffix }}\'',
    )
    clock = FakeClock()
    facts = {"port": 8080, "user": _user(), "group": _group(), "mode": "0604", "suffix": ""}
    machine = make_machine(directory, clock=clock, facts=facts)
    async with running(machine):
        await clock.advance(5)
        target = directory / "app.conf"
        assert target.read_text() == "port=8080\n"
        assert stat.S_IMODE(target.stat().st_mode) == 0o604
        watcher = machine.watchers[0]
        assert watcher.status.outcome == "changed"
        assert watcher.status.last_error is None
        await clock.advance(5)
        assert watcher.status.outcome == "unchanged"
        assert watcher.status.last_error is None


async def test_a_managed_file_with_no_owner_and_group_after_rendering_keeps_ours(
    tmp_path: Path,
) -> None:
    directory = machine_dir(
        tmp_path,
        'path: app.conf\ncontents: "x"\nowner: \'{{ lookup "facts.user" "" }}\'\n'
        f'group: {_group()}\nmode: "0600"',
    )
    machine = make_machine(directory, clock=FakeClock(), facts={})
    async with running(machine):
        await machine.node.clock.advance(5)  # type: ignore[attr-defined]
        assert machine.watchers[0].status.outcome == "changed"
    st = (directory / "app.conf").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
async def test_a_managed_file_gets_the_owner_and_group_asked_for(tmp_path: Path) -> None:
    import grp
    import pwd

    user = pwd.getpwnam("nobody")
    group = grp.getgrgid(user.pw_gid)
    directory = machine_dir(
        tmp_path,
        f'path: app.conf\ncontents: "x"\nowner: nobody\ngroup: {group.gr_name}\nmode: "0600"',
    )
    machine = make_machine(directory, clock=FakeClock())
    async with running(machine):
        await machine.node.clock.advance(5)  # type: ignore[attr-defined]
        assert machine.watchers[0].status.outcome == "changed"
    st = (directory / "app.conf").stat()
    assert (st.st_uid, st.st_gid) == (user.pw_uid, group.gr_gid)


async def test_render_and_write_errors_say_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = machine_dir(
        tmp_path,
        f'path: app.conf\ncontents: "{{{{ index .facts.list 5 }}}}"\nowner: {_user()}\n'
        f'group: {_group()}\nmode: "0600"',
    )
    machine = make_machine(directory, clock=FakeClock(), facts={"list": [1]})
    with caplog.at_level(logging.ERROR):
        async with running(machine):
            await machine.node.clock.advance(5)  # type: ignore[attr-defined]
            watcher = machine.watchers[0]
            assert watcher.status.outcomes["error"] >= 1
            error = watcher.status.last_error or ""
            assert "index out of range" in error
    assert f"Could not render file contents: {error}" in caplog.text

    directory = machine_dir(
        tmp_path / "b",
        f'path: app.conf\ncontents: "x"\nowner: no-such-user-here\ngroup: {_group()}\nmode: "0600"',
    )
    machine = make_machine(directory, clock=FakeClock())
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        async with running(machine):
            await machine.node.clock.advance(5)  # type: ignore[attr-defined]
            error = machine.watchers[0].status.last_error or ""
    assert error.startswith(f"could not write {directory / 'app.conf'}: ")
    assert "no-such-user-here" in error
    assert error in caplog.text


async def test_stat_errors_say_why_and_a_file_back_at_any_mtime_is_a_change(
    tmp_path: Path,
) -> None:
    directory = machine_dir(tmp_path, "path: data.txt")
    data = directory / "data.txt"
    data.write_text("x")
    os.utime(data, ns=(1, 1))  # the smallest mtime there is: still newer than "never seen"
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await wait_until(lambda: bool(machine.watchers), what="the watcher")
        watcher = machine.watchers[0]
        assert watcher.current_state().payload["previous_outcome"] == "unknown"
        await clock.advance(5)
        assert outcomes(recorder) == ["changed"]
        assert watcher.status.last_error is None
        data.unlink()
        await clock.advance(5)
        assert watcher.status.last_error == f"{data} does not exist"
        data.write_text("x")
        os.utime(data, ns=(1, 1))
        await clock.advance(5)
        assert outcomes(recorder)[-1] == "changed"
        await machine.transition("pause")
        await clock.advance(5)
        assert watcher.current_state().payload["previous_outcome"] == "skipped"


async def test_a_path_through_a_file_cannot_be_stated(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "path: plain/data.txt")
    (directory / "plain").write_text("not a directory")
    clock = FakeClock()
    machine = make_machine(directory, clock=clock)
    async with running(machine):
        await clock.advance(5)
        error = machine.watchers[0].status.last_error
    assert error == f"cannot stat {directory / 'plain' / 'data.txt'}: Not a directory"


async def test_gathering_the_state_of_a_missing_file_is_not_an_error(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "path: data.txt\ngather_initial_state: true")
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(5)
        assert outcomes(recorder) == ["error", "error"]
        (directory / "data.txt").write_text("x")
        await clock.advance(5)
        assert outcomes(recorder) == ["error", "error", "changed"]


async def test_a_managed_path_that_cannot_be_read_is_rewritten(tmp_path: Path) -> None:
    # Same mode, no newer mtime, but unreadable as a file (a directory took its place): the
    # watcher must try to write it, and say why it could not.
    directory = machine_dir(
        tmp_path,
        f'path: app.conf\ncontents: "x"\nowner: {_user()}\ngroup: {_group()}\nmode: "0700"',
    )
    clock = FakeClock()
    machine = make_machine(directory, clock=clock)
    target = directory / "app.conf"
    async with running(machine):
        await clock.advance(5)
        watcher = machine.watchers[0]
        assert watcher.status.outcome == "changed"
        written = target.stat().st_mtime_ns
        target.unlink()
        target.mkdir(mode=0o700)
        os.utime(target, ns=(written, written))
        await clock.advance(5)
        assert watcher.status.outcome == "error"
        assert (watcher.status.last_error or "").startswith(f"could not write {target}: ")
