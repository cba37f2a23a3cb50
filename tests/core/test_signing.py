"""ed25519 keys and the two specification formats of the machines and plugins watchers."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from machinery.core.signing import (
    KeyPair,
    SigningError,
    SpecificationError,
    SpecKind,
    decode_specification,
    generate_keypair,
    keypair_from_seed,
    load_public_key,
    load_signing_key,
    pack_specification,
    parse_public_key,
    parse_signing_key,
    read_specification_file,
    sign,
    specification_kind,
    verify,
)
from tests.support import CORPUS

FRAGMENTS = CORPUS / "fragments"
PAYLOAD = b'[{"name": "facts", "source": "https://example.net/facts.tgz"}]\n'


@pytest.fixture
def pair() -> KeyPair:
    return keypair_from_seed(bytes(range(32)))


def test_generated_keys_have_the_right_sizes_and_sign() -> None:
    key = generate_keypair()
    assert len(key.seed) == 32 and len(key.public) == 32
    assert re.fullmatch(r"[0-9a-f]{64}", key.seed_hex)
    assert re.fullmatch(r"[0-9a-f]{64}", key.public_hex)
    assert key.private_hex == key.seed_hex + key.public_hex
    assert generate_keypair().seed != key.seed
    signature = sign(key, b"data")
    assert len(signature) == 64
    assert verify(key.public, b"data", signature)


def test_sign_is_deterministic_and_verify_detects_every_change(pair: KeyPair) -> None:
    signature = sign(pair, PAYLOAD)
    assert signature == sign(pair, PAYLOAD)
    assert verify(pair.public, PAYLOAD, signature)
    assert not verify(pair.public, PAYLOAD + b" ", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify(pair.public, PAYLOAD, flipped)
    assert not verify(generate_keypair().public, PAYLOAD, signature)
    assert not verify(pair.public, PAYLOAD, signature[:-1])
    assert not verify(pair.public[:-1], PAYLOAD, signature)


def test_private_keys_parse_as_seed_or_go_form(pair: KeyPair) -> None:
    assert parse_signing_key(pair.seed_hex) == pair
    assert parse_signing_key(pair.private_hex) == pair
    assert parse_signing_key(pair.seed_hex.upper() + "\n") == pair
    other = generate_keypair()
    with pytest.raises(SigningError, match="public half does not belong"):
        parse_signing_key(pair.seed_hex + other.public_hex)
    with pytest.raises(SigningError, match="not hexadecimal"):
        parse_signing_key("zz" * 32)
    with pytest.raises(SigningError, match="32 or 64 bytes"):
        parse_signing_key("ab" * 16)
    with pytest.raises(SigningError, match="empty"):
        parse_signing_key("  ")


def test_public_keys_parse_from_hex_only_with_32_bytes(pair: KeyPair) -> None:
    assert parse_public_key(pair.public_hex) == pair.public
    with pytest.raises(SigningError, match="32 bytes"):
        parse_public_key(pair.private_hex)
    with pytest.raises(SigningError, match="not hexadecimal"):
        parse_public_key("abc")


def test_keys_load_from_hex_or_from_a_file(tmp_path: Path, pair: KeyPair) -> None:
    seed_file = tmp_path / "seed"
    seed_file.write_text(pair.seed_hex + "\n")
    public_file = tmp_path / "public"
    public_file.write_text(f"  {pair.public_hex}\n")
    assert load_signing_key(str(seed_file)) == pair
    assert load_signing_key(pair.private_hex) == pair
    assert load_public_key(str(public_file)) == pair.public
    assert load_public_key(pair.public_hex) == pair.public
    with pytest.raises(SigningError, match="neither hex"):
        load_signing_key(str(tmp_path / "missing"))
    with pytest.raises(SigningError, match="neither hex"):
        load_public_key("")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(SigningError, match="does not hold hex text"):
        load_public_key(str(tmp_path / "binary"))
    (tmp_path / "big").write_text("a" * 10_000)
    with pytest.raises(SigningError, match="too large"):
        load_signing_key(str(tmp_path / "big"))


def test_machines_format_signs_the_decoded_json(pair: KeyPair) -> None:
    document = pack_specification(SpecKind.MACHINES, PAYLOAD, pair)
    assert set(document) == {"machines", "signature"}
    assert base64.b64decode(document["machines"]) == PAYLOAD
    assert verify(pair.public, PAYLOAD, bytes.fromhex(document["signature"]))
    assert decode_specification(SpecKind.MACHINES, document, pair.public) == PAYLOAD
    # As JSON text too (a data item may hold the raw document).
    assert decode_specification(SpecKind.MACHINES, json.dumps(document), pair.public) == PAYLOAD


def test_plugins_format_signs_the_base64_text(pair: KeyPair) -> None:
    document = pack_specification(SpecKind.PLUGINS, PAYLOAD, pair)
    assert set(document) == {"plugins", "signature"}
    signature = bytes.fromhex(document["signature"])
    assert verify(pair.public, document["plugins"].encode(), signature)
    assert not verify(pair.public, PAYLOAD, signature)
    assert decode_specification(SpecKind.PLUGINS, document, pair.public) == PAYLOAD


def test_the_formats_are_not_interchangeable(pair: KeyPair) -> None:
    machines = pack_specification(SpecKind.MACHINES, PAYLOAD, pair)
    plugins = {"plugins": machines["machines"], "signature": machines["signature"]}
    with pytest.raises(SpecificationError) as info:
        decode_specification(SpecKind.PLUGINS, plugins, pair.public)
    assert info.value.reason == "signature"


def test_tampered_wrong_key_and_missing_signatures_are_rejected(pair: KeyPair) -> None:
    document = pack_specification(SpecKind.MACHINES, PAYLOAD, pair)
    tampered = dict(
        document, machines=base64.b64encode(PAYLOAD.replace(b"facts", b"evil")).decode()
    )
    for bad, message in [
        (tampered, "did not verify"),
        ({"machines": document["machines"]}, "no signature"),
        (dict(document, signature=""), "no signature"),
        (dict(document, signature="xyz"), "not hexadecimal"),
        (dict(document, signature=document["signature"][:-2]), "did not verify"),
    ]:
        with pytest.raises(SpecificationError, match=message) as info:
            decode_specification(SpecKind.MACHINES, bad, pair.public)
        assert info.value.reason == "signature"
    with pytest.raises(SpecificationError, match="did not verify"):
        decode_specification(SpecKind.MACHINES, document, generate_keypair().public)
    plugins = pack_specification(SpecKind.PLUGINS, PAYLOAD, pair)
    with pytest.raises(SpecificationError, match="did not verify"):
        decode_specification(
            SpecKind.PLUGINS, dict(plugins, plugins=plugins["plugins"] + "\n"), pair.public
        )


def test_without_a_key_the_signature_is_not_checked(pair: KeyPair) -> None:
    unsigned = pack_specification(SpecKind.MACHINES, PAYLOAD, None)
    assert unsigned == {"machines": base64.b64encode(PAYLOAD).decode()}
    assert decode_specification(SpecKind.MACHINES, unsigned, None) == PAYLOAD
    with pytest.raises(SpecificationError, match="no signature"):
        decode_specification(SpecKind.MACHINES, unsigned, pair.public)


def test_malformed_documents_name_what_is_wrong() -> None:
    cases: list[tuple[object, str, str]] = [
        ({"machines": "not base64!"}, "base64", "invalid base64"),
        ({"machines": "YQ"}, "base64", "invalid base64"),
        ({"machines": 5}, "format", 'no "machines" text field'),
        ({"plugins": "YQ=="}, "format", 'no "machines" text field'),
        ([1, 2], "format", "expected a JSON object"),
        ("{not json", "format", "not JSON"),
        (b"\xff", "format", "not UTF-8"),
    ]
    for document, reason, message in cases:
        with pytest.raises(SpecificationError, match=message) as info:
            decode_specification(SpecKind.MACHINES, document, None)
        assert info.value.reason == reason
    # Go's decoder skips line breaks inside base64, so do we.
    wrapped = base64.b64encode(PAYLOAD).decode()
    wrapped = wrapped[:10] + "\r\n" + wrapped[10:]
    assert decode_specification(SpecKind.MACHINES, {"machines": wrapped}, None) == PAYLOAD


def test_specification_kind_and_files(tmp_path: Path) -> None:
    assert specification_kind({"machines": ""}) is SpecKind.MACHINES
    assert specification_kind({"plugins": ""}) is SpecKind.PLUGINS
    with pytest.raises(SpecificationError):
        specification_kind({"machines": "", "plugins": ""})
    with pytest.raises(SpecificationError):
        specification_kind({})
    path = tmp_path / "spec.json"
    path.write_text('{"plugins": "W10="}')
    assert read_specification_file(path) == {"plugins": "W10="}
    path.write_text("[]")
    with pytest.raises(SpecificationError, match="JSON object"):
        read_specification_file(path)
    with pytest.raises(SpecificationError, match="cannot read"):
        read_specification_file(tmp_path / "missing.json")


def test_the_choria_readme_pack_example_verifies() -> None:
    """Choria's README packs machines.json with a Go private key and publishes the public key in
    the example manifest: our verification accepts that exact document, and our signing with
    the same key reproduces the signature (ed25519 is deterministic)."""
    example = (FRAGMENTS / "readme-machines-watcher-pack-example.txt").read_text()
    manifest = (FRAGMENTS / "readme-machines-watcher.yaml").read_text()
    private = re.search(r"pack machines\.json ([0-9a-f]{128})", example)
    public = re.search(r"public_key: ([0-9a-f]{64})", manifest)
    spec_line = next(line for line in example.splitlines() if line.startswith('{"machines"'))
    assert private is not None and public is not None
    document = json.loads(spec_line)
    key = parse_signing_key(private.group(1))
    assert key.public_hex == public.group(1)
    payload = decode_specification(SpecKind.MACHINES, document, parse_public_key(public.group(1)))
    [entry] = json.loads(payload)
    assert entry["name"] == "facts"
    assert entry["match"] == "has_command('facter')"
    assert pack_specification(SpecKind.MACHINES, payload, key) == document
    with pytest.raises(SpecificationError, match="did not verify"):
        decode_specification(
            SpecKind.PLUGINS,
            {"plugins": document["machines"], "signature": document["signature"]},
            key.public,
        )
