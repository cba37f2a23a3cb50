"""The ``exec`` watcher (spec 3.1): run a command; exit code 0 is success, anything else failure.

Runs on every real transition into or within its states and on its interval, never at start.
The command line is split into arguments before each argument is rendered, so facts and data
can never add arguments; the child gets a fresh environment, runs in the machine directory in
its own process group, and is killed as a group on timeout or stop.

With ``governor`` set, a slot in that governor (node service ``governor``, see
:mod:`machinery.core.governor`) is held while the command runs; not getting one is an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field

from machinery.core.governor import GovernorError, governed
from machinery.core.process import CommandRequest
from machinery.lang.cmdline import render_command
from machinery.lang.template import TemplateError
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import (
    CommandLine,
    Duration,
    TemplateText,
    compile_command,
    compile_template,
)
from machinery.watchers.base import PolledWatcher

__all__ = ["ExecProperties", "ExecWatcher", "child_environment"]

DEFAULT_TIMEOUT = 10.0
DEFAULT_GOVERNOR_TIMEOUT = 300.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The first run with gather_initial_state comes after a random delay up to this.
_GATHER_SPLAY = 30.0


class ExecProperties(WatcherProperties):
    """Properties of the exec watcher."""

    command: CommandLine = Field(description="the command and its arguments; no shell")
    timeout: Duration = Field(
        DEFAULT_TIMEOUT, description="kill the command (and its children) after this long"
    )
    environment: list[TemplateText] = Field(
        default_factory=list, description="extra VAR=value entries for the child environment"
    )
    governor: TemplateText = Field("", description="governor slot to take before running")
    governor_timeout: Duration = Field(300.0, description="how long to wait for a governor slot")
    parse_as_data: bool = Field(False, description="store the JSON object printed as machine data")
    suppress_success_announce: bool = Field(False, description="do not publish successful runs")
    gather_initial_state: bool = Field(
        False, description="first interval run after a random 0-30s instead of one interval"
    )
    disown: bool = Field(
        False, description="run detached: no timeout, not killed when the machine stops"
    )


class ExecWatcher(PolledWatcher[ExecProperties]):
    """Runs a command and reports success or error."""

    type_name = "exec"
    properties_model = ExecProperties
    min_interval = 0.5

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, ExecProperties)
        if not compile_command(properties.command):
            yield Problem(("properties", "command"), "command is empty")
        if properties.disown and properties.parse_as_data:
            yield Problem(
                ("properties", "disown"),
                "cannot parse output as data while disowning child processes",
            )
        for i, entry in enumerate(properties.environment):
            name, sep, _ = entry.partition("=")
            if not sep or not _ENV_NAME.match(name):
                yield Problem(
                    ("properties", "environment", i),
                    f"environment entry {entry!r} must look like NAME=value",
                )
        if properties.timeout == 0:
            yield Problem.warning(
                ("properties", "timeout"),
                f"a timeout of 0 means the default of {DEFAULT_TIMEOUT:g}s",
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arguments = compile_command(self.properties.command)
        self._environment = [compile_template(e) for e in self.properties.environment]
        self._governor = compile_template(self.properties.governor)
        self.previous_outcome = "unknown"
        self.previous_run_time = 0.0

    def first_delay(self) -> float | None:
        if self.properties.gather_initial_state:
            return self.machine.random.uniform(1e-9, min(_GATHER_SPLAY, self.interval))
        return None

    async def check(self, reasons: int) -> None:
        if not self.should_watch():
            self.previous_outcome = "skipped"
            self.record("skipped")
            return
        started = time.monotonic()
        error = await self._governed_execute()
        self.previous_run_time = time.monotonic() - started
        if error is not None:
            self.previous_outcome = "error"
            self.status.last_error = error
            self.record("error", self.previous_run_time)
            self.log_warning(f"Exec watcher {self.properties.command} failed: {error}")
            self.publish()
            await self.fire_fail()
            return
        self.previous_outcome = "success"
        self.status.last_error = None
        self.record("success", self.previous_run_time)
        if not self.properties.suppress_success_announce:
            self.publish()
        await self.fire_success()

    async def _governed_execute(self) -> str | None:
        """Run the command, inside a governor slot when ``governor`` names one."""
        if not self.properties.governor:
            return await self._execute()
        try:
            name = self.machine.render(self._governor).strip()
        except TemplateError as exc:
            return f"could not process governor template: {exc}"
        if not name:
            return await self._execute()
        timeout = self.properties.governor_timeout or DEFAULT_GOVERNOR_TIMEOUT
        try:
            async with governed(self.machine, self.name, name, timeout):
                return await self._execute()
        except GovernorError as exc:
            return f"Cannot enter Governor {name}: {exc}"

    async def _execute(self) -> str | None:
        """Run the command once; None on success, else why it failed."""
        machine = self.machine
        dot = machine.template_dot()
        try:
            argv = render_command(self._arguments, dot, machine.template_functions)
            extra = [e.render(dot, machine.template_functions) for e in self._environment]
        except TemplateError as exc:
            return f"could not process command template: {exc}"
        if not argv:
            return "command is empty after rendering"
        data_file = facts_file = None
        try:
            data_file = _temp_json("machinery-data-", machine.data.to_json())
            facts_file = _temp_json("machinery-facts-", machine.facts.as_json())
            env = child_environment(machine.name, self.name, machine.directory)
            env["WATCHER_DATA"] = data_file
            env["WATCHER_FACTS"] = facts_file
            for entry in extra:
                key, _, value = entry.partition("=")
                env[key] = value
            request = CommandRequest(
                argv=argv,
                cwd=machine.directory,
                env=env,
                timeout=None
                if self.properties.disown
                else (self.properties.timeout or DEFAULT_TIMEOUT),
                disown=self.properties.disown,
            )
            self.log_debug(f"Running {argv!r}")
            result = await machine.runner.run(request)
        except OSError as exc:
            return f"could not prepare the command: {exc}"
        finally:
            for path in (data_file, facts_file):
                if path is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        if result.error is not None:
            return result.error
        if result.exit_code != 0:
            output = result.text.strip()
            detail = f": {output[-500:]}" if output else ""
            return f"exit status {result.exit_code}{detail}"
        if self.properties.parse_as_data:
            return self._store_output(result.text)
        return None

    def _store_output(self, output: str) -> str | None:
        try:
            values = json.loads(output)
        except ValueError as exc:
            return f"could not parse output as JSON data: {exc}"
        if not isinstance(values, dict):
            return "could not parse output as data: not a JSON object"
        try:
            self.machine.data.update(values)
        except OSError as exc:
            return str(exc)
        return None

    def state_fields(self) -> dict[str, Any]:
        return {
            "command": self.properties.command,
            "previous_outcome": self.previous_outcome,
            "previous_run_time": int(self.previous_run_time * 1e9),
        }

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        seconds = float(payload.get("previous_run_time") or 0) / 1e9
        return (
            f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} command: "
            f"{payload.get('command')}, previous: {payload.get('previous_outcome')} "
            f"ran: {seconds:.3f}s"
        )


def child_environment(
    machine_name: str, watcher_name: str, directory: os.PathLike[str]
) -> dict[str, str]:
    """The environment a watcher's command starts with: built from scratch (the agent's own
    environment is not passed on), with the machine directory at the end of PATH."""
    path = os.environ.get("PATH", os.defpath)
    return {
        "MACHINE_WATCHER_NAME": watcher_name,
        "MACHINE_NAME": machine_name,
        "PATH": f"{path}{os.pathsep}{os.fspath(directory)}",
    }


def _temp_json(prefix: str, text: str) -> str:
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".json")
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path
