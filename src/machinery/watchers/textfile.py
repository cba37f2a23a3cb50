"""Prometheus node_exporter textfiles written by the nagios and metric watchers (spec 6.1).

When the node has a textfile directory (Choria's ``plugin.choria.prometheus_textfile_directory``)
and it exists, each exporter keeps one ``.prom`` file in it for all watchers of its type on the
node, rewritten atomically (temporary file, mode 0644, rename) on every update. Without a usable
directory the exporters still track their entries but write nothing.

Node services (see :meth:`machinery.core.node.Node.shared`):

- ``"nagios-textfile"``: a :class:`NagiosTextfile`, file ``choria_machine_nagios_watcher_status.prom``;
- ``"metric-textfile"``: a :class:`MetricTextfile`, file ``choria_machine_metrics_watcher_status.prom``.

Choria writes map entries in Go's random order; these files are sorted (by name, then by
machine and watcher, labels by name) so they are stable and diffable.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from machinery.core.atomic import atomic_write
from machinery.lang.gofmt import go_quote

__all__ = [
    "METRIC_FILE_NAME",
    "NAGIOS_FILE_NAME",
    "NAGIOS_STATUS_NAMES",
    "MetricTextfile",
    "NagiosTextfile",
    "prom_label_name",
    "prom_label_value",
    "prom_metric_key",
    "prom_name",
]

log = logging.getLogger("machinery.textfile")

NAGIOS_FILE_NAME = "choria_machine_nagios_watcher_status.prom"
METRIC_FILE_NAME = "choria_machine_metrics_watcher_status.prom"
NAGIOS_STATUS_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
"""Nagios status names by exit code; only these appear in the status gauge."""

_MAX_UNSEEN_WRITES = 5
_INVALID_NAME = re.compile(r"[^a-z0-9_:]")
_INVALID_KEY = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-z0-9_]")


def _write(directory: Path | None, name: str, text: str) -> bool:
    """Write ``text`` to ``directory/name`` if the directory is usable; True if written."""
    if directory is None:
        return False
    if not os.path.isdir(directory):
        log.debug("not updating prometheus: %s is not a directory", directory)
        return False
    atomic_write(directory / name, text.encode(), mode=0o644, durable=False)
    return True


def _format_value(value: float) -> str:
    """Go's ``%f``, including its spelling of the special values."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:f}"


# -- nagios --------------------------------------------------------------------------------------


class NagiosTextfile:
    """The status of every nagios watcher on the node, keyed by **machine** name (as Choria:
    two nagios watchers in one machine share an entry)."""

    def __init__(self, directory: Path | None, start_time: float) -> None:
        self.directory = directory
        self.start_time = int(start_time)
        self._status: dict[str, int] = {}
        self._times: dict[str, int] = {}
        self._checks: dict[str, int] = {}

    def update(self, machine: str, status: int, when: float) -> bool:
        """Record a status (0-3) of ``machine`` at wall time ``when`` and rewrite the file.

        Returns True if the file was written; raises OSError if writing failed."""
        self._status[machine] = status
        self._times[machine] = int(when)
        self._checks[machine] = self._checks.get(machine, 0) + 1
        return self.save()

    def delete(self, machine: str) -> bool:
        """Forget ``machine`` and rewrite the file (True if written; OSError if that failed)."""
        self._status.pop(machine, None)
        self._times.pop(machine, None)
        self._checks.pop(machine, None)
        return self.save()

    def checks(self, machine: str) -> int:
        """How many updates ``machine`` had (the checks_count counter)."""
        return self._checks.get(machine, 0)

    def render(self) -> str:
        """The file's content."""
        lines = [
            "# HELP choria_machine_nagios_start_time Time the Choria Machine subsystem started "
            "in unix seconds",
            "# TYPE choria_machine_nagios_start_time gauge",
            f"choria_machine_nagios_start_time {self.start_time}",
            "# HELP choria_machine_nagios_watcher_status Choria Nagios Check Status",
            "# TYPE choria_machine_nagios_watcher_status gauge",
        ]
        for name in sorted(self._status):
            code = self._status[name]
            if 0 <= code < len(NAGIOS_STATUS_NAMES):
                lines.append(
                    f"choria_machine_nagios_watcher_status{{name={go_quote(name)},"
                    f"status={go_quote(NAGIOS_STATUS_NAMES[code])}}} {code}"
                )
        lines += [
            "# HELP choria_machine_nagios_watcher_last_run_seconds Choria Nagios Check Time",
            "# TYPE choria_machine_nagios_watcher_last_run_seconds gauge",
        ]
        lines.extend(
            f"choria_machine_nagios_watcher_last_run_seconds{{name={go_quote(name)}}} "
            f"{self._times[name]}"
            for name in sorted(self._times)
        )
        lines += [
            "# HELP choria_machine_nagios_watcher_checks_count Choria Nagios Check Count",
            "# TYPE choria_machine_nagios_watcher_checks_count counter",
        ]
        lines.extend(
            f"choria_machine_nagios_watcher_checks_count{{name={go_quote(name)}}} "
            f"{self._checks[name]}"
            for name in sorted(self._checks)
        )
        return "\n".join(lines) + "\n"

    def save(self) -> bool:
        """Rewrite the file if the directory is usable (True if written)."""
        return _write(self.directory, NAGIOS_FILE_NAME, self.render())


