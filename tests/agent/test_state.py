"""The SQLite state: batched writes, history retention, resumable states."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from machinery.agent.state import StateDB, StateWriter
from machinery.core.notifications import TransitionNotification, WatcherStateNotification


def transition(n: int, machine: str = "m", when: float | None = None) -> TransitionNotification:
    return TransitionNotification(
        identity="node",
        id="inst",
        version="1.0.0",
        timestamp=int(when if when is not None else time.time()),
        machine=machine,
        transition=f"t{n}",
        from_state=f"s{n}",
        to_state=f"s{n + 1}",
    )


def test_history_is_written_in_batches_and_read_newest_first(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    writer = StateWriter(db, manifest_sha=lambda _: "sha")
    for n in range(500):
        writer.notify(transition(n))
    assert writer.flush()
    assert writer.batches < 500  # batched, not one transaction per event
    rows = db.history("m", limit=3)
    assert [r.transition for r in rows] == ["t499", "t498", "t497"]
    assert db.last_states() == {"m": ("s500", "sha")}
    writer.close()
    db.close()


def test_history_retention_by_count_and_age(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    writer = StateWriter(db, max_per_machine=10, max_age=3600)
    old = time.time() - 7200
    writer.notify(transition(0, machine="old", when=old))
    for n in range(1, 50):
        writer.notify(transition(n))
    writer.flush()
    writer._last_prune = 0  # prune at the next batch
    writer.notify(transition(50))
    writer.flush()
    assert len(db.history("m", limit=1000)) == 10
    assert db.history("old") == []
    writer.close()
    db.close()


def test_watcher_states_are_upserted(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    writer = StateWriter(db)
    for outcome in ("error", "success"):
        writer.notify(
            WatcherStateNotification(
                "exec", {"machine": "m", "name": "w", "previous_outcome": outcome}, ""
            )
        )
    writer.flush()
    assert db.watcher_states("m") == {
        "w": {"machine": "m", "name": "w", "previous_outcome": "success"}
    }
    writer.close()
    db.close()


def test_database_uses_wal_and_survives_reopening(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    writer = StateWriter(db)
    writer.notify(transition(1))
    writer.close()
    db.close()
    connection = sqlite3.connect(tmp_path / "machinery.db")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()
    again = StateDB(tmp_path)
    assert [r.transition for r in again.history("m")] == ["t1"]
    again.close()


def test_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    writer = StateWriter(db)

    def broken(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO no_such_table VALUES (1)")

    writer.submit(broken)
    writer.flush()
    assert writer.errors == 1 and "no_such_table" in (writer.last_error or "")
    writer.notify(transition(1))  # and it keeps working
    writer.flush()
    assert db.count("history") == 1
    writer.close()
    db.close()
