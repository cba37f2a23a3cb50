"""The agent's own state, in one SQLite database (WAL) under its state directory.

Tables: transition ``history`` (pruned by count per machine and by age), each machine's last
state (``machine_state``, so machines can resume after a restart), each watcher's last published
state (``watcher_state``), the outgoing-event ``spool`` and the local key-value store (``kv``,
``kv_sequence``) used when no broker is configured.

Writes never block the event loop: :class:`StateWriter` queues them to a thread that commits
whatever has accumulated in one transaction. A killed process loses at most the batch being
written; the database itself is always consistent (SQLite's WAL journal). Reads run in a thread
too (``asyncio.to_thread``) on their own connection.

The file can be deleted under a running agent (a clean-up script, ``rm -rf`` of the wrong
directory): every connection keeps working on the unlinked file, and a restart would find
nothing. :meth:`StateWriter.check_file` notices (the path no longer names the open file) and puts
the database back under its path from the open connection (SQLite's backup API), while holding
the write lock so that no commit falls between the copy and the swap; every connection then
follows the path to the restored file (:class:`TrackedConnection`). A database that is damaged
at start is refused with one clear message (:class:`DamagedDatabase`): it is kept as it is for
inspection, and docs/agent.md "Recovery" says what to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machinery.core.atomic import fsync_directory
from machinery.core.clock import Clock
from machinery.core.notifications import (
    MachineEvent,
    TransitionNotification,
    WatcherStateNotification,
)

__all__ = [
    "DB_NAME",
    "FILE_CHECK_INTERVAL",
    "DamagedDatabase",
    "HistoryEntry",
    "StateDB",
    "StateWriter",
    "TrackedConnection",
]

DB_NAME = "machinery.db"
SCHEMA_VERSION = 1
# Seconds between checks that the state database is still at its path.
FILE_CHECK_INTERVAL = 2.0
# SQLite's files next to the database in WAL mode.
_SIDE_FILES = ("-wal", "-shm")

log = logging.getLogger("machinery.state")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    machine TEXT NOT NULL,
    instance TEXT NOT NULL,
    version TEXT NOT NULL,
    transition TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    timestamp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_machine ON history (machine, seq);
CREATE INDEX IF NOT EXISTS history_by_time ON history (timestamp);
CREATE TABLE IF NOT EXISTS machine_state (
    machine TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    instance TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS watcher_state (
    machine TEXT NOT NULL,
    watcher TEXT NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (machine, watcher)
);
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB,
    revision INTEGER NOT NULL,
    operation TEXT NOT NULL DEFAULT 'PUT',
    created REAL NOT NULL,
    expires REAL,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS kv_sequence (bucket TEXT PRIMARY KEY, revision INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recorded transition."""

    seq: int
    machine: str
    instance: str
    version: str
    transition: str
    from_state: str
    to_state: str
    timestamp: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "machine": self.machine,
            "id": self.instance,
            "version": self.version,
            "transition": self.transition,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "timestamp": self.timestamp,
        }


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """A connection with the agent's pragmas: WAL, NORMAL sync (safe against crashes of the
    process), a busy timeout so readers and the writer wait for each other briefly. Without
    ``create`` a missing file is an error instead of a new empty database."""
    target: str | Path = path
    if not create:
        target = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
    connection = sqlite3.connect(
        target, timeout=10, isolation_level=None, check_same_thread=False, uri=not create
    )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=10000")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


FileIdentity = tuple[int, int]


