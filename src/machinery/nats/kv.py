"""The key-value store on NATS JetStream key-value buckets (:class:`~machinery.core.kv.KVStore`).

With NATS configured the agent provides ``NatsKV(broker)`` as the node service ``"kv"`` (a
:class:`~machinery.nats.connection.BrokerConnection`); ``machinery kv --nats URL`` builds one on
a direct nats-py client. Buckets are Choria's: a bucket ``B`` is the stream ``KV_B`` and key ``k``
the subject ``$KV.B.k``, so buckets made by ``choria kv`` or the ``nats`` CLI work as they are.

Every operation is bounded by ``timeout``: while the broker is away it fails with
:class:`~machinery.core.kv.KVError` instead of waiting. nats-py errors become the errors of
:mod:`machinery.core.kv` (a missing bucket is :class:`~machinery.core.kv.BucketNotFound`, a lost
compare-and-set :class:`~machinery.core.kv.KVRevisionMismatch`).

``watch`` is a JetStream key-value watcher (an ordered push consumer): the latest entry of every
matching key (delete markers included), then each change as the server pushes it. It ends with
KVError when the connection is lost, so the caller can start a new one once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from machinery.agent.localkv import check_bucket, check_key, check_watch_pattern
from machinery.core.kv import BucketNotFound, KVEntry, KVError, KVOperation, KVRevisionMismatch
from machinery.nats.cancellation import restore_cancellation, restore_cancellation_now
from machinery.nats.connection import BrokerConnection

__all__ = ["NatsKV"]

log = logging.getLogger("machinery.nats.kv")

_OPERATION = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"
# How often a quiet watch checks that its connection is still up.
_LIVENESS = 1.0


class NatsKV:
    """Key-value buckets on JetStream, through the agent's broker connection or a client."""

    def __init__(self, connection: BrokerConnection | NATS, *, timeout: float = 5.0) -> None:
        self.connection = connection
        self.timeout = timeout

    # -- connection -------------------------------------------------------------------------

    def _connected(self) -> bool:
        connection = self.connection
        if isinstance(connection, BrokerConnection):
            return connection.is_connected
        return bool(connection.is_connected)

    async def _client(self) -> NATS:
        connection = self.connection
        if isinstance(connection, BrokerConnection):
            if not connection.enabled:
                raise KVError("NATS is not configured (no servers)")
            if not await connection.wait_connected(self.timeout) or connection.client is None:
                raise KVError(
                    f"not connected to NATS: {connection.last_error or connection.state.value}"
                )
            return connection.client
        if not connection.is_connected:
            raise KVError("not connected to NATS")
        return connection

    async def _jetstream(self) -> JetStreamContext:
        return (await self._client()).jetstream(timeout=self.timeout)

    async def _bucket(self, bucket: str) -> tuple[JetStreamContext, KeyValue]:
        check_bucket(bucket)
        js = await self._jetstream()
        return js, await js.key_value(bucket)

    @contextlib.asynccontextmanager
    async def _operation(self, bucket: str) -> AsyncIterator[None]:
        """Bound one operation in time and translate its errors."""
        async with restore_cancellation():
            try:
                async with asyncio.timeout(self.timeout * 2):
                    with _errors(bucket):
                        yield
            except TimeoutError:
                raise KVError("NATS did not answer in time") from None

    # -- the KVStore interface --------------------------------------------------------------

    async def get(self, bucket: str, key: str) -> KVEntry | None:
        check_key(key)
        async with self._operation(bucket):
            js, _ = await self._bucket(bucket)
            try:
                # The stream API (not a direct get) also tells when the value was stored.
                msg = await js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")
            except nats.js.errors.BucketNotFoundError:
                raise
            except nats.js.errors.NotFoundError:
                return None
        headers = msg.headers or {}
        if headers.get(_OPERATION) in ("DEL", "PURGE") or _MARKER_REASON in headers:
            return None
        created = msg.time.timestamp() if isinstance(msg.time, datetime.datetime) else 0.0
        return KVEntry(bucket, key, bytes(msg.data or b""), int(msg.seq or 0), created=created)

    async def put(self, bucket: str, key: str, value: bytes) -> int:
        check_key(key)
        async with self._operation(bucket):
            _, kv = await self._bucket(bucket)
            return int(await kv.put(key, bytes(value)))

    async def create(self, bucket: str, key: str, value: bytes) -> int:
        check_key(key)
        async with self._operation(bucket):
            _, kv = await self._bucket(bucket)
            return int(await kv.create(key, bytes(value)))

    async def update(self, bucket: str, key: str, value: bytes, last_revision: int) -> int:
        check_key(key)
        async with self._operation(bucket):
            _, kv = await self._bucket(bucket)
            return int(await kv.update(key, bytes(value), last=last_revision))

    async def delete(self, bucket: str, key: str) -> None:
        check_key(key)
        async with self._operation(bucket):
            _, kv = await self._bucket(bucket)
            await kv.delete(key)

    async def keys(self, bucket: str) -> list[str]:
        async with self._operation(bucket):
            _, kv = await self._bucket(bucket)
            try:
                return sorted(set(await kv.keys()))
            except nats.js.errors.NoKeysError:
                return []

    async def watch(self, bucket: str, key: str = ">") -> AsyncIterator[KVEntry]:
        check_watch_pattern(key)
        async with self._operation(bucket):
            _, kv = await self._bucket(bucket)
            watcher = await kv.watch(key)
        updates = aiter(watcher)
        try:
            while True:
                await restore_cancellation_now()
                # asyncio.timeout, not nats-py's updates(): Python 3.11's wait_for can swallow
                # a cancellation, which would leave this watch running after its owner stopped.
                try:
                    async with asyncio.timeout(_LIVENESS):
                        update = await anext(updates)
                except TimeoutError:
                    if not self._connected():
                        raise KVError(f"lost the NATS connection watching {bucket}.{key}") from None
                    continue
                if update is None:  # nats-py's "initial values delivered" marker
                    continue
                if isinstance(update, KeyValue.Entry):
                    yield _entry(update)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    async def create_bucket(
        self, bucket: str, *, history: int = 1, ttl: float | None = None
    ) -> None:
        """Create ``bucket`` (a KV stream allowing per-message TTLs); an existing bucket is
        left as it is."""
        check_bucket(bucket)
        if history < 1 or history > 64:
            raise KVError("history must be between 1 and 64")
        async with self._operation(bucket):
            js = await self._jetstream()
            try:
                await js.key_value(bucket)
                return
            except nats.js.errors.BucketNotFoundError:
                pass
            await js.create_key_value(bucket=bucket, history=history, ttl=ttl or None)

    async def buckets(self) -> list[str]:
        names: list[str] = []
        async with self._operation(""):
            js = await self._jetstream()
            offset = 0
            while True:
                page = await js.streams_info(offset)
                if not page:
                    break
                offset += len(page)
                names.extend(
                    info.config.name[3:]
                    for info in page
                    if info.config.name and info.config.name.startswith("KV_")
                )
        return sorted(names)


