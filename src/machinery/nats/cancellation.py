"""Keeping cancellations that nats-py would lose.

nats-py waits for replies with ``asyncio.wait_for``, which in Python 3.11 returns the reply and
drops the cancellation when both happen in the same loop iteration: a machine being stopped
would carry on, and whoever stopped it would wait for ever. Every await on a nats-py request in
machinery is wrapped in :func:`restore_cancellation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import NoReturn

__all__ = ["restore_cancellation", "restore_cancellation_now"]

log = logging.getLogger("machinery.nats")


@contextlib.asynccontextmanager
async def restore_cancellation() -> AsyncIterator[None]:
    """Re-raise a cancellation of the current task that nats-py swallowed meanwhile.

    nats-py waits for replies with ``asyncio.wait_for``, which in Python 3.11 returns the reply
    and drops the cancellation when both happen in the same loop iteration; a task cancelled
    then would carry on as if nothing happened, and whoever cancelled it would wait for ever.
    The task's count of cancellation requests tells.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    try:
        yield
    except asyncio.CancelledError:
        raise
    except Exception:
        if task is not None and task.cancelling() > before:
            await _cancelled()
        raise
    if task is not None and task.cancelling() > before:
        await _cancelled()


async def restore_cancellation_now() -> None:
    """Raise CancelledError if the current task was asked to stop (see above)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        await _cancelled()


async def _cancelled() -> NoReturn:
    # A cancellation still pending is delivered by this await; one that was swallowed is not,
    # and is raised again here.
    await asyncio.sleep(0)
    log.debug("a cancellation was swallowed by nats-py; raising it again")
    raise asyncio.CancelledError