def file_identity(path: Path) -> FileIdentity | None:
    """``(st_dev, st_ino)`` of the file ``path`` names, None when nothing is there."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


# The file each database path was last put back as (by StateWriter._restore). While the path
# names nothing, a connection on this file is current (it is what the next restore copies), and
# one on an older file is stale: the file was deleted again before that connection followed.
_put_back: dict[str, FileIdentity] = {}


class TrackedConnection:
    """A connection to the state database that knows which file it has open, and follows the
    path to another file once the database is put back (see :meth:`StateWriter.check_file`).

    Not thread-safe: each holder uses it from one thread at a time, as with a connection.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connection, self.identity = self._open()

    def _open(self) -> tuple[sqlite3.Connection, FileIdentity | None]:
        # The file is the one the path named both before and after the open: the path only
        # ever changes by a rename, so the connection has that file.
        for _ in range(10):
            before = file_identity(self.path)
            try:
                # Never create: a path that names nothing (the database deleted, not yet put
                # back) must not become an empty database that writes would go to.
                connection = connect(self.path, create=False)
            except sqlite3.OperationalError:
                if file_identity(self.path) is not None:
                    raise
                raise sqlite3.OperationalError(
                    f"the state database {self.path} was deleted and is being put back"
                ) from None
            after = file_identity(self.path)
            if before == after:
                return connection, after
            connection.close()
        raise sqlite3.OperationalError(f"{self.path} keeps changing while it is opened")

    def replaced(self) -> bool:
        """The database is now another file than the open one (not when the path names
        nothing because the open file was deleted: it stays in use until it is put back)."""
        current = file_identity(self.path) or _put_back.get(os.path.abspath(self.path))
        return current is not None and current != self.identity

    def reopen(self) -> None:
        self.connection.close()
        self.connection, self.identity = self._open()

    def follow(self) -> sqlite3.Connection:
        """The connection, on the file the path names now."""
        if self.replaced():
            if file_identity(self.path) is None:
                # Put back, then deleted again before this connection followed: what it would
                # write here would be lost, and opening the path would create an empty file.
                raise sqlite3.OperationalError(
                    f"the state database {self.path} was deleted and is being put back"
                )
            self.reopen()
        return self.connection

    def begin_write(self) -> sqlite3.Connection:
        """``BEGIN IMMEDIATE`` on the file the path names. Checked once the write lock is held:
        the restore swaps the files while holding the old file's write lock, so a writer that
        waited for it must not commit to the old file afterwards."""
        while True:
            db = self.follow()
            db.execute("BEGIN IMMEDIATE")
            if not self.replaced():
                return db
            db.execute("ROLLBACK")

    def close(self) -> None:
        self.connection.close()


