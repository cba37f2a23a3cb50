"""The ``kv`` watcher (spec 3.7): mirror one key of a key-value bucket into machine data.

Each evaluation reads the key, parses its value (a JSON object, optionally resolved with Tiny
Hiera and narrowed by a GJSON ``query``; a JSON array; else the raw text), and compares it by
deep equality with the value held before: a different value is stored under the data key
(``<bucket>_<key>``, or ``store_key``) and reported ``changed`` (``success_transition``), a
vanished key is deleted from the data and ``changed`` too, a failure is ``error``
(``fail_transition``). ``unchanged`` and ``skipped`` do nothing. The watcher never publishes its
state itself; ``announce_interval`` does.

Modes:

- ``poll`` (Choria's only mode): a read at start, then every ``interval`` (required) and on each
  state change, a poll being skipped when the previous one was less than ``interval`` ago.
- ``watch``: the store pushes every change of the key (a JetStream key-value watcher, or the
  local store's in-process notifications), evaluated as it arrives with no polling; the key is
  also read at start and on state changes, and every ``interval`` if one is set (a safety net).

With ``republish_trigger`` (NATS only) the watcher also listens on a subject where a stream's
RePublish configuration copies the bucket's messages, and evaluates each message at once.

The store is the node service ``"kv"`` (a :class:`machinery.core.kv.KVStore`: the agent provides
one on NATS or in its SQLite database); the NATS connection for ``republish_trigger`` is the
service ``"nats"`` (:class:`machinery.nats.connection.BrokerConnection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import Field

from machinery.core.kv import KVEntry, KVError, KVStore
from machinery.core.wakeup import STATE_CHANGED
from machinery.lang.gjson import GJSONPathError, validate_path
from machinery.lang.gjson import lookup as gjson_lookup
from machinery.lang.hiera import HieraError, resolve
from machinery.lang.template import TemplateError
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import TemplateText, compile_template
from machinery.watchers.base import PolledWatcher

__all__ = ["KVProperties", "KVWatcher", "json_equal", "parse_value"]

# No store call may hold a check longer than this, whatever the store does.
IO_TIMEOUT = 30.0
NO_STORE = (
    "no key-value store is available: kv watchers need the machinery agent, which provides "
    "one on NATS or in its own database"
)
REPUBLISH_HEADERS = (
    "Nats-Stream",
    "Nats-Subject",
    "Nats-Sequence",
    "Nats-Time-Stamp",
    "Nats-Last-Sequence",
)
_BUCKET = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY = re.compile(r"^[-/_=A-Za-z0-9]+(\.[-/_=A-Za-z0-9]+)*$")
# Go's bytes.TrimSpace: ASCII and Unicode white space (Python's strip() also takes \x1c-\x1f).
_SPACE = " \t\n\v\f\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_WATCH_RETRY_MAX = 30.0


class KVProperties(WatcherProperties):
    """Properties of the kv watcher."""

    bucket: str = Field(description="the bucket; it must exist (it is not created)")
    key: TemplateText = Field("", description="the key to read (required)")
    mode: Literal["poll", "watch"] = Field(
        "poll", description="poll: read every interval; watch: the store pushes every change"
    )
    bucket_prefix: bool = Field(True, description="store the value as <bucket>_<key>")
    store_key: TemplateText = Field(
        "", description="store the value under this data key instead of the key"
    )
    on_successful_get: bool = Field(False, description="every successful read counts as changed")
    on_matching_update: bool = Field(
        False, description="a new revision with the same value counts as changed"
    )
    republish_trigger: TemplateText = Field(
        "", description="NATS subject where republished bucket messages trigger an evaluation"
    )
    hiera_config: bool = Field(
        False, description="resolve object values as Tiny Hiera against the node facts"
    )
    query: str = Field("", description="GJSON query applied to object values before storing")


def json_equal(a: Any, b: Any) -> bool:
    """Deep equality of JSON values as Go compares them: booleans are not numbers, ints and
    floats compare by value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is None and b is None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON value {name}")


