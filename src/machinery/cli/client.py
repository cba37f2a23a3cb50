"""Talking to a running agent's HTTP API from the command line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

__all__ = ["AgentClient", "ClientError", "default_agent_url"]


class ClientError(Exception):
    """The agent could not be reached or refused the request; the message says why."""


def default_agent_url() -> str:
    """The local agent: from its state directory's agent.json, else its configured listener."""
    # Only here: a command given the agent's URL reads no agent settings at all.
    from machinery.agent.config import AGENT_FILE, ConfigError, load_settings

    try:
        settings = load_settings().settings
    except ConfigError:
        return "http://127.0.0.1:8347"
    try:
        url = json.loads((settings.state_dir / AGENT_FILE).read_text()).get("url")
        if isinstance(url, str) and url:
            return url
    except (OSError, ValueError):
        pass
    return f"http://{settings.http.host}:{settings.http.port}"


def _token(token_file: Path | None) -> str | None:
    path = token_file or (
        Path(os.environ["MACHINERY_HTTP__TOKEN_FILE"])
        if os.environ.get("MACHINERY_HTTP__TOKEN_FILE")
        else None
    )
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ClientError(f"cannot read token file {path}: {exc.strerror}") from exc


class AgentClient:
    """A thin synchronous client for the agent API."""

    def __init__(
        self, url: str | None = None, token_file: Path | None = None, timeout: float = 10.0
    ) -> None:
        self.url = (url or default_agent_url()).rstrip("/")
        headers = {"User-Agent": "machinery-cli"}
        token = _token(token_file)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the agent at {self.url}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text}
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            raise ClientError(message or f"HTTP {response.status_code}")
        return body

    def machines(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/api/v1/machines")["machines"])

    def machine(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/v1/machines/{name}"))

    def transition(self, name: str, event: str) -> dict[str, Any]:
        return dict(
            self.request("POST", f"/api/v1/machines/{name}/transition", json={"transition": event})
        )

    def history(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        return list(
            self.request("GET", f"/api/v1/machines/{name}/history", params={"limit": limit})[
                "history"
            ]
        )

    def watchers(self, name: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/api/v1/machines/{name}/watchers")["watchers"])

    def events(self, params: dict[str, str] | None = None) -> Iterator[str]:
        """CloudEvent JSON texts from the agent's event stream, as they arrive."""
        try:
            with self._client.stream(
                "GET", "/api/v1/events", params=params, timeout=None
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(response.json().get("error", f"HTTP {response.status_code}"))
                data: list[str] = []
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif not line and data:
                        yield "\n".join(data)
                        data = []
        except httpx.HTTPError as exc:
            raise ClientError(f"lost the agent at {self.url}: {exc}") from exc
