"""Safe handling of downloaded archives: extract a ``.tar.gz``, verify a ``SHA256SUMS`` file,
and swap a directory into place.

Archives come from the network and are treated as hostile even after their checksum matched
(the checksum proves who published them, not that the publisher made no mistake).
:func:`extract_tar_gz` therefore reads the archive as a stream and writes every file itself,
refusing anything that is not a plain file or directory, any name that could land outside the
destination, and archives that grow beyond set limits once decompressed. Nothing from the
archive decides ownership or special permission bits.

These helpers hold no watcher logic; the ``archive``, ``machines`` and ``plugins`` watchers and
the ``machinery plugins`` command share them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import gzip
import hashlib
import hmac
import logging
import os
import platform
import re
import stat
import sys
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "ExtractError",
    "VerifyError",
    "exchange_paths",
    "extract_tar_gz",
    "replace_tree",
    "sha256_file",
    "verify_sums",
]

log = logging.getLogger("machinery.extract")

GIB = 1024**3
DEFAULT_MAX_FILES = 10_000
DEFAULT_MAX_TOTAL_BYTES = 2 * GIB
DEFAULT_MAX_FILE_BYTES = 1 * GIB

# Extended (pax) and GNU long-name headers are read into memory whole by tarfile, so their
# size is capped before tarfile sees them; real ones are a few hundred bytes.
MAX_HEADER_BYTES = 1024 * 1024
# Extended headers that may precede one member (real archives use one or two).
MAX_HEADER_CHAIN = 16
_CHAIN_ATTRIBUTE = "_machinery_header_chain"
# Tar framing (headers and block padding) that decompresses on top of the file contents.
_FRAMING_PER_ENTRY = 2048
# A SHA256SUMS file is read into memory (hashed and parsed from the same bytes).
MAX_SUMS_FILE_BYTES = 16 * 1024 * 1024

_CHUNK = 1024 * 1024
_PERMISSION_MASK = 0o755
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Choria's line format is ``^([a-z0-9]+)\s+(\S.+)$``; a one-character file name is allowed
# here too, and upper-case hex digits are accepted.
_SUM_LINE = re.compile(r"^([0-9A-Za-z]+)(\s+)(\S.*)$")


class ExtractError(Exception):
    """The archive is unreadable, or one of its members is refused."""


class VerifyError(Exception):
    """A directory does not match its checksums file."""


# -- hashing ------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The lower-case hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _same_digest(actual: str, expected: str) -> bool:
    return hmac.compare_digest(actual.lower(), expected.strip().lower())


# -- extraction -----------------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _LimitedReader:
    """A read-only stream that fails once more than ``limit`` bytes were read through it.

    It sits between gzip and tarfile, so it bounds everything the archive decompresses to:
    file contents, headers and anything tarfile skips.
    """

    def __init__(self, source: _Readable, limit: int) -> None:
        self._source = source
        self._limit = limit
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        room = self._limit - self.count + 1
        if size is None or size < 0 or size > room:
            size = room
        data = self._source.read(size)
        self.count += len(data)
        if self.count > self._limit:
            raise ExtractError(f"archive decompresses to more than {self._limit} bytes")
        return data

    def readable(self) -> bool:
        return True


class _GuardedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized metadata headers and sparse files before tarfile
    reads them (both would otherwise let a small archive claim a lot of memory)."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise ExtractError(f"archive member {self.name!r}: sparse files are not allowed")
        if self.type in _METADATA_TYPES:
            if self.size > MAX_HEADER_BYTES:
                raise ExtractError(
                    f"archive member {self.name!r}: extended header of {self.size} bytes is "
                    f"larger than {MAX_HEADER_BYTES}"
                )
            # tarfile follows a chain of extended headers by recursion; keep it short.
            chain = getattr(tar, _CHAIN_ATTRIBUTE, 0) + 1
            if chain > MAX_HEADER_CHAIN:
                raise ExtractError(
                    f"archive member {self.name!r}: more than {MAX_HEADER_CHAIN} extended "
                    "headers in a row"
                )
            setattr(tar, _CHAIN_ATTRIBUTE, chain)
        else:
            setattr(tar, _CHAIN_ATTRIBUTE, 0)
        parent: Any = super()
        result: tarfile.TarInfo = parent._proc_member(tar)
        return result

    # GNU sparse formats announced in pax headers; refused the same way.
    def _proc_gnusparse_00(self, *args: object) -> None:
        raise ExtractError("archive member: sparse files are not allowed")

    def _proc_gnusparse_01(self, *args: object) -> None:
        raise ExtractError("archive member: sparse files are not allowed")

    def _proc_gnusparse_10(self, *args: object) -> None:
        raise ExtractError("archive member: sparse files are not allowed")


# Regular files (old and new style, and "contiguous" ones, which are regular files too) and
# directories; anything else, including type flags tarfile does not know, is refused.
_ALLOWED_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.DIRTYPE})

_METADATA_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)


def _member_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    """The path components of a member's name, or ExtractError if it may not be used."""
    name = member.name
    if "\x00" in name:
        raise ExtractError(f"archive member {name!r}: name contains a NUL byte")
    if name.startswith("/"):
        raise ExtractError(f"archive member {name!r}: absolute names are not allowed")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ExtractError(f"archive member {name!r}: '..' in names is not allowed")
    return parts


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why a member's type is refused (None: a regular file or directory)."""
    if member.issym():
        return "symbolic links are not allowed"
    if member.islnk():
        return "hard links are not allowed"
    if member.ischr() or member.isblk():
        return "device files are not allowed"
    if member.isfifo():
        return "named pipes are not allowed"
    if member.issparse():
        return "sparse files are not allowed"
    if member.type in _ALLOWED_TYPES:
        return None
    return f"member type {member.type!r} is not allowed"


