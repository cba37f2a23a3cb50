"""The ``machinery`` command line."""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from machinery import __version__
from machinery.cli.natsclient import CredentialsOption

if TYPE_CHECKING:
    # typer's own (vendored) click: the types its group methods take and return.
    from typer._click import Command, Context

    from machinery.spec.diagnostics import Diagnostic

__all__ = ["app", "main"]

# Commands whose modules are imported only when the command runs (or help lists them):
# name -> (module, attribute, help). An attribute naming a typer.Typer is a command group.
LAZY_COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "test": ("machinery.cli.testing", "test", None),
    "simulate": ("machinery.cli.testing", "simulate", None),
    "dashboard": ("machinery.cli.dashboard", "dashboard", None),
    "plugins": (
        "machinery.cli.plugins",
        "app",
        "Sign and manage machines/plugins specifications.",
    ),
    "governor": ("machinery.cli.governor", "app", "Inspect and manage governors."),
    "kv": ("machinery.cli.kv", "app", "Read and write the key-value store."),
    "fleet": ("machinery.cli.fleet", "app", "Ask and act across every agent on NATS."),
}


class _LazyGroup(TyperGroup):
    """The root command: the :data:`LAZY_COMMANDS` are built on first use, so a command
    imports only what it needs."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_COMMANDS if n not in self.commands)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            built = _build_lazy_command(cmd_name)
            self.add_command(built, cmd_name)
            return built
        return command


def _build_lazy_command(name: str) -> Command:
    import importlib

    module_name, attribute, help_text = LAZY_COMMANDS[name]
    target = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, typer.Typer):
        group = typer.main.get_group(target)
        group.name = name
        if help_text:
            group.help = help_text
        return group
    single = typer.Typer()
    single.command(name=name)(target)
    return typer.main.get_command(single)


app = typer.Typer(
    cls=_LazyGroup,
    name="machinery",
    help="Autonomous agents for servers: run, check and inspect machine.yaml state machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


class GraphFormat(StrEnum):
    dot = "dot"
    mermaid = "mermaid"


_LOG_HANDLER = "machinery-console"


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Console logging in Choria's spirit: time, level, ``machine#component: message``."""
    from machinery.cli.logformat import JsonFormatter, TextFormatter

    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
        )
    handler.set_name(_LOG_HANDLER)
    root = logging.getLogger()
    # Replaces only the handler a previous call installed: handlers others added (a test
    # runner's capture) keep working.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != _LOG_HANDLER] + [handler]
    root.setLevel(level.upper())


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"machinery {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """machinery: autonomous agents for servers."""


@app.command()
def run(
    directories: Annotated[list[Path], typer.Argument(help="Machine directories to run.")],
    facts: Annotated[Path | None, typer.Option(help="JSON file of node facts.")] = None,
    data: Annotated[
        Path | None, typer.Option(help="JSON object stored into each machine's data.")
    ] = None,
    identity: Annotated[str | None, typer.Option(help="Node identity (default: the FQDN).")] = None,
    events: Annotated[
        str | None,
        typer.Option(help="Write every event as CloudEvent JSON lines here (- = stdout)."),
    ] = None,
    no_rate_limit: Annotated[
        bool, typer.Option("--no-rate-limit", help="Disable the fast-transition rate limiter.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats",
            "--connect",
            help="NATS server URLs (comma separated) for kv, gossip and governors.",
        ),
    ] = None,
    credentials: CredentialsOption = None,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            help="Serve the machine HTTP routes (httpswitch, metric) on HOST:PORT.",
        ),
    ] = None,
) -> None:
    """Run machines in the foreground until interrupted (SIGINT/SIGTERM stop them cleanly)."""
    import asyncio

    from machinery.agent.run import RunOptions, run_machines
    from machinery.core.loop import install_child_watcher

    setup_logging(log_level)
    for directory in directories:
        if not directory.is_dir():
            typer.echo(f"machinery: {directory} is not a directory", err=True)
            raise typer.Exit(1)
    options = RunOptions(
        directories=directories,
        facts=facts,
        data=data,
        identity=identity,
        events=events,
        rate_limit=not no_rate_limit,
        nats=nats,
        credentials=credentials,
        http=http,
    )
    install_child_watcher()
    raise typer.Exit(asyncio.run(run_machines(options)))


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Machine directories or machine.yaml files.")],
    format: Annotated[
        OutputFormat, typer.Option("--format", help="text or json.")
    ] = OutputFormat.text,
    strict: Annotated[
        bool, typer.Option("--strict", help="Treat every warning as an error (exit 1).")
    ] = False,
) -> None:
    """Check manifests completely (structure, names, properties); exit 1 if any is invalid.

    Warnings (unknown keys, unreachable states, ...) do not make a manifest invalid: Choria runs
    such machines. ``--strict`` turns them into errors, for CI pipelines that want none.
    """
    from machinery.watchers.registry import check_manifest

    results = []
    all_valid = True
    for path in paths:
        manifest, diagnostics = check_manifest(path)
        if strict:
            diagnostics = [d.as_error() for d in diagnostics]
        valid = manifest is not None and not any(d.is_error for d in diagnostics)
        all_valid &= valid
        results.append((path, valid, diagnostics))
    if format is OutputFormat.json:
        document = {
            "valid": all_valid,
            "results": [
                {"path": str(p), "valid": v, "diagnostics": [d.to_dict() for d in ds]}
                for p, v, ds in results
            ],
        }
        typer.echo(json.dumps(document, indent=2))
    else:
        for path, valid, diagnostics in results:
            _print_diagnostics(diagnostics)
            warnings = sum(1 for d in diagnostics if not d.is_error)
            if valid:
                suffix = f" ({_plural(warnings, 'warning')})" if warnings else ""
                typer.echo(f"{path}: valid{suffix}")
            else:
                errors = len(diagnostics) - warnings
                typer.echo(f"{path}: invalid, {_plural(errors, 'error')}", err=True)
    raise typer.Exit(0 if all_valid else 1)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _print_diagnostics(diagnostics: list[Diagnostic]) -> None:
    for diagnostic in diagnostics:
        typer.echo(str(diagnostic), err=True)


@app.command()
def graph(
    path: Annotated[Path, typer.Argument(help="A machine directory or machine.yaml file.")],
    format: Annotated[
        GraphFormat, typer.Option("--format", help="dot or mermaid.")
    ] = GraphFormat.dot,
) -> None:
    """Print the machine's state graph.

    Like ``choria machine graph``, it draws any machine Choria's loader accepts, even one whose
    watchers have problems (found by Choria only at start); every problem is printed on stderr.
    """
    from machinery.spec.graph import to_dot, to_mermaid
    from machinery.spec.validate import graph_manifest
    from machinery.watchers.registry import default_registry

    spec, diagnostics = graph_manifest(path, default_registry().kinds)
    if spec is None:
        _print_diagnostics(diagnostics)
        raise typer.Exit(1)
    _print_diagnostics(diagnostics)
    text = to_dot(spec) if format is GraphFormat.dot else to_mermaid(spec)
    sys.stdout.write(text)


@app.command()
def schema() -> None:
    """Print the JSON Schema of machine.yaml (every registered watcher type)."""
    from machinery.spec.schema import machine_schema
    from machinery.watchers.registry import default_registry

    typer.echo(json.dumps(machine_schema(default_registry().kinds), indent=2, sort_keys=False))


@app.command()
def agent(
    config: Annotated[
        Path | None, typer.Option(help="Configuration file (machinery.toml).")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="Directory of machine directories.")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Where the agent keeps its state.")] = None,
    identity: Annotated[str | None, typer.Option(help="Node identity (default: the FQDN).")] = None,
    facts: Annotated[Path | None, typer.Option(help="JSON facts file.")] = None,
    listen: Annotated[str | None, typer.Option(help="HTTP API address, HOST:PORT.")] = None,
    nats: Annotated[str | None, typer.Option(help="NATS server URLs, comma separated.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Show the effective settings and exit.")
    ] = False,
) -> None:
    """Run the agent: every machine of a store, hot-reloaded, with the HTTP API."""
    from machinery.agent.config import ConfigError, load_settings
    from machinery.agent.daemon import run_agent

    flags = {
        "store": store,
        "state_dir": state_dir,
        "identity": identity,
        "facts": facts,
        "http.listen": listen,
        "nats.servers": nats,
        "log_level": log_level,
    }
    if print_config:
        try:
            loaded = load_settings(config, flags)
        except ConfigError as exc:
            typer.echo(f"machinery agent: {exc}", err=True)
            raise typer.Exit(2) from None
        _print_settings(loaded.describe())
        raise typer.Exit(0)
    raise typer.Exit(run_agent(config, flags))


def _print_settings(rows: list[tuple[str, object, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from machinery.lang.duration import format_go_duration
    from machinery.nats.connection import redact_url

    table = Table("setting", "value", "from", box=None, pad_edge=False)
    for name, value, source in rows:
        if name.endswith(("password", "token")) and value:
            value = "***"
        elif name == "nats.servers" and isinstance(value, list):
            value = [redact_url(str(url)) for url in value]
        elif name.endswith(("interval", "delay", "max_age")) and isinstance(value, (int, float)):
            value = format_go_duration(value)
        table.add_row(name, "" if value is None else str(value), source)
    Console(width=200).print(table)


AgentOption = Annotated[
    str | None, typer.Option("--agent", help="Agent URL (default: the local agent).")
]
TokenOption = Annotated[
    Path | None, typer.Option("--token-file", help="File holding the API bearer token.")
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="text or json.")]


def _client(agent_url: str | None, token_file: Path | None = None):  # type: ignore[no-untyped-def]
    from machinery.cli.client import AgentClient

    return AgentClient(agent_url, token_file)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"machinery: {message}", err=True)
    return typer.Exit(1)


@app.command()
def status(
    machine: Annotated[str | None, typer.Argument(help="Only this machine.")] = None,
    agent_url: AgentOption = None,
    format: FormatOption = OutputFormat.text,
) -> None:
    """Show the machines of a running agent."""
    from machinery.cli.client import ClientError

    try:
        with _client(agent_url) as client:
            machines = [client.machine(machine)] if machine else client.machines()
    except ClientError as exc:
        raise _fail(str(exc)) from None
    if format is OutputFormat.json:
        typer.echo(json.dumps(machines, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from machinery.cli.logformat import escape_control

    def shown(value: object) -> str:
        # What the agent reports comes from directory names and manifests: no control
        # character reaches the terminal, and no text is taken for rich's markup.
        return escape(escape_control(str(value)))

    table = Table("machine", "version", "status", "state", "since", "transitions", box=None)
    for entry in machines:
        since = ""
        if entry.get("start_time", 0) and entry["start_time"] > 0:
            import time as _time

            since = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(entry["start_time"]))
        table.add_row(
            shown(entry["name"]),
            shown(entry.get("version") or ""),
            shown(entry["status"]),
            shown(entry.get("state") or ""),
            since,
            shown(", ".join(entry.get("available_transitions") or [])),
        )
    console = Console(width=200)
    console.print(table)
    for entry in machines:
        for error in entry.get("errors") or []:
            console.print(f"[red]{shown(entry['name'])}[/red]: {shown(error)}", highlight=False)
        # A machine with warnings runs (as Choria runs it); the warnings say what it ignores.
        for warning in entry.get("warnings") or []:
            console.print(
                f"[yellow]{shown(entry['name'])}[/yellow]: {shown(warning)}", highlight=False
            )


@app.command()
def transition(
    machine: Annotated[str, typer.Argument(help="Machine name.")],
    event: Annotated[str, typer.Argument(help="Transition (event) to fire.")],
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
    format: FormatOption = OutputFormat.text,
) -> None:
    """Fire a transition on a machine of a running agent."""
    from machinery.cli.client import ClientError

    try:
        with _client(agent_url, token_file) as client:
            result = client.transition(machine, event)
    except ClientError as exc:
        raise _fail(str(exc)) from None
    if format is OutputFormat.json:
        typer.echo(json.dumps(result, indent=2))
    elif result["changed"]:
        typer.echo(f"{machine}: {result['from_state']} => {result['to_state']} via {event}")
    else:
        typer.echo(f"{machine}: {event} is valid in {result['from_state']} and changes nothing")


@app.command()
def history(
    machine: Annotated[str, typer.Argument(help="Machine name.")],
    limit: Annotated[int, typer.Option(help="How many transitions.")] = 20,
    agent_url: AgentOption = None,
    format: FormatOption = OutputFormat.text,
) -> None:
    """Show a machine's recent transitions (newest first)."""
    import time as _time

    from machinery.cli.client import ClientError

    try:
        with _client(agent_url) as client:
            rows = client.history(machine, limit)
    except ClientError as exc:
        raise _fail(str(exc)) from None
    if format is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("time", "transition", "from", "to", box=None)
    for row in rows:
        stamp = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(row["timestamp"]))
        table.add_row(stamp, row["transition"], row["from_state"], row["to_state"])
    Console(width=200).print(table)


