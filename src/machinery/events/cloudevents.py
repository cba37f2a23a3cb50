"""CloudEvents 1.0 envelopes in Choria's exact shape (spec 4.2).

Every event is encoded by :func:`go_json`, which writes what Go's ``encoding/json`` writes for
Choria's structs: compact, struct fields in declaration order, map keys sorted, float64 numbers
in Go's form, non-ASCII as UTF-8, and ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, so the
bytes are those a Choria agent would publish.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from machinery.core.notifications import (
    TRANSITION_PROTOCOL,
    MachineEvent,
    TransitionNotification,
    WatcherStateNotification,
)
from machinery.lang.gojson import GoJSONError, go_json, go_json_escapes

__all__ = [
    "SOURCE",
    "CloudEventError",
    "EventEncodingError",
    "decode_cloudevent",
    "encode_cloudevent",
    "go_json",
    "new_event_id",
    "rfc3339",
    "shared_cloudevent",
    "to_cloudevent",
]

SOURCE = "io.choria.machine"
_WATCHER_PREFIX = "io.choria.machine.watcher."
_WATCHER_SUFFIX = ".v1.state"


class CloudEventError(ValueError):
    """Text that is not a machine event we understand."""


# Go's json.Marshal errors for these values; the name says where it bites.
EventEncodingError = GoJSONError

_quote: Callable[[str], str] = json.encoder.encode_basestring  # the C string encoder


_last_time: tuple[int, str] = (-1, "")


def rfc3339(timestamp: float) -> str:
    """``2020-12-02T16:02:33Z`` for a Unix time (seconds, UTC, no fraction)."""
    global _last_time
    second = int(timestamp)
    if _last_time[0] != second:  # events come in bursts within one second
        _last_time = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _last_time[1]


# Event ids must be unique, not secret: a PRNG seeded from the OS is ~30x cheaper than
# uuid.uuid4(), whose os.urandom() call dominated the cost of publishing an event.
_ids = random.Random(os.urandom(32))


def new_event_id() -> str:
    """A random (version 4) UUID for a CloudEvent."""
    bits = _ids.getrandbits(128)
    bits = (bits & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    bits = (bits & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def to_cloudevent(event: MachineEvent, event_id: str | None = None) -> dict[str, Any]:
    """The CloudEvent for ``event``; ``event_id`` defaults to a new UUID."""
    data = event.data()
    return {
        "specversion": "1.0",
        "id": event_id or new_event_id(),
        "source": SOURCE,
        "type": event.protocol,
        "subject": event.identity,
        "datacontenttype": "application/json",
        "time": rfc3339(event.timestamp),
        "data": data,
    }


def encode_cloudevent(event: MachineEvent, event_id: str | None = None) -> str:
    """The CloudEvent for ``event`` as one line of JSON."""
    if isinstance(event, TransitionNotification):
        return _encode_transition(event, event_id or new_event_id())
    # The envelope's fields are all strings: written directly around the cached data.
    envelope = (
        '{"specversion":"1.0","id":'
        + _quote(event_id or new_event_id())
        + ',"source":"io.choria.machine","type":'
        + _quote(event.protocol)
        + ',"subject":'
        + _quote(event.identity)
        + ',"datacontenttype":"application/json","time":"'
        + rfc3339(event.timestamp)
        + '","data":'
    )
    return go_json_escapes(envelope) + event.encoded_data() + "}"


def shared_cloudevent(event: MachineEvent) -> tuple[str, str]:
    """The id and JSON of ``event``'s CloudEvent, encoded by the first sink that asks and
    reused by every other: the JSON-lines file, NATS and the event stream carry the same
    event with the same id, for the cost of one encoding."""
    cached = event.cloudevent
    if cached is None:
        event_id = new_event_id()
        cached = (event_id, encode_cloudevent(event, event_id))
        object.__setattr__(event, "cloudevent", cached)  # a cache on a frozen dataclass
    return cached


def _encode_transition(event: TransitionNotification, event_id: str) -> str:
    # Transitions are the bulk of all events and have a fixed shape: writing the JSON directly
    # is several times cheaper than encoding a dict, with exactly the same bytes.
    q = _quote
    identity = q(event.identity)
    text = (
        '{"specversion":"1.0","id":' + q(event_id) + ',"source":"io.choria.machine",'
        '"type":"io.choria.machine.v1.transition","subject":'
        + identity
        + ',"datacontenttype":"application/json","time":"'
        + rfc3339(event.timestamp)
        + '","data":{"protocol":"io.choria.machine.v1.transition","identity":'
        + identity
        + ',"id":'
        + q(event.id)
        + ',"version":'
        + q(event.version)
        + ',"timestamp":'
        + str(int(event.timestamp))
        + ',"machine":'
        + q(event.machine)
        + ',"transition":'
        + q(event.transition)
        + ',"from_state":'
        + q(event.from_state)
        + ',"to_state":'
        + q(event.to_state)
        + "}}"
    )
    return go_json_escapes(text)


_MAX_TIMESTAMP = 2**53  # the integers a JSON number holds exactly


def _timestamp(value: object) -> int:
    """Unix seconds from an event: an integer (or integral float) a clock can show."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"timestamp {value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"timestamp {value!r} is not finite")
    if abs(value) > _MAX_TIMESTAMP:
        raise ValueError(f"timestamp {value!r} is out of range")
    return int(value)


def decode_cloudevent(text: str | bytes) -> MachineEvent:
    """Parse a CloudEvent (ours or a real Choria agent's) back into an event.

    Bare ``data`` objects, as Choria published before 0.13, are accepted too.
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CloudEventError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CloudEventError("not a JSON object")
    data = document.get("data", document) if "specversion" in document else document
    if not isinstance(data, dict):
        raise CloudEventError("event data is not an object")
    protocol = data.get("protocol") or document.get("type")
    if not isinstance(protocol, str):
        raise CloudEventError("event has no protocol")
    if protocol == TRANSITION_PROTOCOL:
        try:
            return TransitionNotification(
                identity=str(data.get("identity", "")),
                id=str(data.get("id", "")),
                version=str(data.get("version", "")),
                timestamp=_timestamp(data.get("timestamp", 0)),
                machine=str(data.get("machine", "")),
                transition=str(data.get("transition", "")),
                from_state=str(data.get("from_state", "")),
                to_state=str(data.get("to_state", "")),
            )
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise CloudEventError(f"invalid transition event: {exc}") from None
    if protocol.startswith(_WATCHER_PREFIX) and protocol.endswith(_WATCHER_SUFFIX):
        watcher_type = protocol[len(_WATCHER_PREFIX) : -len(_WATCHER_SUFFIX)]
        if not watcher_type:
            raise CloudEventError("invalid watcher type in watcher state")
        try:
            _timestamp(data.get("timestamp", 0))
        except (TypeError, ValueError) as exc:
            raise CloudEventError(f"invalid watcher state: {exc}") from None
        from machinery.events.text import describe_watcher_state

        return WatcherStateNotification(
            watcher_type, data, describe_watcher_state(watcher_type, data)
        )
    raise CloudEventError(f'unknown event type "{protocol}"')
