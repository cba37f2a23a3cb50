"""Governors shared by the fleet, on NATS JetStream key-value (spec 1.12).

Each governor is a bucket ``GOVERNOR_<name>`` (stream ``KV_GOVERNOR_<name>``, history 1):

- key ``config``: ``{"capacity": N, "lease": seconds, "slots": M}`` written by :meth:`add`;
  ``slots`` is the largest capacity the governor ever had, so slots beyond a reduced capacity are
  still shown and evictable until their holders let go.
- keys ``slot_0`` .. ``slot_<N-1>``: one per slot in use, value
  ``{"holder": ..., "acquired": unix, "expires": unix}``.

Taking a slot is a compare-and-set: ``create`` on a free slot key, or ``update`` against the
revision read when the holder's lease has passed (a crashed node's slot is taken over this way;
``skew`` seconds are allowed for clocks that disagree). The revision written is the slot's
sequence number. A holder refreshes its lease every lease/3 while it holds the slot and deletes
the key (again against its revision) when done. Waiters retry with Choria's FiveSec backoff
(0.5s rising to 5s, with jitter) and are also woken as soon as a slot key changes, until their
timeout; then :class:`GovernorTimeout`. A governor nobody created with :meth:`add` is an error
(``unknown governor <name>``), as is a broker that is not connected within ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from machinery.core.clock import Clock
from machinery.core.governor import (
    DEFAULT_LEASE,
    GovernorError,
    GovernorInfo,
    GovernorTimeout,
    UnknownGovernor,
    validate_name,
)
from machinery.lang.duration import format_go_duration

__all__ = [
    "BUCKET_PREFIX",
    "ClientConnection",
    "NatsGovernor",
    "backoff_delay",
    "bucket_name",
]

log = logging.getLogger("machinery.governor")

BUCKET_PREFIX = "GOVERNOR_"
CONFIG_KEY = "config"
SLOT_PREFIX = "slot_"
# Choria's backoff.FiveSec: twenty steps from 0.5s to 5s, each with jitter.
# JetStream's "wrong last sequence" errors: a compare-and-set lost.
_WRONG_LAST_SEQUENCE = (10071, 10164)
_BACKOFF_STEPS = [0.5 + i * (5.0 - 0.5) / 19 for i in range(20)]

T = TypeVar("T")


class BrokerLike(Protocol):
    """What the governor needs of :class:`machinery.nats.connection.BrokerConnection`."""

    client: NATS | None

    @property
    def enabled(self) -> bool: ...

    @property
    def is_connected(self) -> bool: ...

    async def wait_connected(self, timeout: float | None = None) -> bool: ...


class ClientConnection:
    """An already connected nats-py client in the shape of a BrokerConnection (for tools such
    as ``machinery governor --nats``, which do not keep a connection alive)."""

    def __init__(self, client: NATS) -> None:
        self.client: NATS | None = client

    @property
    def enabled(self) -> bool:
        return True

    @property
    def is_connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    async def wait_connected(self, timeout: float | None = None) -> bool:
        return self.is_connected


def bucket_name(name: str) -> str:
    """The key-value bucket holding governor ``name``."""
    return f"{BUCKET_PREFIX}{name}"


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Choria's FiveSec backoff for retry ``attempt`` (0-based): between half and one and a
    half times the step."""
    step = _BACKOFF_STEPS[min(attempt, len(_BACKOFF_STEPS) - 1)]
    return step / 2 + rng.random() * step


@dataclass
class _Config:
    capacity: int
    lease: float
    slots: int


@dataclass
class _Slot:
    name: str
    kv: KeyValue
    key: str
    holder: str
    acquired: float
    lease: float
    revision: int
    sequence: int
    lost: bool = False


