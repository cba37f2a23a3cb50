"""Agent settings: defaults, ``machinery.toml``, ``MACHINERY_*`` variables and flags.

Precedence, lowest to highest: built-in defaults, the TOML file, the environment, command-line
flags. :func:`load_settings` also remembers where each effective value came from, for
``machinery agent --print-config``. Every setting has a working default: with none at all,
``machinery agent --store DIR`` runs a single node with no broker.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from machinery.spec.types import Duration

__all__ = [
    "AGENT_FILE",
    "DEFAULT_CONFIG_FILE",
    "ConfigError",
    "ControlSettings",
    "HttpSettings",
    "LoadedSettings",
    "NatsSettings",
    "Settings",
    "default_state_dir",
    "load_settings",
]

DEFAULT_CONFIG_FILE = Path("/etc/machinery/machinery.toml")
ENV_PREFIX = "MACHINERY_"
# What a running agent writes into its state directory (pid, API URL, version): how the
# command line finds it.
AGENT_FILE = "agent.json"


def default_identity() -> str:
    """The host's fully qualified name."""
    return socket.getfqdn() or socket.gethostname() or "unknown"


def default_state_dir() -> Path:
    """``/var/lib/machinery`` as root, else the user's state directory."""
    if os.geteuid() == 0:
        return Path("/var/lib/machinery")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "machinery"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpSettings(_Section):
    """The HTTP API, dashboard and metrics listener."""

    enabled: bool = Field(True, description="serve the HTTP API")
    listen: str = Field(
        "127.0.0.1:8347", description="HOST:PORT to listen on (port 0: any free port)"
    )
    token_file: Path | None = Field(None, description="file holding the bearer token")
    require_token: bool = Field(
        False, description="require the token for state changes even on loopback"
    )
    max_sse_clients: int = Field(
        64, ge=1, description="concurrent event streams (/api/v1/events and KV watches)"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="names clients may use in the Host header besides the listener's address, "
        "loopback names, the identity and the host name (comma-separated in the environment)",
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="open API connections at most (lowered to leave file descriptors for "
        "machines under a small RLIMIT_NOFILE)",
    )
    header_timeout: Duration = Field(
        10.0, gt=0, description="a connection must send a whole request head this soon"
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not _valid_host(host.strip("[]")):
                raise ValueError(f"{host!r} is not an IP address or host name")
        return [host.strip("[]").lower() for host in value]

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, port = split_listen(value)
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range")
        if host and not _valid_host(host):
            raise ValueError(f"{host!r} is not an IP address or host name")
        return value

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)


