"""Loading and checking manifests: every problem at once, each with its ``FILE:LINE:COL``.

The checks are those Choria makes when loading, those it only makes when a machine starts
(duplicate watcher names, unknown types, bad properties), and those it never makes (empty or
conflicting transitions, an unknown initial state, a state used where a transition is expected).
See ``docs/manifest.md`` for the full list.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from machinery.lang.duration import format_go_duration
from machinery.spec.diagnostics import Diagnostic, ManifestError, Position, Severity, did_you_mean
from machinery.spec.kinds import Problem, WatcherKind
from machinery.spec.models import (
    ForeignStateSpec,
    MachineSpec,
    SubscribeSpec,
    TransitionSpec,
    WatcherProperties,
    WatcherSpec,
)
from machinery.spec.yamlfile import MAX_FILE_BYTES, Path, YamlDocument, load_yaml

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ManifestReadError",
    "check_manifest",
    "check_manifest_text",
    "graph_manifest",
    "load_manifest",
    "manifest_file",
    "read_manifest_bytes",
]

MANIFEST_NAME = "machine.yaml"

# Choria's schema pattern for names; we only warn when a name does not fit it.
_GENERIC_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]+$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
# A machine name becomes a directory, a URL segment and a metric label: keep it tame.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]*$")
_MIN_ANNOUNCE = 60.0

_Model = TypeVar("_Model", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A checked ``machine.yaml``, ready to run: the model, the typed properties of each
    watcher (same order as ``spec.watchers``) and any warnings."""

    spec: MachineSpec
    file: FsPath
    directory: FsPath
    sha256: str
    properties: tuple[WatcherProperties, ...]
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name


