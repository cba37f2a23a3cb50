"""Which watcher types exist: the built-in ones and third-party ones from entry points.

A built-in type's module is imported only when something asks for that type (a manifest that
uses it, the schema of every type): an agent whose machines use three types pays for three.

Third-party packages add a type by declaring an entry point in the ``machinery.watchers`` group
that names a :class:`~machinery.watchers.base.Watcher` subclass::

    [project.entry-points."machinery.watchers"]
    consul = "machinery_consul:ConsulWatcher"
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

from machinery.spec.validate import Manifest
from machinery.spec.validate import check_manifest as _check_manifest
from machinery.spec.validate import load_manifest as _load_manifest

if TYPE_CHECKING:
    from machinery.core.machine import Machine, WatcherRuntime
    from machinery.spec.diagnostics import Diagnostic
    from machinery.spec.kinds import WatcherKind
    from machinery.spec.models import WatcherProperties, WatcherSpec
    from machinery.watchers.base import Watcher

    WatcherClass = type[Watcher[WatcherProperties]]

__all__ = [
    "ENTRY_POINT_GROUP",
    "WatcherRegistry",
    "check_manifest",
    "default_registry",
    "load_manifest",
]

ENTRY_POINT_GROUP = "machinery.watchers"

log = logging.getLogger(__name__)


class WatcherRegistry(Mapping[str, "WatcherClass"]):
    """A mapping of type name to watcher class; also the factory machines use.

    Types added with :meth:`register_lazy` are imported on first access, so iterating the
    names costs nothing while reading a value may import a module.
    """

    def __init__(self) -> None:
        self._types: dict[str, WatcherClass] = {}
        self._lazy: dict[str, tuple[str, str]] = {}

    def register(self, cls: type[Watcher]) -> type[Watcher]:  # type: ignore[type-arg]
        """Add a watcher class (usable as a decorator)."""
        name = cls.type_name
        known = self._types.get(name)
        if (known is not None and known is not cls) or name in self._lazy:
            raise ValueError(f"watcher type {name!r} is already registered")
        self._types[name] = cls
        return cls

    def register_lazy(self, name: str, module_name: str, class_name: str) -> None:
        """Add type ``name`` whose class is ``module_name.class_name``, imported when needed."""
        if name in self:
            raise ValueError(f"watcher type {name!r} is already registered")
        self._lazy[name] = (module_name, class_name)

    def __contains__(self, name: object) -> bool:
        return name in self._types or name in self._lazy

    def __getitem__(self, name: str) -> WatcherClass:
        cls = self._types.get(name)
        if cls is None:
            cls = self._load(name)
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._types) + len(self._lazy)

    def _load(self, name: str) -> WatcherClass:
        from machinery.watchers.base import Watcher

        module_name, class_name = self._lazy[name]  # KeyError for an unknown type
        cls = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(cls, type) and issubclass(cls, Watcher)) or cls.type_name != name:
            raise TypeError(f"{module_name}.{class_name} is not the {name!r} watcher type")
        del self._lazy[name]
        self._types[name] = cls
        return cast("WatcherClass", cls)

    @property
    def kinds(self) -> Mapping[str, WatcherKind]:
        """What the manifest checker needs to know about each type."""
        return cast("Mapping[str, WatcherKind]", self)

    def names(self) -> list[str]:
        return sorted([*self._types, *self._lazy])

    def loaded(self) -> list[str]:
        """The types whose modules are imported (for tests and diagnostics)."""
        return sorted(self._types)

    def create(
        self, machine: Machine, spec: WatcherSpec, properties: WatcherProperties
    ) -> WatcherRuntime:
        """Build a watcher for ``machine`` (the machine's ``watcher_factory``)."""
        if spec.type not in self:
            raise ValueError(f"unknown watcher '{spec.type}'")
        return self[spec.type](machine, spec, properties)

    def load_entry_points(self) -> None:
        """Register the watcher types other packages declare; a broken one is logged, skipped."""
        from importlib.metadata import entry_points

        from machinery.watchers.base import Watcher

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


# The watcher types that ship with machinery: type name, module and class, one module per type.
BUILTIN_WATCHERS: tuple[tuple[str, str, str], ...] = (
    ("exec", "machinery.watchers.exec", "ExecWatcher"),
    ("file", "machinery.watchers.file", "FileWatcher"),
    ("schedule", "machinery.watchers.schedule", "ScheduleWatcher"),
    ("timer", "machinery.watchers.timer", "TimerWatcher"),
    ("expression", "machinery.watchers.expression", "ExpressionWatcher"),
    ("nagios", "machinery.watchers.nagios", "NagiosWatcher"),
    ("metric", "machinery.watchers.metric", "MetricWatcher"),
    ("archive", "machinery.watchers.archive", "ArchiveWatcher"),
    ("httpswitch", "machinery.watchers.httpswitch", "HttpSwitchWatcher"),
    ("kv", "machinery.watchers.kv", "KVWatcher"),
    ("gossip", "machinery.watchers.gossip", "GossipWatcher"),
    ("machines", "machinery.watchers.machines", "MachinesWatcher"),
    ("plugins", "machinery.watchers.plugins", "PluginsWatcher"),
    ("ccm_manifest", "machinery.watchers.ccm", "CcmManifestWatcher"),
)


def builtin_registry() -> WatcherRegistry:
    """A registry holding only the watcher types that ship with machinery (not yet imported)."""
    registry = WatcherRegistry()
    for type_name, module_name, class_name in BUILTIN_WATCHERS:
        # Types still being written are skipped; a module that exists must import cleanly.
        if importlib.util.find_spec(module_name) is None:
            continue
        registry.register_lazy(type_name, module_name, class_name)
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
