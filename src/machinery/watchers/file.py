"""The ``file`` watcher (spec 3.2): notice a file changing, or keep its contents in shape.

Without ``contents`` it reports ``changed`` when the file's modification time moves forward and
``error`` when the file is missing. With ``contents`` it manages the file: rewrites it (atomically,
with the given mode, owner and group) whenever it is missing or differs, and reports ``changed``.
Checks run on inotify events within milliseconds, on every interval (a safety net) and on every
state change. A new file is looked at once its writer closes it, not when it appears empty.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from machinery.core.atomic import atomic_write
from machinery.core.clock import TimerHandle
from machinery.core.inotify import IN_CREATE, Subscription
from machinery.core.wakeup import FILE_EVENT
from machinery.lang.template import TemplateError
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import TemplateText, compile_template
from machinery.watchers.base import PolledWatcher

__all__ = ["CREATE_SETTLE", "FileProperties", "FileWatcher", "parse_mode"]

# Seconds a file that appeared without being written (a hard link, mknod) waits to be looked at.
# A writer's file appears empty (IN_CREATE) and is looked at when it is closed (IN_CLOSE_WRITE),
# so a check never sees it half written; this delay only matters when no close follows.
CREATE_SETTLE = 1.0


class FileProperties(WatcherProperties):
    """Properties of the file watcher."""

    path: str = Field(description="the file; relative paths are inside the machine directory")
    gather_initial_state: bool = Field(
        False, description="remember the file's state at start, so the first check is not a change"
    )
    contents: TemplateText | None = Field(
        None, description="manage the file: its desired contents (a template)"
    )
    owner: TemplateText = Field("", description="owner of a managed file (user name)")
    group: TemplateText = Field("", description="group of a managed file (group name)")
    mode: TemplateText = Field("", description='permissions of a managed file, octal ("0644")')


def parse_mode(text: str) -> int:
    """Permissions written as octal digits (``0644`` or ``644``, like chmod)."""
    value = text.strip()
    if value.lower().startswith("0o"):
        value = value[2:]
    if not value or any(c not in "01234567" for c in value):
        raise ValueError(f"invalid mode {text!r}: use octal digits such as 0644")
    mode = int(value, 8)
    if mode > 0o7777:
        raise ValueError(f"invalid mode {text!r}: larger than 07777")
    return mode


class FileWatcher(PolledWatcher[FileProperties]):
    """Watches or manages one file."""

    type_name = "file"
    properties_model = FileProperties
    default_interval = 5.0
    min_interval = 0.5

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, FileProperties)
        if not properties.path.strip():
            yield Problem(("properties", "path"), "path is required")
        if properties.contents is None:
            for key in ("owner", "group", "mode"):
                if getattr(properties, key):
                    yield Problem.warning(
                        ("properties", key), f"{key} is only used together with contents"
                    )
            return
        for key in ("owner", "group", "mode"):
            if not getattr(properties, key):
                yield Problem(("properties",), f"{key} is required when contents is set")
        mode = compile_template(properties.mode)
        if properties.mode and mode.is_static:
            try:
                parse_mode(properties.mode)
            except ValueError as exc:
                yield Problem(("properties", "mode"), str(exc))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path = Path(os.path.join(self.machine.directory, self.properties.path))
        self.previous_outcome = "unknown"
        self._mtime_ns = 0
        self._subscription: Subscription | None = None
        self._settling: TimerHandle | None = None
        if self.properties.contents is not None:
            self._contents = compile_template(self.properties.contents)
            self._owner = compile_template(self.properties.owner)
            self._group = compile_template(self.properties.group)
            self._mode = compile_template(self.properties.mode)

    @property
    def managing(self) -> bool:
        return self.properties.contents is not None

    async def on_start(self) -> None:
        if self.properties.gather_initial_state:
            with contextlib.suppress(OSError):
                self._mtime_ns = self.path.stat().st_mtime_ns
        monitor = self.machine.file_monitor
        if monitor is not None:
            self._subscription = monitor.watch_file(self.path, self._on_file_event)

    def _on_file_event(self, name: str, mask: int) -> None:
        if mask == IN_CREATE:
            # Created, not yet written: its close wakes us; a file created whole has none.
            if self._settling is None:
                self._settling = self.machine.clock.call_later(CREATE_SETTLE, self._settled)
            return
        self._cancel_settling()
        self._wakeup.set(FILE_EVENT)

    def _settled(self) -> None:
        self._settling = None
        self._wakeup.set(FILE_EVENT)

    def _cancel_settling(self) -> None:
        if self._settling is not None:
            self._settling.cancel()
            self._settling = None

    def close(self) -> None:
        self._cancel_settling()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    async def check(self, reasons: int) -> None:
        if self._subscription is not None and not self._subscription.active:
            self._subscription.refresh()
        if not self.should_watch():
            # The remembered mtime is kept, so a change made meanwhile is reported later.
            self.previous_outcome = "skipped"
            self.record("skipped")
            return
        outcome = self._manage() if self.managing else self._stat()
        self.previous_outcome = outcome
        self.record(outcome)
        if outcome == "error":
            self.publish()
            await self.fire_fail()
        elif outcome == "changed":
            self.publish()
            await self.fire_success()

    def _stat(self) -> str:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as exc:
            self._mtime_ns = 0
            self.status.last_error = (
                f"{self.path} does not exist"
                if isinstance(exc, FileNotFoundError)
                else f"cannot stat {self.path}: {exc.strerror}"
            )
            return "error"
        self.status.last_error = None
        if mtime > self._mtime_ns:
            self._mtime_ns = mtime
            return "changed"
        return "unchanged"

    def _manage(self) -> str:
        machine = self.machine
        dot = machine.template_dot()
        functions = machine.template_functions
        try:
            mode = parse_mode(self._mode.render(dot, functions))
            contents = self._contents.render(dot, functions).encode()
            owner = self._owner.render(dot, functions).strip()
            group = self._group.render(dot, functions).strip()
        except (TemplateError, ValueError) as exc:
            self.status.last_error = str(exc)
            self.log_error(f"Could not render file contents: {exc}")
            return "error"
        if not self._needs_write(contents, mode):
            self.status.last_error = None
            return "unchanged"
        try:
            self._write(contents, mode, owner, group)
        except (OSError, KeyError) as exc:
            self.status.last_error = f"could not write {self.path}: {exc}"
            self.log_error(self.status.last_error)
            return "error"
        self.status.last_error = None
        return "changed"

    def _needs_write(self, contents: bytes, mode: int) -> bool:
        try:
            st = self.path.stat()
        except OSError:
            return True
        if st.st_mtime_ns > self._mtime_ns or (st.st_mode & 0o7777) != mode:
            return True
        try:
            current = self.path.read_bytes()
        except OSError:
            return True
        return hashlib.sha256(current).digest() != hashlib.sha256(contents).digest()

    def _write(self, contents: bytes, mode: int, owner: str, group: str) -> None:
        uid = gid = None
        if owner and group:
            uid, gid = pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
        atomic_write(self.path, contents, mode=mode, uid=uid, gid=gid)
        self._mtime_ns = self.path.stat().st_mtime_ns

    def state_fields(self) -> dict[str, Any]:
        return {"path": str(self.path), "previous_outcome": self.previous_outcome}

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        return (
            f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} "
            f"path: {payload.get('path')}, previous: {payload.get('previous_outcome')}"
        )
