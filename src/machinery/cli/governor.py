"""``machinery governor``: create, resize, inspect governors and evict their holders.

By default the commands go through the local agent's HTTP API, so they act on whatever governors
the agent uses (NATS governors when it has NATS, its own local ones otherwise). With ``--nats
URL`` they talk to the broker directly, which works without any agent running.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from machinery.cli.natsclient import CredentialsOption
from machinery.core.governor import DEFAULT_LEASE, GovernorError, GovernorInfo
from machinery.lang.duration import DurationError, format_go_duration, parse_duration

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    help="Governors: fleet-wide (NATS) or agent-wide limits on concurrent exec and archive work.",
    no_args_is_help=True,
)

NatsOption = Annotated[
    str | None,
    typer.Option("--nats", help="Talk to this NATS broker directly (nats://host:port)."),
]
AgentOption = Annotated[
    str | None, typer.Option("--agent", help="Agent URL (default: the local agent).")
]
TokenOption = Annotated[
    Path | None, typer.Option("--token-file", help="File holding the API bearer token.")
]


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


FormatOption = Annotated[OutputFormat, typer.Option("--format", help="text or json.")]


class _Failed(Exception):
    pass


def _fail(message: str) -> typer.Exit:
    typer.echo(f"machinery: {message}", err=True)
    return typer.Exit(1)


def _info_dict(info: GovernorInfo, backend: str) -> dict[str, Any]:
    return {
        "name": info.name,
        "backend": backend,
        "capacity": info.capacity,
        "lease": info.lease,
        "holders": list(info.holders),
    }


def _on_nats(
    url: str,
    credentials: Path | None,
    action: Callable[[Any], Awaitable[T]],
    *,
    replicas: int = 1,
) -> T:
    """Run ``action(governor)`` against a NatsGovernor on a short-lived connection."""
    from machinery.cli.natsclient import NatsConnectError, connect
    from machinery.core.clock import SystemClock
    from machinery.nats.governor import ClientConnection, NatsGovernor

    async def main() -> T:
        try:
            client = await connect(url, credentials, name="machinery governor")
        except NatsConnectError as exc:
            raise _Failed(str(exc)) from None
        try:
            governor = NatsGovernor(ClientConnection(client), SystemClock(), replicas=replicas)
            try:
                return await action(governor)
            except GovernorError as exc:
                raise _Failed(str(exc)) from None
        finally:
            await client.close()

    return asyncio.run(main())


def _on_agent(
    agent_url: str | None,
    token_file: Path | None,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> Any:
    from machinery.cli.client import AgentClient, ClientError

    try:
        with AgentClient(agent_url, token_file) as client:
            if body is None:
                return client.request(method, path)
            return client.request(method, path, json=body)
    except ClientError as exc:
        raise _Failed(str(exc)) from None


def _when(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or seconds <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _print_governor(view: dict[str, Any]) -> None:
    lease = float(view.get("lease") or 0)
    holders = view.get("holders") or []
    typer.echo(f"Governor {view['name']} ({view.get('backend', '?')})")
    typer.echo(f"  capacity: {view['capacity']}")
    typer.echo(f"  lease:    {format_go_duration(lease) if lease > 0 else '-'}")
    typer.echo(f"  holders:  {len(holders)}")
    for holder in holders:
        where = f"{holder['slot']}  " if "slot" in holder else f"#{holder.get('sequence')}  "
        line = f"    {where}{holder['holder']}  since {_when(holder.get('acquired'))}"
        if "expires" in holder:
            line += f"  lease until {_when(holder.get('expires'))}"
            if holder.get("expired"):
                line += " (expired)"
        typer.echo(line)


def _lease(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except DurationError as exc:
        raise _fail(str(exc)) from None
    if seconds <= 0:
        raise _fail("the lease must be longer than 0s")
    return seconds


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Governor name.")],
    capacity: Annotated[int, typer.Argument(help="How many may hold a slot at once.", min=1)],
    lease: Annotated[
        str,
        typer.Option(help="How long a crashed holder keeps its slot (NATS governors only)."),
    ] = format_go_duration(DEFAULT_LEASE),
    replicas: Annotated[
        int,
        typer.Option(help="With --nats: replicas of a new governor's bucket.", min=1, max=5),
    ] = 1,
    nats: NatsOption = None,
    credentials: CredentialsOption = None,
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
    format: FormatOption = OutputFormat.text,
) -> None:
    """Create a governor, or change its capacity and lease."""
    seconds = _lease(lease)
    try:
        if nats is not None:

            async def action(governor: Any) -> dict[str, Any]:
                await governor.add(name, capacity, lease=seconds)
                return _info_dict(await governor.view(name), "nats")

            view = _on_nats(nats, credentials, action, replicas=replicas)
        else:
            view = _on_agent(
                agent_url,
                token_file,
                "PUT",
                f"/api/v1/governors/{name}",
                {"capacity": capacity, "lease": seconds},
            )
    except _Failed as exc:
        raise _fail(str(exc)) from None
    if format is OutputFormat.json:
        typer.echo(json.dumps(view, indent=2))
    else:
        _print_governor(view)


@app.command()
def view(
    name: Annotated[str, typer.Argument(help="Governor name.")],
    nats: NatsOption = None,
    credentials: CredentialsOption = None,
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
    format: FormatOption = OutputFormat.text,
) -> None:
    """Show a governor's capacity, lease and holders."""
    try:
        if nats is not None:

            async def action(governor: Any) -> dict[str, Any]:
                return _info_dict(await governor.view(name), "nats")

            found = _on_nats(nats, credentials, action)
        else:
            found = _on_agent(agent_url, token_file, "GET", f"/api/v1/governors/{name}")
    except _Failed as exc:
        raise _fail(str(exc)) from None
    if format is OutputFormat.json:
        typer.echo(json.dumps(found, indent=2))
    else:
        _print_governor(found)


