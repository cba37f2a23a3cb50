"""The agent as a NATS service (``nats.micro``): the node side of fleet control.

The service is named ``machinery`` so ``nats micro ls`` and ``$SRV.PING.machinery`` find every
agent; its metadata carries the node's ``identity`` and ``version``. Each verb has two endpoints,
``machinery.node.<identity>.<verb>`` and ``machinery.fleet.<verb>``, both in a queue group of
their own (nats.micro's default group would deliver a fleet request to one node only).

What is answered is defined in :mod:`machinery.nats.control`; what the node knows comes from a
:class:`ControlTarget` (the agent), so this module does not know how machines are stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from machinery import __version__
from machinery.nats.control import (
    REFUSALS,
    SERVICE_NAME,
    VERBS,
    ControlError,
    Filter,
    RequestAuthenticator,
    error_reply,
    fleet_subject,
    node_subject,
    parse_request,
    reply,
    subject_safe_identity,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.micro.request import Request
    from nats.micro.service import Service

    from machinery.nats.connection import BrokerConnection

__all__ = ["REFUSALS", "ControlTarget", "FleetService"]

log = logging.getLogger("machinery.control")

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]*)?$")
MAX_HISTORY = 100
_RETRY = 2.0


class ControlTarget(Protocol):
    """What a node offers to fleet control (implemented by the agent)."""

    identity: str

    def facts(self) -> Mapping[str, Any]: ...

    def machine_summaries(self) -> list[dict[str, Any]]:
        """Every machine as listed (each with at least ``name`` and ``state``)."""
        ...

    async def machine_detail(self, name: str, history: int) -> dict[str, Any] | None:
        """One machine with its watchers and recent history, or None when there is none."""
        ...

    async def transition(self, name: str, event: str) -> dict[str, Any]:
        """Fire ``event``; raises ControlError ``not_found`` or ``invalid``."""
        ...

    def agent_status(self) -> dict[str, Any]: ...

    def count(self, verb: str, outcome: str) -> None:
        """Record a request's outcome (metrics)."""
        ...


class FleetService:
    """Registers the agent's endpoints whenever a new NATS client is connected."""

    def __init__(
        self,
        broker: BrokerConnection,
        target: ControlTarget,
        authenticator: RequestAuthenticator,
    ) -> None:
        self.broker = broker
        self.target = target
        self.authenticator = authenticator
        self.service: Service | None = None
        self._client: NATS | None = None
        # A queue group of our own: every node receives every fleet request.
        self.queue_group = f"{SERVICE_NAME}.{secrets.token_hex(8)}"

    async def run(self) -> None:
        """Keep the service registered until cancelled."""
        changed = asyncio.Event()
        self.broker.on_change(lambda _state: changed.set())
        try:
            while True:
                changed.clear()
                if not await self.broker.wait_connected():
                    return  # NATS is not configured
                client = self.broker.client
                if client is not None and client is not self._client:
                    try:
                        await self._register(client)
                    except Exception as exc:  # a lost connection, a permission error...
                        log.warning("cannot register the fleet control service: %s", exc)
                        await asyncio.sleep(_RETRY)
                        continue
                await changed.wait()
        finally:
            self._client = None
            self.service = None

    async def _register(self, client: NATS) -> None:
        from nats.micro import add_service

        identity = self.target.identity
        service = await add_service(
            client,
            name=SERVICE_NAME,
            version=__version__ if _SEMVER.match(__version__) else "0.0.0",
            description="machinery agent: fleet control",
            metadata={"identity": identity, "version": __version__},
            queue_group=self.queue_group,
        )
        for verb in VERBS:
            await service.add_endpoint(
                name=f"fleet-{verb}", subject=fleet_subject(verb), handler=self._handler(verb)
            )
            if subject_safe_identity(identity):
                await service.add_endpoint(
                    name=verb, subject=node_subject(identity, verb), handler=self._handler(verb)
                )
        if not subject_safe_identity(identity):
            log.warning(
                "identity %r cannot be part of a NATS subject: this node answers only "
                "machinery.fleet.* requests",
                identity,
            )
        await client.flush()
        self.service, self._client = service, client
        log.info("fleet control service registered as %s (id %s)", identity, service.id)

    def _handler(self, verb: str) -> Any:
        async def handle(request: Request) -> None:
            from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

            body, error = await self.answer_or_error(verb, request.data)
            # The services protocol's error headers too, for `nats req` and other tools.
            headers = (
                {ERROR_HEADER: error.message[:200], ERROR_CODE_HEADER: error.code}
                if error is not None
                else None
            )
            await request.respond(body, headers=headers)

        return handle

    async def answer(self, verb: str, data: bytes) -> bytes:
        """The reply to a request; never raises (every failure is an error reply)."""
        return (await self.answer_or_error(verb, data))[0]

    async def answer_or_error(self, verb: str, data: bytes) -> tuple[bytes, ControlError | None]:
        """The reply to a request, and the error it reports, if any."""
        identity = self.target.identity
        try:
            request = parse_request(data)
            selected = Filter.from_dict(request.get("filter"))
            body = await self._answer(verb, request, selected)
        except ControlError as error:
            self.target.count(verb, error.code)
            if error.code in REFUSALS:
                log.warning("refused a %s request over NATS (%s): %s", verb, error.code, error)
            return error_reply(identity, error), error
        except Exception:
            log.exception("failed to answer a %s request", verb)
            self.target.count(verb, "internal")
            failure = ControlError("internal", "the node failed to answer")
            return error_reply(identity, failure), failure
        self.target.count(verb, "ok" if body is not None else "not_matched")
        return (body if body is not None else reply(identity, matched=False)), None

    async def _answer(self, verb: str, request: dict[str, Any], selected: Filter) -> bytes | None:
        """The reply body, or None when the filter does not select this node."""
        target = self.target
        if not selected.matches_node(target.identity, target.facts()):
            return None
        if verb == "machines":
            machines = self._selected_machines(selected)
            if selected.selects_machines and not machines:
                return None
            return reply(target.identity, machines=machines)
        if verb == "agent":
            if selected.selects_machines and not self._selected_machines(selected):
                return None
            return reply(target.identity, agent=target.agent_status())
        name = _name(request, "machine")
        if selected.machine not in (None, name):
            raise ControlError("bad_request", "the filter names another machine than the request")
        selected = selected.narrowed(machine=name)
        if not self._selected_machines(selected):
            return None
        if verb == "machine":
            history = request.get("history", 20)
            if not isinstance(history, int) or not 0 <= history <= MAX_HISTORY:
                raise ControlError("bad_request", f"history must be 0 to {MAX_HISTORY}")
            detail = await target.machine_detail(name, history)
            if detail is None:
                raise ControlError("not_found", f"machine {name} not found")
            return reply(target.identity, machine=detail)
        if verb == "transition":
            if request.get("action") != "transition":
                raise ControlError("bad_request", 'a transition request has action "transition"')
            event = _name(request, "transition")
            self.authenticator.check(request)
            result = await target.transition(name, event)
            log.info(
                "transition %s of %s over NATS: %s -> %s",
                event,
                name,
                result.get("from_state"),
                result.get("to_state"),
            )
            return reply(target.identity, result=result)
        raise ControlError("bad_request", f"unknown verb {verb}")

    def _selected_machines(self, selected: Filter) -> list[dict[str, Any]]:
        return [
            summary
            for summary in self.target.machine_summaries()
            if selected.matches_machine(summary["name"], summary.get("state"))
        ]


def _name(request: Mapping[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not _NAME.match(value):
        raise ControlError("bad_request", f"{key} must be a name (letters, digits, _.:@-)")
    return value
