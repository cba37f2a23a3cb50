"""Event loop helpers: signal handling and the heap freeze."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

from machinery.core.loop import freeze_heap, handle_signals


def test_freeze_heap_exempts_what_is_alive_and_collects_garbage_first() -> None:
    class Cycle:
        other: object = None

    garbage = Cycle()
    garbage.other = Cycle()
    garbage.other.other = garbage  # unreachable once the name goes: only a collection frees it
    del garbage
    before = gc.get_freeze_count()
    try:
        frozen = freeze_heap()
        assert frozen == gc.get_freeze_count() > before
        assert not any(isinstance(o, Cycle) for o in gc.get_objects())  # collected, not frozen
    finally:
        gc.unfreeze()  # the test process goes on: let it collect normally again


async def test_handle_signals_calls_back_and_restores_the_disposition() -> None:
    received: list[int] = []
    arrived = asyncio.Event()

    def callback(signum: int) -> None:
        received.append(signum)
        arrived.set()

    with handle_signals(callback, [signal.SIGUSR1]):
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(arrived.wait(), 5)
    assert received == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