class NatsGovernor:
    """Fleet-wide governors on JetStream (see the module docstring)."""

    def __init__(
        self,
        connection: BrokerLike,
        clock: Clock,
        *,
        skew: float = 1.0,
        replicas: int = 1,
        connect_timeout: float = 2.0,
        request_timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.connection = connection
        self.clock = clock
        self.skew = skew
        self.replicas = replicas
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.random = rng or random.Random()

    # -- taking a slot ----------------------------------------------------------------------

    def acquire(
        self,
        name: str,
        timeout: float,
        *,
        holder: str,
    ) -> AbstractAsyncContextManager[int]:
        """Hold a slot of governor ``name`` for an ``async with`` block; the value is the
        slot's sequence number (the revision written when it was taken)."""
        return self._hold(name, timeout, holder)

    @contextlib.asynccontextmanager
    async def _hold(self, name: str, timeout: float, holder: str) -> AsyncIterator[int]:
        slot = await self._take(validate_name(name), timeout, holder)
        refresher = asyncio.create_task(self._refresh(slot), name=f"governor {name} lease")
        try:
            yield slot.sequence
        finally:
            refresher.cancel()
            # A machine stopping while the slot is given back must not leave it taken for a
            # whole lease: the release (bounded by the request timeout) goes on, and the
            # cancellation is honoured after it.
            finishing = asyncio.ensure_future(self._finish(refresher, slot))
            cancelled = await _to_the_end(finishing)
            if not finishing.cancelled() and finishing.exception() is not None:
                log.error(
                    "Releasing slot %s of the %s Governor failed",
                    slot.key,
                    name,
                    exc_info=finishing.exception(),
                )
            if cancelled:
                raise asyncio.CancelledError

    async def _finish(self, refresher: asyncio.Task[None], slot: _Slot) -> None:
        await asyncio.gather(refresher, return_exceptions=True)
        await self._release(slot)

    async def _take(self, name: str, timeout: float, holder: str) -> _Slot:
        deadline = self.clock.monotonic() + max(timeout, 0.0)
        changed = asyncio.Event()
        subscription: Subscription | None = None
        attempt = 0
        try:
            while True:
                # Cleared before reading the slots, so a release after the read still wakes us.
                changed.clear()
                kv = await self._bucket(name, deadline)
                config = await self._config(kv, name)
                slot = await self._try_slots(kv, name, config, holder)
                if slot is not None:
                    return slot
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    raise GovernorTimeout(
                        f"no slot in the {name} Governor became free within "
                        f"{format_go_duration(timeout)}"
                    )
                if subscription is None:
                    subscription = await self._subscribe(name, changed)
                delay = min(backoff_delay(attempt, self.random), remaining)
                attempt += 1
                await self._sleep_or_wake(changed, delay)
        finally:
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def _try_slots(
        self, kv: KeyValue, name: str, config: _Config, holder: str
    ) -> _Slot | None:
        now = self.clock.now()
        value = _encode(holder, now, now + config.lease)
        for index in range(config.capacity):
            key = f"{SLOT_PREFIX}{index}"
            entry = await self._get(kv, key)
            previous = None
            if entry is None:
                operation = kv.create(key, value)
            else:
                current = _decode(entry.value)
                if current is not None and current["expires"] + self.skew >= now:
                    continue
                previous = current["holder"] if current is not None else "an unreadable value"
                operation = kv.update(key, value, last=entry.revision)
            attempt = asyncio.ensure_future(self._call("taking a slot", operation))
            if await _to_the_end(attempt):
                # Cancelled while the compare-and-set was in flight: if it won, the slot is
                # ours though nobody will use it, so give it straight back.
                if not attempt.cancelled() and attempt.exception() is None:
                    revision = attempt.result()
                    taken = _Slot(name, kv, key, holder, now, config.lease, revision, revision)
                    await _to_the_end(asyncio.ensure_future(self._release(taken)))
                raise asyncio.CancelledError
            try:
                revision = attempt.result()
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # someone else was quicker
            if previous is not None:
                log.warning(
                    "Took over slot %s of the %s Governor from %s, whose lease had passed",
                    key,
                    name,
                    previous,
                )
            return _Slot(name, kv, key, holder, now, config.lease, revision, revision)
        return None

    async def _refresh(self, slot: _Slot) -> None:
        """Keep the lease alive while the block runs."""
        while True:
            await self.clock.sleep(slot.lease / 3)
            value = _encode(slot.holder, slot.acquired, self.clock.now() + slot.lease)
            try:
                slot.revision = await self._call(
                    "refreshing a lease", slot.kv.update(slot.key, value, last=slot.revision)
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                slot.lost = True
                log.warning(
                    "Lost slot %s of the %s Governor held by %s: it was evicted, or taken over "
                    "after its lease passed",
                    slot.key,
                    slot.name,
                    slot.holder,
                )
                return
            except GovernorError as exc:
                # The broker may come back before the lease passes; try again next period.
                log.warning("Could not refresh the %s Governor lease: %s", slot.name, exc)

    async def _release(self, slot: _Slot) -> None:
        if slot.lost:
            return
        try:
            await self._call("releasing", slot.kv.delete(slot.key, last=slot.revision))
        except GovernorError as exc:
            cause = exc.__cause__
            if (
                isinstance(cause, nats.js.errors.APIError)
                and cause.err_code in _WRONG_LAST_SEQUENCE
            ):
                # A newer revision: evicted or taken over meanwhile, so not ours to delete.
                log.debug("slot %s of the %s Governor is not ours any more", slot.key, slot.name)
                return
            log.warning(
                "Could not release slot %s of the %s Governor (it frees when its lease passes, "
                "within %s): %s",
                slot.key,
                slot.name,
                format_go_duration(slot.lease),
                exc,
            )

    async def _subscribe(self, name: str, changed: asyncio.Event) -> Subscription | None:
        """Wake a waiter as soon as a slot changes (a release, say) instead of at its next
        backoff step; without it the backoff alone paces the retries."""
        client = self.connection.client
        if client is None:
            return None

        async def wake(_msg: Msg) -> None:
            changed.set()

        try:
            return await client.subscribe(f"$KV.{bucket_name(name)}.{SLOT_PREFIX}*", cb=wake)
        except Exception as exc:  # nats-py raises several unrelated types
            log.debug("cannot watch the %s Governor's slots: %s", name, exc)
            return None

    async def _sleep_or_wake(self, changed: asyncio.Event, delay: float) -> None:
        woken = asyncio.ensure_future(changed.wait())
        slept = asyncio.ensure_future(self.clock.sleep(delay))
        try:
            await asyncio.wait({woken, slept}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            slept.cancel()
            await asyncio.gather(woken, slept, return_exceptions=True)

    # -- administration ---------------------------------------------------------------------

    async def add(self, name: str, capacity: int, *, lease: float = DEFAULT_LEASE) -> None:
        """Create governor ``name`` (its bucket) or change its capacity and lease."""
        validate_name(name)
        if capacity < 1:
            raise GovernorError("a governor's capacity must be at least 1")
        if lease <= 0:
            raise GovernorError("a governor's lease must be longer than 0s")
        deadline = self.clock.monotonic() + self.connect_timeout
        client = await self._client(deadline)
        js = client.jetstream(timeout=self.request_timeout)
        bucket = bucket_name(name)
        try:
            kv = await self._call("finding the governor", js.key_value(bucket))
        except nats.js.errors.BucketNotFoundError:
            kv = await self._call(
                "creating the governor",
                js.create_key_value(
                    bucket=bucket,
                    history=1,
                    replicas=self.replicas,
                    description=f"machinery governor {name}",
                ),
            )
        slots = capacity
        entry = await self._get(kv, CONFIG_KEY)
        if entry is not None:
            previous = _decode_config(entry.value)
            if previous is not None:
                slots = max(slots, previous.slots)
        document = {"capacity": capacity, "lease": lease, "slots": slots}
        await self._call("saving the governor", kv.put(CONFIG_KEY, json.dumps(document).encode()))

    async def view(self, name: str) -> GovernorInfo:
        """Capacity, lease and holders (``expired`` marks a lease that has passed)."""
        kv = await self._bucket(validate_name(name), self.clock.monotonic() + self.connect_timeout)
        config = await self._config(kv, name)
        now = self.clock.now()
        holders: list[dict[str, object]] = []
        for key, revision, value in await self._slots(kv, config):
            holders.append(
                {
                    "slot": key,
                    "holder": value["holder"],
                    "acquired": value["acquired"],
                    "expires": value["expires"],
                    "revision": revision,
                    "expired": value["expires"] + self.skew < now,
                }
            )
        return GovernorInfo(
            name=name, capacity=config.capacity, lease=config.lease, holders=holders
        )

    async def evict(self, name: str, holder: str) -> bool:
        """Free the slots held by ``holder``: the exact holder, or every holder whose name
        starts with ``holder:`` (``<identity>`` evicts everything a node holds). True if any
        was freed. The evicted holder notices at its next lease refresh."""
        kv = await self._bucket(validate_name(name), self.clock.monotonic() + self.connect_timeout)
        config = await self._config(kv, name)
        freed = False
        for key, revision, value in await self._slots(kv, config):
            held = str(value["holder"])
            if held != holder and not held.startswith(holder + ":"):
                continue
            try:
                await self._call("evicting", kv.delete(key, last=revision))
            except GovernorError as exc:
                log.debug("slot %s changed while evicting: %s", key, exc)
                continue
            log.warning("Evicted %s from the %s Governor", held, name)
            freed = True
        return freed

    async def names(self) -> list[str]:
        """Every governor on the broker."""
        client = await self._client(self.clock.monotonic() + self.connect_timeout)
        js = client.jetstream(timeout=self.request_timeout)
        found: list[str] = []
        offset = 0
        while True:
            streams = await self._call("listing governors", js.streams_info(offset))
            if not streams:
                return sorted(found)
            for info in streams:
                stream = info.config.name or ""
                if stream.startswith(f"KV_{BUCKET_PREFIX}"):
                    found.append(stream.removeprefix(f"KV_{BUCKET_PREFIX}"))
            offset += len(streams)

    # -- plumbing ---------------------------------------------------------------------------

    async def _client(self, deadline: float) -> NATS:
        connection = self.connection
        if not connection.enabled:
            raise GovernorError("NATS is not configured")
        if not connection.is_connected:
            wait = max(0.0, min(self.connect_timeout, deadline - self.clock.monotonic()))
            if wait <= 0 or not await connection.wait_connected(wait):
                raise GovernorError("not connected to NATS")
        client = connection.client
        if client is None:
            raise GovernorError("not connected to NATS")
        return client

    async def _bucket(self, name: str, deadline: float) -> KeyValue:
        client = await self._client(deadline)
        js = client.jetstream(timeout=self.request_timeout)
        try:
            return await self._call("finding the governor", js.key_value(bucket_name(name)))
        except nats.js.errors.BucketNotFoundError:
            raise UnknownGovernor(name) from None

    async def _config(self, kv: KeyValue, name: str) -> _Config:
        entry = await self._get(kv, CONFIG_KEY)
        if entry is None:
            # Also what a bucket deleted since we looked it up reads as.
            raise UnknownGovernor(name)
        config = _decode_config(entry.value)
        if config is None:
            raise GovernorError(f"the {name} Governor's configuration is invalid")
        return config

    async def _slots(self, kv: KeyValue, config: _Config) -> list[tuple[str, int, dict[str, Any]]]:
        found = []
        for index in range(config.slots):
            key = f"{SLOT_PREFIX}{index}"
            entry = await self._get(kv, key)
            if entry is None:
                continue
            value = _decode(entry.value) or {"holder": "?", "acquired": 0.0, "expires": 0.0}
            found.append((key, entry.revision or 0, value))
        return found

    async def _get(self, kv: KeyValue, key: str) -> KeyValue.Entry | None:
        try:
            return await self._call("reading the governor", kv.get(key))
        except nats.js.errors.KeyNotFoundError:
            return None

    async def _call(self, what: str, operation: Awaitable[T]) -> T:
        """Await a JetStream operation within the request timeout; broker failures become
        GovernorError, while the outcomes callers act on pass through.

        The operation runs as a task of its own: nats-py waits for replies with
        ``asyncio.wait_for``, which on Python 3.11 can swallow a cancellation that arrives as
        the reply does, and a swallowed cancellation would leave a stopped watcher holding a
        slot. ``asyncio.wait`` never swallows one."""
        task = asyncio.ensure_future(self._bounded(what, operation))
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            task.add_done_callback(_consume)
            raise
        return task.result()

    async def _bounded(self, what: str, operation: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.request_timeout):
                return await operation
        except (
            nats.js.errors.KeyWrongLastSequenceError,
            nats.js.errors.KeyNotFoundError,
            nats.js.errors.BucketNotFoundError,
        ):
            raise
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            raise GovernorError(f"{what} failed: {detail}") from exc


def _consume(task: asyncio.Future[Any]) -> None:
    # An abandoned operation's outcome is of no interest; reading it keeps asyncio quiet.
    if not task.cancelled():
        task.exception()


async def _to_the_end(task: asyncio.Future[Any]) -> bool:
    """Wait for ``task`` to complete even if the calling task is cancelled meanwhile; True if
    it was (the caller then re-raises the cancellation). The outcome stays in ``task``."""
    cancelled = False
    while not task.done():
        try:
            # asyncio.wait, unlike awaiting the task, does not cancel it with us.
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


def _encode(holder: str, acquired: float, expires: float) -> bytes:
    return json.dumps({"holder": holder, "expires": expires, "acquired": acquired}).encode()


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    try:
        value = json.loads(raw or b"")
    except ValueError:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("holder"), str)
        or not isinstance(value.get("expires"), int | float)
        or not isinstance(value.get("acquired"), int | float)
    ):
        return None
    return value


def _decode_config(raw: bytes | None) -> _Config | None:
    try:
        value = json.loads(raw or b"")
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    capacity, lease = value.get("capacity"), value.get("lease", DEFAULT_LEASE)
    slots = value.get("slots", capacity)
    if (
        not isinstance(capacity, int)
        or capacity < 1
        or not isinstance(lease, int | float)
        or lease <= 0
        or not isinstance(slots, int)
    ):
        return None
    return _Config(capacity, float(lease), max(slots, capacity))
