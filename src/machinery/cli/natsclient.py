"""How the command line connects to NATS directly (``--nats URL``).

Every command that talks to the broker (``kv``, ``governor``, ``watch``) takes the same
``--credentials`` option and reads the rest of the agent's ``[nats]`` settings from the same
environment variables as the agent (``MACHINERY_NATS__USER``, ``__PASSWORD``, ``__TOKEN``,
``__TLS_CA``, ``__TLS_CERT``, ``__TLS_KEY``, ``__CREDENTIALS``), so one secured broker needs one
set of secrets, never on the command line.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # the CLI imports this module at start-up; nats-py only when used
    from nats.aio.client import Client as NATS

    from machinery.agent.config import NatsSettings

__all__ = ["CredentialsOption", "NatsConnectError", "connect", "settings_for"]

CredentialsOption = Annotated[
    Path | None,
    typer.Option(
        "--credentials",
        "--creds",
        help="With --nats: a NATS credentials file (JWT .creds or nkey seed).",
    ),
]

_ENVIRONMENT = ("user", "password", "token", "credentials", "tls_ca", "tls_cert", "tls_key")


class NatsConnectError(Exception):
    """The broker could not be reached; the message says which and why."""


def settings_for(url: str, credentials: Path | None = None) -> NatsSettings:
    """The connection settings for ``url`` (comma-separated servers): the environment's
    ``MACHINERY_NATS__*`` values, with ``credentials`` taking precedence."""
    from machinery.agent.config import NatsSettings

    values: dict[str, Any] = {"servers": url}
    for name in _ENVIRONMENT:
        value = os.environ.get(f"MACHINERY_NATS__{name.upper()}")
        if value:
            values[name] = value
    if credentials is not None:
        values["credentials"] = credentials
    return NatsSettings(**values)


async def connect(
    url: str, credentials: Path | None = None, *, name: str, reconnect: bool = False
) -> NATS:
    """A connection for one command. Without ``reconnect`` a lost broker ends the command
    (one-shot commands); with it, the connection comes back by itself (``watch``)."""
    from nats.aio.client import Client as NATS

    from machinery.nats.connection import connect_options, redact_url

    async def quiet(_error: Exception) -> None:
        pass  # a failure to connect is reported once, by the exception below

    settings = settings_for(url, credentials)
    servers = ", ".join(redact_url(server) for server in settings.servers)
    try:
        options = connect_options(settings, name)
        # The first connection is tried once (nats-py's own retry of a first connection can
        # hang on a failed TLS handshake); nats-py reads 0 attempts as "forever".
        options |= {
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.2,
            "error_cb": quiet,
        }
        async with asyncio.timeout(15):
            client = NATS()
            await client.connect(**options)
    except Exception as exc:  # nats-py raises several unrelated types here
        reason = str(exc) or type(exc).__name__
        raise NatsConnectError(f"cannot connect to {servers}: {reason}") from None
    if reconnect:
        client.options["allow_reconnect"] = True
        client.options["max_reconnect_attempts"] = -1
    return client
