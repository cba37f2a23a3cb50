"""``machinery fleet``: ask and act across every agent on a NATS broker.

::

    machinery fleet ls --where identity='web*' --where state=maintenance
    machinery fleet show nginx --where role=web
    machinery fleet transition nginx maintenance --seed-file ~/.machinery/fleet.seed \\
        --where role=web --canary 1 --batch 10 --pause 5s --stop-on-error

Every command first discovers the agents (``$SRV.PING.machinery``), so it knows how many
replies to wait for and can say which nodes did not answer. See docs/fleet.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from machinery.cli.natsclient import CredentialsOption

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from rich.console import Console

    from machinery.nats.control import Filter
    from machinery.nats.fleetclient import FleetReplies, NodeOutcome

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    name="fleet",
    help="Ask and act across every agent on a NATS broker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Format(StrEnum):
    table = "table"
    json = "json"


NatsOption = Annotated[
    str,
    typer.Option(
        "--nats",
        envvar="MACHINERY_NATS__SERVERS",
        help="NATS server URLs, comma separated (nats://host:4222).",
    ),
]
WhereOption = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        "-W",
        help="Select nodes: identity=GLOB, machine=NAME, state=STATE, or a fact PATH=VALUE "
        "(dotted path; fact:PATH=VALUE for a fact named identity, machine or state). Repeat "
        "to require all.",
    ),
]
FormatOption = Annotated[Format, typer.Option("--format", help="table or json.")]
TimeoutOption = Annotated[
    str, typer.Option("--timeout", help="How long to wait for the nodes' replies.")
]
DiscoverOption = Annotated[
    str,
    typer.Option("--discover", help="How long discovery may take (it ends once replies stop)."),
]


class _Failure(Exception):
    """The command failed; the message says why."""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"machinery: {message}", err=True)
    return typer.Exit(1)


def _duration(value: str, option: str) -> float:
    from machinery.lang.duration import DurationError, parse_duration

    try:
        return parse_duration(value)
    except DurationError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _warn_if_shared(path: Path) -> None:
    """Whoever can read the seed can change every machine of every node that trusts it."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        typer.echo(
            f"machinery: warning: {path} is accessible to group/others "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it",
            err=True,
        )


def _filter(where: list[str] | None) -> Filter:
    from machinery.nats.control import ControlError, parse_where

    try:
        return parse_where(where or [])
    except ControlError as exc:
        raise typer.BadParameter(exc.message, param_hint="--where") from None


def _run(nats: str, credentials: Path | None, work: Callable[[NATS], Awaitable[T]]) -> T:
    async def main() -> T:
        from machinery.cli.natsclient import NatsConnectError, connect

        try:
            client = await connect(nats, credentials, name="machinery fleet")
        except NatsConnectError as exc:
            raise _Failure(str(exc)) from None
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except _Failure as exc:
        raise _fail(str(exc)) from None


async def _ask(
    client: NATS, verb: str, request: dict[str, Any], discover_wait: float, timeout: float
) -> FleetReplies:
    from machinery.nats.fleetclient import discover, gather

    nodes = await discover(client, wait=discover_wait)
    return await gather(client, verb, request, set(nodes), timeout=timeout)


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(width=200, stderr=stderr, highlight=False)


def _shown(value: object) -> str:
    # Names and messages come from the nodes: no control character and no rich markup.
    from rich.markup import escape

    from machinery.cli.logformat import escape_control

    return escape(escape_control("" if value is None else str(value)))


def _since(timestamp: Any) -> str:
    if not isinstance(timestamp, (int, float)) or timestamp <= 0:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _report_missing(replies: FleetReplies) -> None:
    console = _console(stderr=True)
    answered = len(replies.replies)
    console.print(f"{answered} node(s) answered, {len(replies.matched)} matched", highlight=False)
    if replies.missing:
        console.print(
            f"[yellow]{len(replies.missing)} node(s) did not answer:[/yellow] "
            + _shown(", ".join(replies.missing))
        )
    for identity, body in sorted(replies.matched.items()):
        error = body.get("error")
        if isinstance(error, dict):
            console.print(f"[red]{_shown(identity)}[/red]: {_shown(error.get('message'))}")


