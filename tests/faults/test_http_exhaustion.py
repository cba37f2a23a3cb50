"""Hostile HTTP clients against a real agent process (issue 13, items 3 and 6).

- 2,000 connections that send half a request, against an agent limited to 512 descriptors:
  ``/healthz`` keeps answering, an exec watcher keeps running, the log stays short.
- 100 clients that open a KV watch on a bucket of 5 x 1 MB values and never read: the agent's
  memory stays bounded and ``/healthz`` keeps answering.

The tests print what they measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.agent_process import AgentProcess
from tests.e2e.test_agent_process import write_machine
from tests.faults.procinfo import fd_count, rss_kib

TICKER = """\
name: ticker
version: 1.0.0
initial_state: ticking
transitions:
  - name: tick
    from: [ticking]
    destination: ticking
watchers:
  - name: beat
    type: exec
    state_match: [ticking]
    interval: 500ms
    properties:
      command: /bin/true
"""

AGENT_DESCRIPTORS = 512
HALF_REQUESTS = 2000


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    process = AgentProcess(tmp_path, max_descriptors=AGENT_DESCRIPTORS)
    yield process
    process.kill()


@contextlib.contextmanager
def descriptors(at_least: int) -> Iterator[None]:
    """This test process may open ``at_least`` descriptors for the duration."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < at_least:
        pytest.fail(f"the test needs {at_least} descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, at_least), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def runs(agent: AgentProcess) -> int:
    """How often the ticker's exec watcher ran (0 before the machine is loaded)."""
    watchers = agent.get("/api/v1/machines/ticker/watchers").get("watchers")
    return int(watchers[0]["status"]["runs"]) if watchers else 0


async def open_half_requests(host: str, port: int, count: int) -> tuple[list[socket.socket], int]:
    """``count`` connections that each send half a request head; (the sockets, failures)."""
    loop = asyncio.get_running_loop()
    half = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()

    async def one() -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 5)
            await asyncio.wait_for(loop.sock_sendall(sock, half), 5)
            return sock
        except (OSError, TimeoutError):
            sock.close()
            return None

    opened: list[socket.socket] = []
    failures = 0
    for start in range(0, count, 200):
        batch = await asyncio.gather(*(one() for _ in range(min(200, count - start))))
        opened += [s for s in batch if s is not None]
        failures += sum(1 for s in batch if s is None)
    return opened, failures


def test_half_requests_do_not_exhaust_descriptors(agent: AgentProcess) -> None:
    write_machine(agent.store / "ticker", TICKER)
    agent.start()
    assert agent.process is not None
    agent.wait(lambda: runs(agent) >= 2, what="the exec watcher's first runs")
    url = httpx.URL(agent.url)
    assert url.host is not None and url.port is not None

    with descriptors(HALF_REQUESTS + 256):
        started = time.monotonic()
        sockets, failures = asyncio.run(open_half_requests(url.host, url.port, HALF_REQUESTS))
        try:
            opened_in = time.monotonic() - started
            before = runs(agent)
            # Answers while the half requests are held open, on fresh connections.
            answered = [httpx.get(agent.url + "/healthz", timeout=10).status_code for _ in range(5)]
            agent.wait(lambda: runs(agent) >= before + 2, timeout=20, what="exec runs")
            agent_fds = fd_count(agent.process.pid)
        finally:
            for sock in sockets:
                sock.close()
    log = agent.log.read_text()
    tracebacks = log.count("Traceback")
    print(
        f"\n{HALF_REQUESTS} half requests in {opened_in:.1f}s ({failures} failed to connect), "
        f"agent descriptors {agent_fds}/{AGENT_DESCRIPTORS}, healthz {answered}, "
        f"tracebacks {tracebacks}, log {len(log)} bytes"
    )
    assert answered == [200] * 5
    assert agent_fds < AGENT_DESCRIPTORS
    assert tracebacks < 5, log[-3000:]
    assert "EMFILE" not in log and "Too many open files" not in log, log[-3000:]
    assert len(log) < 100_000
    assert agent.process.poll() is None


VALUE_BYTES = 1024 * 1024
WATCHERS = 100


def test_kv_watchers_that_do_not_read_are_bounded(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path)
    try:
        agent.start()
        assert agent.process is not None
        assert httpx.post(agent.url + "/api/v1/kv/big", timeout=10).status_code == 200
        for index in range(5):
            value = (b"%d" % index) * VALUE_BYTES
            response = httpx.put(agent.url + f"/api/v1/kv/big/k{index}", content=value, timeout=30)
            assert response.status_code == 200, response.text
        # A reading client sees all five values: the baseline the bound must not break.
        with httpx.stream("GET", agent.url + "/api/v1/kv/big/watch", timeout=30) as stream:
            seen = 0
            for line in stream.iter_lines():
                if line.startswith("event: kv"):
                    seen += 1
                    if seen == 5:
                        break
        assert seen == 5
        baseline = rss_kib(agent.process.pid)
        url = httpx.URL(agent.url)
        request = f"GET /api/v1/kv/big/watch HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode()
        clients = []
        curve = [baseline]  # RSS samples, KiB
        with descriptors(WATCHERS + 256):
            try:
                for _ in range(WATCHERS):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    # Small buffers: what the client does not read stays in the agent.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.settimeout(10)
                    sock.connect((url.host, url.port))
                    sock.sendall(request)
                    clients.append(sock)
                    curve.append(rss_kib(agent.process.pid))
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    curve.append(rss_kib(agent.process.pid))
                    time.sleep(0.05)
                health = httpx.get(agent.url + "/healthz", timeout=10).status_code
            finally:
                for sock in clients:
                    sock.close()
        peak = max(curve)
        growth_mib = (peak - baseline) / 1024
        print(
            f"\n{WATCHERS} non-reading KV watchers: RSS {baseline // 1024} MiB -> peak "
            f"{peak // 1024} MiB (+{growth_mib:.0f} MiB), healthz {health}; growth over time "
            f"(MiB): {[(kib - baseline) // 1024 for kib in curve[::10]]}"
        )
        assert health == 200
        assert growth_mib < 100
        # The agent still serves watchers that read.
        with httpx.stream("GET", agent.url + "/api/v1/kv/big/watch", timeout=30) as stream:
            seen = 0
            for line in stream.iter_lines():
                if line.startswith("event: kv"):
                    seen += 1
                    if seen == 5:
                        break
        assert seen == 5
        assert agent.log.read_text().count("Traceback") < 5
    finally:
        agent.kill()
