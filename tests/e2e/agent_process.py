"""Starting a real ``machinery agent`` process for end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


class AgentProcess:
    def __init__(
        self,
        base: Path,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        max_descriptors: int | None = None,
    ) -> None:
        self.base = base
        self.store = base / "store"
        self.state = base / "state"
        self.store.mkdir(parents=True, exist_ok=True)
        self.log = base / "agent.log"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("MACHINERY_")}
        self.env = {**inherited, "MACHINERY_RATE_LIMIT": "false", **(env or {})}
        self.args = args or []
        self.max_descriptors = max_descriptors  # RLIMIT_NOFILE (soft and hard) of the agent
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def copy_example(self, name: str, as_name: str | None = None) -> Path:
        target = self.store / (as_name or name)
        shutil.copytree(
            ROOT / "examples" / name,
            target,
            ignore=shutil.ignore_patterns("world", "machine_data.json"),
        )
        return target

    def start(self, timeout: float = 20.0) -> AgentProcess:
        (self.state / "agent.json").unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *self._interpreter(),
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
                    "e2e.example.net",
                    *self.args,
                ],
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"agent exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                self.url = json.loads((self.state / "agent.json").read_text())["url"]
                httpx.get(self.url + "/healthz", timeout=1).raise_for_status()
                return self
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"agent did not come up:\n{self.log.read_text()}")
            time.sleep(0.05)

    def _interpreter(self) -> list[str]:
        """Python, or with ``max_descriptors`` a Python that lowers RLIMIT_NOFILE and then
        becomes the agent's Python (no preexec_fn: it is unsafe in a threaded test process)."""
        if self.max_descriptors is None:
            return [sys.executable]
        limit = self.max_descriptors
        trampoline = (
            "import os, resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
        )
        return [sys.executable, "-c", trampoline]

    def get(self, path: str, **kwargs: Any) -> Any:
        return httpx.get(self.url + path, timeout=10, **kwargs).json()

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=10)

    def machine(self, name: str) -> dict[str, Any] | None:
        for entry in self.get("/api/v1/machines")["machines"]:
            if entry["name"] == name:
                return dict(entry)
        return None

    def wait(self, predicate: Any, timeout: float = 10.0, what: str = "") -> float:
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"timed out waiting for {what}\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.01)
        return time.monotonic() - started

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