@app.command()
def watch(
    agent_url: AgentOption = None,
    events_file: Annotated[
        Path | None, typer.Option("--events-file", help="Follow a CloudEvents JSON-lines file.")
    ] = None,
    nats: Annotated[
        str | None, typer.Option("--nats", help="Follow events on NATS (nats://host:port).")
    ] = None,
    credentials: CredentialsOption = None,
    transitions: Annotated[bool, typer.Option("--transitions", help="Only transitions.")] = False,
    watchers: Annotated[bool, typer.Option("--watchers", help="Only watcher states.")] = False,
    type: Annotated[
        list[str] | None, typer.Option("--type", help="Watcher types to show (repeatable).")
    ] = None,
    machine: Annotated[str | None, typer.Option(help="Machine name contains this.")] = None,
    identity: Annotated[str | None, typer.Option(help="Node identity contains this.")] = None,
    format: FormatOption = OutputFormat.text,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="With --events-file: print existing events first.")
    ] = False,
) -> None:
    """Follow machine events live, in Choria's one-line format."""
    from machinery.cli.watch import EventFilter, follow

    selected = EventFilter(
        transitions=transitions or not watchers,
        watchers=watchers or not transitions,
        types=set(type or []),
        machine=machine,
        identity=identity,
    )
    raise typer.Exit(
        follow(
            selected,
            agent_url=agent_url,
            events_file=events_file,
            nats_url=nats,
            credentials=credentials,
            as_json=format is OutputFormat.json,
            from_start=from_start,
        )
    )


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    main()
