"""Which watcher types exist: the built-in ones and third-party ones from entry points.

Third-party packages add a type by declaring an entry point in the ``machinery.watchers`` group
that names a :class:`~machinery.watchers.base.Watcher` subclass::

    [project.entry-points."machinery.watchers"]
    consul = "machinery_consul:ConsulWatcher"
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Mapping
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, cast

from machinery.spec.diagnostics import Diagnostic
from machinery.spec.kinds import WatcherKind
from machinery.spec.models import WatcherProperties, WatcherSpec
from machinery.spec.validate import Manifest
from machinery.spec.validate import check_manifest as _check_manifest
from machinery.spec.validate import load_manifest as _load_manifest
from machinery.watchers.base import Watcher

if TYPE_CHECKING:
    from machinery.core.machine import Machine, WatcherRuntime

__all__ = [
    "ENTRY_POINT_GROUP",
    "WatcherRegistry",
    "check_manifest",
    "default_registry",
    "load_manifest",
]

ENTRY_POINT_GROUP = "machinery.watchers"

log = logging.getLogger(__name__)


class WatcherRegistry:
    """A mapping of type name to watcher class; also the factory machines use."""

    def __init__(self) -> None:
        self._types: dict[str, type[Watcher[WatcherProperties]]] = {}

    def register(self, cls: type[Watcher]) -> type[Watcher]:  # type: ignore[type-arg]
        """Add a watcher class (usable as a decorator)."""
        name = cls.type_name
        if name in self._types and self._types[name] is not cls:
            raise ValueError(f"watcher type {name!r} is already registered")
        self._types[name] = cls
        return cls

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __getitem__(self, name: str) -> type[Watcher[WatcherProperties]]:
        return self._types[name]

    @property
    def kinds(self) -> Mapping[str, WatcherKind]:
        """What the manifest checker needs to know about each type."""
        return cast(Mapping[str, WatcherKind], self._types)

    def names(self) -> list[str]:
        return sorted(self._types)

    def create(
        self, machine: Machine, spec: WatcherSpec, properties: WatcherProperties
    ) -> WatcherRuntime:
        """Build a watcher for ``machine`` (the machine's ``watcher_factory``)."""
        cls = self._types.get(spec.type)
        if cls is None:
            raise ValueError(f"unknown watcher '{spec.type}'")
        return cls(machine, spec, properties)

    def load_entry_points(self) -> None:
        """Register the watcher types other packages declare; a broken one is logged, skipped."""
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = entry.load()
                if not (isinstance(cls, type) and issubclass(cls, Watcher)):
                    raise TypeError(f"{entry.value} is not a Watcher subclass")
                self.register(cls)
            except Exception as exc:
                log.error(
                    "could not load watcher type %r from %s: %s", entry.name, entry.value, exc
                )


# The watcher types that ship with machinery: module and class, one module per type.
BUILTIN_WATCHERS: tuple[tuple[str, str], ...] = (
    ("machinery.watchers.exec", "ExecWatcher"),
    ("machinery.watchers.file", "FileWatcher"),
    ("machinery.watchers.schedule", "ScheduleWatcher"),
    ("machinery.watchers.timer", "TimerWatcher"),
    ("machinery.watchers.expression", "ExpressionWatcher"),
    ("machinery.watchers.nagios", "NagiosWatcher"),
    ("machinery.watchers.metric", "MetricWatcher"),
    ("machinery.watchers.archive", "ArchiveWatcher"),
    ("machinery.watchers.httpswitch", "HttpSwitchWatcher"),
    ("machinery.watchers.kv", "KVWatcher"),
    ("machinery.watchers.gossip", "GossipWatcher"),
    ("machinery.watchers.machines", "MachinesWatcher"),
    ("machinery.watchers.plugins", "PluginsWatcher"),
    ("machinery.watchers.ccm", "CcmManifestWatcher"),
)


def builtin_registry() -> WatcherRegistry:
    """A registry holding only the watcher types that ship with machinery."""
    registry = WatcherRegistry()
    for module_name, class_name in BUILTIN_WATCHERS:
        # Types still being written are skipped; a module that exists must import cleanly.
        if importlib.util.find_spec(module_name) is None:
            continue
        registry.register(getattr(importlib.import_module(module_name), class_name))
    return registry


@lru_cache(maxsize=1)
def default_registry() -> WatcherRegistry:
    """The built-in types plus those from installed entry points (loaded once)."""
    registry = builtin_registry()
    registry.load_entry_points()
    return registry


def load_manifest(path: str | Path, registry: WatcherRegistry | None = None) -> Manifest:
    """Load and check a manifest against the known watcher types (raises ManifestError)."""
    return _load_manifest(path, (registry or default_registry()).kinds)


def check_manifest(
    path: str | Path, registry: WatcherRegistry | None = None
) -> tuple[Manifest | None, list[Diagnostic]]:
    """Check a manifest against the known watcher types; never raises for bad input."""
    return _check_manifest(path, (registry or default_registry()).kinds)
