"""The machines watcher: signed specifications in machine data become manager machines in a real
store directory; scheduling and the purge grace period run on the fake clock."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest

from machinery.agent.store import executable_problem
from machinery.core.clock import FakeClock
from machinery.core.machine import Machine
from machinery.core.signing import KeyPair, SpecKind, keypair_from_seed, pack_specification
from machinery.watchers.archive import ArchiveProperties
from machinery.watchers.machines import MachinesWatcher
from machinery.watchers.manager import HISTORY_LIMIT, ManagerWatcher, node_matches
from machinery.watchers.registry import check_manifest, load_manifest
from tests.support import (
    CORPUS,
    Recorder,
    make_machine,
    make_node,
    running,
    wait_until,
    write_machine,
)

KEY = keypair_from_seed(bytes(range(32)))
OTHER_KEY = keypair_from_seed(bytes(range(1, 33)))
SUM_A = "a" * 64
SUM_B = "b" * 64
SUM_C = "c" * 64

MANAGER = """\
name: {name}
version: 1.0.0
initial_state: MANAGE
transitions:
  - name: applied
    from: [MANAGE, APPLIED, BROKEN]
    destination: APPLIED
  - name: broken
    from: [MANAGE, APPLIED, BROKEN]
    destination: BROKEN
  - name: maintenance
    from: [MANAGE, APPLIED, BROKEN]
    destination: MAINTENANCE
  - name: resume
    from: [MAINTENANCE]
    destination: MANAGE
