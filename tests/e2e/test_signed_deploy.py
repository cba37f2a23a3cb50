"""Signed distribution of machines, end to end: real agent processes on a real NATS server.

A publisher signs a machines specification and puts it into NATS key-value. Each agent runs a
manager machine (kv watchers poll the key into machine data, a machines watcher applies it): on
the node the specification matches, ``mm_webapp`` appears, its archive watcher downloads the
archive from a local HTTP server, and the agent runs the installed machine. A node with another
identity deploys nothing; a tampered specification (the signature of the good one over an empty
list, which would purge everything) is rejected and changes nothing on disk.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import tarfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest

from machinery.core.signing import SpecKind, keypair_from_seed, pack_specification
from machinery.nats.kv import NatsKV
from tests.e2e.agent_process import AgentProcess
from tests.natsserver import NatsServer

T = TypeVar("T")

KEY = keypair_from_seed(hashlib.sha256(b"e2e signing key").digest())
BUCKET = "MACHINES"
WAIT = 30.0

MANAGER = """\
name: machine_manager
version: 1.0.0
initial_state: INITIAL
transitions:
  - name: to_manage
    from: [INITIAL]
    destination: MANAGE
  - name: enter_maintenance
    from: [MANAGE]
    destination: MAINTENANCE
  - name: resume
    from: [MAINTENANCE]
    destination: MANAGE
watchers:
  - name: initial_specification
    type: kv
    interval: 1s
    state_match: [INITIAL]
    success_transition: to_manage
    properties:
      bucket: MACHINES
      key: spec
      mode: poll
      bucket_prefix: false
      on_successful_get: true
  - name: specification
    type: kv
    interval: 1s
    state_match: [MANAGE]
    properties:
      bucket: MACHINES
      key: spec
      mode: poll
      bucket_prefix: false
  - name: manage_machines
    type: machines
    interval: 5s
    state_match: [MANAGE]
    properties:
      data_item: spec
      purge_unknown: true
      machine_manage_interval: 10s
{public_key}
"""

WEBAPP = """\
name: webapp
version: 2.1.0
initial_state: serving
transitions:
  - name: stop
    from: [serving]
    destination: stopped
  - name: start
    from: [stopped]
    destination: serving
watchers:
  - name: restart
    type: exec
    state_match: [stopped]
    properties:
      command: "true"
"""


# -- the archive and its server --------------------------------------------------------------


def build_archive() -> tuple[bytes, str, str]:
    """A tar.gz of ``webapp/`` with a SHA256SUMS file: (archive, its sha256, the sums' sha256)."""
    files = {"machine.yaml": WEBAPP.encode(), "README": b"deployed by the machines watcher\n"}
    sums = "".join(
        f"{hashlib.sha256(content).hexdigest()}  {name}\n"
        for name, content in sorted(files.items())
    ).encode()
    files["SHA256SUMS"] = sums
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        directory = tarfile.TarInfo("webapp")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        tar.addfile(directory)
        for name, content in files.items():
            info = tarfile.TarInfo(f"webapp/{name}")
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest(), hashlib.sha256(sums).hexdigest()


class ArchiveServer:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path != "/webapp-2.1.0.tgz":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/webapp-2.1.0.tgz"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}
        )

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


# -- helpers ---------------------------------------------------------------------------------


def kv(server: NatsServer, operation: Callable[[NatsKV], Awaitable[T]]) -> T:
    async def run() -> T:
        client = await nats.connect(server.url, connect_timeout=5)
        try:
            return await operation(NatsKV(client))
        finally:
            await client.close()

    return asyncio.run(run())


def put_spec(server: NatsServer, document: dict[str, str]) -> None:
    kv(server, lambda store: store.put(BUCKET, "spec", json.dumps(document).encode()))


def manager(agent: AgentProcess, public_key: str | None) -> None:
    directory = agent.store / "machine_manager"
    directory.mkdir(mode=0o700)
    line = f"      public_key: {public_key}" if public_key else ""
    (directory / "machine.yaml").write_text(MANAGER.format(public_key=line))


def watcher(agent: AgentProcess, machine: str, name: str) -> dict[str, Any]:
    body = agent.get(f"/api/v1/machines/{machine}/watchers")
    return next(w for w in body["watchers"] if w["name"] == name)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its contents; machine data files change as data does."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if p.name != "machine_data.json" and not p.name.startswith(".machine_data.json")
    }


