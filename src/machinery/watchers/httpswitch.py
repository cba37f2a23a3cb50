"""The ``httpswitch`` watcher (spec 3.13): an on/off switch operated over HTTP.

The switch follows the machine: entering a state listed in ``on_when`` turns it on, one in
``off_when`` turns it off (published, no transition). Turning it on over HTTP fires
``success_transition``, turning it off fires ``fail_transition``; both are refused while the
machine is in a ``disable_when`` state or outside the watcher's states.

Node-wide service, for the HTTP API (spec 7.3)
----------------------------------------------
Key ``"httpswitch"`` in :meth:`machinery.core.node.Node.shared`: an :class:`HttpSwitchRegistry`.
A running switch registers itself as ``(machine name, watcher name)`` when its ``run()`` starts
and unregisters when it stops or is closed. The API uses:

- ``registry.get(machine, watcher)`` → :class:`HttpSwitchWatcher` or ``None`` (400
  ``switch not found``),
- ``watcher.describe_switch()`` → the GET body of ``/choria/machine/switch/v1/...``,
- ``await watcher.set_switch(on)`` → the switch's real state afterwards, or :class:`SwitchError`
  (500 with its message),
- :func:`home_assistant_state` and :func:`parse_home_assistant_body` for
  ``/choria/homeassistant/switch/v1/...``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import Field, field_validator

from machinery.core.notifications import GoMap
from machinery.core.wakeup import STATE_CHANGED
from machinery.spec.diagnostics import did_you_mean
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import NameList
from machinery.watchers.base import Watcher

__all__ = [
    "REGISTRY_KEY",
    "HttpSwitchProperties",
    "HttpSwitchRegistry",
    "HttpSwitchWatcher",
    "SwitchError",
    "home_assistant_state",
    "parse_home_assistant_body",
]

REGISTRY_KEY = "httpswitch"


class SwitchError(Exception):
    """A switch action that was refused; ``message`` is Choria's text for it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HttpSwitchRegistry:
    """The switches of one node, by machine and watcher name (see the module docstring)."""

    def __init__(self) -> None:
        self._switches: dict[tuple[str, str], HttpSwitchWatcher] = {}

    def register(self, machine_name: str, watcher_name: str, watcher: HttpSwitchWatcher) -> None:
        """Make ``watcher`` reachable; a later registration under the same names wins."""
        self._switches[(machine_name, watcher_name)] = watcher

    def unregister(
        self, machine_name: str, watcher_name: str, watcher: HttpSwitchWatcher | None = None
    ) -> None:
        """Forget a switch; with ``watcher``, only if that is the one registered."""
        key = (machine_name, watcher_name)
        if watcher is None or self._switches.get(key) is watcher:
            self._switches.pop(key, None)

    def get(self, machine_name: str, watcher_name: str) -> HttpSwitchWatcher | None:
        """The switch called ``watcher_name`` in machine ``machine_name``, if it is running."""
        return self._switches.get((machine_name, watcher_name))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """The (machine, watcher) names of every registered switch, sorted."""
        return iter(sorted(self._switches))

    def __len__(self) -> int:
        return len(self._switches)


def home_assistant_state(watcher: HttpSwitchWatcher) -> str:
    """The Home Assistant RESTful Switch body for a switch: ``ON`` or ``OFF``."""
    return "ON" if watcher.is_on else "OFF"


def parse_home_assistant_body(body: bytes) -> bool:
    """What a Home Assistant POST asks for: a body starting with ``ON`` is on, all else off."""
    return body.startswith(b"ON")


class HttpSwitchProperties(WatcherProperties):
    """Properties of the httpswitch watcher."""

    on_when: NameList = Field(
        default_factory=list, description="machine states in which the switch reports on"
    )
    off_when: NameList = Field(
        default_factory=list, description="machine states in which the switch reports off"
    )
    disable_when: NameList = Field(
        default_factory=list, description="machine states in which HTTP requests are refused"
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="free-form labels published with the switch state"
    )

    @field_validator("annotations", mode="before")
    @classmethod
    def _annotation_text(cls, value: Any) -> Any:
        # YAML turns unquoted true/yes into booleans; an annotation is text.
        if isinstance(value, dict):
            return {
                k: ("true" if v else "false") if isinstance(v, bool) else v
                for k, v in value.items()
            }
        return value


