"""End to end: ``machinery run`` with Choria's flags, ``--http`` (the machine HTTP routes) and
``--connect``/``--nats`` (a real nats-server for kv, gossip and governors), in a real process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.natsserver import NatsServer, free_port

SWITCH = """\
name: heater
version: 1.0.0
initial_state: idle
transitions:
  - name: switch_on
    from: [idle, heating]
    destination: heating
  - name: switch_off
    from: [idle, heating]
    destination: idle
watchers:
  - name: switch
    type: httpswitch
    state_match: [idle, heating]
    success_transition: switch_on
    fail_transition: switch_off
    properties:
      off_when: [idle]
"""

BROKERED = """\
name: brokered
version: 1.0.0
initial_state: waiting
transitions:
  - name: configured
    from: [waiting]
    destination: running
  - name: governed_ran
    from: [running]
    destination: ran
  - name: governor_refused
    from: [running]
    destination: refused
watchers:
  - name: config
    type: kv
    state_match: [waiting]
    success_transition: configured
    interval: 1s
    properties:
      bucket: CONFIG
      key: mode
  - name: heartbeat
    type: gossip
    state_match: [running, refused, ran]
    interval: 1s
    properties:
      subject: machinery.test.heartbeat
      payload: "alive {{ .identity }}"
  - name: governed
    type: exec
    state_match: [running]
    success_transition: governed_ran
    fail_transition: governor_refused
    interval: 1m
    properties:
      command: /bin/true
      governor: NO_SUCH_GOVERNOR
"""


class Running:
    def __init__(self, process: subprocess.Popen[bytes], events: Path, log: Path) -> None:
        self.process = process
        self.events_file = events
        self.log_file = log

    def transitions(self) -> list[tuple[str, str, str]]:
        if not self.events_file.exists():
            return []
        found = []
        for line in self.events_file.read_text().splitlines():
            event = json.loads(line)
            if event["type"] == "io.choria.machine.v1.transition":
                data = event["data"]
                found.append((data["transition"], data["from_state"], data["to_state"]))
        return found

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"machinery exited early:\n{self.log_file.read_text()}")
            assert time.monotonic() < deadline, f"{what}:\n{self.log_file.read_text()}"
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=15) == 0, self.log_file.read_text()


@pytest.fixture
def run_machine(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(manifest: str, *flags: str) -> Running:
        directory = tmp_path / "machine"
        directory.mkdir()
        (directory / "machine.yaml").write_text(manifest)
        events, log = tmp_path / "events.jsonl", tmp_path / "run.log"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "machinery",
                "run",
                str(directory),
                "--events",
                str(events),
                "--identity",
                "run.example.net",
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),
            cwd=tmp_path,
        )
        running = Running(process, events, log)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def request(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def test_run_http_serves_the_switch_routes(run_machine: Callable[..., Running]) -> None:
    port = free_port()
    running = run_machine(SWITCH, "--http", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    switch = f"{base}/choria/machine/switch/v1/heater/switch"
    running.wait_until(lambda: request("GET", switch)[0] == 200, "the switch route never answered")
    assert json.loads(request("GET", switch)[1])["is_on"] is False
    assert request("GET", f"{base}/choria/homeassistant/switch/v1/heater/switch") == (200, b"OFF")

    status, body = request("POST", switch, b'{"on": true}')
    assert (status, json.loads(body)) == (200, {"is_on": True})
    running.wait_until(
        lambda: ("switch_on", "idle", "heating") in running.transitions(), "no switch_on"
    )
    status, body = request("POST", f"{base}/choria/homeassistant/switch/v1/heater/switch", b"OFF")
    assert (status, body) == (200, b"OFF")
    running.wait_until(
        lambda: ("switch_off", "heating", "idle") in running.transitions(), "no switch_off"
    )
    assert request("GET", f"{base}/choria/machine/switch/v1/heater/nope")[0] == 400
    # Only Choria's machine routes: not the agent's API.
    assert request("GET", f"{base}/api/v1/machines")[0] == 404
    running.stop()
    assert request("GET", switch)[0] == 0  # the listener is gone


def test_run_without_http_serves_nothing(run_machine: Callable[..., Running]) -> None:
    port = free_port()
    running = run_machine(SWITCH)
    running.wait_until(
        lambda: "Starting Choria Machine" in running.log_file.read_text(), "never started"
    )
    assert request("GET", f"http://127.0.0.1:{port}/choria/machine/switch/v1/heater/switch")[0] == 0
    running.stop()


def test_run_http_refuses_a_bad_address(tmp_path: Path) -> None:
    directory = tmp_path / "machine"
    directory.mkdir()
    (directory / "machine.yaml").write_text(SWITCH)
    result = subprocess.run(
        [sys.executable, "-m", "machinery", "run", str(directory), "--http", "127.0.0.1:http"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "--http 127.0.0.1:http" in result.stderr and "numeric port" in result.stderr


async def _put_and_listen(url: str, seen: list[bytes]) -> None:
    import nats

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        kv = await js.create_key_value(bucket="CONFIG")
        messages: asyncio.Queue[bytes] = asyncio.Queue()

        async def received(message: Any) -> None:
            await messages.put(message.data)

        await client.subscribe("machinery.test.heartbeat", cb=received)
        await kv.put("mode", b"on")
        seen.append(await asyncio.wait_for(messages.get(), 30))
    finally:
        await client.close()


@pytest.mark.parametrize("flag", ["--connect", "--nats"])
def test_run_connect_uses_the_broker_for_kv_and_gossip(
    run_machine: Callable[..., Running], nats_server: NatsServer, flag: str
) -> None:
    running = run_machine(BROKERED, flag, nats_server.url)
    running.wait_until(
        lambda: "connected to NATS" in running.log_file.read_text(), "never connected"
    )
    seen: list[bytes] = []
    asyncio.run(_put_and_listen(nats_server.url, seen))
    # The kv watcher read the key from JetStream and fired; then gossip published on NATS.
    assert ("configured", "waiting", "running") in running.transitions()
    assert seen == [b"alive run.example.net"]
    # Governors are the broker's: an unknown one refuses the command (without a broker it would
    # run ungoverned).
    running.wait_until(
        lambda: ("governor_refused", "running", "refused") in running.transitions(),
        "the NATS governor was not used",
    )
    assert "unknown governor NO_SUCH_GOVERNOR" in running.log_file.read_text()
    running.stop()


def test_run_starts_a_machine_with_unknown_keys_and_prints_the_warning(
    run_machine: Callable[..., Running],
) -> None:
    # Choria's `machine run` runs it, ignoring the key: so does ours, saying so.
    manifest = SWITCH.replace("    properties:\n", "    governor: HEATERS\n    properties:\n")
    assert manifest != SWITCH
    running = run_machine(manifest)
    running.wait_until(
        lambda: "Starting Choria Machine heater" in running.log_file.read_text(), "never started"
    )
    assert (
        "machine.yaml:17:5: warning: watcher 'switch': unknown key 'governor' is ignored"
        in running.log_file.read_text()
    )
    running.stop()
