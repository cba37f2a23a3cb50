"""Every complete manifest shown in the documentation is valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from machinery.watchers.registry import check_manifest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def manifest_blocks() -> list[tuple[str, int, str]]:
    found = []
    for doc in sorted((ROOT / "docs").rglob("*.md")):
        for index, match in enumerate(BLOCK.finditer(doc.read_text())):
            text = match.group(1)
            # Only whole manifests; fragments (a single watcher, a transitions list) are skipped.
            if re.search(r"^name:", text, re.M) and re.search(r"^watchers:", text, re.M):
                found.append((str(doc.relative_to(ROOT)), index, text))
    return found


@pytest.mark.parametrize(("doc", "index", "text"), manifest_blocks(), ids=lambda v: str(v)[:40])
def test_documented_manifest_is_valid(tmp_path: Path, doc: str, index: int, text: str) -> None:
    path = tmp_path / "machine.yaml"
    path.write_text(text)
    manifest, diagnostics = check_manifest(path)
    assert manifest is not None, f"{doc} block {index}: " + "; ".join(str(d) for d in diagnostics)


def test_every_watcher_type_has_a_guide_with_an_example() -> None:
    from machinery.watchers.registry import default_registry

    documented = {
        Path(doc).stem for doc, _, _ in manifest_blocks() if doc.startswith("docs/watchers/")
    }
    for name in default_registry().names():
        assert (ROOT / "docs" / "watchers" / f"{name}.md").exists(), f"no guide for {name}"
        assert name in documented, f"docs/watchers/{name}.md has no complete example manifest"
