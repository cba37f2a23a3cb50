"""Running commands for watchers: no shell, own process group, bounded time and output.

Every command starts in a new session (its own process group). When it times out or its machine
stops, the whole group gets SIGTERM, then SIGKILL after a short grace, so grandchildren do not
linger. When the command itself exits, whatever it left running in its group is killed too: a
command's lifetime bounds its children unless the manifest asks for ``disown``. (Children still
holding its output get up to 0.2 s to finish writing first; a daemon that left the group with
``setsid`` survives, but our end of its output pipe is closed.)

:class:`CommandRunner` is the interface; :class:`ProcessRunner` runs real processes, and the
simulator (``machinery test``) supplies scripted results through the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from machinery.core.permissions import command_problem, permission_problem

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "CommandRequest",
    "CommandResult",
    "CommandRunner",
    "ProcessRunner",
    "program_problem",
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


def program_problem(program: str, resolved: Path, directory: Path) -> str | None:
    """Why the store would refuse to run ``program`` (a command's first word, as rendered),
    found at ``resolved`` for a machine in ``directory``, or None (see
    :mod:`machinery.core.permissions`). A relative path must resolve inside ``directory`` and be
    safe there; a bare name found in ``directory`` must be safe; absolute paths and programs
    found in PATH are the operator's choice, as at load."""
    uid = os.geteuid()
    if "/" in program and not os.path.isabs(program):
        found = command_problem(directory, program, uid)
        return None if found is None else found[1]
    if "/" not in program and resolved.parent == directory:
        return permission_problem(resolved, uid)
    return None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


class ProcessRunner:
    """Runs real processes with asyncio (see the module docstring for the rules)."""

    def __init__(self, *, kill_grace: float = KILL_GRACE, check_programs: bool = False) -> None:
        self.kill_grace = kill_grace
        # The store's ownership and permission rules, applied to the rendered program of every
        # command (the agent turns this on with its ``check_permissions`` setting): a templated
        # program is known only now, and a script may have changed since its machine loaded.
        self.check_programs = check_programs
        self.refused = 0
        self.timeouts = 0
        self.kills = 0

    async def run(self, request: CommandRequest) -> CommandResult:
        started = time.monotonic()
        if not request.argv:
            return CommandResult(None, error="empty command")
        invalid = _invalid(request)
        if invalid is not None:
            return CommandResult(None, error=invalid)
        program = resolve_program(request.argv[0], request.cwd, request.env.get("PATH"))
        if program is None:
            return CommandResult(None, error=f"command not found: {request.argv[0]}")
        if self.check_programs:
            unsafe = program_problem(request.argv[0], program, request.cwd)
            if unsafe is not None:
                self.refused += 1
                return CommandResult(None, error=f"refusing to run {request.argv[0]}: {unsafe}")
        capture = request.capture and not request.disown
        loop = asyncio.get_running_loop()
        starting = asyncio.ensure_future(
            loop.subprocess_exec(
                lambda: _Command(request.output_limit),
                str(program),
                *request.argv[1:],
                cwd=request.cwd,
                env=dict(request.env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if capture else subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        )
        try:
            transport, protocol = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # Stopped while the command was starting: it may already run and have started
            # children. asyncio would kill only the leader; the whole group goes instead.
            await asyncio.shield(self._abandon(starting, request.disown))
            raise
        except OSError as exc:
            return CommandResult(
                None, error=f"could not start {request.argv[0]}: {exc.strerror or exc}"
            )
        except ValueError as exc:  # what _invalid missed, e.g. text that cannot be encoded
            return CommandResult(None, error=f"could not start {request.argv[0]}: {exc}")
        if request.disown:
            return await self._wait_disowned(transport, protocol, started)
        return await self._supervise(transport, protocol, request, started)

    async def _abandon(
        self,
        starting: asyncio.Future[tuple[asyncio.SubprocessTransport, _Command]],
        disown: bool,
    ) -> None:
        try:
            transport, command = await starting
        except Exception:
            return  # it never started
        if not disown:
            await self._kill_group(transport, command)
            transport.close()

    async def _wait_disowned(
        self, transport: asyncio.SubprocessTransport, command: _Command, started: float
    ) -> CommandResult:
        # Stopping the machine cancels this wait but leaves the process running, by design
        # (the protocol closes the transport whenever it exits).
        await _within(command.exited, None)
        return CommandResult(
            transport.get_returncode(),
            duration=time.monotonic() - started,
            pid=transport.get_pid(),
        )

    async def _supervise(
        self,
        transport: asyncio.SubprocessTransport,
        command: _Command,
        request: CommandRequest,
        started: float,
    ) -> CommandResult:
        pid = transport.get_pid()
        timed_out = False
        try:
            # The exit of the command itself, from the protocol: Process.wait() on Python 3.11
            # also waits for the output pipe to close, which a background child can hold open.
            # (asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the process exits, and the machine never stops.)
            if not await _within(command.exited, request.timeout):
                timed_out = True
                self.timeouts += 1
                await self._kill_group(transport, command)
                await _within(command.exited, None)
            # Read what is left in the pipe, giving the rest of the group a short grace to
            # finish writing; then whatever the command left behind in its group goes with it.
            await _within(command.eof, _DRAIN_AFTER_EXIT)
            _signal_group(pid, signal.SIGKILL)
        except asyncio.CancelledError:
            await asyncio.shield(self._kill_group(transport, command))
            raise
        finally:
            # Closes our end of the pipe even if a setsid'd daemon still holds the other end.
            transport.close()
        duration = time.monotonic() - started
        output = bytes(command.output)
        if timed_out:
            return CommandResult(
                None,
                output,
                duration,
                timed_out=True,
                truncated=command.truncated,
                error=f"timed out after {request.timeout:g}s",
                pid=pid,
            )
        return CommandResult(
            transport.get_returncode(), output, duration, truncated=command.truncated, pid=pid
        )

    async def _kill_group(self, transport: asyncio.SubprocessTransport, command: _Command) -> None:
        """SIGTERM the process group, then SIGKILL it if the leader, or a member holding the
        output, outlives the grace."""
        pid = transport.get_pid()
        if transport.get_returncode() is None:
            self.kills += 1
        _signal_group(pid, signal.SIGTERM)
        await _within(command.exited, self.kill_grace, command.eof)
        _signal_group(pid, signal.SIGKILL)
        await _within(command.exited, self.kill_grace)


class _Command(asyncio.SubprocessProtocol):
    """One running command: its output, capped at ``limit`` bytes (the rest is read and
    dropped), and futures for the exit of the command itself and the end of its output."""

    def __init__(self, limit: int) -> None:
        loop = asyncio.get_running_loop()
        self.limit = limit
        self.output = bytearray()
        self.truncated = False
        self.exited: asyncio.Future[None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self._transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport
        if transport.get_pipe_transport(1) is None:
            _resolve(self.eof)  # not captured: no output to wait for

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        room = self.limit - len(self.output)
        if len(data) <= room:
            self.output += data
            return
        if room > 0:
            self.output += memoryview(data)[:room]
        self.truncated = True

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        _resolve(self.eof)
        self._close_when_done()

    def process_exited(self) -> None:
        _resolve(self.exited)
        self._close_when_done()

    def _close_when_done(self) -> None:
        # Also when nobody waits any more (a disowned command outliving its machine's stop).
        if self.exited.done() and self.eof.done() and self._transport is not None:
            self._transport.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _within(
    future: asyncio.Future[None], timeout: float | None, *others: asyncio.Future[None]
) -> bool:
    """Wait up to ``timeout`` (None: for ever) for ``future`` and ``others``, without cancelling
    them; True if ``future`` is done."""
    pending = [f for f in (future, *others) if not f.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    return future.done()


def _invalid(request: CommandRequest) -> str | None:
    """Why ``request`` cannot be handed to the kernel (None when it can): no argument or
    environment entry can hold a NUL byte, nor a variable name an ``=``."""
    for index, argument in enumerate(request.argv):
        if "\0" in argument:
            if index == 0:
                return "the command name contains a NUL byte"
            return f"argument {index} contains a NUL byte"
    for name, value in request.env.items():
        if "\0" in name or "=" in name:
            return f"invalid environment variable name {name!r}"
        if "\0" in value:
            return f"environment variable {name} contains a NUL byte"
    return None


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
