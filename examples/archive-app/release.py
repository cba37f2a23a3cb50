#!/usr/bin/env python3
"""Stand-in for a release pipeline and its download server, for the archive-app example.

    release.py publish REQUEST WWW   build the release REQUEST asks for into WWW, serve it, and
                                     print the machine data that points the archive watcher at it
    release.py rollback WWW          print the machine data that points it back at the previous
                                     release (exit 1 when there is none)
    release.py serve WWW             the download server itself (started by the other two)

The release is app/VERSION, app/status ("ok", or "broken" to try a failing health check) and
app/SHA256SUMS, packed as WWW/app-<version>.tgz. The server listens on a free port of 127.0.0.1
only, serves nothing but those archives, and exits after a minute without requests, so it never
outlives its use for long. Only the Python standard library is used.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, NoReturn

VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
ARCHIVE = re.compile(r"^/app-[0-9A-Za-z][0-9A-Za-z._-]{0,63}\.tgz$")
IDLE_SECONDS = 60.0


def fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(1)


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one: data may hold anything."""
    return value if isinstance(value, dict) else {}


def machine_data() -> dict[str, Any]:
    """The machine's data, from the file the exec watcher names in WATCHER_DATA."""
    name = os.environ.get("WATCHER_DATA")
    if not name:
        return {}
    try:
        data = json.loads(Path(name).read_text())
    except (OSError, ValueError):
        return {}
    return mapping(data)


def build(version: str, status: str, www: Path) -> tuple[str, str]:
    """Packs the release; returns the SHA-256 of the archive and of its SHA256SUMS file."""
    files = {"VERSION": f"{version}\n".encode(), "status": f"{status}\n".encode()}
    sums = "".join(f"{hashlib.sha256(body).hexdigest()}  {name}\n" for name, body in files.items())
    files["SHA256SUMS"] = sums.encode()
    buffer = io.BytesIO()
    # No time stamps anywhere: the same release always packs to the same bytes and checksum.
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w") as archive,
    ):
        directory = tarfile.TarInfo("app")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(directory)
        for name, body in files.items():
            member = tarfile.TarInfo(f"app/{name}")
            member.size, member.mode = len(body), 0o644
            archive.addfile(member, io.BytesIO(body))
    payload = buffer.getvalue()
    write_atomically(www / f"app-{version}.tgz", payload)
    return hashlib.sha256(payload).hexdigest(), hashlib.sha256(files["SHA256SUMS"]).hexdigest()


def server_port(www: Path) -> int | None:
    """The port of a download server that answers, or None."""
    try:
        port = int(json.loads((www / "server.json").read_text())["port"])
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return port
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_server(www: Path) -> int:
    port = server_port(www)
    if port is not None:
        return port
    with open(www / "server.log", "ab") as log:
        # A session of its own: the exec watcher kills the command's process group when the
        # command ends, and the server must outlive this command (it exits when idle).
        subprocess.Popen(
            [sys.executable, __file__, "serve", str(www)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        port = server_port(www)
        if port is not None:
            return port
        time.sleep(0.05)
    fail(f"the download server did not start (see {www / 'server.log'})")


def release_data(release: dict[str, Any], port: int) -> dict[str, Any]:
    return {**release, "url": f"http://127.0.0.1:{port}/app-{release['version']}.tgz"}


def publish(request_file: str, www_dir: str) -> None:
    try:
        request = json.loads(Path(request_file).read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read {request_file}: {exc}")
    if not isinstance(request, dict):
        fail(f"{request_file} must hold a JSON object")
    version, status = request.get("version"), request.get("status", "ok")
    if not isinstance(version, str) or not VERSION.match(version):
        fail(f"{request_file}: version must be letters, digits, '.', '_' or '-', not {version!r}")
    if status not in ("ok", "broken"):
        fail(f"{request_file}: status must be 'ok' or 'broken', not {status!r}")
    www = Path(www_dir)
    www.mkdir(parents=True, exist_ok=True)
    checksum, sums = build(version, status, www)
    port = ensure_server(www)
    data = machine_data()
    current = mapping(data.get("release"))
    previous = mapping(data.get("previous_release"))
    if current.get("version") and current.get("version") != version:
        previous = current  # what to roll back to if this release turns out bad
    release = {"version": version, "checksum": checksum, "sums": sums}
    print(json.dumps({"release": release_data(release, port), "previous_release": previous}))


def rollback(www_dir: str) -> None:
    data = machine_data()
    previous = mapping(data.get("previous_release"))
    if not previous.get("version"):
        fail("there is no previous release to roll back to")
    if not isinstance(previous["version"], str) or not VERSION.match(previous["version"]):
        fail(f"the previous release has an invalid version: {previous['version']!r}")
    current = mapping(data.get("release"))
    www = Path(www_dir)
    if not (www / f"app-{previous['version']}.tgz").is_file():
        fail(f"the previous release {previous['version']} is no longer in {www}")
    port = ensure_server(www)
    # The previous release is forgotten once used: a second bad install stops in `failed`
    # instead of rolling back and forth.
    print(
        json.dumps(
            {
                "release": release_data(previous, port),
                "previous_release": {},
                "rolled_back_from": current.get("version", ""),
            }
        )
    )


class ReleaseHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the release archives in its directory and nothing else."""

    def do_GET(self) -> None:
        if not ARCHIVE.match(self.path):
            self.send_error(404)
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        self.send_error(405)


class ReleaseServer(http.server.HTTPServer):
    """Remembers when it last served a request, so that it can stop when idle."""

    last_request = 0.0

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.last_request = time.monotonic()
        super().finish_request(request, client_address)


def serve(www_dir: str) -> None:
    www = Path(www_dir).resolve()
    server = ReleaseServer(
        ("127.0.0.1", 0), lambda *args: ReleaseHandler(*args, directory=str(www))
    )
    server.timeout = 1.0
    server.last_request = time.monotonic()
    # The pid is there to stop the server early: kill "$(jq .pid world/www/server.json)".
    state = {"port": server.server_port, "pid": os.getpid()}
    write_atomically(www / "server.json", json.dumps(state).encode())
    try:
        while time.monotonic() - server.last_request < IDLE_SECONDS:
            server.handle_request()
    finally:
        server.server_close()
    with contextlib.suppress(OSError, ValueError):
        if json.loads((www / "server.json").read_text()).get("port") == server.server_port:
            (www / "server.json").unlink()


def main(argv: list[str]) -> None:
    if len(argv) == 4 and argv[1] == "publish":
        publish(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == "rollback":
        rollback(argv[2])
    elif len(argv) == 3 and argv[1] == "serve":
        serve(argv[2])
    else:
        fail(__doc__.strip().splitlines()[2] if __doc__ else "usage: release.py ...")


if __name__ == "__main__":
    main(sys.argv)
