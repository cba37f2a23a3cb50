"""Event loop set-up shared by every entry point."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator

__all__ = [
    "LARGE_ALLOCATION",
    "MALLOC_ARENAS",
    "STOP_SIGNALS",
    "freeze_heap",
    "handle_signals",
    "install_child_watcher",
    "tune_malloc",
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_child_watcher() -> None:
    """Reap child processes with pidfds instead of a thread per child.

    Python 3.11's default ThreadedChildWatcher starts a thread for every subprocess, which costs
    more than the process itself for short commands. Python 3.12 uses pidfds by default; on 3.11
    we ask for them when the kernel supports them (Linux 5.3+).
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.get_event_loop_policy().set_child_watcher(asyncio.PidfdChildWatcher())


@contextlib.contextmanager
def handle_signals(
    callback: Callable[[int], object], signals: Iterable[int] = STOP_SIGNALS
) -> Iterator[None]:
    """Call ``callback(signum)`` on the running loop when one of ``signals`` arrives, while in
    the ``with`` block; the previous dispositions are restored after it.

    Set explicitly rather than left to Python's KeyboardInterrupt: a process started in the
    background of a non-interactive shell inherits SIGINT ignored, and would not stop on it.
    """
    loop = asyncio.get_running_loop()
    installed = list(signals)
    for signum in installed:
        loop.add_signal_handler(signum, callback, signum)
    try:
        yield
    finally:
        for signum in installed:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)


def freeze_heap() -> int:
    """Collect garbage once, then exempt every object alive now from garbage collection; returns
    how many objects were frozen.

    Called once the agent's machines are loaded and running: with thousands of machines, a full
    collection walks millions of long-lived objects (0.5 s and more with 10,000 machines, a stall
    of every machine's timers), although none of them is garbage. Frozen objects are still freed
    by reference counting; only reference cycles among them are never collected, which costs at
    most what was alive at the freeze.
    """
    gc.collect()
    gc.freeze()
    # A full collection sizes the next: the one above counted the whole heap, so the next full
    # collection would wait until a quarter of that had been promoted, holding cyclic garbage
    # all along. Collecting again with everything frozen is quick, and counts only what is not.
    gc.collect()
    release_free_memory()
    return gc.get_freeze_count()


# glibc's mallopt() parameters.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
LARGE_ALLOCATION = 128 * 1024
MALLOC_ARENAS = 1


def tune_malloc() -> bool:
    """Make the C allocator give memory back after bursts of large buffers; False where the C
    library is not glibc.

    - Every allocation of :data:`LARGE_ALLOCATION` or more gets its own mapping, returned to
      the system when freed. glibc raises this threshold by itself each time such a block is
      freed, after which megabyte buffers (KV values, their JSON, event frames) come from heaps
      that are rarely given back.
    - At most :data:`MALLOC_ARENAS` heaps: by default each thread that allocates (SQLite reads
      in worker threads) gets heaps of its own, each keeping its high-water mark.

    Without this, a burst of large answers (100 KV watches starting at once) left the agent
    100-200 MB larger for a while although Python had freed everything.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    threshold = mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION)
    arenas = mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    return bool(threshold and arenas)


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``).

    Start-up (compiling manifests, building validators, importing) frees a lot it allocated;
    glibc keeps those pages for later, where they count in the agent's resident memory. Not
    available elsewhere (musl, macOS): then nothing happens.
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
