"""What the ``machines`` and ``plugins`` watchers share (spec 3.10 and 3.11).

Both read a signed specification from machine data, decide which of its entries apply to this
node, and keep one *manager machine* per applicable entry in the machine store: a small
generated ``machine.yaml`` whose ``archive`` watcher downloads, verifies and installs the
entry's archive. With ``purge_unknown`` they also remove manager machines (and what those
installed) that the specification no longer lists for this node.

A check either applies the whole specification or changes nothing on disk: the data item is
decoded, its signature verified, every entry checked, every matched entry's manager machine
rendered *and validated* before the first file is touched. A specification that is not
acceptable (bad base64, bad JSON, a missing or wrong signature, an invalid entry) is also removed
from machine data, as Choria does, so it is not retried until a new one arrives.

Replays. When a public key is in force, the watcher remembers the SHA-256 of every specification
it applied (of the signed JSON array, see :func:`specification_digest`), when, and when a newer
one superseded it, in ``.<watcher name>.applied.json`` in its machine's directory (the newest
:data:`HISTORY_LIMIT`). A specification applied before and superseded since is refused like a
badly signed one, so an old signed document put back into the data item cannot roll the node
back; a deliberate rollback publishes the old entries signed anew with any change to the JSON.
Unsigned specifications (no key) are accepted again as in Choria: anyone can write those anyway.

Node service read: ``signing-key`` (optional). When the agent provides it
(``node.provide("signing-key", "<hex public key>")``, from its ``signing_key`` setting), that
public key replaces the watchers' ``public_key`` property, like Choria's
``plugin.choria.machine.signing_key``. Without any key, specifications are accepted unsigned
(Choria's behaviour); a warning says so when the watcher starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Final, NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from machinery.core.atomic import atomic_write
from machinery.core.datastore import DataStoreError
from machinery.core.signing import (
    SigningError,
    SpecificationError,
    SpecKind,
    decode_specification,
    parse_public_key,
)
from machinery.core.wakeup import TICK
from machinery.lang.duration import format_go_duration
from machinery.lang.expr import Expression, ExpressionError, compile_expression
from machinery.lang.gjson import GJSONPathError
from machinery.lang.gjson import lookup as gjson_lookup
from machinery.lang.regex import RegexError, compile_regex
from machinery.lang.template import STANDARD_FUNCTIONS, Template, parse_template
from machinery.spec.kinds import Problem
from machinery.spec.models import WatcherProperties
from machinery.spec.validate import MANIFEST_NAME, check_manifest_text
from machinery.watchers.base import PolledWatcher

__all__ = [
    "DEFAULT_MANAGE_INTERVAL",
    "HISTORY_LIMIT",
    "MATCHER_NAMES",
    "MIN_MANAGE_INTERVAL",
    "PURGE_GRACE",
    "SIGNING_KEY_SERVICE",
    "ManagedEntry",
    "ManagerProperties",
    "ManagerWatcher",
    "MatcherError",
    "check_manage_interval",
    "check_manager_definition",
    "compile_matcher",
    "describe_manager_payload",
    "matcher_environment",
    "node_matches",
    "parse_entries",
    "render_manager",
    "specification_digest",
]

SIGNING_KEY_SERVICE: Final = "signing-key"
DEFAULT_MANAGE_INTERVAL: Final = 120.0
# The manager machines run archive watchers, whose interval must be at least this.
MIN_MANAGE_INTERVAL: Final = 10.0
# How long a purge waits between removing a manager machine and what it installed, so the
# store has stopped the manager (and its archive watcher cannot reinstall) before the removal.
PURGE_GRACE: Final = 2.0
MATCHER_NAMES: Final = frozenset(
    {"identity", "has_file", "has_directory", "has_command", "get_fact"}
)
MAX_ENTRIES: Final = 10_000
# How many applied specifications a watcher remembers to refuse their replay.
HISTORY_LIMIT: Final = 1000
# 1000 records take about 130 KB; a history file much larger than that is not ours.
_HISTORY_MAX_BYTES: Final = 4 << 20
# The latest wall time a history record may carry (datetime's year 9999).
_LATEST_TIME: Final = 253_402_300_799.0
_WATCHER_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,99}$")

# Entry names become directory and machine names: a single, tame path component.
_ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# The archive watcher's staging directory inside its target; never an entry or a purge victim.
_STAGING = "tmp"
# A wake-up reason of our own: the data item holding the specification changed.
_DATA_CHANGED: Final = 1 << 8

UPDATED = "updated"
UNCHANGED = "unchanged"
ERROR = "error"
SKIPPED = "skipped"


# -- the specification's entries ------------------------------------------------------------


class ManagedEntry(BaseModel):
    """One entry of a specification: an archive to deploy on the nodes it matches."""

    # Unknown fields are ignored as in Choria (published examples carry "verify").
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    name: str = Field("", description="the machine or plugin name (the archive's directory)")
    source: str = Field("", description="URL of the .tar.gz")
    username: str = Field("", description="HTTP basic authentication user")
    password: str = Field("", description="HTTP basic authentication password")
    checksum: str = Field("", description="SHA-256 of the archive")
    verify_checksum: str = Field("", description="SHA-256 of the SHA256SUMS file in the archive")
    match: str = Field("", description="matcher expression; empty matches every node")
    governor: str = Field("", description="governor slot the download takes")


def _printable(value: str) -> bool:
    # Values end up in a YAML manifest: no control or invisible formatting characters.
    return value.isprintable()


def _check_entry(index: int, entry: ManagedEntry) -> str | None:
    label = f"entry {index + 1}" + (f" ({entry.name})" if entry.name else "")
    if not entry.name:
        return f"{label}: name is required"
    if not _ENTRY_NAME.match(entry.name) or entry.name == _STAGING:
        return (
            f"{label}: invalid name: use letters, digits, '.', '_' and '-', starting with a "
            f"letter or digit (and not {_STAGING!r})"
        )
    for key in ("source", "checksum", "verify_checksum"):
        if not getattr(entry, key).strip():
            return f"{label}: {key} is required"
    for key in ("source", "username", "password", "checksum", "verify_checksum", "governor"):
        if not _printable(getattr(entry, key)):
            return f"{label}: {key} contains control characters"
    if "{{" not in entry.source and not entry.source.lower().startswith(("http://", "https://")):
        return f"{label}: source must be an http:// or https:// URL"
    for key in ("checksum", "verify_checksum"):
        value = getattr(entry, key)
        if "{{" not in value and not _HEX64.match(value.strip()):
            return f"{label}: {key} must be a SHA-256 digest (64 hexadecimal characters)"
    if entry.username and not entry.password:
        return f"{label}: password is required when username is given"
    if entry.match.strip():
        try:
            compile_matcher(entry.match)
        except ExpressionError as exc:
            return f"{label}: invalid match expression: {exc.message}"
    return None


def parse_entries(payload: bytes, kind: SpecKind) -> list[ManagedEntry]:
    """The entries of a specification's JSON array, all checked.

    Raises :class:`SpecificationError` (reason ``entries``) for anything that makes the array
    unusable: not a JSON array, an entry of the wrong shape, a missing or invalid field, a
    matcher that does not parse, a name listed twice.
    """
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise SpecificationError(f"invalid {kind.value} specification: {exc}", "json") from None
    if not isinstance(data, list):
        raise SpecificationError(
            f"invalid {kind.value} specification: expected a JSON array", "json"
        )
    if len(data) > MAX_ENTRIES:
        raise SpecificationError(
            f"invalid {kind.value} specification: more than {MAX_ENTRIES} entries", "entries"
        )
    entries: list[ManagedEntry] = []
    seen: set[str] = set()
    for index, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise SpecificationError(f"entry {index + 1}: expected a JSON object", "entries")
        try:
            entry = ManagedEntry.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SpecificationError(
                f"entry {index + 1}: {where}: {first['msg']}", "entries"
            ) from None
        problem = _check_entry(index, entry)
        if problem is not None:
            raise SpecificationError(problem, "entries")
        if entry.name in seen:
            raise SpecificationError(
                f"entry {index + 1}: the name {entry.name} is listed twice", "entries"
            )
        seen.add(entry.name)
        entries.append(entry)
    return entries


def specification_digest(payload: bytes) -> str:
    """The hex SHA-256 by which a specification is remembered: that of its JSON array.

    ``payload`` is what :func:`decode_specification` returns. The digest covers what the
    publisher signed (for plugins the base64 text of exactly these bytes), and nothing an
    intermediary can vary without the key: the document's other fields, the case of the
    signature's hex or line breaks in the base64 do not change it. It is ``sha256sum`` of the
    JSON file the publisher signed.
    """
    return hashlib.sha256(payload).hexdigest()


# -- matchers -------------------------------------------------------------------------------


class MatcherError(ValueError):
    """A matcher that does not parse or could not be evaluated on this node."""


@functools.lru_cache(maxsize=1024)
def compile_matcher(source: str) -> Expression:
    """Parse a matcher (expr-lang, the functions of :data:`MATCHER_NAMES`); cached."""
    return compile_expression(source, MATCHER_NAMES, expect_bool=True)


def matcher_environment(identity: str, facts: Mapping[str, Any]) -> dict[str, object]:
    """The functions a matcher can call, for a node with ``identity`` and ``facts``."""

    def identity_matches(pattern: object) -> bool:
        if not isinstance(pattern, str):
            raise TypeError("identity() needs a regular expression string")
        try:
            return compile_regex(pattern).search(identity) is not None
        except RegexError as exc:
            raise ValueError(f"identity(): {exc}") from None

    def get_fact(query: object) -> object:
        if not isinstance(query, str):
            raise TypeError("get_fact() needs a GJSON query string")
        try:
            found, value = gjson_lookup(facts, query)
        except GJSONPathError as exc:
            raise ValueError(f"invalid fact query {query!r}: {exc}") from None
        return value if found else None

    def path_argument(function: str, value: object) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{function}() needs a path string")
        return value

    return {
        "identity": identity_matches,
        "get_fact": get_fact,
        "has_file": lambda path: os.path.isfile(path_argument("has_file", path)),
        "has_directory": lambda path: os.path.isdir(path_argument("has_directory", path)),
        "has_command": lambda command: (
            shutil.which(path_argument("has_command", command)) is not None
        ),
    }


def node_matches(source: str, identity: str, facts: Mapping[str, Any]) -> bool:
    """Whether the matcher ``source`` selects the node; an empty matcher selects every node.

    Raises :class:`MatcherError` when it does not parse or fails to evaluate.
    """
    if not source.strip():
        return True
    try:
        return compile_matcher(source).evaluate_bool(matcher_environment(identity, facts))
    except ExpressionError as exc:
        raise MatcherError(f"{exc.message} (at character {exc.offset + 1})") from None


# -- the manager machine ---------------------------------------------------------------------


@functools.cache
def _manager_template(kind: SpecKind) -> Template:
    text = (
        resources.files("machinery.watchers")
        .joinpath("templates", f"{kind.value}_manager.yaml.tmpl")
        .read_text(encoding="utf-8")
    )
    return parse_template(text)


def _yaml_string(value: str) -> str:
    # Every value is printed as a double-quoted scalar (JSON's string syntax is YAML's), so no
    # value can break out of its field, whatever it contains.
    return json.dumps(value, ensure_ascii=False)


def render_manager(
    kind: SpecKind,
    entry: ManagedEntry,
    *,
    machine_name: str,
    manager: str,
    interval: float,
    target: str,
) -> str:
    """The ``machine.yaml`` of the manager machine ``machine_name`` for ``entry``."""
    dot = {
        "Manager": manager,
        "MachineName": machine_name,
        "Name": entry.name,
        "Source": entry.source,
        "Username": entry.username,
        "Password": entry.password,
        "ArchiveChecksum": entry.checksum,
        "ContentChecksumsChecksum": entry.verify_checksum,
        "Governor": entry.governor,
        "Interval": format_go_duration(interval),
        "Target": target,
    }
    return _manager_template(kind).render(dot, STANDARD_FUNCTIONS, escape=_yaml_string)


# -- properties ------------------------------------------------------------------------------


class ManagerProperties(WatcherProperties):
    """Properties both manager watchers have."""

    data_item: str = Field("", description="the machine data key holding the specification")
    purge_unknown: bool = Field(
        False, description="remove manager machines (and their installs) no longer specified"
    )
    public_key: str = Field(
        "",
        description="ed25519 public key (hex) the specification must be signed with; the "
        "agent's signing_key setting overrides it",
    )


def check_manager_definition(properties: ManagerProperties) -> Iterable[Problem]:
    """Load-time checks both manager watchers make."""
    if not properties.data_item.strip():
        yield Problem(("properties", "data_item"), "data_item is required")
    key = properties.public_key.strip()
    if key:
        try:
            parse_public_key(key)
        except SigningError as exc:
            yield Problem(("properties", "public_key"), f"invalid public_key: {exc}")
    else:
        yield Problem.warning(
            ("properties", "public_key"),
            "public_key is not set: unless the agent's signing_key setting provides one, "
            "specifications are accepted without a signature",
        )


def check_manage_interval(key: str, value: float | None) -> Iterable[Problem]:
    if value is not None and value != 0 and value < MIN_MANAGE_INTERVAL:
        yield Problem(
            ("properties", key),
            f"{key} {format_go_duration(value)} is too small: the manager machines' archive "
            f"watchers need at least {format_go_duration(MIN_MANAGE_INTERVAL)}",
        )


# -- the watcher -----------------------------------------------------------------------------


class _Failure(Exception):
    """The check failed; nothing was changed unless said otherwise in the message."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one check decided, before touching the disk."""

    manifests: dict[str, bytes]  # manager machine name -> its manifest
    deploy_messages: dict[str, str]
    digest: str | None = None  # the specification's, when replays are refused


