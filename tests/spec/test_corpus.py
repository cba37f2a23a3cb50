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


EXAMPLES = CORPUS.parent.parent / "examples"

# Every manifest's verdict: Choria's (go-choria v0.30.2) where it runs the machine, ours
# otherwise. hvac: Choria refuses it at load (a state used as success_transition);
# go-empty-invalid: refused at load; the templates are Go templates, not manifests.
VERDICTS = {
    "container-manager": True,
    "go-empty-invalid": False,
    "go-subscriber": True,
    "go-testmachine": True,
    "hvac": False,
    "check-httpd": True,
    "machines-manager": True,
    "machines-watcher-template": False,
    "plugins-machinesmanager": True,
    "plugins-manager-builtin": True,
    "plugins-watcher-template": False,
    "puppet-scout-check": True,
    "puppet-scout-metric": True,
}


def test_the_verdict_table_covers_the_whole_corpus() -> None:
    assert sorted(VERDICTS) == corpus_manifests()


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_corpus_manifest_keeps_its_verdict_and_warnings_never_refuse(name: str) -> None:
    manifest, diagnostics = check_manifest(CORPUS / name)
    assert (manifest is not None) is VERDICTS[name], [str(d) for d in diagnostics]
    if manifest is not None:
        assert manifest.warnings == tuple(diagnostics)
        assert all(not d.is_error for d in diagnostics)
    for diagnostic in diagnostics:
        assert "unknown key" not in diagnostic.message or not diagnostic.is_error


@pytest.mark.parametrize("name", sorted(p.parent.name for p in EXAMPLES.glob("*/machine.yaml")))
def test_every_example_is_valid_without_warnings(name: str) -> None:
    manifest, diagnostics = check_manifest(EXAMPLES / name)
    assert manifest is not None and not diagnostics, [str(d) for d in diagnostics]
