"""The archive watcher: real archives served by a real HTTP server on 127.0.0.1, scheduling on
the fake clock (downloads are real I/O, so results are awaited with wait_until)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from machinery import __version__
from machinery.agent.localgovernor import LocalGovernor
from machinery.core.clock import FakeClock
from machinery.core.machine import Machine
from machinery.watchers import archive as archive_module
from machinery.watchers.archive import ArchiveWatcher, parse_byte_size, redact_url
from machinery.watchers.registry import check_manifest
from tests.support import Recorder, make_machine, running, wait_until, write_machine

MIB = 1024 * 1024

# -- a small HTTP server --------------------------------------------------------------------


@dataclass
class Served:
    body: bytes
    send_length: bool = True


@dataclass
class ArchiveServer:
    """Serves ``files`` by path; optional basic auth; ``/hang`` never answers."""

    port: int = 0
    files: dict[str, Served] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    credentials: tuple[str, str] | None = None
    requests: list[dict[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, *, send_length: bool = True) -> str:
        self.files[path] = Served(body, send_length)
        return self.url(path)

    def downloads(self, path: str) -> int:
        return sum(1 for r in self.requests if r["path"] == path)


def _handler(server: ArchiveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            server.requests.append(
                {
                    "path": self.path,
                    "user-agent": self.headers.get("User-Agent", ""),
                    "authorization": self.headers.get("Authorization", ""),
                    "accept-encoding": self.headers.get("Accept-Encoding", ""),
                }
            )
            if self.path == "/hang":
                server.release.wait(30)
                return
            if server.credentials is not None:
                token = base64.b64encode(":".join(server.credentials).encode()).decode()
                if self.headers.get("Authorization") != f"Basic {token}":
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="archives"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            if self.path in server.redirects:
                self.send_response(302)
                self.send_header("Location", server.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            served = server.files.get(self.path)
            if served is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            if served.send_length:
                self.send_header("Content-Length", str(len(served.body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(served.body)

    return Handler


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    state = ArchiveServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


# -- archives ----------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Archive:
    data: bytes
    checksum: str  # of the archive
    sums: str  # of its SHA256SUMS


Entry = tuple[tarfile.TarInfo, bytes | None]


def entry(
    name: str, data: bytes | None = b"", kind: bytes = tarfile.REGTYPE, **extra: Any
) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in extra.items():
        setattr(info, key, value)
    if kind == tarfile.REGTYPE:
        info.size = len(data or b"")
    return info, data


def tgz(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def build(
    files: dict[str, bytes],
    *,
    creates: str = "app",
    extra: list[Entry] | None = None,
    sums_override: bytes | None = None,
) -> Archive:
    """An archive creating ``creates/`` with ``files`` and a SHA256SUMS listing them."""
    sums = sums_override
    if sums is None:
        sums = "".join(f"{sha(data)}  {name}\n" for name, data in sorted(files.items())).encode()
    entries = [entry(creates, None, tarfile.DIRTYPE)]
    entries += [entry(f"{creates}/{name}", data) for name, data in files.items()]
    entries.append(entry(f"{creates}/SHA256SUMS", sums))
    entries += extra or []
    data = tgz(entries)
    return Archive(data, sha(data), sha(sums))


V1 = {"machine.yaml": b"name: one\n", "bin/run.sh": b"#!/bin/sh\necho v1\n"}
V2 = {"machine.yaml": b"name: two\n", "bin/run.sh": b"#!/bin/sh\necho v2\n", "new.txt": b"n"}


def tree_digest(root: Path) -> str:
    """A hash of everything under root: names, types, permissions and contents."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(f"{stat.S_IFMT(info.st_mode)}:{stat.S_IMODE(info.st_mode)}".encode())
        if stat.S_ISREG(info.st_mode):
            digest.update(path.read_bytes())
        elif stat.S_ISLNK(info.st_mode):
            digest.update(os.readlink(path).encode())
    return digest.hexdigest()


# -- machines ----------------------------------------------------------------------------------

MACHINE = """\
name: deployer
version: 1.0.0
initial_state: MANAGE
transitions:
  - name: deployed
    from: [MANAGE, FAILED]
    destination: MANAGE
  - name: failed
    from: [MANAGE, FAILED]
    destination: {fail_destination}
  - name: maintenance
    from: [MANAGE, FAILED]
    destination: MAINTENANCE
  - name: resume
    from: [MAINTENANCE]
    destination: MANAGE
watchers:
  - name: download
    type: archive
    state_match: [MANAGE, FAILED]
    success_transition: deployed
    fail_transition: failed
{interval}    properties:
{properties}
"""

