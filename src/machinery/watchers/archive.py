"""The ``archive`` watcher (spec 3.9): deploy a ``.tar.gz`` into a directory and keep it intact.

On every check (at start, on every interval tick and on every state change) the installed
``<target>/<creates>`` directory is verified against its ``SHA256SUMS``-style file. A verified
install reports ``verified``; otherwise the archive is downloaded into a staging directory in
``<target>/tmp/``, its SHA-256 checked against ``checksum`` before anything is extracted, extracted
with the safe extractor of :mod:`machinery.core.extract`, verified again, and swapped into place
in one atomic exchange, so a failure at any step leaves the previous install exactly as it was. The result is
``downloaded``; any failure is ``error``. Credentials never appear in events or logs.

Staging directories are named after the machine and watcher
(``<target>/tmp/<machine>-<watcher>-<digest>-<random>/``), so a watcher that starts removes the
ones an agent killed mid-download or mid-swap left behind, and only its own.

Node service used: ``governor`` (:class:`machinery.core.governor.Governor`, provided by the
agent: NATS governors with NATS, its local ones otherwise). When a watcher names a governor, a
slot is taken through :func:`machinery.core.governor.governed` before downloading and held until
the new archive is in place; a verified install takes none. Without the service (``machinery
run``) the watcher warns once and downloads ungoverned.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import httpx
from pydantic import BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from machinery import __version__
from machinery.core.extract import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_TOTAL_BYTES,
    ExtractError,
    VerifyError,
    extract_tar_gz,
    replace_tree,
    verify_sums,
)
from machinery.core.governor import GovernorError, governed
from machinery.core.wakeup import TICK
from machinery.lang.duration import format_go_duration
from machinery.lang.template import Template, TemplateError
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import Duration, TemplateText, compile_template
from machinery.watchers.base import PolledWatcher

__all__ = [
    "ArchiveProperties",
    "ArchiveWatcher",
    "parse_byte_size",
    "redact_url",
]

USER_AGENT = f"machinery Archive Watcher {__version__}"
# Choria raises any smaller HTTP timeout to this.
MIN_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_GOVERNOR_TIMEOUT = 300.0
DEFAULT_MAX_SIZE = 1024**3
# The staging directory inside ``target``; machine stores ignore a directory of this name.
STAGING_DIRECTORY = "tmp"
# Limits for the extracted archive (module level so an embedding application can tune them).
MAX_FILES = DEFAULT_MAX_FILES
MAX_EXTRACTED_BYTES = DEFAULT_MAX_TOTAL_BYTES
MAX_FILE_BYTES = DEFAULT_MAX_FILE_BYTES

# Characters of machine and watcher names kept in staging directory names (others become "_").
_STAGE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")
_STAGE_LABEL_LENGTH = 80
# Stages in use in this process: a watcher starting again (its machine reloaded) while the
# previous instance still installs must not remove that one's stage.
_active_stages: set[str] = set()
_active_lock = threading.Lock()

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_USERINFO = re.compile(r"(?<=://)[^/?#]*@")
_SIZE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_byte_size(value: Any) -> int:
    """A size in bytes: a number, or text such as ``512MiB``, ``1GiB`` or ``10MB``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 512MiB")
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}: use bytes or a unit such as 512MiB or 1GiB")
    return int(match.group(1)) * _SIZE_UNITS[unit]


def _byte_size(value: Any) -> int:
    try:
        return parse_byte_size(value)
    except ValueError as exc:
        raise PydanticCustomError("byte_size", "{message}", {"message": str(exc)}) from None


