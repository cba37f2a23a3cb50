"""The ``machine.yaml`` models (spec section 2).

These models describe the shape of a manifest; what must hold between its parts (known states,
known transitions, watcher properties per type) is checked in :mod:`machinery.spec.validate`.
Every field has a default so that a broken manifest still yields a partial model to check, and
all problems are reported in one go.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from machinery.spec.types import Duration, NameList

__all__ = [
    "ForeignStateSpec",
    "MachineSpec",
    "SubscribeSpec",
    "TransitionSpec",
    "WatcherProperties",
    "WatcherSpec",
]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", coerce_numbers_to_str=True, populate_by_name=True, frozen=True
    )


class SubscribeSpec(_Strict):
    """Fire the owning transition when machine ``machine_name`` fires ``event`` (spec 1.9)."""

    machine_name: str = Field("", description="name of the machine to follow (on this node)")
    event: str = Field("", description="the event of that machine that triggers this transition")


class TransitionSpec(_Strict):
    """An event, the states it is valid in, and where it leads."""

    name: str = Field("", description="the event name that watchers and the API fire")
    from_: NameList = Field(
        default_factory=list, alias="from", description="states in which the event is valid"
    )
    destination: str = Field("", description="the state the machine moves to")
    description: str = Field("", description="human text shown in graphs and the dashboard")
    subscribe: list[SubscribeSpec] = Field(
        default_factory=list, description="events of other machines that fire this transition"
    )


class ForeignStateSpec(_Strict):
    """A watcher is active only while machine ``machine_name`` is in ``state`` (spec 1.8)."""

    machine_name: str = ""
    state: str = ""


class WatcherSpec(_Strict):
    """The fields every watcher has; ``properties`` depends on ``type``."""

    name: str = Field("", description="unique within the machine")
    type: str = Field("", description="the watcher type, such as exec or file")
    state_match: NameList = Field(
        default_factory=list, description="states in which the watcher is active; empty = all"
    )
    foreign_state_required: list[ForeignStateSpec] = Field(
        default_factory=list, description="states other machines must be in (all of them)"
    )
    fail_transition: str = Field("", description="event fired when the watcher fails")
    success_transition: str = Field("", description="event fired when the watcher succeeds")
    interval: Duration | None = Field(None, description="how often the watcher runs")
    announce_interval: Duration | None = Field(
        None, description="publish the watcher's state this often (at least 1m)"
    )
    properties: dict[str, Any] = Field(
        default_factory=dict, description="settings specific to the watcher type"
    )


class MachineSpec(_Strict):
    """A whole ``machine.yaml``."""

    name: str = Field("", description="the machine's name, unique on a node")
    version: str = Field("", description="the machine's version, SemVer (1.0.0)")
    initial_state: str = Field("", description="the state the machine starts in")
    splay_start: int = Field(
        0, ge=0, description="wait a random 0..N seconds before starting the watchers"
    )
    transitions: list[TransitionSpec] = Field(default_factory=list)
    watchers: list[WatcherSpec] = Field(default_factory=list)

    def states(self) -> list[str]:
        """Every known state: the initial state plus each ``from`` and ``destination``, in order
        of first appearance."""
        seen: dict[str, None] = {}
        if self.initial_state:
            seen[self.initial_state] = None
        for transition in self.transitions:
            for state in transition.from_:
                seen.setdefault(state, None)
            if transition.destination:
                seen.setdefault(transition.destination, None)
        return list(seen)

    def transition_names(self) -> list[str]:
        """Every distinct transition (event) name, in order of first appearance."""
        return list(dict.fromkeys(t.name for t in self.transitions if t.name))


class WatcherProperties(BaseModel):
    """Base of every watcher type's ``properties`` model.

    Property keys are matched case-insensitively (as Choria does) and unknown keys are refused.
    Numbers are accepted where text is expected, and ``"true"`` where a boolean is.
    """

    model_config = ConfigDict(
        extra="forbid", coerce_numbers_to_str=True, populate_by_name=True, frozen=True
    )

    # Keys Choria silently ignores that we accept for compatibility, with the warning to show.
    ignored_keys: ClassVar[dict[str, str]] = {}
