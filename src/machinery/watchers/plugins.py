"""The ``plugins`` watcher (spec 3.11): deploy machines and plugins from a signed specification.

Like :mod:`machinery.watchers.machines`, with a specification of the form
``{"plugins": "<base64 JSON array>", "signature": "<hex>"}`` signed over the base64 text, a
configurable manager machine prefix (``<prefix>_<name>``, default ``mm``) and a configurable
directory the archives are installed into (``plugins_directory``, default the machine store).
The manager machines always live in the store; purging looks for them there (Choria looks in
``plugins_directory``, which misses them when the two differ).
"""

from __future__ import annotations

import os
import re
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

__all__ = ["PluginsProperties", "PluginsWatcher"]

DEFAULT_PREFIX = "mm"
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$")


class PluginsProperties(ManagerProperties):
    """Properties of the plugins watcher."""

    # The built-in plugins manager (spec 1.10) sets this too; Choria's plugins watcher has no
    # such property and ignores it.
    ignored_keys = {
        "machine_manage_interval": (
            "machine_manage_interval is ignored by plugins watchers; plugin_manage_interval "
            "sets the manager machines' interval"
        ),
    }

    plugin_manage_interval: Duration | None = Field(
        None,
        description="how often the manager machines verify their install (default 2m, at "
        "least 10s)",
    )
    plugins_directory: str = Field(
        "",
        description="where archives are installed (default: the machine store); relative "
        "paths are inside this machine's directory",
    )
    manager_machine_prefix: str = Field(
        DEFAULT_PREFIX, description="manager machines are named <prefix>_<name>; no underscore"
    )


class PluginsWatcher(ManagerWatcher[PluginsProperties]):
    """Keeps a manager machine per specified (and matching) plugin in the store."""

    type_name = "plugins"
    properties_model = PluginsProperties
    kind = SpecKind.PLUGINS

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, PluginsProperties)
        yield from check_manager_definition(properties)
        yield from check_manage_interval(
            "plugin_manage_interval", properties.plugin_manage_interval
        )
        prefix = properties.manager_machine_prefix
        if "_" in prefix:
            yield Problem(
                ("properties", "manager_machine_prefix"),
                "manager_machine_prefix may not contain underscore",
            )
        elif prefix and not _PREFIX.match(prefix):
            yield Problem(
                ("properties", "manager_machine_prefix"),
                "manager_machine_prefix must be letters, digits, '.' and '-'",
            )
        if "\x00" in properties.plugins_directory:
            yield Problem(("properties", "plugins_directory"), "invalid plugins_directory")

    @property
    def prefix(self) -> str:
        # Choria treats an empty prefix as the default.
        return self.properties.manager_machine_prefix or DEFAULT_PREFIX

    @property
    def manage_interval(self) -> float:
        return self.properties.plugin_manage_interval or DEFAULT_MANAGE_INTERVAL

    @property
    def target(self) -> Path:
        directory = self.properties.plugins_directory
        if not directory:
            return self.store
        return Path(os.path.normpath(os.path.join(self.machine.directory, directory)))

    def deploy_message(self, entry: ManagedEntry) -> str:
        return f"Deploying plugin {entry.name} from {redact_url(entry.source)} into {self.target}"

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        return describe_manager_payload(payload, "plugins", "plugin")
