"""The ``machines`` watcher (spec 3.10): deploy machines from a signed specification.

The specification sits in machine data (usually put there by a ``kv`` watcher) as
``{"machines": "<base64 JSON array>", "signature": "<hex>"}``, signed over the decoded JSON.
For every entry whose ``match`` selects this node the watcher keeps a manager machine
``mm_<name>`` in the store, whose ``archive`` watcher installs ``<store>/<name>``; the agent then
runs the installed machine like any other. See :mod:`machinery.watchers.manager` for the
shared behaviour and ``docs/watchers/machines.md`` for operators.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from machinery.core.signing import SpecKind
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import Duration
from machinery.watchers.archive import redact_url
from machinery.watchers.manager import (
    DEFAULT_MANAGE_INTERVAL,
    ManagedEntry,
    ManagerProperties,
    ManagerWatcher,
    check_manage_interval,
    check_manager_definition,
    describe_manager_payload,
)

__all__ = ["MachinesProperties", "MachinesWatcher"]


class MachinesProperties(ManagerProperties):
    """Properties of the machines watcher."""

    machine_manage_interval: Duration | None = Field(
        None,
        description="how often the manager machines verify their install (default 2m, at "
        "least 10s)",
    )
    machinemanageinterval: Duration | None = Field(
        None, description="the spelling Choria actually reads; same as machine_manage_interval"
    )


class MachinesWatcher(ManagerWatcher[MachinesProperties]):
    """Keeps a manager machine per specified (and matching) machine in the store."""

    type_name = "machines"
    properties_model = MachinesProperties
    kind = SpecKind.MACHINES

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, MachinesProperties)
        yield from check_manager_definition(properties)
        documented, legacy = properties.machine_manage_interval, properties.machinemanageinterval
        yield from check_manage_interval("machine_manage_interval", documented)
        yield from check_manage_interval("machinemanageinterval", legacy)
        if documented and legacy and documented != legacy:
            yield Problem(
                ("properties", "machinemanageinterval"),
                "machine_manage_interval and machinemanageinterval are the same setting and "
                "differ; keep one",
            )

    @property
    def prefix(self) -> str:
        return "mm"

    @property
    def manage_interval(self) -> float:
        props = self.properties
        return (
            props.machine_manage_interval
            or props.machinemanageinterval
            or (DEFAULT_MANAGE_INTERVAL)
        )

    @property
    def target(self) -> Path:
        return self.store

    def deploy_message(self, entry: ManagedEntry) -> str:
        return f"Deploying Choria Autonomous Agent {entry.name} from {redact_url(entry.source)}"

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        return describe_manager_payload(payload, "machines", "machines")
