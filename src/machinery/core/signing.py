"""ed25519 signatures for the specifications of the ``machines`` and ``plugins`` watchers.

A specification tells manager watchers which machines (or plugins) to deploy. It travels through
a key-value store as a small JSON document, signed by whoever publishes it, and nodes only act on
it when the signature verifies with the public key they were given::

    {"machines": "<base64 of a JSON array>", "signature": "<hex ed25519 signature>"}
    {"plugins":  "<base64 of a JSON array>", "signature": "<hex ed25519 signature>"}

The two formats differ in what is signed, as in Choria (spec 3.10 and 3.11):

- ``machines``: the signature is over the **decoded** JSON bytes;
- ``plugins``: the signature is over the **base64 text** itself (its ASCII bytes).

Keys are written in hex, as Choria's tools print them:

- a public key is 32 bytes (64 hex digits);
- a private key is either the 32-byte seed (64 hex digits) or Go's 64-byte form, the seed
  followed by the public key (128 hex digits, what ``mms keys`` prints as "Private Key").

Where a key is accepted from the command line it may also be the path of a file that contains
the hex text (surrounding whitespace is ignored).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing

__all__ = [
    "PUBLIC_KEY_LENGTH",
    "SEED_LENGTH",
    "SIGNATURE_LENGTH",
    "KeyPair",
    "SigningError",
    "SpecKind",
    "SpecificationError",
    "decode_specification",
    "generate_keypair",
    "keypair_from_seed",
    "load_public_key",
    "load_signing_key",
    "pack_specification",
    "parse_public_key",
    "parse_signing_key",
    "public_key_hex",
    "read_specification_file",
    "sign",
    "specification_kind",
    "verify",
]

SEED_LENGTH = 32
PUBLIC_KEY_LENGTH = 32
SIGNATURE_LENGTH = 64

_HEX = re.compile(r"^[0-9a-fA-F]*$")
# A key file holds a line of hex; anything much larger is not a key file.
_MAX_KEY_FILE = 4096


class SigningError(ValueError):
    """A key or signature that cannot be used (bad hex, wrong length, unreadable file)."""


class SpecificationError(ValueError):
    """A specification that must not be used.

    ``reason`` says which step failed: ``format`` (not a specification document), ``base64``,
    ``signature`` (missing, malformed or not matching the key); the machines and plugins
    watchers add ``entries`` (an entry they cannot use) and ``replay`` (a signed specification
    applied before and superseded since).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SpecKind(enum.StrEnum):
    """Which watcher a specification is for; also the name of its payload field."""

    MACHINES = "machines"
    PLUGINS = "plugins"


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An ed25519 key pair."""

    seed: bytes
    public: bytes

    @property
    def seed_hex(self) -> str:
        """The 32-byte private seed in hex (keep it secret)."""
        return self.seed.hex()

    @property
    def public_hex(self) -> str:
        """The 32-byte public key in hex (give it to the nodes)."""
        return self.public.hex()

    @property
    def private_hex(self) -> str:
        """Go's 64-byte private key (seed then public key) in hex, as Choria's tools print it."""
        return (self.seed + self.public).hex()


def generate_keypair() -> KeyPair:
    """A new random key pair."""
    key = nacl.signing.SigningKey.generate()
    return KeyPair(bytes(key), key.verify_key.encode())


def keypair_from_seed(seed: bytes) -> KeyPair:
    """The key pair of a 32-byte seed."""
    if len(seed) != SEED_LENGTH:
        raise SigningError(f"an ed25519 seed is {SEED_LENGTH} bytes, not {len(seed)}")
    key = nacl.signing.SigningKey(seed)
    return KeyPair(seed, key.verify_key.encode())


def _hex_bytes(text: str, what: str) -> bytes:
    value = text.strip()
    if not value:
        raise SigningError(f"the {what} is empty")
    if not _HEX.match(value) or len(value) % 2:
        raise SigningError(f"the {what} is not hexadecimal")
    return binascii.unhexlify(value)


def parse_signing_key(text: str) -> KeyPair:
    """A private key written in hex: the 32-byte seed or Go's 64-byte seed+public form."""
    raw = _hex_bytes(text, "private key")
    if len(raw) == SEED_LENGTH:
        return keypair_from_seed(raw)
    if len(raw) == SEED_LENGTH + PUBLIC_KEY_LENGTH:
        pair = keypair_from_seed(raw[:SEED_LENGTH])
        # Go's form repeats the public key; a mismatch means a damaged or spliced key.
        if pair.public != raw[SEED_LENGTH:]:
            raise SigningError("the private key's public half does not belong to its seed")
        return pair
    raise SigningError(
        f"a private key is {SEED_LENGTH} or {SEED_LENGTH + PUBLIC_KEY_LENGTH} bytes "
        f"({SEED_LENGTH * 2} or {(SEED_LENGTH + PUBLIC_KEY_LENGTH) * 2} hex digits), "
        f"not {len(raw)}"
    )


def parse_public_key(text: str) -> bytes:
    """A public key written in hex (32 bytes)."""
    raw = _hex_bytes(text, "public key")
    if len(raw) != PUBLIC_KEY_LENGTH:
        raise SigningError(
            f"a public key is {PUBLIC_KEY_LENGTH} bytes ({PUBLIC_KEY_LENGTH * 2} hex digits), "
            f"not {len(raw)}"
        )
    return raw


