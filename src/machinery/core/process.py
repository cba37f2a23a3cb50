"""Running commands for watchers: no shell, own process group, bounded time and output.

Every command starts in a new session (its own process group). When it times out or its machine
stops, the whole group gets SIGTERM, then SIGKILL after a short grace, so grandchildren do not
linger. When the command itself exits, whatever it left running in its group is killed too: a
command's lifetime bounds its children unless the manifest asks for ``disown``.

:class:`CommandRunner` is the interface; :class:`ProcessRunner` runs real processes, and the
simulator (``machinery test``) supplies scripted results through the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "CommandRequest",
    "CommandResult",
    "CommandRunner",
    "ProcessRunner",
    "resolve_program",
]

DEFAULT_OUTPUT_LIMIT = 1024 * 1024
KILL_GRACE = 0.5
_DRAIN_AFTER_EXIT = 0.2


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """What to run: ``argv`` exactly (no shell), in ``cwd``, with ``env`` as the whole
    environment. ``timeout`` None means no limit; ``disown`` leaves the process behind on stop."""

    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    timeout: float | None = None
    disown: bool = False
    capture: bool = True
    output_limit: int = DEFAULT_OUTPUT_LIMIT


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a command ended. ``exit_code`` is None when it could not start or was killed by
    the timeout (``error`` then says why)."""

    exit_code: int | None
    output: bytes = b""
    duration: float = 0.0
    timed_out: bool = False
    truncated: bool = False
    error: str | None = None
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


class CommandRunner(Protocol):
    """Runs a command for a watcher."""

    async def run(self, request: CommandRequest) -> CommandResult: ...


def resolve_program(program: str, directory: Path, path_env: str | None = None) -> Path | None:
    """Find the executable for ``program``.

    A name with a ``/`` is relative to the machine directory. A bare name is looked up in PATH
    (Choria's behaviour) and then in the machine directory (what its docs promise).
    """
    if not program:
        return None
    if "/" in program:
        candidate = (directory / program) if not os.path.isabs(program) else Path(program)
        return candidate if _executable(candidate) else None
    search = path_env if path_env is not None else os.environ.get("PATH", os.defpath)
    for entry in search.split(os.pathsep):
        if entry:
            candidate = Path(entry) / program
            if _executable(candidate):
                return candidate
    candidate = directory / program
    return candidate if _executable(candidate) else None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


class ProcessRunner:
    """Runs real processes with asyncio (see the module docstring for the rules)."""

    def __init__(self, *, kill_grace: float = KILL_GRACE) -> None:
        self.kill_grace = kill_grace
        self.timeouts = 0
        self.kills = 0

    async def run(self, request: CommandRequest) -> CommandResult:
        started = time.monotonic()
        if not request.argv:
            return CommandResult(None, error="empty command")
        program = resolve_program(request.argv[0], request.cwd, request.env.get("PATH"))
        if program is None:
            return CommandResult(None, error=f"command not found: {request.argv[0]}")
        capture = request.capture and not request.disown
        try:
            process = await asyncio.create_subprocess_exec(
                str(program),
                *request.argv[1:],
                cwd=request.cwd,
                env=dict(request.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT if capture else asyncio.subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            return CommandResult(
                None, error=f"could not start {request.argv[0]}: {exc.strerror or exc}"
            )
        if request.disown:
            return await self._wait_disowned(process, started)
        return await self._supervise(process, request, started, capture)

    async def _wait_disowned(
        self, process: asyncio.subprocess.Process, started: float
    ) -> CommandResult:
        # Stopping the machine cancels this wait but leaves the process running, by design.
        code = await process.wait()
        return CommandResult(code, duration=time.monotonic() - started, pid=process.pid)

    async def _supervise(
        self,
        process: asyncio.subprocess.Process,
        request: CommandRequest,
        started: float,
        capture: bool,
    ) -> CommandResult:
        output = bytearray()
        truncated = False

        async def read_output() -> None:
            nonlocal truncated
            assert process.stdout is not None
            while chunk := await process.stdout.read(65536):
                room = request.output_limit - len(output)
                if room > 0:
                    output.extend(chunk[:room])
                if len(chunk) > room:
                    truncated = True

        reader = asyncio.ensure_future(read_output()) if capture else None
        timed_out = False
        try:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the process exits, and the machine never stops.
                async with asyncio.timeout(request.timeout):
                    code = await process.wait()
            except TimeoutError:
                timed_out = True
                self.timeouts += 1
                await self._kill_group(process)
                code = await process.wait()
            # Whatever the command left behind in its group goes with it.
            _signal_group(process.pid, signal.SIGKILL)
            if reader is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_DRAIN_AFTER_EXIT):
                        await asyncio.shield(reader)
        except asyncio.CancelledError:
            await asyncio.shield(self._kill_group(process))
            raise
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        duration = time.monotonic() - started
        if timed_out:
            return CommandResult(
                None,
                bytes(output),
                duration,
                timed_out=True,
                truncated=truncated,
                error=f"timed out after {request.timeout:g}s",
                pid=process.pid,
            )
        return CommandResult(code, bytes(output), duration, truncated=truncated, pid=process.pid)

    async def _kill_group(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM the process group, then SIGKILL it if the leader outlives the grace."""
        if process.returncode is None:
            self.kills += 1
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.kill_grace):
                await process.wait()
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.kill_grace):
                await process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
