"""The JSON Schema (generated, committed, current) and the state graphs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from machinery.spec.graph import to_dot, to_mermaid
from machinery.spec.schema import machine_schema
from machinery.spec.yamlfile import load_yaml
from machinery.watchers.registry import default_registry, load_manifest
from tests.spec.test_corpus import CORPUS

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schema_is_current() -> None:
    committed = json.loads((ROOT / "docs" / "machine.schema.json").read_text())
    assert committed == machine_schema(default_registry().kinds), (
        "docs/machine.schema.json is stale: run `make schema`"
    )


def test_schema_covers_every_registered_watcher_type() -> None:
    schema = machine_schema(default_registry().kinds)
    variants = schema["properties"]["watchers"]["items"]["oneOf"]
    types = {
        schema["$defs"][v["$ref"].split("/")[-1]]["properties"]["type"]["const"] for v in variants
    }
    assert types == set(default_registry().names())


@pytest.mark.parametrize(
    "example",
    sorted(p.name for p in (ROOT / "examples").iterdir() if (p / "machine.yaml").exists()),
)
def test_examples_validate_against_the_schema(example: str) -> None:
    schema = machine_schema(default_registry().kinds)
    document = load_yaml((ROOT / "examples" / example / "machine.yaml").read_text(), "m").data
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)


def test_schema_rejects_unknown_properties_and_missing_fields() -> None:
    schema = machine_schema(default_registry().kinds)
    validator = jsonschema.Draft202012Validator(schema)
    document = load_yaml((ROOT / "examples" / "hvac" / "machine.yaml").read_text(), "m").data
    document["watchers"][0]["properties"]["pathh"] = "x"
    del document["version"]
    messages = [e.message for e in validator.iter_errors(document)]
    assert any("'version' is a required property" in m for m in messages)
    assert any("pathh" in m for m in messages)


CONTAINER_MANAGER_DOT = """\
digraph fsm {
    "deploy" -> "deploy" [ label = "absent" ];
    "deploy" -> "deploy" [ label = "deploy_failed" ];
    "deploy" -> "monitor" [ label = "deployed" ];
    "deploy" -> "unknown" [ label = "no_manifest" ];
    "monitor" -> "deploy" [ label = "absent" ];
    "monitor" -> "unknown" [ label = "no_manifest" ];
    "unknown" -> "deploy" [ label = "absent" ];
    "unknown" -> "unknown" [ label = "no_manifest" ];

    "deploy";
    "monitor";
    "unknown" [color = "red"];
}
"""


def test_dot_graph_is_byte_identical_to_choria() -> None:
    manifest = load_manifest(CORPUS / "container-manager")
    assert to_dot(manifest.spec) == CONTAINER_MANAGER_DOT


def test_mermaid_graph_marks_initial_and_current_state() -> None:
    manifest = load_manifest(CORPUS / "container-manager")
    text = to_mermaid(manifest.spec, current="monitor")
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert '    state "deploy" as s0' in lines
    assert "    [*] --> s2" in lines
    assert "    s0 --> s1: deployed" in lines
    assert lines[-1] == "    class s1 current"
