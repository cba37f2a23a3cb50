"""The ccm_manifest watcher, running a stand-in ``ccm`` that behaves as CCM documents."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from machinery.core.clock import FakeClock
from machinery.spec.validate import check_manifest
from machinery.watchers.ccm import CcmManifestProperties, CcmSummary, parse_summary
from machinery.watchers.registry import default_registry
from tests.support import Recorder, make_machine, running, wait_until, write_machine

STANDIN = Path(__file__).parent.parent / "fixtures" / "ccm_standin.py"

MACHINE = """\
name: configured
version: 1.0.0
initial_state: idle
transitions:
  - name: enforce
    from: [idle, converged, drifted]
    destination: enforcing
  - name: ok
    from: [enforcing]
    destination: converged
  - name: broken
    from: [enforcing]
    destination: drifted
watchers:
  - name: config
    type: ccm_manifest
    state_match: [{states}]
    success_transition: ok
    fail_transition: broken
    interval: {interval}
    properties:
{properties}
"""


def machine_dir(
    tmp_path: Path,
    properties: str,
    *,
    interval: str = "''",
    states: str = "enforcing",
    with_ccm: bool = True,
) -> Path:
    text = MACHINE.format(
        interval=interval,
        states=states,
        properties="\n".join("      " + line for line in properties.strip().splitlines()),
    )
    directory = write_machine(tmp_path / "configured", text)
    if with_ccm:
        # Found like any watcher command: in PATH, then in the machine directory.
        ccm = directory / "ccm"
        ccm.write_text(f"#!{sys.executable}\n" + STANDIN.read_text())
        ccm.chmod(0o755)
    return directory


def file_manifest(target: Path, content: str, **extra: object) -> str:
    manifest = {"ccm": {"resources": [{"file": [{str(target): {"content": content, **extra}}]}]}}
    return json.dumps(manifest)


def problems(directory: Path) -> list[tuple[str, str]]:
    _, diagnostics = check_manifest(directory / "machine.yaml", default_registry().kinds)
    return [(d.severity, d.message) for d in diagnostics]


# -- the session summary -------------------------------------------------------------------

# What `ccm apply` prints at the end of a run (CCM's cmd/apply.go report).
REPORT = """\
INFO  Creating new session record resources=2
WARN  package#httpd changed ensure=latest runtime=3.560699287s provider=dnf

Manifest Run Summary

             Run Time: 3.561s
      Total Resources: 2
     Stable Resources: 1
    Changed Resources: 1
     Failed Resources: 0
    Skipped Resources: 0
  Refreshed Resources: 0
   Unmet Requirements: 0
    Checked Resources: 0
         Total Errors: 0
