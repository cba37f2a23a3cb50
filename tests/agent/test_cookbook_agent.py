"""Cookbook examples in a real agent, for what their scenarios cannot show: governors (the
simulation has none), Scout overrides and the node_exporter textfile. For the governors, copies
of one example stand for several nodes; without NATS they share the agent's local governors,
whose capacity is 1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NODES = 3

# Wraps the example's own update.sh to record, on the system-wide monotonic clock, when each
# copy's governed command starts and ends.
RECORDING_WRAPPER = """\
#!/usr/bin/env python3
import os, subprocess, sys, time

log = sys.argv[1]
def record(what):
    with open(log, "a") as handle:
        handle.write(f"{what} {os.environ['MACHINE_NAME']} {time.monotonic()}\\n")
record("start")
code = subprocess.call(["./update-stand-in.sh"])
record("end")
sys.exit(code)
"""


def copy_example(example: str, store: Path, index: int) -> Path:
    """A copy of the example under its own directory and machine name (one "node")."""
    target = store / f"{example}-{index}"
    shutil.copytree(
        ROOT / "examples" / example,
        target,
        ignore=shutil.ignore_patterns("world", "machine_data.json"),
    )
    manifest = target / "machine.yaml"
    name = example.replace("-", "_")
    text = manifest.read_text()
    assert f"\nname: {name}\n" in text
    manifest.write_text(text.replace(f"\nname: {name}\n", f"\nname: {name}_{index}\n", 1))
    return target


async def machine_states(run: Any) -> dict[str, str]:
    machines = (await run.http.get("/api/v1/machines")).json()["machines"]
    return {m["name"]: m.get("state", "") for m in machines}


async def wait_for_states(run: Any, wanted: dict[str, str], timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (states := await machine_states(run)) != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"states {states}, wanted {wanted}"
        await asyncio.sleep(0.05)


def most_at_once(log: Path) -> int:
    running = peak = 0
    events = sorted(
        (float(stamp), what)
        for what, _, stamp in (line.split() for line in log.read_text().splitlines())
    )
    for _, what in events:
        running += 1 if what == "start" else -1
        peak = max(peak, running)
    return peak


async def test_rolling_update_never_updates_more_nodes_than_the_governor_allows(
    tmp_path: Path, agent_factory: Any
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    log = tmp_path / "updates.log"
    copies = [copy_example("rolling-update", store, index) for index in range(NODES)]
    for copy in copies:
        (copy / "update.sh").rename(copy / "update-stand-in.sh")
        (copy / "update.sh").write_text(RECORDING_WRAPPER)
        (copy / "update.sh").chmod(0o755)
        manifest = copy / "machine.yaml"
        manifest.write_text(
            manifest.read_text().replace("command: ./update.sh", f"command: ./update.sh {log}")
        )
    names = [f"rolling_update_{index}" for index in range(NODES)]
    async with agent_factory() as run:
        await wait_for_states(run, dict.fromkeys(names, "unknown"), timeout=10)
        # The same release published to every node at once.
        for copy in copies:
            (copy / "release.json").write_text('{"version": "3.0.0"}\n')
        await wait_for_states(run, dict.fromkeys(names, "current"))
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * NODES, lines
    assert most_at_once(log) == 1, lines
    for copy in copies:
        assert (copy / "world" / "installed_version").read_text() == "3.0.0\n"


async def test_leader_cron_makes_one_report_per_period_however_many_nodes_are_due(
    tmp_path: Path, agent_factory: Any
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    copies = [copy_example("leader-cron", store, index) for index in range(NODES)]
    for copy in copies:
        (copy / "world").mkdir()
        (copy / "world" / "shared").symlink_to(shared)  # the storage the group shares
    names = [f"leader_cron_{index}" for index in range(NODES)]
    async with agent_factory() as run:
        await wait_for_states(run, dict.fromkeys(names, "idle"), timeout=10)
        # Every node due at the same moment, as the schedule makes them at the top of the hour.
        responses = await asyncio.gather(
            *(
                run.http.post(f"/api/v1/machines/{name}/transition", json={"transition": "due"})
                for name in names
            )
        )
        assert [r.status_code for r in responses] == [200] * NODES
        await wait_for_states(run, dict.fromkeys(names, "finished"))
    reports = (shared / "reports.log").read_text().splitlines()
    assert len(reports) == 1, reports
    assert reports[0].endswith(" report made by agent.example.net")
    assert (shared / "last_run").read_text().split()[0] == reports[0].split()[0]


async def test_scout_check_uses_the_overrides_remediates_and_exports_its_status(
    tmp_path: Path, agent_factory: Any
) -> None:
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"check_queue": {"warn": 50, "crit": 200}}))
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    prom = textfiles / "choria_machine_nagios_watcher_status.prom"
    settings = {"overrides_file": str(overrides), "textfile_directory": str(textfiles)}
    async with agent_factory(("scout-health-check",), **settings) as run:
        world = run.store / "scout-health-check" / "world"
        world.mkdir()
        # 250 is only WARNING with the example's default thresholds (100/500), CRITICAL with the
        # overrides (50/200). FORCE_CHECK checks at once instead of after the first splay.
        (world / "queue_depth").write_text("250\n")
        await wait_for_states(run, {"check_queue": "UNKNOWN"}, timeout=10)
        forced = await run.http.post(
            "/api/v1/machines/check_queue/transition", json={"transition": "FORCE_CHECK"}
        )
        assert forced.status_code == 200, forced.text
        # drain_queue.sh logs, then replaces the depth: wait for the last of the two.
        await run.wait(
            lambda: (world / "queue_depth").read_text() == "0\n", timeout=30, what="the remediation"
        )
        assert (world / "remediation.log").read_text().split()[1:] == ["drained", "250", "messages"]
        # The gauge's value is the status code, as in Choria.
        await run.wait(
            lambda: prom.exists() and 'status="CRITICAL"} 2' in prom.read_text(),
            timeout=10,
            what="CRITICAL in the textfile",
        )
        watchers = (await run.http.get("/api/v1/machines/check_queue/watchers")).json()
        check = next(w for w in watchers["watchers"] if w["name"] == "check")
        assert "./check_queue.sh -w 50 -c 200" in json.dumps(check)
        # The drained queue is OK at the next check, forced here rather than waited for.
        forced = await run.http.post(
            "/api/v1/machines/check_queue/transition", json={"transition": "FORCE_CHECK"}
        )
        assert forced.status_code == 200, forced.text
        await wait_for_states(run, {"check_queue": "OK"}, timeout=30)
        await run.wait(
            lambda: 'status="OK"} 0' in prom.read_text(), timeout=10, what="OK in the textfile"
        )
