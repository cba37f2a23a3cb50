"""``machinery dashboard --nats URL``: the fleet dashboard, from every agent's events on NATS.

Each agent serves its own dashboard at its HTTP listener (``http://127.0.0.1:8347/``); this
command serves one for the whole fleet, read-only, on loopback by default. It prints its URL
once it listens, and runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from machinery.fleet.server import FleetControl

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
    seed_file: Annotated[
        Path | None,
        typer.Option(
            "--seed-file",
            help="Offer transitions, signed with this ed25519 seed (see docs/fleet.md); "
            "without it the dashboard is read-only.",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="With --seed-file: the bearer token the browser must give (mode 0600); "
            "default: a new random token, printed at start.",
        ),
    ] = None,
    refresh: Annotated[
        str, typer.Option(help="How often to look for nodes that appeared or went silent.")
    ] = "15s",
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
    refresh_seconds = _duration(refresh, "--refresh")
    if refresh_seconds < 1:
        raise typer.BadParameter("at least 1s", param_hint="--refresh")
    control = _control(seed_file, token_file)
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
        control=control,
        refresh=refresh_seconds,
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
    if control is not None and token_file is None:
        typer.echo(f"transitions enabled; the browser's token: {control.token}")

    async def main() -> None:
        with handle_signals(lambda _signum: server.stop()):
            await server.run(sock)

    asyncio.run(main())


def _control(seed_file: Path | None, token_file: Path | None) -> FleetControl | None:
    """The dashboard's FleetControl, or None (read-only)."""
    import secrets
    import stat

    from machinery.core.signing import SigningError, load_signing_key
    from machinery.fleet.server import FleetControl

    if seed_file is None:
        if token_file is not None:
            raise typer.BadParameter("only with --seed-file", param_hint="--token-file")
        return None
    try:
        key = load_signing_key(str(seed_file))
    except SigningError as exc:
        raise typer.BadParameter(str(exc), param_hint="--seed-file") from None
    if token_file is None:
        return FleetControl(key, secrets.token_urlsafe(24))
    try:
        mode = token_file.stat().st_mode
        token = token_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(
            f"cannot read {token_file}: {exc}", param_hint="--token-file"
        ) from None
    if len(token) < 16:
        raise typer.BadParameter(
            "the token is too short (16 characters at least)", param_hint="--token-file"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise typer.BadParameter(
            f"{token_file} is accessible to group/others: chmod 600 it", param_hint="--token-file"
        )
    return FleetControl(key, token)
