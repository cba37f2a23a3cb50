"""A machine's data store (spec 1.6): a JSON map persisted to ``machine_data.json``.

Every change is written atomically, so the file is always whole JSON, whatever kills the
process. A corrupt or unreadable file is a warning and an empty store, as in Choria.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from machinery.core.atomic import atomic_write

__all__ = ["DATA_FILE_NAME", "DataStore", "DataStoreError"]

DATA_FILE_NAME = "machine_data.json"

log = logging.getLogger(__name__)


class DataStoreError(OSError):
    """The data could not be saved (the in-memory value is still updated)."""


class DataStore:
    """Key/value data of one machine; values keep their JSON types."""

    __slots__ = ("_data", "_listeners", "load_warning", "path")

    def __init__(self, path: Path | None) -> None:
        """``path`` is the data file; None keeps the store in memory only (simulation)."""
        self.path = path
        self._data: dict[str, Any] = {}
        self._listeners: list[Callable[[], None]] = []
        self.load_warning: str | None = None
        if path is not None:
            self._remove_leftovers(path)
            self._load(path)

    @staticmethod
    def _remove_leftovers(path: Path) -> None:
        # A process killed in the middle of a save leaves its temporary file behind.
        prefix = f".{path.name}."
        try:
            names = os.listdir(path.parent)
        except OSError:
            return
        for name in names:
            if name.startswith(prefix) and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(path.parent / name)

    def _load(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self.load_warning = f"Could not load data file, discarding: {exc}"
            return
        try:
            data = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError) as exc:
            self.load_warning = f"Could not load data file, discarding: {exc}"
            return
        if not isinstance(data, dict):
            self.load_warning = "Could not load data file, discarding: not a JSON object"
            return
        self._data = data

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every change (used by watchers that react to data)."""
        self._listeners.append(listener)

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def snapshot(self) -> dict[str, Any]:
        """A shallow copy of all data."""
        return dict(self._data)

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` and save. Raises DataStoreError if saving fails."""
        self.update({key: value})

    def update(self, values: Mapping[str, Any]) -> None:
        """Store several values with a single save."""
        if not values:
            return
        self._data.update(values)
        self._changed()

    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing happens if it is absent) and save."""
        if key not in self._data:
            return
        del self._data[key]
        self._changed()

    def to_json(self) -> str:
        return json.dumps(self._data, sort_keys=True, separators=(",", ":"), default=str)

    def _changed(self) -> None:
        try:
            self._save()
        finally:
            for listener in self._listeners:
                listener()

    def _save(self) -> None:
        if self.path is None:
            return
        payload = json.dumps(self._data, indent=2, sort_keys=True, default=str).encode()
        try:
            atomic_write(self.path, payload, mode=0o600)
        except OSError as exc:
            raise DataStoreError(f"Could not save data to {self.path.name}: {exc}") from exc
