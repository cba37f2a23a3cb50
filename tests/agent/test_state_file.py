"""The state database's file: deleted under a running agent (put back, nothing lost) and damaged
at start (refused with one clear message, kept as it is)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from machinery.agent.localkv import LocalKV
from machinery.agent.spool import EventSpool
from machinery.agent.state import DB_NAME, DamagedDatabase, StateDB, StateWriter
from machinery.core.clock import FakeClock
from machinery.core.kv import KVError
from tests.agent.test_api import LAMP, write
from tests.agent.test_state import transition

SIDE_FILES = ("-wal", "-shm")


def delete_database(state_dir: Path, *, side_files: bool) -> None:
    (state_dir / DB_NAME).unlink()
    if side_files:
        for suffix in SIDE_FILES:
            (state_dir / f"{DB_NAME}{suffix}").unlink(missing_ok=True)


def stored(state_dir: Path) -> tuple[list[str], dict[str, bytes], int, str]:
    """What a restarted agent would find: history, KV values, spool depth, integrity."""
    with sqlite3.connect(state_dir / DB_NAME) as db:
        history = [row[0] for row in db.execute("SELECT transition FROM history ORDER BY seq")]
        kv = dict(db.execute("SELECT key, value FROM kv"))
        spooled = int(db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
        check = str(db.execute("PRAGMA quick_check").fetchone()[0])
    return history, kv, spooled, check


@pytest.mark.parametrize("side_files", [True, False], ids=["db-wal-shm-deleted", "db-deleted"])
async def test_a_deleted_database_is_put_back_with_nothing_lost(
    tmp_path: Path, side_files: bool
) -> None:
    db = StateDB(tmp_path)
    writer = StateWriter(db)
    kv = LocalKV(db.path)
    spool = EventSpool(db.path, writer)
    await kv.create_bucket("b")
    for n in range(100):
        writer.notify(transition(n))
        await kv.put("b", f"before{n}", b"v%d" % n)
    spool.append("events", "id-1", b"payload")
    await asyncio.sleep(0)  # the spool stores what was appended in this loop turn
    assert writer.flush()
    original = os.stat(db.path).st_ino

    delete_database(tmp_path, side_files=side_files)
    # Written while the file is gone: kept in the open (deleted) file until it is put back.
    for n in range(100, 200):
        writer.notify(transition(n))
        await kv.put("b", f"deleted{n}", b"v%d" % n)
    assert writer.flush()
    assert not db.path.exists()

    assert writer.check_file().wait(10)
    assert writer.restores == 1
    assert os.stat(db.path).st_ino != original
    # Everyone follows the path to the restored file: these land there.
    for n in range(200, 300):
        writer.notify(transition(n))
        await kv.put("b", f"after{n}", b"v%d" % n)
    assert writer.flush()
    assert len(db.history("m", limit=1000)) == 300
    assert (await kv.get("b", "after250")) is not None
    assert len(await spool.read(0)) == 1

    spool.close()
    kv.close()
    writer.close()
    db.close()
    history, values, spooled, check = stored(tmp_path)
    assert history == [f"t{n}" for n in range(300)]
    assert len(values) == 300 and values["deleted150"] == b"v150"
    assert spooled == 1 and check == "ok"
    # A restart opens it as usual.
    again = StateDB(tmp_path)
    assert len(again.history("m", limit=1000)) == 300
    again.close()


async def test_writes_racing_the_restore_are_not_lost(tmp_path: Path) -> None:
    """Writers on other connections commit while the file is copied and swapped: none of their
    commits may land in the old (deleted) file after the copy."""
    db = StateDB(tmp_path)
    writer = StateWriter(db)
    kv = LocalKV(db.path)
    await kv.create_bucket("b")
    await kv.put("b", "first", b"1")
    stop = threading.Event()
    written: list[str] = []
    refused: list[int] = []

    async def keep_writing() -> None:
        n = 0
        while not stop.is_set():
            try:
                await kv.put("b", f"k{n}", b"x")
            except KVError as exc:
                # Deleted again before this connection followed the last restore: refused,
                # not lost; it works again once the file is back.
                assert "being put back" in str(exc)
                refused.append(n)
                await asyncio.sleep(0.001)
                continue
            written.append(f"k{n}")
            n += 1

    task = asyncio.create_task(keep_writing())
    while len(written) < 20 and not task.done():
        await asyncio.sleep(0.001)
    for round_ in range(3):
        delete_database(tmp_path, side_files=round_ % 2 == 0)
        before, refused_before = len(written), len(refused)
        # Writes land in the deleted file, or are refused when the writer had not yet followed
        # the last restore (it cannot, until the next one).
        while len(written) < before + 20 and len(refused) == refused_before and not task.done():
            await asyncio.sleep(0.001)
        assert await asyncio.to_thread(writer.check_file().wait, 10)
        assert writer.restores == round_ + 1
    stop.set()
    await task
    kv.close()
    writer.close()
    db.close()
    _, values, _, check = stored(tmp_path)
    assert check == "ok"
    assert sorted(values) == sorted(["first", *written])


async def test_the_file_is_checked_on_the_injectable_clock(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    writer = StateWriter(db)
    writer.notify(transition(0))
    assert writer.flush()
    clock = FakeClock()
    guard = asyncio.create_task(writer.guard_file(clock, interval=2.0))
    await clock.settle()
    delete_database(tmp_path, side_files=True)
    await clock.advance(1.9)
    assert writer.flush() and writer.restores == 0 and not db.path.exists()
    await clock.advance(0.2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while writer.restores == 0:
        assert loop.time() < deadline, "the database was not put back"
        await asyncio.sleep(0.01)
    assert db.path.exists()
    guard.cancel()
    writer.close()
    db.close()
    assert stored(tmp_path)[0] == ["t0"]


def test_a_replaced_database_is_kept_aside(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    writer = StateWriter(db)
    writer.notify(transition(0))
    assert writer.flush()
    stranger = tmp_path / "stranger.db"
    stranger.write_bytes(b"someone else's file")
    os.replace(stranger, db.path)
    assert writer.check_file().wait(10)
    [aside] = [
        kept
        for kept in tmp_path.glob(f"{DB_NAME}.replaced-*")
        if not kept.name.endswith(SIDE_FILES)
    ]
    assert aside.read_bytes() == b"someone else's file"
    writer.notify(transition(1))
    assert writer.flush()
    writer.close()
    db.close()
    assert stored(tmp_path)[0] == ["t0", "t1"]


def test_an_intact_database_is_left_alone(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    writer = StateWriter(db)
    original = os.stat(db.path).st_ino
    assert writer.check_file().wait(10)
    assert writer.restores == 0 and os.stat(db.path).st_ino == original
    writer.close()
    db.close()


async def test_the_agent_puts_its_deleted_database_back(agent_factory: Any) -> None:
    async with agent_factory() as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        await run.http.post("/api/v1/machines/lamp/transition", json={"transition": "switch_on"})
        path = run.agent.db.path
        delete_database(path.parent, side_files=True)
        await run.http.post("/api/v1/machines/lamp/transition", json={"transition": "switch_off"})
        # The agent checks every FILE_CHECK_INTERVAL (2 s) on its real clock.
        await run.wait(path.exists, timeout=30, what="the database put back")
        history = (await run.http.get("/api/v1/machines/lamp/history")).json()["history"]
        assert [h["transition"] for h in history] == ["switch_off", "switch_on"]
    assert stored(path.parent)[0] == ["switch_on", "switch_off"]


# -- a damaged database --------------------------------------------------------------------


def damaged_page(state_dir: Path) -> bytes:
    """A state database with a table page overwritten: it opens, but fails quick_check."""
    db = StateDB(state_dir)
    writer = StateWriter(db)
    for n in range(400):
        writer.notify(transition(n))
    assert writer.flush()
    writer.close()
    db.close()
    with sqlite3.connect(state_dir / DB_NAME) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
        pages = int(connection.execute("PRAGMA page_count").fetchone()[0])
    data = bytearray((state_dir / DB_NAME).read_bytes())
    last = (pages - 2) * page_size
    data[last + 8 : last + 200] = b"\x55" * 192
    (state_dir / DB_NAME).write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("damage", ["not-sqlite", "bad-page"])
def test_a_damaged_database_is_refused_and_kept(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    if damage == "not-sqlite":
        content = os.urandom(8192)
        (state / DB_NAME).write_bytes(content)
    else:
        content = damaged_page(state)
    with pytest.raises(DamagedDatabase) as raised:
        StateDB(state)
    message = str(raised.value)
    assert str(state / DB_NAME) in message and "Recovery" in message
    assert (state / DB_NAME).read_bytes() == content


def test_the_agent_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    state, store = tmp_path / "state", tmp_path / "store"
    state.mkdir()
    store.mkdir()
    content = os.urandom(8192)
    (state / DB_NAME).write_bytes(content)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "machinery"),
            *("agent", "--store", str(store), "--state-dir", str(state)),
            *("--listen", "127.0.0.1:0"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MACHINERY_CHECK_PERMISSIONS": "false"},
    )
    output = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1, output
    [line] = output
    assert "is damaged" in line and str(state / DB_NAME) in line and "Recovery" in line
    assert (state / DB_NAME).read_bytes() == content
