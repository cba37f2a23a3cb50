"""The local key-value store: :class:`~machinery.core.kv.KVStore` in the agent's SQLite database.

Without a broker the agent provides ``LocalKV(db_path)`` as the node service ``"kv"``. It keeps
what the kv watcher and ``machinery kv`` need from NATS JetStream key-value, on one node:

- buckets exist once created (``create_bucket``); the rows of ``kv_sequence`` are the bucket
  list, each holding the bucket's last revision. A bucket's settings (``ttl``) are kept in the
  ``meta`` table under ``kv.bucket.<name>``.
- every put and delete takes the bucket's next revision, as a JetStream stream sequence does;
  one revision per key is kept (history 1): a delete leaves a delete marker row.
- ``watch`` yields the latest entry of every matching key (delete markers included), then each
  change as it is committed. The agent process is the only writer (the CLI and the API go
  through it), so changes are announced in-process after each commit, never polled.

Names follow NATS rules (:func:`check_bucket`, :func:`check_key`) so a manifest works the same on
either store. Writes run in a thread on their own SQLite connection, one at a time; reads in a
thread on another connection. The event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from machinery.agent.state import TrackedConnection
from machinery.core.kv import BucketNotFound, KVEntry, KVError, KVOperation, KVRevisionMismatch

__all__ = [
    "BUCKET_PATTERN",
    "KEY_PATTERN",
    "WATCH_PATTERN",
    "LocalKV",
    "check_bucket",
    "check_key",
    "check_watch_pattern",
    "key_matches",
]

# NATS JetStream's rules: bucket names are stream-name safe, keys are subject tokens.
BUCKET_PATTERN = r"^[A-Za-z0-9_-]+$"
KEY_PATTERN = r"^[-/_=A-Za-z0-9]+(\.[-/_=A-Za-z0-9]+)*$"
WATCH_PATTERN = r"^([-/_=A-Za-z0-9]+|\*)(\.([-/_=A-Za-z0-9]+|\*))*(\.>)?$|^>$"
_BUCKET = re.compile(BUCKET_PATTERN)
_KEY = re.compile(KEY_PATTERN)
_WATCH = re.compile(WATCH_PATTERN)
MAX_BUCKET_LENGTH = 128
MAX_KEY_LENGTH = 1024
# A watcher that falls this far behind is ended with an error rather than growing forever.
_WATCH_QUEUE = 10_000
_META_PREFIX = "kv.bucket."

T = TypeVar("T")


def check_bucket(bucket: str) -> None:
    """Raise KVError unless ``bucket`` is a valid bucket name (letters, digits, ``_``, ``-``)."""
    if not bucket or len(bucket) > MAX_BUCKET_LENGTH or not _BUCKET.match(bucket):
        raise KVError(f"invalid bucket name {bucket!r}: use letters, digits, _ and -")


def check_key(key: str) -> None:
    """Raise KVError unless ``key`` is a valid key (dot-separated tokens of letters, digits and
    ``-/_=``)."""
    if not key or len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
        raise KVError(f"invalid key {key!r}: use letters, digits and -/_= in dot-separated tokens")


def check_watch_pattern(pattern: str) -> None:
    """Raise KVError unless ``pattern`` is a key or a NATS wildcard pattern (``*``, ``>``)."""
    if not pattern or len(pattern) > MAX_KEY_LENGTH or not _WATCH.match(pattern):
        raise KVError(f"invalid key pattern {pattern!r}")


def key_matches(pattern: str, key: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more tokens."""
    want = pattern.split(".")
    have = key.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(have) == len(want)


@dataclass(eq=False)
class _Subscription:
    bucket: str
    pattern: str
    queue: asyncio.Queue[KVEntry] = field(
        default_factory=lambda: asyncio.Queue(maxsize=_WATCH_QUEUE)
    )
    overflowed: bool = False


