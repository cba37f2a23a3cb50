"""Bounds shared by the API's long-lived streams (``/api/v1/events`` and KV watches).

Both kinds count against one limit, ``http.max_sse_clients``. KV values can be large (up to
1 MiB), so the bytes handed to KV watch clients and not yet taken by them are also bounded,
across all clients: a client that does not read keeps the frame it was sent, and when the
budget is spent the client that would need more is dropped (its stream ends; a reading client
reconnects and starts again from the current values).
"""

from __future__ import annotations

from fastapi import HTTPException

__all__ = ["STREAM_BUDGET_BYTES", "ByteBudget", "StreamSlots"]

STREAM_BUDGET_BYTES = 4 * 1024 * 1024


class StreamSlots:
    """How many streams are open, of at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def check(self) -> None:
        """Raise a 503 if no stream may start now."""
        if self.count >= self.limit:
            raise HTTPException(
                503, f"at most {self.limit} event streams (http.max_sse_clients) are open"
            )

    def take(self) -> bool:
        """Take a slot; False if none is free."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def give(self) -> None:
        """Give back a slot from :meth:`take`."""
        self.count -= 1


class ByteBudget:
    """Bytes in flight to stream clients, of at most ``limit``."""

    def __init__(self, limit: int = STREAM_BUDGET_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self.dropped = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (and counted as a drop) if they do not fit."""
        if self.used + size > self.limit:
            self.dropped += 1
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        """Release bytes from :meth:`take`."""
        self.used -= size