def _json(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def parse_value(
    raw: bytes,
    *,
    hiera_facts: Mapping[str, Any] | None = None,
    query: str = "",
    warn: Callable[[str], None] = lambda _: None,
) -> Any:
    """A stored value as the kv watcher keeps it (spec 3.7, step 6).

    ``hiera_facts`` (the node facts) turns on Tiny Hiera for objects. Raises
    :class:`~machinery.lang.hiera.HieraError` when Hiera cannot resolve the value.
    """
    text = raw.decode("utf-8", errors="replace")
    trimmed = text.strip(_SPACE)
    if trimmed.startswith("{") and trimmed.endswith("}"):
        try:
            parsed = _json(trimmed)
        except (ValueError, RecursionError) as exc:
            warn(f"unmarshal failed: {exc}")
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        if hiera_facts is not None:
            parsed = resolve(parsed, {"facts": dict(hiera_facts)})
        if query:
            found, value = gjson_lookup(parsed, query)
            return value if found else text
        return parsed
    if trimmed.startswith("[") and trimmed.endswith("]"):
        try:
            items = _json(trimmed)
        except (ValueError, RecursionError) as exc:
            warn(f"unmarshal failed: {exc}")
            items = []
        if hiera_facts is not None:
            raise HieraError("hiera config not supported for arrays")
        return items if isinstance(items, list) else []
    return text


def _round_seconds(seconds: float) -> float:
    # Go's Duration.Round(time.Second): halves round away from zero.
    return float(math.floor(seconds + 0.5))


class KVWatcher(PolledWatcher[KVProperties]):
    """Mirrors one key of a bucket into machine data."""

    type_name = "kv"
    properties_model = KVProperties
    default_interval = None
    min_interval = 0.5

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, KVProperties)
        if not properties.bucket:
            yield Problem(("properties", "bucket"), "bucket is required")
        elif not _BUCKET.match(properties.bucket):
            yield Problem(
                ("properties", "bucket"),
                f"invalid bucket name {properties.bucket!r}: use letters, digits, _ and -",
            )
        if not properties.key:
            yield Problem(("properties", "key"), f"{properties.mode} mode requires a key")
        elif compile_template(properties.key).is_static and not _KEY.match(properties.key):
            yield Problem(
                ("properties", "key"),
                f"invalid key {properties.key!r}: use letters, digits and -/_= in "
                "dot-separated tokens",
            )
        if properties.mode == "poll" and not watcher.interval:
            yield Problem(("interval",), "kv watcher in poll mode needs an interval")
        if properties.query:
            try:
                validate_path(properties.query)
            except GJSONPathError as exc:
                yield Problem(("properties", "query"), f"invalid query: {exc}")
        trigger = properties.republish_trigger
        if trigger and compile_template(trigger).is_static and not _valid_subject(trigger):
            yield Problem(("properties", "republish_trigger"), f"invalid NATS subject {trigger!r}")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        props = self.properties
        self._key = compile_template(props.key)
        self._store_key = compile_template(props.store_key) if props.store_key else None
        self._trigger = compile_template(props.republish_trigger)
        self.previous_state = "unknown"
        self._previous: Any = None
        self._previous_seq = 0
        self._last_poll: float | None = None
        self._bound = False
        self._lock = asyncio.Lock()
        # The newest revision evaluated, so a watch does not evaluate a value twice.
        self._seen_revision = 0
        self._group: asyncio.TaskGroup | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watched_key: str | None = None
        self.republish_subject: str | None = None  # set once the listener is subscribed

    # -- life ---------------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            if self.properties.republish_trigger:
                group.create_task(
                    self._republish_listener(), name=f"{self.machine.name}#{self.name}:republish"
                )
            try:
                await super().run()
            finally:
                self._stop_watch()
                self._group = None

    async def on_start(self) -> None:
        key = self.properties.key
        mode = self.properties.mode
        self.log_info(
            f"Key-Value watcher starting with bucket {self.properties.bucket!r} and "
            f"key {key!r} in {mode!r} mode"
        )
        await self._report(await self._poll(rate_limit=True))
        if mode == "watch":
            self._restart_watch()

    async def check(self, reasons: int) -> None:
        if self.properties.mode == "watch":
            if reasons & STATE_CHANGED:
                self._restart_watch()
            # The watch delivers changes; this read catches up after inactivity or an outage.
            await self._report(await self._poll(rate_limit=False))
            return
        await self._report(await self._poll(rate_limit=True))

    def _store(self) -> KVStore | None:
        store: KVStore | None = self.machine.node.service("kv")
        return store

    # -- evaluation ---------------------------------------------------------------------------

    async def _poll(self, *, rate_limit: bool) -> str:
        """One read of the key and its decision (steps 1-7 of spec 3.7)."""
        if not self.should_watch():
            return "skipped"
        if self._lock.locked():
            return "skipped"  # an evaluation is already running
        async with self._lock:
            store = self._store()
            if store is None:
                return self._error(NO_STORE)
            now = self.machine.clock.monotonic()
            if (
                rate_limit
                and self._last_poll is not None
                and _round_seconds(now - self._last_poll) < self.interval
            ):
                self.log_debug(f"Skipping poll: the last one was {now - self._last_poll:.1f}s ago")
                return "skipped"
            self._last_poll = now
            try:
                key = self.machine.render(self._key)
            except TemplateError as exc:
                return self._error(f"could not parse template for key: {exc}")
            data_key = self._data_key(key)
            self._load_previous(data_key)
            bucket = self.properties.bucket
            self.log_debug(f"Polling for {bucket}.{key}")
            try:
                async with asyncio.timeout(IO_TIMEOUT):
                    entry = await store.get(bucket, key)
            except (KVError, TimeoutError) as exc:
                if not self._bound:
                    # Choria binds the bucket before its rate limit: until that works, every
                    # poll tries again.
                    self._last_poll = None
                return self._error(f"Could not get {bucket}.{key}: {exc or 'timed out'}")
            self._bound = True
            if entry is None:
                return self._missing(data_key, 0)
            self._seen_revision = max(self._seen_revision, entry.revision)
            return self._decide(entry.value, entry.revision, data_key, key)

    async def _evaluate_entry(self, entry: KVEntry) -> str | None:
        """A change pushed by the store's watch; None when there is nothing new."""
        async with self._lock:
            if entry.key != self._watched_key or entry.revision <= self._seen_revision:
                return None
            self._seen_revision = entry.revision
            if not self.should_watch():
                return "skipped"
            data_key = self._data_key(entry.key)
            self._load_previous(data_key)
            if entry.deleted:
                return self._missing(data_key, entry.revision)
            return self._decide(entry.value, entry.revision, data_key, entry.key)

    async def _evaluate_republished(
        self, subject: str, headers: Mapping[str, str], data: bytes
    ) -> str:
        """A message republished from the bucket's stream (the same decisions, no rate limit)."""
        if not self.should_watch():
            return "skipped"
        async with self._lock:
            try:
                key = self.machine.render(self._key)
            except TemplateError as exc:
                return self._error(f"could not parse template for key: {exc}")
            if not subject.endswith(key):
                return self._error(
                    f"received republish message on {subject} that does not match expected "
                    f"key {key}"
                )
            data_key = self._data_key(key)
            self._load_previous(data_key)
            try:
                sequence = int(headers["Nats-Sequence"])
            except ValueError:
                return self._error(f"invalid Nats-Sequence header {headers['Nats-Sequence']!r}")
            self._seen_revision = max(self._seen_revision, sequence)
            if headers.get("KV-Operation") in ("DEL", "PURGE"):
                return self._missing(data_key, sequence)
            return self._decide(data, sequence, data_key, key)

    def _load_previous(self, data_key: str) -> None:
        if self._previous is None:
            self._previous = self.machine.data.get(data_key)

    def _missing(self, data_key: str, sequence: int) -> str:
        """The key has no value (never had, or deleted)."""
        if self._previous is None:
            return "unchanged"
        self.log_debug(f"Removing data from {data_key}")
        try:
            self.machine.data.delete(data_key)
        except OSError as exc:
            return self._error(f"Could not delete key {data_key} from machine: {exc}")
        self._previous = None
        self._previous_seq = sequence
        return "changed"

    def _decide(self, raw: bytes, revision: int, data_key: str, key: str) -> str:
        props = self.properties
        try:
            value = parse_value(
                raw,
                hiera_facts=self.machine.facts.get() if props.hiera_config else None,
                query=props.query,
                warn=self.log_warning,
            )
        except HieraError as exc:
            return self._error(f"Could not parse value {props.bucket}.{key}: {exc}")
        if not json_equal(self._previous, value):
            try:
                self.machine.data.put(data_key, value)
            except OSError as exc:
                return self._error(str(exc))
            self._previous = value
            self._previous_seq = revision
            return "changed"
        # The same value again: a change only when asked, and never for the first revision seen.
        if props.on_matching_update and 0 < self._previous_seq < revision:
            self._previous_seq = revision
            return "changed"
        self._previous_seq = revision
        return "changed" if props.on_successful_get else "unchanged"

    def _data_key(self, key: str) -> str:
        name = key
        if self._store_key is not None:
            try:
                name = self.machine.render(self._store_key)
            except TemplateError as exc:
                self.log_warning(f"Failed to parse store_key {self.properties.store_key}: {exc}")
                name = self.properties.store_key
        if self.properties.bucket_prefix:
            return f"{self.properties.bucket}_{name}"
        return name

    def _error(self, message: str) -> str:
        self.status.last_error = message
        self.log_error(message)
        return "error"

    async def _report(self, outcome: str | None) -> None:
        """Record an outcome and fire its transition (Choria's handleState)."""
        if outcome is None:
            return
        self.previous_state = outcome
        if outcome in ("changed", "unchanged"):
            self.status.last_error = None
        self.record(outcome)
        if outcome == "error":
            await self.fire_fail()
        elif outcome == "changed":
            await self.fire_success()

    # -- watch mode ---------------------------------------------------------------------------

    def _restart_watch(self) -> None:
        """(Re)start the store watch when the rendered key is not the one being watched."""
        if self._group is None:
            return
        try:
            key = self.machine.render(self._key)
        except TemplateError as exc:
            self.log_error(f"could not parse template for key: {exc}")
            return
        if (
            key == self._watched_key
            and self._watch_task is not None
            and not self._watch_task.done()
        ):
            return
        self._stop_watch()
        self._watched_key = key
        self._watch_task = self._group.create_task(
            self._watch(key), name=f"{self.machine.name}#{self.name}:watch"
        )

    def _stop_watch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        self._watched_key = None

    async def _watch(self, key: str) -> None:
        store = self._store()
        if store is None:
            return  # every read reports it; there is nothing to watch
        bucket = self.properties.bucket
        delay = 1.0
        while True:
            try:
                async for entry in store.watch(bucket, key):
                    delay = 1.0
                    await self._report(await self._evaluate_entry(entry))
                raise KVError("the watch ended")
            except (KVError, TimeoutError) as exc:
                message = f"Could not watch {bucket}.{key}: {exc}"
            except Exception as exc:  # a store bug must not end the watch for good
                message = f"Could not watch {bucket}.{key}: {type(exc).__name__}: {exc}"
            if self.should_watch():
                await self._report(self._error(message))
            else:
                self.log_warning(message)
            await self.machine.clock.sleep(delay)
            delay = min(delay * 2, _WATCH_RETRY_MAX)

    # -- republish trigger --------------------------------------------------------------------

    async def _republish_listener(self) -> None:
        broker = self.machine.node.service("nats")
        if broker is None or not getattr(broker, "enabled", False):
            self.log_warning("republish_trigger needs a NATS connection; it is ignored")
            return
        try:
            subject = self.machine.render(self._trigger)
        except TemplateError as exc:
            self.log_error(f"could not parse template for republish trigger: {exc}")
            return
        if not _valid_subject(subject):
            self.log_error(f"invalid republish trigger subject {subject!r}")
            return
        subscription = None
        try:
            while subscription is None:
                await broker.wait_connected(None)
                self.log_info(f"Setting up republish listener on {subject!r}")
                try:
                    subscription = await broker.client.subscribe(subject, cb=self._on_republish)
                except Exception as exc:  # nats-py raises several types while reconnecting
                    self.log_error(f"Could not set up republish listener: {exc}")
                    await self.machine.clock.sleep(5.0)
            self.republish_subject = subject
            await asyncio.Event().wait()
        finally:
            self.republish_subject = None
            if subscription is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await subscription.unsubscribe()

    async def _on_republish(self, msg: Any) -> None:
        headers: Mapping[str, str] = msg.headers or {}
        if not all(headers.get(name) for name in REPUBLISH_HEADERS):
            self.log_warning(
                f"Received non republished message on {msg.subject!r}: {msg.data[:200]!r}"
            )
            return
        self.log_info(f"Received republish trigger on subject {msg.subject}")
        outcome = await self._evaluate_republished(msg.subject, headers, bytes(msg.data))
        await self._report(outcome)

    # -- state --------------------------------------------------------------------------------

    def state_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "state": self.previous_state,
            "bucket": self.properties.bucket,
        }
        if self.properties.key:
            fields["key"] = self.properties.key
        fields["mode"] = self.properties.mode
        return fields

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        head = (
            f"{payload.get('identity')} key-value {payload.get('machine')}#{payload.get('name')} "
            f"{payload.get('mode')}ing bucket: {payload.get('bucket')}"
        )
        if payload.get("key"):
            head += f" key: {payload.get('key')}"
        return f"{head} state: {payload.get('state')}"


def _valid_subject(subject: str) -> bool:
    tokens = subject.split(".")
    return bool(subject) and all(t and not any(c.isspace() for c in t) for t in tokens)
