"""ProcessRunner: what reaches the kernel, the exit of the command itself, disowned runs."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import warnings
from pathlib import Path

import pytest

from machinery.core.process import CommandRequest, ProcessRunner

ENV = {"PATH": os.defpath}


def sh(tmp_path: Path, script: str, **options: object) -> CommandRequest:
    return CommandRequest(["sh", "-c", script], tmp_path, ENV, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "env", "error"),
    [
        (["echo", "a\x00b"], ENV, "argument 1 contains a NUL byte"),
        (["echo", "ok", "x\x00"], ENV, "argument 2 contains a NUL byte"),
        (["ec\x00ho"], ENV, "the command name contains a NUL byte"),
        (["echo"], {**ENV, "V": "a\x00b"}, "environment variable V contains a NUL byte"),
        (["echo"], {**ENV, "A=B": "x"}, "invalid environment variable name 'A=B'"),
        (["echo"], {**ENV, "A\x00": "x"}, "invalid environment variable name 'A\\x00'"),
    ],
)
async def test_what_no_exec_can_carry_is_a_failed_start_not_an_exception(
    tmp_path: Path, argv: list[str], env: dict[str, str], error: str
) -> None:
    result = await ProcessRunner().run(CommandRequest(argv, tmp_path, env))
    assert result.exit_code is None and result.pid is None and not result.ok
    assert result.error == error


async def test_text_that_cannot_be_encoded_is_a_failed_start(tmp_path: Path) -> None:
    # A lone surrogate (JSON data may hold one) cannot become bytes for execve.
    result = await ProcessRunner().run(CommandRequest(["echo", "\ud800"], tmp_path, ENV))
    assert result.exit_code is None and result.error is not None
    assert result.error.startswith("could not start echo: ")


async def test_output_written_before_the_exit_is_kept_while_a_child_holds_the_pipe(
    tmp_path: Path,
) -> None:
    script = "sleep 30 & echo $! > bg.pid; head -c 300000 /dev/zero; echo; echo done; exit 4"
    started = time.monotonic()
    result = await ProcessRunner().run(sh(tmp_path, script, timeout=5.0))
    assert time.monotonic() - started < 2.0
    assert result.exit_code == 4 and not result.timed_out and result.error is None
    assert len(result.output) == 300006 and result.output.endswith(b"\ndone\n")
    background = int((tmp_path / "bg.pid").read_text())
    # Killed with the group once the command exited (it held the pipe, so it had the grace).
    for _ in range(100):
        try:
            os.kill(background, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"background child {background} outlived its command")


async def test_a_background_child_finishing_its_output_within_the_grace_is_captured(
    tmp_path: Path,
) -> None:
    script = "(sleep 0.05; echo late) & echo early"
    result = await ProcessRunner().run(sh(tmp_path, script, timeout=5.0))
    assert result.exit_code == 0 and result.output == b"early\nlate\n"


async def test_uncaptured_and_disowned_runs_report_the_exit_code(tmp_path: Path) -> None:
    runner = ProcessRunner()
    uncaptured = await runner.run(sh(tmp_path, "echo hidden; exit 3", capture=False))
    assert uncaptured.exit_code == 3 and uncaptured.output == b""
    disowned = await runner.run(sh(tmp_path, "echo hidden; exit 5", disown=True))
    assert disowned.exit_code == 5 and disowned.output == b"" and disowned.pid is not None


async def test_no_transport_is_left_unclosed(tmp_path: Path) -> None:
    runner = ProcessRunner(kill_grace=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        await runner.run(sh(tmp_path, "echo ok"))
        await runner.run(sh(tmp_path, "sleep 30 & echo ok", timeout=5.0))
        await runner.run(sh(tmp_path, "sleep 30", timeout=0.1))
        await runner.run(sh(tmp_path, "exit 0", disown=True))
        # A disowned run outliving its wait: the transport is closed when the process exits.
        task = asyncio.ensure_future(runner.run(sh(tmp_path, "sleep 0.2", disown=True)))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.4)
        await asyncio.sleep(0)
        gc.collect()
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


async def test_programs_are_checked_when_they_run(tmp_path: Path) -> None:
    """With ``check_programs`` the runner applies the store's rules to what it is asked to run
    (the store cannot check a templated program before it is rendered)."""
    directory = tmp_path / "machine"
    (directory / "bin").mkdir(parents=True)
    marker = tmp_path / "ran"
    for name, mode in (("safe.sh", 0o755), ("open.sh", 0o777)):
        (directory / "bin" / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (directory / "bin" / name).chmod(mode)
    (tmp_path / "outside.sh").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (tmp_path / "outside.sh").chmod(0o755)
    (directory / "linked.sh").symlink_to(tmp_path / "outside.sh")
    env = {"PATH": "/usr/bin:/bin"}
    checked, unchecked = ProcessRunner(check_programs=True), ProcessRunner()

    async def run(runner: ProcessRunner, program: str) -> str | None:
        marker.unlink(missing_ok=True)
        result = await runner.run(CommandRequest([program], directory, env, timeout=10))
        assert marker.exists() == (result.error is None), (program, result)
        return result.error

    assert await run(checked, "./bin/safe.sh") is None
    assert await run(checked, "bin/../bin/safe.sh") is None
    assert await run(checked, "./bin/open.sh") == (
        f"refusing to run ./bin/open.sh: {directory / 'bin' / 'open.sh'} is writable by group "
        "or others (mode 0777)"
    )
    assert await run(checked, "../outside.sh") == (
        f"refusing to run ../outside.sh: {directory / '../outside.sh'} resolves outside the "
        f"machine directory {directory}"
    )
    assert "resolves outside" in (await run(checked, "./linked.sh") or "")
    (directory / "bin").chmod(0o777)  # anyone could swap safe.sh
    assert await run(checked, "./bin/safe.sh") == (
        f"refusing to run ./bin/safe.sh: {directory / 'bin'} is writable by group or others "
        "(mode 0777)"
    )
    # Absolute paths and PATH lookups are the operator's choice, as at load; off means off.
    assert await run(checked, str(tmp_path / "outside.sh")) is None
    assert checked.refused == 4
    for program in ("./bin/open.sh", "../outside.sh", "./linked.sh", "./bin/safe.sh"):
        assert await run(unchecked, program) is None