class _Extraction:
    """The state of one extraction: what exists so far, and how much was written."""

    def __init__(
        self, destination: Path, max_files: int, max_total_bytes: int, max_file_bytes: int
    ) -> None:
        self.destination = destination
        self.root = os.path.realpath(destination)
        self.max_files = max_files
        self.max_total_bytes = max_total_bytes
        self.max_file_bytes = max_file_bytes
        self.total = 0
        # Every path created, as components, mapped to whether it is a directory. The
        # destination starts empty, so this mirrors what is on disk.
        self.entries: dict[tuple[str, ...], bool] = {}
        self.created: list[Path] = []

    def path(self, parts: tuple[str, ...]) -> Path:
        return self.destination.joinpath(*parts)

    def _count(self, member: tarfile.TarInfo) -> None:
        if len(self.entries) >= self.max_files:
            raise ExtractError(
                f"archive member {member.name!r}: archive has more than {self.max_files} entries"
            )

    def _check_inside(self, member: tarfile.TarInfo, path: Path) -> None:
        # Names are already free of '..' and absolute parts and nothing here is a link, so
        # this cannot fail unless the destination is changed underneath us; check anyway.
        real = os.path.realpath(path.parent)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise ExtractError(f"archive member {member.name!r}: resolves outside the destination")

    def ensure_directory(
        self, member: tarfile.TarInfo, parts: tuple[str, ...], mode: int | None
    ) -> None:
        """Create ``parts`` and any missing parents (0755); ``mode`` is the mode of an
        explicit directory entry, None when only making room for a file."""
        for depth in range(1, len(parts) + 1):
            prefix = parts[:depth]
            is_dir = self.entries.get(prefix)
            if is_dir is None:
                self._count(member)
                path = self.path(prefix)
                self._check_inside(member, path)
                try:
                    os.mkdir(path, 0o700)
                except OSError as exc:
                    raise ExtractError(
                        f"archive member {member.name!r}: cannot create directory: {exc.strerror}"
                    ) from None
                final_mode = mode if mode is not None and depth == len(parts) else 0o755
                os.chmod(path, final_mode, follow_symlinks=False)
                self.entries[prefix] = True
                self.created.append(path)
            elif not is_dir:
                raise ExtractError(
                    f"archive member {member.name!r}: {'/'.join(prefix)} is a file, not a directory"
                )
            elif mode is not None and depth == len(parts):
                # A directory seen before (as a parent or twice): its own entry sets the mode.
                os.chmod(self.path(prefix), mode, follow_symlinks=False)

    def write_file(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...], mode: int
    ) -> None:
        if not parts:
            raise ExtractError(f"archive member {member.name!r}: not a valid file name")
        if parts in self.entries:
            raise ExtractError(f"archive member {member.name!r}: duplicate entry")
        if member.size > self.max_file_bytes:
            raise ExtractError(
                f"archive member {member.name!r}: {member.size} bytes is larger than the limit "
                f"of {self.max_file_bytes}"
            )
        if self.total + member.size > self.max_total_bytes:
            raise ExtractError(
                f"archive member {member.name!r}: archive contents exceed {self.max_total_bytes} "
                "bytes"
            )
        self.ensure_directory(member, parts[:-1], None)
        self._count(member)
        path = self.path(parts)
        self._check_inside(member, path)
        source = tar.extractfile(member)
        if source is None:
            raise ExtractError(f"archive member {member.name!r}: cannot read its contents")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise ExtractError(
                f"archive member {member.name!r}: cannot create file: {exc.strerror}"
            ) from None
        self.entries[parts] = False
        self.created.append(path)
        written = 0
        with os.fdopen(fd, "wb") as target:
            # Count what is written, not what the header claimed.
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > self.max_file_bytes:
                    raise ExtractError(
                        f"archive member {member.name!r}: larger than the limit of "
                        f"{self.max_file_bytes} bytes"
                    )
                if self.total + written > self.max_total_bytes:
                    raise ExtractError(
                        f"archive member {member.name!r}: archive contents exceed "
                        f"{self.max_total_bytes} bytes"
                    )
                target.write(chunk)
            os.fchmod(target.fileno(), mode)
        self.total += written