def public_key_hex(public: bytes) -> str:
    return public.hex()


def _looks_like_hex_key(text: str) -> bool:
    value = text.strip()
    return bool(value) and bool(_HEX.match(value)) and len(value) in (64, 128)


def _read_key_file(path: str, what: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise SigningError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE:
        raise SigningError(f"the {what} file {path} is too large to hold a key")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise SigningError(f"the {what} file {path} does not hold hex text") from None


def load_signing_key(value: str) -> KeyPair:
    """A private key given as hex, or as the path of a file holding the hex.

    Hex is recognised first (64 or 128 hex digits), so a key is never mistaken for a file name.
    """
    if _looks_like_hex_key(value):
        return parse_signing_key(value)
    if value and os.path.isfile(value):
        return parse_signing_key(_read_key_file(value, "private key"))
    raise SigningError("the private key is neither hex (64 or 128 digits) nor an existing file")


def load_public_key(value: str) -> bytes:
    """A public key given as hex, or as the path of a file holding the hex."""
    if _looks_like_hex_key(value):
        return parse_public_key(value)
    if value and os.path.isfile(value):
        return parse_public_key(_read_key_file(value, "public key"))
    raise SigningError("the public key is neither hex (64 digits) nor an existing file")


def sign(key: KeyPair, data: bytes) -> bytes:
    """The 64-byte ed25519 signature of ``data``."""
    signed = nacl.signing.SigningKey(key.seed).sign(data)
    return bytes(signed.signature)


def verify(public: bytes, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``data`` signed by the owner of ``public``; never raises for a
    bad signature (wrong length, wrong key, altered data)."""
    if len(public) != PUBLIC_KEY_LENGTH or len(signature) != SIGNATURE_LENGTH:
        return False
    try:
        nacl.signing.VerifyKey(public).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def _signed_bytes(kind: SpecKind, encoded: str, decoded: bytes) -> bytes:
    # The one place the two formats differ (see the module docstring).
    return decoded if kind is SpecKind.MACHINES else encoded.encode("ascii")


def pack_specification(kind: SpecKind, payload: bytes, key: KeyPair | None) -> dict[str, str]:
    """The specification document for ``payload`` (the JSON array, as bytes), signed with
    ``key`` when one is given."""
    encoded = base64.b64encode(payload).decode("ascii")
    document = {kind.value: encoded}
    if key is not None:
        document["signature"] = sign(key, _signed_bytes(kind, encoded, payload)).hex()
    return document


def specification_kind(document: dict[str, Any]) -> SpecKind:
    """Which kind of specification ``document`` is, from its payload field."""
    kinds = [kind for kind in SpecKind if kind.value in document]
    if len(kinds) != 1:
        raise SpecificationError(
            'not a specification: expected a "machines" or a "plugins" field', "format"
        )
    return kinds[0]


def _decode_base64(text: str) -> bytes:
    # Go's decoder skips line breaks; anything else outside the alphabet is an error.
    cleaned = text.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SpecificationError(f"invalid base64 data: {exc}", "base64") from None


def decode_specification(kind: SpecKind, document: Any, public: bytes | None) -> bytes:
    """The JSON array bytes a specification carries, after checking its signature.

    ``document`` is the decoded specification object (or its JSON text). With ``public`` the
    signature must be present and valid; without it the signature is not looked at (Choria's
    behaviour when no key is configured). Raises :class:`SpecificationError`.
    """
    if isinstance(document, (bytes, bytearray)):
        try:
            document = document.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecificationError("not a specification: not UTF-8 text", "format") from None
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except (ValueError, RecursionError):
            raise SpecificationError("not a specification: not JSON", "format") from None
    if not isinstance(document, dict):
        raise SpecificationError("not a specification: expected a JSON object", "format")
    encoded = document.get(kind.value)
    if not isinstance(encoded, str):
        raise SpecificationError(
            f'not a {kind.value} specification: no "{kind.value}" text field', "format"
        )
    if kind is SpecKind.PLUGINS and public is not None:
        # The plugins signature covers the base64 text, so it is checked before decoding.
        _check_signature(document, public, _signed_bytes(kind, encoded, b""))
        return _decode_base64(encoded)
    decoded = _decode_base64(encoded)
    if public is not None:
        _check_signature(document, public, _signed_bytes(kind, encoded, decoded))
    return decoded


def _check_signature(document: dict[str, Any], public: bytes, signed: bytes) -> None:
    signature = document.get("signature")
    if not signature:
        raise SpecificationError("no signature found in specification", "signature")
    if not isinstance(signature, str) or not _HEX.match(signature) or len(signature) % 2:
        raise SpecificationError("invalid signature string: not hexadecimal", "signature")
    if not verify(public, signed, binascii.unhexlify(signature)):
        raise SpecificationError(
            f"signature did not verify using public key {public.hex()}", "signature"
        )


def read_specification_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A specification document from a file (as written by ``machinery plugins pack``)."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise SpecificationError(f"cannot read {path}: {exc.strerror or exc}", "format") from None
    except (ValueError, RecursionError):
        raise SpecificationError(f"{path} is not JSON", "format") from None
    if not isinstance(data, dict):
        raise SpecificationError(f"{path} does not hold a JSON object", "format")
    return data