@app.command()
def evict(
    name: Annotated[str, typer.Argument(help="Governor name.")],
    holder: Annotated[
        str, typer.Argument(help="The holder, or a prefix such as a node's identity.")
    ],
    nats: NatsOption = None,
    credentials: CredentialsOption = None,
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
) -> None:
    """Free the slots a holder holds (a crashed node that will not release them)."""
    try:
        if nats is not None:

            async def action(governor: Any) -> bool:
                return bool(await governor.evict(name, holder))

            if not _on_nats(nats, credentials, action):
                raise _Failed(f"{holder} holds no slot in the {name} Governor")
        else:
            _on_agent(agent_url, token_file, "DELETE", f"/api/v1/governors/{name}/holders/{holder}")
    except _Failed as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"Evicted {holder} from the {name} Governor")


@app.command("list")
def list_governors(
    nats: NatsOption = None,
    credentials: CredentialsOption = None,
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
    format: FormatOption = OutputFormat.text,
) -> None:
    """List the governors with their capacity and how many slots are held."""
    try:
        if nats is not None:

            async def action(governor: Any) -> list[dict[str, Any]]:
                return [
                    _info_dict(await governor.view(name), "nats") for name in await governor.names()
                ]

            governors = _on_nats(nats, credentials, action)
        else:
            governors = _on_agent(agent_url, token_file, "GET", "/api/v1/governors")["governors"]
    except _Failed as exc:
        raise _fail(str(exc)) from None
    if format is OutputFormat.json:
        typer.echo(json.dumps(governors, indent=2))
        return
    if not governors:
        typer.echo("No governors")
        return
    width = max(len("name"), *(len(g["name"]) for g in governors))
    typer.echo(f"{'name':<{width}}  {'backend':<7}  {'held':>4}  {'capacity':>8}  lease")
    for governor in governors:
        lease = float(governor.get("lease") or 0)
        typer.echo(
            f"{governor['name']:<{width}}  {governor.get('backend', '?'):<7}  "
            f"{len(governor.get('holders') or []):>4}  {governor['capacity']:>8}  "
            f"{format_go_duration(lease) if lease > 0 else '-'}"
        )
