"""The soak: a realistic store under steady load with faults injected, measured from outside.

Phase 1 (40% of the time) keeps one agent process running under load while the broker is
killed and restarted, a command hangs and is killed by its timeout, and a manifest is broken and
fixed: the agent's memory, descriptors and threads are sampled after a warm-up and at the end, and
must not grow beyond the stated bounds. Phase 2 (the rest) kills the agent with SIGKILL at random
moments and restarts it, checking every file after every kill. At the end the agent starts once
more, drains its spool and stops cleanly, and every event that was ever durably spooled must be
in the broker's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from soak.store import GENERATED_PREFIX, broken_manifest, build_store
from tests.e2e.agent_process import AgentProcess
from tests.faults.procinfo import fd_count, rss_kib, thread_count
from tests.natsserver import NatsServer, nats_server_binary

__all__ = ["Bounds", "SoakReport", "run_soak"]


@dataclass(frozen=True)
class Bounds:
    """How much a long-running agent may grow over phase 1, after its warm-up."""

    rss_growth_mib: float = 48.0
    rss_growth_ratio: float = 0.30
    fd_growth: int = 16
    thread_growth: int = 8


@dataclass
class Sample:
    at: float
    rss_kib: int
    fds: int
    threads: int
    events: float
    transitions: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.at, 1),
            "rss_mib": round(self.rss_kib / 1024, 1),
            "fds": self.fds,
            "threads": self.threads,
            "asyncio_tasks": "n/a (not exposed by the agent)",
            "events": int(self.events),
            "transitions": int(self.transitions),
        }


@dataclass
class SoakReport:
    machines: int = 0
    kill_rounds: int = 0
    corrupt_files: int = 0
    corrupt_notes: list[str] = field(default_factory=list)
    nats_restarts: int = 0
    hangs_killed: int = 0
    broken_manifests: int = 0
    broken_detected: int = 0
    broken_recovered: int = 0
    api_transitions: int = 0
    api_errors: int = 0
    file_pokes: int = 0
    command_failures_injected: int = 0
    orphans_after_kills: int = 0
    spooled_events_seen: int = 0
    stream_events: int = 0
    lost_events: int = 0
    history_not_published: int = 0
    samples: list[Sample] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    nats: bool = False

    def summary(self) -> str:
        lines = [
            f"{self.kill_rounds} SIGKILL rounds, {self.corrupt_files} corrupt files, "
            f"{self.lost_events} lost events",
            f"store: {self.machines} machines; load: {self.api_transitions} API transitions "
            f"({self.api_errors} errors), {self.file_pokes} file changes, "
            f"{self.command_failures_injected} command failures injected",
            f"faults: {self.nats_restarts} broker restarts, {self.hangs_killed} hung commands "
            f"killed by their timeout, {self.broken_manifests} broken manifests "
            f"({self.broken_detected} shown invalid, {self.broken_recovered} recovered), "
            f"{self.orphans_after_kills} commands orphaned by agent kills (cleaned up)",
            f"events: {self.spooled_events_seen} durably spooled ids seen at kills, "
            f"{self.stream_events} in the broker's stream, {self.lost_events} spooled but lost, "
            f"{self.history_not_published} recorded transitions never published (cut by a kill)"
            if self.nats
            else "events: no broker (nats-server not found or --no-nats)",
        ]
        for sample in self.samples:
            lines.append(f"sample {json.dumps(sample.to_dict())}")
        lines.append(
            "bounds: " + ("all within" if not self.violations else "; ".join(self.violations))
        )
        return "\n".join(lines)


class Soak:
    def __init__(self, base: Path, minutes: float, machines: int, seed: int, nats: bool) -> None:
        self.base = base
        self.minutes = minutes
        self.rng = random.Random(seed)
        self.report = SoakReport()
        self.nats: NatsServer | None = None
        env: dict[str, str] = {}
        if nats:
            try:
                nats_server_binary()
                self.nats = NatsServer(base / "nats")
                env["MACHINERY_NATS__SERVERS"] = self.nats.url
                self.report.nats = True
            except RuntimeError:
                self.nats = None
        self.agent = AgentProcess(base / "agent", env=env)
        self.names = build_store(self.agent.store, machines, seed)
        self.report.machines = len(self.names)
        self.generated = [n for n in self.names if n.startswith(GENERATED_PREFIX)]
        self.spooled_ids: set[str] = set()
        self.client = httpx.Client(timeout=10)

    # -- helpers -------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def metrics(self) -> dict[str, float]:
        text = self.client.get(self.agent.url + "/metrics").text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            with contextlib.suppress(ValueError):
                values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return values

    def sample(self, started: float) -> Sample:
        assert self.agent.process is not None
        pid = self.agent.process.pid
        values = self.metrics()
        return Sample(
            at=time.monotonic() - started,
            rss_kib=rss_kib(pid),
            fds=fd_count(pid),
            threads=thread_count(pid),
            events=values.get("machinery_events_total", 0.0),
            transitions=values.get("machinery_transitions_total", 0.0),
        )

    def machines(self) -> list[dict[str, Any]]:
        return list(self.client.get(self.agent.url + "/api/v1/machines").json()["machines"])

    def load_step(self) -> None:
        """One second's worth of load: API transitions, file changes, command failures."""
        try:
            listing = self.machines()
        except httpx.HTTPError:
            self.report.api_errors += 1
            return
        running = [
            m for m in listing if m.get("status") == "running" and m.get("available_transitions")
        ]
        for machine in self.rng.sample(running, min(4, len(running))):
            transition = self.rng.choice(machine["available_transitions"])
            try:
                response = self.client.post(
                    f"{self.agent.url}/api/v1/machines/{machine['name']}/transition",
                    json={"transition": transition},
                )
                if response.status_code in (200, 409):  # 409: it moved meanwhile
                    self.report.api_transitions += response.status_code == 200
                else:
                    self.report.api_errors += 1
            except httpx.HTTPError:
                self.report.api_errors += 1
        for name in self.rng.sample(self.generated, min(3, len(self.generated))):
            trigger = self.agent.store / name / "trigger.txt"
            trigger.write_text(f"{time.time()}\n")
            self.report.file_pokes += 1
        name = self.rng.choice(self.generated)
        flag = self.agent.store / name / "fail.flag"
        if flag.exists():
            flag.unlink()
        elif self.rng.random() < 0.5:
            flag.write_text("fail\n")
            self.report.command_failures_injected += 1

    def check_files(self, where: str) -> None:
        """The database and every JSON file must be whole (the agent is not running)."""
        problems = []
        db_path = self.agent.state / "machinery.db"
        if db_path.exists():
            try:
                db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
                try:
                    check = db.execute("PRAGMA integrity_check").fetchone()[0]
                    if check != "ok":
                        problems.append(f"integrity_check: {check}")
                    for (msg_id,) in db.execute("SELECT msg_id FROM spool"):
                        self.spooled_ids.add(msg_id)
                    for (payload,) in db.execute("SELECT payload FROM spool"):
                        json.loads(payload)
                finally:
                    db.close()
            except (sqlite3.Error, ValueError) as exc:
                problems.append(f"database: {exc}")
        for data in self.agent.store.glob("*/machine_data.json"):
            try:
                if not isinstance(json.loads(data.read_text() or "{}"), dict):
                    problems.append(f"{data}: not an object")
            except (OSError, ValueError) as exc:
                problems.append(f"{data}: {exc}")
        if problems:
            self.report.corrupt_files += len(problems)
            self.report.corrupt_notes.extend(f"{where}: {p}" for p in problems)
            self.log(f"CORRUPT after {where}: {problems}")

    def reap_orphans(self) -> int:
        """Commands a killed agent left running (their own sessions): count and kill them."""
        store = str(self.agent.store.resolve())
        found = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.startswith(store):
                found += 1
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(os.getpgid(int(entry)), signal.SIGKILL)
        return found

    # -- faults --------------------------------------------------------------------------------

    def restart_nats(self) -> None:
        if self.nats is None:
            return
        self.nats.kill()
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.nats.start()
        self.report.nats_restarts += 1

    def hang_once(self) -> None:
        flag = self.agent.store / "hanger" / "hang.flag"
        before = self.metrics().get("machinery_exec_timeouts_total", 0.0)
        flag.write_text("hang\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if self.metrics().get("machinery_exec_timeouts_total", 0.0) > before:
                self.report.hangs_killed += 1
                break
        flag.unlink()

    def break_and_fix(self) -> None:
        name = self.rng.choice(self.generated)
        manifest = self.agent.store / name / "machine.yaml"
        good = manifest.read_text()
        self.report.broken_manifests += 1
        staged = manifest.with_name(".machine.yaml.new")
        staged.write_text(broken_manifest(name))
        os.replace(staged, manifest)
        if self._wait_status(name, "invalid"):
            self.report.broken_detected += 1
        staged.write_text(good)
        os.replace(staged, manifest)
        if self._wait_status(name, "running"):
            self.report.broken_recovered += 1

    def _wait_status(self, name: str, status: str, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                for machine in self.machines():
                    if machine.get("path", "").endswith(f"/{name}") and machine["status"] == status:
                        return True
            time.sleep(0.2)
        return False

    # -- phases --------------------------------------------------------------------------------

    def steady(self, seconds: float) -> None:
        """Phase 1: one agent, load, non-fatal faults, sampled for growth."""
        self.log(f"phase 1: {seconds:.0f}s of load on one agent, with broker/hang/manifest faults")
        started = time.monotonic()
        self.agent.start()
        warmup = min(60.0, seconds * 0.25)
        next_fault = started + max(6.0, seconds / 8)
        faults = [self.restart_nats, self.hang_once, self.break_and_fix]
        fault_index = 0
        first: Sample | None = None
        while time.monotonic() - started < seconds:
            step = time.monotonic()
            self.load_step()
            if first is None and step - started >= warmup:
                first = self.sample(started)
                self.report.samples.append(first)
                self.log(f"after warm-up: {first.to_dict()}")
            if step >= next_fault:
                fault = faults[fault_index % len(faults)]
                fault_index += 1
                self.log(f"fault: {fault.__name__}")
                fault()
                next_fault = time.monotonic() + max(6.0, seconds / 8)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - step)))
        last = self.sample(started)
        self.report.samples.append(last)
        self.log(f"end of phase 1: {last.to_dict()}")
        if first is not None:
            self._check_growth(first, last)
        code, _ = self.agent.stop()
        if code != 0:
            self.report.violations.append(f"the agent stopped with exit code {code}")
        self.check_files("a clean stop")

    def _check_growth(self, first: Sample, last: Sample) -> None:
        bounds = Bounds()
        rss_growth = (last.rss_kib - first.rss_kib) / 1024
        allowed = max(bounds.rss_growth_mib, first.rss_kib / 1024 * bounds.rss_growth_ratio)
        if rss_growth > allowed:
            self.report.violations.append(f"RSS grew {rss_growth:.1f} MiB (bound {allowed:.1f})")
        if last.fds - first.fds > bounds.fd_growth:
            self.report.violations.append(
                f"descriptors grew by {last.fds - first.fds} (bound {bounds.fd_growth})"
            )
        if last.threads - first.threads > bounds.thread_growth:
            self.report.violations.append(
                f"threads grew by {last.threads - first.threads} (bound {bounds.thread_growth})"
            )

    def kills(self, seconds: float, rounds: int) -> None:
        """Phase 2: SIGKILL at random moments, restart, check every file."""
        self.log(f"phase 2: up to {rounds} SIGKILL rounds in {seconds:.0f}s")
        started = time.monotonic()
        while self.report.kill_rounds < rounds and time.monotonic() - started < seconds:
            self.agent.start()
            for _ in range(self.rng.randint(0, 2)):
                self.load_step()
            if self.nats is not None and self.rng.random() < 0.1:
                self.restart_nats()
            # Now and then the agent dies while a command hangs: what happens to the command?
            hang = self.agent.store / "hanger" / "hang.flag"
            if self.rng.random() < 0.2:
                hang.write_text("hang\n")
            time.sleep(self.rng.uniform(0.1, 2.0))
            self.agent.kill()
            hang.unlink(missing_ok=True)
            self.report.kill_rounds += 1
            self.report.orphans_after_kills += self.reap_orphans()
            self.check_files(f"kill round {self.report.kill_rounds}")
            if self.report.kill_rounds % 10 == 0:
                self.log(
                    f"{self.report.kill_rounds} kill rounds, {self.report.corrupt_files} corrupt"
                )

    def finish(self) -> None:
        """Start once more, let every machine run and the spool drain, stop cleanly, audit."""
        self.log("final start: resume, drain the spool, stop cleanly")
        self.agent.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listing = self.machines()
            if (
                all(m["status"] == "running" for m in listing)
                and len(listing) >= self.report.machines
            ):
                break
            time.sleep(0.5)
        else:
            self.report.violations.append(
                "not every machine was running after the final start: "
                + ", ".join(
                    f"{m['name']}={m['status']}"
                    for m in self.machines()
                    if m["status"] != "running"
                )
            )
        if self.nats is not None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                status = self.client.get(self.agent.url + "/api/v1/agent").json()
                if (
                    status["nats"]["state"] == "connected"
                    and status["publisher"]["spool_depth"] == 0
                ):
                    break
                time.sleep(0.5)
            else:
                self.report.violations.append("the spool did not drain within 120s")
        code, _ = self.agent.stop()
        if code != 0:
            self.report.violations.append(f"the final stop exited with {code}")
        leftovers = self.reap_orphans()
        if leftovers:
            self.report.violations.append(f"{leftovers} commands still running after a clean stop")
        self.check_files("the final stop")
        if self.nats is not None:
            self._audit_stream()

    def _audit_stream(self) -> None:
        assert self.nats is not None
        ids = asyncio.run(_stream_ids(self.nats.url))
        self.report.stream_events = len(ids)
        self.report.spooled_events_seen = len(self.spooled_ids)
        self.report.lost_events = len(self.spooled_ids - set(ids))
        duplicates = len(ids) - len(set(ids))
        if duplicates:
            self.report.violations.append(f"{duplicates} duplicate events kept by the stream")
        db = sqlite3.connect(self.agent.state / "machinery.db")
        try:
            history = db.execute(
                "SELECT machine, instance, from_state, to_state, CAST(timestamp AS INTEGER) FROM history"
            ).fetchall()
        finally:
            db.close()
        published = asyncio.run(_stream_transitions(self.nats.url))
        missing = 0
        remaining = dict(published)
        for row in history:
            if remaining.get(row, 0) > 0:
                remaining[row] -= 1
            else:
                missing += 1
        self.report.history_not_published = missing

    def run(self, rounds: int) -> SoakReport:
        total = self.minutes * 60
        if self.nats is not None:
            self.nats.start()
            asyncio.run(_create_stream(self.nats.url))
        try:
            self.steady(total * 0.4)
            self.kills(total * 0.6, rounds)
            self.finish()
        finally:
            self.agent.kill()
            self.reap_orphans()
            if self.nats is not None:
                self.nats.stop()
            self.client.close()
        report = self.report
        if report.corrupt_files:
            report.violations.append(
                f"{report.corrupt_files} corrupt files: {report.corrupt_notes[:3]}"
            )
        if report.lost_events:
            report.violations.append(
                f"{report.lost_events} spooled events never reached the broker"
            )
        if report.broken_manifests and report.broken_recovered < report.broken_manifests:
            report.violations.append("a broken manifest was not recovered after it was fixed")
        if report.hangs_killed == 0 and self.minutes >= 2:  # shorter runs may not get to it
            report.violations.append("the hanging command was never killed by its timeout")
        return report


