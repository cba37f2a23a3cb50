"""The ``ccm_manifest`` watcher (spec 3.14): apply a Choria Configuration Manager manifest.

Choria links CCM into its binary; machinery runs CCM's own command line, ``ccm apply``, and reads
the session summary it prints (``Manifest Run Summary``: total, stable, changed resources and
errors). The outcome follows Choria exactly:

- every resource stable: ``stable``, then ``success_transition``;
- any error (or ``ccm`` failing, timing out or missing): ``error``, then ``fail_transition``;
- otherwise ``changes``: ``success_transition``, but ``fail_transition`` with ``noop`` (in noop a
  change means something should be done);
- not active in this state: ``skipped``, nothing published.

The manifest is ``manifest`` (inline) or ``manifest_file`` (only its base name is used, read from
the machine directory, as Choria does). The node's facts go to ``ccm`` with ``--facts`` and the
machine's data as an overriding Hiera source with ``--hiera``; ``noop`` adds ``--noop`` and
``healthcheck_only`` adds ``--monitor-only``. ``ccm`` is found like any watcher command: in PATH,
then in the machine directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from machinery.core.governor import GovernorError, governed
from machinery.core.process import CommandRequest
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import Duration
from machinery.watchers.base import PolledWatcher
from machinery.watchers.exec import child_environment

__all__ = ["CcmManifestProperties", "CcmManifestWatcher", "CcmSummary", "parse_summary"]

DEFAULT_TIMEOUT = 60.0
DEFAULT_GOVERNOR_TIMEOUT = 300.0
# Choria's first run comes right after start (or after the splay) when an interval is set.
_FIRST_RUN = 0.05
_SPLAY = 30.0
_NOT_INSTALLED = (
    "the ccm command is not installed (looked in PATH and the machine directory): "
    "ccm_manifest needs Choria's Configuration Manager, https://choria-cm.dev"
)
# Spaces and tabs only, never \s: \s crosses lines, and on output of many blank lines every
# line start then rescanned all the rest (a megabyte of newlines took hours).
_SUMMARY_LINE = re.compile(
    r"^[ \t]*(Total Resources|Stable Resources|Changed Resources|Total Errors):"
    r"[ \t]*([0-9]+)[ \t]*\r?$",
    re.MULTILINE,
)
# A count longer than this is no count ccm printed (and int() refuses 4300 digits).
_MAX_COUNT_DIGITS = 18
# A manifest file larger than this is refused rather than copied for ccm.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


class CcmManifestProperties(WatcherProperties):
    """Properties of the ccm_manifest watcher."""

    manifest_file: str = Field(
        "", description="the manifest, by base name, in the machine directory"
    )
    manifest: dict[str, Any] = Field(
        default_factory=dict, description="an inline manifest (used instead of manifest_file)"
    )
    noop: bool = Field(False, description="do not change anything; changes needed fail")
    healthcheck_only: bool = Field(False, description="run only the resources' health checks")
    governor: str = Field("", description="governor slot to take before applying")
    governor_timeout: Duration = Field(
        0.0, description="how long to wait for a governor slot (0: 5m)"
    )
    splay: bool = Field(False, description="first run after a random 0-30s")
    timeout: Duration = Field(DEFAULT_TIMEOUT, description="stop ccm after this long")


@dataclass(frozen=True)
class CcmSummary:
    """The counts of CCM's session summary that decide the outcome."""

    total: int
    stable: int
    changed: int
    errors: int

    @property
    def outcome(self) -> str:
        """Choria's reading: all stable, else any error, else changes."""
        if self.total == self.stable:
            return "stable"
        if self.errors > 0:
            return "error"
        return "changes"


def parse_summary(output: str) -> CcmSummary | None:
    """Read the ``Manifest Run Summary`` block ``ccm apply`` prints; None when absent."""
    if "Manifest Run Summary" not in output:
        return None
    counts = dict(_SUMMARY_LINE.findall(output.rpartition("Manifest Run Summary")[2]))
    if any(len(count) > _MAX_COUNT_DIGITS for count in counts.values()):
        return None
    try:
        return CcmSummary(
            total=int(counts["Total Resources"]),
            stable=int(counts["Stable Resources"]),
            changed=int(counts.get("Changed Resources", "0")),
            errors=int(counts["Total Errors"]),
        )
    except KeyError:
        return None


