"""The KVStore contract, run against both stores (LocalKV on SQLite, NatsKV on a real
nats-server), then what only the NATS store does: broker outages, direct clients, buckets made by
other tools. LocalKV-only behaviour is in tests/agent/test_localkv.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from machinery.agent.config import NatsSettings
from machinery.agent.localkv import LocalKV, key_matches
from machinery.agent.state import StateDB
from machinery.core.kv import (
    BucketNotFound,
    KVEntry,
    KVError,
    KVOperation,
    KVRevisionMismatch,
    KVStore,
)
from machinery.nats.connection import BrokerConnection
from machinery.nats.kv import NatsKV
from tests.natsserver import NatsServer
from tests.support import assert_took, wait_until


@contextlib.asynccontextmanager
async def broker_for(server: NatsServer) -> AsyncIterator[BrokerConnection]:
    """A running BrokerConnection to ``server``, as the agent has one."""
    broker = BrokerConnection(NatsSettings(servers=[server.url]), name="test")
    task = asyncio.ensure_future(broker.run())
    try:
        assert await broker.wait_connected(10)
        yield broker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(params=["local", "nats"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KVStore]:
    if request.param == "local":
        db = StateDB(tmp_path / "state")
        local = LocalKV(db.path)
        yield local
        local.close()
        db.close()
        return
    server: NatsServer = request.getfixturevalue("nats_server")
    async with broker_for(server) as broker:
        yield NatsKV(broker, timeout=2.0)


async def next_entry(iterator: AsyncIterator[KVEntry], timeout: float = 5.0) -> KVEntry:
    return await asyncio.wait_for(anext(iterator), timeout)


# -- the contract ------------------------------------------------------------------------------


async def test_buckets_exist_once_created(store: KVStore) -> None:
    assert "CFG" not in await store.buckets()
    with pytest.raises(BucketNotFound):
        await store.get("CFG", "a")
    with pytest.raises(BucketNotFound):
        await store.put("CFG", "a", b"1")
    with pytest.raises(BucketNotFound):
        await store.keys("CFG")
    await store.create_bucket("CFG")
    await store.create_bucket("CFG")  # creating it again changes nothing
    await store.create_bucket("OTHER")
    buckets = await store.buckets()
    assert {"CFG", "OTHER"} <= set(buckets)
    assert buckets == sorted(buckets)
    assert await store.keys("CFG") == []


async def test_put_get_delete_and_revisions(store: KVStore) -> None:
    await store.create_bucket("CFG")
    assert await store.get("CFG", "mode") is None
    first = await store.put("CFG", "mode", b"on")
    entry = await store.get("CFG", "mode")
    assert entry is not None
    assert (entry.bucket, entry.key, entry.value, entry.revision) == ("CFG", "mode", b"on", first)
    assert entry.operation is KVOperation.PUT and not entry.deleted
    assert entry.created > 1_600_000_000
    second = await store.put("CFG", "other.key", b"x")
    third = await store.put("CFG", "mode", b"off")
    # Revisions are per bucket and grow with every change, whatever the key.
    assert first < second < third
    assert (await store.get("CFG", "mode")).value == b"off"  # type: ignore[union-attr]
    assert await store.keys("CFG") == ["mode", "other.key"]
    await store.delete("CFG", "mode")
    assert await store.get("CFG", "mode") is None
    assert await store.keys("CFG") == ["other.key"]
    fourth = await store.put("CFG", "mode", b"back")
    assert fourth > third + 1  # the delete took a revision too


async def test_values_are_bytes(store: KVStore) -> None:
    await store.create_bucket("BIN")
    blob = bytes(range(256))
    await store.put("BIN", "blob", blob)
    await store.put("BIN", "empty", b"")
    assert (await store.get("BIN", "blob")).value == blob  # type: ignore[union-attr]
    empty = await store.get("BIN", "empty")
    assert empty is not None and empty.value == b""


async def test_revisions_are_per_bucket(store: KVStore) -> None:
    await store.create_bucket("A")
    await store.create_bucket("B")
    await store.put("A", "k", b"1")
    await store.put("A", "k", b"2")
    assert await store.put("B", "k", b"1") == 1
    assert await store.put("A", "k", b"3") == 3


async def test_create_only_when_absent(store: KVStore) -> None:
    await store.create_bucket("CFG")
    revision = await store.create("CFG", "lock", b"me")
    with pytest.raises(KVRevisionMismatch):
        await store.create("CFG", "lock", b"you")
    await store.delete("CFG", "lock")
    # A deleted key can be created again.
    assert await store.create("CFG", "lock", b"you") > revision
    assert (await store.get("CFG", "lock")).value == b"you"  # type: ignore[union-attr]


async def test_update_is_compare_and_set(store: KVStore) -> None:
    await store.create_bucket("CFG")
    revision = await store.put("CFG", "counter", b"1")
    newer = await store.update("CFG", "counter", b"2", revision)
    assert newer > revision
    with pytest.raises(KVRevisionMismatch):
        await store.update("CFG", "counter", b"3", revision)
    assert (await store.get("CFG", "counter")).value == b"2"  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["", ".lead", "trail.", "a..b", "sp ace", "star*", "gt>", "ü"])
async def test_invalid_keys_are_refused(store: KVStore, key: str) -> None:
    await store.create_bucket("CFG")
    with pytest.raises(KVError):
        await store.put("CFG", key, b"x")
    with pytest.raises(KVError):
        await store.get("CFG", key)


@pytest.mark.parametrize("bucket", ["", "a.b", "with space", "star*"])
async def test_invalid_bucket_names_are_refused(store: KVStore, bucket: str) -> None:
    with pytest.raises(KVError):
        await store.create_bucket(bucket)


async def test_keys_may_hold_slashes_equals_and_dots(store: KVStore) -> None:
    await store.create_bucket("CFG")
    for key in ("a/b", "x=y", "web.01.port", "-_-"):
        await store.put("CFG", key, key.encode())
        assert (await store.get("CFG", key)).value == key.encode()  # type: ignore[union-attr]


async def test_watch_delivers_current_values_then_changes(store: KVStore) -> None:
    await store.create_bucket("CFG")
    await store.put("CFG", "a", b"1")
    await store.put("CFG", "b", b"2")
    await store.put("CFG", "gone", b"x")
    await store.delete("CFG", "gone")
    watch = store.watch("CFG")
    try:
        initial = [await next_entry(watch) for _ in range(3)]
        # The latest entry of every key, delete markers included, in revision order.
        assert [(e.key, e.value, e.operation) for e in initial] == [
            ("a", b"1", KVOperation.PUT),
            ("b", b"2", KVOperation.PUT),
            ("gone", b"", KVOperation.DELETE),
        ]
        assert initial[2].deleted
        revision = await store.put("CFG", "a", b"3")
        change = await next_entry(watch)
        assert (change.key, change.value, change.revision) == ("a", b"3", revision)
        await store.delete("CFG", "b")
        deleted = await next_entry(watch)
        assert (deleted.key, deleted.deleted) == ("b", True)
        with pytest.raises(TimeoutError):
            await next_entry(watch, timeout=0.3)  # nothing else happened
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


async def test_watch_one_key_and_wildcards(store: KVStore) -> None:
    await store.create_bucket("CFG")
    one = store.watch("CFG", "web.port")
    star = store.watch("CFG", "web.*")
    deep = store.watch("CFG", "web.>")
    try:
        await store.put("CFG", "db.port", b"5432")
        await store.put("CFG", "web.port", b"80")
        await store.put("CFG", "web.tls.cert", b"pem")
        assert (await next_entry(one)).key == "web.port"
        assert (await next_entry(star)).key == "web.port"
        assert [(await next_entry(deep)).key for _ in range(2)] == ["web.port", "web.tls.cert"]
        for watch in (one, star):
            with pytest.raises(TimeoutError):
                await next_entry(watch, timeout=0.3)
    finally:
        for watch in (one, star, deep):
            await watch.aclose()  # type: ignore[attr-defined]


async def test_watch_of_a_missing_bucket_fails(store: KVStore) -> None:
    with pytest.raises(BucketNotFound):
        await next_entry(store.watch("NOPE"))


async def test_watch_sees_changes_in_order_and_ends_at_the_latest(store: KVStore) -> None:
    await store.create_bucket("CFG")
    watch = store.watch("CFG", "n")
    try:
        await store.put("CFG", "n", b"0")
        assert (await next_entry(watch)).value == b"0"
        writes = await asyncio.gather(
            *(store.put("CFG", "n", str(i).encode()) for i in range(1, 30))
        )
        # With one revision kept per key, a value replaced before the watcher got it may be
        # skipped (JetStream drops it from the stream); what arrives is in order, and the
        # watcher always ends at the latest value.
        revisions = []
        while not revisions or revisions[-1] != max(writes):
            revisions.append((await next_entry(watch)).revision)
        assert revisions == sorted(set(revisions))
        assert set(revisions) <= set(writes)
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


def test_key_matching_follows_nats_subjects() -> None:
    assert key_matches(">", "a")
    assert key_matches(">", "a.b.c")
    assert key_matches("a.>", "a.b")
    assert not key_matches("a.>", "a")
    assert key_matches("a.*.c", "a.b.c")
    assert not key_matches("a.*", "a.b.c")
    assert key_matches("a", "a")
    assert not key_matches("a", "a.b")
    assert not key_matches("a.b", "a")


# -- NATS only ---------------------------------------------------------------------------------


async def test_buckets_made_by_other_tools_are_used_as_they_are(nats_server: NatsServer) -> None:
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        kv = await js.create_key_value(bucket="CHORIA_PLUGINS", history=5)
        await kv.put("plugins", b'{"x": 1}')
        store = NatsKV(client)
        assert "CHORIA_PLUGINS" in await store.buckets()
        entry = await store.get("CHORIA_PLUGINS", "plugins")
        assert entry is not None and entry.value == b'{"x": 1}'
        revision = await store.put("CHORIA_PLUGINS", "plugins", b"{}")
        assert (await kv.get("plugins")).revision == revision
        await kv.delete("plugins")
        assert await store.get("CHORIA_PLUGINS", "plugins") is None
        await kv.put("plugins", b"1")
        await kv.purge("plugins")
        assert await store.get("CHORIA_PLUGINS", "plugins") is None
    finally:
        await client.close()


async def test_created_buckets_allow_per_message_ttl(nats_server: NatsServer) -> None:
    client = await nats.connect(nats_server.url)
    try:
        store = NatsKV(client)
        await store.create_bucket("SVC", history=3, ttl=3600)
        info = await client.jetstream().stream_info("KV_SVC")
        assert info.config.allow_msg_ttl is True
        assert info.config.max_msgs_per_subject == 3
        assert info.config.max_age == 3600
    finally:
        await client.close()


async def test_operations_fail_quickly_while_the_broker_is_down(nats_server: NatsServer) -> None:
    async with broker_for(nats_server) as broker:
        store = NatsKV(broker, timeout=0.5)
        await store.create_bucket("CFG")
        await store.put("CFG", "k", b"1")
        nats_server.stop()
        await wait_until(lambda: not broker.is_connected, what="broker disconnect")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(KVError, match="not connected"):
            await store.get("CFG", "k")
        with pytest.raises(KVError):
            await store.put("CFG", "k", b"2")
        assert_took(loop.time() - started, 15.0, "NATS KV get and put failing, broker down")
        nats_server.start()
        assert await broker.wait_connected(15)
        assert (await store.get("CFG", "k")).value == b"1"  # type: ignore[union-attr]


async def test_watch_ends_with_an_error_when_the_connection_is_lost(
    nats_server: NatsServer,
) -> None:
    async with broker_for(nats_server) as broker:
        store = NatsKV(broker, timeout=1.0)
        await store.create_bucket("CFG")
        await store.put("CFG", "k", b"1")
        watch = store.watch("CFG", "k")
        assert (await next_entry(watch)).value == b"1"
        nats_server.stop()
        with pytest.raises(KVError, match="lost the NATS connection"):
            await next_entry(watch, timeout=10)
        nats_server.start()
        assert await broker.wait_connected(15)
        watch = store.watch("CFG", "k")
        try:
            assert (await next_entry(watch)).value == b"1"
        finally:
            await watch.aclose()  # type: ignore[attr-defined]


async def test_disabled_broker_is_an_error() -> None:
    store = NatsKV(BrokerConnection(NatsSettings()))
    with pytest.raises(KVError, match="not configured"):
        await store.get("CFG", "k")


async def test_closed_direct_client_is_an_error(nats_server: NatsServer) -> None:
    client = await nats.connect(nats_server.url)
    await client.close()
    with pytest.raises(KVError, match="not connected"):
        await NatsKV(client).buckets()
