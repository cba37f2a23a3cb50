"""A watcher's doorbell: reasons to wake up that coalesce while nobody is listening.

Choria's watchers select on a ticker channel and a one-slot state-change channel, so a burst of
signals during a long run becomes a single run afterwards. :class:`Wakeup` gives the same
semantics with one future and an integer of flags, cheap enough for thousands of watchers.
"""

from __future__ import annotations

import asyncio

__all__ = ["FILE_EVENT", "STATE_CHANGED", "TICK", "Wakeup"]

TICK = 1
STATE_CHANGED = 2
FILE_EVENT = 4


class Wakeup:
    """Flags set from anywhere on the loop; one task waits for them."""

    __slots__ = ("_flags", "_waiter")

    def __init__(self) -> None:
        self._flags = 0
        self._waiter: asyncio.Future[None] | None = None

    def set(self, flag: int) -> None:
        self._flags |= flag
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def pending(self) -> int:
        return self._flags

    async def wait(self) -> int:
        """Wait until at least one flag is set; return and clear all of them."""
        while not self._flags:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        flags, self._flags = self._flags, 0
        return flags