def _shown(name: str) -> str:
    """A file name for a message: as it is, or quoted when it holds newlines or other
    unprintable characters that would forge or break log lines."""
    return name if name.isprintable() else repr(name)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class CcmManifestWatcher(PolledWatcher[CcmManifestProperties]):
    """Applies a CCM manifest with ``ccm apply`` and reports stable, changes or error."""

    type_name = "ccm_manifest"
    properties_model = CcmManifestProperties
    min_interval = 0.5

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, CcmManifestProperties)
        if not properties.manifest_file and not properties.manifest:
            yield Problem(("properties",), "manifest_file or manifest is required")
        if properties.manifest and properties.manifest_file:
            yield Problem.warning(
                ("properties", "manifest_file"),
                "manifest_file is ignored: the inline manifest is applied",
            )
        elif properties.manifest_file and os.path.basename(properties.manifest_file) != (
            properties.manifest_file
        ):
            yield Problem.warning(
                ("properties", "manifest_file"),
                f"only the base name is used: {os.path.basename(properties.manifest_file)!r} is "
                "read from the machine directory",
            )
        if properties.noop and properties.healthcheck_only:
            yield Problem.warning(
                ("properties", "noop"),
                "noop has no effect with healthcheck_only: only health checks run",
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.previous_outcome = "unknown"
        self.previous_run_time = 0.0

    def first_delay(self) -> float | None:
        if self.properties.splay:
            return self.machine.random.uniform(1e-9, _SPLAY)
        return _FIRST_RUN

    async def check(self, reasons: int) -> None:
        if not self.should_watch():
            self.previous_outcome = "skipped"
            self.record("skipped")
            return
        started = self.machine.clock.monotonic()
        outcome, error = await self._governed_apply()
        self.previous_run_time = self.machine.clock.monotonic() - started
        self.previous_outcome = outcome
        self.record(outcome, self.previous_run_time)
        self.status.last_error = error
        self.publish()
        if outcome == "error":
            self.log_error(f"Check failed: {error}")
            await self.fire_fail()
        elif outcome == "changes" and self.properties.noop:
            self.log_info("Sending failure transition")
            await self.fire_fail()
        else:
            await self.fire_success()

    async def _governed_apply(self) -> tuple[str, str | None]:
        manifest = self._manifest_path()
        if isinstance(manifest, str):
            return "error", manifest
        name = self.properties.governor
        if not name:
            return await self._apply(manifest)
        timeout = self.properties.governor_timeout or DEFAULT_GOVERNOR_TIMEOUT
        try:
            async with governed(self.machine, self.name, name, timeout):
                return await self._apply(manifest)
        except GovernorError as exc:
            return "error", f"Cannot enter Governor {name}: {exc}"

    def _manifest_path(self) -> Path | str | None:
        """The manifest file to apply (None: inline), or why it cannot be used."""
        if self.properties.manifest:
            return None
        directory = Path(self.machine.directory)
        path = directory / os.path.basename(self.properties.manifest_file)
        try:
            resolved = path.resolve(strict=True)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
            return f"could not read manifest file {_shown(path.name)}: {_reason(exc)}"
        if not resolved.is_relative_to(directory.resolve()):
            return f"manifest file {_shown(path.name)} resolves outside the machine directory"
        if not resolved.is_file():
            return f"manifest file {_shown(path.name)} is not a regular file"
        return resolved

    def _read_manifest(self, resolved: Path) -> bytes:
        """The content of the manifest file, read once through one descriptor that is checked
        to be a regular file inside the machine directory: ccm gets a copy, so a link swapped
        after the checks above cannot point it elsewhere. Raises OSError with the reason."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        descriptor = os.open(resolved, flags)  # resolved has no links left: a new one fails
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"manifest file {_shown(resolved.name)} is not a regular file")
            if info.st_size > MAX_MANIFEST_BYTES:
                raise OSError(
                    f"manifest file {_shown(resolved.name)} is larger than {MAX_MANIFEST_BYTES} bytes"
                )
            opened = Path(f"/proc/self/fd/{descriptor}")
            if opened.exists():  # Linux: where the descriptor really is, after any swap
                where = Path(os.readlink(opened))
                if not where.is_relative_to(Path(self.machine.directory).resolve()):
                    raise OSError(
                        f"manifest file {_shown(resolved.name)} moved outside the machine directory"
                    )
            with os.fdopen(descriptor, "rb", closefd=False) as handle:
                content = handle.read(MAX_MANIFEST_BYTES + 1)
        finally:
            os.close(descriptor)
        if len(content) > MAX_MANIFEST_BYTES:
            raise OSError(
                f"manifest file {_shown(resolved.name)} is larger than {MAX_MANIFEST_BYTES} bytes"
            )
        return content

    def _working_directory(self) -> Path:
        """Where relative sources in the manifest resolve, as Choria derives it."""
        directory = Path(self.machine.directory)
        wanted = self.properties.manifest_file
        if self.properties.manifest or not wanted:
            return directory
        parent = Path(os.path.dirname(wanted))
        candidate = parent if parent.is_absolute() else (directory / parent).resolve()
        return candidate if candidate.is_dir() else directory

    async def _apply(self, manifest: Path | None) -> tuple[str, str | None]:
        machine = self.machine
        scratch = tempfile.mkdtemp(prefix="machinery-ccm-")
        try:
            if manifest is None:
                manifest = Path(scratch, "manifest.json")
                try:
                    # allow_nan=False: NaN is no JSON ccm could read.
                    text = json.dumps(self.properties.manifest, allow_nan=False)
                except (TypeError, ValueError) as exc:  # a YAML date, NaN, ...
                    return "error", f"the inline manifest cannot be written as JSON: {exc}"
                manifest.write_text(text)
            else:
                content = self._read_manifest(manifest)
                manifest = Path(scratch, "manifest" + manifest.suffix)
                manifest.write_bytes(content)
            facts = Path(scratch, "facts.json")
            facts.write_text(machine.facts.as_json())
            data = Path(scratch, "hiera.json")
            data.write_text(json.dumps({"data": json.loads(machine.data.to_json())}))
            argv = ["ccm", "apply", str(manifest), "--report", "--no-read-env"]
            argv += ["--facts", str(facts), "--hiera", str(data)]
            if self.properties.noop:
                argv.append("--noop")
            if self.properties.healthcheck_only:
                argv.append("--monitor-only")
            request = CommandRequest(
                argv=argv,
                cwd=self._working_directory(),
                env=child_environment(machine.name, self.name, machine.directory),
                timeout=self.properties.timeout or DEFAULT_TIMEOUT,
            )
            described = "embedded" if self.properties.manifest else self.properties.manifest_file
            self.log_info(f"Applying {described} manifest")
            result = await machine.runner.run(request)
        except OSError as exc:
            return "error", f"could not prepare the manifest: {exc}"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if result.error is not None:
            if result.error.startswith("command not found"):
                return "error", _NOT_INSTALLED
            return "error", f"could not apply manifest: {result.error}"
        output = result.text
        if result.exit_code != 0:
            tail = output.strip()[-500:]
            return "error", f"could not apply manifest: ccm exited {result.exit_code}: {tail}"
        summary = parse_summary(output)
        if summary is None:
            return "error", "could not get session summary: ccm printed no Manifest Run Summary"
        if summary.outcome == "error":
            return "error", f"Manifest failed to apply with {summary.errors} errors"
        if summary.outcome == "changes":
            self.log_info(f"Manifest applied with {summary.changed} changes")
        else:
            self.log_info("Manifest applied successfully")
        return summary.outcome, None

    def state_fields(self) -> dict[str, Any]:
        return {
            "previous_outcome": self.previous_outcome,
            "previous_run_time": int(self.previous_run_time * 1e9),
        }

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        seconds = float(payload.get("previous_run_time") or 0) / 1e9
        return (
            f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} "
            f"previous: {payload.get('previous_outcome')} ran: {seconds:.3f}s"
        )