# The usual machines-watcher style: everything that changes comes from machine data.
DATA_PROPERTIES = """\
source: '{{ lookup "data.source" "" }}'
checksum: '{{ lookup "data.checksum" "" }}'
creates: app
target: store
verify: SHA256SUMS
verify_checksum: '{{ lookup "data.sums" "" }}'
"""


def machine_dir(
    tmp_path: Path,
    properties: str = DATA_PROPERTIES,
    *,
    interval: str | None = "10s",
    fail_destination: str = "MANAGE",
) -> Path:
    body = "\n".join("      " + line for line in properties.strip().splitlines())
    text = MACHINE.format(
        properties=body,
        interval=f"    interval: {interval}\n" if interval else "",
        fail_destination=fail_destination,
    )
    return write_machine(tmp_path / "deployer", text)


def publish(machine: Machine, server: ArchiveServer, path: str, archive: Archive) -> None:
    """Serve ``archive`` at ``path`` and point the machine's data at it."""
    machine.data.update(
        {
            "source": server.serve(path, archive.data),
            "checksum": archive.checksum,
            "sums": archive.sums,
        }
    )


def watcher(machine: Machine) -> ArchiveWatcher:
    found = machine.watchers[0]
    assert isinstance(found, ArchiveWatcher)
    return found


def outcomes(recorder: Recorder) -> list[str]:
    return recorder.outcomes("download")


async def settle_outcomes(recorder: Recorder, count: int) -> list[str]:
    await wait_until(lambda: len(outcomes(recorder)) >= count, what=f"{count} published states")
    return outcomes(recorder)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def staging_leftovers(directory: Path) -> list[str]:
    staging = directory / "store" / "tmp"
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


# -- the happy path ------------------------------------------------------------------------


async def test_downloads_at_start_then_verifies_on_every_interval(
    tmp_path: Path, server: ArchiveServer, clock: FakeClock, recorder: Recorder
) -> None:
    directory = machine_dir(tmp_path)
    machine = make_machine(directory, clock=clock, recorder=recorder)
    good = build(V1)
    publish(machine, server, "/app-1.tgz", good)
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["downloaded"]
        install = directory / "store" / "app"
        assert (install / "machine.yaml").read_bytes() == b"name: one\n"
        assert (install / "bin" / "run.sh").read_bytes() == b"#!/bin/sh\necho v1\n"
        assert stat.S_IMODE((directory / "store").stat().st_mode) == 0o700
        assert staging_leftovers(directory) == []

        state = recorder.states("download")[0]
        payload = state.payload
        assert payload["protocol"] == "io.choria.machine.watcher.archive.v1.state"
        assert payload["type"] == "archive"
        assert payload["machine"] == "deployer"
        assert payload["name"] == "download"
        assert payload["identity"] == "node1.example.net"
        assert payload["timestamp"] == int(clock.now())
        assert list(payload)[-4:] == ["source", "creates", "previous_outcome", "previous_run_time"]
        assert payload["source"] == server.url("/app-1.tgz")
        assert payload["creates"] == "app"
        assert payload["previous_outcome"] == "downloaded"
        assert isinstance(payload["previous_run_time"], int)
        assert payload["previous_run_time"] > 0
        seconds = payload["previous_run_time"] / 1e9
        assert state.text == (
            f"node1.example.net deployer#download source: {server.url('/app-1.tgz')}, "
            f"previous: downloaded ran: {seconds:.3f}s"
        )
        assert server.requests[0]["user-agent"] == f"machinery Archive Watcher {__version__}"
        assert server.requests[0]["accept-encoding"] == "identity"
        assert server.requests[0]["authorization"] == ""

        # Every interval re-verifies and publishes "verified" (as Choria does).
        await clock.advance(9.9)
        assert outcomes(recorder) == ["downloaded"]
        await clock.advance(0.1)
        assert await settle_outcomes(recorder, 2) == ["downloaded", "verified"]
        await clock.advance(10)
        assert await settle_outcomes(recorder, 3) == ["downloaded", "verified", "verified"]
        assert server.downloads("/app-1.tgz") == 1
        status = watcher(machine).status
        assert status.outcomes == {"downloaded": 1, "verified": 2}
        assert status.last_error is None
        assert machine.state == "MANAGE"


