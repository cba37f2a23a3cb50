"""The store: a directory of machine directories, kept in sync with what runs.

:class:`StoreManager` loads every machine at start, then follows the store with inotify: a new
directory is started, a changed ``machine.yaml`` restarts its machine (new instance id, data
kept), a removed directory stops its machine (watchers stopped, commands killed). Changes are
loaded once they have settled (no half-written files), a periodic rescan is the safety net, and a
broken or unsafe manifest is reported for its own machine only and retried when it changes.

Unsafe means writable by group or others, or owned by someone other than the agent's user or
root: the machine directory, its ``machine.yaml``, the programs its ``exec``, ``nagios`` and
``metric`` watchers name by a relative path (and the directories leading to them inside the
machine directory), and every executable file in the machine directory's tree; a program named
by a relative path must also resolve inside the machine directory (see
:mod:`machinery.core.permissions`). All are checked when a machine loads; anyone who can change
one of them can run commands as the agent. Only a regular file inside the machine directory is read as its ``machine.yaml``, in a
thread (:func:`machinery.spec.validate.read_manifest_bytes`): a FIFO, device or link out of the
directory makes the machine ``invalid`` without stalling the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machinery.agent.host import MachineGroup
from machinery.core.clock import TimerHandle
from machinery.core.inotify import Subscription
from machinery.core.machine import Machine, MachineStatus
from machinery.core.node import Node
from machinery.core.permissions import command_problem, permission_problem, stat_problem
from machinery.lang.cmdline import split_command
from machinery.lang.template import TemplateError
from machinery.spec.diagnostics import Diagnostic
from machinery.spec.validate import (
    MANIFEST_NAME,
    Manifest,
    ManifestReadError,
    check_manifest_text,
    read_manifest_bytes,
)
from machinery.watchers.registry import WatcherRegistry

__all__ = [
    "EntryStatus",
    "MachineEntry",
    "StoreManager",
    "command_problem",
    "eligible_name",
    "permission_problem",
]

log = logging.getLogger("machinery.store")


class EntryStatus(enum.StrEnum):
    """What the agent shows for a machine directory."""

    LOADING = "loading"
    STARTING = "starting"  # sleeping its start splay
    RUNNING = "running"
    INVALID = "invalid"  # the manifest has errors
    REFUSED = "refused"  # unsafe ownership or permissions
    FAILED = "failed"  # its watchers could not be created
    STOPPED = "stopped"


def eligible_name(name: str) -> bool:
    """Store entries that are staging areas, not machines: ``.x``, ``tmp*``, ``*-temp``."""
    return not (name.startswith((".", "tmp")) or name.endswith("-temp"))


class _AnyName(Collection[str]):
    """Every function name: command lines are split here only to find their first word."""

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


_ANY_FUNCTION = _AnyName()

# Watcher types that run a program, and the property holding the command line.
COMMAND_PROPERTIES = {"exec": "command", "metric": "command", "nagios": "plugin"}


def static_program(command: str) -> str | None:
    """The program (first word) of a watcher's command line, or None when there is none or it
    is a template (what it runs is known only once rendered)."""
    try:
        words = split_command(command, _ANY_FUNCTION)
    except TemplateError:
        return None
    if not words or not words[0].template.is_static:
        return None
    return words[0].template.source or None


def executable_problem(directory: Path, uid: int) -> tuple[Path, str] | None:
    """The first executable file in ``directory``'s tree (symbolic links to files followed, to
    directories not) that fails :func:`permission_problem`, or whose directory inside
    ``directory`` does, and why; None when there is none. One stat per file."""
    top = str(directory)
    checked: dict[str, tuple[Path, str] | None] = {top: None}

    def folder_problem(folder: str) -> tuple[Path, str] | None:
        # The directories below ``directory`` (checked by the caller) down to ``folder``.
        if folder not in checked:
            found = folder_problem(os.path.dirname(folder))
            if found is None:
                problem = permission_problem(Path(folder), uid)
                found = None if problem is None else (Path(folder), problem)
            checked[folder] = found
        return checked[folder]

    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            continue  # vanished, or unreadable: nothing in it can be run by name either
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                    continue
                if folder == top and entry.name == MANIFEST_NAME:
                    continue  # checked on its own
                info = entry.stat()
            except OSError:
                continue  # gone, or a dangling link
            if not stat.S_ISREG(info.st_mode) or not info.st_mode & 0o111:
                continue
            problem = stat_problem(entry.path, info, uid)
            if problem is not None:
                return Path(entry.path), problem
            at_fault = folder_problem(folder)
            if at_fault is not None:
                return at_fault
    return None


# What decides whether a machine directory needs another look: the manifest's identity, time,
# size, mode and owner, and the directory's mode and owner (for the permission checks).
Stamp = tuple[int, int, int, int, int, int, int]


def _stamp(directory: Path, manifest: os.stat_result | None = None) -> Stamp | None:
    try:
        st = manifest or (directory / MANIFEST_NAME).stat()
        dt = directory.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid, dt.st_mode, dt.st_uid)


@dataclass
class MachineEntry:
    """One machine directory of the store and what became of it."""

    directory: Path
    sha256: str | None = None
    stamp: Stamp | None = None
    machine: Machine | None = None
    task: asyncio.Task[None] | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    problem: str | None = None
    refused: bool = False
    # The command or executable that made the last load refuse the machine, how the refusal
    # read, and the program as the manifest names it (None for an executable): looked at again
    # first, so a machine still refused costs no parse.
    unsafe_file: tuple[Path, str, str | None] | None = None
    loaded_at: float = 0.0
    subscription: Subscription | None = None

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    @property
    def name(self) -> str:
        return self.machine.name if self.machine is not None else self.directory.name

    @property
    def status(self) -> EntryStatus:
        if self.refused:
            return EntryStatus.REFUSED
        if self.machine is None:
            return (
                EntryStatus.INVALID if (self.diagnostics or self.problem) else EntryStatus.LOADING
            )
        return {
            MachineStatus.LOADED: EntryStatus.LOADING,
            MachineStatus.STARTING: EntryStatus.STARTING,
            MachineStatus.RUNNING: EntryStatus.RUNNING,
            MachineStatus.FAILED: EntryStatus.FAILED,
            MachineStatus.STOPPED: EntryStatus.STOPPED,
        }[self.machine.status]

    @property
    def errors(self) -> list[str]:
        found = [str(d) for d in self.diagnostics if d.is_error]
        if self.problem:
            found.append(self.problem)
        if self.machine is not None and self.machine.start_error:
            found.append(self.machine.start_error)
        return found

    def to_dict(self) -> dict[str, Any]:
        """The API's view: Choria's MachineState plus our status, or the errors."""
        if self.machine is not None:
            result = self.machine.status_dict()
        else:
            result = {"name": self.name, "path": str(self.directory)}
        result["status"] = self.status.value
        if self.errors:
            result["errors"] = self.errors
        warnings = [str(d) for d in self.diagnostics if not d.is_error]
        if warnings:
            result["warnings"] = warnings
        if self.diagnostics:
            result["diagnostics"] = [d.to_dict() for d in self.diagnostics]
        return result


class StoreManager:
    """Runs the machines of a store directory (see the module docstring)."""

    def __init__(
        self,
        store: Path,
        node: Node,
        registry: WatcherRegistry,
        group: MachineGroup,
        *,
        settle_delay: float = 0.25,
        rescan_interval: float = 10.0,
        check_permissions: bool = True,
        resume: dict[str, tuple[str, str]] | None = None,
        on_started: Callable[[Machine, Manifest], None] | None = None,
        on_removed: Callable[[str], None] | None = None,
    ) -> None:
        self.store = Path(os.path.abspath(store))
        self.node = node
        self.registry = registry
        self.group = group
        self.settle_delay = settle_delay
        self.rescan_interval = rescan_interval
        self.check_permissions = check_permissions
        self._resume = dict(resume or {})
        self._on_started = on_started
        self._on_removed = on_removed
        self.entries: dict[Path, MachineEntry] = {}
        self._by_name: dict[str, MachineEntry] = {}
        self._uid = os.geteuid()
        self._pending: dict[Path, TimerHandle] = {}
        self._queue: asyncio.Queue[Path | None] = asyncio.Queue()
        self._queued: set[Path] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._store_subscription: Subscription | None = None
        self.ready = asyncio.Event()
        self.loads = 0
        self.load_errors = 0
        self.reloads = 0

    # -- queries -----------------------------------------------------------------------------

    def machines(self) -> list[Machine]:
        return [e.machine for e in self.entries.values() if e.machine is not None]

    def sorted_entries(self) -> list[MachineEntry]:
        return sorted(self.entries.values(), key=lambda e: (e.name, str(e.directory)))

    def find(self, name: str) -> MachineEntry | None:
        """The entry of the machine called ``name`` (or whose directory is called ``name``)."""
        entry = self._by_name.get(name)
        if entry is not None:
            return entry
        for entry in self.sorted_entries():
            if entry.machine is None and entry.directory.name == name:
                return entry
        return None

    def _bind(self, entry: MachineEntry, machine: Machine) -> None:
        entry.machine = machine
        self._by_name.setdefault(machine.name, entry)

    def _unbind(self, entry: MachineEntry) -> None:
        if entry.machine is not None and self._by_name.get(entry.machine.name) is entry:
            del self._by_name[entry.machine.name]
        entry.machine = None

    def manifest_sha(self, name: str) -> str | None:
        entry = self.find(name)
        return entry.sha256 if entry is not None else None

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Load the store and follow it until cancelled; stops every machine on the way out."""
        if not self.store.is_dir():
            log.warning("machine store %s does not exist, creating it", self.store)
            self.store.mkdir(parents=True, mode=0o700, exist_ok=True)
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                monitor = self.node.file_monitor
                if monitor is not None:
                    self._store_subscription = monitor.watch_directory(
                        self.store, self._store_event
                    )
                for directory in self._list():
                    await self._reconcile(directory)
                # Ready means started: the machines' tasks take their first step first.
                await asyncio.sleep(0)
                self.ready.set()
                log.info("store %s: %d machines loaded", self.store, len(self.machines()))
                tasks.create_task(self._reconcile_loop(), name="store reconcile")
                tasks.create_task(self._rescan_loop(), name="store rescan")
        finally:
            self._tasks = None
            for handle in self._pending.values():
                handle.cancel()
            if self._store_subscription is not None:
                self._store_subscription.cancel()
            for entry in self.entries.values():
                if entry.subscription is not None:
                    entry.subscription.cancel()

    def rescan(self) -> None:
        """Check every machine directory now (SIGHUP)."""
        if self._tasks is not None:
            self._tasks.create_task(self._rescan(), name="store rescan (requested)")

    async def _rescan(self) -> None:
        """Find what changed without inotify telling us, without holding up the loop: list the
        store in a thread, compare each manifest's stamp (two stats), queue only what differs."""
        listed = set(await asyncio.to_thread(self._names))
        known: set[str] = set()
        # Names, not Paths, in the sets: hashing ten thousand Paths alone takes ~100 ms.
        for count, (directory, entry) in enumerate(list(self.entries.items())):
            name = directory.name
            known.add(name)
            if (
                name not in listed
                or entry.stamp is None
                or entry.problem is not None
                or _stamp(directory) != entry.stamp
            ):
                self._enqueue(directory)
            if count % 100 == 99:
                await asyncio.sleep(0)
        for name in sorted(listed - known):
            self._enqueue(self.store / name)

    def _list(self) -> list[Path]:
        store = self.store
        return [store / name for name in self._names()]

    def _names(self) -> list[str]:
        """The machine directories' names, sorted."""
        # scandir's entries know their type without a stat each: with thousands of machines
        # this is the difference between a few and a few hundred milliseconds of a busy loop.
        try:
            with os.scandir(self.store) as entries:
                return sorted(
                    entry.name for entry in entries if eligible_name(entry.name) and entry.is_dir()
                )
        except OSError as exc:
            log.error("cannot list machine store %s: %s", self.store, exc.strerror)
            return []

    async def _rescan_loop(self) -> None:
        while True:
            await self.node.clock.sleep(self.rescan_interval)
            if self._store_subscription is not None and not self._store_subscription.active:
                self._store_subscription.refresh()
            await self._rescan()

    async def _reconcile_loop(self) -> None:
        while True:
            directory = await self._queue.get()
            if directory is None:
                return
            self._queued.discard(directory)
            try:
                await self._reconcile(directory)
            except Exception:
                log.exception("reconciling %s failed", directory)
            # A rescan queues every machine and most need no await at all: give the machines'
            # own timers a turn between directories, or ticks would be late by the whole rescan.
            await asyncio.sleep(0)

    # -- change detection ----------------------------------------------------------------------

    def _store_event(self, name: str, mask: int) -> None:
        if not name:
            self.rescan()  # overflow, or the store itself changed
        elif eligible_name(name):
            self._settle(self.store / name)

    def _manifest_event(self, directory: Path) -> Callable[[str, int], None]:
        return lambda _name, _mask: self._settle(directory)

    def _settle(self, directory: Path) -> None:
        """Reconcile ``directory`` once changes to it stop for ``settle_delay``."""
        handle = self._pending.pop(directory, None)
        if handle is not None:
            handle.cancel()
        self._pending[directory] = self.node.clock.call_later(
            self.settle_delay, self._settled, directory
        )

    def _settled(self, directory: Path) -> None:
        self._pending.pop(directory, None)
        self._enqueue(directory)

    def _enqueue(self, directory: Path) -> None:
        if directory not in self._queued:
            self._queued.add(directory)
            self._queue.put_nowait(directory)

    # -- reconciling one directory -------------------------------------------------------------

    async def _reconcile(self, directory: Path) -> None:
        entry = self.entries.get(directory)
        if not directory.is_dir() or not eligible_name(directory.name):
            if entry is not None:
                await self._remove(entry, "does not exist anymore")
            return
        if entry is None:
            entry = MachineEntry(directory)
            self.entries[directory] = entry
            monitor = self.node.file_monitor
            if monitor is not None:
                entry.subscription = monitor.watch_file(
                    entry.manifest_path, self._manifest_event(directory)
                )
        elif entry.subscription is not None and not entry.subscription.active:
            entry.subscription.refresh()
        try:
            st = entry.manifest_path.stat()
            stamp = _stamp(directory, st)
        except FileNotFoundError:
            if entry.machine is not None:
                await self._stop(entry, "its machine.yaml is gone")
            entry.sha256 = entry.stamp = None
            entry.diagnostics = []
            entry.problem = (
                f"{entry.manifest_path}: cannot read {entry.manifest_path}: no such file"
            )
            return
        except OSError as exc:
            entry.problem = f"{entry.manifest_path}: cannot read: {exc.strerror}"
            return
        if 0 <= time.time() - st.st_mtime < self.settle_delay:
            self._settle(directory)  # still being written: look again once it settles
            return
        refusal = self._refusal(entry, stamp) if self.check_permissions else None
        if refusal is not None:
            if entry.machine is not None:
                await self._stop(entry, "its permissions became unsafe")
            if entry.problem != refusal:
                log.error("refusing machine in %s: %s", directory, refusal)
            entry.refused, entry.problem, entry.sha256, entry.stamp = True, refusal, None, stamp
            return
        if entry.refused:
            entry.refused, entry.problem = False, None  # safe again: load it
        elif stamp == entry.stamp:
            return
        entry.stamp = stamp
        try:
            # In a thread: a slow disk stalls no machine (and what is not a regular file is
            # refused without a read). A huge file is refused, not held.
            raw = await asyncio.to_thread(read_manifest_bytes, entry.manifest_path)
        except ManifestReadError as exc:
            # Not a manifest at all (a FIFO, a device, a link out of the directory): whatever
            # ran from the file that was there before stops, as when the file is removed.
            if entry.machine is not None:
                await self._stop(entry, "its machine.yaml is not a regular file in its directory")
            problem = f"{entry.manifest_path}: cannot read: {exc.strerror}"
            if entry.problem != problem:
                log.error("Could not load Autonomous Agent from %s: %s", directory, problem)
            entry.sha256, entry.diagnostics, entry.problem = None, [], problem
            return
        except OSError as exc:
            entry.problem = f"{entry.manifest_path}: cannot read: {exc.strerror}"
            return
        sha = hashlib.sha256(raw).hexdigest()
        if sha == entry.sha256:
            return  # touched, not changed: only machine.yaml's content matters
        if entry.machine is not None:
            self.reloads += 1
            log.warning(
                "Loaded machine %s does not match current manifest (%s), stopping",
                entry.machine.name,
                sha,
            )
            await self._stop(entry, "its manifest changed")
        entry.sha256 = sha
        await self._load(entry, raw, sha)

    def _refusal(self, entry: MachineEntry, stamp: Stamp | None) -> str | None:
        directory = entry.directory
        for path in (directory, directory / MANIFEST_NAME):
            problem = permission_problem(path, self._uid)
            if problem is not None and not (path.name == MANIFEST_NAME and not path.exists()):
                return problem
        if entry.unsafe_file is not None:
            # Refused for a program last time: while the manifest is the same and that program
            # still unsafe, the answer is known without loading the manifest again.
            path, context, program = entry.unsafe_file
            if stamp == entry.stamp and os.path.lexists(path):
                if program is None:
                    problem = permission_problem(path, self._uid)
                else:
                    found = command_problem(directory, program, self._uid)
                    problem = None if found is None else found[1]
                if problem is not None:
                    return context + problem
            entry.unsafe_file = None
        return None

    def _command_refusal(self, manifest: Manifest) -> tuple[Path, str, str, str | None] | None:
        """The first program or executable of a checked manifest that is unsafe to run (see
        the module docstring): the path at fault, what to say before its problem, the problem,
        and the program as the manifest names it (None for an executable)."""
        directory = manifest.directory
        for watcher, properties in zip(manifest.spec.watchers, manifest.properties, strict=False):
            key = COMMAND_PROPERTIES.get(watcher.type)
            command = getattr(properties, key, "") if key else ""
            # The cheap common cases first: no command, a bare name, an absolute path.
            if not isinstance(command, str) or "/" not in command or command.lstrip()[:1] == "/":
                continue
            program = static_program(command)
            if program is None:
                continue  # a template: what it runs is known only once rendered
            found = command_problem(directory, program, self._uid)
            if found is not None:
                return found[0], f"watcher {watcher.name!r} runs {program}: ", found[1], program
        found = executable_problem(directory, self._uid)
        if found is not None:
            return found[0], "executable in the machine directory: ", found[1], None
        return None

    async def _load(self, entry: MachineEntry, raw: bytes, sha: str) -> None:
        log.info("Attempting to load Autonomous Agent from %s", entry.directory)
        entry.problem = entry.unsafe_file = None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", "replace")
        manifest, diagnostics = check_manifest_text(
            text,
            str(entry.manifest_path),
            self.registry.kinds,
            directory=entry.directory,
            file=entry.manifest_path,
            sha256=sha,
        )
        entry.diagnostics = diagnostics
        entry.loaded_at = time.time()
        if manifest is None:
            self.load_errors += 1
            log.error("Could not load Autonomous Agent from %s:", entry.directory)
            for diagnostic in diagnostics:
                log.error("  %s", diagnostic)
            return
        for diagnostic in diagnostics:
            log.warning("  %s", diagnostic)
        if self.check_permissions:
            unsafe = self._command_refusal(manifest)
            if unsafe is not None:
                path, context, problem, program = unsafe
                refusal = context + problem
                log.error("refusing machine in %s: %s", entry.directory, refusal)
                entry.refused, entry.problem, entry.sha256 = True, refusal, None
                entry.unsafe_file = path, context, program
                return
        clash = self._by_name.get(manifest.name)
        if clash is not None and clash is not entry and clash.machine is not None:
            self.load_errors += 1
            entry.problem = f"machine name {manifest.name!r} is already used by {clash.directory}"
            log.error("Could not load Autonomous Agent from %s: %s", entry.directory, entry.problem)
            return
        initial = None
        resumed = self._resume.pop(manifest.name, None)
        if resumed is not None and resumed[1] == sha and resumed[0] in manifest.spec.states():
            initial = resumed[0]
        machine = Machine(
            manifest, self.node, watcher_factory=self.registry.create, initial_state=initial
        )
        try:
            machine.build_watchers()
        except Exception:
            self.load_errors += 1
            self._bind(entry, machine)
            return
        self._bind(entry, machine)
        self.group.add(machine)
        self.loads += 1
        log.warning(
            "Loaded Autonomous Agent %s version %s from %s (%s)%s",
            manifest.name,
            manifest.spec.version,
            entry.directory,
            sha,
            f", resuming in state {initial}" if initial else "",
        )
        if self._on_started is not None:
            self._on_started(machine, manifest)
        if self._tasks is not None:
            entry.task = self._tasks.create_task(machine.run(), name=f"machine {manifest.name}")

    async def _stop(self, entry: MachineEntry, why: str) -> None:
        machine, task = entry.machine, entry.task
        self._unbind(entry)
        entry.task = None
        if machine is None:
            return
        log.warning("Stopping machine %s: %s", machine.name, why)
        self.group.remove(machine)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _remove(self, entry: MachineEntry, why: str) -> None:
        name = entry.name
        log.warning("Machine %s does not exist anymore in %s, terminating", name, entry.directory)
        await self._stop(entry, why)
        if entry.subscription is not None:
            entry.subscription.cancel()
        self.entries.pop(entry.directory, None)
        if self._on_removed is not None:
            self._on_removed(name)
