"""``machinery plugins``: keys, signed specifications and their manifests (spec section 5).

The ``machines`` and ``plugins`` watchers deploy what a signed specification lists. These
commands make and check those specifications:

- ``keys``: a new ed25519 key pair;
- ``add`` / ``rm``: edit the JSON array (``plugins.json``) entry by entry;
- ``pack``: check the array and sign it into ``{"plugins": ..., "signature": ...}`` (or the
  ``machines`` format with ``--kind machines``), ready for ``kv put``;
- ``verify``: check a packed specification against a public key;
- ``matcher``: evaluate an entry's ``match`` expression for a given identity and facts.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from machinery.core.atomic import atomic_write
from machinery.core.signing import (
    KeyPair,
    SigningError,
    SpecificationError,
    SpecKind,
    decode_specification,
    generate_keypair,
    load_public_key,
    load_signing_key,
    pack_specification,
    read_specification_file,
    specification_kind,
)
from machinery.watchers.manager import MatcherError, compile_matcher, node_matches, parse_entries

__all__ = ["app"]

app = typer.Typer(
    help="Keys and signed specifications for the machines and plugins watchers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_MANIFEST = Path("plugins.json")

ManifestOption = Annotated[
    Path, typer.Option("--manifest", help="the JSON array of entries to edit")
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"machinery: {message}", err=True)
    raise typer.Exit(1)


def _write_new(path: Path, data: bytes, force: bool) -> None:
    if path.exists() and not force:
        _fail(f"output file {path} exist, use --force to overwrite")
    try:
        atomic_write(path, data, mode=0o600)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}")


@app.command()
def keys(
    seed_file: Annotated[
        Path | None,
        typer.Option(
            "--seed-file",
            help="write the private seed to this file (mode 0600) instead of printing it",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing seed file")] = False,
) -> None:
    """Create an ed25519 key pair: nodes get the public key, pack needs the seed."""
    pair = generate_keypair()
    if seed_file is not None:
        _write_new(seed_file, (pair.seed_hex + "\n").encode(), force)
        typer.echo(f"Public Key: {pair.public_hex}")
        typer.echo(f"      Seed: written to {seed_file}")
        return
    typer.echo(f"Public Key: {pair.public_hex}")
    typer.echo(f"      Seed: {pair.seed_hex}")


@app.command()
def pack(
    source: Annotated[Path, typer.Argument(help="the JSON array of entries")],
    key: Annotated[
        str,
        typer.Argument(
            help="the private key: the hex seed (or Go's 64-byte hex key), or a file holding it",
            envvar="KEY",
            show_envvar=True,
        ),
    ] = "",
    kind: Annotated[
        SpecKind,
        typer.Option("--kind", help="plugins (signs the base64 text) or machines (the JSON)"),
    ] = SpecKind.PLUGINS,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="pack an empty list, sign nothing without a warning, overwrite output"
        ),
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", help="write to this file (0600) instead of stdout")
    ] = None,
) -> None:
    """Check the entries and encode (and sign) them as a specification."""
    try:
        payload = source.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {source}: {exc.strerror or exc}")
    try:
        entries = parse_entries(payload, kind)
    except SpecificationError as exc:
        _fail(f"invalid specification: {exc}")
    if not entries and not force:
        _fail(f"no {kind.value} listed in specification, use --force to write an empty list")
    pair: KeyPair | None = None
    if key:
        try:
            pair = load_signing_key(key)
        except SigningError as exc:
            _fail(str(exc))
    elif not force:
        typer.echo("warning: No ed25519 private key given, encoding without signing", err=True)
    document = pack_specification(kind, payload, pair)
    text = json.dumps(document, separators=(",", ":"))
    if output is None:
        typer.echo(text)
        return
    _write_new(output, (text + "\n").encode(), force)


@app.command()
def verify(
    source: Annotated[Path, typer.Argument(help="a specification made by pack")],
    key: Annotated[str, typer.Argument(help="the public key in hex, or a file holding it")],
) -> None:
    """Check that a specification is signed by the owner of KEY."""
    try:
        document = read_specification_file(source)
        kind = specification_kind(document)
    except SpecificationError as exc:
        _fail(str(exc))
    try:
        public = load_public_key(key)
    except SigningError as exc:
        _fail(str(exc))
    try:
        payload = decode_specification(kind, document, public)
    except SpecificationError as exc:
        if exc.reason == "signature":
            typer.echo(f"Data {source} does not have a valid signature for key {public.hex()}")
            _fail("verification failed")
        _fail(str(exc))
    try:
        parse_entries(payload, kind)
    except SpecificationError as exc:
        typer.echo(f"warning: the signed {kind.value} are not valid: {exc}", err=True)
    typer.echo(f"Data file {source} is signed using {public.hex()}")


def _read_manifest(path: Path, *, must_exist: bool) -> list[dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if must_exist:
            _fail(f"{path} does not exist")
        return []
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror or exc}")
    try:
        data = json.loads(raw) if raw.strip() else []
    except (ValueError, RecursionError) as exc:
        _fail(f"{path} is not valid JSON: {exc}")
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        _fail(f"{path} must hold a JSON array of objects")
    return data


def _write_manifest(path: Path, entries: list[dict[str, Any]]) -> None:
    try:
        atomic_write(path, (json.dumps(entries, indent=2) + "\n").encode(), mode=0o600)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}")


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="unique name (empty: taken from the URL)")],
    url: Annotated[str, typer.Argument(help="URL of the .tar.gz; user:password@ is moved out")],
    checksum: Annotated[str, typer.Argument(help="SHA-256 of the archive")],
    verify_checksum: Annotated[str, typer.Argument(help="SHA-256 of its SHA256SUMS file")],
    manifest: ManifestOption = DEFAULT_MANIFEST,
    matcher: Annotated[
        str | None, typer.Option("--matcher", help="deploy only where this expression is true")
    ] = None,
    governor: Annotated[
        str | None, typer.Option("--governor", help="take a slot in this governor to download")
    ] = None,
) -> None:
    """Add an entry to the manifest, or update the entry of that name."""
    try:
        parts = urllib.parse.urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError as exc:
        _fail(f"invalid URL {url}: {exc}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _fail(f"invalid URL {url}: use an http:// or https:// URL")
    netloc = parts.netloc.rpartition("@")[2]
    source = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    if not name:
        # Choria's rule: the file name up to its first "-" (requests-agent_1.0.tgz: requests).
        name = os.path.basename(parts.path).split("-", 1)[0]
        if not name:
            _fail("could not determine a name from the URL, please give one")
    if matcher:
        try:
            compile_matcher(matcher)
        except ValueError as exc:
            _fail(f"invalid matcher: {exc}")
    entries = _read_manifest(manifest, must_exist=False)
    entry: dict[str, Any] | None = next((e for e in entries if e.get("name") == name), None)
    if entry is None:
        entry = {"name": name}
        entries.append(entry)
        typer.echo(f"Adding plugin {name}")
    else:
        typer.echo(f"Updating plugin {name}")
    entry.update(source=source, checksum=checksum, verify_checksum=verify_checksum)
    if username is not None:
        entry["username"] = urllib.parse.unquote(username)
        entry["password"] = urllib.parse.unquote(password or "")
    if matcher is not None:
        entry["match"] = matcher
    if governor is not None:
        entry["governor"] = governor
    try:
        parse_entries(json.dumps(entries).encode(), SpecKind.PLUGINS)
    except SpecificationError as exc:
        _fail(f"not saved: {exc}")
    _write_manifest(manifest, entries)
    typer.echo(f"Use the pack command to sign the {manifest} manifest")


@app.command()
def rm(
    name: Annotated[str, typer.Argument(help="the entry to remove")],
    manifest: ManifestOption = DEFAULT_MANIFEST,
) -> None:
    """Remove an entry from the manifest."""
    entries = _read_manifest(manifest, must_exist=True)
    kept = [e for e in entries if e.get("name") != name]
    if len(kept) == len(entries):
        _fail(f"no plugin named {name} found")
    typer.echo(f"Removing plugin {name}")
    _write_manifest(manifest, kept)
    typer.echo(f"Use the pack command to sign the {manifest} manifest")


@app.command()
def matcher(
    expression: Annotated[str, typer.Argument(help="the match expression")],
    identity: Annotated[str, typer.Option("--identity", help="the node identity")] = "",
    facts: Annotated[
        Path | None, typer.Option("--facts", help="a JSON file holding the node's facts")
    ] = None,
) -> None:
    """Evaluate a match expression as a node with this identity and these facts would."""
    node_facts: Any = {}
    if facts is not None:
        try:
            node_facts = json.loads(facts.read_bytes())
        except OSError as exc:
            _fail(f"cannot read {facts}: {exc.strerror or exc}")
        except (ValueError, RecursionError) as exc:
            _fail(f"{facts} is not valid JSON: {exc}")
    try:
        matched = node_matches(expression, identity, node_facts)
    except MatcherError as exc:
        _fail(f"could not evaluate the matcher: {exc}")
    if matched:
        typer.echo(f"Matched plugin matcher: {expression}")
    else:
        typer.echo(f"Failed to match plugin matcher: {expression}")
