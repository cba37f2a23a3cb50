"""Node facts: a JSON object read from a file, re-read when the file changes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["Facts", "FactsError"]


class FactsError(ValueError):
    """The facts file cannot be read or is not a JSON object."""


class Facts:
    """The facts of this node. ``get()`` is cheap: the file is re-read only when its mtime or
    size changed, and a broken rewrite keeps the last good facts (with ``error`` set)."""

    __slots__ = ("_data", "_json", "_stamp", "error", "path")

    def __init__(self, path: Path | None = None, data: dict[str, Any] | None = None) -> None:
        self.path = path
        self._data: dict[str, Any] = dict(data or {})
        self._json: str | None = None
        self._stamp: tuple[int, int] | None = None
        self.error: str | None = None
        if path is not None:
            self._read(initial=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Facts:
        """Load facts from ``path``; raises FactsError if it is missing or not a JSON object."""
        return cls(Path(path))

    def get(self) -> dict[str, Any]:
        if self.path is not None:
            self._read(initial=False)
        return self._data

    def as_json(self) -> str:
        """The facts as JSON text (what exec watchers receive in WATCHER_FACTS)."""
        data = self.get()
        if self._json is None:
            self._json = json.dumps(data, separators=(",", ":"))
        return self._json

    def _read(self, *, initial: bool) -> None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError as exc:
            if initial:
                raise FactsError(f"cannot read facts file {self.path}: {exc.strerror}") from exc
            self.error = f"cannot read facts file {self.path}: {exc.strerror}"
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            message = f"facts file {self.path} is not valid JSON: {exc}"
            if initial:
                raise FactsError(message) from exc
            self.error = message
            return
        if not isinstance(data, dict):
            message = f"facts file {self.path} must hold a JSON object"
            if initial:
                raise FactsError(message)
            self.error = message
            return
        self._stamp = stamp
        self._data = data
        self._json = None
        self.error = None