async def _create_stream(url: str) -> None:
    import nats
    from nats.js.api import StreamConfig

    client = await nats.connect(url)
    try:
        await client.jetstream().add_stream(
            StreamConfig(name="CHORIA_MACHINE", subjects=["choria.machine.>"], duplicate_window=120)
        )
    finally:
        await client.close()


async def _read_stream(url: str) -> list[Any]:
    import nats
    import nats.errors

    client = await nats.connect(url)
    messages: list[Any] = []
    try:
        js = client.jetstream()
        expected = (await js.stream_info("CHORIA_MACHINE")).state.messages
        consumer = await js.pull_subscribe("choria.machine.>", durable=f"audit{time.time_ns()}")
        deadline = time.monotonic() + 120
        while len(messages) < expected and time.monotonic() < deadline:
            try:
                batch = await consumer.fetch(1000, timeout=2)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for message in batch:
                messages.append(json.loads(message.data))
                await message.ack()
    finally:
        await client.close()
    return messages


async def _stream_ids(url: str) -> list[str]:
    return [m["id"] for m in await _read_stream(url)]


async def _stream_transitions(url: str) -> dict[tuple[Any, ...], int]:
    counts: dict[tuple[Any, ...], int] = {}
    for message in await _read_stream(url):
        if message.get("type") == "io.choria.machine.v1.transition":
            data = message["data"]
            key = (
                data["machine"],
                data["id"],
                data["from_state"],
                data["to_state"],
                data["timestamp"],
            )
            counts[key] = counts.get(key, 0) + 1
    return counts


def run_soak(
    minutes: float, machines: int, rounds: int, seed: int, nats: bool, keep: bool
) -> SoakReport:
    """Run the store soak in a temporary directory; returns the report."""
    base = Path(tempfile.mkdtemp(prefix="machinery-soak-"))
    try:
        return Soak(base, minutes, machines, seed, nats).run(rounds)
    finally:
        if keep:
            print(f"soak files kept in {base}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
