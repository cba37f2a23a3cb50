"""End to end: cookbook examples run for real (``machinery run``), stand-ins and all.

The scenario files check each machine's logic on a simulated clock; these tests check that the
examples' scripts really do what the machines expect of them: openssl issuing and verifying
certificates, a release served on loopback, downloaded, checked and rolled back, a volume
cleaned, two machines following each other.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_run_examples import Run, run_example, stop, touch

__all__ = ["run_example"]  # the fixture, shared with test_run_examples

# Real commands on real intervals (the disk guardian measures every 10 s): tens of seconds.
pytestmark = pytest.mark.slow

Transition = tuple[str, str, str, str]


def transitions_of(run: Run, machine: str) -> list[Transition]:
    return [t for t in run.transitions() if t[0] == machine]


def wait_until(
    run: Run, machine: str, state: str, after: int = 0, timeout: float = 30.0
) -> list[Transition]:
    """Polls the events until ``machine`` has made more than ``after`` transitions and the last
    one entered ``state``; returns its transitions."""
    deadline = time.monotonic() + timeout
    while True:
        seen = transitions_of(run, machine)
        if len(seen) > after and seen[-1][3] == state:
            return seen
        if run.process.poll() is not None:
            raise AssertionError(f"machinery exited early:\n{run.log_file.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{machine} never reached {state}: {seen}\n{run.log_file.read_text()}"
            )
        time.sleep(0.05)


@pytest.fixture
def release_servers(tmp_path: Path) -> Iterator[list[Path]]:
    """Stops the archive example's download servers the test started (they outlive the run)."""
    worlds: list[Path] = []
    yield worlds
    for world in worlds:
        try:
            pid = json.loads((world / "www" / "server.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_cert_expiry_issues_verifies_and_renews_with_openssl(run_example: Any) -> None:
    run, [example] = run_example("cert-expiry")
    wait_until(run, "cert_expiry", "OK", timeout=60)
    stop(run)
    assert transitions_of(run, "cert_expiry") == [
        ("cert_expiry", "check_now", "starting", "FORCE_CHECK"),
        ("cert_expiry", "UNKNOWN", "FORCE_CHECK", "UNKNOWN"),
        ("cert_expiry", "renewed", "UNKNOWN", "verifying"),
        ("cert_expiry", "verified", "verifying", "FORCE_CHECK"),
        ("cert_expiry", "OK", "FORCE_CHECK", "OK"),
    ]
    tls = example / "world" / "tls"
    assert stat.S_IMODE((tls / "service.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((example / "world" / "ca" / "ca.key").stat().st_mode) == 0o600
    subject = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", str(tls / "service.crt")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "service.example.net" in subject
    checks = [
        e["data"] for e in run.events() if e["type"] == "io.choria.machine.watcher.nagios.v1.state"
    ]
    assert [c["status"] for c in checks] == ["UNKNOWN", "OK"]
    days_left = checks[-1]["perfdata"][0]
    assert days_left["label"] == "days_left" and 88 <= days_left["value"] <= 90


def test_cert_expiry_renews_an_expiring_certificate_and_fails_without_its_ca(
    run_example: Any,
) -> None:
    run, [example] = run_example("cert-expiry")
    wait_until(run, "cert_expiry", "OK", timeout=60)
    stop(run)
    # A certificate with 10 days left, and a CA that cannot be reached: the next start finds
    # it CRITICAL, and the renewal fails.
    subprocess.run(
        ["./renew_cert.sh", "world/tls", "service.example.net", "10"],
        cwd=example,
        check=True,
        capture_output=True,
    )
    (example / "world" / "ca" / "offline").touch()
    before = (example / "world" / "tls" / "service.crt").read_bytes()
    first_run = len(transitions_of(run, "cert_expiry"))  # the events file is appended to
    run, _ = run_example("cert-expiry")
    wait_until(run, "cert_expiry", "failed", timeout=60)
    stop(run)
    assert [t[1] for t in transitions_of(run, "cert_expiry")[first_run:]] == [
        "check_now",
        "CRITICAL",
        "renew_failed",
    ]
    assert (example / "world" / "tls" / "service.crt").read_bytes() == before


def test_archive_app_installs_a_served_release_and_rolls_a_broken_one_back(
    run_example: Any, release_servers: list[Path]
) -> None:
    run, [example] = run_example("archive-app")
    release_servers.append(example / "world")
    touch(example / "release.json")  # as the file watcher's first look would, only sooner
    wait_until(run, "archive_app", "running", timeout=60)
    assert transitions_of(run, "archive_app")[-1][1] == "healthy"
    app = example / "world" / "install" / "app"
    assert (app / "VERSION").read_text() == "1.0.0\n"

    (example / "release.json").write_text('{"version": "2.0.0", "status": "broken"}\n')
    wait_until(run, "archive_app", "running", after=4, timeout=60)
    stop(run)
    assert [t[1] for t in transitions_of(run, "archive_app")] == [
        "release_requested",
        "published",
        "installed",
        "healthy",
        "release_requested",
        "published",
        "installed",
        "unhealthy",
        "rollback_ready",
        "installed",
        "healthy",
    ]
    assert (app / "VERSION").read_text() == "1.0.0\n"
    assert (app / "status").read_text() == "ok\n"
    data = json.loads((example / "machine_data.json").read_text())
    assert data["release"]["version"] == "1.0.0"
    assert data["rolled_back_from"] == "2.0.0"
    assert data["previous_release"] == {}
    archives = [
        e["data"] for e in run.events() if e["type"] == "io.choria.machine.watcher.archive.v1.state"
    ]
    assert [a["previous_outcome"] for a in archives] == ["downloaded"] * 3
    assert all(a["source"].startswith("http://127.0.0.1:") for a in archives)
    # nothing of the staging area is left behind
    assert list((example / "world" / "install" / "tmp").iterdir()) == []


def test_dependent_services_follow_the_database_machine(run_example: Any) -> None:
    run, [app, _database] = run_example("dependent-services", "dependent-services/database")
    wait_until(run, "web_app", "running", timeout=60)
    world = app / "world"
    assert (world / "app.running").exists()

    (world / "db.running").unlink()  # the database crashes
    wait_until(run, "database", "ready", after=2, timeout=60)
    wait_until(run, "web_app", "running", after=1, timeout=60)
    stop(run)
    assert transitions_of(run, "database") == [
        ("database", "start", "stopped", "starting"),
        ("database", "started", "starting", "ready"),
        ("database", "crashed", "ready", "stopped"),
        ("database", "start", "stopped", "starting"),
        ("database", "started", "starting", "ready"),
    ]
    assert transitions_of(run, "web_app") == [
        ("web_app", "started", "waiting", "running"),
        ("web_app", "database_lost", "running", "stopping"),
        ("web_app", "stopped", "stopping", "waiting"),
        ("web_app", "started", "waiting", "running"),
    ]
    assert "Triggering database_lost transition via database#crashed" in run.log_file.read_text()


def test_disk_guardian_cleans_up_and_goes_critical_when_it_cannot(run_example: Any) -> None:
    run, [example] = run_example("disk-guardian")
    volume = example / "world" / "volume"
    volume.mkdir(parents=True, exist_ok=True)
    # More than 90% of the 512 KiB volume in something cleanup.sh must not remove.
    (volume / "data.bin").write_bytes(b"x" * 480 * 1024)
    wait_until(run, "disk_guardian", "critical", timeout=120)
    (volume / "data.bin").unlink()
    wait_until(run, "disk_guardian", "ok", after=2, timeout=120)
    # Now rotated logs: those are what cleanup removes.
    (volume / "app.log.20260101000000000000000").write_bytes(b"x" * 480 * 1024)
    seen = wait_until(run, "disk_guardian", "ok", after=4, timeout=120)
    stop(run)
    assert [t[1:] for t in seen] == [
        ("too_full", "ok", "cleanup"),
        ("cleanup_failed", "cleanup", "critical"),
        ("recovered", "critical", "ok"),
        ("too_full", "ok", "cleanup"),
        ("recovered", "cleanup", "ok"),
    ]
    assert not (volume / "app.log.20260101000000000000000").exists()