ByteSize = Annotated[
    int,
    BeforeValidator(_byte_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": r"^\s*\d+\s*([KMGTkmgt][iI]?[bB]|[bB])?\s*$"},
            ],
            "examples": ["512MiB", "1GiB"],
        }
    ),
]
"""A size in bytes, written as a number or with a unit (``KB``, ``MB``, ``KiB``, ``MiB``...)."""


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, fit for events and logs."""
    return _USERINFO.sub("", url)


class ArchiveProperties(WatcherProperties):
    """Properties of the archive watcher."""

    source: TemplateText = Field(description="URL of the .tar.gz archive (http or https)")
    checksum: TemplateText = Field(description="SHA-256 (hex) of the archive")
    creates: str = Field(description="the directory the archive creates (a single name)")
    target: str = Field(
        description="directory to extract into; relative paths are inside the machine directory"
    )
    verify: str = Field(
        "", description="a SHA256SUMS-style file inside creates, checked on every run"
    )
    verify_checksum: TemplateText = Field(
        "", description="SHA-256 (hex) of the verify file; required with verify"
    )
    username: TemplateText = Field("", description="HTTP basic authentication user")
    password: TemplateText = Field("", description="HTTP basic authentication password")
    insecure: bool = Field(False, description="do not verify the server's TLS certificate")
    governor: TemplateText = Field("", description="governor slot to take before downloading")
    governor_timeout: Duration = Field(
        DEFAULT_GOVERNOR_TIMEOUT, description="how long to wait for a governor slot"
    )
    timeout: Duration = Field(
        DEFAULT_TIMEOUT, description="time allowed for the whole download (at least 5s)"
    )
    max_size: ByteSize = Field(
        DEFAULT_MAX_SIZE, description="largest archive accepted for download (bytes or 512MiB)"
    )


class _Failure(Exception):
    """A check failed; the message is free of credentials and goes into logs and status."""


class ArchiveWatcher(PolledWatcher[ArchiveProperties]):
    """Downloads, verifies and installs an archive, and keeps verifying the install."""

    type_name = "archive"
    properties_model = ArchiveProperties
    default_interval = None
    min_interval = 10.0

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, ArchiveProperties)
        for key in ("source", "checksum", "creates", "target"):
            if not getattr(properties, key).strip():
                yield Problem(("properties", key), f"{key} is required")
        creates = properties.creates
        if creates.strip() and (
            "/" in creates
            or "\x00" in creates
            or creates in (".", "..")
            or creates != creates.strip()
        ):
            yield Problem(
                ("properties", "creates"),
                f"creates must be a single directory name, not {creates!r}",
            )
        elif creates == STAGING_DIRECTORY:
            yield Problem(
                ("properties", "creates"),
                f"creates cannot be {STAGING_DIRECTORY!r}: that directory holds downloads in "
                "progress",
            )
        verify = properties.verify
        if verify and (verify.startswith("/") or ".." in verify.split("/") or "\x00" in verify):
            yield Problem(("properties", "verify"), "verify must be a relative path inside creates")
        if verify and not properties.verify_checksum.strip():
            yield Problem(
                ("properties", "verify_checksum"), "verify_checksum is required if verify is set"
            )
        if properties.username and not properties.password:
            yield Problem(("properties", "password"), "password is required when username is given")
        for key in ("checksum", "verify_checksum"):
            value = getattr(properties, key)
            if value.strip() and compile_template(value).is_static and not _HEX64.match(value):
                yield Problem(
                    ("properties", key),
                    f"{key} must be a SHA-256 digest: 64 hexadecimal characters",
                )
        source = properties.source
        if (
            source.strip()
            and compile_template(source).is_static
            and not source.lower().startswith(("http://", "https://"))
        ):
            yield Problem(("properties", "source"), "source must be an http:// or https:// URL")
        if properties.timeout < MIN_TIMEOUT:
            yield Problem.warning(
                ("properties", "timeout"),
                f"timeout is raised to the minimum of {format_go_duration(MIN_TIMEOUT)}",
            )
        if properties.max_size <= 0:
            yield Problem(("properties", "max_size"), "max_size must be larger than 0")
        if properties.insecure:
            yield Problem.warning(
                ("properties", "insecure"), "TLS certificates of the source are not verified"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        props = self.properties
        self.target = Path(os.path.join(self.machine.directory, props.target))
        self.install = self.target / props.creates
        self._source = compile_template(props.source)
        self._checksum = compile_template(props.checksum)
        self._verify_checksum = compile_template(props.verify_checksum)
        self._username = compile_template(props.username)
        self._password = compile_template(props.password)
        self._governor = compile_template(props.governor)
        self.previous_outcome = "unknown"
        self.previous_run_time = 0.0
        self._last_source = ""

    @property
    def download_timeout(self) -> float:
        """Seconds allowed for one download: ``timeout``, raised to the minimum of 5s."""
        return max(self.properties.timeout, MIN_TIMEOUT)

    @property
    def stage_prefix(self) -> str:
        """How this watcher's staging directories in ``<target>/tmp`` start: the machine and
        watcher names (made safe for a file name, shortened) and a digest of the exact names, so
        no other watcher's stages start the same way."""
        machine, watcher = self.machine.name, self.name
        label = _STAGE_NAME_UNSAFE.sub("_", f"{machine}-{watcher}")[:_STAGE_LABEL_LENGTH]
        digest = hashlib.sha256(f"{machine}\0{watcher}".encode()).hexdigest()[:12]
        return f"{label}-{digest}-"

    async def on_start(self) -> None:
        # Stages left by an agent killed mid-download or mid-swap: a partial archive, or a
        # whole previous install. Removed before the first check can make a new one.
        await asyncio.to_thread(self._remove_stale_stages)
        # Choria checks once right away, before the first interval tick.
        self._wakeup.set(TICK)

    def _remove_stale_stages(self) -> None:
        """Remove this watcher's staging directories that no running check is using."""
        staging = self.target / STAGING_DIRECTORY
        prefix = self.stage_prefix
        try:
            with os.scandir(staging) as listing:
                stale = [
                    os.path.abspath(entry.path)
                    for entry in listing
                    if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)
                ]
        except FileNotFoundError:
            return
        except OSError as exc:
            self.log_warning(f"cannot look for stale staging directories in {staging}: {exc}")
            return
        for path in stale:
            with _active_lock:
                if path in _active_stages:
                    continue
            self.log_info(f"Removing staging directory {path} left by an earlier run")
            shutil.rmtree(path, ignore_errors=True)

    async def check(self, reasons: int) -> None:
        if not self.should_watch():
            self.previous_outcome = "skipped"
            self.record("skipped")
            return
        started = time.monotonic()
        try:
            outcome = await self._watch()
        except (_Failure, OSError) as exc:
            # OSError: the file system failed us (full disk, permissions); its message names
            # paths only.
            self.previous_run_time = time.monotonic() - started
            self.previous_outcome = "error"
            self.status.last_error = str(exc)
            self.record("error", self.previous_run_time)
            self.log_error(f"Managing archive failed: {exc}")
            self.publish()
            await self.fire_fail()
            return
        self.previous_run_time = time.monotonic() - started
        self.previous_outcome = outcome
        self.status.last_error = None
        self.record(outcome, self.previous_run_time)
        self.publish()
        await self.fire_success()

    async def _watch(self) -> str:
        problem = await self._verify_install()
        if problem is None:
            self.log_debug(f"{self.install} verified successfully")
            return "verified"
        self.log_info(f"{problem}, triggering download")
        name = self._render(self._governor, "governor")
        if not name:
            return await self._deploy()
        timeout = self.properties.governor_timeout or DEFAULT_GOVERNOR_TIMEOUT
        try:
            async with governed(self.machine, self.name, name, timeout):
                return await self._deploy()
        except GovernorError as exc:
            raise _Failure(f"Cannot enter Governor {name}: {exc}") from None

    def _render(self, template: Template, what: str, *, strip: bool = True) -> str:
        try:
            text = self.machine.render(template)
            return text.strip() if strip else text
        except TemplateError as exc:
            raise _Failure(f"could not render {what}: {exc}") from None

    async def _verify_install(self) -> str | None:
        """None if the install is in place and intact, else why it is not."""
        verify = self.properties.verify
        checksum = ""
        if verify:
            try:
                checksum = self._render(self._verify_checksum, "verify_checksum")
            except _Failure as exc:
                return str(exc)
        return await asyncio.to_thread(_install_problem, self.install, verify, checksum)

    async def _deploy(self) -> str:
        source = self._render(self._source, "source")
        checksum = self._render(self._checksum, "checksum")
        if not source:
            raise _Failure("source template resulted in an empty string")
        if not checksum:
            raise _Failure("checksum template resulted in an empty string")
        self._last_source = redact_url(source)
        verify_checksum = ""
        if self.properties.verify:
            verify_checksum = self._render(self._verify_checksum, "verify_checksum")
            if not verify_checksum:
                raise _Failure("verify_checksum template resulted in an empty string")
        secrets = [source]
        # Credentials written into the URL become basic auth, so the URL the HTTP client
        # sees (and logs) is free of them; the username property takes precedence.
        auth, url = _split_credentials(source)
        if auth is not None:
            secrets.extend(auth)
        username = self._render(self._username, "username")
        if username:
            password = self._render(self._password, "password", strip=False)
            auth = (username, password)
            secrets.append(password)
        staging = self.target / STAGING_DIRECTORY
        try:
            # Choria creates the target (and its staging directory) private to the agent.
            os.makedirs(self.target, mode=0o700, exist_ok=True)
            os.makedirs(staging, mode=0o700, exist_ok=True)
            with _active_lock:  # so no watcher starting meanwhile takes it for a stale one
                stage = Path(
                    os.path.abspath(tempfile.mkdtemp(prefix=self.stage_prefix, dir=staging))
                )
                _active_stages.add(str(stage))
        except OSError as exc:
            raise _Failure(f"could not create temp directory: {exc}") from None
        handed_off = False
        try:
            fd, name = tempfile.mkstemp(suffix="-archive.tgz", dir=stage)
            self.log_info(f"Attempting to download {url} to {name}")
            with os.fdopen(fd, "wb") as handle:
                await self._download(url, auth, handle, checksum, secrets)
            handed_off = True
            # Extraction and hashing can take a while: keep them off the event loop. The
            # thread removes the stage itself, so stopping the machine meanwhile is safe.
            await asyncio.to_thread(self._install_from, Path(name), stage, verify_checksum)
        finally:
            if not handed_off:
                _remove_stage(stage)
        self.log_info(f"Archive {self._last_source} was deployed successfully to {self.install}")
        return "downloaded"

    async def _download(
        self,
        url: str,
        auth: tuple[str, str] | None,
        handle: BinaryIO,
        expected: str,
        secrets: list[str],
    ) -> None:
        """Stream ``url`` into ``handle``, enforcing max_size, then compare its SHA-256."""
        limit = self.properties.max_size
        timeout = self.download_timeout
        digest = hashlib.sha256()
        size = 0
        # identity: the bytes are checksummed as served, never decoded by the client.
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        try:
            # Like Choria, the timeout bounds the whole download, not each read.
            async with (
                asyncio.timeout(timeout),
                httpx.AsyncClient(
                    auth=httpx.BasicAuth(*auth) if auth is not None else None,
                    verify=not self.properties.insecure,
                    timeout=timeout,
                    follow_redirects=True,
                    headers=headers,
                ) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise _Failure(
                        f"download failed: HTTP {response.status_code} {response.reason_phrase}"
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise _Failure(
                        f"download failed: the archive is {declared} bytes, more than the "
                        f"max_size of {limit}"
                    )
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > limit:
                        raise _Failure(
                            f"download failed: the archive is larger than the max_size of {limit} "
                            "bytes"
                        )
                    digest.update(chunk)
                    handle.write(chunk)
        except (TimeoutError, httpx.TimeoutException):
            raise _Failure(
                f"download failed: timed out after {format_go_duration(timeout)}"
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _Failure(
                f"download failed: {_scrub(str(exc) or type(exc).__name__, secrets)}"
            ) from None
        except OSError as exc:
            raise _Failure(f"download failed: {exc}") from None
        actual = digest.hexdigest()
        if not hmac.compare_digest(actual, expected.lower()):
            raise _Failure(f"download failed: archive checksum {actual} != {expected} mismatch")

    def _install_from(self, archive: Path, stage: Path, verify_checksum: str) -> None:
        """Extract, verify and swap in the new install; runs in a thread; removes ``stage``."""
        creates = self.properties.creates
        try:
            extracted = Path(tempfile.mkdtemp(prefix="extract-", dir=stage))
            try:
                extract_tar_gz(
                    archive,
                    extracted,
                    max_files=MAX_FILES,
                    max_total_bytes=MAX_EXTRACTED_BYTES,
                    max_file_bytes=MAX_FILE_BYTES,
                )
            except ExtractError as exc:
                raise _Failure(f"archive extraction failed: {exc}") from None
            new = extracted / creates
            if new.is_symlink() or not new.is_dir():
                raise _Failure(
                    f"archive extraction failed: the archive does not create the directory "
                    f"{creates}"
                )
            if self.properties.verify:
                try:
                    verify_sums(new, self.properties.verify, verify_checksum)
                except VerifyError as exc:
                    raise _Failure(f"verifying the extracted archive failed: {exc}") from None
            try:
                # One atomic exchange when there is an install: the old tree ends up in the
                # stage and goes with it.
                replace_tree(new, self.install, stage / "previous")
            except OSError as exc:
                raise _Failure(f"could not install {self.install}: {exc}") from None
        finally:
            _remove_stage(stage)

    def state_fields(self) -> dict[str, Any]:
        return {
            "source": self._last_source or redact_url(self.properties.source),
            "creates": self.properties.creates,
            "previous_outcome": self.previous_outcome,
            "previous_run_time": int(self.previous_run_time * 1e9),
        }

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        seconds = float(payload.get("previous_run_time") or 0) / 1e9
        return (
            f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} source: "
            f"{payload.get('source')}, previous: {payload.get('previous_outcome')} "
            f"ran: {seconds:.3f}s"
        )


def _remove_stage(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    with _active_lock:
        _active_stages.discard(str(stage))


def _install_problem(install: Path, verify: str, checksum: str) -> str | None:
    """Why ``install`` needs a fresh download (None: it is verified)."""
    if not install.is_dir():
        return f"{install} does not exist"
    if not verify:
        return None
    if not checksum:
        return "verify_checksum template resulted in an empty string"
    try:
        verify_sums(install, verify, checksum)
    except VerifyError as exc:
        return f"verifying {install} failed: {exc}"
    return None


def _split_credentials(url: str) -> tuple[tuple[str, str] | None, str]:
    """The ``user:password`` written into ``url`` (decoded), and the URL without them."""
    clean = redact_url(url)
    if clean == url:
        return None, url
    try:
        parts = urllib.parse.urlsplit(url)
        username, password = parts.username or "", parts.password or ""
    except ValueError:
        return None, clean
    return (urllib.parse.unquote(username), urllib.parse.unquote(password)), clean


def _scrub(message: str, secrets: list[str]) -> str:
    """Remove credentials from an error message: URLs lose their user:password part and
    passwords (of three characters or more, so short ones do not mangle the text) are masked."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 3 and secret in message:
            message = message.replace(secret, redact_url(secret) if "://" in secret else "***")
    return redact_url(message)
