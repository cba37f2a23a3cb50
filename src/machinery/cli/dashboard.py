"""``machinery dashboard --nats URL``: the fleet dashboard, from every agent's events on NATS.

Each agent serves its own dashboard at its HTTP listener (``http://127.0.0.1:8347/``); this
command serves one for the whole fleet, read-only, on loopback by default. It prints its URL
once it listens, and runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app", "dashboard"]

log = logging.getLogger("machinery.fleet")

app = typer.Typer(
    help="The fleet dashboard: every node's machines, live from NATS.",
    no_args_is_help=False,
)


def _duration(value: str, option: str) -> float:
    from machinery.lang.duration import DurationError, parse_duration

    try:
        return parse_duration(value)
    except DurationError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


@app.callback(invoke_without_command=True)
def dashboard(
    nats: Annotated[
        str,
        typer.Option(
            "--nats",
            envvar="MACHINERY_NATS__SERVERS",
            help="NATS server URLs, comma separated (nats://host:4222).",
        ),
    ],
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve the dashboard on (port 0: any free port).")
    ] = "127.0.0.1:8348",
    credentials: Annotated[
        Path | None, typer.Option(help="NATS credentials file (JWT and nkey).")
    ] = None,
    user: Annotated[str | None, typer.Option(envvar="MACHINERY_NATS__USER")] = None,
    password: Annotated[
        str | None,
        typer.Option(envvar="MACHINERY_NATS__PASSWORD", help="Better set in the environment."),
    ] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA bundle for TLS to NATS.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Client certificate for NATS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Client key for NATS.")] = None,
    stream: Annotated[
        str,
        typer.Option(help="JetStream stream holding choria.machine.> to read history from."),
    ] = "CHORIA_MACHINE",
    replay: Annotated[
        str, typer.Option(help="How much history to read from the stream (0: none).")
    ] = "1h",
    forget_after: Annotated[
        str, typer.Option(help="Drop nodes silent for this long (0: never).")
    ] = "24h",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the fleet dashboard: every node's machines, live from their events on NATS."""
    from machinery.agent.config import NatsSettings, is_loopback, split_listen
    from machinery.cli.main import setup_logging
    from machinery.core.loop import handle_signals
    from machinery.fleet.model import FleetModel
    from machinery.fleet.server import FleetDashboard

    setup_logging(log_level)
    try:
        host, port = split_listen(listen)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--listen") from None
    host = host or "127.0.0.1"
    replay_seconds = _duration(replay, "--replay")
    forget = _duration(forget_after, "--forget-after")
    try:
        settings = NatsSettings(
            servers=nats,  # the validator splits the comma-separated text
            user=user,
            password=password,
            credentials=credentials,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--nats") from None
    if not settings.servers:
        raise typer.BadParameter("give at least one server", param_hint="--nats")
    server = FleetDashboard(
        settings,
        listen_host=host,
        listen_port=port,
        stream=stream or None,
        replay=replay_seconds,
        model=FleetModel(forget_after=forget or None),
    )
    try:
        sock = server.bind()
    except OSError as exc:
        typer.echo(f"machinery dashboard: cannot listen on {listen}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    if not is_loopback(host):
        log.warning(
            "serving the fleet dashboard on non-loopback %s: anyone who can reach it sees "
            "every node's machines (it changes nothing)",
            listen,
        )
    typer.echo(f"machinery fleet dashboard on {server.url} (NATS {', '.join(settings.servers)})")

    async def main() -> None:
        with handle_signals(lambda _signum: server.stop()):
            await server.run(sock)

    asyncio.run(main())
