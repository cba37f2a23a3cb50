"""``machinery run``: machines from some directories, in the foreground, until interrupted.

The counterpart of ``choria machine run``: events on the console and optionally in a JSON-lines
file. With ``nats`` (``--connect``/``--nats URL``) the machines use that broker for key-value,
gossip and governors, as with Choria's ``--connect``; with ``http`` (``--http HOST:PORT``) the
machine HTTP routes of httpswitch and metric watchers are served. SIGINT and SIGTERM stop every
machine (watchers stopped, commands killed as a group) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machinery.agent.host import MachineGroup
from machinery.core.clock import Clock, SystemClock
from machinery.core.datastore import DataStoreError
from machinery.core.facts import Facts, FactsError
from machinery.core.inotify import FileMonitor
from machinery.core.loop import handle_signals
from machinery.core.machine import Machine
from machinery.core.node import Node
from machinery.core.notifications import Notifier
from machinery.core.process import ProcessRunner
from machinery.events.sinks import ConsoleNotifier, JsonLinesNotifier
from machinery.nats.connection import BrokerConnection
from machinery.spec.validate import Manifest
from machinery.watchers.registry import WatcherRegistry, check_manifest, default_registry

__all__ = ["RunOptions", "default_identity", "run_machines"]

log = logging.getLogger("machinery.run")


def default_identity() -> str:
    """The node identity when none is configured: the host's fully qualified name."""
    return socket.getfqdn() or socket.gethostname() or "unknown"


@dataclass
class RunOptions:
    directories: Sequence[Path]
    facts: Path | None = None
    data: Path | None = None
    identity: str | None = None
    events: str | None = None
    rate_limit: bool = True
    nats: str | None = None
    credentials: Path | None = None
    http: str | None = None
    registry: WatcherRegistry | None = None
    clock: Clock = field(default_factory=SystemClock)


def _load_all(options: RunOptions, registry: WatcherRegistry) -> list[Manifest] | None:
    manifests = []
    failed = False
    for directory in options.directories:
        manifest, diagnostics = check_manifest(directory, registry)
        for diagnostic in diagnostics:
            print(diagnostic, file=sys.stderr)
        if manifest is None:
            failed = True
        else:
            manifests.append(manifest)
    return None if failed else manifests


def _read_data(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read data file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"data file {path} must hold a JSON object")
    return data


def _broker(options: RunOptions, identity: str) -> BrokerConnection | None:
    if not options.nats:
        return None
    from machinery.cli.natsclient import settings_for

    return BrokerConnection(
        settings_for(options.nats, options.credentials), name=f"machinery run {identity}"
    )


def _provide_broker_services(node: Node, broker: BrokerConnection) -> None:
    """Key-value, gossip and governors on ``broker``, as the agent does with NATS."""
    from machinery.nats.governor import NatsGovernor
    from machinery.nats.kv import NatsKV

    node.provide("nats", broker)
    node.provide("kv", NatsKV(broker))
    node.provide("governor", NatsGovernor(broker, node.clock))


def _bind_http(listen: str) -> tuple[socket.socket, str]:
    """The listening socket for ``--http`` and its URL; ValueError says what is wrong."""
    from pydantic import ValidationError

    from machinery.agent.config import HttpSettings
    from machinery.api.server import bind

    try:
        settings = HttpSettings(listen=listen)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"--http {listen}: {reason}") from None
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        raise ValueError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"
    if not settings.is_loopback:
        log.warning("HTTP on non-loopback %s: switch changes are refused (no token)", listen)
    return sock, url


async def _serve_http(node: Node, sock: socket.socket, listen: str, url: str) -> None:
    import uvicorn

    from machinery.api.local import local_app
    from machinery.api.server import QuietServer

    config = uvicorn.Config(
        local_app(node, listen),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = QuietServer(config)
    log.info("machine HTTP routes listening on %s", url)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        # Stopping: let uvicorn close its connections (bounded by its graceful timeout).
        server.should_exit = True
        await serving
        raise
    finally:
        sock.close()


async def run_machines(options: RunOptions) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code."""
    registry = options.registry or default_registry()
    manifests = _load_all(options, registry)
    if manifests is None:
        return 1
    try:
        facts = Facts.from_file(options.facts) if options.facts else Facts()
        initial_data = _read_data(options.data) if options.data else {}
        identity = options.identity or default_identity()
        broker = _broker(options, identity)
        http = _bind_http(options.http) if options.http else None
    except (FactsError, ValueError) as exc:
        print(f"machinery: {exc}", file=sys.stderr)
        return 1
    notifiers: list[Notifier] = [ConsoleNotifier()]
    jsonl: JsonLinesNotifier | None = None
    if options.events:
        try:
            jsonl = JsonLinesNotifier(options.events)
        except OSError as exc:
            print(f"machinery: cannot open events file {options.events}: {exc}", file=sys.stderr)
            if http is not None:
                http[0].close()
            return 1
        notifiers.append(jsonl)
    group = MachineGroup()
    node = Node(
        identity=identity,
        clock=options.clock,
        facts=facts,
        runner=ProcessRunner(),
        notifiers=notifiers,
        host=group,
        file_monitor=FileMonitor(),
        rate_limit=options.rate_limit,
    )
    if broker is not None:
        _provide_broker_services(node, broker)
    machines = []
    for manifest in manifests:
        machine = Machine(manifest, node, watcher_factory=registry.create)
        try:
            machine.data.update(initial_data)
        except DataStoreError as exc:
            machine.log_error("machine", str(exc))
        group.add(machine)
        machines.append(machine)

    stopping = asyncio.Event()

    def request_stop(signum: int) -> None:
        if not stopping.is_set():
            log.info("received %s, stopping", signal.Signals(signum).name)
            stopping.set()

    try:
        with handle_signals(request_stop):
            async with asyncio.TaskGroup() as tasks:
                running = [
                    tasks.create_task(machine.run(), name=f"machine {machine.name}")
                    for machine in machines
                ]
                if broker is not None:
                    running.append(tasks.create_task(broker.run(), name="nats"))
                if http is not None:
                    sock, url = http
                    running.append(
                        tasks.create_task(
                            _serve_http(node, sock, options.http or "", url), name="http"
                        )
                    )
                await stopping.wait()
                for task in running:
                    task.cancel()
    finally:
        await group.aclose()
        if node.file_monitor is not None:
            node.file_monitor.close()
        if jsonl is not None:
            jsonl.close()
    return 0
