"""Problems found in a manifest, each pointing at a file, line and column."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Diagnostic", "ManifestError", "Position", "Severity", "did_you_mean"]


class Severity(StrEnum):
    """How bad a problem is: errors stop a machine from loading, warnings do not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A 1-based line and column in a file."""

    line: int = 1
    column: int = 1


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in one file, printed as ``FILE:LINE:COL: message``."""

    file: str
    position: Position
    message: str
    severity: Severity = Severity.ERROR

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def as_error(self) -> Diagnostic:
        """This problem as an error (``machinery validate --strict``)."""
        return dataclasses.replace(self, severity=Severity.ERROR)

    def __str__(self) -> str:
        where = f"{self.file}:{self.position.line}:{self.position.column}"
        if self.severity is Severity.WARNING:
            return f"{where}: warning: {self.message}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        """The JSON form used by ``machinery validate --format json`` and the HTTP API."""
        return {
            "file": self.file,
            "line": self.position.line,
            "column": self.position.column,
            "severity": self.severity.value,
            "message": self.message,
        }


class ManifestError(Exception):
    """A manifest that cannot be used; carries every problem found, not just the first."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.file, d.position))
        super().__init__("\n".join(str(d) for d in self.errors))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """A ``; did you mean X?`` suffix naming the closest candidate, or an empty string."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=cutoff)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        if word.lower() in lowered:
            matches = [lowered[word.lower()]]
    return f"; did you mean {matches[0]!r}?" if matches else ""