@app.command("ls")
def list_machines(
    nats: NatsOption,
    where: WhereOption = None,
    format: FormatOption = Format.table,
    credentials: CredentialsOption = None,
    timeout: TimeoutOption = "5s",
    discover: DiscoverOption = "1s",
) -> None:
    """List the machines of every answering node the filter selects."""
    selected = _filter(where)
    wait, limit = _duration(discover, "--discover"), _duration(timeout, "--timeout")
    request = {"version": 1, "filter": selected.to_dict()}
    replies = _run(nats, credentials, lambda client: _ask(client, "machines", request, wait, limit))
    nodes = sorted(replies.matched.items())
    if format is Format.json:
        document = [
            {"identity": identity, "answered": True, "machines": body.get("machines", [])}
            | ({"error": body["error"]} if "error" in body else {})
            for identity, body in nodes
        ] + [{"identity": i, "answered": False, "machines": []} for i in replies.missing]
        typer.echo(json.dumps(document, indent=2))
    else:
        from rich.table import Table

        table = Table("node", "machine", "state", "since", "version", "status", box=None)
        for identity, body in nodes:
            for machine in body.get("machines", []):
                table.add_row(
                    _shown(identity),
                    _shown(machine.get("name")),
                    _shown(machine.get("state")),
                    _since(machine.get("state_entered")),
                    _shown(machine.get("version")),
                    _shown(machine.get("status")),
                )
        _console().print(table)
    _report_missing(replies)


@app.command("show")
def show_machine(
    machine: Annotated[str, typer.Argument(help="Machine name.")],
    nats: NatsOption,
    where: WhereOption = None,
    format: FormatOption = Format.table,
    history: Annotated[int, typer.Option(help="Transitions of history to show.", min=0)] = 5,
    credentials: CredentialsOption = None,
    timeout: TimeoutOption = "5s",
    discover: DiscoverOption = "1s",
) -> None:
    """One machine on every node that has it: state, watchers and recent history."""
    selected = _filter(where)
    if selected.machine not in (None, machine):
        raise typer.BadParameter("names another machine", param_hint="--where machine=")
    wait, limit = _duration(discover, "--discover"), _duration(timeout, "--timeout")
    request = {
        "version": 1,
        "machine": machine,
        "history": min(history, 100),
        "filter": selected.to_dict(),
    }
    replies = _run(nats, credentials, lambda client: _ask(client, "machine", request, wait, limit))
    nodes = sorted(replies.matched.items())
    if format is Format.json:
        document = [
            {"identity": identity, "answered": True, "machine": body.get("machine")}
            | ({"error": body["error"]} if "error" in body else {})
            for identity, body in nodes
        ] + [{"identity": i, "answered": False, "machine": None} for i in replies.missing]
        typer.echo(json.dumps(document, indent=2))
    else:
        console = _console()
        for identity, body in nodes:
            detail = body.get("machine")
            if not isinstance(detail, dict):
                continue
            console.print(
                f"[bold]{_shown(identity)}[/bold] {_shown(machine)} {_shown(detail.get('version'))}"
                f": {_shown(detail.get('state'))} since {_since(detail.get('state_entered'))}"
                f" (transitions: {_shown(', '.join(detail.get('available_transitions') or []))})"
            )
            for watcher in detail.get("watchers", []):
                status = watcher.get("status") or {}
                console.print(
                    f"  watcher {_shown(watcher.get('name'))} ({_shown(watcher.get('type'))}): "
                    f"{'active' if watcher.get('active') else 'inactive'}, "
                    f"last {_shown(status.get('outcome') or '-')}"
                )
            for row in detail.get("history", []):
                console.print(
                    f"  {_since(row.get('timestamp'))} {_shown(row.get('from_state'))} -> "
                    f"{_shown(row.get('to_state'))} via {_shown(row.get('transition'))}"
                )
    _report_missing(replies)
    if not replies.matched:
        raise _fail(f"no answering node has a machine {machine} matching the filter")


