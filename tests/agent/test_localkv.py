"""What only the local store does: SQLite persistence, the bucket registry, TTLs, its limits.
The KVStore contract both stores share is in tests/nats/test_kv.py."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from machinery.agent import localkv
from machinery.agent.localkv import LocalKV
from machinery.agent.state import StateDB
from machinery.core.kv import KVError
from tests.support import assert_took


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[StateDB]:
    state = StateDB(tmp_path / "state")
    yield state
    state.close()


async def test_values_survive_a_restart(db: StateDB) -> None:
    store = LocalKV(db.path)
    await store.create_bucket("CFG")
    await store.put("CFG", "a", b"1")
    await store.put("CFG", "a", b"2")
    await store.delete("CFG", "gone")
    store.close()
    again = LocalKV(db.path)
    try:
        entry = await again.get("CFG", "a")
        assert entry is not None and (entry.value, entry.revision) == (b"2", 2)
        assert await again.buckets() == ["CFG"]
        # Revisions continue where they were.
        assert await again.put("CFG", "b", b"x") == 4
    finally:
        again.close()


async def test_the_tables_hold_one_row_per_key_and_bucket(db: StateDB) -> None:
    store = LocalKV(db.path)
    await store.create_bucket("CFG", ttl=60)
    for i in range(5):
        await store.put("CFG", "k", str(i).encode())
    await store.delete("CFG", "k")
    store.close()
    with sqlite3.connect(db.path) as raw:
        rows = raw.execute("SELECT bucket, key, value, revision, operation FROM kv").fetchall()
        assert rows == [("CFG", "k", None, 6, "DEL")]
        assert raw.execute("SELECT bucket, revision FROM kv_sequence").fetchall() == [("CFG", 6)]
        settings = raw.execute("SELECT value FROM meta WHERE key = 'kv.bucket.CFG'").fetchone()
        assert settings == ('{"history": 1, "ttl": 60}',)
    assert db.count("kv") == 1


async def test_values_expire_after_the_bucket_ttl(db: StateDB) -> None:
    store = LocalKV(db.path)
    await store.create_bucket("SHORT", ttl=0.2)
    await store.create_bucket("LONG")
    await store.put("SHORT", "k", b"v")
    await store.put("LONG", "k", b"v")
    assert (await store.get("SHORT", "k")) is not None
    started = time.monotonic()
    while await store.get("SHORT", "k") is not None and time.monotonic() - started < 10:
        await asyncio.sleep(0.02)
    assert_took(time.monotonic() - started, 5.0, "a local KV value expiring (ttl 0.2 s)")
    assert await store.keys("SHORT") == []
    assert await store.get("LONG", "k") is not None
    # An expired key can be created again, and an update must start from nothing.
    assert await store.create("SHORT", "k", b"again") > 0
    store.close()


async def test_bucket_settings_are_checked(db: StateDB) -> None:
    store = LocalKV(db.path)
    with pytest.raises(KVError, match="history"):
        await store.create_bucket("CFG", history=65)
    with pytest.raises(KVError, match="ttl"):
        await store.create_bucket("CFG", ttl=-1)
    store.close()


async def test_missing_tables_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    store = LocalKV(path)
    with pytest.raises(KVError, match="tables are missing"):
        await store.buckets()
    store.close()


async def test_a_watcher_that_falls_behind_is_ended(
    db: StateDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localkv, "_WATCH_QUEUE", 3)
    store = LocalKV(db.path)
    await store.create_bucket("CFG")
    watch = store.watch("CFG")
    first = asyncio.ensure_future(anext(watch))
    await store.put("CFG", "k", b"0")
    assert (await asyncio.wait_for(first, 5)).value == b"0"
    for i in range(1, 10):  # nobody reads meanwhile
        await store.put("CFG", "k", str(i).encode())
    entries = []
    with pytest.raises(KVError, match="fell too far behind"):
        while True:
            entries.append(await asyncio.wait_for(anext(watch), 5))
    assert len(entries) <= 3
    store.close()


async def test_watchers_are_notified_in_process_without_polling(db: StateDB) -> None:
    store = LocalKV(db.path)
    await store.create_bucket("CFG")
    watch = store.watch("CFG", "k")
    got = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.05)
    assert not got.done()
    started = time.monotonic()
    await store.put("CFG", "k", b"now")
    entry = await asyncio.wait_for(got, 5)
    assert entry.value == b"now"
    assert_took(time.monotonic() - started, 0.5, "a local KV put reaching an in-process watch")
    await watch.aclose()  # type: ignore[attr-defined]
    assert not store._subscriptions  # closing the watch unsubscribes
    store.close()


async def test_the_event_loop_stays_free_during_writes(db: StateDB) -> None:
    store = LocalKV(db.path)
    await store.create_bucket("CFG")
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    await asyncio.gather(*(store.put("CFG", f"k{i}", b"x" * 1000) for i in range(200)))
    stop = True
    await task
    assert ticks > 200  # the loop ran while the writes were in their thread
    assert len(await store.keys("CFG")) == 200
    store.close()
