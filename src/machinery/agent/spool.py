"""The outgoing-event spool: every event for the broker is stored before it is published.

Events are appended on the event loop, inserted by the state writer in batches (one transaction
for whatever arrived in a loop turn), read back in order by the publisher, and deleted once the
broker has confirmed them. While the broker is away the spool grows, bounded by count, bytes and
age; beyond a bound the oldest events are dropped, counted and logged. A killed agent loses at
most the batch being written; after a restart the publisher resumes from the oldest stored event.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from machinery.agent.state import AfterCommit, StateWriter, TrackedConnection

__all__ = ["EventSpool", "SpooledEvent"]

log = logging.getLogger("machinery.spool")

_AGE_CHECK_EVERY = 5.0
_RECENT_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    seq: int
    subject: str
    msg_id: str
    payload: bytes


class EventSpool:
    """Durable, bounded FIFO of ``(subject, payload)`` messages for the broker."""

    def __init__(
        self,
        db_path: Path,
        writer: StateWriter,
        *,
        max_events: int = 1_000_000,
        max_bytes: int = 512 * 1024 * 1024,
        max_age: float = 7 * 86400.0,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._writer = writer
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._on_drop = on_drop
        self._reader = TrackedConnection(db_path)
        self._read_lock = threading.Lock()
        row = self._reader.connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool"
        ).fetchone()
        # Writer-thread bookkeeping (only touched from the writer thread after start).
        self._count = int(row[0])
        self._bytes = int(row[1])
        self._last_age_check = 0.0
        self.depth = self._count  # loop-side copy for status and metrics
        self.appended = 0
        self.dropped = 0
        self.acknowledged = 0
        self._pending: list[tuple[str, str, bytes, float]] = []
        self._scheduled = False
        self._available = asyncio.Event()
        if self._count:
            self._available.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recent: collections.deque[SpooledEvent] = collections.deque()
        # True while the memory copy starts at the oldest stored row (nothing was left over
        # from a previous run), so the first read may take it without asking the database.
        self._continuous = self._count == 0

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()

    # -- appending (event loop) ------------------------------------------------------------------

    def append(self, subject: str, msg_id: str, payload: bytes) -> None:
        """Queue a message; it is stored with everything else appended in this loop turn."""
        self._pending.append((subject, msg_id, payload, time.time()))
        self.appended += 1
        if self._scheduled:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._store()
            return
        self._loop.call_soon(self._store)
        self._scheduled = True

    def _store(self) -> None:
        self._scheduled = False
        rows, self._pending = self._pending, []
        if rows:
            self._writer.submit(self._insert_operation(rows))

    def _insert_operation(
        self, rows: list[tuple[str, str, bytes, float]]
    ) -> Callable[[sqlite3.Connection], AfterCommit | None]:
        def insert(db: sqlite3.Connection) -> AfterCommit | None:
            db.executemany(
                "INSERT INTO spool (subject, msg_id, payload, created) VALUES (?, ?, ?, ?)", rows
            )
            # One writer and AUTOINCREMENT: the rows of one executemany have consecutive seqs.
            last = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
            stored = [
                SpooledEvent(last - len(rows) + 1 + i, subject, msg_id, payload)
                for i, (subject, msg_id, payload, _) in enumerate(rows)
            ]
            self._count += len(rows)
            self._bytes += sum(len(payload) for _, _, payload, _ in rows)
            dropped = self._enforce_bounds(db)
            return lambda: self._committed(dropped, stored)

        return insert

    def _enforce_bounds(self, db: sqlite3.Connection) -> int:
        """Drop the oldest messages beyond the limits (writer thread, inside its transaction)."""
        dropped = 0
        now = time.time()
        if now - self._last_age_check > _AGE_CHECK_EVERY:
            self._last_age_check = now
            dropped += self._drop(db, "created < ?", (now - self.max_age,))
        if self._count > self.max_events:
            excess = self._count - self.max_events
            dropped += self._drop(
                db, "seq <= (SELECT seq FROM spool ORDER BY seq LIMIT 1 OFFSET ?)", (excess - 1,)
            )
        while self._bytes > self.max_bytes and self._count > 0:
            chunk = max(1, self._count // 100)
            dropped += self._drop(
                db, "seq <= (SELECT seq FROM spool ORDER BY seq LIMIT 1 OFFSET ?)", (chunk - 1,)
            )
        return dropped

    def _drop(self, db: sqlite3.Connection, where: str, params: tuple[object, ...]) -> int:
        row = db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool WHERE {where}", params
        ).fetchone()
        if not row[0]:
            return 0
        db.execute(f"DELETE FROM spool WHERE {where}", params)
        self._count -= int(row[0])
        self._bytes -= int(row[1])
        return int(row[0])

    def _committed(self, dropped: int, stored: list[SpooledEvent] | None = None) -> None:
        # Writer thread, after the commit: hand the news (and the durable rows) to the loop.
        depth = self._count
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._on_loop_committed, depth, dropped, stored)

    def _on_loop_committed(
        self, depth: int, dropped: int, stored: list[SpooledEvent] | None = None
    ) -> None:
        self.depth = depth
        if stored:
            # Durable rows, kept in memory so the publisher need not read them back; beyond a
            # bound (a long outage) it reads from the database instead.
            if dropped or len(self._recent) + len(stored) > _RECENT_LIMIT:
                self._recent.clear()
            else:
                self._recent.extend(stored)
        if dropped:
            self.dropped += dropped
            log.warning(
                "event spool full: dropped the %d oldest events (%d dropped so far)",
                dropped,
                self.dropped,
            )
            if self._on_drop is not None:
                self._on_drop(dropped)
        if depth:
            self._available.set()

    # -- reading and acknowledging (the publisher) -----------------------------------------------

    async def wait(self) -> None:
        """Wait until there may be something to publish."""
        await self._available.wait()

    async def read(self, after: int, limit: int = 1000) -> list[SpooledEvent]:
        """The oldest stored messages with ``seq > after``."""
        recent = self._recent
        while recent and recent[0].seq <= after:
            recent.popleft()
        if recent and (recent[0].seq == after + 1 or (after == 0 and self._continuous)):
            return [recent.popleft() for _ in range(min(limit, len(recent)))]
        self._continuous = False
        rows = await asyncio.to_thread(self._read, after, limit)
        if not rows:
            self._available.clear()
            # A commit may have landed between the read and the clear: look once more.
            rows = await asyncio.to_thread(self._read, after, limit)
            if rows:
                self._available.set()
        return rows

    def _read(self, after: int, limit: int) -> list[SpooledEvent]:
        with self._read_lock:
            return [
                SpooledEvent(*row)
                for row in self._reader.follow().execute(
                    "SELECT seq, subject, msg_id, payload FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                )
            ]

    def acknowledge(self, upto: int, count: int) -> None:
        """The broker has everything up to ``upto``: forget it."""
        self.acknowledged += count

        def delete(db: sqlite3.Connection) -> AfterCommit | None:
            row = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool WHERE seq <= ?",
                (upto,),
            ).fetchone()
            db.execute("DELETE FROM spool WHERE seq <= ?", (upto,))
            self._count -= int(row[0])
            self._bytes -= int(row[1])
            return lambda: self._committed(0)

        self._writer.submit(delete)
