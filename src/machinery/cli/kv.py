"""``machinery kv``: read and write key-value buckets.

By default the commands go through the local agent's HTTP API (``/api/v1/kv``), so they reach
whichever store the agent uses: its own SQLite store, or NATS JetStream when it has a broker.
With ``--nats URL`` they talk to NATS JetStream key-value directly, no agent needed (buckets made
by Choria or the ``nats`` CLI are the same buckets).

::

    machinery kv add CONFIG
    machinery kv put CONFIG mode maintenance
    machinery kv get CONFIG mode
    machinery kv ls CONFIG
    machinery kv watch CONFIG
    machinery kv del CONFIG mode
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from machinery.cli.natsclient import CredentialsOption

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    name="kv",
    help="Read and write key-value buckets (through the agent, or NATS directly with --nats).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Format(StrEnum):
    text = "text"
    json = "json"


AgentOption = Annotated[
    str | None, typer.Option("--agent", help="Agent URL (default: the local agent).")
]
TokenOption = Annotated[
    Path | None, typer.Option("--token-file", help="File holding the API bearer token.")
]
NatsOption = Annotated[
    str | None,
    typer.Option("--nats", help="Use NATS JetStream directly (nats://host:port, comma-separated)."),
]
FormatOption = Annotated[Format, typer.Option("--format", help="text or json.")]
BucketArg = Annotated[str, typer.Argument(help="Bucket name.")]
KeyArg = Annotated[str, typer.Argument(help="Key.")]


class _Failure(Exception):
    """A command failed; the message says why."""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"machinery: {message}", err=True)
    return typer.Exit(1)


class _Target:
    """Where the commands go: the agent's API, or NATS directly."""

    def __init__(
        self,
        agent_url: str | None,
        token_file: Path | None,
        nats_url: str | None,
        creds: Path | None,
    ) -> None:
        if nats_url and agent_url:
            raise _Failure("use either --agent or --nats")
        self.agent_url = agent_url
        self.token_file = token_file
        self.nats_url = nats_url
        self.creds = creds

    # -- NATS -------------------------------------------------------------------------------

    def nats(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``operation(NatsKV)`` on a fresh connection."""
        return asyncio.run(self._with_nats(operation))

    async def _with_nats(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        from machinery.cli.natsclient import NatsConnectError, connect
        from machinery.core.kv import KVError
        from machinery.nats.kv import NatsKV

        assert self.nats_url is not None
        try:
            client = await connect(self.nats_url, self.creds, name="machinery kv")
        except NatsConnectError as exc:
            raise _Failure(str(exc)) from None
        try:
            return await operation(NatsKV(client))
        except KVError as exc:
            raise _Failure(str(exc)) from None
        finally:
            await client.close()

    # -- the agent --------------------------------------------------------------------------

    def agent(self, method: str, path: str, **kwargs: Any) -> Any:
        from machinery.cli.client import AgentClient, ClientError

        try:
            with AgentClient(self.agent_url, self.token_file) as client:
                return client.request(method, path, **kwargs)
        except ClientError as exc:
            raise _Failure(str(exc)) from None

    def agent_stream(self, path: str, params: dict[str, str]) -> Iterator[tuple[str, str]]:
        """Server-sent events from the agent: (event, data) pairs."""
        import httpx

        from machinery.cli.client import AgentClient, ClientError

        try:
            client = AgentClient(self.agent_url, self.token_file)
            # AgentClient has no generic streaming call; its httpx client carries the token.
            with (
                client,
                client._client.stream("GET", path, params=params, timeout=None) as response,
            ):
                if response.status_code >= 400:
                    response.read()
                    try:
                        message = response.json().get("error")
                    except ValueError:
                        message = response.text
                    raise _Failure(message or f"HTTP {response.status_code}")
                event, data = "message", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif not line and data:
                        yield event, "\n".join(data)
                        event, data = "message", []
        except (httpx.HTTPError, ClientError) as exc:
            url = self.agent_url or "the local agent"
            raise _Failure(f"lost the agent at {url}: {exc}") from None


def _entry_json(entry: Any) -> dict[str, Any]:
    from machinery.api.kv import entry_json

    body = entry_json(entry)
    body["operation"] = entry.operation.value
    return body


def _raw_value(body: dict[str, Any]) -> bytes:
    if body.get("encoding") == "base64":
        return base64.b64decode(body["value"])
    return str(body.get("value", "")).encode()


def _write_value(value: bytes) -> None:
    stream = sys.stdout.buffer
    stream.write(value)
    if not value.endswith(b"\n"):
        stream.write(b"\n")
    stream.flush()


def _emit(data: Any, format: Format, text: str) -> None:
    typer.echo(json.dumps(data, indent=2) if format is Format.json else text)


@app.command("get")
def get(
    bucket: BucketArg,
    key: KeyArg,
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
    nats_url: NatsOption = None,
    creds: CredentialsOption = None,
    format: FormatOption = Format.text,
) -> None:
    """Print a key's value (raw; JSON with its revision with --format json)."""
    try:
        target = _Target(agent_url, token_file, nats_url, creds)
        if target.nats_url:

            async def read(kv: Any) -> Any:
                return await kv.get(bucket, key)

            entry = target.nats(read)
            if entry is None:
                raise _Failure(f"key {key} not found in bucket {bucket}")
            body = _entry_json(entry)
            body.pop("operation")
        else:
            body = target.agent("GET", f"/api/v1/kv/{bucket}/{key}")
    except _Failure as exc:
        raise _fail(str(exc)) from None
    if format is Format.json:
        typer.echo(json.dumps(body, indent=2))
    else:
        _write_value(_raw_value(body))


@app.command("put")
def put(
    bucket: BucketArg,
    key: KeyArg,
    value: Annotated[str, typer.Argument(help="The value; - reads it from standard input.")],
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
    nats_url: NatsOption = None,
    creds: CredentialsOption = None,
    format: FormatOption = Format.text,
) -> None:
    """Store a value."""
    data = sys.stdin.buffer.read() if value == "-" else value.encode()
    try:
        target = _Target(agent_url, token_file, nats_url, creds)
        if target.nats_url:

            async def write(kv: Any) -> int:
                return int(await kv.put(bucket, key, data))

            revision = target.nats(write)
        else:
            revision = target.agent(
                "PUT",
                f"/api/v1/kv/{bucket}/{key}",
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )["revision"]
    except _Failure as exc:
        raise _fail(str(exc)) from None
    result = {"bucket": bucket, "key": key, "revision": revision}
    _emit(result, format, f"{bucket}.{key} stored at revision {revision}")


@app.command("del")
def delete(
    bucket: BucketArg,
    key: KeyArg,
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
    nats_url: NatsOption = None,
    creds: CredentialsOption = None,
    format: FormatOption = Format.text,
) -> None:
    """Delete a key's value."""
    try:
        target = _Target(agent_url, token_file, nats_url, creds)
        if target.nats_url:

            async def remove(kv: Any) -> None:
                await kv.delete(bucket, key)

            target.nats(remove)
        else:
            target.agent("DELETE", f"/api/v1/kv/{bucket}/{key}")
    except _Failure as exc:
        raise _fail(str(exc)) from None
    _emit({"bucket": bucket, "key": key, "deleted": True}, format, f"{bucket}.{key} deleted")


@app.command("ls")
def ls(
    bucket: Annotated[
        str | None, typer.Argument(help="List this bucket's keys (default: list buckets).")
    ] = None,
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
    nats_url: NatsOption = None,
    creds: CredentialsOption = None,
    format: FormatOption = Format.text,
) -> None:
    """List the buckets, or the keys of one bucket."""
    try:
        target = _Target(agent_url, token_file, nats_url, creds)
        if target.nats_url:

            async def listing(kv: Any) -> list[str]:
                return list(await (kv.keys(bucket) if bucket else kv.buckets()))

            names = target.nats(listing)
        elif bucket:
            names = target.agent("GET", f"/api/v1/kv/{bucket}")["keys"]
        else:
            names = target.agent("GET", "/api/v1/kv")["buckets"]
    except _Failure as exc:
        raise _fail(str(exc)) from None
    if format is Format.json:
        typer.echo(json.dumps(names, indent=2))
    elif names:
        typer.echo("\n".join(names))


@app.command("add")
def add(
    bucket: BucketArg,
    history: Annotated[int, typer.Option(help="Revisions kept per key (NATS; 1-64).")] = 1,
    ttl: Annotated[
        str | None, typer.Option(help="Values expire this long after they are stored (1h, 7d).")
    ] = None,
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
    nats_url: NatsOption = None,
    creds: CredentialsOption = None,
    format: FormatOption = Format.text,
) -> None:
    """Create a bucket (nothing changes if it exists)."""
    from machinery.lang.duration import DurationError, parse_duration

    seconds: float | None = None
    if ttl:
        try:
            seconds = parse_duration(ttl) or None
        except DurationError as exc:
            raise _fail(f"invalid --ttl: {exc}") from None
    if not 1 <= history <= 64:
        raise _fail("--history must be between 1 and 64")
    try:
        target = _Target(agent_url, token_file, nats_url, creds)
        if target.nats_url:

            async def create(kv: Any) -> None:
                await kv.create_bucket(bucket, history=history, ttl=seconds)

            target.nats(create)
        else:
            params: dict[str, Any] = {"history": history}
            if seconds:
                params["ttl"] = seconds
            target.agent("POST", f"/api/v1/kv/{bucket}", params=params)
    except _Failure as exc:
        raise _fail(str(exc)) from None
    _emit({"bucket": bucket, "history": history, "ttl": seconds}, format, f"bucket {bucket} ready")


@app.command("watch")
def watch(
    bucket: BucketArg,
    key: Annotated[
        str, typer.Argument(help="Key or pattern (* is one token, a final > the rest).")
    ] = ">",
    count: Annotated[
        int, typer.Option(help="Exit after this many entries (0: follow until interrupted).")
    ] = 0,
    agent_url: AgentOption = None,
    token_file: TokenOption = None,
    nats_url: NatsOption = None,
    creds: CredentialsOption = None,
    format: FormatOption = Format.text,
) -> None:
    """Print the current values, then every change as it happens."""
    seen = 0

    def show(body: dict[str, Any]) -> bool:
        """Print one entry; True when --count is reached."""
        nonlocal seen
        if format is Format.json:
            typer.echo(json.dumps(body, separators=(",", ":")))
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(body.get("created") or time.time()))
            line = (
                f"[{stamp}] {body['operation']} {body['bucket']}.{body['key']} #{body['revision']}"
            )
            if body["operation"] == "PUT":
                value = _raw_value(body).decode("utf-8", errors="replace")
                line += f": {value}"
            typer.echo(line)
        seen += 1
        return bool(count) and seen >= count

    try:
        target = _Target(agent_url, token_file, nats_url, creds)
        if target.nats_url:

            async def follow(kv: Any) -> None:
                async for entry in kv.watch(bucket, key):
                    if show(_entry_json(entry)):
                        return

            target.nats(follow)
        else:
            for event, data in target.agent_stream(f"/api/v1/kv/{bucket}/watch", {"key": key}):
                body = json.loads(data)
                if event == "error":
                    raise _Failure(body.get("error", data))
                if event == "kv" and show(body):
                    break
    except _Failure as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
