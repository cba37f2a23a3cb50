"""``machinery watch``: follow events from an agent or a JSON-lines file."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from machinery.core.notifications import (
    MachineEvent,
    TransitionNotification,
    WatcherStateNotification,
)
from machinery.events.cloudevents import CloudEventError, decode_cloudevent
from machinery.events.text import watch_line

# Seconds `watch --nats` waits for its connection to close when interrupted.
CLOSE_TIMEOUT = 2.0

__all__ = ["EventFilter", "follow"]


@dataclass
class EventFilter:
    """Choria's ``machine watch`` filters."""

    transitions: bool = True
    watchers: bool = True
    types: set[str] = field(default_factory=set)
    machine: str | None = None
    identity: str | None = None

    def accepts(self, event: MachineEvent) -> bool:
        if isinstance(event, TransitionNotification) and not self.transitions:
            return False
        if isinstance(event, WatcherStateNotification):
            if not self.watchers:
                return False
            if self.types and "*" not in self.types and event.watcher_type not in self.types:
                return False
        if self.machine and self.machine not in event.machine:
            return False
        return not (self.identity and self.identity not in event.identity)


def subjects(selected: EventFilter) -> list[str]:
    """The NATS subjects to subscribe to for ``selected`` (Choria's ``machine watch`` logic)."""
    found = []
    if selected.transitions:
        found.append("choria.machine.transition")
    if selected.watchers:
        types = sorted(selected.types) if selected.types and "*" not in selected.types else ["*"]
        found.extend(f"choria.machine.watcher.{kind}.state" for kind in types)
    return found


def follow_nats(
    selected: EventFilter, url: str, *, credentials: Path | None = None, as_json: bool = False
) -> int:
    """Print matching events from NATS until interrupted (reconnecting when the broker goes)."""
    import asyncio

    from machinery.cli.natsclient import NatsConnectError, connect
    from machinery.core.loop import handle_signals

    async def main() -> int:
        main_task = asyncio.current_task()
        assert main_task is not None
        with handle_signals(lambda _signum: main_task.cancel()):
            try:
                return await watch_broker()
            except asyncio.CancelledError:
                return 0  # SIGINT or SIGTERM: the way to stop watching

    async def watch_broker() -> int:
        try:
            client = await connect(url, credentials, name="machinery watch", reconnect=True)
        except NatsConnectError as exc:
            print(f"machinery: {exc}", file=sys.stderr)
            return 1
        queue: asyncio.Queue[bytes] = asyncio.Queue(10_000)

        async def received(message: object) -> None:
            data = getattr(message, "data", b"")
            if not queue.full():
                queue.put_nowait(data)

        try:
            for subject in subjects(selected):
                await client.subscribe(subject, cb=received)
            await client.flush()  # subscribed on the server before saying so
            for subject in subjects(selected):
                print(f"Viewing events on topic {subject}", file=sys.stderr, flush=True)
            while True:
                _print(await queue.get(), selected, as_json)
        finally:
            # Interrupted: a close waiting on a broker that went away must not keep us here.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await client.close()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0


def _print(data: bytes | str, selected: EventFilter, as_json: bool) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    try:
        event = decode_cloudevent(text)
    except CloudEventError as exc:
        print(f"machinery: skipping an event: {exc}", file=sys.stderr, flush=True)
        return
    if selected.accepts(event):
        print(text if as_json else watch_line(event), flush=True)


def follow(
    selected: EventFilter,
    *,
    agent_url: str | None = None,
    events_file: Path | None = None,
    nats_url: str | None = None,
    credentials: Path | None = None,
    as_json: bool = False,
    from_start: bool = False,
) -> int:
    """Print matching events until interrupted; returns the exit code."""
    if nats_url is not None:
        return follow_nats(selected, nats_url, credentials=credentials, as_json=as_json)
    if events_file is not None:
        source: Iterator[str] = _tail(events_file, from_start)
        origin = str(events_file)
    else:
        from machinery.cli.client import AgentClient

        client = AgentClient(agent_url)
        source = client.events()
        origin = client.url
    what = []
    if selected.transitions:
        what.append("transitions")
    if selected.watchers:
        what.append("watcher states")
    print(f"Viewing {' and '.join(what)} from {origin}", file=sys.stderr, flush=True)
    try:
        for text in source:
            _print(text, selected, as_json)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        if type(exc).__name__ == "ClientError":
            print(f"machinery: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


def _tail(path: Path, from_start: bool) -> Iterator[str]:
    """Lines of ``path`` as they are appended (like ``tail -F``; survives truncation)."""
    while not path.exists():
        time.sleep(0.2)
    handle = path.open("r", encoding="utf-8", errors="replace")
    if not from_start:
        handle.seek(0, 2)
    buffered = ""
    while True:
        chunk = handle.readline()
        if chunk:
            buffered += chunk
            if buffered.endswith("\n"):
                line, buffered = buffered.strip(), ""
                if line:
                    yield line
            continue
        try:
            if path.stat().st_size < handle.tell():
                handle.seek(0)
        except OSError:
            pass
        time.sleep(0.1)