async def test_without_an_interval_it_runs_at_start_and_on_state_changes(
    tmp_path: Path, server: ArchiveServer, clock: FakeClock, recorder: Recorder
) -> None:
    machine = make_machine(machine_dir(tmp_path, interval=None), clock=clock, recorder=recorder)
    publish(machine, server, "/a.tgz", build(V1))
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["downloaded"]
        await clock.advance(86400)
        assert outcomes(recorder) == ["downloaded"]
        # Leaving the watched states: the forced check is skipped and publishes nothing.
        await machine.transition("maintenance")
        await wait_until(lambda: watcher(machine).status.outcome == "skipped")
        assert outcomes(recorder) == ["downloaded"]
        # Coming back forces a check right away.
        await machine.transition("resume")
        assert await settle_outcomes(recorder, 2) == ["downloaded", "verified"]
        assert watcher(machine).status.outcomes == {"downloaded": 1, "skipped": 1, "verified": 1}


async def test_not_watching_at_start_is_skipped_silently(
    tmp_path: Path, server: ArchiveServer, clock: FakeClock, recorder: Recorder
) -> None:
    machine = make_machine(
        machine_dir(tmp_path), clock=clock, recorder=recorder, initial_state="MAINTENANCE"
    )
    publish(machine, server, "/a.tgz", build(V1))
    async with running(machine):
        await wait_until(lambda: watcher(machine).status.runs == 1)
        await clock.advance(30)
        assert watcher(machine).status.outcomes == {"skipped": 4}
        assert outcomes(recorder) == []
        assert server.requests == []
        assert watcher(machine).state_fields()["previous_outcome"] == "skipped"


async def test_a_damaged_install_is_repaired(
    tmp_path: Path, server: ArchiveServer, clock: FakeClock, recorder: Recorder
) -> None:
    directory = machine_dir(tmp_path)
    machine = make_machine(directory, clock=clock, recorder=recorder)
    good = build(V1)
    publish(machine, server, "/a.tgz", good)
    install = directory / "store" / "app"
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["downloaded"]
        pristine = tree_digest(install)

        (install / "bin" / "run.sh").unlink()  # a listed file goes missing
        await clock.advance(10)
        assert await settle_outcomes(recorder, 2) == ["downloaded", "downloaded"]
        assert tree_digest(install) == pristine

        (install / "machine.yaml").write_bytes(b"tampered")  # a listed file changes
        await clock.advance(10)
        assert await settle_outcomes(recorder, 3) == ["downloaded"] * 3
        assert tree_digest(install) == pristine

        (install / "SHA256SUMS").write_bytes(b"")  # the sums file itself changes
        await clock.advance(10)
        assert await settle_outcomes(recorder, 4) == ["downloaded"] * 4

        shutil.rmtree(install)  # the whole install disappears
        await clock.advance(10)
        assert await settle_outcomes(recorder, 5) == ["downloaded"] * 5
        assert tree_digest(install) == pristine

        await clock.advance(10)
        assert await settle_outcomes(recorder, 6) == ["downloaded"] * 5 + ["verified"]
        assert server.downloads("/a.tgz") == 5
        assert staging_leftovers(directory) == []


async def test_a_new_release_replaces_the_install(
    tmp_path: Path, server: ArchiveServer, clock: FakeClock, recorder: Recorder
) -> None:
    directory = machine_dir(tmp_path)
    machine = make_machine(directory, clock=clock, recorder=recorder)
    publish(machine, server, "/v1.tgz", build(V1))
    install = directory / "store" / "app"
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["downloaded"]
        (directory / "store" / "unrelated").mkdir()  # neighbours are left alone
        # Entries beside the creates directory are not installed.
        publish(machine, server, "/v2.tgz", build(V2, extra=[entry("README", b"top level")]))
        await clock.advance(10)
        assert await settle_outcomes(recorder, 2) == ["downloaded", "downloaded"]
        assert (install / "new.txt").read_bytes() == b"n"
        assert (install / "machine.yaml").read_bytes() == b"name: two\n"
        assert recorder.states("download")[-1].payload["source"] == server.url("/v2.tgz")
        assert sorted(p.name for p in (directory / "store").iterdir()) == [
            "app",
            "tmp",
            "unrelated",
        ]
        assert staging_leftovers(directory) == []