class DamagedDatabase(Exception):
    """The state database is not a SQLite database or fails its integrity check."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"the state database {path} is damaged ({problem}); it is left as it is for "
            f"inspection. To start with an empty state, stop the agent and move it aside with "
            f"its -wal and -shm files (mv {path} {path}.damaged), or salvage it with "
            f"'sqlite3 {path} .recover'; see docs/agent.md, \"Recovery\""
        )


class StateDB:
    """Opening, migrating and reading the state database."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / DB_NAME
        self._read_lock = threading.Lock()
        try:
            with contextlib.closing(connect(self.path)) as connection:
                # Checked before anything is written to it, so a damaged file stays as it was.
                problems = [row[0] for row in connection.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise DamagedDatabase(self.path, "; ".join(problems))
                connection.executescript(_SCHEMA)
                connection.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.DatabaseError as exc:
            # "file is not a database", "database disk image is malformed": damage, where an
            # OperationalError (permissions, a full disk) is not.
            if isinstance(exc, sqlite3.OperationalError):
                raise
            raise DamagedDatabase(self.path, str(exc)) from exc
        self._reader = TrackedConnection(self.path)

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            yield self._reader.follow()

    # -- queries (call from a thread: asyncio.to_thread) ------------------------------------

    def history(
        self, machine: str, *, limit: int = 100, before: int | None = None
    ) -> list[HistoryEntry]:
        """The newest ``limit`` transitions of ``machine``, newest first (``before``: a seq)."""
        sql = "SELECT seq, machine, instance, version, transition, from_state, to_state, timestamp FROM history WHERE machine = ?"
        params: list[Any] = [machine]
        if before is not None:
            sql += " AND seq < ?"
            params.append(before)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        with self.reading() as db:
            return [HistoryEntry(*row) for row in db.execute(sql, params)]

    def last_states(self) -> dict[str, tuple[str, str]]:
        """Each machine's last state and the manifest hash it had then."""
        with self.reading() as db:
            rows = db.execute("SELECT machine, state, manifest_sha256 FROM machine_state")
            return {machine: (state, sha) for machine, state, sha in rows}

    def watcher_states(self, machine: str) -> dict[str, dict[str, Any]]:
        """The last published state payload of each watcher of ``machine``."""
        with self.reading() as db:
            rows = db.execute(
                "SELECT watcher, payload FROM watcher_state WHERE machine = ?", (machine,)
            )
            return {watcher: json.loads(payload) for watcher, payload in rows}

    def count(self, table: str) -> int:
        if table not in ("history", "machine_state", "watcher_state", "spool", "kv"):
            raise ValueError(table)
        with self.reading() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# An operation runs inside the writer's transaction; it may return a hook to call once that
# transaction is committed (the spool uses it to learn which rows are durable).
AfterCommit = Callable[[], None]
Operation = Callable[[sqlite3.Connection], AfterCommit | None]

_UPSERT_STATE = (
    "INSERT INTO machine_state (machine, state, manifest_sha256, instance, updated) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (machine) DO UPDATE SET state = excluded.state, "
    "manifest_sha256 = excluded.manifest_sha256, instance = excluded.instance, "
    "updated = excluded.updated"
)


@dataclass(frozen=True, slots=True)
class _FileCheck:
    """Queued for the writer thread: is the database still at its path?"""

    done: threading.Event


class StateWriter:
    """Queues writes to a thread that commits them in batches (and puts the database back when
    it is deleted, see :meth:`check_file`)."""

    def __init__(
        self,
        db: StateDB,
        *,
        max_per_machine: int = 1000,
        max_age: float = 30 * 86400.0,
        manifest_sha: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self.db = db
        self.max_per_machine = max_per_machine
        self.max_age = max_age
        self._manifest_sha = manifest_sha
        self._queue: queue.SimpleQueue[Operation | threading.Event | _FileCheck | None] = (
            queue.SimpleQueue()
        )
        self._touched: set[str] = set()
        self._latest_states: dict[str, tuple[str, str, str, str, float]] = {}
        self._last_prune = 0.0
        self.batches = 0
        self.written = 0
        self.errors = 0
        self.last_error: str | None = None
        self.restores = 0
        # The identity of the file last reported missing or replaced: one log line per incident.
        self._reported_loss: tuple[FileIdentity, FileIdentity | None] | None = None
        self._thread = threading.Thread(
            target=self._run, name="machinery-state-writer", daemon=True
        )
        self._thread.start()

    # -- what the agent records -----------------------------------------------------------

    def notify(self, event: MachineEvent) -> None:
        """Record an event (the writer is one of the node's notifiers)."""
        if isinstance(event, TransitionNotification):
            self.submit(self._transition_writer(event))
        elif isinstance(event, WatcherStateNotification):
            payload = event.encoded_data()  # the bytes the event carries
            machine, name = event.machine, str(event.payload.get("name", ""))
            kind, updated = event.watcher_type, time.time()

            def write(db: sqlite3.Connection) -> None:
                db.execute(
                    "INSERT INTO watcher_state (machine, watcher, type, payload, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (machine, watcher) DO UPDATE SET type = excluded.type, "
                    "payload = excluded.payload, updated = excluded.updated",
                    (machine, name, kind, payload, updated),
                )

            self.submit(write)

    def _transition_writer(self, event: TransitionNotification) -> Operation:
        sha = self._manifest_sha(event.machine) or ""
        row = (
            event.machine,
            event.id,
            event.version,
            event.transition,
            event.from_state,
            event.to_state,
            float(event.timestamp),
        )

        state = (event.machine, event.to_state, sha, event.id, row[-1])

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO history (machine, instance, version, transition, from_state, to_state, timestamp) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            # Only a machine's last state matters: written once per batch, in the same
            # transaction (see _commit).
            self._latest_states[event.machine] = state
            self._touched.add(event.machine)

        return write

    def record_state(self, machine: str, state: str, manifest_sha: str, instance: str) -> None:
        """Remember a machine's state without a transition (when it starts)."""
        row = (machine, state, manifest_sha, instance, time.time())

        def write(db: sqlite3.Connection) -> None:
            self._latest_states[machine] = row

        self.submit(write)

    def forget_machine(self, machine: str) -> None:
        """Drop a removed machine's resumable state (its history stays until pruned)."""

        def write(db: sqlite3.Connection) -> None:
            self._latest_states.pop(machine, None)
            db.execute("DELETE FROM machine_state WHERE machine = ?", (machine,))

        self.submit(write)

    def submit(self, operation: Operation) -> None:
        self._queue.put(operation)

    # -- the thread -----------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed (True) or ``timeout`` passes."""
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def check_file(self) -> threading.Event:
        """Have the writer thread check that the path still names the open database, and put
        the database back there when it does not; the event is set once that is done."""
        check = _FileCheck(threading.Event())
        self._queue.put(check)
        return check.done

    async def guard_file(self, clock: Clock, interval: float = FILE_CHECK_INTERVAL) -> None:
        """Check the file every ``interval`` seconds (a task for the agent's lifetime)."""
        while True:
            await clock.sleep(interval)
            self.check_file()

    def _run(self) -> None:
        db = TrackedConnection(self.db.path)
        # A second connection on the same file: the backup reads through it while ``db`` holds
        # the write lock (SQLite cannot back up from the connection that is writing).
        snapshot = TrackedConnection(self.db.path)
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < 10_000:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                operations = [
                    item
                    for item in batch
                    if item is not None and not isinstance(item, (threading.Event, _FileCheck))
                ]
                self._write(db, operations)
                self._maybe_prune(db)
                if any(isinstance(item, _FileCheck) for item in batch):
                    self._check_file(db, snapshot)
                for item in batch:
                    if isinstance(item, threading.Event):
                        item.set()
                    elif isinstance(item, _FileCheck):
                        item.done.set()
                if None in batch:
                    return
        finally:
            db.close()
            snapshot.close()

    def _check_file(self, db: TrackedConnection, snapshot: TrackedConnection) -> None:
        path = self.db.path
        current = file_identity(path)
        if db.identity is None or current == db.identity:
            return
        incident = (db.identity, current)
        if self._reported_loss != incident:
            self._reported_loss = incident
            what = "deleted" if current is None else "replaced by another file"
            log.error(
                "the state database %s was %s while the agent runs: putting it back from the "
                "open database",
                path,
                what,
            )
        try:
            size = self._restore(db, snapshot, current)
        except (OSError, sqlite3.Error) as exc:
            # Everything is still in the open (deleted) file: the next check tries again.
            log.error("could not put the state database %s back: %s", path, exc)
            return
        self.restores += 1
        self._reported_loss = None
        log.warning("the state database %s is back (%d bytes, nothing lost)", path, size)

    def _restore(
        self, db: TrackedConnection, snapshot: TrackedConnection, current: FileIdentity | None
    ) -> int:
        """Copy the open database to a new file and rename it to the database's path, holding
        the old file's write lock throughout: every commit before is in the copy, and every
        writer after finds the new file (:meth:`TrackedConnection.begin_write`)."""
        path = self.db.path
        writer = db.connection
        writer.execute("BEGIN IMMEDIATE")
        try:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".restore", dir=path.parent
            )
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                with contextlib.closing(sqlite3.connect(tmp)) as copy:
                    snapshot.connection.backup(copy)
                # Closing the copy checkpointed and removed its own -wal: one file to move.
                os.chmod(tmp, 0o600)
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
                size = tmp.stat().st_size
                if current is not None:
                    # Someone put another file there: keep it (and its WAL) for inspection.
                    aside = path.with_name(f"{path.name}.replaced-{int(time.time())}")
                    os.link(path, aside)
                    for suffix in _SIDE_FILES:
                        with contextlib.suppress(FileNotFoundError):
                            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
                else:
                    # A -wal or -shm left at the path belongs to the deleted file (still open
                    # here): the restored file must not pick them up.
                    for suffix in _SIDE_FILES:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(f"{path}{suffix}")
                os.replace(tmp, path)
                restored = file_identity(path)
                if restored is not None:
                    _put_back[os.path.abspath(path)] = restored
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            fsync_directory(path.parent)
        finally:
            with contextlib.suppress(sqlite3.Error):
                writer.execute("ROLLBACK")
        db.reopen()
        snapshot.reopen()
        return size

    def _write(self, db: TrackedConnection, batch: list[Operation]) -> None:
        if not batch:
            return
        try:
            self._commit(db, batch)
            self.batches += 1
            self.written += len(batch)
            return
        except sqlite3.Error as exc:
            self.last_error = str(exc)
        # Something in the batch fails: write one by one, so only what fails is lost (a full
        # disk fails them all; the database itself stays consistent either way).
        lost = 0
        for operation in batch:
            try:
                self._commit(db, [operation])
                self.written += 1
            except sqlite3.Error as exc:
                self.last_error = str(exc)
                lost += 1
        if lost:
            self.errors += lost
            log.error("could not write %d state records: %s", lost, self.last_error)

    def _commit(self, tracked: TrackedConnection, operations: list[Operation]) -> None:
        hooks: list[AfterCommit] = []
        db = tracked.begin_write()
        try:
            for operation in operations:
                hook = operation(db)
                if hook is not None:
                    hooks.append(hook)
            if self._latest_states:
                db.executemany(_UPSERT_STATE, list(self._latest_states.values()))
                self._latest_states.clear()
            db.execute("COMMIT")
        except BaseException:
            self._latest_states.clear()
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("after-commit hook failed")

    def _maybe_prune(self, tracked: TrackedConnection) -> None:
        now = time.monotonic()
        if now - self._last_prune < 5.0 and len(self._touched) < 1000:
            return
        self._last_prune = now
        touched, self._touched = self._touched, set()
        db = tracked.connection
        try:
            db = tracked.begin_write()
            for machine in touched:
                db.execute(
                    "DELETE FROM history WHERE machine = ? AND seq <= (SELECT seq FROM history "
                    "WHERE machine = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (machine, machine, self.max_per_machine),
                )
            db.execute("DELETE FROM history WHERE timestamp < ?", (time.time() - self.max_age,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            log.error("could not prune history: %s", exc)
