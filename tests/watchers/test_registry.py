"""The watcher registry: every type known by name, a type's module imported on first use."""

from __future__ import annotations

from pathlib import Path

import pytest

from machinery.spec.schema import machine_schema
from machinery.watchers.registry import BUILTIN_WATCHERS, builtin_registry, check_manifest
from tests.support import write_machine

FILE_ONLY = """\
name: only_files
version: 1.0.0
initial_state: idle
transitions:
  - name: changed
    from: [idle]
    destination: idle
watchers:
  - name: marker
    type: file
    interval: 1m
    properties:
      path: marker.txt
"""


def test_types_are_known_before_their_modules_load() -> None:
    registry = builtin_registry()
    assert registry.names() == sorted(name for name, _, _ in BUILTIN_WATCHERS)
    assert "exec" in registry and "nonsense" not in registry
    assert registry.loaded() == []


def test_a_manifest_loads_only_the_types_it_uses(tmp_path: Path) -> None:
    registry = builtin_registry()
    manifest, diagnostics = check_manifest(write_machine(tmp_path / "m", FILE_ONLY), registry)
    assert manifest is not None, diagnostics
    assert registry.loaded() == ["file"]


def test_an_unknown_type_is_reported_with_every_known_name(tmp_path: Path) -> None:
    registry = builtin_registry()
    directory = write_machine(tmp_path / "m", FILE_ONLY.replace("type: file", "type: fiel"))
    manifest, diagnostics = check_manifest(directory, registry)
    assert manifest is None
    message = " ".join(str(d) for d in diagnostics)
    assert "unknown watcher type 'fiel'" in message
    assert ", ".join(registry.names()) in message
    assert registry.loaded() == []  # naming the known types imports none of them


def test_the_schema_covers_every_type() -> None:
    registry = builtin_registry()
    schema = machine_schema(registry.kinds)
    assert registry.loaded() == registry.names()
    assert len(schema["$defs"]) >= len(registry.names())


def test_each_builtin_entry_names_its_class_type() -> None:
    registry = builtin_registry()
    for name in registry.names():
        assert registry[name].type_name == name


def test_a_type_registered_twice_is_refused() -> None:
    registry = builtin_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register_lazy("exec", "machinery.watchers.exec", "ExecWatcher")
    registry.register(registry["file"])  # the same class again changes nothing

    class Impostor(registry["file"]):  # type: ignore[misc,valid-type]
        """Another class claiming the file type."""

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Impostor)