"""


def test_the_summary_is_read_from_ccm_apply_output() -> None:
    assert parse_summary(REPORT) == CcmSummary(total=2, stable=1, changed=1, errors=0)
    assert parse_summary("INFO  nothing to report\n") is None
    truncated = REPORT.split("     Stable Resources", maxsplit=1)[0]
    assert parse_summary(truncated) is None


@pytest.mark.parametrize(
    ("summary", "outcome"),
    [
        (CcmSummary(total=3, stable=3, changed=0, errors=0), "stable"),
        (CcmSummary(total=0, stable=0, changed=0, errors=0), "stable"),
        (CcmSummary(total=3, stable=1, changed=1, errors=1), "error"),
        (CcmSummary(total=3, stable=1, changed=2, errors=0), "changes"),
        # Choria checks "all stable" before errors, and anything else is "changes".
        (CcmSummary(total=3, stable=2, changed=0, errors=0), "changes"),
    ],
)
def test_outcomes_follow_choria(summary: CcmSummary, outcome: str) -> None:
    assert summary.outcome == outcome


# -- validation ------------------------------------------------------------------------------


def test_a_manifest_or_a_manifest_file_is_required(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "noop: true")
    assert ("error", "manifest_file or manifest is required") in [
        (severity, message.split(": ", 1)[-1]) for severity, message in problems(directory)
    ]


def test_a_valid_definition_has_no_problems(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "manifest_file: manifest.json", interval="5m")
    assert problems(directory) == []


def test_noop_with_healthcheck_only_loads_as_in_choria_with_a_warning(tmp_path: Path) -> None:
    directory = machine_dir(
        tmp_path, "manifest_file: manifest.json\nnoop: true\nhealthcheck_only: true"
    )
    found = problems(directory)
    assert [severity for severity, _ in found] == ["warning"]
    assert "noop has no effect with healthcheck_only" in found[0][1]


def test_a_manifest_file_path_warns_that_only_its_base_name_is_used(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "manifest_file: /etc/ccm/site.yaml")
    [(severity, message)] = problems(directory)
    assert severity == "warning" and "'site.yaml' is read from the machine directory" in message


def test_an_interval_under_500ms_is_refused(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "manifest_file: manifest.json", interval="100ms")
    assert [severity for severity, _ in problems(directory)] == ["error"]


def test_defaults_are_choria_s() -> None:
    properties = CcmManifestProperties.model_validate({"manifest_file": "m.yaml"})
    assert properties.timeout == 60.0
    assert properties.governor_timeout == 0.0  # 5m when a governor is named
    assert (properties.noop, properties.healthcheck_only, properties.splay) == (False,) * 3


# -- running ---------------------------------------------------------------------------------


async def test_changes_then_stable_fire_success_and_publish(tmp_path: Path) -> None:
    target = tmp_path / "motd"
    directory = machine_dir(tmp_path, "manifest_file: manifest.json")
    (directory / "manifest.json").write_text(file_manifest(target, "managed by ccm\n"))
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state == "converged", what="first apply")
        assert target.read_text() == "managed by ccm\n"
        await machine.transition("enforce")
        await wait_until(lambda: len(recorder.states("config")) == 2, what="second apply")
        await wait_until(lambda: machine.state == "converged")
    first, second = recorder.states("config")
    assert [first.payload["previous_outcome"], second.payload["previous_outcome"]] == [
        "changes",
        "stable",
    ]
    payload = second.payload
    assert payload["protocol"] == "io.choria.machine.watcher.ccm_manifest.v1.state"
    assert list(payload)[-2:] == ["previous_outcome", "previous_run_time"]
    assert isinstance(payload["previous_run_time"], int)
    assert second.text.startswith("node1.example.net configured#config previous: stable ran: ")


async def test_noop_reports_changes_as_failure_and_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "motd"
    target.write_text("hand edited\n")
    directory = machine_dir(tmp_path, "manifest_file: manifest.json\nnoop: true")
    (directory / "manifest.json").write_text(file_manifest(target, "managed by ccm\n"))
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state == "drifted")
    assert target.read_text() == "hand edited\n"
    [state] = recorder.states("config")
    assert state.payload["previous_outcome"] == "changes"


async def test_a_failed_resource_is_an_error(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "manifest_file: manifest.json")
    manifest = {"ccm": {"resources": [{"exec": [{"/bin/false": {}}, {"/bin/true": {}}]}]}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state == "drifted")
    [state] = recorder.states("config")
    assert state.payload["previous_outcome"] == "error"
    assert machine.watchers[0].status.last_error == "Manifest failed to apply with 1 errors"


async def test_an_inline_manifest_gets_facts_and_data(tmp_path: Path) -> None:
    target = tmp_path / "site.conf"
    manifest = {
        "ccm": {
            "resources": [
                {
                    "file": [
                        {
                            str(target): {
                                "content": "dc=${ lookup('facts.location.dc') } "
                                "port={{ lookup('data.port') }}"
                            }
                        }
                    ]
                }
            ]
        }
    }
    directory = machine_dir(tmp_path, "manifest: " + json.dumps(manifest))
    machine = make_machine(directory, facts={"location": {"dc": "fra1"}})
    machine.data.update({"port": 8443})
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state == "converged")
    assert target.read_text() == "dc=fra1 port=8443"


async def test_only_the_base_name_of_manifest_file_is_used(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "motd"
    (elsewhere / "site.json").write_text(file_manifest(target, "from elsewhere\n"))
    directory = machine_dir(tmp_path, f"manifest_file: {elsewhere / 'site.json'}")
    (directory / "site.json").write_text(file_manifest(target, "from the machine\n"))
    machine = make_machine(directory)
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state == "converged")
    assert target.read_text() == "from the machine\n"


async def test_a_manifest_file_linking_out_of_the_machine_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(file_manifest(tmp_path / "motd", "x"))
    directory = machine_dir(tmp_path, "manifest_file: manifest.json")
    (directory / "manifest.json").symlink_to(secret)
    machine = make_machine(directory)
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state == "drifted")
    error = machine.watchers[0].status.last_error or ""
    assert "resolves outside the machine directory" in error
    assert not (tmp_path / "motd").exists()


async def test_a_missing_manifest_file_is_an_error_event(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "manifest_file: manifest.json")
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state == "drifted")
    assert "could not read manifest file manifest.json" in (
        machine.watchers[0].status.last_error or ""
    )
    assert [s.payload["previous_outcome"] for s in recorder.states("config")] == ["error"]


async def test_without_ccm_installed_the_outcome_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    directory = machine_dir(tmp_path, "manifest_file: manifest.json", with_ccm=False)
    (directory / "manifest.json").write_text(file_manifest(tmp_path / "motd", "x"))
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state == "drifted")
    error = machine.watchers[0].status.last_error or ""
    assert error.startswith("the ccm command is not installed")
    assert [s.payload["previous_outcome"] for s in recorder.states("config")] == ["error"]


async def test_a_manifest_ccm_cannot_parse_is_an_error(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "manifest_file: manifest.json")
    (directory / "manifest.json").write_text('{"not": "a ccm manifest"}')
    machine = make_machine(directory)
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state == "drifted")
    error = machine.watchers[0].status.last_error or ""
    assert error.startswith("could not apply manifest: ccm exited 1: ccm: error:")


async def test_interval_runs_first_right_after_start_then_every_interval(tmp_path: Path) -> None:
    target = tmp_path / "motd"
    directory = machine_dir(
        tmp_path, "manifest_file: manifest.json", interval="10m", states="enforcing, converged"
    )
    (directory / "manifest.json").write_text(file_manifest(target, "v1\n"))
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder, initial_state="enforcing")
    async with running(machine):
        await clock.advance(1)
        await wait_until(lambda: len(recorder.states("config")) == 1, what="first run")
        target.write_text("drifted\n")
        await clock.advance(300)
        assert len(recorder.states("config")) == 1
        await clock.advance(300)
        await wait_until(lambda: len(recorder.states("config")) == 2, what="interval run")
    assert target.read_text() == "v1\n"
