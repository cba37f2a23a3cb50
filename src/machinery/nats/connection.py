"""The agent's connection to NATS: connects in the background, reconnects forever.

nats-py reconnects an established connection by itself; the first connection it does not retry,
so :class:`BrokerConnection` keeps trying with a capped exponential backoff until it succeeds. The
agent never waits for the broker: machines run the same while it is away, and whatever needs the
broker (the event publisher, kv, gossip, governors) asks :meth:`BrokerConnection.wait_connected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # nats-py is imported only by an agent that has a broker to connect to
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

    from machinery.agent.config import NatsSettings

__all__ = ["BrokerConnection", "ConnectionState", "connect_options", "redact_url"]

log = logging.getLogger("machinery.nats")

_BACKOFF_START = 0.5
_BACKOFF_MAX = 30.0


class ConnectionState(enum.StrEnum):
    DISABLED = "disabled"  # no servers configured: embedded mode
    CONNECTING = "connecting"  # never connected yet
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # lost, nats-py is reconnecting
    CLOSED = "closed"


def connect_options(settings: NatsSettings, name: str) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` from the agent's settings."""
    options: dict[str, Any] = {
        "servers": settings.servers,
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "connect_timeout": 5,
        "ping_interval": 20,
        "max_outstanding_pings": 3,
    }
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password or ""
    if settings.token:
        options["token"] = settings.token
    if settings.credentials:
        _require_file("nats.credentials", settings.credentials)
        key = "nkeys_seed" if _is_seed_file(settings.credentials) else "user_credentials"
        options[key] = str(settings.credentials)
    if (
        settings.tls_ca
        or settings.tls_cert
        or any(s.startswith("tls://") for s in settings.servers)
    ):
        for setting, path in (
            ("nats.tls_ca", settings.tls_ca),
            ("nats.tls_cert", settings.tls_cert),
            ("nats.tls_key", settings.tls_key),
        ):
            if path is not None:
                _require_file(setting, path)
        context = ssl.create_default_context(
            cafile=str(settings.tls_ca) if settings.tls_ca else None
        )
        if settings.tls_cert:
            context.load_cert_chain(
                str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None
            )
        options["tls"] = context
    return options


class BrokerConnection:
    """One NATS connection for the whole agent; ``run()`` is its owning task."""

    def __init__(self, settings: NatsSettings, *, name: str = "machinery") -> None:
        self.settings = settings
        self.name = name
        self.client: NATS | None = None
        self.state = (
            ConnectionState.DISABLED if not settings.servers else ConnectionState.CONNECTING
        )
        self.last_error: str | None = None
        self.connected_url: str | None = None
        self.connects = 0
        self.disconnects = 0
        self.changed_at = time.time()
        self._connected = asyncio.Event()
        self._listeners: list[Callable[[ConnectionState], None]] = []
        self._closing = False
        self._held: asyncio.Event | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.servers)

    @property
    def is_connected(self) -> bool:
        return self.state is ConnectionState.CONNECTED and self.client is not None

    def on_change(self, listener: Callable[[ConnectionState], None]) -> None:
        """Call ``listener(state)`` whenever the connection state changes."""
        self._listeners.append(listener)

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected (True), or until ``timeout`` passes (False)."""
        if not self.enabled:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    def jetstream(self) -> JetStreamContext:
        if self.client is None:
            raise ConnectionError("not connected to NATS")
        return self.client.jetstream()

    async def run(self) -> None:
        """Connect (retrying forever), then keep the connection until cancelled."""
        if not self.enabled:
            return
        import nats

        delay = _BACKOFF_START
        client: NATS | None = None
        while client is None:
            try:
                # Built on every attempt: certificates that cannot be read (yet) are retried too.
                options = connect_options(self.settings, self.name)
                # nats-py must not retry a first connection itself: after a failed TLS handshake
                # its retry waits for ever for the dead socket (nats-io/nats.py#718).
                options["allow_reconnect"] = False
                client = await nats.connect(
                    **options,
                    error_cb=self._error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    closed_cb=self._closed,
                )
            except Exception as exc:  # nats-py raises several unrelated types here
                servers = ", ".join(map(redact_url, self.settings.servers))
                self._set_error(f"cannot connect to {servers}: {exc}")
                log.warning("%s; retrying in %.1fs", self.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
        client.options["allow_reconnect"] = True  # connected: from now on nats-py reconnects
        self.client = client
        self.connects += 1
        self.connected_url = _url(self.client)
        log.info("connected to NATS at %s", self.connected_url)
        self._set(ConnectionState.CONNECTED)
        try:
            # An event this object holds, not a temporary one: while anything holds the
            # connection, its task is reachable and the garbage collector cannot destroy it
            # (an unreferenced task waiting on an unreferenced event can be collected).
            self._held = asyncio.Event()
            await self._held.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        client, self.client = self.client, None
        self._closing = True  # the disconnect that follows is ours, not a lost broker
        if client is not None and not client.is_closed:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow our cancellation.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await client.drain()
            with contextlib.suppress(Exception):
                await client.close()
        if self.enabled:
            self._set(ConnectionState.CLOSED)

    def status(self) -> dict[str, Any]:
        """What the API and status show."""
        return {
            "state": self.state.value,
            "servers": [redact_url(server) for server in self.settings.servers],
            "connected_url": self.connected_url if self.is_connected else None,
            "since": self.changed_at,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "last_error": self.last_error,
        }

    # -- nats-py callbacks ----------------------------------------------------------------------

    async def _error(self, exc: Exception) -> None:
        self._set_error(str(exc) or type(exc).__name__)
        log.debug("NATS error: %s", self.last_error)

    async def _disconnected(self) -> None:
        if self._closing:
            return
        self.disconnects += 1
        if self.state is ConnectionState.CONNECTED:
            log.warning("disconnected from NATS at %s, reconnecting", self.connected_url)
            self._set(ConnectionState.RECONNECTING)

    async def _reconnected(self) -> None:
        self.connects += 1
        self.connected_url = _url(self.client)
        log.info("reconnected to NATS at %s", self.connected_url)
        self._set(ConnectionState.CONNECTED)

    async def _closed(self) -> None:
        self._set(ConnectionState.CLOSED)

    def _set_error(self, message: str) -> None:
        self.last_error = message

    def _set(self, state: ConnectionState) -> None:
        if state is self.state:
            return
        self.state = state
        self.changed_at = time.time()
        if state is ConnectionState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        for listener in self._listeners:
            try:
                listener(state)
            except Exception:
                log.exception("connection listener failed")


def _require_file(setting: str, path: Path) -> None:
    # ssl and nats-py name neither the setting nor the path when a file is missing.
    if not path.is_file():
        raise FileNotFoundError(f"{setting} {path}: no such file")


def _is_seed_file(path: Path) -> bool:
    """A bare nkey seed (``nk -gen user``) rather than a ``.creds`` file (JWT and seed)."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False  # nats-py reports the unreadable file
    return text.startswith("SU") and "\n" not in text


def redact_url(url: str) -> str:
    """``url`` without a user, password or token in it (``nats://user:pass@host:4222``)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.partition("@")
    return f"{scheme}{sep}***@{host}" if sep and at and "/" not in userinfo else url


def _url(client: NATS | None) -> str | None:
    if client is None or client.connected_url is None:
        return None
    url = client.connected_url
    return f"{url.scheme}://{url.hostname}:{url.port}"
