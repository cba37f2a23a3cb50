"""File-system events from Linux inotify, shared by the whole process.

One inotify descriptor serves every file watcher and the store manager: it is read on the event
loop (no threads), and each directory is watched once however many subscribers it has. A watch
that cannot be added (missing directory, watch limit reached) is simply inactive; subscribers
keep their interval poll as a safety net and call :meth:`Subscription.refresh` to retry.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

__all__ = ["FileMonitor", "Subscription"]

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# What makes a file "changed": a finished write, a rename over it, creation, removal and
# metadata changes (touch, chmod). Plain IN_MODIFY is left out so a file written in several
# chunks wakes its watcher once, at close; the interval poll still catches long-open writers.
_MASK = (
    IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)  # fmt: skip
_HEADER = struct.Struct("iIII")

Callback = Callable[[str, int], None]


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class Subscription:
    """Interest in one directory (optionally one name in it). Cancel it when done."""

    __slots__ = ("_monitor", "active", "callback", "directory", "name")

    def __init__(
        self, monitor: FileMonitor, directory: Path, name: str | None, callback: Callback
    ) -> None:
        self._monitor = monitor
        self.directory = directory
        self.name = name
        self.callback = callback
        self.active = False

    def refresh(self) -> bool:
        """Try again to watch the directory if it was not possible before; True if watched."""
        if not self.active:
            self._monitor._attach(self)
        return self.active

    def cancel(self) -> None:
        self._monitor._detach(self)


class FileMonitor:
    """The process-wide inotify reader. Use :meth:`watch_file` or :meth:`watch_directory`."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._libc: _Libc | None = None
        self._by_wd: dict[int, tuple[Path, set[Subscription]]] = {}
        self._by_dir: dict[Path, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.available = False
        self.overflows = 0
        self.limit_warned = False
        try:
            self._libc = _Libc()
            fd = self._libc.init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            self._fd = fd
            self.available = True
        except (OSError, AttributeError) as exc:
            log.warning("inotify is not available, falling back to polling: %s", exc)

    def watch_file(self, path: Path, callback: Callback) -> Subscription:
        """Call ``callback(name, mask)`` when ``path`` (which may not exist yet) changes."""
        path = Path(os.path.abspath(path))
        subscription = Subscription(self, path.parent, path.name, callback)
        self._attach(subscription)
        return subscription

    def watch_directory(self, directory: Path, callback: Callback) -> Subscription:
        """Call ``callback(name, mask)`` for any entry of ``directory`` that changes."""
        subscription = Subscription(self, Path(os.path.abspath(directory)), None, callback)
        self._attach(subscription)
        return subscription

    def close(self) -> None:
        if self._fd is None:
            return
        if self._loop is not None:
            try:
                self._loop.remove_reader(self._fd)
            except (RuntimeError, ValueError):
                pass
        os.close(self._fd)
        self._fd = None
        self.available = False
        for _, subscribers in self._by_wd.values():
            for subscription in subscribers:
                subscription.active = False
        self._by_wd.clear()
        self._by_dir.clear()

    # -- internals ------------------------------------------------------------------------

    def _attach(self, subscription: Subscription) -> None:
        if self._fd is None or self._libc is None:
            return
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._loop.add_reader(self._fd, self._read)
        wd = self._by_dir.get(subscription.directory)
        if wd is None:
            wd = self._libc.add_watch(self._fd, os.fsencode(subscription.directory), _MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err == errno.ENOSPC and not self.limit_warned:
                    self.limit_warned = True
                    log.warning(
                        "inotify watch limit reached (fs.inotify.max_user_watches); "
                        "some files are only polled"
                    )
                return
            self._by_dir[subscription.directory] = wd
            self._by_wd[wd] = (subscription.directory, set())
        self._by_wd[wd][1].add(subscription)
        subscription.active = True

    def _detach(self, subscription: Subscription) -> None:
        subscription.active = False
        wd = self._by_dir.get(subscription.directory)
        if wd is None:
            return
        subscribers = self._by_wd[wd][1]
        subscribers.discard(subscription)
        if not subscribers:
            del self._by_wd[wd]
            del self._by_dir[subscription.directory]
            if self._fd is not None and self._libc is not None:
                self._libc.rm_watch(self._fd, wd)

    def _read(self) -> None:
        if self._fd is None:
            return
        try:
            buffer = os.read(self._fd, 256 * 1024)
        except BlockingIOError:
            return
        except OSError as exc:
            log.error("reading inotify events failed: %s", exc)
            return
        offset = 0
        while offset + _HEADER.size <= len(buffer):
            wd, mask, _cookie, length = _HEADER.unpack_from(buffer, offset)
            offset += _HEADER.size
            raw_name = buffer[offset : offset + length].rstrip(b"\0")
            offset += length
            if mask & IN_Q_OVERFLOW:
                self.overflows += 1
                self._broadcast()
                continue
            entry = self._by_wd.get(wd)
            if entry is None:
                continue
            directory, subscribers = entry
            name = os.fsdecode(raw_name)
            for subscription in list(subscribers):
                if subscription.name is None or subscription.name == name or not name:
                    self._call(subscription, name, mask)
            if mask & IN_IGNORED:
                # The directory itself went away: its watch is gone, subscribers must refresh.
                self._by_wd.pop(wd, None)
                self._by_dir.pop(directory, None)
                for subscription in subscribers:
                    subscription.active = False

    def _broadcast(self) -> None:
        for _, subscribers in list(self._by_wd.values()):
            for subscription in list(subscribers):
                self._call(subscription, "", IN_Q_OVERFLOW)

    @staticmethod
    def _call(subscription: Subscription, name: str, mask: int) -> None:
        try:
            subscription.callback(name, mask)
        except Exception:
            log.exception("inotify subscriber for %s failed", subscription.directory)
