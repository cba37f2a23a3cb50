"""What the manifest checker needs to know about a watcher type.

The spec layer does not import watchers (they depend on it); instead the watcher registry hands
the checker a mapping of type name to :class:`WatcherKind`, which every watcher class satisfies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from machinery.spec.diagnostics import Severity

if TYPE_CHECKING:
    from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
    from machinery.spec.yamlfile import Path

__all__ = ["Problem", "WatcherKind"]


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem at ``path`` inside one watcher definition (``()`` is the watcher itself;
    ``("properties", "mode")`` a property). ``offset`` points inside a scalar value."""

    path: Path
    message: str
    severity: Severity = Severity.ERROR
    offset: int | None = None
    at_key: bool = False

    @classmethod
    def warning(cls, path: Path, message: str) -> Problem:
        return cls(path, message, Severity.WARNING)


class WatcherKind(Protocol):
    """The static side of a watcher type, as the manifest checker sees it."""

    type_name: ClassVar[str]
    properties_model: ClassVar[type[WatcherProperties]]
    # Watcher-level interval rules: a default when unset (None: no default), a minimum, and
    # whether the interval means anything for this type at all.
    default_interval: ClassVar[float | None]
    min_interval: ClassVar[float]
    uses_interval: ClassVar[bool]

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        """Type-specific checks beyond the properties model (e.g. timer refuses
        success_transition). Only called when the properties themselves are valid."""
        ...
