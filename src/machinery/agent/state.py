"""The agent's own state, in one SQLite database (WAL) under its state directory.

Tables: transition ``history`` (pruned by count per machine and by age), each machine's last
state (``machine_state``, so machines can resume after a restart), each watcher's last published
state (``watcher_state``), the outgoing-event ``spool`` and the local key-value store (``kv``,
``kv_sequence``) used when no broker is configured.

Writes never block the event loop: :class:`StateWriter` queues them to a thread that commits
whatever has accumulated in one transaction. A killed process loses at most the batch being
written; the database itself is always consistent (SQLite's WAL journal). Reads run in a thread
too (``asyncio.to_thread``) on their own connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machinery.core.notifications import (
    MachineEvent,
    TransitionNotification,
    WatcherStateNotification,
)

__all__ = ["DB_NAME", "HistoryEntry", "StateDB", "StateWriter"]

DB_NAME = "machinery.db"
SCHEMA_VERSION = 1

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


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the agent's pragmas: WAL, NORMAL sync (safe against crashes of the
    process), a busy timeout so readers and the writer wait for each other briefly."""
    connection = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=10000")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


class StateDB:
    """Opening, migrating and reading the state database."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / DB_NAME
        self._read_lock = threading.Lock()
        with contextlib.closing(connect(self.path)) as connection:
            connection.executescript(_SCHEMA)
            connection.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            check = connection.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                log.error("state database %s failed its integrity check: %s", self.path, check)
        self._reader = connect(self.path)

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            yield self._reader

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


class StateWriter:
    """Queues writes to a thread that commits them in batches."""

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
        self._queue: queue.SimpleQueue[Operation | threading.Event | None] = queue.SimpleQueue()
        self._touched: set[str] = set()
        self._latest_states: dict[str, tuple[str, str, str, str, float]] = {}
        self._last_prune = 0.0
        self.batches = 0
        self.written = 0
        self.errors = 0
        self.last_error: str | None = None
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

    def _run(self) -> None:
        db = connect(self.db.path)
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
                    if item is not None and not isinstance(item, threading.Event)
                ]
                self._write(db, operations)
                self._maybe_prune(db)
                for item in batch:
                    if isinstance(item, threading.Event):
                        item.set()
                if None in batch:
                    return
        finally:
            db.close()

    def _write(self, db: sqlite3.Connection, batch: list[Operation]) -> None:
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

    def _commit(self, db: sqlite3.Connection, operations: list[Operation]) -> None:
        hooks: list[AfterCommit] = []
        db.execute("BEGIN IMMEDIATE")
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

    def _maybe_prune(self, db: sqlite3.Connection) -> None:
        now = time.monotonic()
        if now - self._last_prune < 5.0 and len(self._touched) < 1000:
            return
        self._last_prune = now
        touched, self._touched = self._touched, set()
        try:
            db.execute("BEGIN IMMEDIATE")
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
