"""The ``metric`` watcher (spec 3.6): run a command that prints metrics and publish them.

The command prints either Choria's JSON format (``{"labels": {..}, "metrics": {..}}``) or Nagios
plugin output whose performance data become the metrics. Every ``interval`` (a property, not the
watcher-level interval; the first run after a random splay) and on every state change, while
active, the watcher runs it and publishes the result: as its state event, in the node_exporter
textfile, to Graphite, into the machine data and through the HTTP API.

A command that fails (non-zero exit, timeout) produces nothing at all; output that looks like
JSON but is not valid fires ``fail_transition``. ``success_transition`` is never fired.

Node services used (see :meth:`machinery.core.node.Node.shared`):

- ``"metric-textfile"``: the shared :class:`~machinery.watchers.textfile.MetricTextfile`
  exporter, created on first use from ``node.textfile_directory``;
- ``"metrics"``: a :class:`MetricRegistry`. Each watcher registers itself when it starts and
  unregisters when closed; the HTTP API serves ``GET /choria/machine/metric/v1/{machine}/{watcher}``
  with ``registry.get(machine, watcher)`` (None: 400 ``metric not found``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from pydantic import Field

from machinery.core.notifications import GoMap
from machinery.core.process import CommandRequest
from machinery.lang.cmdline import render_command
from machinery.lang.perfdata import parse_perfdata
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
from machinery.watchers.exec import child_environment
from machinery.watchers.textfile import MetricTextfile

__all__ = [
    "MetricProperties",
    "MetricRegistry",
    "MetricSource",
    "MetricWatcher",
    "parse_metric_output",
]

MIN_INTERVAL = 1.0
DEFAULT_TIMEOUT = 1.0
GRAPHITE_TIMEOUT = 2.0
RUNTIME_METRIC = "choria_runtime_seconds"
_PORT = re.compile(r"^[+-]?\d+$")


class MetricSource(Protocol):
    """What the registry asks a metric watcher for."""

    def metric_snapshot(self) -> dict[str, Any]: ...


class MetricRegistry:
    """The metric watchers of a node by machine and watcher name (node service ``"metrics"``)."""

    def __init__(self) -> None:
        self._sources: dict[tuple[str, str], MetricSource] = {}

    def register(self, machine: str, watcher: str, source: MetricSource) -> None:
        self._sources[(machine, watcher)] = source

    def unregister(self, machine: str, watcher: str, source: MetricSource | None = None) -> None:
        """Remove an entry (only if it still belongs to ``source``, when given)."""
        current = self._sources.get((machine, watcher))
        if current is not None and (source is None or current is source):
            del self._sources[(machine, watcher)]

    def get(self, machine: str, watcher: str) -> dict[str, Any] | None:
        """``{"labels": {..}, "metrics": {..}, "time": <unix>}`` of the watcher's last metric
        (empty maps and 0 before the first), or None for an unknown watcher."""
        source = self._sources.get((machine, watcher))
        return None if source is None else source.metric_snapshot()

    def names(self) -> list[tuple[str, str]]:
        """Every registered ``(machine, watcher)``, sorted."""
        return sorted(self._sources)


class MetricProperties(WatcherProperties):
    """Properties of the metric watcher."""

    command: CommandLine = Field(description="the command printing metrics; no shell")
    interval: Duration | None = Field(
        None, description="how often to run the command (minimum and default 1s)"
    )
    timeout: Duration = Field(
        DEFAULT_TIMEOUT, description="kill the command after this long (Choria: fixed 1s)"
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="labels added to every metric, over the command's own"
    )
    skip_prometheus: bool = Field(False, description="do not write the node_exporter textfile")
    store: bool = Field(False, description='store the metric as machine data under "metric"')
    graphite_host: TemplateText = Field("", description="Graphite host to send metrics to")
    graphite_port: TemplateText = Field("", description="Graphite plaintext port")
    graphite_prefix: TemplateText = Field(
        "", description='prefix of Graphite metric names; default "choria.<watcher name>"'
    )
    http: bool = Field(False, description="accepted for compatibility; metrics are always served")


def _finite(name: str, value: object) -> float:
    if value is None:
        return 0.0  # Go decodes a JSON null into the zero value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric {name!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"metric {name!r} is out of range") from None
    if not math.isfinite(number):
        raise ValueError(f"metric {name!r} is out of range")
    return number


def _reject_constant(name: str) -> float:
    raise ValueError(f"invalid JSON number {name}")


def parse_metric_output(output: str) -> tuple[dict[str, str], dict[str, float]]:
    """Labels and metrics from a command's output, Choria JSON or Nagios perfdata.

    Output whose trimmed text starts with ``{`` is JSON: its ``labels`` (strings) merge over
    ``{"format": "choria"}`` and its ``metrics`` (numbers) are taken as they are; keys match
    case-insensitively, unknown keys are ignored, as Go's JSON decoder does. Raises ValueError
    when that JSON is invalid. Anything else is Nagios output: label ``format=nagios`` and one
    metric per performance data item.
    """
    if not output.strip().startswith("{"):
        return {"format": "nagios"}, {item.label: item.value for item in parse_perfdata(output)}
    try:
        document = json.loads(output, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    labels = {"format": "choria"}
    metrics: dict[str, float] = {}
    for key, value in document.items():
        lowered = key.lower()
        if lowered not in ("labels", "metrics") or value is None:
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{lowered} must be a JSON object")
        for name, item in value.items():
            if lowered == "metrics":
                metrics[name] = _finite(name, item)
            elif item is None:
                labels[name] = ""
            elif isinstance(item, str):
                labels[name] = item
            else:
                raise ValueError(f"label {name!r} is not a string")
    return labels, metrics


class MetricWatcher(PolledWatcher[MetricProperties]):
    """Runs a metrics command on its own interval and publishes what it prints."""

    type_name = "metric"
    properties_model = MetricProperties
    uses_interval = False

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, MetricProperties)
        if not compile_command(properties.command):
            yield Problem(("properties", "command"), "command is required")
        interval = properties.interval
        if interval is None:
            yield Problem.warning(
                ("properties",),
                "interval is not set: the command runs every second (set properties.interval)",
            )
        elif interval < MIN_INTERVAL:
            yield Problem.warning(
                ("properties", "interval"), "an interval below 1s is raised to 1s"
            )
        if properties.timeout == 0:
            yield Problem.warning(
                ("properties", "timeout"),
                f"a timeout of 0 means the default of {DEFAULT_TIMEOUT:g}s",
            )
        if bool(properties.graphite_host) != bool(properties.graphite_port):
            yield Problem.warning(
                ("properties",),
                "graphite_host and graphite_port are both needed to publish to Graphite",
            )
        port = properties.graphite_port
        if port and compile_template(port).is_static and not _valid_port(port):
            yield Problem(("properties", "graphite_port"), f"invalid graphite port {port!r}")
        if watcher.success_transition:
            yield Problem.warning(
                ("success_transition",), "success_transition is never fired by metric watchers"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        properties = self.properties
        self._arguments = compile_command(properties.command)
        self._graphite_host = compile_template(properties.graphite_host)
        self._graphite_port = compile_template(properties.graphite_port)
        self._graphite_prefix = (
            compile_template(properties.graphite_prefix) if properties.graphite_prefix else None
        )
        self.default_prefix = "choria." + self.name.replace(" ", "-")
        self.previous_run_time = 0.0
        self.last_metric: dict[str, Any] | None = None
        node = self.machine.node
        self._textfile = node.shared(
            "metric-textfile", lambda: MetricTextfile(node.textfile_directory)
        )
        self._registry = node.shared("metrics", MetricRegistry)
        # Choria rewrites the textfile when a watcher is created, which ages the entries.
        self._textfile_call(self._textfile.save)

    @property
    def interval(self) -> float:
        """The ``properties.interval``, at least one second."""
        return max(self.properties.interval or 0.0, MIN_INTERVAL)

    def first_delay(self) -> float | None:
        return self.machine.random.random() * self.interval

    async def on_start(self) -> None:
        self._registry.register(self.machine.name, self.name, self)

    def close(self) -> None:
        self._registry.unregister(self.machine.name, self.name, self)
        self._textfile_call(self._textfile.delete, self.machine.name, self.name)

    # -- running -------------------------------------------------------------------------

    async def check(self, reasons: int) -> None:
        if not self.should_watch():
            self.record("skipped")
            return
        began = time.monotonic()
        output, error = await self._execute()
        self.previous_run_time = time.monotonic() - began
        if error is not None:
            # Choria reports nothing at all for a failed command, only its log line.
            self._error(f"Metric watcher {self.properties.command} failed: {error}")
            return
        try:
            labels, metrics = parse_metric_output(output)
        except ValueError as exc:
            self._error(f"Failed to parse metric output: {exc}")
            self.publish()
            await self.fire_fail()
            return
        labels.update(self.properties.labels)
        command_metrics = dict(metrics)
        metrics[RUNTIME_METRIC] = self.previous_run_time
        now = int(self.machine.clock.now())
        metric = {"labels": labels, "metrics": metrics, "time": now}
        if not self.properties.skip_prometheus:
            self._textfile_call(
                self._textfile.update, self.machine.name, self.name, labels, metrics
            )
        try:
            await self._send_to_graphite(command_metrics, now)
        except (OSError, TimeoutError, TemplateError, ValueError) as exc:
            self._error(f"Could not publish metrics to Graphite: {exc or type(exc).__name__}")
            return
        if self.properties.store:
            try:
                self.machine.data.put("metric", {self.name: copy.deepcopy(metric)})
            except OSError as exc:
                self._error(f"Could not store metrics as data: {exc}")
                return
        self.last_metric = metric
        self.status.last_error = None
        self.record("success", self.previous_run_time)
        self.publish()

    def _error(self, message: str) -> None:
        self.status.last_error = message
        self.record("error", self.previous_run_time)
        self.log_error(message)

    async def _execute(self) -> tuple[str, str | None]:
        """Run the command: its output, and why it failed (None if it succeeded)."""
        machine = self.machine
        try:
            argv = render_command(
                self._arguments, machine.template_dot(), machine.template_functions
            )
        except TemplateError as exc:
            return "", f"could not process command template: {exc}"
        if not argv:
            return "", "command is empty after rendering"
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
            return "", str(exc)
        if result.error is not None:
            return result.text, result.error
        if result.exit_code != 0:
            return result.text, f"exit status {result.exit_code}"
        return result.text, None

    async def _send_to_graphite(self, metrics: Mapping[str, float], now: int) -> None:
        if not self.properties.graphite_host or not self.properties.graphite_port:
            return
        if not metrics:
            self.log_debug("Skipping graphite publish without any metrics")
            return
        host = self.machine.render(self._graphite_host)
        port_text = self.machine.render(self._graphite_port)
        if not _valid_port(port_text):
            raise ValueError(f"invalid graphite port {port_text!r}")
        prefix = (
            self.machine.render(self._graphite_prefix)
            if self._graphite_prefix is not None
            else self.default_prefix
        )
        values = {**metrics, "runtime": self.previous_run_time}
        payload = "".join(f"{prefix}.{key} {value:f} {now}\n" for key, value in values.items())

        async def send() -> None:
            _, writer = await asyncio.open_connection(host, int(port_text))
            try:
                writer.write(payload.encode())
                await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        self.log_debug(f"Sending {len(values)} metrics to graphite {host}:{port_text}")
        async with asyncio.timeout(GRAPHITE_TIMEOUT):  # not wait_for: it can eat a cancel on 3.11
            await send()

    def _textfile_call(self, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except OSError as exc:
            self.log_error(f"Could not update prometheus: {exc}")

    # -- published state -----------------------------------------------------------------

    def metric_snapshot(self) -> dict[str, Any]:
        """The last metric (what the HTTP API serves): empty maps and time 0 before the first."""
        if self.last_metric is None:
            return {"labels": {}, "metrics": {}, "time": 0}
        return copy.deepcopy(self.last_metric)

    def state_fields(self) -> dict[str, Any]:
        last = self.last_metric or {"labels": {}, "metrics": {}, "time": 0}
        # Go: labels map[string]string, metrics map[string]float64 (keys sorted on the wire).
        metrics = GoMap({name: float(value) for name, value in last["metrics"].items()})
        metrics[RUNTIME_METRIC] = float(self.previous_run_time)
        return {
            "metrics": {"labels": GoMap(last["labels"]), "metrics": metrics, "time": last["time"]}
        }

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        block = payload.get("metrics")
        values = block.get("metrics") if isinstance(block, Mapping) else None
        parts = []
        if isinstance(values, Mapping):
            for key, value in values.items():
                try:
                    parts.append(f"{key}={float(value):0.3f}")
                except (TypeError, ValueError):
                    parts.append(f"{key}={value}")
        return (
            f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} "
            f"metrics: {', '.join(parts)}"
        )


def _valid_port(text: str) -> bool:
    if not _PORT.match(text):
        return False
    return 0 < int(text) < 65536
