"""Building throwaway machines for benchmarks."""

from __future__ import annotations

import textwrap
from pathlib import Path

from machinery.core.machine import Machine
from machinery.core.node import Node
from machinery.watchers.registry import default_registry, load_manifest


def build(
    directory: Path, manifest: str, node: Node, files: dict[str, str] | None = None
) -> Machine:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "machine.yaml").write_text(textwrap.dedent(manifest))
    for name, content in (files or {}).items():
        (directory / name).write_text(textwrap.dedent(content))
        (directory / name).chmod(0o755)
    return Machine(load_manifest(directory), node, watcher_factory=default_registry().create)
