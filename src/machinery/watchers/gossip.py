"""The ``gossip`` watcher (spec 3.8): publish a message to NATS every interval while active.

While the machine is in one of the watcher's states, the watcher publishes ``payload`` to
``subject`` (both templates, rendered for each message) at once and then every ``interval``
(default 15s). With ``registration`` it publishes a service registration instead: the JSON
``{"cluster","service","protocol","address","port","priority","annotations"}`` to
``$KV.CHORIA_SERVICES.<cluster>.<protocol>.<service>.<machine instance id>`` (or under
``prefix``), which is a put into the ``CHORIA_SERVICES`` key-value bucket when it exists.
``ttl_seconds`` gives each message a per-message TTL with the ``Nats-TTL`` header NATS 2.11+
honours (for streams that allow per-message TTLs, as key-value buckets made by machinery do), so
registrations of a node that went away expire.

The watcher never fires transitions and never publishes its state itself (only through
``announce_interval``). It needs the node service ``"nats"`` (the agent's
:class:`~machinery.nats.connection.BrokerConnection`); without a connected broker each message is
skipped with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from machinery.lang.template import TemplateError
from machinery.nats.cancellation import restore_cancellation
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.spec.types import TemplateText, compile_template
from machinery.watchers.base import Watcher

__all__ = [
    "TTL_HEADER",
    "GossipProperties",
    "GossipRegistration",
    "GossipWatcher",
    "invalid_subject",
    "registration_payload",
    "registration_subject",
]

# NATS 2.11's per-message TTL header; Choria sends "Nats-TTLSeconds", which NATS ignores.
TTL_HEADER = "Nats-TTL"
REGISTRATION_BUCKET_SUBJECT = "$KV.CHORIA_SERVICES"
# Go's zero time.Time as Unix seconds: what Choria reports before the first gossip.
NEVER = -62135596800
_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]*$")
# Publishing must not wait on a broker that went away.
_PUBLISH_TIMEOUT = 5.0


class GossipRegistration(BaseModel):
    """A service registration (Choria's ``registration``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    cluster: str = Field("", description="cluster name: a letter, then letters, digits, _ or -")
    service: str = Field("", description="service name, same rules as cluster")
    protocol: str = Field("", description="protocol name, same rules as cluster")
    ip: str = Field("", description="the service's IP address (published as address)")
    port: int = Field(0, ge=0, le=65535, description="the service's port, required")
    priority: int = Field(0, ge=0, description="priority published with the registration")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="extra key/value pairs published with it"
    )
    prefix: str = Field("", description="subject prefix instead of $KV.CHORIA_SERVICES")

    @model_validator(mode="before")
    @classmethod
    def _lower_keys(cls, value: Any) -> Any:
        # Keys are case-insensitive, as for every watcher property.
        if isinstance(value, dict):
            return {str(k).lower(): v for k, v in value.items()}
        return value


class GossipProperties(WatcherProperties):
    """Properties of the gossip watcher."""

    subject: TemplateText = Field("", description="NATS subject to publish to")
    payload: TemplateText = Field("", description="message body")
    ttl_seconds: int = Field(
        0, ge=0, description="per-message TTL in seconds (the Nats-TTL header); 0: none"
    )
    registration: GossipRegistration | None = Field(
        None, description="publish a service registration instead of subject/payload"
    )


def invalid_subject(subject: str) -> str | None:
    """Why ``subject`` cannot be published to (None if it can). Choria refuses spaces, ``^``,
    ``*`` and ``..``; wildcards, white space and empty tokens are refused here too."""
    if not subject:
        return "the subject is empty"
    if any(c.isspace() for c in subject) or any(c in subject for c in "^*>"):
        return f"invalid subject {subject!r}: no spaces, ^, * or >"
    if ".." in subject or subject.startswith(".") or subject.endswith("."):
        return f"invalid subject {subject!r}: empty token"
    return None


def registration_subject(registration: GossipRegistration, instance_id: str) -> str:
    """Where a registration is published."""
    prefix = registration.prefix or REGISTRATION_BUCKET_SUBJECT
    return (
        f"{prefix}.{registration.cluster}.{registration.protocol}.{registration.service}."
        f"{instance_id}"
    )


def registration_payload(registration: GossipRegistration) -> str:
    """The registration as Choria marshals it (compact JSON, annotations only if any)."""
    body: dict[str, Any] = {
        "cluster": registration.cluster,
        "service": registration.service,
        "protocol": registration.protocol,
        "address": registration.ip,
        "port": registration.port,
        "priority": registration.priority,
    }
    if registration.annotations:
        body["annotations"] = dict(sorted(registration.annotations.items()))
    return json.dumps(body, separators=(",", ":"))


