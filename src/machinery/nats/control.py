"""The fleet control protocol: subjects, requests, replies, filters and signed state changes.

Pure data and checks, no I/O: the agent's NATS service (:mod:`machinery.nats.service`), the
``machinery fleet`` commands and the fleet dashboard all speak it through this module.

Every agent with NATS configured is a NATS service named ``machinery`` and answers

- ``machinery.node.<identity>.<verb>``: that node only;
- ``machinery.fleet.<verb>``: every node; the ones the request's filter does not select reply
  ``{"matched": false}`` so a client can tell "did not match" from "did not answer".

Verbs: ``machines``, ``machine``, ``transition``, ``agent``. A request is a JSON object with a
``version`` (1) and optional ``filter``; every reply is a JSON object with ``version``,
``identity`` and ``matched``, and an ``error`` object (``code``, ``message``) when the request
was refused. See docs/nats.md for the full wire protocol.

A ``transition`` request is signed with ed25519 over its canonical encoding (sorted keys, no
whitespace, UTF-8) without the ``signature`` field; it carries the signer's public ``key``, the
``issued`` time (Unix milliseconds) and a random ``nonce``. The agent accepts it only when the
key is one it trusts, the signature verifies, the request is at most :data:`MAX_AGE` seconds old
(and at most :data:`CLOCK_SKEW` seconds in the future, or older by that much), and its nonce was
never seen before.
"""

from __future__ import annotations

import binascii
import dataclasses
import fnmatch
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # nacl is imported only when something is signed or verified
    from machinery.core.signing import KeyPair

__all__ = [
    "CLOCK_SKEW",
    "MAX_AGE",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "REFUSALS",
    "SERVICE_NAME",
    "VERBS",
    "ControlError",
    "Filter",
    "NonceCache",
    "RequestAuthenticator",
    "canonical_bytes",
    "error_reply",
    "fleet_subject",
    "node_subject",
    "parse_request",
    "parse_where",
    "reply",
    "sign_request",
    "subject_safe_identity",
    "transition_request",
]

PROTOCOL_VERSION = 1
SERVICE_NAME = "machinery"
VERBS = ("machines", "machine", "transition", "agent")
# A signed request is valid this long after it was issued...
MAX_AGE = 60.0
# ...give or take this much disagreement between the operator's clock and the node's.
CLOCK_SKEW = 5.0
MAX_REQUEST_BYTES = 64 * 1024
# Signed requests seen in the last MAX_AGE + CLOCK_SKEW seconds; only requests that carry a
# valid signature by a trusted key are remembered, so strangers cannot fill it.
MAX_NONCES = 100_000

# Error codes that are refusals of a state change (logged and counted by reason).
REFUSALS = frozenset(
    {"not_allowed", "unsigned", "untrusted", "bad_signature", "expired", "replayed", "busy"}
)

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$")
_NONCE = re.compile(r"^[0-9a-fA-F]{16,64}$")
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_RESERVED = ("identity", "machine", "state")
_FACT_PREFIX = "fact:"
_MAX_FACT_PATH = 256
_MAX_FILTER_VALUE = 1024


