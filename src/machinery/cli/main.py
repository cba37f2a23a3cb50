"""The ``machinery`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from machinery import __version__
from machinery.spec.diagnostics import Diagnostic

__all__ = ["app", "main"]

app = typer.Typer(
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


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Console logging in Choria's spirit: time, level, ``machine#component: message``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from machinery.cli.logformat import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
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
) -> None:
    """Run machines in the foreground until interrupted (SIGINT/SIGTERM stop them cleanly)."""
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
    )
    install_child_watcher()
    raise typer.Exit(asyncio.run(run_machines(options)))


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Machine directories or machine.yaml files.")],
    format: Annotated[
        OutputFormat, typer.Option("--format", help="text or json.")
    ] = OutputFormat.text,
) -> None:
    """Check manifests completely (structure, names, properties); exit 1 if any is invalid."""
    from machinery.watchers.registry import check_manifest

    results = []
    all_valid = True
    for path in paths:
        manifest, diagnostics = check_manifest(path)
        valid = manifest is not None
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
                suffix = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
                typer.echo(f"{path}: valid{suffix}")
            else:
                errors = len(diagnostics) - warnings
                typer.echo(f"{path}: invalid, {errors} error{'s' if errors != 1 else ''}", err=True)
    raise typer.Exit(0 if all_valid else 1)


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
    """Print the machine's state graph."""
    from machinery.spec.graph import to_dot, to_mermaid
    from machinery.watchers.registry import check_manifest

    manifest, diagnostics = check_manifest(path)
    if manifest is None:
        _print_diagnostics(diagnostics)
        raise typer.Exit(1)
    text = to_dot(manifest.spec) if format is GraphFormat.dot else to_mermaid(manifest.spec)
    sys.stdout.write(text)


@app.command()
def schema() -> None:
    """Print the JSON Schema of machine.yaml (every registered watcher type)."""
    from machinery.spec.schema import machine_schema
    from machinery.watchers.registry import default_registry

    typer.echo(json.dumps(machine_schema(default_registry().kinds), indent=2, sort_keys=False))


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    main()
