"""What a machine tells the world: transitions and watcher states (spec section 4).

These are the ``data`` parts of Choria's events, field for field and in Choria's key order. The
CloudEvents envelope, the console lines and the transports live in :mod:`machinery.events`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from machinery.lang.gojson import GoMap, go_json

__all__ = [
    "TRANSITION_PROTOCOL",
    "GoMap",
    "MachineEvent",
    "Notifier",
    "TransitionNotification",
    "WatcherStateNotification",
    "watcher_protocol",
]

TRANSITION_PROTOCOL = "io.choria.machine.v1.transition"


def watcher_protocol(watcher_type: str) -> str:
    """The protocol (and CloudEvent type) of a watcher type's state events."""
    return f"io.choria.machine.watcher.{watcher_type}.v1.state"


@dataclass(frozen=True, slots=True)
class TransitionNotification:
    """A real state change of a machine (self-transitions are never published)."""

    identity: str
    id: str
    version: str
    timestamp: int
    machine: str
    transition: str
    from_state: str
    to_state: str
    cloudevent: tuple[str, str] | None = field(default=None, compare=False, repr=False)
    """The CloudEvent's id and JSON, once the first sink has encoded it (see
    :func:`~machinery.events.cloudevents.shared_cloudevent`)."""

    protocol = TRANSITION_PROTOCOL

    @property
    def subject(self) -> str:
        return "choria.machine.transition"

    def data(self) -> dict[str, Any]:
        return {
            "protocol": TRANSITION_PROTOCOL,
            "identity": self.identity,
            "id": self.id,
            "version": self.version,
            "timestamp": self.timestamp,
            "machine": self.machine,
            "transition": self.transition,
            "from_state": self.from_state,
            "to_state": self.to_state,
        }

    def describe(self) -> str:
        """Choria's one-line form, as ``machine watch`` prints it."""
        return (
            f"{self.identity} {self.machine} transitioned via event {self.transition}: "
            f"{self.from_state} => {self.to_state}"
        )


@dataclass(frozen=True, slots=True)
class WatcherStateNotification:
    """A watcher's state: the common header and the type's own fields, plus its text form."""

    watcher_type: str
    payload: dict[str, Any]
    text: str
    encoded: str | None = field(default=None, compare=False, repr=False)
    """The payload in Go's JSON encoding, once :meth:`encoded_data` has run."""
    cloudevent: tuple[str, str] | None = field(default=None, compare=False, repr=False)
    """The CloudEvent's id and JSON, once the first sink has encoded it."""

    @property
    def protocol(self) -> str:
        return watcher_protocol(self.watcher_type)

    @property
    def subject(self) -> str:
        return f"choria.machine.watcher.{self.watcher_type}.state"

    @property
    def identity(self) -> str:
        return str(self.payload.get("identity", ""))

    @property
    def machine(self) -> str:
        return str(self.payload.get("machine", ""))

    @property
    def timestamp(self) -> int:
        return int(self.payload.get("timestamp", 0))

    def data(self) -> dict[str, Any]:
        return self.payload

    def encoded_data(self) -> str:
        """The payload as Go's ``encoding/json`` writes it, encoded once for every sink.

        Raises :class:`~machinery.lang.gojson.GoJSONError` for a payload Go would refuse (NaN,
        infinities).
        """
        encoded = self.encoded
        if encoded is None:
            encoded = go_json(self.payload)
            object.__setattr__(self, "encoded", encoded)  # a cache on a frozen dataclass
        return encoded

    def describe(self) -> str:
        return self.text


MachineEvent = TransitionNotification | WatcherStateNotification


class Notifier(Protocol):
    """Receives every event a machine produces. Must not block: queue and return."""

    def notify(self, event: MachineEvent) -> None: ...
