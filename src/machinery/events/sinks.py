"""Where events go on one node: the console log and a JSON-lines file.

Sinks never block the machine that produced the event: the JSON-lines writer buffers what
arrives within one turn of the event loop and writes it in one go, so a burst of transitions
costs one write, and the file is flushed before control returns to waiting code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import IO

from machinery.core.notifications import MachineEvent
from machinery.events.cloudevents import shared_cloudevent
from machinery.events.text import console_line

__all__ = ["ConsoleNotifier", "JsonLinesNotifier"]

events_log = logging.getLogger("machinery.events")


class ConsoleNotifier:
    """Logs each event in Choria's one-line console format."""

    def __init__(self, logger: logging.Logger = events_log) -> None:
        self._log = logger

    def notify(self, event: MachineEvent) -> None:
        self._log.info("%s", console_line(event))


class JsonLinesNotifier:
    """Appends each event as one CloudEvent JSON object per line to a file (``-``: stdout)."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = os.fspath(target)
        self._stream: IO[bytes]
        if self.target == "-":
            self._stream = sys.stdout.buffer
            self._owned = False
        else:
            # Unbuffered: lines are already batched, and a failed write must fail here.
            self._stream = open(self.target, "ab", buffering=0)  # noqa: SIM115 - closed in close()
            self._owned = True
        self._buffer: list[str] = []
        self._scheduled = False
        self.written = 0
        self.errors = 0

    def notify(self, event: MachineEvent) -> None:
        self._buffer.append(shared_cloudevent(event)[1])
        if self._scheduled:
            return
        try:
            asyncio.get_running_loop().call_soon(self.flush)
            self._scheduled = True
        except RuntimeError:
            self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._buffer:
            return
        lines, self._buffer = self._buffer, []
        try:
            self._stream.write(("\n".join(lines) + "\n").encode())
            self._stream.flush()
            self.written += len(lines)
        except OSError as exc:
            # A full disk or a closed pipe is an error line, never a crash of the machine.
            self.errors += len(lines)
            events_log.error("could not write %d events to %s: %s", len(lines), self.target, exc)

    def close(self) -> None:
        self.flush()
        if self._owned:
            try:
                self._stream.close()
            except OSError as exc:
                events_log.error("could not close %s: %s", self.target, exc)
