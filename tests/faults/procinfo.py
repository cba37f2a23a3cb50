"""What the fault tests measure about processes: open descriptors, zombies, liveness, memory."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "alive",
    "children_of",
    "fd_count",
    "process_group_members",
    "rss_kib",
    "thread_count",
    "zombies_of",
]


def fd_count(pid: int | str = "self") -> int:
    """Open file descriptors of ``pid`` (default: this process)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ")".
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def children_of(pid: int | None = None) -> list[int]:
    """Direct children of ``pid`` (default: this process), zombies included."""
    parent = os.getpid() if pid is None else pid
    found = []
    for candidate in _all_pids():
        stat = _stat(candidate)
        if stat is not None and stat[1] == parent:
            found.append(candidate)
    return found


def zombies_of(pid: int | None = None) -> list[int]:
    """Children of ``pid`` (default: this process) that exited and were never reaped."""
    parent = os.getpid() if pid is None else pid
    found = []
    for candidate in _all_pids():
        stat = _stat(candidate)
        if stat is not None and stat[1] == parent and stat[0] == "Z":
            found.append(candidate)
    return found


def process_group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    found = []
    for candidate in _all_pids():
        stat = _stat(candidate)
        if stat is not None and stat[2] == pgid and stat[0] != "Z":
            found.append(candidate)
    return found


def _status_field(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int | str = "self") -> int:
    """Resident memory of ``pid`` in KiB."""
    return _status_field(pid, "VmRSS")


def thread_count(pid: int | str = "self") -> int:
    """Threads of ``pid``."""
    return _status_field(pid, "Threads")
