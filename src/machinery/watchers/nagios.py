"""The ``nagios`` watcher (spec 3.4): Nagios-compatible checks, the basis of Scout.

A check is a Nagios plugin (``plugin``) or a built-in (``builtin``: ``heartbeat``, ``goss``,
``agent_status``). Its exit code gives a status, OK (0), WARNING (1), CRITICAL (2) or UNKNOWN (3),
and the watcher fires the transition **named after the status**. Codes 4 and 5 are ignored; any
other code, a timeout or a plugin that cannot start is UNKNOWN.

Checks run every ``interval`` (the first after a random splay) and when the machine enters
``FORCE_CHECK``. Ordinary transitions do not run a check: entering a state named after a status
sets the remembered status instead, and any other state resets it to OK (a Choria quirk kept on
purpose, see the guide).

Node services used (see :meth:`machinery.core.node.Node.shared`):

- ``"nagios-textfile"``: the shared :class:`~machinery.watchers.textfile.NagiosTextfile`
  exporter, created on first use from ``node.textfile_directory``;
- ``"agent-status"``: provided by the agent, an :class:`AgentStatusSource` the
  ``agent_status`` built-in reads (without it that check is UNKNOWN).

The ``plugin`` line is split into arguments first, then each argument is rendered like Go's
``html/template`` with the single function ``o "<key>" <default>`` (Scout overrides from
``node.overrides_file``), HTML-escaping interpolated values as Choria does.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from pydantic import Field

from machinery.core.notifications import GoMap
from machinery.core.process import CommandRequest, resolve_program
from machinery.core.wakeup import STATE_CHANGED
from machinery.lang.cmdline import CommandArgument, split_command
from machinery.lang.duration import format_go_duration
from machinery.lang.gjson import GJSONPathError
from machinery.lang.gjson import lookup as gjson_lookup
from machinery.lang.gofmt import go_format_value
from machinery.lang.perfdata import PerfData, parse_perfdata
from machinery.lang.template import Template, TemplateError, parse_template
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import Duration
from machinery.watchers.base import PolledWatcher
from machinery.watchers.exec import child_environment
from machinery.watchers.textfile import NagiosTextfile

__all__ = [
    "CRITICAL",
    "NOTCHECKED",
    "OK",
    "SKIPPED",
    "STATUS_NAMES",
    "UNKNOWN",
    "WARNING",
    "AgentStatusSource",
    "NagiosProperties",
    "NagiosWatcher",
    "gjson_string",
    "go_html_escape",
]

OK, WARNING, CRITICAL, UNKNOWN, SKIPPED, NOTCHECKED = range(6)
STATUS_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN", "SKIPPED", "NOTCHECKED")
_STATE_STATUS = {"OK": OK, "WARNING": WARNING, "CRITICAL": CRITICAL, "UNKNOWN": UNKNOWN}

DEFAULT_TIMEOUT = 10.0
HISTORY_SIZE = 15
GO_ZERO_TIME = -62135596800  # Go's zero time.Time as Unix seconds: "never checked"
AGENT_STATUS_BUILTINS = ("agent_status", "choria_status")
BUILTINS = ("heartbeat", "goss", *AGENT_STATUS_BUILTINS)

# html/template allows Go's builtins and the functions it is given; its own escapers (html, js,
# urlquery) are refused inside pipelines, so they are left out here.
_PLUGIN_FUNCTIONS = frozenset(
    {
        "and",
        "or",
        "not",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "len",
        "index",
        "slice",
        "print",
        "printf",
        "println",
        "o",
    }
)
# html/template's escaper for values printed in HTML text.
_HTML_ESCAPES = str.maketrans(
    {
        "\0": "\ufffd",
        '"': "&#34;",
        "&": "&amp;",
        "'": "&#39;",
        "+": "&#43;",
        "<": "&lt;",
        ">": "&gt;",
    }
)


def go_html_escape(text: str) -> str:
    """Escape a value the way Go's ``html/template`` does in HTML text."""
    return text.translate(_HTML_ESCAPES)


