"""The client side of fleet control: find the nodes, ask them, gather their replies.

Discovery uses the NATS services protocol (``$SRV.PING.machinery``): every agent answers with
its identity in the metadata, so a client knows how many replies to wait for and can name the
nodes that did not answer instead of waiting blindly. A fleet request goes out once, to
``machinery.fleet.<verb>``, with one reply inbox; gathering stops as soon as every discovered
node answered, or when the timeout passes.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from machinery.nats.control import REFUSALS, SERVICE_NAME, Filter, fleet_subject, node_subject

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

    from machinery.core.signing import KeyPair

__all__ = [
    "FleetReplies",
    "NodeInfo",
    "NodeOutcome",
    "Outcome",
    "discover",
    "gather",
    "glob_literal",
    "outcome_of",
    "plan_batches",
    "request_node",
    "select_nodes",
    "transition_nodes",
]

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


async def select_nodes(
    client: NATS,
    selected: Filter,
    *,
    discover_wait: float = DISCOVERY_WAIT,
    timeout: float = REQUEST_TIMEOUT,
) -> tuple[list[str], FleetReplies]:
    """The identities (sorted) of the answering nodes ``selected`` matches, and the replies of
    the ``machines`` question that found them (for the nodes that did not answer)."""
    nodes = await discover(client, wait=discover_wait)
    request = {"version": 1, "filter": selected.to_dict()}
    replies = await gather(client, "machines", request, set(nodes), timeout=timeout)
    targets = sorted(identity for identity, body in replies.matched.items() if "error" not in body)
    return targets, replies


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


# -- acting on many nodes ----------------------------------------------------------------------


class Outcome(enum.StrEnum):
    """What became of a transition on one node."""

    DONE = "done"
    REFUSED = "refused"  # the node refused the request (signature, key, freshness, replay)
    INVALID = "invalid"  # not valid in the machine's current state
    FAILED = "failed"  # any other error (machine not found, bad request, internal)
    NO_ANSWER = "no_answer"
    SKIPPED = "skipped"  # never sent: an earlier batch failed


@dataclass(frozen=True)
class NodeOutcome:
    identity: str
    outcome: Outcome
    message: str = ""
    from_state: str | None = None
    to_state: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "outcome": self.outcome.value,
            "message": self.message,
            "from_state": self.from_state,
            "to_state": self.to_state,
        }


def glob_literal(text: str) -> str:
    """A glob that matches exactly ``text`` (fnmatch has no escape character)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def plan_batches(nodes: list[str], batch: int, canary: int) -> list[list[str]]:
    """The canary batch (when ``canary`` > 0) then batches of ``batch`` (0: all the rest)."""
    batches: list[list[str]] = []
    rest = list(nodes)
    if canary > 0:
        batches.append(rest[:canary])
        rest = rest[canary:]
    size = batch if batch > 0 else max(len(rest), 1)
    batches.extend(rest[i : i + size] for i in range(0, len(rest), size))
    return [b for b in batches if b]


def outcome_of(identity: str, body: dict[str, Any] | None) -> NodeOutcome:
    """How one node's reply to a transition request reads."""
    if body is None:
        return NodeOutcome(identity, Outcome.NO_ANSWER, "no answer")
    error = body.get("error")
    if isinstance(error, dict):
        code = str(error.get("code", ""))
        message = f"{code}: {error.get('message', '')}"
        if code in REFUSALS:
            return NodeOutcome(identity, Outcome.REFUSED, message)
        if code == "invalid":
            return NodeOutcome(identity, Outcome.INVALID, message)
        return NodeOutcome(identity, Outcome.FAILED, message)
    if not body.get("matched", True):
        return NodeOutcome(identity, Outcome.FAILED, "the node no longer matches the filter")
    result = body.get("result") or {}
    return NodeOutcome(
        identity,
        Outcome.DONE,
        "changed" if result.get("changed") else "valid, no change",
        result.get("from_state"),
        result.get("to_state"),
    )


async def transition_nodes(
    client: NATS,
    nodes: list[str],
    machine: str,
    event: str,
    key: KeyPair,
    selected: Filter,
    *,
    batch: int = 0,
    canary: int = 0,
    pause: float = 0.0,
    stop_on_error: bool = False,
    timeout: float = REQUEST_TIMEOUT,
    on_outcome: Callable[[NodeOutcome], None] | None = None,
) -> list[NodeOutcome]:
    """Fire ``event`` on ``machine`` of each node, in batches (the canary batch first).

    Each node gets its own signed request, pinned to it by an exact identity filter on top of
    ``selected``. A failure in the canary batch always stops the rollout; with
    ``stop_on_error`` a failure in any batch does. Nodes never asked are ``skipped``.
    """
    from machinery.nats.control import sign_request, transition_request

    outcomes: list[NodeOutcome] = []

    async def one(identity: str) -> NodeOutcome:
        request = sign_request(
            transition_request(machine, event, selected.narrowed(identity=glob_literal(identity))),
            key,
        )
        outcome = outcome_of(
            identity, await request_node(client, identity, "transition", request, timeout=timeout)
        )
        if on_outcome is not None:
            on_outcome(outcome)
        return outcome

    batches = plan_batches(nodes, batch, canary)
    for number, members in enumerate(batches):
        results = await asyncio.gather(*(one(identity) for identity in members))
        outcomes.extend(results)
        failed = any(result.outcome is not Outcome.DONE for result in results)
        is_canary = canary > 0 and number == 0
        if failed and (stop_on_error or is_canary):
            for later in batches[number + 1 :]:
                for identity in later:
                    skipped = NodeOutcome(identity, Outcome.SKIPPED, "not attempted")
                    outcomes.append(skipped)
                    if on_outcome is not None:
                        on_outcome(skipped)
            break
        if pause > 0 and number + 1 < len(batches):
            await asyncio.sleep(pause)
    return outcomes