async def test_without_verify_an_existing_directory_is_enough(
    tmp_path: Path, server: ArchiveServer, clock: FakeClock, recorder: Recorder
) -> None:
    good = build(V1)
    url = server.serve("/a.tgz", good.data)
    props = f"source: {url}\nchecksum: {good.checksum}\ncreates: app\ntarget: {tmp_path / 'abs'}\n"
    directory = machine_dir(tmp_path, props)
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["downloaded"]
        # An absolute target is used as it is.
        assert (tmp_path / "abs" / "app" / "machine.yaml").read_bytes() == b"name: one\n"
        (tmp_path / "abs" / "app" / "machine.yaml").unlink()
        await clock.advance(10)
        assert await settle_outcomes(recorder, 2) == ["downloaded", "verified"]


async def test_redirects_are_followed(
    tmp_path: Path, server: ArchiveServer, clock: FakeClock, recorder: Recorder
) -> None:
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    good = build(V1)
    server.serve("/real.tgz", good.data)
    server.redirects["/latest.tgz"] = "/real.tgz"
    machine.data.update(
        {"source": server.url("/latest.tgz"), "checksum": good.checksum, "sums": good.sums}
    )
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["downloaded"]
        assert [r["path"] for r in server.requests] == ["/latest.tgz", "/real.tgz"]


# -- failures never touch the previous install ----------------------------------------------


def _bad_case(tmp_path: Path, case: str) -> tuple[Archive, str]:
    v2 = build(V2)
    not_gzip = b"this is not a tarball"
    cases: dict[str, Callable[[], tuple[Archive, str]]] = {
        "corrupt": lambda: (Archive(not_gzip, sha(not_gzip), v2.sums), "invalid gzip data"),
        "wrong checksum": lambda: (
            Archive(v2.data, "0" * 64, v2.sums),
            f"archive checksum {v2.checksum} != {'0' * 64} mismatch",
        ),
        "dotdot": lambda: (build(V2, extra=[entry("../x", b"escape")]), "'../x': '..' in names"),
        "dotdot inside": lambda: (
            build(V2, extra=[entry("app/../../../x", b"escape")]),
            "'app/../../../x': '..' in names",
        ),
        "absolute": lambda: (
            build(V2, extra=[entry(f"{tmp_path}/abs", b"escape")]),
            f"'{tmp_path}/abs': absolute names are not allowed",
        ),
        "symlink": lambda: (
            build(V2, extra=[entry("app/link", None, tarfile.SYMTYPE, linkname="/etc/passwd")]),
            "'app/link': symbolic links are not allowed",
        ),
        "hardlink": lambda: (
            build(V2, extra=[entry("app/hard", None, tarfile.LNKTYPE, linkname="app/new.txt")]),
            "'app/hard': hard links are not allowed",
        ),
        "device": lambda: (
            build(V2, extra=[entry("app/null", None, tarfile.CHRTYPE, devmajor=1, devminor=3)]),
            "'app/null': device files are not allowed",
        ),
        "fifo": lambda: (
            build(V2, extra=[entry("app/pipe", None, tarfile.FIFOTYPE)]),
            "'app/pipe': named pipes are not allowed",
        ),
        "bomb": lambda: (
            build(V2, extra=[entry("app/zeros", bytes(8 * MIB))]),
            "'app/zeros': archive contents exceed 1048576 bytes",
        ),
        "too many files": lambda: (
            build(V2, extra=[entry(f"app/f{i}", b"x") for i in range(40)]),
            "archive has more than 30 entries",
        ),
        "wrong verify_checksum": lambda: (
            Archive(v2.data, v2.checksum, "1" * 64),
            "verifying the extracted archive failed: checksums file SHA256SUMS has an invalid",
        ),
        "content mismatch": lambda: (
            build(V2, sums_override=f"{'2' * 64}  new.txt\n".encode()),
            "verifying the extracted archive failed: 1 of 1 files failed verification: "
            "new.txt: checksum mismatch",
        ),
        "no creates": lambda: (build(V2, creates="other"), "does not create the directory app"),
        "duplicate": lambda: (
            build(V2, extra=[entry("app/new.txt", b"again")]),
            "'app/new.txt': duplicate entry",
        ),
    }
    return cases[case]()


BAD_CASES = [
    "corrupt",
    "wrong checksum",
    "dotdot",
    "dotdot inside",
    "absolute",
    "symlink",
    "hardlink",
    "device",
    "fifo",
    "bomb",
    "too many files",
    "wrong verify_checksum",
    "content mismatch",
    "no creates",
    "duplicate",
]