@lru_cache(maxsize=1024)
def _plugin_command(text: str) -> tuple[CommandArgument, ...]:
    return tuple(split_command(text, _PLUGIN_FUNCTIONS))


def _plugin_line(text: str) -> Template | None:
    """The whole plugin line as one template (None: only its words parse; shown re-quoted)."""
    try:
        return parse_template(text, _PLUGIN_FUNCTIONS)
    except TemplateError:
        return None


def gjson_string(value: object) -> str:
    """gjson's ``Result.String()`` for a decoded JSON value."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return format(Decimal(repr(value)), "f")
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _rfc3339nano(wall_ns: int) -> str:
    """Go's ``time.RFC3339Nano`` of a UTC wall time in Unix nanoseconds (trailing zeros of the
    fraction dropped), as a Go ``time.Time`` marshals to JSON."""
    seconds, fraction = divmod(wall_ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


@runtime_checkable
class AgentStatusSource(Protocol):
    """The agent's own health, as the ``agent_status`` built-in reads it (node service
    ``"agent-status"``).

    ``health()`` returns a mapping with ``uptime`` (float seconds), ``machines`` (int),
    ``invalid_machines`` (int), ``nats_connected`` (bool, or None when no NATS is configured),
    ``last_event_age`` (float seconds since the agent last handled an event, None if none yet)
    and ``spool_depth`` (int, events waiting to be sent).
    """

    def health(self) -> Mapping[str, Any]: ...


class NagiosProperties(WatcherProperties):
    """Properties of the nagios watcher."""

    plugin: str = Field(
        "",
        description='the plugin and its arguments; each argument may use {{ o "key" default }}',
    )
    builtin: str = Field("", description="a built-in check: heartbeat, goss or agent_status")
    timeout: Duration = Field(DEFAULT_TIMEOUT, description="kill the plugin after this long")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="extra information copied into every published state"
    )
    gossfile: str = Field("", description="the goss file the goss built-in validates")
    last_message: Duration = Field(
        0.0, description="agent_status: CRITICAL when no event was handled for this long"
    )
    pubcert_expire: Duration = Field(
        0.0, description="accepted for compatibility; ignored (no Choria certificates)"
    )
    token_expire: Duration = Field(
        0.0, description="accepted for compatibility; ignored (no Choria tokens)"
    )


class NagiosWatcher(PolledWatcher[NagiosProperties]):
    """Runs a Nagios check and fires the transition named after its status."""

    type_name = "nagios"
    properties_model = NagiosProperties
    min_interval = 0.5

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, NagiosProperties)
        plugin, builtin = properties.plugin, properties.builtin
        if plugin and builtin:
            yield Problem(("properties",), "cannot set plugin and builtin")
        elif not plugin and not builtin:
            yield Problem(("properties",), "plugin or builtin is required")
        if plugin:
            try:
                if not _plugin_command(plugin):
                    yield Problem(("properties", "plugin"), "plugin is empty")
            except TemplateError as exc:
                yield Problem(("properties", "plugin"), f"invalid plugin: {exc}", offset=exc.offset)
        if builtin:
            if builtin not in BUILTINS and not builtin.startswith("goss"):
                yield Problem(
                    ("properties", "builtin"),
                    f"unsupported builtin {builtin!r} (use {', '.join(BUILTINS[:3])})",
                )
            if builtin.startswith("goss") and not properties.gossfile:
                yield Problem(
                    ("properties",), "gossfile property is required for the goss builtin check"
                )
            if builtin in AGENT_STATUS_BUILTINS and properties.last_message == 0:
                yield Problem(
                    ("properties",),
                    f"last_message property is required for the {builtin} builtin check",
                )
        for key in ("pubcert_expire", "token_expire"):
            if getattr(properties, key):
                yield Problem.warning(
                    ("properties", key),
                    f"{key} is ignored: there are no Choria certificates or tokens to check",
                )
        if properties.timeout == 0:
            yield Problem.warning(
                ("properties", "timeout"),
                f"a timeout of 0 means the default of {DEFAULT_TIMEOUT:g}s",
            )
        for key in ("success_transition", "fail_transition"):
            if getattr(watcher, key):
                yield Problem.warning(
                    (key,),
                    f"{key} is ignored by nagios watchers: they fire the transition named "
                    "after the status (OK, WARNING, CRITICAL, UNKNOWN)",
                )
        if not set(_STATE_STATUS) & set(machine.transition_names()):
            yield Problem.warning(
                (),
                "the machine has no transition named OK, WARNING, CRITICAL or UNKNOWN, "
                "so checks fire nothing",
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plugin = self.properties.plugin
        self._arguments = _plugin_command(plugin) if plugin else ()
        # Choria publishes the whole line as rendered: kept for the events, never executed.
        self._plugin_line = _plugin_line(plugin) if plugin else None
        self.previous = NOTCHECKED
        self.previous_plugin = ""
        self.previous_output = ""
        self.previous_perfdata: list[PerfData] = []
        self.previous_run_time = 0.0
        self.previous_check: float | None = None  # wall time the last check started
        self._previous_check_monotonic: float | None = None
        self.history: list[dict[str, Any]] = []
        self._force = False
        node = self.machine.node
        self._textfile = node.shared(
            "nagios-textfile", lambda: NagiosTextfile(node.textfile_directory, node.clock.now())
        )
        # Registered as UNKNOWN from the start, as Choria does, so checks_count starts at 1.
        self._update_textfile(UNKNOWN)

    # -- scheduling ----------------------------------------------------------------------

    def first_delay(self) -> float | None:
        return self.machine.random.random() * self.interval

    def should_watch(self) -> bool:
        """Choria's override: a forced check always runs; a check within ``interval - 1s`` of
        the previous one does not (transitions must not cause double checks)."""
        if self._force:
            self._force = False
            return True
        last = self._previous_check_monotonic
        if last is not None and self.machine.clock.monotonic() - last < self.interval - 1.0:
            self.log_debug("Skipping check: the previous check was too recent")
            return False
        return super().should_watch()

    def notify_state_change(self) -> None:
        state = self.machine.state
        if state == "FORCE_CHECK":
            self.log_info(f"Forcing a check of {self.machine.name}")
            self._force = True
            self._wakeup.set(STATE_CHANGED)
            return
        # Any state that is not a status name resets the status to OK: Choria's zero value.
        status = _STATE_STATUS.get(state, OK)
        self.previous = status
        self._update_textfile(status)

    def close(self) -> None:
        try:
            self._textfile.delete(self.machine.name)
        except OSError as exc:
            self.log_error(f"Could not update prometheus: {exc}")

    # -- checking ------------------------------------------------------------------------

    async def check(self, reasons: int) -> None:
        if not self.should_watch():
            self.record("skipped")
            return
        clock = self.machine.clock
        started_ns = clock.now_ns()
        self.previous_check = started_ns / 1e9
        self._previous_check_monotonic = clock.monotonic()
        began = time.monotonic()
        try:
            status, output = await self._execute()
        finally:
            self.previous_run_time = time.monotonic() - began
        self.previous_output = output.strip()
        self.previous_perfdata = parse_perfdata(output)
        if status in (SKIPPED, NOTCHECKED):
            self.log_debug(f"Check returned {STATUS_NAMES[status]}, ignored")
            return
        self.previous = status
        entry: dict[str, Any] = {"execute": _rfc3339nano(started_ns), "status": status}
        if self.previous_perfdata:
            entry["perfdata"] = [p.to_json() for p in self.previous_perfdata]
        self.history = [*self.history[-(HISTORY_SIZE - 1) :], entry]
        self.record(STATUS_NAMES[status], self.previous_run_time)
        self.publish()
        self._update_textfile(status)
        await self.fire(STATUS_NAMES[status])

    async def _execute(self) -> tuple[int, str]:
        """Run the check: its status and raw output."""
        if self.properties.plugin:
            return await self._run_plugin()
        builtin = self.properties.builtin
        self.previous_plugin = builtin
        if builtin == "heartbeat":
            return OK, str(int(self.machine.clock.now()))
        if builtin.startswith("goss"):
            return await self._run_goss()
        if builtin in AGENT_STATUS_BUILTINS:
            return self._agent_status()
        return UNKNOWN, f"unsupported builtin {builtin!r}"

    def _failed(self, message: str) -> None:
        self.status.last_error = message
        self.log_error(message)

    async def _run_plugin(self) -> tuple[int, str]:
        try:
            argv, line = self._render_plugin()
        except TemplateError as exc:
            message = f"could not process overrides for plugin command: {exc}"
            self._failed(message)
            return UNKNOWN, message
        if not argv:
            message = "plugin command is empty after rendering"
            self._failed(message)
            return UNKNOWN, message
        self.previous_plugin = line
        machine = self.machine
        request = CommandRequest(
            argv=argv,
            cwd=machine.directory,
            env=child_environment(machine.name, self.name, machine.directory),
            timeout=self.properties.timeout or DEFAULT_TIMEOUT,
        )
        self.log_debug(f"Running {argv!r}")
        try:
            result = await machine.runner.run(request)
        except OSError as exc:
            self._failed(f"Nagios plugin {argv[0]} failed: {exc}")
            return UNKNOWN, str(exc)
        if result.exit_code is None:
            self._failed(f"Nagios plugin {argv[0]} failed: {result.error}")
            return UNKNOWN, result.text.strip() or (result.error or "")
        code = result.exit_code
        if not 0 <= code <= NOTCHECKED:
            self._failed(f"Nagios plugin {argv[0]} exited with unexpected code {code}")
            return UNKNOWN, result.text
        self.status.last_error = None
        return code, result.text

    def _render_plugin(self) -> tuple[list[str], str]:
        """The argv to run (each word rendered alone) and the whole line as Choria renders it."""
        loaded = False
        overrides: Any = None

        def o(key: object, default: object) -> str:
            nonlocal loaded, overrides
            if not isinstance(key, str):
                raise ValueError(f"the key must be a string, not {go_format_value(key)}")
            if not loaded:
                overrides, loaded = self._load_overrides(), True
            if overrides is None:
                return go_format_value(default)
            try:
                found, value = gjson_lookup(overrides, f"{self.machine.name}.{key}")
            except GJSONPathError:
                found, value = False, None
            return gjson_string(value) if found else go_format_value(default)

        functions = {"o": o}
        argv: list[str] = []
        for argument in self._arguments:
            value = argument.template.render({}, functions, escape=go_html_escape)
            if value or argument.quoted:
                argv.append(value)
        line = shlex.join(argv)
        if self._plugin_line is not None:
            line = self._plugin_line.render({}, functions, escape=go_html_escape)
        return argv, line

    def _load_overrides(self) -> Any:
        """The Scout overrides document, or None when there is none or it cannot be read."""
        path = self.machine.node.overrides_file
        if path is None:
            return None
        try:
            raw = path.read_bytes()
            return json.loads(raw) if raw.strip() else None
        except (OSError, ValueError, RecursionError) as exc:
            self.log_debug(f"Could not read overrides from {path}: {exc}")
            return None

    async def _run_goss(self) -> tuple[int, str]:
        machine = self.machine
        env = child_environment(machine.name, self.name, machine.directory)
        program = resolve_program("goss", machine.directory, env["PATH"])
        if program is None:
            return UNKNOWN, "UNKNOWN: goss is not installed"
        argv = [str(program), "--gossfile", self.properties.gossfile]
        overrides = machine.node.overrides_file
        if overrides is not None and self._load_overrides() is not None:
            argv += ["--vars", str(overrides)]
        argv += ["validate", "--format", "json", "--max-concurrent", "1"]
        request = CommandRequest(
            argv=argv,
            cwd=machine.directory,
            env=env,
            timeout=self.properties.timeout or DEFAULT_TIMEOUT,
        )
        result = await machine.runner.run(request)
        if result.exit_code is None:
            message = f"UNKNOWN: goss validate failed: {result.error}"
            self._failed(message)
            return UNKNOWN, message
        try:
            document = json.loads(result.text)
            summary = document["summary"]
            count = int(summary["test-count"])
            failed = int(summary["failed-count"])
            seconds = float(summary.get("total-duration", 0)) / 1e9
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            text = result.text.strip().splitlines()
            detail = text[-1] if text else f"{type(exc).__name__}: {exc}"
            message = f"UNKNOWN: goss validate failed: {detail}"
            self._failed(message)
            return UNKNOWN, message
        line = document.get("summary-line")
        if not isinstance(line, str) or not line:
            line = f"Count: {count}, Failed: {failed}, Duration: {seconds:.3f}s"
        perfdata = f"checks={count};; failed={failed};; runtime={seconds:f}s"
        self.status.last_error = None
        if failed > 0:
            return CRITICAL, f"CRITICAL: {line}|{perfdata}"
        return OK, f"OK: {line}|{perfdata}"

    def _agent_status(self) -> tuple[int, str]:
        source = self.machine.node.service("agent-status")
        if source is None:
            return UNKNOWN, "Agent status not available"
        try:
            health = source.health()
            uptime = float(health.get("uptime") or 0)
            machines = int(health.get("machines") or 0)
            invalid = int(health.get("invalid_machines") or 0)
            spool = int(health.get("spool_depth") or 0)
            connected = health.get("nats_connected")
            age_value = health.get("last_event_age")
            age = None if age_value is None else float(age_value)
        except Exception as exc:  # the agent's problem must show as a check result
            return CRITICAL, f"Agent status error: {exc}"
        perfdata = (
            f"uptime={int(uptime)};; machines={machines};; invalid_machines={invalid};; "
            f"spool_depth={spool};;"
        )
        if age is not None:
            perfdata += f" last_event_age={int(age)};;"
        limit = self.properties.last_message
        if connected is False:
            return CRITICAL, f"CRITICAL: Not connected to any server|{perfdata}"
        if age is None and uptime >= limit:
            return (
                CRITICAL,
                f"CRITICAL: no event handled since start {format_go_duration(round(uptime))} "
                f"ago, limit {format_go_duration(limit)}|{perfdata}",
            )
        if age is not None and age > limit:
            return (
                CRITICAL,
                f"CRITICAL: last event handled {format_go_duration(round(age))} ago, limit "
                f"{format_go_duration(limit)}|{perfdata}",
            )
        if invalid > 0:
            return WARNING, f"WARNING: {invalid} invalid machines|{perfdata}"
        return OK, f"OK: {machines} machines|{perfdata}"

    def _update_textfile(self, status: int) -> None:
        try:
            self._textfile.update(self.machine.name, status, self.machine.clock.now())
        except OSError as exc:
            self.log_error(f"Could not update prometheus: {exc}")

    # -- published state -----------------------------------------------------------------

    def state_fields(self) -> dict[str, Any]:
        return {
            "plugin": self.previous_plugin,
            "status": STATUS_NAMES[self.previous],
            "status_code": self.previous,
            "output": self.previous_output,
            "check_time": int(self.previous_check)
            if self.previous_check is not None
            else GO_ZERO_TIME,
            "perfdata": [p.to_json() for p in self.previous_perfdata] or None,
            "runtime": float(self.previous_run_time),
            "history": [dict(entry) for entry in self.history],
            "annotations": GoMap(self.properties.annotations),
        }

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        return (
            f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} "
            f"{payload.get('status')}: {payload.get('output')}"
        )
