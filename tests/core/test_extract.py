"""Safe archive extraction, SHA256SUMS verification and directory replacement, on real files."""

from __future__ import annotations

import copy
import ctypes
import errno
import gzip
import hashlib
import io
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from machinery.core import extract
from machinery.core.extract import (
    MAX_HEADER_BYTES,
    ExtractError,
    VerifyError,
    exchange_paths,
    extract_tar_gz,
    replace_tree,
    sha256_file,
    verify_sums,
)
from tests.support import CORPUS

FIXTURES = CORPUS / "fixtures/archive-watcher"
TEST_CONTENT_SHA = "6ae8a75555209fd6c44157c0aed8016e763ff435a19cf186f76863140143ff72"
KIB = 1024
MIB = 1024 * 1024


def member(
    name: str,
    data: bytes | None = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    size: int | None = None,
    linkname: str = "",
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 4242
    info.uname = info.gname = "someone"
    info.linkname = linkname
    if kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
        info.size = len(data or b"") if size is None else size
    return info, data


def directory(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes | None]:
    return member(name, None, kind=tarfile.DIRTYPE, mode=mode)


def make_tgz(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def gz(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw))
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    target = tmp_path / "out"
    target.mkdir()
    return target


def tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Everything under root: relative path -> (kind, permission bits, contents)."""
    result: dict[str, tuple[str, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        relative = str(path.relative_to(root))
        if stat.S_ISDIR(info.st_mode):
            result[relative] = ("dir", stat.S_IMODE(info.st_mode), b"")
        elif stat.S_ISREG(info.st_mode):
            result[relative] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
        else:
            result[relative] = ("other", stat.S_IMODE(info.st_mode), b"")
    return result


# -- extraction: what is accepted -------------------------------------------------------


def test_extracts_files_and_directories_with_safe_modes(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(
        tmp_path / "good.tgz",
        [
            directory("app", 0o755),
            member("app/run.sh", b"#!/bin/sh\necho hi\n", mode=0o4777),
            member("app/readonly.txt", b"ro", mode=0o444),
            member("app/secret.txt", b"s", mode=0o600),
            directory("app/private", 0o500),
            directory("app/sticky", 0o1777),
            member("app/private/data.bin", bytes(range(256)) * 10, mode=0o2640),
        ],
    )
    created = extract_tar_gz(archive, dest)
    assert created == [
        dest / "app",
        dest / "app/run.sh",
        dest / "app/readonly.txt",
        dest / "app/secret.txt",
        dest / "app/private",
        dest / "app/sticky",
        dest / "app/private/data.bin",
    ]
    assert tree(dest) == {
        "app": ("dir", 0o755, b""),
        "app/private": ("dir", 0o700, b""),  # owner rwx always granted
        "app/private/data.bin": ("file", 0o640, bytes(range(256)) * 10),  # setgid dropped
        "app/readonly.txt": ("file", 0o644, b"ro"),  # owner read/write always granted
        "app/run.sh": ("file", 0o755, b"#!/bin/sh\necho hi\n"),  # setuid and o+w dropped
        "app/secret.txt": ("file", 0o600, b"s"),
        "app/sticky": ("dir", 0o755, b""),  # sticky bit and o+w dropped
    }
    # Ownership comes from the extracting user, never from the archive (uid 4242).
    for path in created:
        assert path.lstat().st_uid == os.getuid()
        assert path.lstat().st_gid == os.getgid()


def test_missing_parents_are_created_and_dot_names_accepted(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(
        tmp_path / "dots.tgz",
        [
            directory("."),
            member("./pkg/lib/a.txt", b"a"),
            member("pkg//lib/./b.txt", b"b"),
            directory("./pkg/lib", 0o750),  # a later entry for an implicit parent sets its mode
        ],
    )
    created = extract_tar_gz(archive, dest)
    assert created == [
        dest / "pkg",
        dest / "pkg/lib",
        dest / "pkg/lib/a.txt",
        dest / "pkg/lib/b.txt",
    ]
    assert tree(dest) == {
        "pkg": ("dir", 0o755, b""),
        "pkg/lib": ("dir", 0o750, b""),
        "pkg/lib/a.txt": ("file", 0o644, b"a"),
        "pkg/lib/b.txt": ("file", 0o644, b"b"),
    }


def test_old_style_and_contiguous_regular_files_are_accepted(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(
        tmp_path / "types.tgz",
        [
            member("old.txt", b"old", kind=tarfile.AREGTYPE),
            member("contiguous.txt", b"cont", kind=tarfile.CONTTYPE),
        ],
    )
    extract_tar_gz(archive, dest)
    assert (dest / "old.txt").read_bytes() == b"old"
    assert (dest / "contiguous.txt").read_bytes() == b"cont"


def test_a_directory_listed_twice_is_fine(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(
        tmp_path / "twice.tgz", [directory("d"), member("d/x", b"x"), directory("d", 0o700)]
    )
    extract_tar_gz(archive, dest)
    assert tree(dest) == {"d": ("dir", 0o700, b""), "d/x": ("file", 0o644, b"x")}


# -- extraction: what is refused ----------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (member("../escape.txt", b"x"), "'../escape.txt': '..' in names is not allowed"),
        (member("app/../../escape.txt", b"x"), "'app/../../escape.txt': '..' in names"),
        (member("app/..", b"x"), "'app/..': '..' in names is not allowed"),
        # An inner '..' is refused even when the name would resolve inside the destination.
        (member("app/sub/../b.txt", b"x"), "'app/sub/../b.txt': '..' in names is not allowed"),
        (directory("../up"), "'../up': '..' in names is not allowed"),
        (member("/ABSOLUTE/abs.txt", b"x"), "'/ABSOLUTE/abs.txt': absolute names are not"),
        (directory("/ABSOLUTE/absdir"), "'/ABSOLUTE/absdir': absolute names are not allowed"),
        (
            member("link", None, kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
            "'link': symbolic links are not allowed",
        ),
        (
            member("inner", None, kind=tarfile.SYMTYPE, linkname="app"),
            "'inner': symbolic links are not allowed",
        ),
        (
            member("hard", None, kind=tarfile.LNKTYPE, linkname="app/a.txt"),
            "'hard': hard links are not allowed",
        ),
        (member("tty", None, kind=tarfile.CHRTYPE), "'tty': device files are not allowed"),
        (member("disk", None, kind=tarfile.BLKTYPE), "'disk': device files are not allowed"),
        (member("pipe", None, kind=tarfile.FIFOTYPE), "'pipe': named pipes are not allowed"),
        (member("odd", b"", kind=b"Z"), "'odd': member type b'Z' is not allowed"),
    ],
)
def test_dangerous_members_are_refused(
    tmp_path: Path,
    dest: Path,
    entry: tuple[tarfile.TarInfo, bytes | None],
    message: str,
) -> None:
    # Absolute names point into tmp_path, so a broken extractor could not harm the system.
    # A copy: the parameters are shared by every run of the test in this process.
    info = copy.copy(entry[0])
    entry = (info, entry[1])
    info.name = info.name.replace("/ABSOLUTE", str(tmp_path))
    message = message.replace("/ABSOLUTE", str(tmp_path))
    archive = make_tgz(tmp_path / "bad.tgz", [directory("app"), member("app/a.txt", b"a"), entry])
    with pytest.raises(ExtractError) as caught:
        extract_tar_gz(archive, dest)
    assert message in str(caught.value)
    assert str(caught.value).startswith("archive member ")
    # Nothing was written outside the destination.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tgz", "out"]


def test_a_file_member_named_like_the_destination_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(tmp_path / "root.tgz", [member("./", b"x", kind=tarfile.REGTYPE)])
    with pytest.raises(ExtractError, match="not a valid file name"):
        extract_tar_gz(archive, dest)


def test_sparse_members_are_refused(tmp_path: Path, dest: Path) -> None:
    info = tarfile.TarInfo("holes.bin")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 0
    raw = info.tobuf(tarfile.GNU_FORMAT) + b"\0" * 1024
    with pytest.raises(ExtractError, match=r"'holes\.bin': sparse files are not allowed"):
        extract_tar_gz(gz(tmp_path / "sparse.tgz", raw), dest)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([member("a.txt", b"1"), member("a.txt", b"2")], "'a.txt': duplicate entry"),
        ([member("a", b"1"), directory("a")], "'a': a is a file, not a directory"),
        ([directory("a"), member("a", b"1")], "'a': duplicate entry"),
        ([member("a", b"1"), member("a/b", b"2")], "'a/b': a is a file, not a directory"),
    ],
)
def test_overwriting_entries_are_refused(
    tmp_path: Path,
    dest: Path,
    entries: list[tuple[tarfile.TarInfo, bytes | None]],
    message: str,
) -> None:
    archive = make_tgz(tmp_path / "dup.tgz", entries)
    with pytest.raises(ExtractError) as caught:
        extract_tar_gz(archive, dest)
    assert message in str(caught.value)
    # The first entry is never replaced.
    first = entries[0][0].name
    if entries[0][0].isdir():
        assert (dest / first).is_dir()
    else:
        assert (dest / first).read_bytes() == b"1"


def test_too_many_entries(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(tmp_path / "many.tgz", [member(f"f{i}", b"x") for i in range(6)])
    with pytest.raises(ExtractError, match="'f5': archive has more than 5 entries"):
        extract_tar_gz(archive, dest, max_files=5)
    ok = tmp_path / "ok"
    ok.mkdir()
    assert len(extract_tar_gz(archive, ok, max_files=6)) == 6


def test_implicit_directories_count_as_entries(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(tmp_path / "deep.tgz", [member("a/b/c/d/e.txt", b"x")])
    with pytest.raises(ExtractError, match=r"'a/b/c/d/e\.txt': archive has more than 3 entries"):
        extract_tar_gz(archive, dest, max_files=3)


def test_a_bomb_is_stopped_at_the_total_limit(tmp_path: Path, dest: Path) -> None:
    zeros = bytes(8 * MIB)
    archive = make_tgz(tmp_path / "bomb.tgz", [member("ok.txt", b"fine"), member("zeros", zeros)])
    assert archive.stat().st_size < 64 * KIB  # compresses to almost nothing
    with pytest.raises(ExtractError, match="'zeros': archive contents exceed 1048576 bytes"):
        extract_tar_gz(archive, dest, max_total_bytes=MIB)
    # Nothing beyond the limit reached the disk.
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) <= MIB


def test_the_total_limit_spans_files(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(
        tmp_path / "two.tgz", [member("a", bytes(600 * KIB)), member("b", bytes(600 * KIB))]
    )
    with pytest.raises(ExtractError, match="'b': archive contents exceed 1048576 bytes"):
        extract_tar_gz(archive, dest, max_total_bytes=MIB)
    assert (dest / "a").stat().st_size == 600 * KIB
    assert not (dest / "b").exists()


def test_the_per_file_limit(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(tmp_path / "big.tgz", [member("big", bytes(2 * MIB))])
    with pytest.raises(ExtractError, match="'big': 2097152 bytes is larger than the limit of"):
        extract_tar_gz(archive, dest, max_file_bytes=MIB)
    assert not (dest / "big").exists()


def test_a_truncated_member_is_an_error(tmp_path: Path, dest: Path) -> None:
    info = tarfile.TarInfo("cut.txt")
    info.size = 10_000
    raw = info.tobuf(tarfile.USTAR_FORMAT) + b"x" * 1000  # the data stops early
    with pytest.raises(ExtractError, match="invalid archive: unexpected end of data"):
        extract_tar_gz(gz(tmp_path / "cut.tgz", raw), dest)


def test_an_oversized_extended_header_is_refused(tmp_path: Path, dest: Path) -> None:
    # A pax header is read into memory whole: a huge one must be refused before that.
    info = tarfile.TarInfo("x" * (MAX_HEADER_BYTES + 10))
    info.size = 1
    with tarfile.open(tmp_path / "pax.tgz", "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ExtractError, match=r"extended header of \d+ bytes is larger than"):
        extract_tar_gz(tmp_path / "pax.tgz", dest)


def test_a_chain_of_extended_headers_is_refused(tmp_path: Path, dest: Path) -> None:
    record = b"20 comment=xxxxxxxx\n"
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = len(record)
    block = header.tobuf(tarfile.USTAR_FORMAT) + record + b"\0" * (512 - len(record))
    final = tarfile.TarInfo("a.txt")
    final.size = 1
    raw = block * 5000 + final.tobuf(tarfile.USTAR_FORMAT) + b"x" + b"\0" * 1535
    with pytest.raises(ExtractError, match="more than 16 extended headers in a row"):
        extract_tar_gz(gz(tmp_path / "chain.tgz", raw), dest)


def longname_block(size: int) -> bytes:
    header = tarfile.TarInfo("././@LongLink")
    header.type = tarfile.GNUTYPE_LONGNAME
    header.size = size
    data = b"n" * (size - 1) + b"\0"
    padding = b"\0" * (-size % 512)
    return header.tobuf(tarfile.GNU_FORMAT) + data + padding


def test_everything_decompressed_is_bounded(tmp_path: Path, dest: Path) -> None:
    # Long-name headers are not file contents, yet they decompress to bytes too: a run of
    # them (each under the header limit) still hits the bound on the whole stream.
    final = tarfile.TarInfo("a.txt")
    final.size = 1
    raw = longname_block(MAX_HEADER_BYTES) * 12 + final.tobuf(tarfile.GNU_FORMAT)
    raw += b"x" + b"\0" * 1535
    archive = gz(tmp_path / "names.tgz", raw)
    with pytest.raises(ExtractError, match="archive decompresses to more than"):
        extract_tar_gz(archive, dest, max_files=1, max_total_bytes=MIB)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not gzip at all", "invalid gzip data: Not a gzipped file"),
        (b"", "invalid archive: empty file"),
        (gzip.compress(b"garbage" * 200, mtime=0), "invalid archive"),
    ],
)
def test_corrupt_archives(tmp_path: Path, dest: Path, content: bytes, message: str) -> None:
    path = tmp_path / "corrupt.tgz"
    path.write_bytes(content)
    with pytest.raises(ExtractError) as caught:
        extract_tar_gz(path, dest)
    assert message in str(caught.value)
    assert list(dest.iterdir()) == []


def test_truncated_gzip_after_a_member(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(tmp_path / "full.tgz", [member("a.txt", os.urandom(200 * KIB))])
    data = archive.read_bytes()
    (tmp_path / "half.tgz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExtractError, match="invalid"):
        extract_tar_gz(tmp_path / "half.tgz", dest)


def test_destination_must_be_an_empty_directory(tmp_path: Path, dest: Path) -> None:
    archive = make_tgz(tmp_path / "a.tgz", [member("a", b"a")])
    (dest / "existing").write_text("x")
    with pytest.raises(ExtractError, match="is not empty"):
        extract_tar_gz(archive, dest)
    with pytest.raises(ExtractError, match="No such file or directory"):
        extract_tar_gz(archive, tmp_path / "missing")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ExtractError, match="is not a directory"):
        extract_tar_gz(archive, tmp_path / "link")
    assert list((tmp_path / "elsewhere").iterdir()) == []


# -- sha256 and checksums files -------------------------------------------------------------


def test_sha256_file(tmp_path: Path) -> None:
    assert sha256_file(FIXTURES / "good" / "test.txt") == TEST_CONTENT_SHA
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * MIB + 17))
    assert sha256_file(big) == hashlib.sha256(big.read_bytes()).hexdigest()


def sums_checksum(directory: Path) -> str:
    return sha256_file(directory / "SHA256SUMS")


def test_verify_sums_on_the_corpus_fixtures() -> None:
    good = FIXTURES / "good"
    verify_sums(good, "SHA256SUMS", sums_checksum(good))
    verify_sums(good, "SHA256SUMS", sums_checksum(good).upper())
    verify_sums(good, "SHA256SUMS", None)
    with pytest.raises(VerifyError, match=r"1 of 1 files failed verification: test.txt: checksum"):
        verify_sums(FIXTURES / "bad", "SHA256SUMS", sums_checksum(FIXTURES / "bad"))
    with pytest.raises(VerifyError, match="checksums file SHA256SUMS does not exist"):
        verify_sums(FIXTURES / "incomplete", "SHA256SUMS", sums_checksum(good))
    with pytest.raises(VerifyError, match="SHA256SUMS has an invalid checksum"):
        verify_sums(good, "SHA256SUMS", "0" * 64)
    with pytest.raises(VerifyError, match="no checksum given"):
        verify_sums(good, "SHA256SUMS", " ")


@pytest.fixture
def install(tmp_path: Path) -> Path:
    root = tmp_path / "install"
    shutil.copytree(FIXTURES / "good", root)
    for path in [root, *root.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (root / "sub").mkdir()
    (root / "sub" / "a").write_text("A")
    return root


def write_sums(root: Path, text: str) -> str:
    (root / "SHA256SUMS").write_text(text)
    return sums_checksum(root)


def test_sums_formats(install: Path) -> None:
    a_sum = hashlib.sha256(b"A").hexdigest()
    text = (
        f"{TEST_CONTENT_SHA}  test.txt\r\n"  # CRLF line endings
        f"{a_sum.upper()} *sub/a\n"  # binary marker, upper-case hex
        "\n"
        f"{a_sum}\t./sub/a\n"
    )
    verify_sums(install, "SHA256SUMS", write_sums(install, text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("garbage\n", "SHA256SUMS line 1 is malformed: 'garbage'"),
        (f"{TEST_CONTENT_SHA}test.txt\n", "line 1 is malformed"),
        (f"{TEST_CONTENT_SHA[:-1]}  test.txt\n", "line 1 is malformed"),
        (f"{TEST_CONTENT_SHA}  test.txt\nzz  \n", "line 2 is malformed"),
        ("\n\n", "SHA256SUMS lists no files"),
        (f"{TEST_CONTENT_SHA}  ../good/test.txt\n", "'../good/test.txt' is outside the directory"),
        (f"{TEST_CONTENT_SHA}  /etc/hostname\n", "'/etc/hostname' is outside the directory"),
        (
            f"{TEST_CONTENT_SHA}  missing.txt\n",
            "1 of 1 files failed verification: missing.txt: missing",
        ),
        (f"{TEST_CONTENT_SHA}  sub\n", "sub: not a regular file"),
        (
            f"{TEST_CONTENT_SHA}  test.txt\n{TEST_CONTENT_SHA}  sub/a\n{TEST_CONTENT_SHA}  nope\n",
            "2 of 3 files failed verification: sub/a: checksum mismatch; nope: missing",
        ),
    ],
)
def test_sums_failures(install: Path, text: str, message: str) -> None:
    checksum = write_sums(install, text)
    with pytest.raises(VerifyError) as caught:
        verify_sums(install, "SHA256SUMS", checksum)
    assert message in str(caught.value)


def test_sums_paths_through_symlinks_must_stay_inside(install: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("test content")
    (install / "escape").symlink_to(tmp_path / "outside.txt")
    checksum = write_sums(install, f"{TEST_CONTENT_SHA}  escape\n")
    with pytest.raises(VerifyError, match="'escape' is outside the directory"):
        verify_sums(install, "SHA256SUMS", checksum)


def test_sums_file_itself_must_be_inside_and_regular(install: Path, tmp_path: Path) -> None:
    with pytest.raises(VerifyError, match="is not inside"):
        verify_sums(install, "../SHA256SUMS", None)
    with pytest.raises(VerifyError, match="is not inside"):
        verify_sums(install, "/etc/hostname", None)
    with pytest.raises(VerifyError, match="checksums file sub is not a regular file"):
        verify_sums(install, "sub", None)
    os.mkfifo(install / "fifo")
    with pytest.raises(VerifyError, match="fifo is not a regular file"):
        verify_sums(install, "fifo", None)
    with pytest.raises(VerifyError, match="does not exist"):
        verify_sums(tmp_path / "nowhere", "SHA256SUMS", None)
    (install / "SHA256SUMS").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(VerifyError, match="is not UTF-8 text"):
        verify_sums(install, "SHA256SUMS", None)


# -- replacing a directory ------------------------------------------------------------------


def test_replace_tree_swaps_and_keeps_the_old_aside(tmp_path: Path) -> None:
    new, final, aside = tmp_path / "new", tmp_path / "final", tmp_path / "aside"
    new.mkdir()
    (new / "v").write_text("2")
    final.mkdir()
    (final / "v").write_text("1")
    replace_tree(new, final, aside)
    assert (final / "v").read_text() == "2"
    assert (aside / "v").read_text() == "1"
    assert not new.exists()


def test_replace_tree_without_a_previous_install(tmp_path: Path) -> None:
    new, final = tmp_path / "new", tmp_path / "final"
    new.mkdir()
    replace_tree(new, final, tmp_path / "aside")
    assert final.is_dir()
    assert not (tmp_path / "aside").exists()


def test_replace_tree_puts_the_old_one_back_when_the_new_cannot_move(tmp_path: Path) -> None:
    final, aside = tmp_path / "final", tmp_path / "aside"
    final.mkdir()
    (final / "v").write_text("1")
    before = tree(final)
    with pytest.raises(FileNotFoundError):
        replace_tree(tmp_path / "does-not-exist", final, aside)
    assert tree(final) == before
    assert not aside.exists()


def installs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A new tree (v=2) staged, an old install (v=1) in place, and the aside path."""
    new, final, aside = tmp_path / "stage" / "app", tmp_path / "app", tmp_path / "stage" / "old"
    new.mkdir(parents=True)
    (new / "v").write_text("2")
    final.mkdir()
    (final / "v").write_text("1")
    return new, final, aside


def test_replace_tree_exchanges_in_one_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, final, aside = installs(tmp_path)
    renames: list[tuple[str, str]] = []
    real_rename = os.rename

    def rename(source: str, target: str) -> None:
        renames.append((os.fspath(source), os.fspath(target)))
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    replace_tree(new, final, aside)
    assert (final / "v").read_text() == "2"
    assert (aside / "v").read_text() == "1"
    # The install never left: the only rename moves the old tree, already swapped out.
    assert renames == [(str(new), str(aside))]


# Killed before the exchange, or after it, before the old tree is moved aside: the install is
# whole either way (there is no moment between two renames any more).
CRASH = """
import os, signal, sys
from machinery.core import extract
step = int(sys.argv[4])
calls = []
def kill_at(name, real):
    def wrapper(*args):
        calls.append(name)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)
    return wrapper
os.rename = kill_at("rename", os.rename)
extract.exchange_paths = kill_at("exchange", extract.exchange_paths)
extract.replace_tree(sys.argv[1], sys.argv[2], sys.argv[3])
print(",".join(calls))
"""


@pytest.mark.parametrize("step", [1, 2, 3])
def test_a_kill_during_replace_tree_leaves_an_install(tmp_path: Path, step: int) -> None:
    new, final, aside = installs(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", CRASH, str(new), str(final), str(aside), str(step)],
        capture_output=True,
        text=True,
    )
    assert (final / "v").read_text() in ("1", "2")
    if step <= 2:  # killed before the exchange, or before the old tree is moved aside
        assert done.returncode == -signal.SIGKILL
        assert (final / "v").read_text() == ("1" if step == 1 else "2")
    else:  # there is no third step
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "exchange,rename"


def test_exchange_paths(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    (first / "v").write_text("a")
    second.write_text("b")  # a file and a directory can trade places too
    exchange_paths(first, second)
    assert first.read_text() == "b"
    assert (second / "v").read_text() == "a"
    with pytest.raises(FileNotFoundError):
        exchange_paths(tmp_path / "missing", first)


def test_renameat2_through_the_system_call(tmp_path: Path) -> None:
    call = extract._renameat2_syscall(ctypes.CDLL(None, use_errno=True))
    if call is None:
        pytest.skip("no renameat2 system call number for this machine")
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("a")
    second.write_text("b")
    assert call(extract.AT_FDCWD, bytes(first), extract.AT_FDCWD, bytes(second), 2) == 0
    assert (first.read_text(), second.read_text()) == ("b", "a")
    assert call(extract.AT_FDCWD, bytes(tmp_path / "x"), extract.AT_FDCWD, bytes(first), 2) == -1
    assert ctypes.get_errno() == errno.ENOENT


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS])
def test_replace_tree_falls_back_to_two_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    def refuse(first: object, second: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(extract, "exchange_paths", refuse)
    new, final, aside = installs(tmp_path)
    with caplog.at_level(logging.WARNING, logger="machinery.extract"):
        replace_tree(new, final, aside)
    assert (final / "v").read_text() == "2"
    assert (aside / "v").read_text() == "1"
    assert "using two renames" in caplog.text


def test_replace_tree_without_renameat2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "_renameat2", lambda: None)  # not Linux, or no wrapper
    with pytest.raises(OSError) as raised:
        exchange_paths(tmp_path, tmp_path)
    assert raised.value.errno == errno.ENOSYS
    new, final, aside = installs(tmp_path)
    replace_tree(new, final, aside)
    assert (final / "v").read_text() == "2"


def test_the_fallback_puts_the_old_one_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(first: object, second: object) -> None:
        raise OSError(errno.EINVAL, "not supported")

    monkeypatch.setattr(extract, "exchange_paths", refuse)
    final, aside = tmp_path / "final", tmp_path / "aside"
    final.mkdir()
    (final / "v").write_text("1")
    with pytest.raises(FileNotFoundError):
        replace_tree(tmp_path / "does-not-exist", final, aside)
    assert (final / "v").read_text() == "1"
    assert not aside.exists()


def test_other_exchange_failures_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, final, aside = installs(tmp_path)
    (new / "v").unlink()
    new.rmdir()
    new.write_text("a file where the tree should be")
    monkeypatch.setattr(os, "rename", None)  # no rename may happen
    with pytest.raises(NotADirectoryError):
        replace_tree(new / "sub", final, aside)
    assert (final / "v").read_text() == "1"
    assert not aside.exists()
