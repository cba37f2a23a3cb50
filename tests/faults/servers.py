"""Small servers the fault tests and the soak run on loopback: an HTTP server for archives and a
TCP proxy that delays (or cuts) the bytes it forwards."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import random
import tarfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["AppArchive", "ArchiveServer", "DelayProxy", "make_app_archive", "tree_digest"]


@dataclass(frozen=True)
class AppArchive:
    """A ``.tar.gz`` creating ``app/`` with a SHA256SUMS file listing everything else."""

    data: bytes
    sha256: str
    sums_sha256: str
    files: dict[str, str]  # path inside app/ -> sha256 of its contents (SHA256SUMS included)


def make_app_archive(files: int = 12, size: int = 64 * 1024, seed: int = 1) -> AppArchive:
    rng = random.Random(seed)
    contents = {f"file{i:02d}.bin": rng.randbytes(size) for i in range(files)}
    contents["data.txt"] = b"the file the tests keep deleting\n"
    sums = "".join(
        f"{hashlib.sha256(body).hexdigest()}  {name}\n" for name, body in sorted(contents.items())
    ).encode()
    contents["SHA256SUMS"] = sums
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        directory = tarfile.TarInfo("app")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        tar.addfile(directory)
        for name, body in sorted(contents.items()):
            info = tarfile.TarInfo(f"app/{name}")
            info.size = len(body)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(body))
    data = buffer.getvalue()
    return AppArchive(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        sums_sha256=hashlib.sha256(sums).hexdigest(),
        files={name: hashlib.sha256(body).hexdigest() for name, body in contents.items()},
    )


def tree_digest(root: Path) -> dict[str, str] | None:
    """Every regular file under ``root`` (relative path -> sha256), None if ``root`` is absent.

    Anything that is not a regular file or a directory is reported as ``"<odd>"``.
    """
    if not root.is_dir():
        return None
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            found[name] = "<odd>"
        elif path.is_file():
            try:
                found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                found[name] = "<unreadable>"
    return found


class ArchiveServer:
    """Serves one archive at ``/app.tgz`` on 127.0.0.1 from a thread; counts downloads."""

    def __init__(self, archive: bytes, *, slow: float = 0.0) -> None:
        self.archive = archive
        self.slow = slow  # seconds between 16 KiB chunks
        self.downloads = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/app.tgz":
                    self.send_error(404)
                    return
                owner.downloads += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(owner.archive)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    if not owner.slow:
                        self.wfile.write(owner.archive)
                        return
                    for start in range(0, len(owner.archive), 16384):
                        self.wfile.write(owner.archive[start : start + 16384])
                        self.wfile.flush()
                        time.sleep(owner.slow)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/app.tgz"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ArchiveServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that holds every chunk ``delay`` seconds in each direction.

    ``cut()`` drops every connection (a network partition while it lasts: new connections are
    refused until ``heal()``). Runs on the current event loop.
    """

    def __init__(self, target_port: int, delay: float = 0.05) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self.bytes = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.cut()

    def cut(self) -> None:
        self._cut = True
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def heal(self) -> None:
        self._cut = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(
            self._pump(reader, upstream_writer),
            self._pump(upstream_reader, writer),
            return_exceptions=True,
        )
        for each in (writer, upstream_writer):
            each.close()
            self._writers.discard(each)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Chunks keep their order: each is delayed, then written, before the next is read.
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await reader.read(65536):
                await asyncio.sleep(self.delay)
                self.bytes += len(chunk)
                writer.write(chunk)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()