def manifest_file(path: str | FsPath) -> FsPath:
    """The manifest file for ``path``: the path itself, or ``machine.yaml`` inside a directory."""
    path = FsPath(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def load_manifest(path: str | FsPath, kinds: Mapping[str, WatcherKind]) -> Manifest:
    """Load and check the manifest at ``path`` (a machine directory or its ``machine.yaml``).

    Raises :class:`ManifestError` carrying every problem when it is not valid.
    """
    manifest, diagnostics = check_manifest(path, kinds)
    if manifest is None:
        raise ManifestError(diagnostics)
    return manifest


class ManifestReadError(OSError):
    """A manifest that is not read at all: not a regular file, or a link out of its directory.
    An :class:`OSError` whose ``strerror`` says why, so it reads like any other read error."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
    return f"not a regular file ({kind})"


def read_manifest_bytes(file: FsPath) -> bytes:
    """A manifest's bytes, at most one more than :data:`MAX_FILE_BYTES`: enough to tell that a
    file is too large without reading (or holding) all of it.

    Only a regular file inside its own directory is read: a symbolic link is followed only when
    it resolves inside the manifest's directory, and a FIFO, socket, device or directory is
    refused (:class:`ManifestReadError`) without waiting for a writer or touching the device.
    The error never quotes the file or says where a link points.
    """
    directory = os.path.realpath(file.parent)
    real = os.path.realpath(file)
    if real != directory and not real.startswith(directory.rstrip(os.sep) + os.sep):
        raise ManifestReadError("a symbolic link out of its directory (not followed)")
    # Refuse what is not a regular file before opening it (opening a device can act on it),
    # then check again what was opened: it may have been replaced in between.
    problem = _not_regular(os.stat(real).st_mode)
    if problem is not None:
        raise ManifestReadError(problem)
    # No blocking on a FIFO swapped in meanwhile, no controlling terminal, no link followed.
    descriptor = os.open(
        real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    )
    try:
        problem = _not_regular(os.fstat(descriptor).st_mode)
        if problem is not None:
            raise ManifestReadError(problem)
        chunks: list[bytes] = []
        left = MAX_FILE_BYTES + 1
        while left > 0:
            chunk = os.read(descriptor, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def check_manifest(
    path: str | FsPath, kinds: Mapping[str, WatcherKind]
) -> tuple[Manifest | None, list[Diagnostic]]:
    """Check the manifest at ``path``; returns the manifest (None when there are errors) and
    every diagnostic, warnings included. Never raises for bad input."""
    read = _read_manifest(path)
    if isinstance(read, list):
        return None, read
    text, shown, file, sha256 = read
    return check_manifest_text(text, shown, kinds, directory=file.parent, file=file, sha256=sha256)


def graph_manifest(
    path: str | FsPath, kinds: Mapping[str, WatcherKind]
) -> tuple[MachineSpec | None, list[Diagnostic]]:
    """The machine to draw for ``path`` and every diagnostic, as ``choria machine graph`` does:
    a manifest Choria loads is drawn even when its watchers have problems (unknown type, bad
    properties: Choria only finds those when the machine starts). None when Choria's loader
    refuses it (no initial state, no transitions, an unknown state in ``state_match``, ...)."""
    read = _read_manifest(path)
    if isinstance(read, list):
        return None, read
    text, shown, _, _ = read
    spec, _, diagnostics, loads = _check_text(text, shown, kinds)
    if spec is None or not loads or not any(t.name for t in spec.transitions):
        return None, diagnostics
    return spec, diagnostics


def _read_manifest(path: str | FsPath) -> tuple[str, str, FsPath, str] | list[Diagnostic]:
    """The text, shown name, file and SHA-256 of the manifest at ``path``, or why it cannot
    be read."""
    file = manifest_file(path)
    shown = str(path if FsPath(path).is_file() else file)
    try:
        raw = read_manifest_bytes(file)
    except FileNotFoundError:
        return [_at(shown, f"cannot read {file}: no such file")]
    except OSError as exc:
        return [_at(shown, f"cannot read {file}: {exc.strerror or exc}")]
    if len(raw) > MAX_FILE_BYTES:
        return [_at(shown, f"file is larger than {MAX_FILE_BYTES // 1024} KiB")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [_at(shown, f"file is not UTF-8 text (byte {exc.start})", Position(line, 1))]
    return text, shown, file, hashlib.sha256(raw).hexdigest()


def check_manifest_text(
    text: str,
    shown_name: str,
    kinds: Mapping[str, WatcherKind],
    *,
    directory: FsPath | None = None,
    file: FsPath | None = None,
    sha256: str | None = None,
) -> tuple[Manifest | None, list[Diagnostic]]:
    """Check manifest ``text``; ``shown_name`` is the file name used in diagnostics."""
    spec, properties, diagnostics, _ = _check_text(text, shown_name, kinds)
    if spec is None or any(d.is_error for d in diagnostics):
        return None, diagnostics
    path = file or FsPath(shown_name)
    manifest = Manifest(
        spec=spec,
        file=path.absolute(),
        directory=(directory or path.parent).absolute(),
        sha256=sha256 or hashlib.sha256(text.encode()).hexdigest(),
        properties=tuple(properties),
        warnings=tuple(diagnostics),
    )
    return manifest, diagnostics


def _check_text(
    text: str, shown_name: str, kinds: Mapping[str, WatcherKind]
) -> tuple[MachineSpec | None, list[WatcherProperties], list[Diagnostic], bool]:
    """The model, properties and sorted diagnostics of ``text``, and whether Choria's loader
    would accept it (no error other than those it finds only when the machine starts)."""
    doc = load_yaml(text, shown_name)
    checker = _Checker(doc, kinds)
    spec, properties = checker.run()
    diagnostics = sorted(checker.diagnostics, key=lambda d: (d.position, d.severity.value))
    beyond_load = {id(d) for d in checker.beyond_load}
    loads = not any(d.is_error and id(d) not in beyond_load for d in diagnostics)
    return spec, properties, diagnostics, loads


def _at(file: str, message: str, position: Position | None = None) -> Diagnostic:
    return Diagnostic(file, position or Position(1, 1), message)


# Which model describes the mapping found at a location (ints in paths are list indexes).
_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): MachineSpec,
    ("transitions",): TransitionSpec,
    ("transitions", "subscribe"): SubscribeSpec,
    ("watchers",): WatcherSpec,
    ("watchers", "foreign_state_required"): ForeignStateSpec,
}


@dataclass
class _Checker:
    doc: YamlDocument
    kinds: Mapping[str, WatcherKind]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # Paths whose value failed structural validation: semantic checks skip them.
    failed: set[Path] = field(default_factory=set)
    # Problems Choria's loader does not see (it finds them when the machine starts, or never):
    # ``machinery graph`` still draws a machine that has only these.
    beyond_load: list[Diagnostic] = field(default_factory=list)
    _beyond_load_depth: int = 0

    # -- reporting -----------------------------------------------------------------------

    def report(
        self,
        path: Path,
        message: str,
        severity: Severity = Severity.ERROR,
        *,
        at_key: bool = False,
        offset: int | None = None,
    ) -> None:
        if offset is not None:
            pos = self.doc.position_in_scalar(path, offset)
        elif at_key:
            pos = self.doc.key_position(path)
        else:
            pos = self.doc.value_position(path)
        diagnostic = Diagnostic(self.doc.file, pos, message, severity)
        self.diagnostics.append(diagnostic)
        if self._beyond_load_depth:
            self.beyond_load.append(diagnostic)

    @contextlib.contextmanager
    def beyond_choria_load(self) -> Iterator[None]:
        """Problems reported inside are not ones Choria's loader refuses (see ``beyond_load``)."""
        self._beyond_load_depth += 1
        try:
            yield
        finally:
            self._beyond_load_depth -= 1

    def warn(self, path: Path, message: str) -> None:
        self.report(path, message, Severity.WARNING)

    def describe(self, path: Path) -> str:
        """A readable name for where ``path`` points, for error messages."""
        spec: Any = self.doc.data
        if len(path) >= 2 and path[0] in ("watchers", "transitions") and isinstance(path[1], int):
            kind = "watcher" if path[0] == "watchers" else "transition"
            try:
                name = spec[path[0]][path[1]].get("name")
            except (AttributeError, IndexError, KeyError, TypeError):
                name = None
            what = (
                f"{kind} {name!r}" if isinstance(name, str) and name else f"{kind} #{path[1] + 1}"
            )
            rest = ".".join(str(p) for p in path[2:])
            return f"{what}: {rest}" if rest else what
        return ".".join(str(p) for p in path)

    # -- the run -------------------------------------------------------------------------

    def run(self) -> tuple[MachineSpec | None, list[WatcherProperties]]:
        self.diagnostics.extend(self.doc.diagnostics)
        if any(d.is_error for d in self.doc.diagnostics) and self.doc.data is None:
            return None, []
        data = self.doc.data if self.doc.data is not None else {}
        if not isinstance(data, dict):
            self.report(
                (),
                "a manifest must be a mapping with name, version, initial_state, "
                "transitions and watchers",
            )
            return None, []
        spec = self._structure(data)
        self._machine(spec, data)
        known_states = set(spec.states())
        with self.beyond_choria_load():
            self._transitions(spec, data)
        self._subscriptions(spec)
        properties = self._watchers(spec, data, known_states)
        with self.beyond_choria_load():
            self._reachability(spec)
        return spec, properties

    # -- structure (pydantic) --------------------------------------------------------------

    def _structure(self, data: dict[str, Any]) -> MachineSpec:
        spec, data, error = self._validate_known(MachineSpec, data, ())
        if spec is not None:
            return spec
        assert error is not None
        self._pydantic_errors(error, (), MachineSpec)
        return self._salvage(MachineSpec, data, ())  # type: ignore[return-value]

    def _validate_known(
        self, model: type[_Model], data: Any, prefix: Path
    ) -> tuple[_Model | None, Any, ValidationError | None]:
        """``data`` validated as ``model``, ignoring the keys it does not know (each a warning):
        the model (None if invalid), the data without those keys, and what is still wrong.

        Choria decodes manifests and properties without refusing unused keys, so a key it does
        not know (a typo, or a setting for a newer version) must not stop a machine it runs.
        """
        try:
            return model.model_validate(data), data, None
        except ValidationError as exc:
            error = exc
        known = self._drop_unknown_keys(error, data, prefix, model)
        if known is data:
            return None, data, error
        try:
            return model.model_validate(known), known, None
        except ValidationError as exc:
            return None, known, exc

    def _drop_unknown_keys(
        self, error: ValidationError, data: Any, prefix: Path, model: type[BaseModel]
    ) -> Any:
        """A copy of ``data`` without the unknown keys ``error`` names, each reported as a
        warning; ``data`` itself when there are none."""
        unknown = [e["loc"] for e in error.errors() if e["type"] == "extra_forbidden"]
        if not unknown:
            return data
        data = copy.deepcopy(data)
        for loc in unknown:
            try:
                container: Any = data
                for step in loc[:-1]:
                    container = container[_input_key(container, step)]
                container.pop(_input_key(container, loc[-1]))
            except (KeyError, IndexError, TypeError, AttributeError):
                continue  # not where the input had it: validation reports it as an error
            self._unknown_key((*prefix, *loc), prefix, model, Severity.WARNING)
        return data

    def _salvage(self, model: type[BaseModel], data: Any, path: Path) -> BaseModel:
        """Build the largest valid part of ``data`` so semantic checks can still run."""
        if not isinstance(data, dict):
            self.failed.add(path)
            return model()
        kept: dict[str, Any] = {}
        for key, value in data.items():
            try:
                model.model_validate({key: value})
                kept[key] = value
                continue
            except ValidationError:
                pass
            item_model = _MODEL_AT.get((*_names_only(path), key))
            if item_model is not None and isinstance(value, list):
                kept[key] = [
                    self._salvage(item_model, item, (*path, key, i)) for i, item in enumerate(value)
                ]
            else:
                self.failed.add((*path, key))
        return model.model_validate(kept)

    def _pydantic_errors(
        self, exc: ValidationError, prefix: Path, model: type[BaseModel] | None
    ) -> None:
        for error in exc.errors():
            loc: Path = (*prefix, *error["loc"])
            kind = error["type"]
            ctx = error.get("ctx") or {}
            if kind == "extra_forbidden":
                # Only a key that could not be dropped gets here: the value cannot be used.
                self._unknown_key(loc, prefix, model, Severity.ERROR)
                continue
            self.failed.add(loc)
            message = error["msg"]
            if kind in ("duration", "template"):
                offset = ctx.get("offset")
                self.report(loc, f"{self.describe(loc)}: {message}", offset=offset)
                continue
            if kind == "missing":
                parent, missing = loc[:-1], loc[-1]
                what = "property" if parent[-1:] == ("properties",) else "key"
                owner = parent[:-1] if what == "property" else parent
                self.report(
                    parent, f"{self.describe(owner)}: {what} {missing!r} is required", at_key=True
                )
                continue
            self.report(loc, f"{self.describe(loc)}: {_friendly(message, error.get('input'))}")

    def _unknown_key(
        self, loc: Path, prefix: Path, model: type[BaseModel] | None, severity: Severity
    ) -> None:
        key = str(loc[-1])
        parent = loc[:-1]
        owner = _MODEL_AT.get(_names_only(parent)) if model is not WatcherProperties else None
        if prefix and model is not None:
            owner = model
        valid = sorted(_field_keys(owner)) if owner is not None else []
        where = self.describe(parent) if parent else "the manifest"
        what = "property" if "properties" in parent else "key"
        message = f"{where}: unknown {what} {key!r} is ignored"
        hint = did_you_mean(key, valid)
        if hint:
            message += hint
        elif valid:
            message += f"; valid {(what == 'key' and 'keys') or 'properties'}: {', '.join(valid)}"
        self.report(self._original_key_path(loc), message, severity, at_key=True)

    def _original_key_path(self, loc: Path) -> Path:
        # Property keys are matched case-insensitively; point at the key as written.
        parent, key = loc[:-1], loc[-1]
        if isinstance(key, str) and (*parent, key) not in self.doc.keys:
            for candidate in self.doc.keys:
                if candidate[:-1] == parent and str(candidate[-1]).lower() == key:
                    return candidate
        return loc

    # -- machine level ---------------------------------------------------------------------

    def _machine(self, spec: MachineSpec, data: dict[str, Any]) -> None:
        if ("name",) not in self.failed:
            if not spec.name:
                self.report(("name",), "a machine name is required")
            elif not _SAFE_NAME.match(spec.name):
                with self.beyond_choria_load():
                    self.report(
                        ("name",),
                        f"machine name {spec.name!r} may only use letters, digits and _ . : @ -",
                    )
            elif not _GENERIC_NAME.match(spec.name):
                self.warn(
                    ("name",),
                    f"machine name {spec.name!r} does not fit Choria's schema "
                    "(a letter, then letters, digits, _ or -)",
                )
        if ("version",) not in self.failed:
            if not spec.version:
                self.report(("version",), "a machine version is required")
            elif not _SEMVER.match(spec.version):
                self.warn(("version",), f"version {spec.version!r} is not SemVer (like 1.0.0)")
        if ("initial_state",) not in self.failed:
            if not spec.initial_state:
                self.report(("initial_state",), "an initial state is required")
            else:
                states = {s for t in spec.transitions for s in (*t.from_, t.destination) if s}
                if spec.transitions and spec.initial_state not in states:
                    hint = did_you_mean(spec.initial_state, states)
                    with self.beyond_choria_load():  # Choria accepts it
                        self.report(
                            ("initial_state",),
                            f"initial state {spec.initial_state!r} is not used by any transition"
                            f"{hint or '; states are named in from and destination'}",
                        )
        if ("transitions",) not in self.failed and not data.get("transitions"):
            self.report(("transitions",), "no transitions defined")
        if ("watchers",) not in self.failed and not data.get("watchers"):
            self.report(("watchers",), "no watchers defined")

    # -- transitions -----------------------------------------------------------------------

    def _subscriptions(self, spec: MachineSpec) -> None:
        for index, transition in enumerate(spec.transitions):
            if ("transitions", index) in self.failed:
                continue
            for i, sub in enumerate(transition.subscribe):
                sub_path: Path = ("transitions", index, "subscribe", i)
                if sub_path in self.failed:
                    continue
                if not sub.machine_name:
                    self.report(
                        sub_path,
                        f"machine name is required on subscription for transition {transition.name!r}",
                    )
                if not sub.event:
                    self.report(
                        sub_path,
                        f"event name is required on subscription for transition {transition.name!r}",
                    )

    def _transitions(self, spec: MachineSpec, data: dict[str, Any]) -> None:
        """Checks Choria never makes: names, ``from``, ``destination``, duplicates."""
        seen: dict[tuple[str, str], tuple[int, str]] = {}
        for index, transition in enumerate(spec.transitions):
            path: Path = ("transitions", index)
            if path in self.failed:
                continue
            if not transition.name and (*path, "name") not in self.failed:
                self.report(path, f"transition #{index + 1} has no name")
            if not transition.from_ and (*path, "from") not in self.failed:
                self.report(path, f"{self.describe(path)} has no from states")
            for i, state in enumerate(transition.from_):
                if not state:
                    self.report((*path, "from", i), f"{self.describe(path)}: empty state name")
            if not transition.destination and (*path, "destination") not in self.failed:
                self.report(path, f"{self.describe(path)} has no destination")
            if not transition.name:
                continue
            for i, state in enumerate(transition.from_):
                key = (transition.name, state)
                if key not in seen:
                    seen[key] = (index, transition.destination)
                    continue
                first_index, first_destination = seen[key]
                first_line = self.doc.value_position(("transitions", first_index)).line
                where = (*path, "from", i)
                if first_destination != transition.destination:
                    self.report(
                        where,
                        f"transition {transition.name!r} from state {state!r} is defined twice "
                        f"with different destinations ({first_destination!r} at line "
                        f"{first_line}, {transition.destination!r} here)",
                    )
                else:
                    self.warn(
                        where,
                        f"transition {transition.name!r} from state {state!r} is already "
                        f"defined at line {first_line}",
                    )

    # -- watchers --------------------------------------------------------------------------

    def _watchers(
        self, spec: MachineSpec, data: dict[str, Any], known_states: set[str]
    ) -> list[WatcherProperties]:
        transitions = spec.transition_names()
        names: dict[str, int] = {}
        properties: list[WatcherProperties] = []
        for index, watcher in enumerate(spec.watchers):
            path: Path = ("watchers", index)
            if path in self.failed:
                properties.append(WatcherProperties())
                continue
            if not watcher.name:
                if (*path, "name") not in self.failed:
                    self.report(path, f"watcher #{index + 1} has no name")
            elif watcher.name in names:
                first = self.doc.value_position(("watchers", names[watcher.name], "name")).line
                with self.beyond_choria_load():  # Choria finds duplicates when it starts
                    self.report(
                        (*path, "name"),
                        f"duplicate watcher name {watcher.name!r} (first at line {first})",
                    )
            else:
                names[watcher.name] = index
            self._watcher_names(spec, watcher, path, known_states, transitions)
            self._announce_interval(watcher, path)
            with self.beyond_choria_load():
                kind = self._watcher_kind(watcher, path)
                self._watcher_interval(watcher, path, kind)
                properties.append(self._watcher_properties(spec, watcher, path, kind))
        return properties

    def _watcher_names(
        self,
        spec: MachineSpec,
        watcher: WatcherSpec,
        path: Path,
        known_states: set[str],
        transitions: list[str],
    ) -> None:
        for i, state in enumerate(watcher.state_match):
            if state in known_states:
                continue
            hint = (
                f"; {state!r} is a transition, not a state"
                if state in transitions
                else did_you_mean(state, known_states)
            )
            self.report(
                (*path, "state_match", i),
                f"invalid state {state!r} in state_match for watcher {watcher.name!r}{hint}",
            )
        for key in ("success_transition", "fail_transition"):
            event = getattr(watcher, key)
            if not event or event in transitions or (*path, key) in self.failed:
                continue
            if event in known_states:
                into = sorted(
                    {t.name for t in spec.transitions if t.destination == event and t.name}
                )
                hint = f"; {event!r} is a state, not a transition"
                if into:
                    hint += f"; did you mean {' or '.join(repr(t) for t in into)} (leading to {event!r})?"
            else:
                hint = did_you_mean(event, transitions)
            self.report(
                (*path, key), f"invalid {key} {event!r} specified in watcher {watcher.name!r}{hint}"
            )
        with self.beyond_choria_load():
            self._foreign_states(spec, watcher, path)

    def _foreign_states(self, spec: MachineSpec, watcher: WatcherSpec, path: Path) -> None:
        # Choria checks these lazily, when the watcher runs.
        for i, foreign in enumerate(watcher.foreign_state_required):
            item: Path = (*path, "foreign_state_required", i)
            if item in self.failed:
                continue
            if not foreign.machine_name:
                self.report(
                    item, f"watcher {watcher.name!r}: foreign_state_required needs machine_name"
                )
            if not foreign.state:
                self.report(item, f"watcher {watcher.name!r}: foreign_state_required needs state")
            if foreign.machine_name and foreign.machine_name == spec.name:
                self.warn(
                    item,
                    f"watcher {watcher.name!r} requires a state of its own machine; "
                    "use state_match instead",
                )

    def _watcher_kind(self, watcher: WatcherSpec, path: Path) -> WatcherKind | None:
        if (*path, "type") in self.failed:
            return None
        if not watcher.type:
            self.report(path, f"watcher {watcher.name!r} has no type")
            return None
        kind = self.kinds.get(watcher.type)
        if kind is None:
            known = ", ".join(sorted(self.kinds))
            self.report(
                (*path, "type"),
                f"unknown watcher type {watcher.type!r}"
                f"{did_you_mean(watcher.type, self.kinds, cutoff=0.8) or f' (known types: {known})'}",
            )
        return kind

    def _announce_interval(self, watcher: WatcherSpec, path: Path) -> None:
        announce = watcher.announce_interval
        if announce is not None and announce != 0 and announce < _MIN_ANNOUNCE:
            self.report(
                (*path, "announce_interval"),
                f"announce interval {format_go_duration(announce)} is too small for watcher "
                f"{watcher.name!r} (minimum 1m)",
            )

    def _watcher_interval(self, watcher: WatcherSpec, path: Path, kind: WatcherKind | None) -> None:
        if kind is None or watcher.interval is None:
            return
        if not kind.uses_interval:
            self.warn(
                (*path, "interval"),
                f"interval is ignored by {kind.type_name} watchers",
            )
        elif watcher.interval != 0 and watcher.interval < kind.min_interval:
            self.report(
                (*path, "interval"),
                f"interval {format_go_duration(watcher.interval)} is too small for watcher "
                f"{watcher.name!r} (minimum {format_go_duration(kind.min_interval)})",
            )

    def _watcher_properties(
        self, spec: MachineSpec, watcher: WatcherSpec, path: Path, kind: WatcherKind | None
    ) -> WatcherProperties:
        props_path: Path = (*path, "properties")
        if kind is None or props_path in self.failed:
            return WatcherProperties()
        model = kind.properties_model
        raw: dict[str, Any] = {}
        for key, value in watcher.properties.items():
            lowered = key.lower()
            if lowered in model.ignored_keys:
                self.warn((*props_path, key), model.ignored_keys[lowered])
                continue
            raw[lowered] = value
        properties, _, error = self._validate_known(model, raw, props_path)
        if properties is None:
            assert error is not None
            self._pydantic_errors(error, props_path, model)
            return WatcherProperties()
        for problem in kind.check_definition(spec, watcher, properties):
            self._problem(path, problem)
        return properties

    def _problem(self, watcher_path: Path, problem: Problem) -> None:
        path = (*watcher_path, *problem.path)
        if problem.path[:1] == ("properties",):
            path = self._original_key_path(path)
        self.report(
            path, problem.message, problem.severity, at_key=problem.at_key, offset=problem.offset
        )

    # -- reachability warnings -------------------------------------------------------------

    def _reachability(self, spec: MachineSpec) -> None:
        if not spec.initial_state or not spec.transitions:
            return
        edges: dict[str, set[str]] = {}
        first_seen: dict[str, Path] = {}
        for index, transition in enumerate(spec.transitions):
            for i, state in enumerate(transition.from_):
                edges.setdefault(state, set()).add(transition.destination)
                first_seen.setdefault(state, ("transitions", index, "from", i))
            if transition.destination:
                first_seen.setdefault(transition.destination, ("transitions", index, "destination"))
        reached = {spec.initial_state}
        frontier = [spec.initial_state]
        while frontier:
            for nxt in edges.get(frontier.pop(), ()):
                if nxt and nxt not in reached:
                    reached.add(nxt)
                    frontier.append(nxt)
        for state, where in first_seen.items():
            if state not in reached:
                self.warn(
                    where, f"state {state!r} can never be reached from {spec.initial_state!r}"
                )
            elif state not in edges:
                self.warn(where, f"state {state!r} has no way out: no transition starts from it")
        for index, watcher in enumerate(spec.watchers):
            if watcher.state_match and not any(s in reached for s in watcher.state_match):
                self.warn(
                    ("watchers", index, "state_match"),
                    f"watcher {watcher.name!r} can never be active: none of its states can be "
                    "reached",
                )


def _input_key(container: Any, key: str | int) -> Any:
    """``key`` as written in ``container``: property keys are matched without regard to case,
    so a model may report a lower-cased key."""
    if isinstance(container, dict) and key not in container and isinstance(key, str):
        for written in container:
            if str(written).lower() == key:
                return written
    return key


def _names_only(path: Path) -> tuple[str, ...]:
    return tuple(p for p in path if isinstance(p, str))


def _field_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _friendly(message: str, value: Any) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{message[0].lower()}{message[1:]}, got {shown}"


def iter_errors(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Only the errors among ``diagnostics``."""
    return [d for d in diagnostics if d.is_error]