@dataclass(slots=True)
class _Applied:
    """When a specification was applied and, unless it is the current one, superseded."""

    applied_at: float
    superseded_at: float | None = None


@dataclass(slots=True)
class _History:
    """The specifications a watcher applied, by digest, oldest first."""

    records: dict[str, _Applied] = field(default_factory=dict)
    # The in-memory history differs from the file (a write failed): written at the next check.
    dirty: bool = False

    def current(self) -> str | None:
        """The digest of the specification in force, if one was applied."""
        if not self.records:
            return None
        digest = next(reversed(self.records))
        return digest if self.records[digest].superseded_at is None else None

    def apply(self, digest: str, now: float) -> None:
        """Make ``digest`` the current specification (nothing changes when it already is)."""
        if digest == self.current():
            return
        for record in self.records.values():
            if record.superseded_at is None:
                record.superseded_at = now
        self.records.pop(digest, None)
        self.records[digest] = _Applied(now)
        while len(self.records) > HISTORY_LIMIT:
            del self.records[next(iter(self.records))]
        self.dirty = True

    def to_json(self, watcher: str, kind: SpecKind) -> bytes:
        document = {
            "watcher": watcher,
            "kind": kind.value,
            "applied": [
                {"sha256": d, "applied_at": r.applied_at, "superseded_at": r.superseded_at}
                for d, r in self.records.items()
            ],
        }
        return (json.dumps(document, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> _History:
        """Parse a history file; raises ValueError saying what is wrong with it."""
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        applied = document.get("applied") if isinstance(document, dict) else None
        if not isinstance(applied, list):
            raise ValueError('expected a JSON object with an "applied" list')
        history = cls()
        for index, item in enumerate(applied):
            if not isinstance(item, dict):
                raise ValueError(f"record {index + 1}: expected a JSON object")
            digest = item.get("sha256")
            if not isinstance(digest, str) or not _HEX64.match(digest):
                raise ValueError(f"record {index + 1}: sha256 is not a SHA-256 digest")
            applied_at = _time_field(index, item, "applied_at")
            superseded_at = (
                None
                if item.get("superseded_at") is None
                else _time_field(index, item, "superseded_at")
            )
            history.records.pop(digest.lower(), None)
            history.records[digest.lower()] = _Applied(applied_at, superseded_at)
        while len(history.records) > HISTORY_LIMIT:
            del history.records[next(iter(history.records))]
        return history


def _time_field(index: int, item: dict[str, Any], key: str) -> float:
    value = item.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= _LATEST_TIME
    ):
        raise ValueError(f"record {index + 1}: {key} is not a time in Unix seconds")
    return float(value)


def _iso_time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


MP = TypeVar("MP", bound=ManagerProperties)


class ManagerWatcher(PolledWatcher[MP]):
    """Base of the machines and plugins watchers; subclasses say where things go."""

    kind: ClassVar[SpecKind]
    default_interval = None
    min_interval = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.previous_outcome = "unknown"
        self.previous_run_time = 0.0
        self.previous_names: list[str] = []
        self._processed: object = None
        self._history: _History | None = None  # read on first use
        self.store = Path(os.path.abspath(self.machine.directory)).parent
        self.machine.data.on_change(self._data_changed)

    # -- what subclasses provide -------------------------------------------------------------

    @property
    @abstractmethod
    def prefix(self) -> str:
        """The manager machines' name prefix (without the underscore)."""

    @property
    @abstractmethod
    def manage_interval(self) -> float:
        """The interval of the manager machines' archive watchers, in seconds."""

    @property
    @abstractmethod
    def target(self) -> Path:
        """Where the manager machines install their archives."""

    @abstractmethod
    def deploy_message(self, entry: ManagedEntry) -> str:
        """The log line for writing a manager machine."""

    # -- running -----------------------------------------------------------------------------

    def manager_name(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def _data_changed(self) -> None:
        # A new specification is applied at once instead of at the next interval. Our own
        # removal of a rejected specification does not count as new.
        value = self.machine.data.get(self.properties.data_item)
        if value is not None and value != self._processed:
            self._wakeup.set(_DATA_CHANGED)

    async def on_start(self) -> None:
        if self._public_key_text() == "":
            self.log_warning(
                "No public key is configured: specifications are accepted without a signature"
            )
        # Like Choria, check once right away, before the first interval tick.
        self._wakeup.set(TICK)

    async def check(self, reasons: int) -> None:
        if not self.should_watch():
            self.previous_outcome = SKIPPED
            self.record(SKIPPED)
            return
        started = time.monotonic()
        try:
            outcome = await self._manage()
        except (_Failure, OSError) as exc:
            self.previous_run_time = time.monotonic() - started
            self.previous_outcome = ERROR
            self.status.last_error = str(exc)
            self.record(ERROR, self.previous_run_time)
            self.log_error(f"Managing {self.kind.value} failed: {exc}")
            self.publish()
            await self.fire_fail()
            return
        self.previous_run_time = time.monotonic() - started
        self.previous_outcome = outcome
        self.status.last_error = None
        self.record(outcome, self.previous_run_time)
        if outcome == UPDATED:
            self.publish()
            await self.fire_success()

    def _public_key_text(self) -> str:
        service = self.machine.node.service(SIGNING_KEY_SERVICE)
        if service:
            return str(service).strip()
        return self.properties.public_key.strip()

    def _public_key(self) -> bytes | None:
        text = self._public_key_text()
        if not text:
            return None
        try:
            return parse_public_key(text)
        except SigningError as exc:
            raise _Failure(f"invalid public key: {exc}") from None

    async def _manage(self) -> str:
        plan = self._plan()
        changed = False
        problems: list[str] = []
        if self.properties.purge_unknown:
            purged, purge_problems = await self._purge(set(plan.manifests))
            changed |= purged
            problems.extend(purge_problems)
        for machine_name, text in plan.manifests.items():
            try:
                written = await asyncio.to_thread(
                    self._write_manager, self.store / machine_name, text
                )
            except (_Failure, OSError) as exc:
                problems.append(f"could not write {machine_name}: {exc}")
                continue
            if written:
                self.log_warning(plan.deploy_messages[machine_name])
                changed = True
        if problems:
            raise _Failure("; ".join(problems))
        if plan.digest is not None:
            await self._remember(plan.digest)
        return UPDATED if changed else UNCHANGED

    # -- deciding ----------------------------------------------------------------------------

    def _plan(self) -> _Plan:
        item = self.properties.data_item
        value = self.machine.data.get(item)
        if value is None:
            raise _Failure(f"data item {item} not present")
        self._processed = value
        public = self._public_key()
        digest: str | None = None
        try:
            payload = decode_specification(self.kind, value, public)
            if public is not None:
                # Without a key anyone can write a specification: a replay is nothing special.
                digest = specification_digest(payload)
                self._refuse_replay(digest)
            entries = parse_entries(payload, self.kind)
            self._check_placement(entries)
        except SpecificationError as exc:
            self._reject(exc)
        self.previous_names = [entry.name for entry in entries]
        manifests: dict[str, bytes] = {}
        messages: dict[str, str] = {}
        facts = self.machine.facts.get()
        identity = self.machine.identity
        for entry in entries:
            try:
                if not node_matches(entry.match, identity, facts):
                    continue
            except MatcherError as exc:
                # The entry is left out on this node (and purged), as Choria does.
                self.log_warning(f"Could not match {entry.name} to this node: {exc}")
                continue
            machine_name = self.manager_name(entry.name)
            manifests[machine_name] = self._render(entry, machine_name)
            messages[machine_name] = self.deploy_message(entry)
        return _Plan(manifests, messages, digest)

    def _reject(self, exc: SpecificationError) -> NoReturn:
        item = self.properties.data_item
        if exc.reason in ("signature", "replay"):
            self.log_error(f"Specification in data_item {item} rejected, removing data: {exc}")
        else:
            self.log_error(f"Invalid {self.kind.value} specification, removing data: {exc}")
        try:
            self.machine.data.delete(item)
        except DataStoreError as failure:
            self.log_error(str(failure))
        raise _Failure(f"invalid data_item: {exc}")

    # -- replays -----------------------------------------------------------------------------

    @property
    def history_path(self) -> Path:
        """The file remembering the specifications this watcher applied."""
        name = self.name
        if not _WATCHER_FILE_NAME.match(name):
            # Watcher names are free text; a file name must be one tame path component.
            name = "watcher-" + hashlib.sha256(name.encode()).hexdigest()[:32]
        return self.machine.directory / f".{name}.applied.json"

    def _applied_history(self) -> _History:
        if self._history is None:
            self._history = self._read_history()
        return self._history

    def _read_history(self) -> _History:
        path = self.history_path
        # An agent killed while writing leaves atomic_write's temporary file behind.
        prefix = f".{path.name}."
        with contextlib.suppress(OSError):
            for name in os.listdir(path.parent):
                if name.startswith(prefix) and name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(path.parent / name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return _History()
        except OSError as exc:
            return self._forget(f"cannot read it: {exc.strerror}")
        try:
            with os.fdopen(fd, "rb") as handle:
                raw = handle.read(_HISTORY_MAX_BYTES + 1)
        except OSError as exc:
            return self._forget(f"cannot read it: {exc.strerror}")
        if len(raw) > _HISTORY_MAX_BYTES:
            return self._forget(f"larger than {_HISTORY_MAX_BYTES // (1 << 20)} MiB")
        try:
            return _History.from_json(raw)
        except ValueError as exc:
            return self._forget(str(exc))

    def _forget(self, reason: str) -> _History:
        self.log_warning(
            f"Ignoring the history of applied specifications in {self.history_path}: {reason}; "
            "replays of earlier specifications cannot be detected"
        )
        return _History()

    def _refuse_replay(self, digest: str) -> None:
        record = self._applied_history().records.get(digest)
        if record is None or record.superseded_at is None:
            return
        raise SpecificationError(
            f"specification {digest[:12]} was applied on {_iso_time(record.applied_at)} and "
            f"superseded on {_iso_time(record.superseded_at)}: refusing a replay (publish a "
            "newly signed document to roll back)",
            "replay",
        )

    async def _remember(self, digest: str) -> None:
        """Record ``digest`` as the specification in force, on disk too."""
        history = self._applied_history()
        history.apply(digest, self.machine.clock.now())
        if not history.dirty:
            return
        text = history.to_json(self.name, self.kind)
        path = self.history_path
        try:
            await asyncio.to_thread(atomic_write, path, text, mode=0o600)
        except OSError as exc:
            # The specification is applied: say so, refuse replays from memory, and write the
            # file again at the next check.
            self.log_error(
                f"Could not record the applied specification in {path}: {exc}; replays of "
                "superseded specifications will be accepted after a restart until it is written"
            )
            return
        history.dirty = False

    def _check_placement(self, entries: list[ManagedEntry]) -> None:
        """Refuse entries whose directories would collide with this machine or the managers."""
        own = self.machine.directory.name
        target_is_store = os.path.normpath(self.target) == os.path.normpath(self.store)
        for entry in entries:
            if entry.name.startswith(f"{self.prefix}_"):
                raise SpecificationError(
                    f"{entry.name}: names may not start with the manager prefix {self.prefix}_",
                    "entries",
                )
            if self.manager_name(entry.name) == own or (target_is_store and entry.name == own):
                raise SpecificationError(
                    f"{entry.name}: would replace this manager's own machine {own}", "entries"
                )

    def _render(self, entry: ManagedEntry, machine_name: str) -> bytes:
        # The registry imports every watcher module, this one included: import it late.
        from machinery.watchers.registry import default_registry

        text = render_manager(
            self.kind,
            entry,
            machine_name=machine_name,
            manager=self.machine.name,
            interval=self.manage_interval,
            target=str(self.target),
        )
        directory = self.store / machine_name
        manifest, diagnostics = check_manifest_text(
            text,
            str(directory / MANIFEST_NAME),
            default_registry().kinds,
            directory=directory,
        )
        if manifest is None:
            errors = "; ".join(d.message for d in diagnostics if d.is_error)
            raise _Failure(f"the manager machine for {entry.name} would not be valid: {errors}")
        return text.encode("utf-8")

    # -- changing the disk -------------------------------------------------------------------

    def _write_manager(self, directory: Path, text: bytes) -> bool:
        """Write a manager machine's manifest unless it is already there; True if written."""
        manifest = directory / MANIFEST_NAME
        if directory.is_symlink():
            raise _Failure(f"{directory} is a symbolic link")
        if directory.exists():
            if not directory.is_dir():
                raise _Failure(f"{directory} is not a directory")
            if manifest.is_symlink():
                raise _Failure(f"{manifest} is a symbolic link")
            with contextlib.suppress(FileNotFoundError):
                current = manifest.read_bytes()
                if hashlib.sha256(current).digest() == hashlib.sha256(text).digest():
                    self.log_debug(f"Machine in {manifest} has the correct content, continuing")
                    return False
                self.log_warning(f"Machine in {manifest} has incorrect content, updating")
            os.chmod(directory, 0o700)
            atomic_write(manifest, text, mode=0o600)
            return True
        # A new manager machine appears whole: built under a name the store ignores, then
        # renamed into place.
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=self.store))
        try:
            os.chmod(staging, 0o700)
            atomic_write(staging / MANIFEST_NAME, text, mode=0o600)
            os.rename(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return True

    def _current_managers(self) -> list[str]:
        """Names ``x`` of the ``<prefix>_x`` manager machine directories in the store."""
        start = f"{self.prefix}_"
        own = self.machine.directory.name
        found: list[str] = []
        with os.scandir(self.store) as entries:
            for entry in entries:
                if not entry.name.startswith(start) or entry.name == own:
                    continue
                name = entry.name[len(start) :]
                if not _ENTRY_NAME.match(name):
                    continue
                if entry.is_symlink():
                    self.log_warning(f"Not purging {entry.path}: it is a symbolic link")
                    continue
                if entry.is_dir(follow_symlinks=False):
                    found.append(name)
        return sorted(found)

    async def _purge(self, keep: set[str]) -> tuple[bool, list[str]]:
        """Remove manager machines not in ``keep`` and, after a grace period, their installs."""
        current = await asyncio.to_thread(self._current_managers)
        self.log_debug(f"Purging unknown {self.kind.value} from current list {current}")
        removed: list[str] = []
        problems: list[str] = []
        for name in current:
            if self.manager_name(name) in keep:
                continue
            self.log_warning(
                f"Removing existing managed machine {name} that is not in new desired set"
            )
            directory = self.store / self.manager_name(name)
            try:
                await asyncio.to_thread(shutil.rmtree, directory)
            except OSError as exc:
                problems.append(f"could not remove {directory}: {exc}")
                continue
            removed.append(name)
        if not removed:
            return False, problems
        # One grace period for the whole batch (Choria sleeps after each removal).
        await self.machine.clock.sleep(PURGE_GRACE)
        for name in removed:
            problem = await asyncio.to_thread(self._remove_install, name)
            if problem is not None:
                problems.append(problem)
        return True, problems

    def _remove_install(self, name: str) -> str | None:
        target = Path(os.path.normpath(self.target))
        install = target / name
        own = Path(os.path.abspath(self.machine.directory))
        if name == _STAGING or install in (own, self.store):
            self.log_warning(f"Not removing {install}: it is not an install of {name}")
            return None
        if install.is_symlink():
            self.log_warning(f"Not removing {install}: it is a symbolic link")
            return None
        if not install.exists():
            return None
        if not install.is_dir():
            self.log_warning(f"Not removing {install}: it is not a directory")
            return None
        try:
            shutil.rmtree(install)
        except OSError as exc:
            return f"could not remove {install}: {exc}"
        self.log_info(f"Removed {install}")
        return None

    # -- state -------------------------------------------------------------------------------

    def state_fields(self) -> dict[str, Any]:
        return {
            self.kind.value: list(self.previous_names),
            "previous_outcome": self.previous_outcome,
            "previous_run_time": int(self.previous_run_time * 1e9),
        }


def describe_manager_payload(payload: Mapping[str, Any], field: str, label: str) -> str:
    """``<identity> <machine>#<name> <label>: a, b, previous: <o> ran: <s>s``."""
    names = payload.get(field) or []
    joined = ", ".join(str(n) for n in names) if isinstance(names, list) else str(names)
    seconds = float(payload.get("previous_run_time") or 0) / 1e9
    return (
        f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} {label}: "
        f"{joined}, previous: {payload.get('previous_outcome')} ran: {seconds:.3f}s"
    )