class LocalKV:
    """Key-value buckets in the agent's SQLite database (tables ``kv`` and ``kv_sequence``,
    created by :class:`machinery.agent.state.StateDB`)."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        self._reader: TrackedConnection | None = None
        self._writer: TrackedConnection | None = None
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # Serialises writes and their announcements, so watchers see revisions in order.
        self._commit_order = asyncio.Lock()
        self._subscriptions: set[_Subscription] = set()

    def close(self) -> None:
        """Close the database connections (they reopen on the next use)."""
        for lock, name in ((self._read_lock, "_reader"), (self._write_lock, "_writer")):
            with lock:
                connection = getattr(self, name)
                setattr(self, name, None)
                if connection is not None:
                    connection.close()

    # -- the KVStore interface --------------------------------------------------------------

    async def get(self, bucket: str, key: str) -> KVEntry | None:
        check_bucket(bucket)
        check_key(key)
        return await self._read(lambda db: self._get(db, bucket, key))

    async def put(self, bucket: str, key: str, value: bytes) -> int:
        return await self._write(bucket, key, bytes(value), KVOperation.PUT, None)

    async def create(self, bucket: str, key: str, value: bytes) -> int:
        return await self._write(bucket, key, bytes(value), KVOperation.PUT, "absent")

    async def update(self, bucket: str, key: str, value: bytes, last_revision: int) -> int:
        return await self._write(bucket, key, bytes(value), KVOperation.PUT, last_revision)

    async def delete(self, bucket: str, key: str) -> None:
        await self._write(bucket, key, b"", KVOperation.DELETE, None)

    async def keys(self, bucket: str) -> list[str]:
        check_bucket(bucket)

        def read(db: sqlite3.Connection) -> list[str]:
            self._require_bucket(db, bucket)
            rows = db.execute(
                "SELECT key FROM kv WHERE bucket = ? AND operation = 'PUT' "
                "AND (expires IS NULL OR expires > ?) ORDER BY key",
                (bucket, time.time()),
            )
            return [row[0] for row in rows]

        return await self._read(read)

    async def watch(self, bucket: str, key: str = ">") -> AsyncIterator[KVEntry]:
        check_bucket(bucket)
        check_watch_pattern(key)
        subscription = _Subscription(bucket, key)
        # Subscribe before reading the current values: a change committed meanwhile is either
        # in the snapshot or queued (or both, and then skipped by its revision).
        self._subscriptions.add(subscription)
        try:
            revisions, revision = await self._read(lambda db: self._snapshot(db, bucket, key))
            # Values are read one at a time as the watcher takes them: a watcher that does not
            # read holds one value, not the whole bucket.
            for name, at in revisions:
                current = await self._read(
                    functools.partial(self._entry_at, bucket=bucket, key=name, revision=at)
                )
                if current is not None:
                    yield current
                del current
            while True:
                if subscription.overflowed:
                    raise KVError(f"watch of {bucket}.{key} fell too far behind")
                entry = await subscription.queue.get()
                if entry.revision > revision:
                    yield entry
        finally:
            self._subscriptions.discard(subscription)

    async def create_bucket(
        self, bucket: str, *, history: int = 1, ttl: float | None = None
    ) -> None:
        """Create ``bucket`` (nothing happens if it exists). Only one revision per key is kept
        whatever ``history`` says; ``ttl`` (seconds) makes values expire after they are put."""
        check_bucket(bucket)
        if history < 1 or history > 64:
            raise KVError("history must be between 1 and 64")
        if ttl is not None and ttl < 0:
            raise KVError("ttl cannot be negative")
        settings = json.dumps({"history": history, "ttl": ttl or None})

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR IGNORE INTO kv_sequence (bucket, revision) VALUES (?, 0)", (bucket,)
            )
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                (_META_PREFIX + bucket, settings),
            )

        await self._transaction(write)

    async def buckets(self) -> list[str]:
        def read(db: sqlite3.Connection) -> list[str]:
            return [row[0] for row in db.execute("SELECT bucket FROM kv_sequence ORDER BY bucket")]

        return await self._read(read)

    # -- reading ----------------------------------------------------------------------------

    async def _read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._read_lock:

                def read() -> T:
                    if self._reader is None:
                        self._reader = TrackedConnection(self.path)
                    return operation(self._reader.follow())

                return _sqlite(read)

        return await asyncio.to_thread(run)

    @staticmethod
    def _require_bucket(db: sqlite3.Connection, bucket: str) -> int:
        row = db.execute("SELECT revision FROM kv_sequence WHERE bucket = ?", (bucket,)).fetchone()
        if row is None:
            raise BucketNotFound(f"bucket {bucket} not found")
        return int(row[0])

    def _get(self, db: sqlite3.Connection, bucket: str, key: str) -> KVEntry | None:
        self._require_bucket(db, bucket)
        row = db.execute(
            "SELECT value, revision, operation, created, expires FROM kv "
            "WHERE bucket = ? AND key = ?",
            (bucket, key),
        ).fetchone()
        if row is None:
            return None
        entry = _entry(bucket, key, *row[:4])
        if entry.deleted or _expired(row[4]):
            return None
        return entry

    def _snapshot(
        self, db: sqlite3.Connection, bucket: str, pattern: str
    ) -> tuple[list[tuple[str, int]], int]:
        """The keys matching ``pattern`` with their revisions, and the bucket's revision."""
        # One read transaction, so the keys and the revision they are at agree.
        db.execute("BEGIN")
        try:
            revision = self._require_bucket(db, bucket)
            rows = db.execute(
                "SELECT key, revision, operation, expires FROM kv "
                "WHERE bucket = ? ORDER BY revision",
                (bucket,),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        revisions = [
            (key, int(rev))
            for key, rev, op, expires in rows
            if key_matches(pattern, key) and not (op == KVOperation.PUT and _expired(expires))
        ]
        return revisions, revision

    @staticmethod
    def _entry_at(db: sqlite3.Connection, bucket: str, key: str, revision: int) -> KVEntry | None:
        """The key's entry if it is still at ``revision``: a later change is in the watch's
        queue, so it is left to that."""
        row = db.execute(
            "SELECT value, revision, operation, created FROM kv "
            "WHERE bucket = ? AND key = ? AND revision = ?",
            (bucket, key, revision),
        ).fetchone()
        return None if row is None else _entry(bucket, key, *row)

    # -- writing ----------------------------------------------------------------------------

    async def _transaction(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._write_lock:

                def commit() -> T:
                    if self._writer is None:
                        self._writer = TrackedConnection(self.path)
                    # On the file the path names, also after the database was put back.
                    db = self._writer.begin_write()
                    try:
                        result = operation(db)
                        db.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                        raise
                    return result

                return _sqlite(commit)

        return await asyncio.to_thread(run)

    async def _write(
        self,
        bucket: str,
        key: str,
        value: bytes,
        operation: KVOperation,
        expect: int | str | None,
    ) -> int:
        """Store one revision. ``expect``: None (unconditional), ``"absent"`` (create) or the
        revision the key must be at (update)."""
        check_bucket(bucket)
        check_key(key)

        def write(db: sqlite3.Connection) -> KVEntry:
            revision = self._require_bucket(db, bucket) + 1
            row = db.execute(
                "SELECT revision, operation, expires FROM kv WHERE bucket = ? AND key = ?",
                (bucket, key),
            ).fetchone()
            live = row is not None and row[1] == KVOperation.PUT and not _expired(row[2])
            if expect == "absent" and live:
                raise KVRevisionMismatch(f"key {key} already exists in bucket {bucket}")
            if isinstance(expect, int):
                current = 0 if row is None or _expired(row[2]) else int(row[0])
                if current != expect:
                    raise KVRevisionMismatch(f"key {key} is at revision {current}, not {expect}")
            now = time.time()
            expires = None
            if operation is KVOperation.PUT:
                ttl = self._bucket_ttl(db, bucket)
                expires = now + ttl if ttl else None
            stored = value if operation is KVOperation.PUT else None
            db.execute(
                "INSERT INTO kv (bucket, key, value, revision, operation, created, expires) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, key) DO UPDATE SET "
                "value = excluded.value, revision = excluded.revision, "
                "operation = excluded.operation, created = excluded.created, "
                "expires = excluded.expires",
                (bucket, key, stored, revision, operation.value, now, expires),
            )
            db.execute("UPDATE kv_sequence SET revision = ? WHERE bucket = ?", (revision, bucket))
            return KVEntry(
                bucket, key, value if stored is not None else b"", revision, operation, now
            )

        async with self._commit_order:
            entry = await self._transaction(write)
            self._announce(entry)
        return entry.revision

    @staticmethod
    def _bucket_ttl(db: sqlite3.Connection, bucket: str) -> float | None:
        row = db.execute(
            "SELECT value FROM meta WHERE key = ?", (_META_PREFIX + bucket,)
        ).fetchone()
        if row is None:
            return None
        try:
            ttl = json.loads(row[0]).get("ttl")
        except (ValueError, AttributeError):
            return None
        return float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else None

    def _announce(self, entry: KVEntry) -> None:
        for subscription in list(self._subscriptions):
            if subscription.bucket != entry.bucket or not key_matches(
                subscription.pattern, entry.key
            ):
                continue
            try:
                subscription.queue.put_nowait(entry)
            except asyncio.QueueFull:
                subscription.overflowed = True


def _entry(
    bucket: str, key: str, value: bytes | None, revision: int, operation: str, created: float
) -> KVEntry:
    return KVEntry(
        bucket=bucket,
        key=key,
        value=bytes(value) if value is not None else b"",
        revision=int(revision),
        operation=KVOperation(operation),
        created=float(created),
    )


def _expired(expires: Any) -> bool:
    return expires is not None and float(expires) <= time.time()


def _sqlite(operation: Callable[[], T]) -> T:
    """Run ``operation``, reporting database failures as KVError."""
    try:
        return operation()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise KVError(
                "the key-value tables are missing from the agent database (open it with "
                "machinery.agent.state.StateDB first)"
            ) from exc
        raise KVError(f"key-value database error: {exc}") from exc
    except sqlite3.Error as exc:
        raise KVError(f"key-value database error: {exc}") from exc