_HEADINGS = {
    "done": "done",
    "refused": "refused",
    "invalid": "not valid in its state",
    "failed": "failed",
    "no_answer": "no answer",
    "skipped": "skipped",
}


@app.command("transition")
def transition(
    machine: Annotated[str, typer.Argument(help="Machine name.")],
    event: Annotated[str, typer.Argument(help="Transition (event) to fire.")],
    nats: NatsOption,
    seed_file: Annotated[
        Path,
        typer.Option(
            "--seed-file",
            help="The ed25519 private seed (hex, as `machinery plugins keys --seed-file` "
            "writes it) the nodes trust in control.public_keys.",
        ),
    ],
    where: WhereOption = None,
    batch: Annotated[
        int, typer.Option("--batch", min=0, help="Nodes per batch (0: all at once).")
    ] = 0,
    canary: Annotated[
        int,
        typer.Option("--canary", min=0, help="Nodes to do first, alone; any failure there stops."),
    ] = 0,
    pause: Annotated[str, typer.Option("--pause", help="Wait between batches.")] = "0s",
    stop_on_error: Annotated[
        bool,
        typer.Option("--stop-on-error", help="Stop after a batch where any node did not do it."),
    ] = False,
    format: FormatOption = Format.table,
    credentials: CredentialsOption = None,
    timeout: TimeoutOption = "5s",
    discover: DiscoverOption = "1s",
) -> None:
    """Fire a transition on a machine of every selected node, in batches, signed."""
    from machinery.core.signing import SigningError, load_signing_key
    from machinery.nats.fleetclient import Outcome, transition_nodes

    selected = _filter(where)
    if selected.machine not in (None, machine):
        raise typer.BadParameter("names another machine", param_hint="--where machine=")
    selected = selected.narrowed(machine=machine)
    pause_seconds = _duration(pause, "--pause")
    wait, limit = _duration(discover, "--discover"), _duration(timeout, "--timeout")
    try:
        key = load_signing_key(str(seed_file))
    except SigningError as exc:
        raise typer.BadParameter(str(exc), param_hint="--seed-file") from None
    _warn_if_shared(seed_file)

    async def work(client: NATS) -> tuple[FleetReplies, list[NodeOutcome]]:
        from rich.progress import Progress

        from machinery.nats.fleetclient import select_nodes

        targets, found = await select_nodes(client, selected, discover_wait=wait, timeout=limit)
        if not targets:
            return found, []
        with Progress(console=_console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"{machine}: {event}", total=len(targets))
            outcomes = await transition_nodes(
                client,
                targets,
                machine,
                event,
                key,
                selected,
                batch=batch,
                canary=canary,
                pause=pause_seconds,
                stop_on_error=stop_on_error,
                timeout=limit,
                on_outcome=lambda _outcome: progress.advance(task),
            )
        return found, outcomes

    found, outcomes = _run(nats, credentials, work)
    if found.missing:
        typer.echo(
            f"machinery: {len(found.missing)} node(s) did not answer discovery's query and were "
            f"not asked: {', '.join(found.missing)}",
            err=True,
        )
    if not outcomes:
        raise _fail(f"no answering node has a machine {machine} matching the filter")
    if format is Format.json:
        typer.echo(json.dumps([outcome.to_dict() for outcome in outcomes], indent=2))
    else:
        from rich.table import Table

        console = _console()
        for kind in Outcome:
            rows = [o for o in outcomes if o.outcome is kind]
            if not rows:
                continue
            table = Table(
                "node",
                "from",
                "to",
                "detail",
                title=f"{_HEADINGS[kind.value]}: {len(rows)}",
                title_justify="left",
                box=None,
            )
            for row in rows:
                table.add_row(
                    _shown(row.identity),
                    _shown(row.from_state or ""),
                    _shown(row.to_state or ""),
                    _shown(row.message),
                )
            console.print(table)
    if any(outcome.outcome is not Outcome.DONE for outcome in outcomes) or found.missing:
        raise typer.Exit(1)