def _entry(update: Any) -> KVEntry:
    operation = {"DEL": KVOperation.DELETE, "PURGE": KVOperation.PURGE}.get(
        update.operation or "", KVOperation.PUT
    )
    created = update.created
    stamp = created.timestamp() if isinstance(created, datetime.datetime) else 0.0
    return KVEntry(
        bucket=update.bucket,
        key=update.key,
        value=bytes(update.value or b"") if operation is KVOperation.PUT else b"",
        revision=int(update.revision or 0),
        operation=operation,
        created=stamp,
    )


@contextlib.contextmanager
def _errors(bucket: str) -> Iterator[None]:
    """Translate nats-py failures into machinery.core.kv errors."""
    try:
        yield
    except KVError:
        raise
    except nats.js.errors.BucketNotFoundError:
        raise BucketNotFound(f"bucket {bucket} not found") from None
    except nats.js.errors.KeyWrongLastSequenceError as exc:
        raise KVRevisionMismatch(f"wrong last revision: {exc.description or exc}") from None
    except (nats.js.errors.InvalidKeyError, nats.js.errors.InvalidBucketNameError) as exc:
        raise KVError(f"invalid name: {exc}") from None
    except nats.js.errors.APIError as exc:
        raise KVError(f"JetStream error: {exc.description or exc}") from None
    except (TimeoutError, nats.errors.TimeoutError) as exc:
        raise KVError("NATS did not answer in time") from exc
    except nats.errors.Error as exc:
        raise KVError(f"NATS error: {exc}") from None
    except ConnectionError as exc:
        raise KVError(f"not connected to NATS: {exc}") from None