@pytest.fixture
def agents(tmp_path: Path, nats_server: NatsServer) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    env = {"MACHINERY_NATS__SERVERS": nats_server.url}
    # Node A matches the specification and takes its key from the agent's signing_key setting;
    # node B has another identity and the key in the manager's public_key property.
    matching = AgentProcess(tmp_path / "a", env={**env, "MACHINERY_SIGNING_KEY": KEY.public_hex})
    other = AgentProcess(tmp_path / "b", env=env, args=["--identity", "other.example.net"])
    try:
        yield matching, other
    finally:
        for agent in (matching, other):
            agent.kill()


def test_a_signed_specification_deploys_on_matching_nodes_only_and_tampering_is_refused(
    nats_server: NatsServer, agents: tuple[AgentProcess, AgentProcess]
) -> None:
    matching, other = agents
    archive, checksum, sums_checksum = build_archive()
    with ArchiveServer(archive) as server:
        entries = [
            {
                "name": "webapp",
                "source": server.url,
                "checksum": checksum,
                "verify_checksum": sums_checksum,
                "match": "identity('^e2e\\\\.')",
            }
        ]
        good = pack_specification(SpecKind.MACHINES, json.dumps(entries).encode(), KEY)
        kv(nats_server, lambda store: store.create_bucket(BUCKET))
        put_spec(nats_server, good)

        manager(matching, None)
        manager(other, KEY.public_hex)
        matching.start()
        other.start()

        # The matching node: manager machine, download, the installed machine running.
        matching.wait(
            lambda: (m := matching.machine("webapp")) is not None and m["status"] == "running",
            timeout=WAIT,
            what="webapp deployed and running on the matching node",
        )
        mm = matching.machine("mm_webapp")
        assert mm is not None and mm["status"] == "running"
        assert (matching.store / "webapp" / "README").read_bytes() == (
            b"deployed by the machines watcher\n"
        )
        assert matching.get("/api/v1/machines/webapp")["state"] == "serving"
        download = watcher(matching, "mm_webapp", "download")
        assert download["status"]["outcomes"].get("downloaded") == 1
        manage = watcher(matching, "machine_manager", "manage_machines")
        assert manage["state"]["machines"] == ["webapp"]
        assert manage["status"]["outcomes"]["updated"] == 1

        # The other node applied the same specification and deployed nothing.
        other.wait(
            lambda: (
                other.machine("machine_manager") is not None
                and watcher(other, "machine_manager", "manage_machines")["status"]["runs"] >= 1
            ),
            timeout=WAIT,
            what="the other node's machines watcher ran",
        )
        manage = watcher(other, "machine_manager", "manage_machines")
        assert manage["status"]["outcome"] == "unchanged", manage["status"]
        assert manage["state"]["machines"] == ["webapp"]
        assert sorted(p.name for p in other.store.iterdir()) == ["machine_manager"]
        assert other.machine("mm_webapp") is None and other.machine("webapp") is None
        assert server.requests == ["/webapp-2.1.0.tgz"]

        # A tampered specification: the good signature over an empty list. Accepted, it would
        # purge the deployment; rejected, nothing on disk changes.
        before = snapshot(matching.store)
        tampered = dict(good, machines=base64.b64encode(b"[]").decode())
        put_spec(nats_server, tampered)
        matching.wait(
            lambda: (
                watcher(matching, "machine_manager", "manage_machines")["status"]["outcomes"].get(
                    "error", 0
                )
                >= 1
            ),
            timeout=WAIT,
            what="the tampered specification rejected",
        )
        # Longer than the purge grace period and the manager's interval.
        time.sleep(6)
        assert snapshot(matching.store) == before
        assert matching.machine("webapp")["status"] == "running"
        assert matching.machine("mm_webapp")["status"] == "running"
        log = matching.log.read_text()
        assert "Specification in data_item spec rejected, removing data" in log
        assert "signature did not verify" in log
        # The other node holds its own key: rejected there too.
        other.wait(
            lambda: (
                watcher(other, "machine_manager", "manage_machines")["status"]["outcomes"].get(
                    "error", 0
                )
                >= 1
            ),
            timeout=WAIT,
            what="the other node rejected the tampered specification",
        )
        assert sorted(p.name for p in other.store.iterdir()) == ["machine_manager"]
        assert server.requests == ["/webapp-2.1.0.tgz"]

        for agent in (matching, other):
            code, _ = agent.stop()
            assert code == 0