# -- metric --------------------------------------------------------------------------------------


def prom_name(text: str) -> str:
    """Choria's ``promName``: lower case, with spaces, commas and double quotes as ``_``."""
    return text.lower().replace(" ", "_").replace(",", "_").replace('"', "_")


def _metric_part(text: str) -> str:
    # Beyond Choria: any other character a metric name cannot hold also becomes "_", so one bad
    # name cannot make node_exporter reject the whole file.
    return _INVALID_NAME.sub("_", prom_name(text))


def prom_metric_key(key: str) -> str:
    """A metric key as it appears in the metric name: kept as is (Choria does not sanitise it),
    except that characters a Prometheus name cannot hold (``/``, ``-``, ``.``) become ``_``."""
    return _INVALID_KEY.sub("_", key)


def prom_label_name(name: str) -> str:
    """A label name: :func:`prom_name`, then anything else invalid as ``_``."""
    cleaned = _INVALID_LABEL.sub("_", prom_name(name))
    if cleaned[:1].isdigit():
        cleaned = "_" + cleaned
    return cleaned


def prom_label_value(value: str) -> str:
    """A label value: :func:`prom_name` (so values are lower-cased, as in Choria), with
    backslashes and line breaks also as ``_`` so the value needs no escaping."""
    return prom_name(value).replace("\\", "_").replace("\n", "_").replace("\r", "_")


@dataclass
class _MetricEntry:
    labels: dict[str, str]
    metrics: dict[str, float]
    seen: int = 0


class MetricTextfile:
    """The last metric of every metric watcher on the node.

    An entry is written in the rewrite that follows its update and in the next four; from the
    fifth rewrite without an update on it is left out (Choria's guard against watchers that
    went away without being deleted).
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._entries: dict[tuple[str, str], _MetricEntry] = {}

    def update(
        self,
        machine: str,
        watcher: str,
        labels: Mapping[str, str],
        metrics: Mapping[str, float],
    ) -> bool:
        """Replace the metric of ``machine``'s ``watcher`` and rewrite the file (True if
        written; raises OSError if writing failed)."""
        self._entries[(machine, watcher)] = _MetricEntry(dict(labels), dict(metrics))
        return self.save()

    def delete(self, machine: str, watcher: str) -> bool:
        """Forget a watcher and rewrite the file."""
        self._entries.pop((machine, watcher), None)
        return self.save()

    def render(self) -> str:
        """The file's content for the entries still shown."""
        groups: dict[str, list[tuple[tuple[str, str], str, float]]] = {}
        for key, entry in self._entries.items():
            if entry.seen > _MAX_UNSEEN_WRITES:
                continue
            labels: dict[str, str] = {}
            for label_name, label_value in entry.labels.items():
                label = prom_label_name(label_name)
                if label:
                    labels[label] = prom_label_value(label_value)
            rendered = ",".join(f'{k}="{labels[k]}"' for k in sorted(labels))
            prefix = f"choria_machine_metric_watcher_{_metric_part(key[1])}_"
            for metric, value in entry.metrics.items():
                groups.setdefault(prefix + prom_metric_key(metric), []).append(
                    (key, rendered, value)
                )
        lines: list[str] = []
        for name in sorted(groups):
            lines.append(f"# HELP {name} Choria Metric")
            lines.append(f"# TYPE {name} gauge")
            lines.extend(
                f"{name}{{{labels}}} {_format_value(value)}"
                for _, labels, value in sorted(groups[name], key=lambda item: item[0])
            )
        return "".join(line + "\n" for line in lines)

    def save(self) -> bool:
        """Rewrite the file if the directory is usable (True if written); every rewrite ages
        the entries."""
        if self.directory is None or not os.path.isdir(self.directory):
            return False
        for entry in self._entries.values():
            entry.seen += 1
        return _write(self.directory, METRIC_FILE_NAME, self.render())
