"""A real agent process for benchmarks (the same way operators run it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


class Agent:
    def __init__(self, base: Path, env: dict[str, str] | None = None) -> None:
        self.base = base
        self.store = base / "store"
        self.state = base / "state"
        self.store.mkdir(parents=True, exist_ok=True)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MACHINERY_")}
        self.env = {**clean, "MACHINERY_LOG_LEVEL": "warning", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.client = httpx.Client(timeout=30)

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait for the API; returns seconds until it answered."""
        started = time.monotonic()
        with open(self.base / "agent.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "machinery",
                    "agent",
                    "--store",
                    str(self.store),
                    "--state-dir",
                    str(self.state),
                    "--listen",
                    "127.0.0.1:0",
                    "--identity",
                    "bench",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.env,
            )
        while True:
            if self.process.poll() is not None:
                raise RuntimeError((self.base / "agent.log").read_text()[-2000:])
            try:
                self.url = json.loads((self.state / "agent.json").read_text())["url"]
                self.client.get(self.url + "/healthz").raise_for_status()
                return time.monotonic() - started
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError("agent did not start")
            time.sleep(0.02)

    def machines(self) -> list[dict[str, Any]]:
        return list(self.client.get(self.url + "/api/v1/machines").json()["machines"])

    def rss_kib(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()