class ControlError(ValueError):
    """A request that is refused; ``code`` is the stable reason clients and metrics use.

    Codes: ``bad_request`` (not a valid request), ``not_found`` (no such machine), ``invalid``
    (the transition is not valid in the machine's state), and the refusals of state changes:
    ``not_allowed`` (no trusted keys), ``unsigned``, ``untrusted``, ``bad_signature``,
    ``expired``, ``replayed``, ``busy`` (too many recent signed requests to remember).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- subjects ------------------------------------------------------------------------------------


def subject_safe_identity(identity: str) -> bool:
    """True when ``identity`` can be the middle of a subject: no wildcards, no empty tokens."""
    return (
        bool(identity) and not any(c in identity for c in "*> \t\r\n") and all(identity.split("."))
    )


def node_subject(identity: str, verb: str) -> str:
    """The subject only ``identity`` answers for ``verb``."""
    if not subject_safe_identity(identity):
        raise ControlError("bad_request", f"identity {identity!r} cannot be used in a subject")
    return f"{SERVICE_NAME}.node.{identity}.{verb}"


def fleet_subject(verb: str) -> str:
    """The subject every node answers for ``verb``."""
    return f"{SERVICE_NAME}.fleet.{verb}"


# -- filters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """Which nodes (and which of their machines) a request is about; empty selects everything.

    ``identity`` is a shell glob on the node identity; ``machine`` and ``state`` select machines
    (a node matches when at least one of its machines does); ``facts`` maps dotted paths into the
    node's facts to the text their value must have (numbers and booleans as JSON writes them).
    """

    identity: str | None = None
    machine: str | None = None
    state: str | None = None
    facts: Mapping[str, str] = field(default_factory=dict)

    @property
    def selects_machines(self) -> bool:
        return self.machine is not None or self.state is not None

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.identity is not None:
            result["identity"] = self.identity
        if self.machine is not None:
            result["machine"] = self.machine
        if self.state is not None:
            result["state"] = self.state
        if self.facts:
            result["facts"] = dict(sorted(self.facts.items()))
        return result

    @classmethod
    def from_dict(cls, data: Any) -> Filter:
        """A filter from a request; raises :class:`ControlError` (``bad_request``)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ControlError("bad_request", "filter must be a JSON object")
        unknown = set(data) - {"identity", "machine", "state", "facts"}
        if unknown:
            raise ControlError("bad_request", f"unknown filter field {sorted(unknown)[0]!r}")
        identity = _optional_text(data, "identity", 255)
        machine = _optional_text(data, "machine", 128)
        if machine is not None and not _NAME.match(machine):
            raise ControlError("bad_request", f"invalid machine name {machine!r}")
        state = _optional_text(data, "state", 128)
        facts = data.get("facts")
        if facts is None:
            facts = {}
        if not isinstance(facts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in facts.items()
        ):
            raise ControlError("bad_request", "filter facts must map paths to text")
        for path, value in facts.items():
            _check_fact(path, value)
        return cls(identity=identity, machine=machine, state=state, facts=dict(facts))

    def matches_node(self, identity: str, facts: Mapping[str, Any]) -> bool:
        """Whether a node is selected by identity and facts (machines aside)."""
        if self.identity is not None and not _glob(self.identity).match(identity):
            return False
        return all(_fact_text(facts, path) == value for path, value in self.facts.items())

    def matches_machine(self, name: str, state: str | None) -> bool:
        if self.machine is not None and name != self.machine:
            return False
        return self.state is None or state == self.state

    def narrowed(self, **changes: Any) -> Filter:
        """This filter with some fields replaced (the CLI pins ``identity`` and ``machine``)."""
        return dataclasses.replace(self, **changes)


def _glob(pattern: str) -> re.Pattern[str]:
    # Not fnmatch.fnmatchcase: it keeps every pattern it ever saw (32,768 of them), and patterns
    # come from whoever may ask; re's own cache is small and bounded.
    return re.compile(fnmatch.translate(pattern))


def _optional_text(data: Mapping[str, Any], key: str, limit: int) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ControlError("bad_request", f"filter {key} must be text of 1 to {limit} characters")
    return value


def _check_fact(path: str, value: str) -> None:
    if not path or len(path) > _MAX_FACT_PATH or not all(path.split(".")):
        raise ControlError("bad_request", f"invalid fact path {path!r}")
    if len(value) > _MAX_FILTER_VALUE:
        raise ControlError("bad_request", f"the value for fact {path} is too long")


def _fact_text(facts: Any, path: str) -> str | None:
    """The fact at a dotted path as text, or None when there is none."""
    value = facts
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return None  # objects and lists are not compared


def parse_where(clauses: Iterable[str]) -> Filter:
    """A filter from ``--where`` clauses: ``identity=GLOB``, ``machine=NAME``, ``state=STATE``,
    and ``PATH=VALUE`` for a fact at a dotted path (``fact:PATH=VALUE`` when the path starts with
    one of the reserved words). Raises :class:`ControlError` with a message for the user."""
    values: dict[str, Any] = {"facts": {}}
    for clause in clauses:
        key, sep, value = clause.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ControlError("bad_request", f"--where {clause!r}: expected KEY=VALUE")
        if key in _RESERVED:
            if key in values:
                raise ControlError("bad_request", f"--where {key}=... is given twice")
            values[key] = value
            continue
        path = key.removeprefix(_FACT_PREFIX)
        if path in values["facts"]:
            raise ControlError("bad_request", f"--where {path}=... is given twice")
        values["facts"][path] = value
    return Filter.from_dict(values)


# -- requests and replies ----------------------------------------------------------------------