class HttpSwitchWatcher(Watcher[HttpSwitchProperties]):
    """A switch turned on and off over HTTP; follows on_when/off_when states."""

    type_name = "httpswitch"
    properties_model = HttpSwitchProperties
    uses_interval = False

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, HttpSwitchProperties)
        states = machine.states()
        transitions = set(machine.transition_names())
        for key in ("on_when", "off_when", "disable_when"):
            for i, state in enumerate(getattr(properties, key)):
                if state in states:
                    continue
                hint = (
                    f"; {state!r} is a transition, not a state"
                    if state in transitions
                    else did_you_mean(state, states)
                )
                yield Problem(("properties", key, i), f"invalid state {state!r} in {key}{hint}")
        both = [s for s in properties.on_when if s in properties.off_when]
        for state in dict.fromkeys(both):
            yield Problem.warning(
                ("properties", "off_when", properties.off_when.index(state)),
                f"state {state!r} is in both on_when and off_when; on_when wins",
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.switch_status = "unknown"
        self._lock = asyncio.Lock()
        # machine.transitions_total when the machine state was last applied: the run loop and
        # set_switch both apply it, and each change must be applied (and published) once.
        self._applied: int | None = None

    @property
    def is_on(self) -> bool:
        return self.switch_status == "on"

    @property
    def is_off(self) -> bool:
        return self.switch_status == "off"

    def _registry(self) -> HttpSwitchRegistry:
        return self.machine.node.shared(REGISTRY_KEY, HttpSwitchRegistry)

    async def run(self) -> None:
        registry = self._registry()
        registry.register(self.machine.name, self.name, self)
        try:
            if self.should_watch():
                self._apply_state()
            else:
                self._applied = self.machine.transitions_total
            while True:
                reasons = await self._wakeup.wait()
                if reasons & STATE_CHANGED:
                    self._apply_state()
        finally:
            registry.unregister(self.machine.name, self.name, self)

    def close(self) -> None:
        self._registry().unregister(self.machine.name, self.name, self)

    def _apply_state(self) -> None:
        """Follow the machine state into on_when/off_when (no transition)."""
        serial = self.machine.transitions_total
        if serial == self._applied:
            return
        self._applied = serial
        state = self.machine.state
        if state in self.properties.on_when:
            self._set("on")
        elif state in self.properties.off_when:
            self._set("off")

    def _set(self, status: str) -> None:
        self.switch_status = status
        self.record(status)
        self.publish()

    async def set_switch(self, on: bool) -> bool:
        """Turn the switch on (fires success_transition) or off (fail_transition).

        Returns whether the switch is on once the action and the state change it caused are
        done. Raises :class:`SwitchError` when the request is refused.
        """
        async with self._lock:
            if self.machine.state in self.properties.disable_when:
                raise SwitchError("watcher is disabled")
            if not self.should_watch():
                raise SwitchError(
                    "watcher is not in an active state"
                    if on
                    else "switch is not in an active state"
                )
            self.log_info(f"Turning switch {'on' if on else 'off'} on request")
            self._set("on" if on else "off")
            if on:
                await self.fire_success()
            else:
                await self.fire_fail()
            # The transition may lead into an on_when/off_when state: apply it now, so the
            # answer is the switch's real state (the run loop then finds nothing new).
            self._apply_state()
            return self.is_on

    def describe_switch(self) -> dict[str, Any]:
        """The body of a GET on ``/choria/machine/switch/v1/<machine>/<watcher>``."""
        return {
            "is_on": self.is_on,
            "is_off": self.is_off,
            "status": self.switch_status,
            "detail": self.current_state().payload,
        }

    def state_fields(self) -> dict[str, Any]:
        return {
            "status": self.switch_status,
            "is_on": self.is_on,
            "annotations": GoMap(self.properties.annotations),
        }

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        return (
            f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} "
            f"previous: {payload.get('status')}"
        )
