"""The plugins watcher: the machines watcher's behaviour with the plugins specification format
(signed over the base64 text), a manager prefix and a separate install directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from machinery.core.clock import FakeClock
from machinery.core.signing import SpecKind
from machinery.spec.validate import check_manifest_text
from machinery.watchers.archive import ArchiveProperties
from machinery.watchers.plugins import PluginsProperties, PluginsWatcher
from machinery.watchers.registry import check_manifest, default_registry, load_manifest
from tests.support import CORPUS, Recorder, running, write_machine
from tests.watchers.test_machines import (
    OTHER_KEY,
    SUM_C,
    T0,
    WEB,
    WEB_LEGACY,
    apply_and_purge,
    digest,
    entry,
    grace_pending,
    history,
    manager_dir,
    managers,
    replay_message,
    runs,
    spec,
    start,
    the_watcher,
    tree,
)


def plugins_spec(entries: list[dict[str, Any]], **kwargs: Any) -> dict[str, str]:
    return spec(entries, kind=SpecKind.PLUGINS, **kwargs)


def plugins_dir(store: Path, **properties: Any) -> Path:
    return manager_dir(store, type="plugins", properties=properties)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


async def test_writes_prefixed_managers_that_install_into_the_plugins_directory(
    store: Path, clock: FakeClock, recorder: Recorder, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    directory = plugins_dir(
        store,
        plugins_directory=str(plugins),
        manager_machine_prefix="pm",
        plugin_manage_interval="30s",
    )
    document = plugins_spec([entry("requests"), entry("facts", username="u", password="p")])
    machine = start(directory, clock, recorder, document)
    async with running(machine):
        await runs(machine, 2)
    assert sorted(p.name for p in store.iterdir()) == ["manager", "pm_facts", "pm_requests"]
    manifest = load_manifest(store / "pm_facts")
    assert manifest.spec.name == "pm_facts"
    [download] = manifest.spec.watchers
    assert download.interval == 30
    [props] = manifest.properties
    assert isinstance(props, ArchiveProperties)
    assert (props.target, props.creates) == (str(plugins), "facts")
    assert (props.username, props.password) == ("u", "p")

    [state] = recorder.states("manage")
    payload = state.payload
    assert payload["protocol"] == "io.choria.machine.watcher.plugins.v1.state"
    assert payload["type"] == "plugins"
    assert list(payload)[-3:] == ["plugins", "previous_outcome", "previous_run_time"]
    assert payload["plugins"] == ["requests", "facts"]
    assert payload["previous_outcome"] == "updated"
    assert state.text == (
        f"node1.example.net manager#manage plugin: requests, facts, previous: updated "
        f"ran: {payload['previous_run_time'] / 1e9:.3f}s"
    )
    assert recorder.transitions() == [("applied", "MANAGE", "APPLIED")]


async def test_defaults_install_into_the_store_with_mm_managers_every_2m(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    machine = start(plugins_dir(store), clock, recorder, plugins_spec([entry("requests")]))
    async with running(machine):
        await runs(machine, 2)
    [props] = load_manifest(store / "mm_requests").properties
    assert isinstance(props, ArchiveProperties)
    assert props.target == str(store)
    assert 'interval: "2m0s"' in (store / "mm_requests" / "machine.yaml").read_text()


async def test_a_relative_plugins_directory_is_inside_the_machine_directory(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = plugins_dir(store, plugins_directory="deployed")
    machine = start(directory, clock, recorder, plugins_spec([entry("requests")]))
    async with running(machine):
        await runs(machine, 2)
    [props] = load_manifest(store / "mm_requests").properties
    assert isinstance(props, ArchiveProperties)
    assert props.target == str(directory / "deployed")


async def test_the_signature_covers_the_base64_text(
    store: Path, clock: FakeClock, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    # The machines format signs the decoded JSON; the plugins watcher refuses that signature.
    machines_signed = spec([entry("requests")])
    document = {"plugins": machines_signed["machines"], "signature": machines_signed["signature"]}
    directory = plugins_dir(store)
    machine = start(directory, clock, recorder, document)
    before = tree(store)
    with caplog.at_level(logging.ERROR, "machinery.machine"):
        async with running(machine):
            await runs(machine, 2)
    changed = {"manager", "manager/machine_data.json"}
    assert {k: v for k, v in tree(store).items() if k not in changed} == {
        k: v for k, v in before.items() if k not in changed
    }
    assert "spec" not in machine.data
    assert recorder.outcomes("manage") == ["error", "error"]
    assert "signature did not verify" in caplog.text
    assert "Managing plugins failed: invalid data_item" in caplog.text


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (plugins_spec([entry("x")], key=OTHER_KEY), "signature did not verify"),
        (plugins_spec([entry("x")], key=None), "no signature found"),
        (spec([entry("x")]), 'no "plugins" text field'),
        (plugins_spec([entry("x", verify_checksum="")]), "verify_checksum is required"),
    ],
)
async def test_rejected_specifications_change_nothing(
    store: Path,
    clock: FakeClock,
    recorder: Recorder,
    document: Any,
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_machine(store / "mm_old", "name: x\n")
    write_machine(store / "old", "name: x\n")
    machine = start(plugins_dir(store), clock, recorder, document)
    with caplog.at_level(logging.ERROR, "machinery.machine"):
        async with running(machine):
            await runs(machine, 2)
    assert sorted(p.name for p in store.iterdir()) == ["manager", "mm_old", "old"]
    assert "spec" not in machine.data
    assert message in caplog.text


async def test_purge_finds_managers_in_the_store_and_removes_installs_from_the_plugins_directory(
    store: Path, clock: FakeClock, recorder: Recorder, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    (plugins / "old").mkdir(parents=True)
    (plugins / "requests").mkdir()
    write_machine(store / "mm_old", "name: x\n")
    # A directory named like the install in the store is not the install: it stays.
    write_machine(store / "old", "name: old\n")
    # Directories in the plugins directory that look like managers are not managers.
    (plugins / "mm_stray").mkdir()
    directory = plugins_dir(store, plugins_directory=str(plugins))
    machine = start(directory, clock, recorder, plugins_spec([entry("requests")]))
    async with running(machine):
        await grace_pending(clock)
        assert not (store / "mm_old").exists()
        assert (plugins / "old").is_dir()
        await clock.advance(2)
        await runs(machine, 2)
    assert sorted(p.name for p in plugins.iterdir()) == ["mm_stray", "requests"]
    assert sorted(p.name for p in store.iterdir()) == ["manager", "mm_requests", "old"]
    assert recorder.outcomes("manage") == ["updated"]


async def test_purge_only_looks_at_its_own_prefix(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    write_machine(store / "mm_machine", "name: x\n")
    write_machine(store / "pm_old", "name: x\n")
    directory = plugins_dir(store, manager_machine_prefix="pm")
    machine = start(directory, clock, recorder, plugins_spec([]))
    async with running(machine):
        await grace_pending(clock)
        await clock.advance(2)
        await runs(machine, 2)
    assert sorted(p.name for p in store.iterdir()) == ["manager", "mm_machine"]


async def test_updates_follow_the_specification(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    machine = start(plugins_dir(store), clock, recorder, plugins_spec([entry("requests")]))
    async with running(machine):
        await runs(machine, 2)
        await clock.advance(60)
        await runs(machine, 3)
        machine.data.put("spec", plugins_spec([entry("requests", checksum=SUM_C)]))
        await runs(machine, 4)
    assert f'checksum: "{SUM_C}"' in (store / "mm_requests" / "machine.yaml").read_text()
    assert the_watcher(machine).status.outcomes == {"updated": 2, "unchanged": 2}


async def test_a_replayed_specification_is_refused(
    store: Path, clock: FakeClock, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    directory = plugins_dir(store)
    old = plugins_spec(WEB_LEGACY)
    machine = start(directory, clock, recorder, old)
    async with running(machine):
        await runs(machine, 2)
        await apply_and_purge(machine, clock, plugins_spec(WEB), 3)
        assert managers(store) == ["mm_web"]
        # The same digest as the machines format: the SHA-256 of the JSON array.
        assert history(directory) == [
            (digest(WEB_LEGACY), T0, T0 + 2),
            (digest(WEB), T0 + 2, None),
        ]
        document = json.loads((directory / ".manage.applied.json").read_text())
        assert (document["watcher"], document["kind"]) == ("manage", "plugins")
        before = tree(store)
        with caplog.at_level(logging.ERROR, "machinery.machine"):
            machine.data.put("spec", dict(old, signature=old["signature"].upper()))
            await runs(machine, 5)
        changed = {"manager", "manager/machine_data.json"}
        assert {k: v for k, v in tree(store).items() if k not in changed} == {
            k: v for k, v in before.items() if k not in changed
        }
        assert "spec" not in machine.data
        assert recorder.outcomes("manage") == ["updated", "updated", "error", "error"]
        message = replay_message(WEB_LEGACY, T0, T0 + 2)
        assert f"Managing plugins failed: invalid data_item: {message}" in caplog.text
        # Signed anew (any change to the JSON), the old entries are accepted.
        reordered = [entry("legacy"), entry("web")]
        machine.data.put("spec", plugins_spec(reordered))
        await runs(machine, 7)  # applied, then entering APPLIED
        assert managers(store) == ["mm_legacy", "mm_web"]
        assert history(directory)[-1] == (digest(reordered), T0 + 2, None)


async def test_get_fact_matchers(store: Path, clock: FakeClock, recorder: Recorder) -> None:
    entries = [
        entry("amd", match="get_fact('arch') == 'amd64'"),
        entry("arm", match="get_fact('arch') == 'arm64'"),
        entry("tagged", match="'web' in get_fact('tags')"),
    ]
    machine = start(
        plugins_dir(store),
        clock,
        recorder,
        plugins_spec(entries),
        facts={"arch": "amd64", "tags": ["db", "web"]},
    )
    async with running(machine):
        await runs(machine, 2)
    assert sorted(p.name for p in store.glob("mm_*")) == ["mm_amd", "mm_tagged"]


# -- load-time checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ({"manager_machine_prefix": "m_m"}, "manager_machine_prefix may not contain underscore"),
        ({"manager_machine_prefix": "m/m"}, "manager_machine_prefix must be letters"),
        ({"plugin_manage_interval": "9s"}, "plugin_manage_interval 9s is too small"),
        ({"data_item": " "}, "data_item is required"),
    ],
)
def test_definition_problems(store: Path, properties: dict[str, Any], message: str) -> None:
    manifest, diagnostics = check_manifest(plugins_dir(store, **properties))
    assert manifest is None
    errors = [d.message for d in diagnostics if d.is_error]
    assert len(errors) == 1 and message in errors[0], errors


def test_machine_manage_interval_is_accepted_and_ignored_with_a_warning(store: Path) -> None:
    directory = plugins_dir(store, machine_manage_interval="30s", plugin_manage_interval="45s")
    manifest, diagnostics = check_manifest(directory)
    assert manifest is not None
    [props] = manifest.properties
    assert isinstance(props, PluginsProperties)
    assert props.plugin_manage_interval == 45
    assert [d.message for d in diagnostics] == [
        "machine_manage_interval is ignored by plugins watchers; plugin_manage_interval sets "
        "the manager machines' interval"
    ]


def test_the_builtin_plugins_manager_properties_are_accepted() -> None:
    """Choria's built-in plugins_manager (spec 1.10), its kv watchers left out when machinery
    has no kv watcher yet."""
    text = (CORPUS / "plugins-manager-builtin" / "machine.yaml").read_text()
    if "kv" not in default_registry():
        # Keep only the plugins watcher (the last one).
        head, _, rest = text.partition("watchers:\n")
        text = (
            head + "watchers:\n- name: manage_machines" + rest.split("- name: manage_machines")[1]
        )
    manifest, diagnostics = check_manifest_text(text, "builtin.yaml", default_registry().kinds)
    assert manifest is not None, [str(d) for d in diagnostics]
    props = manifest.properties[-1]
    assert isinstance(props, PluginsProperties)
    assert props.plugins_directory == "/etc/choria/machines"
    assert props.plugin_manage_interval == 30
    assert props.manager_machine_prefix == "mm"
    warnings = sorted(d.message for d in diagnostics)
    assert any(w.startswith("machine_manage_interval is ignored") for w in warnings)
    assert any(w.startswith("public_key is not set") for w in warnings)


def test_class_declares_choria_names() -> None:
    assert PluginsWatcher.type_name == "plugins"
    assert PluginsWatcher.min_interval == 2.0
    assert (
        PluginsWatcher.describe_payload(
            {
                "identity": "n",
                "machine": "m",
                "name": "w",
                "plugins": ["a", "b"],
                "previous_outcome": "error",
                "previous_run_time": 0,
            }
        )
        == "n m#w plugin: a, b, previous: error ran: 0.000s"
    )
