"""Serving the API with uvicorn inside the agent's own event loop, with bounded connections.

uvicorn alone accepts every connection and waits for a request head forever (its keep-alive
timeout only starts after a response), so clients that send half a request can take every file
descriptor the agent has: then the API stops answering and exec watchers fail with EMFILE.
:class:`GuardedServer` accepts connections itself instead:

- at most :func:`connection_cap` connections are open, a number that leaves a reserve of file
  descriptors for machines (subprocess pipes, inotify, SQLite) under ``RLIMIT_NOFILE``;
- a connection must send a whole request head within ``header_timeout`` of connecting (or of
  its first byte after an answered request), or it is closed;
- at the cap, the connection idle longest (no request in progress) is closed to make room, so a
  flood of idle connections cannot lock out a real client; when every connection is busy, the
  new one gets a ``503`` and is closed;
- answers waiting in memory for clients that do not read are bounded across all connections:
  past :data:`OUTPUT_BUDGET` bytes, the connection holding most is dropped;
- running out of descriptors anyway (EMFILE on accept) is logged once per interval, and
  accepting pauses briefly instead of spinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import resource
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from machinery.core.clock import Clock, SystemClock, TimerHandle
from machinery.core.logthrottle import ThrottledLog

__all__ = [
    "FD_RESERVE_MIN",
    "OUTPUT_BUDGET",
    "ConnectionGate",
    "ConnectionLimits",
    "GuardedServer",
    "QuietServer",
    "bind",
    "connection_cap",
]

log = logging.getLogger(__name__)

# Descriptors kept for everything that is not an API connection: at least this many, or a
# quarter of the limit, whichever is more.
FD_RESERVE_MIN = 64
_MIN_CONNECTIONS = 8
# Bytes of answers buffered for clients that do not read, across all connections.
OUTPUT_BUDGET = 8 * 1024 * 1024
# Errors of accept() that mean "out of descriptors or memory": pause, do not spin.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE = 0.1
_BUSY_BODY = json.dumps({"error": "the agent is at its connection limit; retry shortly"}).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n\r\n" + _BUSY_BODY
)


class QuietServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: the agent owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says it is TCP; without it every answer waits ~40 ms for delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir used
    except OSError:
        return 0


def connection_cap(configured: int) -> int:
    """How many API connections may be open: ``configured``, lowered so that the descriptors
    in use now, the connections and a reserve for machines fit under ``RLIMIT_NOFILE``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    reserve = max(FD_RESERVE_MIN, soft // 4)
    room = soft - _open_descriptors() - reserve
    return max(_MIN_CONNECTIONS, min(configured, room))


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections, and how long a connection may take to send a request head."""

    max_connections: int
    header_timeout: float


class ConnectionGate:
    """The open connections: which are idle (no request in progress), oldest first."""

    def __init__(self, limits: ConnectionLimits, clock: Clock) -> None:
        self.limits = limits
        self.clock = clock
        self.open: set[_GuardedH11] = set()
        self._idle: dict[_GuardedH11, None] = {}  # insertion order: idle longest first
        # Output paused (the client is not reading), in the order it paused.
        self._stalled: dict[_GuardedH11, None] = {}
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        self.dropped_slow = 0
        self.output_budget = OUTPUT_BUDGET
        # One report a minute per kind of trouble, not one per connection.
        self.full_log = ThrottledLog(log, clock)
        self.slow_log = ThrottledLog(log, clock)
        self.exhausted_log = ThrottledLog(log, clock)

    def opened(self, connection: _GuardedH11) -> None:
        self.open.add(connection)
        self._idle[connection] = None

    def idle(self, connection: _GuardedH11) -> None:
        if connection in self.open:
            self._idle.pop(connection, None)
            self._idle[connection] = None

    def busy(self, connection: _GuardedH11) -> None:
        self._idle.pop(connection, None)

    def closed(self, connection: _GuardedH11) -> None:
        self.open.discard(connection)
        self._idle.pop(connection, None)
        self._stalled.pop(connection, None)

    def stalled(self, connection: _GuardedH11) -> None:
        """``connection``'s output is past its high-water mark. While all such output is over
        the budget, drop the clients stalled longest: they are not reading. The one stalling
        now is spared, so one large answer to a reading client still goes through."""
        self._stalled.pop(connection, None)
        self._stalled[connection] = None  # the latest last
        buffered = {c: c.transport.get_write_buffer_size() for c in self._stalled}
        total = sum(buffered.values())
        for slowest in list(self._stalled)[:-1]:
            if total <= self.output_budget:
                break
            total -= buffered[slowest]
            self.closed(slowest)
            slowest.transport.abort()  # close() would keep the unread answer until it is sent
            self.dropped_slow += 1
            self.slow_log.warning(
                "HTTP API: dropping clients that do not read their answers (over %d bytes "
                "buffered for them)",
                self.output_budget,
            )

    def flowing(self, connection: _GuardedH11) -> None:
        self._stalled.pop(connection, None)

    def close_idlest(self) -> bool:
        """Close the connection idle longest; False if every connection is busy."""
        if not self._idle:
            return False
        connection = next(iter(self._idle))
        self.closed(connection)
        connection.transport.close()
        self.evicted += 1
        return True

    def make_room(self) -> bool:
        """True when one more connection may open (closing an idle one if needed)."""
        if len(self.open) < self.limits.max_connections:
            return True
        self.full_log.warning(
            "HTTP API at its limit of %d connections: closing idle ones, refusing new ones "
            "while all are busy",
            self.limits.max_connections,
        )
        if self.close_idlest():
            return True
        self.refused += 1
        return False


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol that tells the gate when it is idle, and that closes a connection
    whose request head does not arrive in time (uvicorn has no such timeout)."""

    gate: ConnectionGate  # set on the per-server subclass
    _head_timer: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.gate.opened(self)
        self._start_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_head():
            self._start_head_timer()
        else:
            self._stop_head_timer()
            self.gate.busy(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle again; uvicorn's keep-alive timeout closes it if nothing more comes.
        if self._waiting_for_head():
            self.gate.idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self.gate.closed(self)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.gate.stalled(self)

    def resume_writing(self) -> None:
        self.gate.flowing(self)
        super().resume_writing()

    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.gate.clock.call_later(
                self.gate.limits.header_timeout, self._head_timed_out
            )

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._waiting_for_head():
            self.gate.timed_out += 1
            self.gate.closed(self)
            self.transport.close()


class _Acceptor:
    """Accepts connections on one listening socket, through the gate, until closed."""

    def __init__(self, sock: socket.socket, protocol: type[_GuardedH11], gate: ConnectionGate):
        self.sock = sock
        self.protocol = protocol
        self.gate = gate
        self.task = asyncio.get_running_loop().create_task(self._run(), name="http-accept")

    def close(self) -> None:
        self.task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno not in _EXHAUSTED:
                    continue  # the client went away meanwhile (ECONNABORTED and the like)
                self.gate.exhausted_log.warning(
                    "HTTP API cannot accept connections: %s (%d open)",
                    exc.strerror,
                    len(self.gate.open),
                )
                # An idle connection's descriptor is the one to give up; otherwise wait for
                # one to free up rather than spin on a listening socket that stays readable.
                if not self.gate.close_idlest():
                    await self.gate.clock.sleep(_ACCEPT_PAUSE)
                await asyncio.sleep(0)  # let the closed transport release its descriptor
                continue
            if not self.gate.make_room():
                _refuse(conn)
                continue
            try:
                await loop.connect_accepted_socket(self.protocol, conn)
            except OSError as exc:
                conn.close()
                self.gate.exhausted_log.warning("HTTP API cannot serve a connection: %s", exc)


def _refuse(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.send(_BUSY)  # a fresh socket's buffer takes it without blocking
    conn.close()


class GuardedServer(QuietServer):
    """A :class:`QuietServer` that accepts connections itself, within :class:`ConnectionLimits`."""

    def __init__(
        self, config: uvicorn.Config, limits: ConnectionLimits, clock: Clock | None = None
    ) -> None:
        super().__init__(config)
        self.gate = ConnectionGate(limits, clock or SystemClock())

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not sockets:
            raise ValueError("GuardedServer serves sockets it is given (see bind())")
        protocol_class = self.config.http_protocol_class
        if not (isinstance(protocol_class, type) and issubclass(protocol_class, H11Protocol)):
            raise ValueError("GuardedServer needs uvicorn's h11 protocol (http='h11')")
        await self.lifespan.startup()
        config, state, gate = self.config, self.server_state, self.gate
        app_state = self.lifespan.state

        class Protocol(_GuardedH11):
            def __init__(self) -> None:
                super().__init__(config=config, server_state=state, app_state=app_state)

        Protocol.gate = gate
        self.servers = [_Acceptor(sock, Protocol, gate) for sock in sockets]  # type: ignore[misc]
        self.started = True