class NatsSettings(_Section):
    """The NATS broker; with no servers the agent runs embedded, without a broker."""

    servers: list[str] = Field(
        default_factory=list, description="nats:// URLs (comma-separated in the environment)"
    )
    user: str | None = None
    password: str | None = None
    token: str | None = None
    credentials: Path | None = Field(None, description="NATS credentials (JWT + nkey) file")
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @field_validator("servers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class ControlSettings(_Section):
    """Fleet control over NATS (``machinery fleet``): who may change state."""

    public_keys: list[str] = Field(
        default_factory=list,
        description="ed25519 public keys (hex, as `machinery plugins keys` prints them) whose "
        "signed transition requests this node accepts; none: no state change over NATS",
    )

    @field_validator("public_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("public_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key):
                raise ValueError(
                    f"{key[:70]!r} is not an ed25519 public key (64 hex digits, as "
                    f"`machinery plugins keys` prints it)"
                )
        return [key.lower() for key in value]


class HistorySettings(_Section):
    """How much transition history the agent keeps."""

    max_per_machine: int = Field(1000, ge=1, description="rows kept per machine")
    max_age: Duration = Field(30 * 86400.0, description="rows older than this are removed")


class SpoolSettings(_Section):
    """The outgoing-event spool used when NATS is configured."""

    max_events: int = Field(1_000_000, ge=1)
    max_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    max_age: Duration = Field(7 * 86400.0)


class Settings(BaseModel):
    """Every agent setting (see docs/agent.md)."""

    model_config = ConfigDict(extra="forbid", validate_default=False)

    identity: str = Field(default_factory=default_identity, description="this node's identity")
    store: Path | None = Field(None, description="directory of machine directories")
    state_dir: Path = Field(default_factory=default_state_dir, description="agent state (SQLite)")
    facts: Path | None = Field(None, description="JSON facts file, re-read when it changes")
    rate_limit: bool = Field(True, description="slow down machines stuck in transition loops")
    rescan_interval: Duration = Field(10.0, description="full store rescan, a safety net")
    settle_delay: Duration = Field(0.25, description="wait this long after a change to load it")
    check_permissions: bool = Field(
        True, description="refuse machines writable by group/others or owned by other users"
    )
    resume_state: bool = Field(
        True, description="after an agent restart, machines resume their last state"
    )
    textfile_directory: Path | None = Field(
        None, description="node_exporter textfile directory for nagios and metric watchers"
    )
    overrides_file: Path | None = Field(None, description="Scout overrides JSON file")
    signing_key: str | None = Field(
        None,
        description="ed25519 public key (hex) that machines and plugins specifications must be "
        "signed with; overrides the watchers' public_key",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    http: HttpSettings = Field(default_factory=HttpSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)

    @field_validator("identity")
    @classmethod
    def _check_identity(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError("identity must be a non-empty name without spaces")
        return value


class ConfigError(Exception):
    """Settings that cannot be used; the message says which and why."""


@dataclass
class LoadedSettings:
    """The effective settings and where each leaf value came from."""

    settings: Settings
    sources: dict[str, str] = field(default_factory=dict)
    config_file: Path | None = None

    def describe(self) -> list[tuple[str, object, str]]:
        """``(dotted.name, value, source)`` for every setting, in declaration order."""
        rows: list[tuple[str, object, str]] = []
        for name, value in _leaves(self.settings.model_dump(mode="json")):
            rows.append((name, value, self.sources.get(name, "default")))
        return rows


def load_settings(
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Load settings from the file (``config_file``, else ``$MACHINERY_CONFIG``, else
    ``/etc/machinery/machinery.toml`` if it exists), the environment and ``flags`` (dotted
    names such as ``http.listen``; None values are ignored). Raises ConfigError."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    explicit = config_file is not None
    if config_file is None and DEFAULT_CONFIG_FILE.exists():
        config_file = DEFAULT_CONFIG_FILE
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(config_file.read_text())
        except FileNotFoundError:
            if explicit:
                raise ConfigError(f"configuration file {config_file} does not exist") from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read configuration file {config_file}: {exc.strerror}"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: invalid TOML: {exc}") from exc
    env_values = _env_values(environ)
    flag_values: dict[str, Any] = {}
    for dotted, value in (flags or {}).items():
        if value is not None:
            _set(flag_values, dotted.split("."), value)
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    for label, values in (
        (f"file {config_file}", file_values),
        ("environment", env_values),
        ("flag", flag_values),
    ):
        for name, _ in _leaves(values):
            sources[name] = label
        _merge(merged, values)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources)) from None
    return LoadedSettings(settings, sources, config_file)


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """``MACHINERY_NAME`` and ``MACHINERY_SECTION__NAME`` variables (any case) as nested
    values. A whole section may be given as a JSON object (``MACHINERY_HTTP='{...}'``), merged
    under its ``__`` variables; every other value is a string for the model to convert."""
    relevant = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.upper().startswith(ENV_PREFIX) and key.upper() != ENV_PREFIX + "CONFIG"
    }
    unknown = sorted(
        ENV_PREFIX + key.upper()
        for key in relevant
        if key.split("__")[0] not in Settings.model_fields
    )
    if unknown:
        raise ConfigError(f"unknown setting in the environment: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    # Whole sections first, so that their single-setting variables win.
    for key in sorted(relevant, key=lambda name: name.count("__")):
        path = key.split("__")
        value: Any = relevant[key]
        if len(path) == 1 and _is_section(path[0]):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ConfigError(
                    f"invalid environment setting: {ENV_PREFIX}{key.upper()} is not JSON: {exc}"
                ) from None
            if not isinstance(value, dict):
                raise ConfigError(
                    f"invalid environment setting: {ENV_PREFIX}{key.upper()} must be a JSON object"
                )
            _merge(values, {path[0]: value})
        else:
            _merge(values, _nested(path, value))
    return values


def _is_section(name: str) -> bool:
    annotation = Settings.model_fields[name].annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _nested(path: list[str], value: Any) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    _set(nested, path, value)
    return nested


def _explain(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        name = ".".join(str(p) for p in error["loc"])
        origin = sources.get(name, "default")
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown setting {name!r} (from {origin})")
        else:
            lines.append(f"invalid setting {name} (from {origin}): {error['msg']}")
    return "; ".join(lines)


def _leaves(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(_leaves(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def _set(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def _merge(target: dict[str, Any], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif isinstance(value, Mapping):
            target[key] = {}
            _merge(target[key], value)
        else:
            target[key] = value


def split_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8347"`` -> ``("127.0.0.1", 8347)``; ``"[::1]:80"`` and ``":80"`` work too."""
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ValueError(f"{value!r} must be HOST:PORT")
    host = host.strip("[]")
    try:
        return host, int(port)
    except ValueError:
        raise ValueError(f"{value!r} must be HOST:PORT with a numeric port") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return all(part and (part.isalnum() or "-" in part) for part in host.split("."))
