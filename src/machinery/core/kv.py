"""The key-value store interface, and the local store used without a broker.

Watchers and the CLI see one :class:`KVStore`: the agent provides the NATS JetStream key-value
implementation when NATS is configured, and :class:`LocalKV` (in the agent's SQLite database)
otherwise. Values are bytes; every change gets a new revision, per bucket, as in JetStream.
The node service is ``node.service("kv")``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["BucketNotFound", "KVEntry", "KVError", "KVOperation", "KVRevisionMismatch", "KVStore"]


class KVError(Exception):
    """A key-value operation failed (the broker is away, the bucket is missing...)."""


class BucketNotFound(KVError):
    """The bucket does not exist (buckets are created explicitly, as in Choria)."""


class KVRevisionMismatch(KVError):
    """A compare-and-set update lost: the key changed (or exists, for create)."""


class KVOperation(enum.StrEnum):
    PUT = "PUT"
    DELETE = "DEL"
    PURGE = "PURGE"


@dataclass(frozen=True, slots=True)
class KVEntry:
    """One revision of a key."""

    bucket: str
    key: str
    value: bytes
    revision: int
    operation: KVOperation = KVOperation.PUT
    created: float = 0.0

    @property
    def deleted(self) -> bool:
        return self.operation is not KVOperation.PUT


class KVStore(Protocol):
    """What watchers and tools need from a key-value store."""

    async def get(self, bucket: str, key: str) -> KVEntry | None:
        """The current value, or None when the key does not exist or was deleted."""
        ...

    async def put(self, bucket: str, key: str, value: bytes) -> int:
        """Store ``value``; returns the new revision."""
        ...

    async def create(self, bucket: str, key: str, value: bytes) -> int:
        """Store ``value`` only if ``key`` has no value (KVRevisionMismatch otherwise)."""
        ...

    async def update(self, bucket: str, key: str, value: bytes, last_revision: int) -> int:
        """Store ``value`` only if the key is still at ``last_revision`` (compare-and-set)."""
        ...

    async def delete(self, bucket: str, key: str) -> None: ...

    async def keys(self, bucket: str) -> list[str]:
        """The keys that currently have a value, sorted."""
        ...

    def watch(self, bucket: str, key: str = ">") -> AsyncIterator[KVEntry]:
        """Every change to keys matching ``key`` (NATS subject wildcards ``*`` and ``>``), as it
        happens, starting with the current values."""
        ...

    async def create_bucket(
        self, bucket: str, *, history: int = 1, ttl: float | None = None
    ) -> None: ...

    async def buckets(self) -> list[str]: ...