class GossipWatcher(Watcher[GossipProperties]):
    """Publishes a message every interval while the machine is in a matching state."""

    type_name = "gossip"
    properties_model = GossipProperties
    default_interval = 15.0
    min_interval = 0.5

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, GossipProperties)
        registration = properties.registration
        if registration is None:
            if not properties.subject:
                yield Problem(("properties", "subject"), "subject is required")
            elif compile_template(properties.subject).is_static:
                problem = invalid_subject(properties.subject)
                if problem:
                    yield Problem(("properties", "subject"), problem)
            if not properties.payload:
                yield Problem(("properties", "payload"), "payload is required")
            return
        if properties.subject:
            yield Problem(("properties", "subject"), "subject cannot be set with registration")
        if properties.payload:
            yield Problem(("properties", "payload"), "payload cannot be set with registration")
        where = ("properties", "registration")
        for name in ("cluster", "service", "protocol"):
            value = getattr(registration, name)
            if not value:
                yield Problem((*where, name), f"{name} is required")
            elif not _NAME.match(value):
                yield Problem(
                    (*where, name),
                    f"invalid {name} {value!r}: a letter, then letters, digits, _ or -",
                )
        if not registration.ip:
            yield Problem((*where, "ip"), "ip is required")
        else:
            try:
                ipaddress.ip_address(registration.ip)
            except ValueError:
                yield Problem((*where, "ip"), f"invalid ip {registration.ip!r}")
            if "%" in registration.ip:
                yield Problem((*where, "ip"), f"invalid ip {registration.ip!r}")
        if registration.port == 0:
            yield Problem((*where, "port"), "port is required")
        problem = invalid_subject(registration_subject(registration, "x"))
        if problem:
            yield Problem((*where, "prefix"), f"invalid registration subject: {problem}")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subject = compile_template(self.properties.subject)
        self._payload = compile_template(self.properties.payload)
        self.previous_subject = ""
        self.previous_payload = ""
        self.previous_gossip: float | None = None
        self._loop: asyncio.Task[None] | None = None
        self._unavailable_logged = False

    @property
    def gossiping(self) -> bool:
        """Whether the publishing loop is running."""
        return self._loop is not None and not self._loop.done()

    async def run(self) -> None:
        self.log_info(
            f"Gossip watcher starting with subject {self.properties.subject!r} on interval "
            f"{self.interval:g}s"
        )
        try:
            while True:
                self._follow_state()
                await self._wakeup.wait()
        finally:
            await self._stop_loop()

    def _follow_state(self) -> None:
        if not self.should_watch():
            if self._loop is not None:
                self.log_info(f"Stopping gossip on transition to {self.machine.state}")
                self._loop.cancel()
                self._loop = None
            return
        if not self.gossiping:
            self.log_info("Starting gossip timer")
            self._loop = asyncio.ensure_future(self._gossip())

    async def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            self._loop = None

    async def _gossip(self) -> None:
        clock = self.machine.clock
        interval = self.interval
        deadline = clock.monotonic()
        while True:
            if self.should_watch():
                await self._publish()
            # A fixed rate, like Go's ticker: a slow publish does not push the schedule back.
            deadline += interval
            now = clock.monotonic()
            if deadline <= now:
                deadline += ((now - deadline) // interval + 1) * interval
            self.status.next_run = deadline
            await clock.sleep(deadline - now)

    def _message(self) -> tuple[str, str]:
        registration = self.properties.registration
        if registration is not None:
            return (
                registration_subject(registration, self.machine.instance_id),
                registration_payload(registration),
            )
        return self.machine.render(self._subject), self.machine.render(self._payload)

    async def _publish(self) -> None:
        broker = self.machine.node.service("nats")
        if broker is None or not getattr(broker, "enabled", False):
            if not self._unavailable_logged:
                self.log_warning(
                    "gossip needs a NATS connection (none is configured): not publishing"
                )
                self._unavailable_logged = True
            self.record("skipped")
            return
        client = broker.client if broker.is_connected else None
        if client is None:
            self.log_warning("not connected to NATS: skipping this gossip")
            self.record("skipped")
            return
        try:
            subject, payload = self._message()
        except TemplateError as exc:
            self._failed(f"Could not template parse gossip: {exc}")
            return
        problem = invalid_subject(subject)
        if problem:
            self._failed(f"Not publishing gossip: {problem}")
            return
        ttl = self.properties.ttl_seconds
        headers = {TTL_HEADER: f"{ttl}s"} if ttl > 0 else None
        self.log_debug(f"Publishing gossip to {subject}")
        try:
            async with restore_cancellation(), asyncio.timeout(_PUBLISH_TIMEOUT):
                await client.publish(subject, payload.encode(), headers=headers)
        except Exception as exc:  # nats-py raises several unrelated types
            self._failed(f"Could not publish gossip to {subject}: {exc or type(exc).__name__}")
            return
        self.previous_subject = subject
        self.previous_payload = payload
        self.previous_gossip = self.machine.clock.now()
        self.status.last_error = None
        self.record("published")

    def _failed(self, message: str) -> None:
        self.status.last_error = message
        self.log_error(message)
        self.record("error")

    def state_fields(self) -> dict[str, Any]:
        published = NEVER if self.previous_gossip is None else int(self.previous_gossip)
        return {
            "previous_subject": self.previous_subject,
            "previous_payload": self.previous_payload,
            "previous_gossip": published,
        }

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        return (
            f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} "
            f"subject: {payload.get('previous_subject')}, previous: "
            f"{payload.get('previous_gossip')}"
        )
