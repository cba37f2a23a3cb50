"""Load only what is used: a real agent process, and the commands that talk to one, must not
import the modules of features they are not configured for (issue 16).

Each process runs the real entry point under a small wrapper that writes ``sys.modules`` to a
file when the interpreter exits; the agent is stopped with SIGTERM, as operators stop it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import write_machine

# Runs the console script's entry point and records every module loaded, at exit.
WRAPPER = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["machinery", *sys.argv[2:]]
from machinery.cli.entry import main
main()
"""

# Machines using only these types, with no broker, no signing key and no archive, machines or
# plugins watcher: nothing below may be imported.
MANIFEST = """\
name: plain
version: 1.0.0
initial_state: idle
transitions:
  - name: changed
    from: [idle]
    destination: idle
watchers:
  - name: marker
    type: file
    state_match: [idle]
    interval: 1m
    properties:
      path: marker.txt
  - name: check
    type: exec
    state_match: [idle]
    interval: 1m
    properties:
      command: /bin/true
  - name: tick
    type: timer
    state_match: [idle]
    properties:
      timer: 1h
"""

# The "load only when used" list: module -> what would justify loading it.
UNWANTED_IN_AGENT = {
    "nats": "nats.servers",
    "machinery.nats.publisher": "nats.servers",
    "machinery.nats.kv": "nats.servers",
    "machinery.nats.governor": "nats.servers",
    "machinery.agent.spool": "nats.servers",
    "httpx": "an archive, machines or plugins watcher",
    "nacl": "a signing key or a machines/plugins watcher",
    "machinery.core.signing": "a signing key or a machines/plugins watcher",
    "pydantic_settings": "nothing (no longer a dependency)",
    "croniter": "a schedule watcher",
    "machinery.lang.expr": "an expression (expression watcher, hiera data)",
    "machinery.watchers.archive": "an archive watcher",
    "machinery.watchers.schedule": "a schedule watcher",
    "machinery.watchers.kv": "a kv watcher",
    "machinery.watchers.machines": "a machines watcher",
    "machinery.watchers.plugins": "a plugins watcher",
    "machinery.watchers.manager": "a machines or plugins watcher",
    "machinery.watchers.gossip": "a gossip watcher",
    "machinery.watchers.expression": "an expression watcher",
}

# What `status`, `transition` and `watch` (given the agent's URL) must never import.
AGENT_SIDE = (
    "machinery.agent",
    "machinery.core.machine",
    "machinery.watchers",
    "machinery.api",
    "machinery.nats",
    "machinery.spec",
    "uvicorn",
    "fastapi",
    "starlette",
    "nats",
    "nacl",
    "prometheus_client",
)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHINERY_")}
    return {**env, "MACHINERY_LOG_LEVEL": "warning", **extra}


def _loaded(dump: Path) -> set[str]:
    return set(json.loads(dump.read_text()))


def _run_agent(tmp_path: Path, **env: str) -> set[str]:
    """Start a real agent on a plain store, ask the API for its machines and its metrics, stop
    it with SIGTERM; returns the modules it had loaded."""
    store = tmp_path / "store"
    write_machine(store / "plain", MANIFEST)
    state = tmp_path / "state"
    dump = tmp_path / "modules.json"
    command = [sys.executable, "-c", WRAPPER, str(dump), "agent", "--store", str(store)]
    command += ["--state-dir", str(state), "--listen", "127.0.0.1:0", "--identity", "t"]
    with open(tmp_path / "agent.log", "wb") as log:
        process = subprocess.Popen(command, stderr=log, env=_clean_env(**env))
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=10) as client:
            while True:
                assert process.poll() is None, (tmp_path / "agent.log").read_text()
                assert time.monotonic() < deadline, "the agent did not start"
                try:
                    url = json.loads((state / "agent.json").read_text())["url"]
                    machines = client.get(url + "/api/v1/machines").json()["machines"]
                    if machines and machines[0]["status"] == "running":
                        break
                except (OSError, ValueError, KeyError, httpx.HTTPError):
                    pass
                time.sleep(0.05)
            client.get(url + "/metrics").raise_for_status()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, (tmp_path / "agent.log").read_text()
    return _loaded(dump)


def test_agent_loads_only_what_its_configuration_uses(tmp_path: Path) -> None:
    loaded = _run_agent(tmp_path)
    # The wrapper sees what the agent used: its machines' watcher types and the HTTP API.
    assert {"machinery.watchers.file", "machinery.watchers.exec", "uvicorn"} <= loaded
    unwanted = {name: why for name, why in UNWANTED_IN_AGENT.items() if name in loaded}
    assert not unwanted, f"imported without their configuration: {unwanted}"


def test_agent_with_a_broker_loads_nats(tmp_path: Path) -> None:
    # Nothing listens there: the agent keeps trying, and has loaded the client to do so.
    loaded = _run_agent(tmp_path, MACHINERY_NATS__SERVERS="nats://127.0.0.1:9")
    assert {"nats", "machinery.nats.publisher", "machinery.agent.spool"} <= loaded


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "some_machine", "--format", "json"],
        ["transition", "some_machine", "some_event"],
        ["history", "some_machine"],
        ["watch"],
    ],
)
def test_commands_talking_to_an_agent_import_nothing_of_it(
    tmp_path: Path, command: list[str]
) -> None:
    dump = tmp_path / "modules.json"
    # Nothing listens on port 9: each command reports that and exits 1.
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(dump), *command, "--agent", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "127.0.0.1:9" in result.stderr
    loaded = _loaded(dump)
    assert "machinery.cli.client" in loaded or "machinery.cli.watch" in loaded
    agent_side = sorted(m for m in loaded if m.startswith(AGENT_SIDE))
    assert not agent_side, agent_side


def test_version_loads_no_command_line_framework(tmp_path: Path) -> None:
    dump = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(dump), "--version"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.startswith("machinery "), result
    loaded = _loaded(dump)
    assert not sorted(m for m in loaded if m.startswith(("typer", "click", "rich", "pydantic")))
    assert {m for m in loaded if m.startswith("machinery")} == {
        "machinery",
        "machinery.cli",
        "machinery.cli.entry",
    }
