"""``machinery agent``: the long-running daemon.

It owns, for its lifetime: the state database and its writer, the event bus and its sinks, the
store manager (and through it every machine), and the HTTP server, all in one asyncio loop.
SIGTERM and SIGINT stop everything (machines stopped, commands killed, state flushed); SIGHUP
re-reads the configuration and rescans the store.

Exit codes: 0 stopped cleanly, 1 could not start or failed while running, 2 invalid settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from machinery import __version__
from machinery.agent.config import (
    AGENT_FILE,
    ConfigError,
    LoadedSettings,
    Settings,
    load_settings,
)
from machinery.agent.host import MachineGroup
from machinery.agent.metrics import AgentMetrics
from machinery.agent.state import DamagedDatabase, StateDB, StateWriter
from machinery.agent.store import StoreManager
from machinery.core.atomic import atomic_write
from machinery.core.facts import Facts, FactsError
from machinery.core.inotify import FileMonitor
from machinery.core.loop import freeze_heap, handle_signals
from machinery.core.machine import Machine
from machinery.core.node import Node
from machinery.core.process import ProcessRunner
from machinery.events.bus import EventBus
from machinery.events.sinks import ConsoleNotifier
from machinery.nats.connection import BrokerConnection
from machinery.spec.validate import Manifest
from machinery.watchers.registry import WatcherRegistry, default_registry

if TYPE_CHECKING:  # loaded only when used: NATS configured, the HTTP API serving
    import anyio

    from machinery.agent.spool import EventSpool
    from machinery.nats.publisher import EventPublisher
    from machinery.nats.service import FleetService

__all__ = ["AGENT_FILE", "Agent", "AgentError"]

# Seconds between the store's first load and freezing the heap: the machines start their
# watchers (tasks, timers) meanwhile, so those are frozen too.
HEAP_FREEZE_DELAY = 2.0

log = logging.getLogger("machinery.agent")


class AgentError(Exception):
    """The agent cannot start."""


class Agent:
    """The daemon; ``await agent.run()`` until stopped."""

    def __init__(
        self,
        loaded: LoadedSettings,
        *,
        registry: WatcherRegistry | None = None,
        reload_settings: Callable[[], LoadedSettings] | None = None,
        install_signals: bool = True,
        freeze_heap: bool = False,
    ) -> None:
        self.loaded = loaded
        self.settings: Settings = loaded.settings
        if self.settings.store is None:
            raise ConfigError("no machine store: set store (--store, MACHINERY_STORE or the file)")
        self.registry = registry or default_registry()
        self._reload_settings = reload_settings
        self._install_signals = install_signals
        self._freeze_heap = freeze_heap
        self.started = time.time()
        self.bus = EventBus(max_subscribers=self.settings.http.max_sse_clients)
        self.group = MachineGroup()
        self.db: StateDB | None = None
        self.writer: StateWriter | None = None
        self.store: StoreManager | None = None
        self.node: Node | None = None
        self.http_url: str | None = None
        self.token: str | None = None
        self._stop = asyncio.Event()
        self._http_server: Any = None
        self.broker = BrokerConnection(self.settings.nats)
        self.spool: EventSpool | None = None
        self.metrics: AgentMetrics | None = None
        self.sse_shutdown: anyio.Event | None = None
        self.publisher: EventPublisher | None = None
        self.fleet_control: FleetService | None = None

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> int:
        settings = self.settings
        assert settings.store is not None
        try:
            facts = Facts.from_file(settings.facts) if settings.facts else Facts()
            self.token = self._read_token()
            sock = self._bind_http() if settings.http.enabled else None
        except (FactsError, ConfigError) as exc:
            raise AgentError(str(exc)) from exc
        try:
            self.db = StateDB(settings.state_dir)
        except DamagedDatabase as exc:
            if sock is not None:
                sock.close()
            raise AgentError(str(exc)) from None
        except (OSError, sqlite3.Error) as exc:
            if sock is not None:
                sock.close()
            raise AgentError(
                f"cannot open the state database in {settings.state_dir}: {exc}"
            ) from exc
        self.writer = StateWriter(
            self.db,
            max_per_machine=settings.history.max_per_machine,
            max_age=settings.history.max_age,
            manifest_sha=lambda name: self.store.manifest_sha(name) if self.store else None,
        )
        monitor = FileMonitor()
        self.node = Node(
            identity=settings.identity,
            facts=facts,
            runner=ProcessRunner(check_programs=settings.check_permissions),
            notifiers=[self.bus],
            host=self.group,
            file_monitor=monitor,
            rate_limit=settings.rate_limit,
            stagger_ticks=True,
            textfile_directory=settings.textfile_directory,
            overrides_file=settings.overrides_file,
        )
        self.node.provide("agent-status", self)
        self.broker = BrokerConnection(settings.nats, name=f"machinery {settings.identity}")
        self._provide_broker_services(self.node)
        if settings.signing_key:
            self.node.provide("signing-key", settings.signing_key)
        if self.broker.enabled:
            from machinery.agent.spool import EventSpool
            from machinery.nats.publisher import EventPublisher

            self.spool = EventSpool(
                self.db.path,
                self.writer,
                max_events=settings.spool.max_events,
                max_bytes=settings.spool.max_bytes,
                max_age=settings.spool.max_age,
                on_drop=self._spool_dropped,
            )
            self.publisher = EventPublisher(self.spool, self.broker)
            self.bus.add_sink(self.publisher)
        self.metrics = AgentMetrics(self)
        self.node.provide("watcher-observer", self.metrics)
        self.bus.add_sink(ConsoleNotifier())
        self.bus.add_sink(self.writer)
        self.bus.add_sink(self.metrics)
        resume = await asyncio.to_thread(self.db.last_states) if settings.resume_state else {}
        self.store = StoreManager(
            settings.store,
            self.node,
            self.registry,
            self.group,
            settle_delay=settings.settle_delay,
            rescan_interval=settings.rescan_interval,
            check_permissions=settings.check_permissions,
            resume=resume,
            on_started=self._machine_started,
            on_removed=self._machine_removed,
        )
        self.sse_shutdown = _anyio_event() if settings.http.enabled else None
        signals = contextlib.ExitStack()
        if self._install_signals:
            signals.enter_context(handle_signals(self.stop))
            signals.enter_context(handle_signals(lambda _signum: self.reload(), [signal.SIGHUP]))
        log.info(
            "machinery agent %s starting as %s, store %s",
            __version__,
            settings.identity,
            settings.store,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                broker_task = tasks.create_task(self.broker.run(), name="nats")
                publisher_task = (
                    tasks.create_task(self.publisher.run(), name="publisher")
                    if self.publisher
                    else None
                )
                store_task = tasks.create_task(self.store.run(), name="store")
                file_task = tasks.create_task(
                    self.writer.guard_file(self.node.clock), name="state file"
                )
                control_task = (
                    tasks.create_task(self._fleet_control(), name="fleet control")
                    if self.broker.enabled
                    else None
                )
                freeze_task = (
                    tasks.create_task(self._freeze_when_loaded(), name="heap freeze")
                    if self._freeze_heap
                    else None
                )
                http_task = None
                if sock is not None:
                    http_task = tasks.create_task(self._serve_http(sock), name="http")
                await self._stop.wait()
                log.info("stopping")
                if self.sse_shutdown is not None:
                    self.sse_shutdown.set()  # end event streams now, not after a grace period
                if http_task is not None:
                    self._stop_http()
                if freeze_task is not None:
                    freeze_task.cancel()
                file_task.cancel()
                if control_task is not None:
                    control_task.cancel()
                store_task.cancel()
                await asyncio.gather(store_task, return_exceptions=True)
                if publisher_task is not None:
                    # Give the last events a moment to reach a connected broker.
                    await self._drain_publisher(publisher_task)
                broker_task.cancel()
        finally:
            signals.close()
            await self.group.aclose()
            monitor.close()
            if self.writer is not None:
                await asyncio.to_thread(self.writer.close)
            if self.spool is not None:
                self.spool.close()
            if self.db is not None:
                self.db.close()
            with contextlib.suppress(OSError):
                (settings.state_dir / AGENT_FILE).unlink()
        log.info("stopped")
        return 0

    async def _freeze_when_loaded(self) -> None:
        """Once the store's machines are loaded and have started their watchers, take them out
        of the garbage collector's full collections (see :func:`freeze_heap`)."""
        assert self.store is not None
        await self.store.ready.wait()
        await asyncio.sleep(HEAP_FREEZE_DELAY)
        started = time.perf_counter()
        frozen = freeze_heap()
        log.info(
            "%d machines loaded: %d objects exempted from garbage collection (%.0f ms)",
            len(self.store.machines()),
            frozen,
            (time.perf_counter() - started) * 1000,
        )

    async def _fleet_control(self) -> None:
        """Answer fleet requests on NATS (``machinery fleet``, the fleet dashboard)."""
        from machinery.agent.control import fleet_service

        self.fleet_control = fleet_service(self)
        await self.fleet_control.run()

    def stop(self, signum: int | None = None) -> None:
        """Stop the agent (signal handler and tests)."""
        if signum is not None:
            log.info("received %s", signal.Signals(signum).name)
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the settings that can change live, and rescan the store."""
        log.info("received SIGHUP: reloading configuration and rescanning the store")
        if self._reload_settings is not None:
            try:
                loaded = self._reload_settings()
            except ConfigError as exc:
                log.error("keeping the current configuration: %s", exc)
            else:
                self._apply(loaded.settings)
        if self.store is not None:
            self.store.rescan()

    def _apply(self, new: Settings) -> None:
        old = self.settings
        restart_needed = [
            name
            for name in ("identity", "store", "state_dir")
            if getattr(old, name) != getattr(new, name)
        ]
        restart_needed += [
            f"http.{name}"
            for name in ("listen", "max_connections", "header_timeout", "max_sse_clients")
            if getattr(old.http, name) != getattr(new.http, name)
        ]
        if old.nats != new.nats:
            restart_needed.append("nats")
        if restart_needed:
            log.warning("these settings change only after a restart: %s", ", ".join(restart_needed))
        logging.getLogger().setLevel(new.log_level.upper())
        if self.node is not None:
            self.node.rate_limit = new.rate_limit
            for machine in self.group:
                machine.rate_limiter.enabled = new.rate_limit
            if new.facts != old.facts:
                try:
                    self.node.facts = Facts.from_file(new.facts) if new.facts else Facts()
                except FactsError as exc:
                    log.error("keeping the current facts: %s", exc)
        if self.store is not None:
            self.store.rescan_interval = new.rescan_interval
            self.store.check_permissions = new.check_permissions
        if self.node is not None and isinstance(self.node.runner, ProcessRunner):
            self.node.runner.check_programs = new.check_permissions
        if new.control != old.control and self.fleet_control is not None:
            keys = new.control.public_keys
            self.fleet_control.authenticator.set_keys([bytes.fromhex(key) for key in keys])
            log.info("fleet control: %d trusted public key(s) now", len(keys))
        self.settings = new
        try:
            self.token = self._read_token()
        except ConfigError as exc:
            log.error("%s", exc)

    async def _drain_publisher(self, task: asyncio.Task[None], timeout: float = 2.0) -> None:
        assert self.spool is not None and self.writer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await asyncio.to_thread(self.writer.flush, timeout)
        # The depth is updated from the writer thread: a short bounded poll is simplest.
        while self.broker.is_connected and self.spool.depth > 0 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        task.cancel()

    def _spool_dropped(self, dropped: int) -> None:
        if self.publisher is not None and self.spool is not None:
            self.publisher.announce_dropped(self.settings.identity, dropped, self.spool.dropped)

    def _provide_broker_services(self, node: Node) -> None:
        """Key-value and governors: on NATS when it is configured, local otherwise."""
        assert self.db is not None
        node.provide("nats", self.broker)
        if self.broker.enabled:
            from machinery.nats.governor import NatsGovernor
            from machinery.nats.kv import NatsKV

            node.provide("kv", NatsKV(self.broker))
            node.provide("governor", NatsGovernor(self.broker, node.clock))
        else:
            from machinery.agent.localgovernor import LocalGovernor
            from machinery.agent.localkv import LocalKV

            node.provide("kv", LocalKV(self.db.path))
            node.provide(
                "governor",
                LocalGovernor(node.clock, path=self.settings.state_dir / "governors.json"),
            )

    def _machine_removed(self, name: str) -> None:
        if self.writer is not None:
            self.writer.forget_machine(name)
        if self.metrics is not None:
            self.metrics.forget_machine(name)

    def _machine_started(self, machine: Machine, manifest: Manifest) -> None:
        if self.writer is not None:
            self.writer.record_state(
                machine.name, machine.state, manifest.sha256, machine.instance_id
            )

    def _read_token(self) -> str | None:
        path = self.settings.http.token_file
        if path is None:
            return None
        try:
            mode = path.stat().st_mode
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from exc
        if len(token) < 16:
            raise ConfigError(f"the token in {path} is too short (at least 16 characters)")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            # Whoever can read the token can change every machine: ssh refuses such keys too.
            problem = (
                f"token file {path} is accessible to group/others (mode {stat.S_IMODE(mode):04o}); "
                f"chmod 600 it"
            )
            if self.settings.check_permissions:
                raise ConfigError(problem)
            log.warning("%s (check_permissions is off, using it anyway)", problem)
        return token

    # -- HTTP ---------------------------------------------------------------------------------

    def _bind_http(self) -> socket.socket:
        from machinery.api.server import bind

        http = self.settings.http
        try:
            sock = bind(http.host, http.port)
        except OSError as exc:
            raise AgentError(f"cannot listen on {http.listen}: {exc.strerror}") from exc
        host, port = sock.getsockname()[:2]
        self.http_url = (
            f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"
        )
        if not http.is_loopback and self.token is None:
            log.warning(
                "HTTP API on non-loopback %s without http.token_file: state changes are refused",
                http.listen,
            )
        return sock

    async def _serve_http(self, sock: socket.socket) -> None:
        import uvicorn

        from machinery.api.app import create_app
        from machinery.api.server import ConnectionLimits, GuardedServer, connection_cap

        http = self.settings.http
        config = uvicorn.Config(
            create_app(self),
            http="h11",
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        cap = connection_cap(http.max_connections)
        if cap < http.max_connections:
            log.info(
                "HTTP API connections limited to %d (of http.max_connections %d) to keep file "
                "descriptors for machines under RLIMIT_NOFILE",
                cap,
                http.max_connections,
            )
        limits = ConnectionLimits(max_connections=cap, header_timeout=http.header_timeout)
        server = GuardedServer(config, limits, self.node.clock if self.node else None)
        self._http_server = server
        self._write_agent_file()
        log.info("HTTP API listening on %s", self.http_url)
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()

    def _stop_http(self) -> None:
        if self._http_server is not None:
            self._http_server.should_exit = True

    def _write_agent_file(self) -> None:
        # Atomically: the CLI reads it to find the agent, possibly while it is being written.
        atomic_write(
            self.settings.state_dir / AGENT_FILE,
            json.dumps({"pid": os.getpid(), "url": self.http_url, "version": __version__}).encode(),
        )

    # -- health (the nagios agent_status builtin and /healthz) --------------------------------

    def health(self) -> dict[str, Any]:
        entries = self.store.entries.values() if self.store is not None else []
        invalid = sum(1 for e in entries if e.machine is None)
        return {
            "uptime": time.time() - self.started,
            "machines": sum(1 for e in entries if e.machine is not None),
            "invalid_machines": invalid,
            "nats_connected": self.broker.is_connected if self.broker.enabled else None,
            "last_event_age": None,
            "spool_depth": self.spool.depth if self.spool is not None else 0,
            "state_write_errors": self.writer.errors if self.writer else 0,
        }


def _anyio_event() -> anyio.Event:
    # The HTTP stack's event type; anyio comes with it, so it is imported only with the API.
    import anyio

    return anyio.Event()


def run_agent(config_file: Path | None, flags: dict[str, Any]) -> int:
    """Load settings and run the agent in a fresh event loop; returns the exit code."""
    from machinery.cli.main import setup_logging
    from machinery.core.loop import install_child_watcher, tune_malloc

    def load() -> LoadedSettings:
        return load_settings(config_file, flags)

    try:
        loaded = load()
        agent = Agent(loaded, reload_settings=load, freeze_heap=True)
    except ConfigError as exc:
        print(f"machinery agent: {exc}", flush=True)
        return 2
    setup_logging(loaded.settings.log_level, loaded.settings.log_format)
    install_child_watcher()
    tune_malloc()
    try:
        return asyncio.run(agent.run())
    except AgentError as exc:
        log.error("%s", exc)
        return 1