watchers:
  - name: manage
    type: {type}
    interval: 1m
    state_match: [MANAGE, APPLIED, BROKEN]
    success_transition: applied
    fail_transition: broken
    properties:
{properties}
"""


def entry(name: str, **fields: Any) -> dict[str, Any]:
    result = {
        "name": name,
        "source": f"https://repo.example.net/{name}-1.0.0.tgz",
        "checksum": SUM_A,
        "verify_checksum": SUM_B,
    }
    result.update(fields)
    return result


def spec(
    entries: list[dict[str, Any]],
    key: KeyPair | None = KEY,
    kind: SpecKind = SpecKind.MACHINES,
) -> dict[str, str]:
    return pack_specification(kind, json.dumps(entries, indent=1).encode(), key)


def manager_dir(
    store: Path,
    *,
    name: str = "manager",
    type: str = "machines",
    properties: dict[str, Any] | None = None,
) -> Path:
    props = {"data_item": "spec", "purge_unknown": True, "public_key": KEY.public_hex}
    props.update(properties or {})
    lines = "\n".join(f"      {k}: {json.dumps(v)}" for k, v in props.items() if v is not None)
    return write_machine(store / name, MANAGER.format(name=name, type=type, properties=lines))


def the_watcher(machine: Machine) -> ManagerWatcher[Any]:
    [watcher] = machine.watchers
    assert isinstance(watcher, ManagerWatcher)
    return watcher


def tree(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path under ``root`` with its mode, mtime and (for files) contents."""
    result: dict[str, tuple[int, int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        result[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, content)
    return result


async def runs(machine: Machine, count: int) -> None:
    await wait_until(lambda: the_watcher(machine).status.runs >= count, what=f"{count} runs")
    assert the_watcher(machine).status.runs == count


async def grace_pending(clock: FakeClock) -> None:
    """Wait for the purge's 2s grace sleep to be scheduled (the interval tick is further)."""
    await wait_until(
        lambda: (d := clock.next_deadline()) is not None and d <= clock.monotonic() + 2.0,
        what="purge grace period",
    )


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


def start(
    directory: Path, clock: FakeClock, recorder: Recorder, data: Any = None, **node: Any
) -> Machine:
    machine = make_machine(directory, clock=clock, recorder=recorder, **node)
    if data is not None:
        machine.data.put("spec", data)
    return machine


# -- deploying -------------------------------------------------------------------------------


async def test_writes_a_valid_manager_machine_per_entry(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store, properties={"machine_manage_interval": "5m"})
    document = spec([entry("facts"), entry("backup", governor="BACKUPS")])
    machine = start(directory, clock, recorder, document)
    async with running(machine):
        await runs(machine, 2)  # at start, then again on entering APPLIED
        for name in ("facts", "backup"):
            mm = store / f"mm_{name}"
            assert stat.S_IMODE(mm.stat().st_mode) == 0o700
            assert stat.S_IMODE((mm / "machine.yaml").stat().st_mode) == 0o600
            manifest, diagnostics = check_manifest(mm)
            assert manifest is not None, [str(d) for d in diagnostics]
            assert [d for d in diagnostics if d.is_error] == []
            assert manifest.spec.name == f"mm_{name}"
            assert manifest.spec.initial_state == "MANAGE"
            assert [t.name for t in manifest.spec.transitions] == ["enter_maintenance", "resume"]
            [download] = manifest.spec.watchers
            assert (download.name, download.type, download.interval) == ("download", "archive", 300)
            assert download.state_match == ["MANAGE"]
            [props] = manifest.properties
            assert isinstance(props, ArchiveProperties)
            assert props.source == f"https://repo.example.net/{name}-1.0.0.tgz"
            assert props.checksum == SUM_A
            assert props.verify == "SHA256SUMS"
            assert props.verify_checksum == SUM_B
            assert props.creates == name
            assert props.target == str(store)
            assert props.governor == ("BACKUPS" if name == "backup" else "")
            assert (props.username, props.password) == ("", "")
        # No staging directories left behind.
        assert sorted(p.name for p in store.iterdir()) == ["manager", "mm_backup", "mm_facts"]

        [state] = recorder.states("manage")
        payload = state.payload
        assert payload["protocol"] == "io.choria.machine.watcher.machines.v1.state"
        assert payload["type"] == "machines"
        assert payload["machine"] == "manager"
        assert list(payload)[-3:] == ["machines", "previous_outcome", "previous_run_time"]
        assert payload["machines"] == ["facts", "backup"]
        assert payload["previous_outcome"] == "updated"
        assert isinstance(payload["previous_run_time"], int) and payload["previous_run_time"] > 0
        assert state.text == (
            f"node1.example.net manager#manage machines: facts, backup, previous: updated "
            f"ran: {payload['previous_run_time'] / 1e9:.3f}s"
        )
        assert recorder.transitions() == [("applied", "MANAGE", "APPLIED")]
        watcher = the_watcher(machine)
        assert watcher.status.outcomes == {"updated": 1, "unchanged": 1}
        assert watcher.state_fields()["previous_outcome"] == "unchanged"
        assert machine.data.get("spec") == document


async def test_unchanged_on_every_later_check_until_the_specification_changes(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store)
    machine = start(directory, clock, recorder, spec([entry("facts")]))
    async with running(machine):
        await runs(machine, 2)
        manifest = store / "mm_facts" / "machine.yaml"
        before = manifest.stat()
        for count in (3, 4, 5):
            await clock.advance(60)
            await runs(machine, count)
        assert manifest.stat().st_ino == before.st_ino
        assert manifest.stat().st_mtime_ns == before.st_mtime_ns
        assert recorder.outcomes("manage") == ["updated"]
        assert the_watcher(machine).status.outcomes == {"updated": 1, "unchanged": 4}
        # The default manage interval is 2m.
        assert 'interval: "2m0s"' in manifest.read_text()

        # A new specification is applied as soon as it lands in machine data.
        machine.data.put("spec", spec([entry("facts", checksum=SUM_C)]))
        await runs(machine, 6)
        assert f'checksum: "{SUM_C}"' in manifest.read_text()
        assert recorder.outcomes("manage") == ["updated", "updated"]
        # Already in APPLIED: the success transition is a silent self-transition.
        assert recorder.transitions() == [("applied", "MANAGE", "APPLIED")]


async def test_a_changed_manager_manifest_is_put_back(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    machine = start(manager_dir(store), clock, recorder, spec([entry("facts")]))
    async with running(machine):
        await runs(machine, 2)
        manifest = store / "mm_facts" / "machine.yaml"
        good = manifest.read_bytes()
        manifest.write_text("name: hacked\n")
        (store / "mm_facts" / "machine_data.json").write_text("{}")
        await clock.advance(60)
        await runs(machine, 3)
        assert manifest.read_bytes() == good
        # The manager machine's own data is kept: only its manifest is replaced.
        assert (store / "mm_facts" / "machine_data.json").read_text() == "{}"
        assert recorder.outcomes("manage") == ["updated", "updated"]


async def test_machinemanageinterval_is_accepted_as_choria_reads_it(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store, properties={"MachineManageInterval": "45s"})
    machine = start(directory, clock, recorder, spec([entry("facts")]))
    async with running(machine):
        await runs(machine, 2)
    assert 'interval: "45s"' in (store / "mm_facts" / "machine.yaml").read_text()


async def test_values_cannot_break_out_of_their_yaml_fields(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    password = "p\"w\\: x #' é {}[] &a *b !c"  # YAML and JSON specials
    hostile = entry(
        "facts",
        username="deploy",
        password=password,
        governor='G"\ncommand: rm',
    )
    machine = start(manager_dir(store), clock, recorder, spec([hostile]))
    async with running(machine):
        await runs(machine, 2)
    # The governor holds a newline: refused as a control character, nothing written.
    assert not (store / "mm_facts").exists()

    hostile["governor"] = 'G" command: rm -rf /'
    machine = start(manager_dir(store), clock, recorder, spec([hostile]))
    async with running(machine):
        await runs(machine, 2)
    manifest = load_manifest(store / "mm_facts")
    [props] = manifest.properties
    assert isinstance(props, ArchiveProperties)
    assert props.password == password
    assert props.governor == 'G" command: rm -rf /'
    assert props.username == "deploy"


# -- purging ---------------------------------------------------------------------------------


async def test_purge_removes_unlisted_managers_then_their_installs(
    store: Path, clock: FakeClock, recorder: Recorder, tmp_path: Path
) -> None:
    directory = manager_dir(store)
    # Deployed earlier: manager machines and the machines they installed.
    for name in ("facts", "old", "older"):
        write_machine(store / f"mm_{name}", "name: x\n")
        write_machine(store / name, "name: x\n")
    # Not ours to touch: other machines, files, a symlink out of the store.
    write_machine(store / "hand_made", "name: y\n")
    (store / "mm_file").write_text("not a directory")
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (store / "mm_link").symlink_to(outside)
    (store / "link").symlink_to(outside / "keep")
    # A stale manager whose "install" is a symlink out of the store: the link stays.
    (store / "mm_linked").mkdir()
    (store / "linked").symlink_to(outside / "keep")
    # A stale manager named after the archive staging directory: the staging stays.
    (store / "mm_tmp").mkdir()
    (store / "tmp" / "in-progress").mkdir(parents=True)

    machine = start(directory, clock, recorder, spec([entry("facts")]))
    async with running(machine):
        # The managers go first; their installs stay until the grace period has passed (so
        # the store has stopped the managers).
        await grace_pending(clock)
        assert not (store / "mm_old").exists() and not (store / "mm_older").exists()
        assert (store / "old").is_dir() and (store / "older").is_dir()
        assert the_watcher(machine).status.runs == 0
        await clock.advance(2)
        await runs(machine, 2)
    assert not (store / "old").exists() and not (store / "older").exists()
    assert sorted(p.name for p in store.iterdir()) == [
        "facts",
        "hand_made",
        "link",
        "linked",
        "manager",
        "mm_facts",
        "mm_file",
        "mm_link",
        "tmp",
    ]
    assert (outside / "keep").is_dir()
    assert (store / "tmp" / "in-progress").is_dir()
    assert recorder.outcomes("manage") == ["updated"]


async def test_purge_removes_managers_no_longer_matching_this_node(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store)
    machine = start(directory, clock, recorder, spec([entry("facts"), entry("web")]))
    async with running(machine):
        await runs(machine, 2)
        assert (store / "mm_web").is_dir()
        (store / "web").mkdir()
        machine.data.put("spec", spec([entry("facts"), entry("web", match="identity('^web')")]))
        await grace_pending(clock)
        await clock.advance(2)
        await runs(machine, 3)
    assert not (store / "mm_web").exists() and not (store / "web").exists()
    assert (store / "mm_facts").is_dir()
    assert recorder.outcomes("manage") == ["updated", "updated"]


async def test_purge_never_removes_its_own_machine(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    # A manager whose own directory looks like a manager machine, and an install of that name.
    directory = manager_dir(store, name="mm_self")
    write_machine(store / "self", "name: self\n")
    machine = start(directory, clock, recorder, spec([]))
    async with running(machine):
        await runs(machine, 1)
    assert (directory / "machine.yaml").is_file()
    assert (store / "self").is_dir()
    assert the_watcher(machine).status.outcomes == {"unchanged": 1}


async def test_without_purge_unknown_nothing_is_removed(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store, properties={"purge_unknown": False})
    write_machine(store / "mm_old", "name: x\n")
    machine = start(directory, clock, recorder, spec([]))
    async with running(machine):
        await runs(machine, 1)
    assert (store / "mm_old").is_dir()
    assert recorder.states() == []


async def test_an_empty_signed_specification_purges_everything(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store)
    write_machine(store / "mm_old", "name: x\n")
    write_machine(store / "old", "name: x\n")
    machine = start(directory, clock, recorder, spec([]))
    async with running(machine):
        await grace_pending(clock)
        await clock.advance(2)
        await runs(machine, 2)
        assert recorder.outcomes("manage") == ["updated"]
        assert recorder.states("manage")[0].payload["machines"] == []
    assert sorted(p.name for p in store.iterdir()) == ["manager"]


# -- rejected specifications -----------------------------------------------------------------


def rejected_cases() -> list[tuple[str, Any, str]]:
    good = spec([entry("facts")])
    tampered = dict(good, machines=spec([entry("evil")])["machines"])
    return [
        ("tampered", tampered, "signature did not verify"),
        ("wrong key", spec([entry("facts")], key=OTHER_KEY), "signature did not verify"),
        ("unsigned", spec([entry("facts")], key=None), "no signature found"),
        ("bad hex", dict(good, signature="zz"), "invalid signature string"),
        ("bad base64", {"machines": "%%%", "signature": good["signature"]}, "invalid base64"),
        ("plugins format", spec([entry("facts")], kind=SpecKind.PLUGINS), 'no "machines"'),
        ("not an object", [1, 2], "expected a JSON object"),
        ("not json", pack_specification(SpecKind.MACHINES, b"{", KEY), "invalid machines spec"),
        ("not a list", pack_specification(SpecKind.MACHINES, b"{}", KEY), "expected a JSON array"),
        ("no checksum", spec([entry("facts", checksum="")]), "checksum is required"),
        (
            "no verify",
            spec([{"name": "f", "source": "http://x", "checksum": SUM_A}]),
            "verify_checksum is required",
        ),
        ("bad checksum", spec([entry("facts", checksum="abc")]), "SHA-256 digest"),
        ("bad source", spec([entry("facts", source="file:///etc/passwd")]), "http:// or https://"),
        ("path name", spec([entry("../etc")]), "invalid name"),
        ("staging name", spec([entry("tmp")]), "invalid name"),
        ("duplicate", spec([entry("facts"), entry("facts")]), "listed twice"),
        ("wrong type", spec([entry("facts", checksum=5)]), "checksum"),
        ("bad matcher", spec([entry("facts", match="identity(")]), "invalid match expression"),
        ("unknown function", spec([entry("facts", match="exec('x')")]), "invalid match expression"),
        ("prefixed name", spec([entry("mm_facts")]), "manager prefix"),
        ("own name", spec([entry("manager")]), "own machine"),
        ("user only", spec([entry("facts", username="u")]), "password is required"),
    ]


@pytest.mark.parametrize(
    ("case", "document", "message"),
    rejected_cases(),
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "",
)
async def test_a_rejected_specification_is_removed_and_changes_nothing(
    store: Path,
    clock: FakeClock,
    recorder: Recorder,
    case: str,
    document: Any,
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = manager_dir(store)
    # A deployment from an earlier, good specification that purge_unknown would remove.
    write_machine(store / "mm_old", "name: mm_old\n")
    write_machine(store / "old", "name: old\n")
    machine = start(directory, clock, recorder, document)
    before = tree(store)
    with caplog.at_level(logging.ERROR, "machinery.machine"):
        async with running(machine):
            # Rejected at start, then (entering BROKEN) the data item is gone.
            await runs(machine, 2)
            await clock.advance(5)
    after = tree(store)
    # Only the data file changed: the specification was removed from it.
    changed = {"manager", "manager/machine_data.json"}
    assert {k: v for k, v in after.items() if k not in changed} == {
        k: v for k, v in before.items() if k not in changed
    }
    assert "spec" not in machine.data
    assert json.loads((directory / "machine_data.json").read_text()) == {}
    watcher = the_watcher(machine)
    assert watcher.status.outcomes == {"error": 2}
    assert watcher.status.last_error == "data item spec not present"
    assert recorder.outcomes("manage") == ["error", "error"]
    assert recorder.states("manage")[0].payload["machines"] == []
    assert recorder.transitions() == [("broken", "MANAGE", "BROKEN")]
    assert "removing data" in caplog.text
    assert message in caplog.text
    assert "Managing machines failed: invalid data_item: " in caplog.text
    assert "Managing machines failed: data item spec not present" in caplog.text


async def test_after_a_rejection_the_missing_data_item_is_an_error_until_a_good_one_arrives(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store)
    machine = start(directory, clock, recorder, spec([entry("facts")], key=OTHER_KEY))
    async with running(machine):
        await runs(machine, 2)  # rejected at start; again on entering BROKEN
        assert the_watcher(machine).status.last_error == "data item spec not present"
        await clock.advance(60)
        await runs(machine, 3)
        assert recorder.outcomes("manage") == ["error", "error", "error"]
        machine.data.put("spec", spec([entry("facts")]))
        await runs(machine, 5)  # the new data, then entering APPLIED
        assert (store / "mm_facts" / "machine.yaml").is_file()
        assert recorder.outcomes("manage") == ["error", "error", "error", "updated"]
        assert recorder.transitions() == [
            ("broken", "MANAGE", "BROKEN"),
            ("applied", "BROKEN", "APPLIED"),
        ]


async def test_a_manager_that_would_be_invalid_is_not_written_and_the_data_is_kept(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    # Values may hold template actions for the archive watcher; a broken one fails validation.
    document = spec([entry("good"), entry("facts", source="https://x/{{ nope }}.tgz")])
    write_machine(store / "mm_old", "name: x\n")
    machine = start(manager_dir(store), clock, recorder, document)
    async with running(machine):
        await runs(machine, 2)
    assert sorted(p.name for p in store.iterdir()) == ["manager", "mm_old"]
    watcher = the_watcher(machine)
    assert "the manager machine for facts would not be valid" in (watcher.status.last_error or "")
    assert machine.data.get("spec") == document
    assert recorder.outcomes("manage") == ["error", "error"]


async def test_template_actions_in_values_reach_the_archive_watcher(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    source = 'https://repo/{{ lookup "facts.arch" "amd64" }}/facts.tgz'
    machine = start(manager_dir(store), clock, recorder, spec([entry("facts", source=source)]))
    async with running(machine):
        await runs(machine, 2)
    [props] = load_manifest(store / "mm_facts").properties
    assert isinstance(props, ArchiveProperties)
    assert props.source == source


# -- keys ------------------------------------------------------------------------------------


async def test_without_a_key_unsigned_specifications_are_accepted_with_a_warning(
    store: Path, clock: FakeClock, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    directory = manager_dir(store, properties={"public_key": None})
    with caplog.at_level(logging.WARNING, "machinery.machine"):
        machine = start(directory, clock, recorder, spec([entry("facts")], key=None))
        async with running(machine):
            await runs(machine, 2)
    assert (store / "mm_facts").is_dir()
    assert "specifications are accepted without a signature" in caplog.text
    _, diagnostics = check_manifest(directory)
    assert [d.message for d in diagnostics] == [
        "public_key is not set: unless the agent's signing_key setting provides one, "
        "specifications are accepted without a signature"
    ]


async def test_the_node_signing_key_overrides_the_property(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store)  # public_key: KEY
    node = make_node(clock=clock, recorder=recorder)
    node.provide("signing-key", OTHER_KEY.public_hex)
    machine = make_machine(directory, node=node)
    machine.data.put("spec", spec([entry("facts")], key=KEY))
    async with running(machine):
        await runs(machine, 2)
        assert "spec" not in machine.data
        assert not (store / "mm_facts").exists()
        machine.data.put("spec", spec([entry("facts")], key=OTHER_KEY))
        await runs(machine, 4)
    assert (store / "mm_facts").is_dir()
    assert recorder.outcomes("manage") == ["error", "error", "updated"]


async def test_an_invalid_node_signing_key_is_an_error_that_keeps_the_data(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    node = make_node(clock=clock, recorder=recorder)
    node.provide("signing-key", "not-hex")
    machine = make_machine(manager_dir(store), node=node)
    document = spec([entry("facts")])
    machine.data.put("spec", document)
    async with running(machine):
        await runs(machine, 2)
    assert machine.data.get("spec") == document
    assert "invalid public key" in (the_watcher(machine).status.last_error or "")
    assert not (store / "mm_facts").exists()


# -- replayed specifications -------------------------------------------------------------------

T0 = 1_767_225_600.0  # the fake clock's wall time at start: 2026-01-01T00:00:00Z
WEB_LEGACY = [entry("web"), entry("legacy")]
WEB = [entry("web")]


def digest(entries: list[dict[str, Any]], indent: int = 1) -> str:
    """The digest a node remembers: the SHA-256 of the signed JSON array (as spec() makes it)."""
    return hashlib.sha256(json.dumps(entries, indent=indent).encode()).hexdigest()


def history(directory: Path, watcher: str = "manage") -> list[tuple[str, float, float | None]]:
    document = json.loads((directory / f".{watcher}.applied.json").read_text())
    return [(r["sha256"], r["applied_at"], r["superseded_at"]) for r in document["applied"]]


def write_history(directory: Path, records: list[tuple[str, float, float | None]]) -> None:
    applied = [{"sha256": d, "applied_at": a, "superseded_at": s} for d, a, s in records]
    (directory / ".manage.applied.json").write_text(json.dumps({"applied": applied}))


def managers(store: Path) -> list[str]:
    return sorted(p.name for p in store.glob("mm_*"))


def replay_message(entries: list[dict[str, Any]], applied: float, superseded: float) -> str:
    def iso(seconds: float) -> str:
        return f"2026-01-01T00:{int(seconds - T0) // 60:02d}:{int(seconds - T0) % 60:02d}Z"

    return (
        f"specification {digest(entries)[:12]} was applied on {iso(applied)} and superseded on "
        f"{iso(superseded)}: refusing a replay (publish a newly signed document to roll back)"
    )


async def apply_and_purge(machine: Machine, clock: FakeClock, document: Any, count: int) -> None:
    """Publish a specification that purges something: wait through the grace period."""
    machine.data.put("spec", document)
    await grace_pending(clock)
    await clock.advance(2)
    await runs(machine, count)


def replayed(document: dict[str, str], form: str) -> Any:
    """``document`` as someone who kept it could put it back without the key."""
    if form == "as JSON text":
        return json.dumps(document)
    if form == "upper-case signature":
        return dict(document, signature=document["signature"].upper())
    if form == "extra field":
        return dict(document, published="again")
    if form == "line breaks":
        return dict(document, machines="\n".join(textwrap.wrap(document["machines"], 76)))
    return document


@pytest.mark.parametrize(
    "form",
    ["as published", "as JSON text", "upper-case signature", "extra field", "line breaks"],
)
async def test_a_replayed_specification_is_refused_and_changes_nothing(
    store: Path,
    clock: FakeClock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    form: str,
) -> None:
    directory = manager_dir(store)
    old = spec(WEB_LEGACY)
    machine = start(directory, clock, recorder, old)
    async with running(machine):
        await runs(machine, 2)
        assert managers(store) == ["mm_legacy", "mm_web"]
        assert history(directory) == [(digest(WEB_LEGACY), T0, None)]
        path = directory / ".manage.applied.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # The history is a hidden, private, non-executable file: the store's permission checks
        # have nothing to say about it.
        assert executable_problem(directory, os.getuid()) is None

        await apply_and_purge(machine, clock, spec(WEB), 3)
        assert managers(store) == ["mm_web"]
        assert history(directory) == [
            (digest(WEB_LEGACY), T0, T0 + 2),
            (digest(WEB), T0 + 2, None),
        ]

        before = tree(store)
        with caplog.at_level(logging.ERROR, "machinery.machine"):
            machine.data.put("spec", replayed(old, form))
            # Refused, then (entering BROKEN) the data item is gone.
            await runs(machine, 5)
            await clock.advance(5)
        after = tree(store)
        # Only the data file changed (the replay was removed from it): not the managers, not
        # the history.
        changed = {"manager", "manager/machine_data.json"}
        assert {k: v for k, v in after.items() if k not in changed} == {
            k: v for k, v in before.items() if k not in changed
        }
        assert "spec" not in machine.data
        watcher = the_watcher(machine)
        assert watcher.status.outcomes == {"updated": 2, "unchanged": 1, "error": 2}
        assert watcher.status.last_error == "data item spec not present"
        assert recorder.outcomes("manage") == ["updated", "updated", "error", "error"]
        assert recorder.transitions() == [
            ("applied", "MANAGE", "APPLIED"),
            ("broken", "APPLIED", "BROKEN"),
        ]
        message = replay_message(WEB_LEGACY, T0, T0 + 2)
        assert f"Specification in data_item spec rejected, removing data: {message}" in caplog.text
        assert f"Managing machines failed: invalid data_item: {message}" in caplog.text


async def test_the_current_specification_checked_again_is_not_a_replay(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store)
    document = spec(WEB)
    machine = start(directory, clock, recorder, document)
    async with running(machine):
        await runs(machine, 2)
        path = directory / ".manage.applied.json"
        written = path.stat()
        for count in (3, 4, 5):
            await clock.advance(60)
            await runs(machine, count)
        # The same document in another form (JSON text) is the same specification.
        machine.data.put("spec", json.dumps(document))
        await runs(machine, 6)
        assert the_watcher(machine).status.outcomes == {"updated": 1, "unchanged": 5}
        assert recorder.outcomes("manage") == ["updated"]
        assert machine.data.get("spec") == json.dumps(document)
    # Nothing to record: the file was not even rewritten.
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert history(directory) == [(digest(WEB), T0, None)]


async def test_a_deliberate_rollback_signs_the_old_entries_anew(
    store: Path, clock: FakeClock, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    directory = manager_dir(store)
    machine = start(directory, clock, recorder, spec(WEB_LEGACY))
    async with running(machine):
        await runs(machine, 2)
        await apply_and_purge(machine, clock, spec(WEB), 3)
        await clock.advance(58)  # the interval tick: unchanged
        await runs(machine, 4)
        # The old entries, re-encoded (indented differently) and signed: a new digest.
        rollback = pack_specification(
            SpecKind.MACHINES, json.dumps(WEB_LEGACY, indent=2).encode(), KEY
        )
        machine.data.put("spec", rollback)
        await runs(machine, 5)
        assert managers(store) == ["mm_legacy", "mm_web"]
        assert history(directory) == [
            (digest(WEB_LEGACY), T0, T0 + 2),
            (digest(WEB), T0 + 2, T0 + 60),
            (digest(WEB_LEGACY, indent=2), T0 + 60, None),
        ]
        # Neither earlier document comes back now.
        with caplog.at_level(logging.ERROR, "machinery.machine"):
            for document, count in ((spec(WEB), 7), (spec(WEB_LEGACY), 8)):
                machine.data.put("spec", document)
                await runs(machine, count)
        assert managers(store) == ["mm_legacy", "mm_web"]
        assert recorder.outcomes("manage") == ["updated"] * 3 + ["error"] * 3
    assert replay_message(WEB, T0 + 2, T0 + 60) in caplog.text
    assert replay_message(WEB_LEGACY, T0, T0 + 2) in caplog.text


async def test_the_history_survives_a_restart(
    store: Path, clock: FakeClock, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    directory = manager_dir(store)
    machine = start(directory, clock, recorder, spec(WEB_LEGACY))
    async with running(machine):
        await runs(machine, 2)
        await apply_and_purge(machine, clock, spec(WEB), 3)
    # A new instance of the machine (an agent restart) reads the history from its file.
    await clock.advance(3600)
    restarted = Recorder()
    with caplog.at_level(logging.ERROR, "machinery.machine"):
        machine = start(directory, clock, restarted, spec(WEB_LEGACY))
        async with running(machine):
            await runs(machine, 2)
    assert managers(store) == ["mm_web"]
    assert "spec" not in machine.data
    assert restarted.outcomes("manage") == ["error", "error"]
    assert replay_message(WEB_LEGACY, T0, T0 + 2) in caplog.text
    # The current specification after a restart is fine.
    machine = start(directory, clock, Recorder(), spec(WEB))
    async with running(machine):
        await runs(machine, 1)
    assert the_watcher(machine).status.outcomes == {"unchanged": 1}
    assert history(directory) == [(digest(WEB_LEGACY), T0, T0 + 2), (digest(WEB), T0 + 2, None)]


def corrupt_histories() -> list[tuple[str, bytes, str]]:
    good = {"sha256": "a" * 64, "applied_at": T0, "superseded_at": None}
    return [
        ("not json", b"{not json", "not JSON: "),
        ("not an object", b"[]", 'expected a JSON object with an "applied" list'),
        ("no list", b'{"applied": {}}', 'expected a JSON object with an "applied" list'),
        ("not a record", b'{"applied": [1]}', "record 1: expected a JSON object"),
        (
            "bad digest",
            json.dumps({"applied": [good, dict(good, sha256="abc")]}).encode(),
            "record 2: sha256 is not a SHA-256 digest",
        ),
        (
            "bad time",
            json.dumps({"applied": [dict(good, applied_at="yesterday")]}).encode(),
            "record 1: applied_at is not a time in Unix seconds",
        ),
        (
            "huge time",
            json.dumps({"applied": [dict(good, superseded_at=1e300)]}).encode(),
            "record 1: superseded_at is not a time in Unix seconds",
        ),
        (
            "boolean time",
            b'{"applied": [{"sha256": "' + b"a" * 64 + b'", "applied_at": true}]}',
            "record 1: applied_at is not a time in Unix seconds",
        ),
        ("huge file", b" " * (4 << 20) + b"{}", "larger than 4 MiB"),
        ("not utf-8", b"\xff\xfe", "not JSON: "),
    ]


@pytest.mark.parametrize(
    ("case", "content", "message"),
    corrupt_histories(),
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "",
)
async def test_a_corrupt_history_is_a_warning_and_an_empty_history(
    store: Path,
    clock: FakeClock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    case: str,
    content: bytes,
    message: str,
) -> None:
    directory = manager_dir(store)
    path = directory / ".manage.applied.json"
    path.write_bytes(content)
    # A write killed half-way left its temporary file: cleaned up.
    (directory / "..manage.applied.json.x1y2z3.tmp").write_text("{")
    with caplog.at_level(logging.WARNING, "machinery.machine"):
        machine = start(directory, clock, recorder, spec(WEB))
        async with running(machine):
            await runs(machine, 2)
    assert managers(store) == ["mm_web"]
    assert recorder.outcomes("manage") == ["updated"]
    assert f"Ignoring the history of applied specifications in {path}: {message}" in caplog.text
    assert "replays of earlier specifications cannot be detected" in caplog.text
    # Replaced by a good one.
    assert history(directory) == [(digest(WEB), T0, None)]
    assert sorted(p.name for p in directory.iterdir()) == [
        ".manage.applied.json",
        "machine.yaml",
        "machine_data.json",
    ]


async def test_a_history_behind_a_symbolic_link_is_not_read_and_the_link_is_replaced(
    store: Path,
    clock: FakeClock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    directory = manager_dir(store)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"applied": []}))
    (directory / ".manage.applied.json").symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING, "machinery.machine"):
        machine = start(directory, clock, recorder, spec(WEB))
        async with running(machine):
            await runs(machine, 2)
    assert "cannot read it: Too many levels of symbolic links" in caplog.text
    assert not (directory / ".manage.applied.json").is_symlink()
    assert history(directory) == [(digest(WEB), T0, None)]
    assert json.loads(elsewhere.read_text()) == {"applied": []}


async def test_a_history_that_cannot_be_written_is_logged_and_kept_in_memory(
    store: Path, clock: FakeClock, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    directory = manager_dir(store)
    blocker = directory / ".manage.applied.json"
    blocker.mkdir()  # cannot be read, nor replaced by a file
    with caplog.at_level(logging.WARNING, "machinery.machine"):
        machine = start(directory, clock, recorder, spec(WEB_LEGACY))
        async with running(machine):
            await runs(machine, 2)
            await apply_and_purge(machine, clock, spec(WEB), 3)
            # Applied all the same; replays are refused from memory.
            assert recorder.outcomes("manage") == ["updated", "updated"]
            machine.data.put("spec", spec(WEB_LEGACY))
            await runs(machine, 5)
            assert managers(store) == ["mm_web"]
            assert recorder.outcomes("manage") == ["updated", "updated", "error", "error"]
            # Once it can be written, the next check writes it.
            blocker.rmdir()
            machine.data.put("spec", spec(WEB))
            await runs(machine, 6)
    assert f"Ignoring the history of applied specifications in {blocker}: cannot read it: " in (
        caplog.text
    )
    assert f"Could not record the applied specification in {blocker}: " in caplog.text
    assert history(directory) == [(digest(WEB_LEGACY), T0, T0 + 2), (digest(WEB), T0 + 2, None)]


async def test_without_a_key_replays_are_accepted_as_in_choria(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store, properties={"public_key": None})
    old = spec(WEB_LEGACY, key=None)
    machine = start(directory, clock, recorder, old)
    async with running(machine):
        await runs(machine, 2)
        await apply_and_purge(machine, clock, spec(WEB, key=None), 3)
        assert managers(store) == ["mm_web"]
        machine.data.put("spec", old)
        await runs(machine, 4)
        assert managers(store) == ["mm_legacy", "mm_web"]
    assert recorder.outcomes("manage") == ["updated"] * 3
    # Nothing remembered: anyone can write an unsigned specification anyway.
    assert not (directory / ".manage.applied.json").exists()


async def test_the_node_signing_key_puts_replay_protection_in_force(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store, properties={"public_key": None})
    node = make_node(clock=clock, recorder=recorder)
    node.provide("signing-key", KEY.public_hex)
    machine = make_machine(directory, node=node)
    machine.data.put("spec", spec(WEB_LEGACY))
    async with running(machine):
        await runs(machine, 2)
        await apply_and_purge(machine, clock, spec(WEB), 3)
        machine.data.put("spec", spec(WEB_LEGACY))
        await runs(machine, 5)
    assert managers(store) == ["mm_web"]
    assert recorder.outcomes("manage") == ["updated", "updated", "error", "error"]


async def test_the_newest_1000_specifications_are_remembered(
    store: Path, clock: FakeClock, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    assert HISTORY_LIMIT == 1000
    directory = manager_dir(store, properties={"purge_unknown": False})
    oldest, second = [entry("oldest")], [entry("second")]
    fillers = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(998)]
    records = [(digest(oldest), T0 - 3000, T0 - 2000), (digest(second), T0 - 2000, T0 - 1000)]
    records += [(d, T0 - 1000, T0 - 1000) for d in fillers]
    write_history(directory, records)
    machine = start(directory, clock, recorder, spec(WEB))
    async with running(machine):
        await runs(machine, 2)
        # A thousand and one: the oldest is forgotten.
        kept = history(directory)
        assert len(kept) == 1000
        assert kept[0] == (digest(second), T0 - 2000, T0 - 1000)
        assert kept[-1] == (digest(WEB), T0, None)
        assert [d for d, _, _ in kept[1:-1]] == fillers
        with caplog.at_level(logging.ERROR, "machinery.machine"):
            machine.data.put("spec", spec(second))
            await runs(machine, 4)
        assert "spec" not in machine.data
        assert "specification " + digest(second)[:12] + " was applied on 2025-12-31T23:26:40Z" in (
            caplog.text
        )
        # Beyond the limit a replay is not detected (documented).
        machine.data.put("spec", spec(oldest))
        await runs(machine, 6)
        assert managers(store) == ["mm_oldest", "mm_web"]
        assert recorder.outcomes("manage") == ["updated", "error", "error", "updated"]
    kept = history(directory)
    assert len(kept) == 1000
    assert kept[0][0] == fillers[0]
    assert kept[-2:] == [(digest(WEB), T0, T0), (digest(oldest), T0, None)]


async def test_a_watcher_name_that_is_no_file_name_gets_a_hashed_history_file(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store)
    manifest = directory / "machine.yaml"
    manifest.write_text(manifest.read_text().replace("name: manage\n", 'name: "../manage it"\n'))
    machine = start(directory, clock, recorder, spec(WEB))
    async with running(machine):
        await runs(machine, 2)
    hashed = hashlib.sha256(b"../manage it").hexdigest()[:32]
    files = sorted(p.name for p in directory.iterdir())
    assert files == [f".watcher-{hashed}.applied.json", "machine.yaml", "machine_data.json"]
    assert history(directory, f"watcher-{hashed}") == [(digest(WEB), T0, None)]


async def test_the_history_file_does_not_restart_the_machine_in_the_agent(
    store: Path, agent_factory: Any
) -> None:
    # Nothing matches this node, so no manager machine (and no download) appears; the
    # specification is applied all the same and remembered.
    directory = manager_dir(store)
    nowhere = [entry("web", match="identity('^nowhere$')")]
    (directory / "machine_data.json").write_text(json.dumps({"spec": spec(nowhere)}))
    async with agent_factory() as run:
        await run.wait(lambda: run.entry_status("manager") == "running", 10, "manager running")
        loaded = run.agent.store.find("manager").machine
        path = directory / ".manage.applied.json"
        await run.wait(path.exists, 10, "the history file")
        run.agent.store.rescan()
        await run.wait(
            lambda: not run.agent.store._queued and not run.agent.store._pending, what="quiet"
        )
        assert run.entry_status("manager") == "running"
        assert run.agent.store.find("manager").machine is loaded
        assert [d for d, _, _ in history(directory)] == [digest(nowhere)]
        assert not managers(store)


# -- matchers --------------------------------------------------------------------------------


async def test_matchers_select_entries_for_this_node(
    store: Path,
    clock: FakeClock,
    recorder: Recorder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "marker"
    marker.write_text("x")
    entries = [
        entry("all"),
        entry("mine", match="identity('^node1\\\\.')"),
        entry("theirs", match="identity('^web')"),
        entry("file", match=f"has_file('{marker}')"),
        entry("nofile", match=f"has_file('{tmp_path / 'missing'}')"),
        entry("dir", match=f"has_directory('{tmp_path}') && !has_file('{tmp_path}')"),
        entry("cmd", match="has_command('sh')"),
        entry("nocmd", match="has_command('no-such-command-here')"),
        entry("fact", match="get_fact('os.family') == 'linux'"),
        entry("nofact", match="get_fact('os.family') == 'windows'"),
        entry("number", match="get_fact('memory.gb') > 4"),
        entry("broken", match="get_fact('missing') > 4"),
    ]
    facts = {"os": {"family": "linux"}, "memory": {"gb": 16}}
    with caplog.at_level(logging.WARNING, "machinery.machine"):
        machine = start(manager_dir(store), clock, recorder, spec(entries), facts=facts)
        async with running(machine):
            await runs(machine, 2)
    deployed = sorted(p.name[3:] for p in store.glob("mm_*"))
    assert deployed == ["all", "cmd", "dir", "fact", "file", "mine", "number"]
    assert "Could not match broken to this node" in caplog.text
    # Every entry is reported, matched or not, as Choria does.
    assert recorder.states("manage")[0].payload["machines"] == [e["name"] for e in entries]


def test_node_matches_is_what_the_cli_uses() -> None:
    assert node_matches("", "x", {})
    assert node_matches("identity('x$')", "node.x", {})
    assert not node_matches("identity('^x')", "node.x", {})
    assert node_matches("get_fact('a.b') == 1", "n", {"a": {"b": 1}})


# -- scheduling ------------------------------------------------------------------------------


async def test_skipped_outside_its_states_and_run_again_on_return(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    machine = start(manager_dir(store), clock, recorder, spec([entry("facts")]))
    async with running(machine):
        await runs(machine, 2)
        await machine.transition("maintenance")
        await runs(machine, 3)
        assert the_watcher(machine).state_fields()["previous_outcome"] == "skipped"
        machine.data.put("spec", spec([entry("facts"), entry("web")]))
        await clock.advance(60)
        await runs(machine, 5)  # the data change and the tick: both skipped
        assert not (store / "mm_web").exists()
        await machine.transition("resume")
        await runs(machine, 7)
        assert (store / "mm_web").is_dir()
        assert the_watcher(machine).status.outcomes == {
            "updated": 2,
            "unchanged": 2,
            "skipped": 3,
        }


async def test_without_an_interval_it_runs_at_start_and_on_changes_only(
    store: Path, clock: FakeClock, recorder: Recorder
) -> None:
    directory = manager_dir(store)
    text = (directory / "machine.yaml").read_text().replace("    interval: 1m\n", "")
    (directory / "machine.yaml").write_text(text)
    machine = start(directory, clock, recorder, spec([entry("facts")]))
    async with running(machine):
        await runs(machine, 2)
        await clock.advance(86400)
        assert the_watcher(machine).status.runs == 2
        assert clock.pending() == 0


# -- load-time checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "interval", "message"),
    [
        ({"data_item": ""}, "1m", "data_item is required"),
        ({"public_key": "abcd"}, "1m", "invalid public_key: a public key is 32 bytes"),
        ({"public_key": "zz" * 32}, "1m", "invalid public_key: the public key is not hexadecimal"),
        ({"machine_manage_interval": "5s"}, "1m", "machine_manage_interval 5s is too small"),
        ({"machinemanageinterval": "1s"}, "1m", "machinemanageinterval 1s is too small"),
        (
            {"machine_manage_interval": "1m", "machinemanageinterval": "2m"},
            "1m",
            "are the same setting and differ",
        ),
        ({}, "1s", "interval 1s is too small for watcher 'manage' (minimum 2s)"),
    ],
)
def test_definition_problems(
    store: Path, properties: dict[str, Any], interval: str, message: str
) -> None:
    directory = manager_dir(store, properties=properties)
    text = (directory / "machine.yaml").read_text().replace("interval: 1m", f"interval: {interval}")
    (directory / "machine.yaml").write_text(text)
    manifest, diagnostics = check_manifest(directory)
    assert manifest is None
    errors = [d.message for d in diagnostics if d.is_error]
    assert len(errors) == 1 and message in errors[0], errors


def test_an_unknown_property_is_a_warning_as_choria_ignores_it(store: Path) -> None:
    directory = manager_dir(store, properties={"no_such": 1})
    manifest, diagnostics = check_manifest(directory)
    assert manifest is not None, [str(d) for d in diagnostics]
    assert any("unknown property 'no_such' is ignored" in d.message for d in manifest.warnings)


def test_the_class_declares_choria_names_and_rules() -> None:
    assert MachinesWatcher.type_name == "machines"
    assert MachinesWatcher.min_interval == 2.0
    assert MachinesWatcher.default_interval is None
    assert (
        MachinesWatcher.describe_payload(
            {
                "identity": "n",
                "machine": "m",
                "name": "w",
                "machines": [],
                "previous_outcome": "unchanged",
                "previous_run_time": 1_500_000,
            }
        )
        == "n m#w machines: , previous: unchanged ran: 0.002s"
    )


def test_choria_machines_manager_example_is_valid(store: Path) -> None:
    manifest, diagnostics = check_manifest(CORPUS / "machines-manager")
    assert manifest is not None, [str(d) for d in diagnostics]
    assert [w.type for w in manifest.spec.watchers].count("machines") == 1