def extract_tar_gz(
    archive: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> list[Path]:
    """Extract a gzip-compressed tar file into ``destination``, an existing empty directory.

    Only regular files and directories are extracted; links, devices, FIFOs, sparse files,
    absolute names, names with ``..``, duplicate files and files inside something that is not a
    directory are refused, as are archives with more than ``max_files`` entries or whose files
    add up to more than ``max_total_bytes`` (or one file more than ``max_file_bytes``), counted
    as they are written. Permissions are kept within 0755 (owner read/write, and for directories
    search, always granted); no setuid, setgid or sticky bit, and ownership is the caller's.

    Returns the paths created, in archive order. Raises :class:`ExtractError` naming the
    offending member; the destination may then hold part of the archive and is the caller's to
    remove.
    """
    target = Path(destination)
    try:
        if not stat.S_ISDIR(os.lstat(target).st_mode):
            raise ExtractError(f"destination {target} is not a directory")
        with os.scandir(target) as listing:
            if next(listing, None) is not None:
                raise ExtractError(f"destination {target} is not empty")
    except OSError as exc:
        raise ExtractError(f"destination {target}: {exc.strerror}") from None
    state = _Extraction(target, max_files, max_total_bytes, max_file_bytes)
    stream_limit = max_total_bytes + (max_files + 2) * _FRAMING_PER_ENTRY + 4 * MAX_HEADER_BYTES
    try:
        with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            limited: Any = _LimitedReader(unzipped, stream_limit)
            reader: BinaryIO = limited
            with tarfile.open(fileobj=reader, mode="r|", tarinfo=_GuardedTarInfo) as tar:
                for member in tar:
                    _extract_member(state, tar, member)
    except ExtractError:
        raise
    except tarfile.TarError as exc:
        raise ExtractError(f"invalid archive: {exc}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ExtractError(f"invalid gzip data: {exc}") from None
    except (ValueError, UnicodeError, RecursionError) as exc:
        # Malformed headers that tarfile does not turn into its own errors.
        raise ExtractError(f"invalid archive: {exc}") from None
    except OSError as exc:
        raise ExtractError(f"cannot extract archive: {exc}") from None
    return state.created


def _extract_member(state: _Extraction, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    reason = _refusal(member)
    if reason is not None:
        raise ExtractError(f"archive member {member.name!r}: {reason}")
    parts = _member_parts(member)
    mode = member.mode & _PERMISSION_MASK
    if member.isdir():
        if parts:  # "./" is the destination itself
            state.ensure_directory(member, parts, mode | 0o700)
        return
    state.write_file(tar, member, parts, mode | 0o600)


# -- checksums files ------------------------------------------------------------------------


def _inside(root: str, relative: str) -> str | None:
    """``relative`` resolved below ``root`` (a real path), or None if it leaves it."""
    if not relative or relative.startswith("/") or "\x00" in relative:
        return None
    if ".." in relative.split("/"):
        return None
    resolved = os.path.realpath(os.path.join(root, relative))
    if resolved == root or not resolved.startswith(root + os.sep):
        return None
    return resolved


def verify_sums(
    directory: str | os.PathLike[str], sums_file: str, expected_sums_checksum: str | None
) -> None:
    """Check ``directory`` against the SHA256SUMS-style file ``sums_file`` inside it.

    The checksums file's own SHA-256 must equal ``expected_sums_checksum`` (None skips that
    check, for tools that only want the contents verified). Every non-blank line is
    ``<hex sha256><whitespace><relative path>`` (``sha256sum`` output, with or without its
    ``*`` binary marker); a malformed line, a path outside ``directory``, a missing or non-regular
    file, or a differing checksum raise :class:`VerifyError`. Files not listed are not checked.
    """
    try:
        root = os.path.realpath(directory, strict=True)
    except OSError:
        raise VerifyError(f"{os.fspath(directory)} does not exist") from None
    if not os.path.isdir(root):
        raise VerifyError(f"{os.fspath(directory)} is not a directory")
    sums_path = _inside(root, sums_file)
    if sums_path is None:
        raise VerifyError(f"checksums file {sums_file!r} is not inside {os.fspath(directory)}")
    content = _read_sums_file(sums_path, sums_file)
    if expected_sums_checksum is not None:
        if not expected_sums_checksum.strip():
            raise VerifyError(f"no checksum given for the checksums file {sums_file}")
        actual = hashlib.sha256(content).hexdigest()
        if not _same_digest(actual, expected_sums_checksum):
            raise VerifyError(
                f"checksums file {sums_file} has an invalid checksum: {actual} != "
                f"{expected_sums_checksum.strip()}"
            )
    try:
        text = content.decode()
    except UnicodeDecodeError:
        raise VerifyError(f"checksums file {sums_file} is not UTF-8 text") from None
    failures: list[str] = []
    listed = 0
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if not line.strip():
            continue
        expected, name = _parse_sum_line(line, sums_file, number)
        listed += 1
        path = _inside(root, name)
        if path is None:
            raise VerifyError(f"{sums_file} line {number}: {name!r} is outside the directory")
        problem = _check_listed_file(path, expected)
        if problem:
            failures.append(f"{name}: {problem}")
    if not listed:
        raise VerifyError(f"checksums file {sums_file} lists no files")
    if failures:
        shown = "; ".join(failures[:10])
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        raise VerifyError(f"{len(failures)} of {listed} files failed verification: {shown}{more}")


def _read_sums_file(path: str, name: str) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO planted in place of the file must not hang.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise VerifyError(f"checksums file {name} does not exist") from None
    except OSError as exc:
        raise VerifyError(f"cannot read checksums file {name}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VerifyError(f"checksums file {name} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            content = handle.read(MAX_SUMS_FILE_BYTES + 1)
    except OSError as exc:
        raise VerifyError(f"cannot read checksums file {name}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(content) > MAX_SUMS_FILE_BYTES:
        raise VerifyError(f"checksums file {name} is larger than {MAX_SUMS_FILE_BYTES} bytes")
    return content


def _parse_sum_line(line: str, sums_file: str, number: int) -> tuple[str, str]:
    match = _SUM_LINE.match(line)
    if match is None:
        raise VerifyError(f"{sums_file} line {number} is malformed: {line[:200]!r}")
    digest, separator, name = match.groups()
    if separator == " " and name.startswith("*"):
        name = name[1:]  # sha256sum's binary-mode marker
    digest = digest.lower()
    if not name or not _HEX64.match(digest):
        raise VerifyError(f"{sums_file} line {number} is malformed: {line[:200]!r}")
    return digest, name


def _check_listed_file(path: str, expected: str) -> str | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if not _same_digest(actual, expected):
        return "checksum mismatch"
    return None


# -- installing -----------------------------------------------------------------------------


def replace_tree(
    new: str | os.PathLike[str], final: str | os.PathLike[str], aside: str | os.PathLike[str]
) -> None:
    """Put directory ``new`` at ``final``, keeping whatever was at ``final`` until it succeeded.

    When ``final`` exists, the two are exchanged in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``), so at every moment ``final`` holds the old tree or the new one, even if
    the process dies; the old tree, now at ``new``'s path, is then renamed to ``aside`` (a path
    that must not exist; if that rename fails the old tree stays at ``new``'s path). Where the
    kernel or the file system cannot exchange (``EINVAL``, ``ENOSYS``), a warning is logged and
    the swap is two renames: ``final`` to ``aside``, then ``new`` to ``final``, putting the old
    one back if the second fails (a crash between the two leaves nothing at ``final``). Any other
    failure of the exchange changed nothing and is raised. Removing ``aside`` (or ``new``'s
    path) afterwards is the caller's job. All three paths must be on one file system.
    """
    if not os.path.lexists(final):
        os.rename(new, final)
        return
    try:
        exchange_paths(new, final)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        log.warning(
            "cannot swap %s into place atomically (%s); using two renames, so a crash between "
            "them would leave no install",
            os.fspath(final),
            exc.strerror,
        )
        _replace_with_renames(new, final, aside)
        return
    try:
        os.rename(new, aside)
    except OSError as exc:
        log.warning("the previous %s stays at %s: %s", os.fspath(final), os.fspath(new), exc)


def _replace_with_renames(
    new: str | os.PathLike[str], final: str | os.PathLike[str], aside: str | os.PathLike[str]
) -> None:
    os.rename(final, aside)
    try:
        os.rename(new, final)
    except OSError:
        with contextlib.suppress(OSError):
            os.rename(aside, final)
        raise


# renameat2(2): AT_FDCWD makes both paths relative to the working directory (or absolute).
AT_FDCWD = -100
RENAME_EXCHANGE = 2
# renameat2's system call number, for a C library without the wrapper (glibc < 2.28, some
# others), by machine (uname -m) and pointer size.
_SYS_RENAMEAT2 = {
    ("x86_64", 8): 316,
    ("amd64", 8): 316,
    ("x86_64", 4): 353,
    ("i386", 4): 353,
    ("i486", 4): 353,
    ("i586", 4): 353,
    ("i686", 4): 353,
    ("aarch64", 8): 276,
    ("arm64", 8): 276,
    ("riscv64", 8): 276,
    ("loongarch64", 8): 276,
    ("aarch64", 4): 382,
    ("armv6l", 4): 382,
    ("armv7l", 4): 382,
    ("armv8l", 4): 382,
    ("ppc64", 8): 357,
    ("ppc64le", 8): 357,
    ("ppc", 4): 357,
    ("s390x", 8): 347,
}

_Renameat2 = Callable[[int, bytes, int, bytes, int], int]


def exchange_paths(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> None:
    """Atomically exchange two existing paths (``renameat2(RENAME_EXCHANGE)``).

    Raises :class:`OSError`: ``ENOSYS`` where the call does not exist (not Linux, or a kernel
    older than 3.15), ``EINVAL`` where the file system cannot exchange, and whatever else
    ``renameat2`` reports (nothing was changed then).
    """
    call = _renameat2()
    if call is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", os.fspath(first))
    if call(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), os.fspath(first), None, os.fspath(second))


@functools.cache
def _renameat2() -> _Renameat2 | None:
    """The C library's ``renameat2``, else the system call, else None (not on Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    wrapper = getattr(libc, "renameat2", None)
    if wrapper is None:
        return _renameat2_syscall(libc)
    wrapper.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    wrapper.restype = ctypes.c_int
    function: _Renameat2 = wrapper
    return function


def _renameat2_syscall(libc: ctypes.CDLL) -> _Renameat2 | None:
    """``renameat2`` through ``syscall(2)`` (for a C library without the wrapper), or None."""
    number = _SYS_RENAMEAT2.get((platform.machine().lower(), ctypes.sizeof(ctypes.c_void_p)))
    syscall = getattr(libc, "syscall", None)
    if number is None or syscall is None:
        return None
    syscall.restype = ctypes.c_long

    def call(old_dir: int, old: bytes, new_dir: int, new: bytes, flags: int) -> int:
        result: int = syscall(
            ctypes.c_long(number),
            ctypes.c_int(old_dir),
            ctypes.c_char_p(old),
            ctypes.c_int(new_dir),
            ctypes.c_char_p(new),
            ctypes.c_uint(flags),
        )
        return result

    return call
