"""The JSON Schema of ``machine.yaml``, generated from the models that parse it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model

from machinery.lang.duration import format_go_duration
from machinery.spec.kinds import WatcherKind
from machinery.spec.models import MachineSpec, WatcherSpec
from machinery.spec.types import DURATION_PATTERN

__all__ = ["SCHEMA_ID", "machine_schema"]

SCHEMA_ID = "https://machinery.dev/schemas/machine/v1/manifest.json"


def machine_schema(kinds: Mapping[str, WatcherKind]) -> dict[str, Any]:
    """The schema for manifests using the watcher types in ``kinds``."""
    variants: list[Any] = []
    for name in sorted(kinds):
        kind = kinds[name]
        variants.append(
            create_model(
                f"{_camel(name)}Watcher",
                __base__=WatcherSpec,
                __doc__=f"A {name} watcher.",
                type=(Literal[name], Field(description="the watcher type")),  # type: ignore[arg-type]
                properties=(kind.properties_model, Field(description=f"{name} properties")),
            )
        )
    watcher: Any = Annotated[Union[tuple(variants)], Field(discriminator="type")]  # noqa: UP007
    model = create_model(
        "Machine",
        __base__=MachineSpec,
        __doc__=MachineSpec.__doc__,
        watchers=(list[watcher], Field(min_length=1)),
    )
    schema = model.model_json_schema(by_alias=True, mode="validation")
    # The models default everything so broken manifests can still be checked as a whole; the
    # schema states what a valid manifest must have.
    schema["required"] = ["name", "version", "initial_state", "transitions", "watchers"]
    schema["properties"]["transitions"]["minItems"] = 1
    definitions = schema.get("$defs", {})
    for name, required in _REQUIRED.items():
        if name in definitions:
            definitions[name]["required"] = required
    for definition in definitions.values():
        if definition.get("properties", {}).get("type", {}).get("const"):
            definition["required"] = sorted({*definition.get("required", ()), "name", "type"})
    _durations_as_text(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "machinery machine.yaml",
    }


_REQUIRED = {
    "TransitionSpec": ["name", "from", "destination"],
    "SubscribeSpec": ["machine_name", "event"],
    "ForeignStateSpec": ["machine_name", "state"],
}


def _durations_as_text(node: Any) -> None:
    """Durations are seconds in the models but text in a manifest: show defaults as text."""
    if isinstance(node, dict):
        default = node.get("default")
        if node.get("pattern") == DURATION_PATTERN and isinstance(default, (int, float)):
            node["default"] = format_go_duration(default)
        for value in node.values():
            _durations_as_text(value)
    elif isinstance(node, list):
        for value in node:
            _durations_as_text(value)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