def parse_request(data: bytes) -> dict[str, Any]:
    """The JSON object of a request (an empty body is an empty request)."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ControlError("bad_request", f"request larger than {MAX_REQUEST_BYTES} bytes")
    if not data.strip():
        return {"version": PROTOCOL_VERSION}
    try:
        request = json.loads(data)
    except (ValueError, RecursionError):
        raise ControlError("bad_request", "request is not JSON") from None
    if not isinstance(request, dict):
        raise ControlError("bad_request", "request must be a JSON object")
    version = request.get("version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise ControlError(
            "bad_request", f"unsupported protocol version {version!r} (this node speaks 1)"
        )
    return request


def reply(identity: str, *, matched: bool = True, **fields: Any) -> bytes:
    """A reply body."""
    body = {"version": PROTOCOL_VERSION, "identity": identity, "matched": matched, **fields}
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def error_reply(identity: str, error: ControlError) -> bytes:
    return reply(identity, error={"code": error.code, "message": error.message})


def canonical_bytes(request: Mapping[str, Any]) -> bytes:
    """What a signature covers: the request without ``signature``, sorted keys, no spaces."""
    unsigned = {k: v for k, v in request.items() if k != "signature"}
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def transition_request(
    machine: str,
    transition: str,
    filter: Filter,
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """An unsigned transition request (sign it with :func:`sign_request`)."""
    return {
        "version": PROTOCOL_VERSION,
        "action": "transition",
        "machine": machine,
        "transition": transition,
        "filter": filter.narrowed(machine=machine).to_dict(),
        "issued": int((time.time() if now is None else now) * 1000),
        "nonce": nonce or secrets.token_hex(16),
    }


def sign_request(request: Mapping[str, Any], key: KeyPair) -> dict[str, Any]:
    """``request`` with the signer's ``key`` and its ``signature``."""
    from machinery.core.signing import sign

    signed = {k: v for k, v in request.items() if k != "signature"}
    signed["key"] = key.public_hex
    signed["signature"] = sign(key, canonical_bytes(signed)).hex()
    return signed


# -- authentication of state changes -----------------------------------------------------------


class NonceCache:
    """Nonces of accepted requests, each kept until its request would be too old anyway."""

    def __init__(self, limit: int = MAX_NONCES) -> None:
        self.limit = limit
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, nonce: str) -> bool:
        return nonce in self._expiry

    def add(self, nonce: str, expires: float, now: float) -> None:
        self._prune(now)
        if len(self._expiry) >= self.limit:
            raise ControlError(
                "busy", "too many signed requests in the last minute; try again shortly"
            )
        self._expiry[nonce] = expires

    def _prune(self, now: float) -> None:
        # Roughly oldest first (arrival order); stopping at the first live entry may keep a few
        # expired ones a little longer, which only errs on the side of refusing.
        while self._expiry:
            nonce, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            del self._expiry[nonce]


class RequestAuthenticator:
    """Checks signed state-change requests against the trusted public keys."""

    def __init__(
        self,
        public_keys: Sequence[bytes],
        *,
        now: Callable[[], float] = time.time,
        max_age: float = MAX_AGE,
        skew: float = CLOCK_SKEW,
        nonces: NonceCache | None = None,
    ) -> None:
        self.public_keys: dict[str, bytes] = {}
        self.set_keys(public_keys)
        self.now = now
        self.max_age = max_age
        self.skew = skew
        self.nonces = nonces or NonceCache()

    def set_keys(self, public_keys: Sequence[bytes]) -> None:
        """Trust exactly these keys from now on (a reloaded configuration)."""
        self.public_keys = {key.hex(): key for key in public_keys}

    def check(self, request: Mapping[str, Any]) -> str:
        """The hex key that signed ``request``; raises :class:`ControlError` when refused."""
        if not self.public_keys:
            raise ControlError(
                "not_allowed",
                "this node accepts no state change over NATS (control.public_keys is not set)",
            )
        signature = request.get("signature")
        key = request.get("key")
        if not signature or not key:
            raise ControlError("unsigned", "the request is not signed (no key or signature)")
        if not isinstance(key, str) or key.lower() not in self.public_keys:
            raise ControlError("untrusted", f"key {str(key)[:64]} is not trusted by this node")
        if not isinstance(signature, str) or len(signature) != 128 or not _HEX.match(signature):
            raise ControlError("bad_signature", "the signature is not 128 hex digits")
        from machinery.core.signing import verify

        try:
            signed = canonical_bytes(request)
        except ValueError:
            raise ControlError("bad_request", "the request cannot be encoded") from None
        if not verify(self.public_keys[key.lower()], signed, binascii.unhexlify(signature)):
            raise ControlError("bad_signature", "the signature does not match the request")
        issued = request.get("issued")
        nonce = request.get("nonce")
        if not isinstance(issued, int) or isinstance(issued, bool):
            raise ControlError("bad_request", "issued must be Unix milliseconds (an integer)")
        if not isinstance(nonce, str) or not _NONCE.match(nonce):
            raise ControlError("bad_request", "nonce must be 16 to 64 hex digits")
        now = self.now()
        age = now - issued / 1000
        if age > self.max_age + self.skew:
            raise ControlError(
                "expired",
                f"the request was issued {age:.0f}s ago (at most {self.max_age:.0f}s, "
                f"{self.skew:.0f}s clock skew allowed)",
            )
        if age < -self.skew:
            raise ControlError(
                "expired",
                f"the request was issued {-age:.0f}s in the future (clock skew of at most "
                f"{self.skew:.0f}s allowed)",
            )
        if self.nonces.seen(nonce.lower()):
            raise ControlError("replayed", "this request was already received (same nonce)")
        self.nonces.add(nonce.lower(), issued / 1000 + self.max_age + self.skew, now)
        return key.lower()
