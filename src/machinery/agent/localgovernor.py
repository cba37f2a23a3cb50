"""Governors without a broker: semaphores shared by the machines of one agent.

The agent provides a :class:`LocalGovernor` as the node service ``"governor"`` when NATS is not
configured (with NATS it provides :class:`machinery.nats.governor.NatsGovernor`). It is the
node-local mutex Choria's roadmap promised: a governor named by a watcher is created on first use
with a capacity of 1 (so it serialises the machines that name it); ``add`` (the CLI and the HTTP
API) sets another capacity. Waiters are served first come, first served; each has its own
timeout on the node's clock. Holders are tasks of this process, so there are no leases: a slot is
released when its block ends, whatever way it ends, or when an operator evicts its holder.

With ``path`` the capacities set by ``add`` are kept in that JSON file (written atomically), so
they survive an agent restart; without it they live in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from machinery.core.atomic import atomic_write
from machinery.core.clock import Clock
from machinery.core.governor import (
    GovernorError,
    GovernorInfo,
    GovernorTimeout,
    UnknownGovernor,
    validate_name,
)
from machinery.lang.duration import format_go_duration

__all__ = ["LocalGovernor"]

log = logging.getLogger("machinery.governor")


@dataclass
class _Holder:
    holder: str
    sequence: int
    acquired: float


@dataclass
class _Waiter:
    holder: str
    future: asyncio.Future[int]


@dataclass
class _State:
    capacity: int
    sequence: int = 0
    holders: dict[int, _Holder] = field(default_factory=dict)
    waiters: deque[_Waiter] = field(default_factory=deque)


class LocalGovernor:
    """Named, in-process concurrency limits with FIFO waiting (see the module docstring)."""

    def __init__(self, clock: Clock, *, path: Path | None = None) -> None:
        self.clock = clock
        self.path = path
        self._governors: dict[str, _State] = {}
        if path is not None:
            for name, capacity in _load(path).items():
                self._governors[name] = _State(capacity)

    def acquire(
        self,
        name: str,
        timeout: float,
        *,
        holder: str,
    ) -> AbstractAsyncContextManager[int]:
        """Hold a slot of governor ``name`` for an ``async with`` block; the value is the
        slot's sequence number (1, 2, 3... per governor)."""
        return self._hold(name, timeout, holder)

    @contextlib.asynccontextmanager
    async def _hold(self, name: str, timeout: float, holder: str) -> AsyncIterator[int]:
        state = self._state(validate_name(name), create=True)
        sequence = await self._wait(name, state, timeout, holder)
        try:
            yield sequence
        finally:
            self._release(state, sequence)

    async def _wait(self, name: str, state: _State, timeout: float, holder: str) -> int:
        # Waiters that timed out or were cancelled may still sit in the queue.
        if any(w.future.done() for w in state.waiters):
            state.waiters = deque(w for w in state.waiters if not w.future.done())
        if not state.waiters and len(state.holders) < state.capacity:
            return self._grant(state, holder)
        if timeout <= 0:
            # Only a free slot will do, now; nobody waiting is bypassed.
            raise _timeout(name, timeout)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(holder, future)
        state.waiters.append(waiter)
        handle = self.clock.call_later(timeout, _expire, future, name, timeout)
        try:
            return await future
        except asyncio.CancelledError:
            # The slot may have been granted in the same loop iteration the task was
            # cancelled in: hand it on rather than leak it.
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release(state, future.result())
            raise
        finally:
            handle.cancel()
            with contextlib.suppress(ValueError):
                state.waiters.remove(waiter)

    def _grant(self, state: _State, holder: str) -> int:
        state.sequence += 1
        state.holders[state.sequence] = _Holder(holder, state.sequence, self.clock.now())
        return state.sequence

    def _release(self, state: _State, sequence: int) -> None:
        # An evicted holder's slot is already free: nothing to do then.
        if state.holders.pop(sequence, None) is not None:
            self._serve(state)

    def _serve(self, state: _State) -> None:
        """Hand free slots to the longest waiting."""
        while state.waiters and len(state.holders) < state.capacity:
            waiter = state.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(self._grant(state, waiter.holder))

    def _state(self, name: str, *, create: bool = False) -> _State:
        state = self._governors.get(name)
        if state is None:
            if not create:
                raise UnknownGovernor(name)
            state = self._governors[name] = _State(capacity=1)
        return state

    async def add(self, name: str, capacity: int, *, lease: float = 300.0) -> None:
        """Create governor ``name`` or change its capacity (``lease`` is not used locally)."""
        validate_name(name)
        if capacity < 1:
            raise GovernorError("a governor's capacity must be at least 1")
        state = self._state(name, create=True)
        state.capacity = capacity
        self._serve(state)
        if self.path is not None:
            capacities = {n: s.capacity for n, s in sorted(self._governors.items())}
            try:
                await asyncio.to_thread(
                    atomic_write, self.path, json.dumps(capacities, indent=2).encode()
                )
            except OSError as exc:
                raise GovernorError(f"could not save the governors to {self.path}: {exc}") from exc

    async def view(self, name: str) -> GovernorInfo:
        state = self._state(validate_name(name))
        holders: list[dict[str, object]] = [
            {"holder": h.holder, "sequence": h.sequence, "acquired": h.acquired}
            for h in sorted(state.holders.values(), key=lambda h: h.sequence)
        ]
        return GovernorInfo(name=name, capacity=state.capacity, lease=0.0, holders=holders)

    async def evict(self, name: str, holder: str) -> bool:
        """Free the slots held by ``holder`` (the exact holder, or every holder whose name
        starts with ``holder:``, e.g. a machine's identity); True if any was freed. The evicted
        block keeps running: it just no longer counts against the capacity."""
        state = self._state(validate_name(name))
        freed = [s for s, h in state.holders.items() if _matches(h.holder, holder)]
        for sequence in freed:
            log.warning("Evicted %s from the %s Governor", state.holders[sequence].holder, name)
            del state.holders[sequence]
        self._serve(state)
        return bool(freed)

    async def names(self) -> list[str]:
        return sorted(self._governors)

    def waiting(self, name: str) -> int:
        """How many are waiting for a slot of ``name`` (0 for an unknown governor)."""
        state = self._governors.get(name)
        return 0 if state is None else sum(1 for w in state.waiters if not w.future.done())


def _matches(held: str, wanted: str) -> bool:
    return held == wanted or held.startswith(wanted + ":")


def _timeout(name: str, timeout: float) -> GovernorTimeout:
    return GovernorTimeout(
        f"no slot in the {name} Governor became free within {format_go_duration(timeout)}"
    )


def _expire(future: asyncio.Future[int], name: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(_timeout(name, timeout))


def _load(path: Path) -> dict[str, int]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the saved governors in %s: %s", path, exc)
        return {}
    if not isinstance(document, dict):
        return {}
    return {
        str(name): capacity
        for name, capacity in document.items()
        if isinstance(capacity, int) and capacity >= 1
    }