@pytest.mark.parametrize("case", BAD_CASES)
async def test_a_bad_archive_leaves_the_previous_install_untouched(
    tmp_path: Path,
    server: ArchiveServer,
    clock: FakeClock,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    monkeypatch.setattr(archive_module, "MAX_EXTRACTED_BYTES", MIB)
    monkeypatch.setattr(archive_module, "MAX_FILES", 30)
    bad, message = _bad_case(tmp_path, case)
    directory = machine_dir(tmp_path)
    machine = make_machine(directory, clock=clock, recorder=recorder)
    publish(machine, server, "/v1.tgz", build(V1))
    install = directory / "store" / "app"
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["downloaded"]
        before = tree_digest(directory / "store")

        publish(machine, server, "/bad.tgz", bad)
        await clock.advance(10)
        assert await settle_outcomes(recorder, 2) == ["downloaded", "error"]
        status = watcher(machine).status
        assert status.last_error is not None
        assert message in status.last_error
        assert tree_digest(directory / "store") == before
        assert (install / "machine.yaml").read_bytes() == b"name: one\n"
        assert staging_leftovers(directory) == []
        assert not (tmp_path / "x").exists()
        assert not (tmp_path / "abs").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["deployer"]
        assert recorder.states("download")[-1].payload["source"] == server.url("/bad.tgz")

        # Only a good archive is ever installed.
        publish(machine, server, "/v2.tgz", build(V2))
        await clock.advance(10)
        assert await settle_outcomes(recorder, 3) == ["downloaded", "error", "downloaded"]
        assert (install / "machine.yaml").read_bytes() == b"name: two\n"
        assert staging_leftovers(directory) == []


async def test_http_errors(
    tmp_path: Path, server: ArchiveServer, clock: FakeClock, recorder: Recorder
) -> None:
    machine = make_machine(machine_dir(tmp_path), clock=clock, recorder=recorder)
    good = build(V1)
    machine.data.update(
        {"source": server.url("/missing.tgz"), "checksum": good.checksum, "sums": good.sums}
    )
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["error"]
        assert watcher(machine).status.last_error == "download failed: HTTP 404 Not Found"
        machine.data.update({"source": "http://127.0.0.1:1/nothing-listens-here.tgz"})
        await clock.advance(10)
        assert await settle_outcomes(recorder, 2) == ["error", "error"]
        assert (watcher(machine).status.last_error or "").startswith("download failed: ")
        machine.data.update({"source": ""})
        await clock.advance(10)
        assert await settle_outcomes(recorder, 3) == ["error"] * 3
        assert watcher(machine).status.last_error == "source template resulted in an empty string"
        machine.data.update({"source": server.url("/x"), "checksum": ""})
        await clock.advance(10)
        assert await settle_outcomes(recorder, 4) == ["error"] * 4
        assert watcher(machine).status.last_error == "checksum template resulted in an empty string"
        machine.data.update({"checksum": good.checksum, "sums": ""})
        await clock.advance(10)
        assert await settle_outcomes(recorder, 5) == ["error"] * 5
        assert (
            watcher(machine).status.last_error
            == "verify_checksum template resulted in an empty string"
        )
        assert not (tmp_path / "deployer" / "store" / "app").exists()
        assert staging_leftovers(tmp_path / "deployer") == []


async def test_errors_fire_the_fail_transition_and_recovery_the_success_one(
    tmp_path: Path, server: ArchiveServer, clock: FakeClock, recorder: Recorder
) -> None:
    directory = machine_dir(tmp_path, fail_destination="FAILED")
    machine = make_machine(directory, clock=clock, recorder=recorder)
    good = build(V1)
    machine.data.update(
        {"source": server.url("/later.tgz"), "checksum": good.checksum, "sums": good.sums}
    )
    async with running(machine):
        # The error moves the machine to FAILED; that state change forces another check,
        # which fails again (a self-transition then, so no third check).
        assert await settle_outcomes(recorder, 2) == ["error", "error"]
        assert machine.state == "FAILED"
        assert recorder.transitions() == [("failed", "MANAGE", "FAILED")]
        server.serve("/later.tgz", good.data)
        await clock.advance(10)
        # Deployed: back to MANAGE, and that state change re-verifies.
        assert await settle_outcomes(recorder, 4) == ["error", "error", "downloaded", "verified"]
        assert machine.state == "MANAGE"
        assert recorder.transitions() == [
            ("failed", "MANAGE", "FAILED"),
            ("deployed", "FAILED", "MANAGE"),
        ]
        assert watcher(machine).status.last_error is None


# -- HTTP details ------------------------------------------------------------------------------


async def test_basic_auth_and_credentials_stay_secret(
    tmp_path: Path,
    server: ArchiveServer,
    clock: FakeClock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.credentials = ("alice", "s3cr3t-pw")
    good = build(V1)
    url = server.serve("/private.tgz", good.data)
    props = DATA_PROPERTIES + 'username: \'{{ lookup "data.user" "" }}\'\npassword: s3cr3t-pw\n'
    machine = make_machine(machine_dir(tmp_path, props), clock=clock, recorder=recorder)
    machine.data.update(
        {"source": url, "checksum": good.checksum, "sums": good.sums, "user": "bob"}
    )
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["error"]
        assert watcher(machine).status.last_error == "download failed: HTTP 401 Unauthorized"
        machine.data.update({"user": "alice"})
        await clock.advance(10)
        assert await settle_outcomes(recorder, 2) == ["error", "downloaded"]
        token = base64.b64encode(b"alice:s3cr3t-pw").decode()
        assert server.requests[-1]["authorization"] == f"Basic {token}"

        # Credentials in the URL work too, and are stripped from everything published.
        (tmp_path / "deployer" / "store" / "app" / "machine.yaml").unlink()
        machine.data.update({"source": server.url("/private.tgz", "alice:s3cr3t-pw@")})
        await clock.advance(10)
        assert await settle_outcomes(recorder, 3) == ["error", "downloaded", "downloaded"]
        assert recorder.states("download")[-1].payload["source"] == url

        machine.data.update({"source": server.url("/nope.tgz", "alice:s3cr3t-pw@")})
        (tmp_path / "deployer" / "store" / "app" / "machine.yaml").unlink()
        await clock.advance(10)
        assert await settle_outcomes(recorder, 4) == ["error", "downloaded", "downloaded", "error"]
    published = " ".join(str(s.payload) + s.text for s in recorder.states())
    assert "s3cr3t" not in published
    assert "s3cr3t" not in caplog.text
    assert "s3cr3t" not in (watcher(machine).status.last_error or "")
    assert "Attempting to download " + server.url("/nope.tgz") in caplog.text


async def test_a_server_that_never_answers_times_out(
    tmp_path: Path,
    server: ArchiveServer,
    clock: FakeClock,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real minimum is 5s; lowered so the test takes a fraction of a second.
    monkeypatch.setattr(archive_module, "MIN_TIMEOUT", 0.2)
    good = build(V1)
    props = DATA_PROPERTIES + "timeout: 300ms\n"
    machine = make_machine(machine_dir(tmp_path, props), clock=clock, recorder=recorder)
    machine.data.update(
        {"source": server.url("/hang"), "checksum": good.checksum, "sums": good.sums}
    )
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["error"]
        assert watcher(machine).status.last_error == "download failed: timed out after 300ms"
        assert staging_leftovers(tmp_path / "deployer") == []


def test_the_timeout_is_at_least_five_seconds(tmp_path: Path) -> None:
    for written, effective in (("1s", 5.0), ("5s", 5.0), ("2m", 120.0)):
        props = DATA_PROPERTIES + f"timeout: {written}\n"
        machine = make_machine(machine_dir(tmp_path / written, props))
        machine.build_watchers()
        assert watcher(machine).download_timeout == effective


@pytest.mark.parametrize("send_length", [True, False])
async def test_the_size_limit(
    tmp_path: Path,
    server: ArchiveServer,
    clock: FakeClock,
    recorder: Recorder,
    send_length: bool,
) -> None:
    big = build({**V1, "blob": os.urandom(64 * 1024)})
    props = DATA_PROPERTIES + "max_size: 32KiB\n"
    machine = make_machine(machine_dir(tmp_path, props), clock=clock, recorder=recorder)
    server.serve("/big.tgz", big.data, send_length=send_length)
    machine.data.update(
        {"source": server.url("/big.tgz"), "checksum": big.checksum, "sums": big.sums}
    )
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["error"]
        error = watcher(machine).status.last_error or ""
        if send_length:
            assert error == (
                f"download failed: the archive is {len(big.data)} bytes, more than the max_size "
                "of 32768"
            )
        else:
            assert (
                error == "download failed: the archive is larger than the max_size of 32768 bytes"
            )
        assert staging_leftovers(tmp_path / "deployer") == []
        assert not (tmp_path / "deployer" / "store" / "app").exists()


# -- governors -----------------------------------------------------------------------------------


GOVERNED = DATA_PROPERTIES + 'governor: \'deploy_{{ lookup "data.region" "x" }}\'\n'


def governor_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The governor-related lines and the download milestones, in order."""
    keep = ("Governor", "Attempting to download", "deployed successfully")
    return [r.getMessage() for r in caplog.records if any(k in r.getMessage() for k in keep)]


def logged_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    prefix = "deployer#download: Governor event: "
    return [
        json.loads(r.getMessage().removeprefix(prefix))
        for r in caplog.records
        if r.getMessage().startswith(prefix)
    ]


async def test_a_governor_slot_is_held_while_downloading(
    tmp_path: Path,
    server: ArchiveServer,
    clock: FakeClock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    governor = LocalGovernor(clock)
    directory = machine_dir(tmp_path, GOVERNED + "governor_timeout: 2m\n")
    machine = make_machine(directory, clock=clock, recorder=recorder)
    machine.node.provide("governor", governor)
    machine.data.update({"region": "eu"})
    publish(machine, server, "/a.tgz", build(V1))
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["downloaded"]
        lines = governor_log(caplog)
        assert lines[0] == (
            "deployer#download: Obtaining a slot in the deploy_eu Governor with 2m0s timeout"
        )
        assert lines[1].startswith("deployer#download: Governor event: ")
        assert lines[2].startswith("deployer#download: Attempting to download ")
        assert lines[3].startswith("deployer#download: Archive ")
        assert lines[4].startswith("deployer#download: Governor event: ")
        assert len(lines) == 5
        enter, exit_ = logged_events(caplog)
        assert enter["event_type"] == "enter"
        assert exit_["event_type"] == "exit"
        assert enter["governor"] == exit_["governor"] == "deploy_eu"
        assert enter["sequence"] == exit_["sequence"] == 1
        assert enter["component"] == "deployer"
        assert (await governor.view("deploy_eu")).holders == []
        # A verified install needs no slot.
        await clock.advance(10)
        assert await settle_outcomes(recorder, 2) == ["downloaded", "verified"]
        assert len(governor_log(caplog)) == 5


async def test_a_governor_that_gives_no_slot_is_an_error(
    tmp_path: Path,
    server: ArchiveServer,
    clock: FakeClock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    governor = LocalGovernor(clock)
    machine = make_machine(machine_dir(tmp_path, GOVERNED), clock=clock, recorder=recorder)
    machine.node.provide("governor", governor)
    publish(machine, server, "/a.tgz", build(V1))
    async with governor.acquire("deploy_x", 0, holder="someone else"), running(machine):
        await wait_until(lambda: governor.waiting("deploy_x") == 1, what="a waiter")
        await clock.advance(299)  # default governor_timeout: 5m
        assert outcomes(recorder) == []
        await clock.advance(1)
        assert await settle_outcomes(recorder, 1) == ["error"]
        assert watcher(machine).status.last_error == (
            "Cannot enter Governor deploy_x: no slot in the deploy_x Governor became free "
            "within 5m0s"
        )
        assert server.requests == []
        [event] = logged_events(caplog)
        assert event["event_type"] == "timeout"
        assert event["sequence"] == 0


async def test_without_a_governor_service_it_downloads_anyway(
    tmp_path: Path,
    server: ArchiveServer,
    clock: FakeClock,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    machine = make_machine(machine_dir(tmp_path, GOVERNED), clock=clock, recorder=recorder)
    publish(machine, server, "/a.tgz", build(V1))
    async with running(machine):
        assert await settle_outcomes(recorder, 1) == ["downloaded"]
        shutil.rmtree(tmp_path / "deployer" / "store" / "app")
        await clock.advance(10)
        assert await settle_outcomes(recorder, 2) == ["downloaded", "downloaded"]
    warnings = [r for r in caplog.records if "no governor service" in r.getMessage()]
    assert len(warnings) == 1  # once, not on every download
    assert warnings[0].levelno == logging.WARNING


# -- definitions ---------------------------------------------------------------------------------


def problems(tmp_path: Path, properties: str, interval: str | None = "10s") -> list[str]:
    directory = machine_dir(tmp_path, properties, interval=interval)
    _, diagnostics = check_manifest(directory)
    # The test machine's FAILED state is unreachable unless asked for; that is not our concern.
    return [
        f"{d.severity.value}: {d.message}"
        for d in diagnostics
        if "can never be reached" not in d.message
    ]


GOOD_SUM = "6ae8a75555209fd6c44157c0aed8016e763ff435a19cf186f76863140143ff72"
BASE = f"source: https://example.net/a.tgz\nchecksum: {GOOD_SUM}\ntarget: store\n"


def test_a_valid_definition_has_no_problems(tmp_path: Path) -> None:
    assert problems(tmp_path, BASE + "creates: app") == []
    assert problems(tmp_path, DATA_PROPERTIES) == []


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        (BASE + "creates: a/b", "creates must be a single directory name, not 'a/b'"),
        (BASE + "creates: '..'", "creates must be a single directory name, not '..'"),
        (BASE + "creates: tmp", "creates cannot be 'tmp'"),
        (BASE + "creates: ''", "creates is required"),
        (
            "source: https://x/a.tgz\nchecksum: ''\ntarget: s\ncreates: a",
            "checksum is required",
        ),
        (f"source: ''\nchecksum: {GOOD_SUM}\ntarget: s\ncreates: a", "source is required"),
        (f"source: https://x\nchecksum: {GOOD_SUM}\ntarget: ''\ncreates: a", "target is required"),
        (BASE + "creates: a\nverify: SHA256SUMS", "verify_checksum is required if verify is set"),
        (
            BASE + f"creates: a\nverify: ../SUMS\nverify_checksum: {GOOD_SUM}",
            "verify must be a relative path inside creates",
        ),
        (BASE + "creates: a\nusername: bob", "password is required when username is given"),
        (
            "source: https://x/a.tgz\nchecksum: abc\ntarget: s\ncreates: a",
            "checksum must be a SHA-256 digest: 64 hexadecimal characters",
        ),
        (
            BASE + "creates: a\nverify: S\nverify_checksum: xyz",
            "verify_checksum must be a SHA-256 digest",
        ),
        (
            f"source: ftp://x/a.tgz\nchecksum: {GOOD_SUM}\ntarget: s\ncreates: a",
            "source must be an http:// or https:// URL",
        ),
        (BASE + "creates: a\nmax_size: 0", "max_size must be larger than 0"),
        (BASE + "creates: a\nmax_size: 12 parsecs", "invalid size '12 parsecs'"),
    ],
)
def test_definition_errors(tmp_path: Path, properties: str, expected: str) -> None:
    found = problems(tmp_path, properties)
    assert any(p.startswith("error: ") and expected in p for p in found), found


def test_an_unknown_property_is_a_warning_as_choria_ignores_it(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE + "creates: a\nunknown: 1")
    assert [p for p in found if "unknown" in p] == [
        "warning: watcher 'download': properties: unknown property 'unknown' is ignored; valid "
        "properties: checksum, creates, governor, governor_timeout, insecure, max_size, password, "
        "source, target, timeout, username, verify, verify_checksum"
    ]


def test_definition_warnings(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE + "creates: a\ntimeout: 1s\ninsecure: true")
    assert "warning: timeout is raised to the minimum of 5s" in found
    assert "warning: TLS certificates of the source are not verified" in found
    assert not any(p.startswith("error") for p in found)


def test_the_interval_is_at_least_ten_seconds(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE + "creates: a", interval="5s")
    assert any("interval 5s is too small" in p and "minimum 10s" in p for p in found), found


def test_required_properties(tmp_path: Path) -> None:
    found = problems(tmp_path, "creates: a")
    for key in ("source", "checksum", "target"):
        assert any(key in p and p.startswith("error") for p in found), (key, found)


# -- small helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("512MiB", 512 * MIB),
        ("1 GiB", 1024**3),
        ("10MB", 10_000_000),
        ("2kib", 2048),
        ("7B", 7),
    ],
)
def test_parse_byte_size(text: Any, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5GiB", "GiB", "10 parsecs", True, None])
def test_parse_byte_size_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_byte_size(text)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@host/a.tgz", "https://host/a.tgz"),
        ("https://u:p@ss@host:8080/a.tgz?x=1", "https://host:8080/a.tgz?x=1"),
        ("https://host/a@b.tgz", "https://host/a@b.tgz"),
        ("http://host/a.tgz", "http://host/a.tgz"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_describe_payload() -> None:
    payload = {
        "identity": "n1",
        "machine": "m",
        "name": "w",
        "source": "https://host/a.tgz",
        "previous_outcome": "verified",
        "previous_run_time": 1_234_567_890,
    }
    assert ArchiveWatcher.describe_payload(payload) == (
        "n1 m#w source: https://host/a.tgz, previous: verified ran: 1.235s"
    )
