"""Event loop set-up shared by every entry point."""

from __future__ import annotations

import asyncio
import os
import sys
import warnings

__all__ = ["install_child_watcher"]


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
