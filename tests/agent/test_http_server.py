"""The agent's HTTP server (issue 13, item 3): header timeout, connection cap, idle eviction,
clients that do not read, and running out of descriptors; real sockets on loopback, time on a
FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from machinery.api.server import ConnectionLimits, GuardedServer, bind, connection_cap
from machinery.core.clock import FakeClock
from machinery.core.logthrottle import ThrottledLog

HEADER_TIMEOUT = 10.0
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class App:
    """Answers ``/`` at once, ``/block`` when released, ``/big`` with 8 MiB."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.blocked = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b"ok"
        if scope["path"] == "/block":
            self.blocked += 1
            await self.release.wait()
        elif scope["path"] == "/big":
            body = b"x" * (8 * 1024 * 1024)
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Served:
    def __init__(self, server: GuardedServer, port: int, app: App, clock: FakeClock) -> None:
        self.server = server
        self.gate = server.gate
        self.port = port
        self.app = app
        self.clock = clock

    async def connect(self, rcvbuf: int | None = None) -> tuple[Any, Any]:
        if rcvbuf is None:
            return await asyncio.open_connection("127.0.0.1", self.port)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        return await asyncio.open_connection(sock=sock)

    async def until(self, predicate: Any, what: str, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def serving(max_connections: int = 16) -> AsyncIterator[Served]:
    app = App()
    clock = FakeClock()
    config = uvicorn.Config(app, http="h11", lifespan="off", log_level="warning")
    server = GuardedServer(config, ConnectionLimits(max_connections, HEADER_TIMEOUT), clock)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    served = Served(server, port, app, clock)
    await served.until(lambda: server.started, "the server to start")
    try:
        yield served
    finally:
        app.release.set()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the server closed the connection (EOF or reset) within ``timeout``."""
    try:
        rest = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return rest == b"" or rest.endswith(b"ok")


async def answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return head.split(b"\r\n", 1)[0]


async def test_a_request_head_must_arrive_in_time() -> None:
    async with serving() as served:
        reader, writer = await served.connect()
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await served.until(lambda: len(served.gate.open) == 1, "the connection")
        await served.clock.advance(HEADER_TIMEOUT - 1)
        writer.write(b"\r\n")  # in time: answered
        assert await answer(reader) == b"HTTP/1.1 200 OK"

        slow_reader, slow = await served.connect()
        slow.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        silent_reader, _silent = await served.connect()  # sends nothing at all
        await served.until(lambda: len(served.gate.open) == 3, "three connections")
        await served.clock.advance(HEADER_TIMEOUT - 0.5)
        assert not await closed(slow_reader, 0.2)
        await served.clock.advance(1)
        assert await closed(slow_reader) and await closed(silent_reader)
        assert served.gate.timed_out == 2
        # The first connection is idle in keep-alive, its head timer stopped with its request.
        assert not await closed(reader, 0.2)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a slow second request
        await asyncio.sleep(0.05)
        await served.clock.advance(HEADER_TIMEOUT + 1)
        assert await closed(reader)


async def test_at_the_cap_the_idlest_connection_makes_room() -> None:
    async with serving(max_connections=3) as served:
        idle = [await served.connect() for _ in range(3)]
        await served.until(lambda: len(served.gate.open) == 3, "three idle connections")
        reader, writer = await served.connect()
        writer.write(REQUEST)
        assert await answer(reader) == b"HTTP/1.1 200 OK"
        assert await closed(idle[0][0])  # the oldest
        assert not await closed(idle[2][0], 0.2)
        assert served.gate.evicted == 1 and len(served.gate.open) <= 3


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503() -> None:
    async with serving(max_connections=3) as served:
        busy = []
        for _ in range(3):
            reader, writer = await served.connect()
            writer.write(b"GET /block HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            busy.append((reader, writer))  # a collected writer would close its connection
        await served.until(lambda: served.app.blocked == 3, "three requests in progress")
        reader, _ = await served.connect()
        assert await answer(reader) == b"HTTP/1.1 503 Service Unavailable"
        assert b"connection limit" in await asyncio.wait_for(reader.read(), 5)
        assert served.gate.refused == 1
        served.app.release.set()
        for pending, _ in busy:
            assert await answer(pending) == b"HTTP/1.1 200 OK"


async def test_clients_that_do_not_read_are_dropped_past_the_output_budget() -> None:
    async with serving() as served:
        served.gate.output_budget = 4 * 1024 * 1024
        stalled = []
        for _ in range(2):
            reader, writer = await served.connect(rcvbuf=4096)
            writer.write(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            stalled.append((reader, writer))
        await served.until(lambda: served.gate.dropped_slow >= 1, "a slow client dropped")
        # A client that reads gets the whole answer meanwhile.
        reader, writer = await served.connect()
        writer.write(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert await answer(reader) == b"HTTP/1.1 200 OK"
        body = await asyncio.wait_for(reader.readexactly(8 * 1024 * 1024), 10)
        assert len(body) == 8 * 1024 * 1024


async def test_out_of_descriptors_is_logged_once_per_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    real_accept = loop.sock_accept
    failures = 0

    async def exhausted(sock: socket.socket) -> tuple[socket.socket, Any]:
        nonlocal failures
        if failures < 50:  # EMFILE cannot be caused here without starving pytest itself
            failures += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await real_accept(sock)

    monkeypatch.setattr(loop, "sock_accept", exhausted)
    caplog.set_level(logging.WARNING, logger="machinery.api.server")
    async with serving() as served:
        reader, writer = await served.connect()  # waits in the backlog meanwhile
        writer.write(REQUEST)
        for _ in range(51):  # each pause waits on the clock: no spinning on the listener
            before = failures
            await served.clock.advance(0.1)
            assert failures <= before + 1
        assert await answer(reader) == b"HTTP/1.1 200 OK"
    emfile = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert failures == 50 and len(emfile) == 1
    assert "Too many open files" in emfile[0].getMessage()


async def test_throttled_log_reports_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    logger = logging.getLogger("tests.throttle")
    throttled = ThrottledLog(logger, clock, interval=60)
    caplog.set_level(logging.WARNING, logger="tests.throttle")
    assert throttled.warning("out of %s", "descriptors")
    assert not any(throttled.warning("out of %s", "descriptors") for _ in range(1000))
    await clock.advance(59)
    assert not throttled.warning("out of %s", "descriptors")
    await clock.advance(1)
    assert throttled.warning("out of %s", "descriptors")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "out of descriptors",
        "out of descriptors (1001 more since the last report)",
    ]


def test_connection_cap_leaves_a_descriptor_reserve() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = connection_cap(1_000_000)
    assert 8 <= cap <= soft - max(64, soft // 4)
    assert connection_cap(10) == min(10, cap)
