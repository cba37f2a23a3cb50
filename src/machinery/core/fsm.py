"""The finite state machine itself, with looplab/fsm's semantics (spec 1.2).

Pure and synchronous: no I/O, no clock, no events. The machine runtime wraps it with the rate
limiter, notifications and watchers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["FSM", "FireResult", "Outcome"]


class Outcome(StrEnum):
    """What firing an event did."""

    CHANGED = "changed"  # the state changed: a transition to publish
    SELF = "self"  # valid event, destination is the current state: silent
    INVALID = "invalid"  # not valid in the current state: a warning, no change
    EMPTY = "empty"  # empty event name: nothing at all


@dataclass(frozen=True, slots=True)
class FireResult:
    outcome: Outcome
    event: str
    source: str
    destination: str

    @property
    def changed(self) -> bool:
        return self.outcome is Outcome.CHANGED

    @property
    def valid(self) -> bool:
        """True when the event was valid in the source state, even if nothing changed."""
        return self.outcome in (Outcome.CHANGED, Outcome.SELF)


class FSM:
    """States and events: ``fire(event)`` moves along the merged transition table."""

    __slots__ = ("_initial", "_state", "_table")

    def __init__(self, initial: str, transitions: Iterable[tuple[str, Iterable[str], str]]) -> None:
        """``transitions`` holds ``(event, sources, destination)``; entries with the same event
        merge, and for a repeated ``(event, source)`` pair the later one wins, as in Choria."""
        table: dict[str, dict[str, str]] = {}
        for event, sources, destination in transitions:
            for source in sources:
                table.setdefault(source, {})[event] = destination
        self._table = table
        self._initial = initial
        self._state = initial

    @property
    def state(self) -> str:
        return self._state

    @property
    def initial(self) -> str:
        return self._initial

    def can(self, event: str) -> bool:
        """Whether ``event`` is valid in the current state (self-transitions included)."""
        events = self._table.get(self._state)
        return events is not None and event in events

    def destination(self, event: str) -> str | None:
        """Where ``event`` would lead from the current state, or None if it is not valid."""
        events = self._table.get(self._state)
        return None if events is None else events.get(event)

    def available(self) -> list[str]:
        """The events valid in the current state, sorted."""
        return sorted(self._table.get(self._state, ()))

    def fire(self, event: str) -> FireResult:
        source = self._state
        if not event:
            return FireResult(Outcome.EMPTY, event, source, source)
        destination = self.destination(event)
        if destination is None:
            return FireResult(Outcome.INVALID, event, source, source)
        if destination == source:
            return FireResult(Outcome.SELF, event, source, source)
        self._state = destination
        return FireResult(Outcome.CHANGED, event, source, destination)

    def force_state(self, state: str) -> None:
        """Set the state without an event (restoring a machine after a restart)."""
        self._state = state

    def edges(self) -> list[tuple[str, str, str]]:
        """Every ``(source, event, destination)``, sorted by source then event."""
        return sorted(
            (source, event, destination)
            for source, events in self._table.items()
            for event, destination in events.items()
        )

    def states(self) -> list[str]:
        """Every state named in the table, sorted (as looplab/fsm lists them)."""
        names = set(self._table)
        for events in self._table.values():
            names.update(events.values())
        return sorted(names)
