"""CloudEvents 1.0 envelopes in Choria's exact shape (spec 4.2).

Encoding follows Go's ``encoding/json`` where it shows: compact separators, key order as
Choria's structs declare it, non-ASCII as UTF-8, and ``<``, ``>``, ``&``, U+2028 and U+2029
escaped, so Choria's own tools read our events unchanged.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from machinery.core.notifications import (
    TRANSITION_PROTOCOL,
    MachineEvent,
    TransitionNotification,
    WatcherStateNotification,
)

__all__ = [
    "SOURCE",
    "CloudEventError",
    "decode_cloudevent",
    "encode_cloudevent",
    "go_json",
    "rfc3339",
    "to_cloudevent",
]

SOURCE = "io.choria.machine"
_WATCHER_PREFIX = "io.choria.machine.watcher."
_WATCHER_SUFFIX = ".v1.state"
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


class CloudEventError(ValueError):
    """Text that is not a machine event we understand."""


def go_json(value: Any) -> str:
    """JSON text as Go's encoding/json writes it (for the parts that differ from Python's)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).translate(
        _GO_ESCAPES
    )


def rfc3339(timestamp: float) -> str:
    """``2020-12-02T16:02:33Z`` for a Unix time (seconds, UTC, no fraction)."""
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_cloudevent(event: MachineEvent, event_id: str | None = None) -> dict[str, Any]:
    """The CloudEvent for ``event``; ``event_id`` defaults to a new UUID."""
    data = event.data()
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": SOURCE,
        "type": event.protocol,
        "subject": event.identity,
        "datacontenttype": "application/json",
        "time": rfc3339(event.timestamp),
        "data": data,
    }


def encode_cloudevent(event: MachineEvent, event_id: str | None = None) -> str:
    """The CloudEvent for ``event`` as one line of JSON."""
    return go_json(to_cloudevent(event, event_id))


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
                timestamp=int(data.get("timestamp", 0)),
                machine=str(data.get("machine", "")),
                transition=str(data.get("transition", "")),
                from_state=str(data.get("from_state", "")),
                to_state=str(data.get("to_state", "")),
            )
        except (TypeError, ValueError) as exc:
            raise CloudEventError(f"invalid transition event: {exc}") from None
    if protocol.startswith(_WATCHER_PREFIX) and protocol.endswith(_WATCHER_SUFFIX):
        watcher_type = protocol[len(_WATCHER_PREFIX) : -len(_WATCHER_SUFFIX)]
        if not watcher_type:
            raise CloudEventError("invalid watcher type in watcher state")
        from machinery.events.text import describe_watcher_state

        return WatcherStateNotification(
            watcher_type, data, describe_watcher_state(watcher_type, data)
        )
    raise CloudEventError(f'unknown event type "{protocol}"')
