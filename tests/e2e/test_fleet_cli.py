"""``machinery fleet``: real command processes against real agents on a real nats-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fleet_nodes import KEY, NODES, Fleet, fleet

__all__ = ["fleet"]  # the module-scoped fixture

WEB = {"web1.example.net", "web2.example.net"}


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "fleet.seed"
    path.write_text(KEY.seed_hex + "\n")
    path.chmod(0o600)
    return path


def machinery(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINERY_")}
    return subprocess.run(
        [sys.executable, "-m", "machinery", "fleet", *args, "--nats", fleet.server.url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "COLUMNS": "200"},
    )


def ls(fleet: Fleet, *where: str) -> list[dict[str, Any]]:
    args = [arg for clause in where for arg in ("--where", clause)]
    done = machinery(fleet, "ls", "--format", "json", *args)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_ls_every_node_and_filters(fleet: Fleet) -> None:
    fleet.reset()
    nodes = ls(fleet)
    assert {node["identity"] for node in nodes} == set(NODES)
    for node in nodes:
        assert node["answered"] is True
        assert {(m["name"], m["state"]) for m in node["machines"]} == {
            ("svc", "running"),
            ("other", "idle"),
        }
    assert {node["identity"] for node in ls(fleet, "identity=web*")} == WEB
    assert {node["identity"] for node in ls(fleet, "role=web", "os.family=debian")} == {
        "web1.example.net"
    }
    only_other = ls(fleet, "machine=other")
    assert all([m["name"] for m in node["machines"]] == ["other"] for node in only_other)
    assert ls(fleet, "state=maintenance") == []


def test_ls_table(fleet: Fleet) -> None:
    done = machinery(fleet, "ls", "--where", "identity=db1*")
    assert done.returncode == 0, done.stderr
    assert "db1.example.net" in done.stdout and "web1" not in done.stdout
    assert "svc" in done.stdout and "running" in done.stdout
    assert "3 node(s) answered, 1 matched" in done.stderr


def test_bad_where_is_a_usage_error(fleet: Fleet) -> None:
    done = machinery(fleet, "ls", "--where", "identity")
    assert done.returncode == 2 and "expected KEY=VALUE" in done.stderr


def test_show(fleet: Fleet) -> None:
    done = machinery(fleet, "show", "svc", "--format", "json", "--where", "identity=web2*")
    assert done.returncode == 0, done.stderr
    [node] = json.loads(done.stdout)
    assert node["identity"] == "web2.example.net"
    assert node["machine"]["state"] == "running"
    assert [w["name"] for w in node["machine"]["watchers"]] == ["tick"]
    table = machinery(fleet, "show", "svc")
    assert table.returncode == 0 and "watcher tick (timer)" in table.stdout
    missing = machinery(fleet, "show", "nope")
    assert missing.returncode == 1 and "no answering node has a machine nope" in missing.stderr


def transition(fleet: Fleet, seed_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return machinery(
        fleet, "transition", "svc", "maintenance", "--seed-file", str(seed_file), *args
    )


def test_signed_transition_on_the_selected_nodes(fleet: Fleet, seed_file: Path) -> None:
    fleet.reset()
    done = transition(fleet, seed_file, "--where", "role=web")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done: 2" in done.stdout
    assert fleet.states() == {
        "web1.example.net": "maintenance",
        "web2.example.net": "maintenance",
        "db1.example.net": "running",
    }
    again = transition(fleet, seed_file, "--where", "role=web", "--format", "json")
    assert again.returncode == 1
    assert {o["outcome"] for o in json.loads(again.stdout)} == {"invalid"}
    table = transition(fleet, seed_file, "--where", "role=web")
    assert "not valid in its state: 2" in table.stdout
    fleet.reset()


def test_refusal_makes_the_command_fail(fleet: Fleet, seed_file: Path) -> None:
    fleet.reset()
    done = transition(fleet, seed_file, "--format", "json")
    assert done.returncode == 1
    outcomes = {o["identity"]: o["outcome"] for o in json.loads(done.stdout)}
    # db1 trusts no key; the others did it.
    assert outcomes == {
        "db1.example.net": "refused",
        "web1.example.net": "done",
        "web2.example.net": "done",
    }
    assert fleet.state("db1.example.net") == "running"
    fleet.reset()


def test_a_failed_canary_stops_the_rollout(fleet: Fleet, seed_file: Path) -> None:
    fleet.reset()
    # Nodes go in identity order: db1 is the canary, and it refuses.
    done = transition(fleet, seed_file, "--canary", "1", "--batch", "1", "--format", "json")
    assert done.returncode == 1
    outcomes = {o["identity"]: o["outcome"] for o in json.loads(done.stdout)}
    assert outcomes == {
        "db1.example.net": "refused",
        "web1.example.net": "skipped",
        "web2.example.net": "skipped",
    }
    assert set(fleet.states().values()) == {"running"}


def test_stop_on_error_and_batches(fleet: Fleet, seed_file: Path) -> None:
    fleet.reset()
    stopped = transition(fleet, seed_file, "--batch", "1", "--stop-on-error", "--format", "json")
    assert stopped.returncode == 1
    assert [o["outcome"] for o in json.loads(stopped.stdout)] == ["refused", "skipped", "skipped"]
    assert set(fleet.states().values()) == {"running"}
    # Without --stop-on-error every batch goes: the web nodes do it.
    going = transition(fleet, seed_file, "--batch", "2", "--pause", "100ms", "--format", "json")
    assert going.returncode == 1
    assert [o["outcome"] for o in json.loads(going.stdout)] == ["refused", "done", "done"]
    # A successful canary lets the rest follow.
    fleet.reset()
    canary = transition(
        fleet, seed_file, "--where", "role=web", "--canary", "1", "--batch", "1", "--format", "json"
    )
    assert canary.returncode == 0, canary.stderr
    assert [o["identity"] for o in json.loads(canary.stdout)] == sorted(WEB)
    fleet.reset()


def test_untrusted_seed_is_refused_everywhere(fleet: Fleet, tmp_path: Path) -> None:
    from machinery.core.signing import generate_keypair

    fleet.reset()
    other = tmp_path / "other.seed"
    other.write_text(generate_keypair().seed_hex)
    done = transition(fleet, other, "--format", "json")
    assert done.returncode == 1
    assert {o["outcome"] for o in json.loads(done.stdout)} == {"refused"}
    assert set(fleet.states().values()) == {"running"}
    bad = transition(fleet, tmp_path / "missing.seed")
    assert bad.returncode == 2 and "--seed-file" in bad.stderr
