"""Choria's public manifests give the results the spec's section 9 notes say."""

from __future__ import annotations

import re

import pytest

from machinery.watchers.registry import check_manifest, default_registry
from tests.support import CORPUS

UNKNOWN_TYPE = re.compile(r"^unknown watcher type '([a-z_]+)'")


def corpus_manifests() -> list[str]:
    return sorted(p.parent.name for p in CORPUS.glob("*/machine.yaml"))


def only_missing_types(diagnostics: list) -> bool:  # type: ignore[type-arg]
    errors = [d for d in diagnostics if d.is_error]
    registered = default_registry()
    for error in errors:
        match = UNKNOWN_TYPE.match(error.message)
        if match is None or match.group(1) in registered:
            return False
    return True


def test_hvac_is_rejected_for_a_state_used_as_success_transition() -> None:
    manifest, diagnostics = check_manifest(CORPUS / "hvac")
    assert manifest is None
    errors = [d for d in diagnostics if d.is_error]
    assert [str(e).split("machine.yaml:", 1)[1] for e in errors] == [
        "51:25: invalid success_transition 'idle' specified in watcher 'off'; 'idle' is a state, "
        "not a transition; did you mean 'air_good' or 'variables_changed' (leading to 'idle')?"
    ]


def test_empty_manifest_lists_every_missing_field() -> None:
    manifest, diagnostics = check_manifest(CORPUS / "go-empty-invalid")
    assert manifest is None
    assert [d.message for d in diagnostics] == [
        "a machine name is required",
        "a machine version is required",
        "an initial state is required",
        "no transitions defined",
        "no watchers defined",
    ]


@pytest.mark.parametrize("name", ["container-manager", "go-testmachine", "go-subscriber"])
def test_valid_choria_manifests_load(name: str) -> None:
    manifest, diagnostics = check_manifest(CORPUS / name)
    assert manifest is not None, diagnostics


def test_container_manager_self_transition_is_in_the_table() -> None:
    manifest, _ = check_manifest(CORPUS / "container-manager")
    assert manifest is not None
    deploy_failed = next(t for t in manifest.spec.transitions if t.name == "deploy_failed")
    assert deploy_failed.from_ == ["deploy"] and deploy_failed.destination == "deploy"


@pytest.mark.parametrize("name", corpus_manifests())
def test_every_corpus_manifest_is_valid_or_fails_only_for_missing_types(name: str) -> None:
    manifest, diagnostics = check_manifest(CORPUS / name)
    expected_invalid = {
        "hvac",
        "go-empty-invalid",
        "machines-watcher-template",
        "plugins-watcher-template",
    }
    if name in expected_invalid:
        assert manifest is None
        return
    assert manifest is not None or only_missing_types(diagnostics), [str(d) for d in diagnostics]
    for diagnostic in diagnostics:
        assert "Traceback" not in diagnostic.message


def test_watcher_templates_are_go_templates_not_manifests() -> None:
    manifest, diagnostics = check_manifest(CORPUS / "machines-watcher-template")
    assert manifest is None
    messages = " | ".join(d.message for d in diagnostics)
    assert "machine name 'mm_{{ .Name }}'" in messages
    assert "invalid duration '{{.Interval}}'" in messages
