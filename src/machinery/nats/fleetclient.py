"""The client side of fleet control: find the nodes, ask them, gather their replies.

Discovery uses the NATS services protocol (``$SRV.PING.machinery``): every agent answers with
its identity in the metadata, so a client knows how many replies to wait for and can name the
nodes that did not answer instead of waiting blindly. A fleet request goes out once, to
``machinery.fleet.<verb>``, with one reply inbox; gathering stops as soon as every discovered
node answered, or when the timeout passes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from machinery.nats.control import SERVICE_NAME, fleet_subject, node_subject

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

__all__ = ["FleetReplies", "NodeInfo", "discover", "gather", "request_node"]

log = logging.getLogger("machinery.fleet")

DISCOVERY_WAIT = 1.0
# Discovery ends early once replies stop coming for this long.
DISCOVERY_QUIET = 0.3
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class NodeInfo:
    """A node found by discovery."""

    identity: str
    version: str
    service_id: str


@dataclass
class FleetReplies:
    """The replies to one fleet request, by node identity."""

    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    invalid: int = 0

    @property
    def matched(self) -> dict[str, dict[str, Any]]:
        """The replies of the nodes the filter selected (answers and errors)."""
        return {k: v for k, v in self.replies.items() if v.get("matched", True)}


async def discover(
    client: NATS, *, wait: float = DISCOVERY_WAIT, quiet: float = DISCOVERY_QUIET
) -> dict[str, NodeInfo]:
    """Every answering ``machinery`` service, by identity, within ``wait`` seconds."""
    found: dict[str, NodeInfo] = {}
    arrived = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        try:
            ping = json.loads(msg.data)
            metadata = ping.get("metadata") or {}
            identity = metadata.get("identity")
            if isinstance(identity, str) and identity:
                found[identity] = NodeInfo(
                    identity, str(metadata.get("version", "")), str(ping.get("id", ""))
                )
                arrived.set()
        except (ValueError, AttributeError):
            log.debug("ignoring a malformed discovery reply")

    inbox = client.new_inbox()
    subscription = await client.subscribe(inbox, cb=on_reply)
    try:
        await client.publish(f"$SRV.PING.{SERVICE_NAME}", b"", reply=inbox)
        await client.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (remaining := deadline - loop.time()) > 0:
            arrived.clear()
            # Before the first reply wait the whole window; after it, until replies stop.
            timeout = min(remaining, quiet) if found else remaining
            try:
                async with asyncio.timeout(timeout):
                    await arrived.wait()
            except TimeoutError:
                if found:
                    break
    finally:
        await subscription.unsubscribe()
    return found


async def gather(
    client: NATS,
    verb: str,
    request: Mapping[str, Any],
    expected: set[str],
    *,
    timeout: float = REQUEST_TIMEOUT,
) -> FleetReplies:
    """Send ``request`` to every node and collect replies until each of ``expected`` answered
    (or ``timeout`` passes); nodes that answer without being expected are kept too."""
    result = FleetReplies()
    waiting = set(expected)
    done = asyncio.Event()
    if not waiting:
        done.set()

    async def on_reply(msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
            identity = body["identity"]
            if not isinstance(identity, str):
                raise TypeError(identity)
        except (ValueError, KeyError, TypeError):
            result.invalid += 1
            return
        result.replies.setdefault(identity, body)
        waiting.discard(identity)
        if not waiting:
            done.set()

    inbox = client.new_inbox()
    subscription = await client.subscribe(inbox, cb=on_reply)
    try:
        await client.publish(fleet_subject(verb), _encode(request), reply=inbox)
        await client.flush()
        try:
            async with asyncio.timeout(timeout):
                await done.wait()
        except TimeoutError:
            pass
    finally:
        await subscription.unsubscribe()
    result.missing = sorted(waiting)
    return result


async def request_node(
    client: NATS,
    identity: str,
    verb: str,
    request: Mapping[str, Any],
    *,
    timeout: float = REQUEST_TIMEOUT,
) -> dict[str, Any] | None:
    """One node's reply, or None when it did not answer in time."""
    import nats.errors

    try:
        msg = await client.request(node_subject(identity, verb), _encode(request), timeout=timeout)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None
    try:
        body = json.loads(msg.data)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _encode(request: Mapping[str, Any]) -> bytes:
    return json.dumps(request, separators=(",", ":")).encode()
