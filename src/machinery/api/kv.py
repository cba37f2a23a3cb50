"""The key-value HTTP API: buckets, keys and values of the agent's store, and a live watch.

``/api/v1/kv`` serves whichever store the agent provides as the node service ``"kv"``: its
SQLite store without a broker, NATS JetStream key-value with one. Values are bytes: PUT takes
the raw request body; GET answers JSON with the value as UTF-8 text, or base64 (with
``"encoding": "base64"``) when it is not text. Changes (create bucket, put, delete) need the API
token like every other state change.

A key named ``watch`` cannot be read with GET (that path is the watch stream); ``machinery kv``
with ``--nats`` reaches it directly.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse

from machinery.agent.localkv import (
    BUCKET_PATTERN,
    KEY_PATTERN,
    MAX_BUCKET_LENGTH,
    MAX_KEY_LENGTH,
    WATCH_PATTERN,
)
from machinery.api.guard import token_dependency
from machinery.api.streams import ByteBudget, StreamSlots
from machinery.core.clock import Clock, SystemClock
from machinery.core.kv import BucketNotFound, KVEntry, KVError, KVRevisionMismatch, KVStore
from machinery.core.logthrottle import ThrottledLog

if TYPE_CHECKING:
    from machinery.agent.daemon import Agent

__all__ = ["MAX_VALUE_SIZE", "entry_json", "router"]

log = logging.getLogger(__name__)

# NATS' default maximum payload.
MAX_VALUE_SIZE = 1024 * 1024
_RELEASE = {"comment": "-"}

Bucket = Annotated[
    str, Path(pattern=BUCKET_PATTERN, max_length=MAX_BUCKET_LENGTH, description="bucket name")
]
Key = Annotated[
    str,
    Path(
        pattern=KEY_PATTERN,
        max_length=MAX_KEY_LENGTH,
        description="key: dot-separated tokens of letters, digits and -/_=",
    ),
]


class Error(BaseModel):
    error: str = Field(description="what went wrong")


class BucketList(BaseModel):
    buckets: list[str]


class BucketCreated(BaseModel):
    bucket: str
    history: int
    ttl: float | None


class KeyList(BaseModel):
    bucket: str
    keys: list[str]


class Value(BaseModel):
    bucket: str
    key: str
    value: str = Field(description="UTF-8 text, or base64 when encoding is base64")
    encoding: str | None = Field(None, description='"base64" when the value is not UTF-8 text')
    revision: int
    created: float = Field(description="when this revision was stored, Unix seconds")


class Written(BaseModel):
    bucket: str
    key: str
    revision: int


class Deleted(BaseModel):
    bucket: str
    key: str
    deleted: bool


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Error},
    503: {"model": Error},
}
CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    401: {"model": Error},
    403: {"model": Error},
    409: {"model": Error},
    413: {"model": Error},
}


def entry_json(entry: KVEntry) -> dict[str, Any]:
    """An entry as the API and ``machinery kv`` show it."""
    body: dict[str, Any] = {"bucket": entry.bucket, "key": entry.key}
    try:
        body["value"] = entry.value.decode("utf-8")
    except UnicodeDecodeError:
        body["value"] = base64.b64encode(entry.value).decode()
        body["encoding"] = "base64"
    body["revision"] = entry.revision
    body["created"] = entry.created
    return body


def router(
    agent: Agent,
    require_token: Callable[..., Any] | None = None,
    *,
    streams: StreamSlots | None = None,
    budget: ByteBudget | None = None,
    clock: Clock | None = None,
) -> APIRouter:
    """The ``/api/v1/kv`` routes for ``agent``; ``require_token`` guards the changes (the app's
    dependency; by default :func:`machinery.api.guard.token_dependency`). Watches count in
    ``streams`` (the app's stream limit) and share ``budget`` (see :mod:`machinery.api.streams`).
    """
    routes = APIRouter(tags=["kv"])
    guard = [Depends(require_token or token_dependency(agent))]
    slots = streams or StreamSlots(agent.settings.http.max_sse_clients)
    in_flight = budget or ByteBudget()
    drops = ThrottledLog(log, clock or SystemClock())

    def store() -> KVStore:
        node = agent.node
        found: KVStore | None = node.service("kv") if node is not None else None
        if found is None:
            raise HTTPException(503, "the key-value store is not available")
        return found

    @routes.get("/api/v1/kv", response_model=BucketList, responses=ERRORS)
    async def list_buckets() -> BucketList:
        """The buckets."""
        async with _translated():
            return BucketList(buckets=await store().buckets())

    @routes.post(
        "/api/v1/kv/{bucket}",
        response_model=BucketCreated,
        responses=CHANGE_ERRORS,
        dependencies=guard,
    )
    async def create_bucket(
        bucket: Bucket,
        history: Annotated[int, Query(ge=1, le=64, description="revisions kept per key")] = 1,
        ttl: Annotated[
            float | None, Query(gt=0, le=10 * 365 * 86400, description="value lifetime, seconds")
        ] = None,
    ) -> BucketCreated:
        """Create a bucket (nothing changes if it exists)."""
        async with _translated():
            await store().create_bucket(bucket, history=history, ttl=ttl)
        return BucketCreated(bucket=bucket, history=history, ttl=ttl)

    @routes.get("/api/v1/kv/{bucket}", response_model=KeyList, responses=ERRORS)
    async def list_keys(bucket: Bucket) -> KeyList:
        """The keys of a bucket that have a value."""
        async with _translated():
            return KeyList(bucket=bucket, keys=await store().keys(bucket))

    # Before the key routes: "watch" would otherwise be read as a key.
    @routes.get(
        "/api/v1/kv/{bucket}/watch",
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
    )
    async def watch(
        request: Request,
        bucket: Bucket,
        key: Annotated[
            str,
            Query(
                pattern=WATCH_PATTERN,
                max_length=MAX_KEY_LENGTH,
                description="key or pattern (* is one token, a final > the rest)",
            ),
        ] = ">",
    ) -> EventSourceResponse:
        """Server-sent events: the current values, then every change (``event: kv``, ``data``
        the entry as JSON with its ``operation``: PUT, DEL or PURGE)."""
        kv = store()
        slots.check()
        # A missing bucket is a 404 before the stream starts, not a broken stream.
        async with _translated():
            await kv.keys(bucket)
        changes = kv.watch(bucket, key)

        async def stream() -> AsyncIterator[dict[str, str]]:
            # The slot is taken here, not in the route: a stream that never starts holds none.
            if not slots.take():
                await changes.aclose()  # type: ignore[attr-defined]
                yield {"event": "error", "data": json.dumps({"error": "too many event streams"})}
                return
            try:
                async for entry in changes:
                    body = entry_json(entry)
                    body["operation"] = entry.operation.value
                    frame = {"id": str(entry.revision), "event": "kv", "data": json.dumps(body)}
                    # The value stays alive in the store's watch until the frame is taken.
                    size = len(frame["data"]) + len(entry.value)
                    del entry, body
                    if not in_flight.take(size):
                        drops.warning(
                            "KV watch: dropping clients that do not keep up (%d bytes already "
                            "in flight to watch clients)",
                            in_flight.used,
                        )
                        return
                    try:
                        yield frame
                    finally:
                        in_flight.give(size)
                    del frame
                    # The response keeps the last thing yielded (and its encoding) until the
                    # next one: a comment line, which clients ignore, lets the value go now
                    # rather than after the next value is read.
                    yield _RELEASE
                    # Sending to a client that is gone does nothing: stop reading values for it
                    # (the server dropped it for not reading, or it left).
                    if await request.is_disconnected():
                        return
            except KVError as exc:
                yield {"event": "error", "data": json.dumps({"error": str(exc)})}
            finally:
                slots.give()
                await changes.aclose()  # type: ignore[attr-defined]

        return EventSourceResponse(stream(), ping=15, send_timeout=30)

    @routes.get(
        "/api/v1/kv/{bucket}/{key:path}",
        response_model=Value,
        responses=ERRORS,
        response_model_exclude_none=True,
    )
    async def get_value(bucket: Bucket, key: Key) -> Value:
        """A key's current value."""
        async with _translated():
            entry = await store().get(bucket, key)
        if entry is None:
            raise HTTPException(404, f"key {key} not found in bucket {bucket}")
        return Value(**entry_json(entry))

    @routes.put(
        "/api/v1/kv/{bucket}/{key:path}",
        response_model=Written,
        responses=CHANGE_ERRORS,
        dependencies=guard,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def put_value(bucket: Bucket, key: Key, request: Request) -> Written:
        """Store the request body as the key's value."""
        value = await _body(request)
        async with _translated():
            revision = await store().put(bucket, key, value)
        return Written(bucket=bucket, key=key, revision=revision)

    @routes.delete(
        "/api/v1/kv/{bucket}/{key:path}",
        response_model=Deleted,
        responses=CHANGE_ERRORS,
        dependencies=guard,
    )
    async def delete_value(bucket: Bucket, key: Key) -> Deleted:
        """Delete the key's value (watchers see a delete)."""
        async with _translated():
            await store().delete(bucket, key)
        return Deleted(bucket=bucket, key=key, deleted=True)

    return routes


class _translated:
    """Store errors as HTTP errors: missing bucket 404, lost compare-and-set 409, anything else
    (the broker is away) 503."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: Any
    ) -> None:
        if isinstance(exc, BucketNotFound):
            raise HTTPException(404, str(exc)) from None
        if isinstance(exc, KVRevisionMismatch):
            raise HTTPException(409, str(exc)) from None
        if isinstance(exc, KVError):
            raise HTTPException(503, f"key-value store: {exc}") from None


async def _body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_VALUE_SIZE:
            raise HTTPException(413, f"values are limited to {MAX_VALUE_SIZE} bytes")
    return bytes(body)
