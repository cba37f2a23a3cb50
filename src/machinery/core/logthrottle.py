"""Logging a recurring problem once per interval instead of once per occurrence.

A resource running out (descriptors, memory, a full disk) makes the same error happen thousands
of times a second; logging each one fills the disk and burns the CPU the agent needs to recover.
"""

from __future__ import annotations

import logging
from typing import Any

from machinery.core.clock import Clock

__all__ = ["ThrottledLog"]


class ThrottledLog:
    """Logs at most one message per ``interval`` seconds of ``clock``; the next one logged says
    how many were left out meanwhile."""

    def __init__(self, logger: logging.Logger, clock: Clock, interval: float = 60.0) -> None:
        self.logger = logger
        self.clock = clock
        self.interval = interval
        self.suppressed = 0
        self._last: float | None = None

    def warning(self, message: str, *args: Any) -> bool:
        """Log ``message % args`` as a warning if the interval has passed; True if logged."""
        return self.log(logging.WARNING, message, *args)

    def log(self, level: int, message: str, *args: Any) -> bool:
        """Log at ``level`` if the interval has passed; True if logged."""
        now = self.clock.monotonic()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return False
        if self.suppressed:
            message += f" ({self.suppressed} more since the last report)"
            self.suppressed = 0
        self._last = now
        self.logger.log(level, message, *args)
        return True
