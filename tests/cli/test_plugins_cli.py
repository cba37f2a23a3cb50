"""``machinery plugins``: keys, add/rm, pack, verify and matcher, through the Typer sub-app."""

from __future__ import annotations

import base64
import json
import re
import stat
from pathlib import Path

from typer.testing import CliRunner

from machinery.cli.plugins import app
from machinery.core.signing import (
    SpecKind,
    decode_specification,
    keypair_from_seed,
    parse_public_key,
    verify,
)
from tests.support import CORPUS

runner = CliRunner()
KEY = keypair_from_seed(bytes(range(32)))
OTHER = keypair_from_seed(bytes(range(1, 33)))
SUM_A = "a" * 64
SUM_B = "b" * 64


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def write_entries(path: Path, entries: list[dict[str, str]]) -> Path:
    path.write_text(json.dumps(entries, indent=2))
    return path


def an_entry(name: str = "requests", **fields: str) -> dict[str, str]:
    result = {
        "name": name,
        "source": f"https://repo.example.net/{name}-agent_1.0.0.tgz",
        "checksum": SUM_A,
        "verify_checksum": SUM_B,
    }
    result.update(fields)
    return result


# -- keys -----------------------------------------------------------------------------------


def test_keys_prints_a_working_pair() -> None:
    code, out, _ = invoke("keys")
    assert code == 0
    match = re.fullmatch(r"Public Key: ([0-9a-f]{64})\n      Seed: ([0-9a-f]{64})\n", out)
    assert match is not None, out
    pair = keypair_from_seed(bytes.fromhex(match.group(2)))
    assert pair.public_hex == match.group(1)


def test_keys_can_write_the_seed_to_a_private_file(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    code, out, _ = invoke("keys", "--seed-file", str(seed))
    assert code == 0
    public = re.search(r"Public Key: ([0-9a-f]{64})", out)
    assert public is not None
    assert seed.read_text().strip() not in out
    assert stat.S_IMODE(seed.stat().st_mode) == 0o600
    assert keypair_from_seed(bytes.fromhex(seed.read_text().strip())).public_hex == public.group(1)
    code, _, err = invoke("keys", "--seed-file", str(seed))
    assert code == 1 and "use --force to overwrite" in err


# -- pack and verify ------------------------------------------------------------------------


def test_pack_signs_the_plugins_format_and_verify_accepts_it(tmp_path: Path) -> None:
    source = write_entries(tmp_path / "plugins.json", [an_entry()])
    code, out, err = invoke("pack", str(source), KEY.seed_hex)
    assert code == 0, err
    document = json.loads(out)
    assert list(document) == ["plugins", "signature"]
    assert base64.b64decode(document["plugins"]) == source.read_bytes()
    assert verify(KEY.public, document["plugins"].encode(), bytes.fromhex(document["signature"]))
    packed = tmp_path / "spec.json"
    packed.write_text(out)
    code, out, _ = invoke("verify", str(packed), KEY.public_hex)
    assert (code, out) == (0, f"Data file {packed} is signed using {KEY.public_hex}\n")


def test_pack_machines_format_with_the_key_from_the_environment_or_a_file(tmp_path: Path) -> None:
    source = write_entries(tmp_path / "machines.json", [an_entry("facts")])
    code, out, _ = invoke("pack", "--kind", "machines", str(source), env={"KEY": KEY.private_hex})
    assert code == 0
    document = json.loads(out)
    assert list(document) == ["machines", "signature"]
    assert decode_specification(SpecKind.MACHINES, document, KEY.public) == source.read_bytes()
    seed_file = tmp_path / "seed"
    seed_file.write_text(KEY.seed_hex + "\n")
    code, from_file, _ = invoke("pack", "--kind", "machines", str(source), str(seed_file))
    assert (code, json.loads(from_file)) == (0, document)
    # verify works out the format from the document; the key may come from a file.
    packed = tmp_path / "spec.json"
    packed.write_text(out)
    public_file = tmp_path / "public"
    public_file.write_text(KEY.public_hex)
    code, text, _ = invoke("verify", str(packed), str(public_file))
    assert (code, text) == (0, f"Data file {packed} is signed using {KEY.public_hex}\n")


def test_verify_fails_for_another_key_or_a_tampered_file(tmp_path: Path) -> None:
    source = write_entries(tmp_path / "plugins.json", [an_entry()])
    _, out, _ = invoke("pack", str(source), KEY.seed_hex)
    packed = tmp_path / "spec.json"
    packed.write_text(out)
    code, text, err = invoke("verify", str(packed), OTHER.public_hex)
    assert code == 1
    assert text == f"Data {packed} does not have a valid signature for key {OTHER.public_hex}\n"
    assert err == "machinery: verification failed\n"
    document = json.loads(out)
    document["plugins"] = base64.b64encode(
        source.read_bytes().replace(b"requests", b"evil")
    ).decode()
    packed.write_text(json.dumps(document))
    code, _, err = invoke("verify", str(packed), KEY.public_hex)
    assert (code, err) == (1, "machinery: verification failed\n")
    del document["signature"]
    packed.write_text(json.dumps(document))
    assert invoke("verify", str(packed), KEY.public_hex)[0] == 1
    packed.write_text("[]")
    code, _, err = invoke("verify", str(packed), KEY.public_hex)
    assert code == 1 and "JSON object" in err
    code, _, err = invoke("verify", str(packed), "nope")
    assert code == 1


def test_pack_output_file_and_force(tmp_path: Path) -> None:
    source = write_entries(tmp_path / "plugins.json", [an_entry()])
    output = tmp_path / "spec.json"
    code, out, _ = invoke("pack", str(source), KEY.seed_hex, "--output", str(output))
    assert (code, out) == (0, "")
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert decode_specification(SpecKind.PLUGINS, json.loads(output.read_text()), KEY.public)
    code, _, err = invoke("pack", str(source), KEY.seed_hex, "--output", str(output))
    assert code == 1
    assert err == f"machinery: output file {output} exist, use --force to overwrite\n"
    code, _, _ = invoke("pack", str(source), KEY.seed_hex, "--output", str(output), "--force")
    assert code == 0


def test_pack_refuses_invalid_or_empty_lists_and_warns_without_a_key(tmp_path: Path) -> None:
    source = write_entries(tmp_path / "plugins.json", [])
    code, _, err = invoke("pack", str(source), KEY.seed_hex)
    assert code == 1
    assert "no plugins listed in specification, use --force to write an empty list" in err
    code, out, _ = invoke("pack", str(source), KEY.seed_hex, "--force")
    assert code == 0 and json.loads(out)["plugins"] == base64.b64encode(b"[]").decode()

    write_entries(source, [an_entry(checksum="abc")])
    code, _, err = invoke("pack", str(source), KEY.seed_hex)
    assert code == 1 and "invalid specification: entry 1 (requests): checksum must be" in err
    write_entries(source, [an_entry(match="identity(")])
    code, _, err = invoke("pack", str(source), KEY.seed_hex)
    assert code == 1 and "invalid match expression" in err
    source.write_text("{")
    assert invoke("pack", str(source), KEY.seed_hex)[0] == 1

    write_entries(source, [an_entry()])
    code, out, err = invoke("pack", str(source))
    assert code == 0
    assert "No ed25519 private key given, encoding without signing" in err
    assert list(json.loads(out)) == ["plugins"]
    code, out, err = invoke("pack", str(source), "--force")
    assert code == 0 and err == ""
    code, _, err = invoke("pack", str(source), "0011")
    assert code == 1 and "neither hex" in err
    assert invoke("pack", str(tmp_path / "missing.json"), KEY.seed_hex)[0] == 1


def test_pack_reproduces_choria_readme_example(tmp_path: Path) -> None:
    example = (CORPUS / "fragments" / "readme-machines-watcher-pack-example.txt").read_text()
    array = example.split("$ cat machines.json\n", 1)[1].split("$ go run", 1)[0]
    key = re.search(r"pack machines\.json ([0-9a-f]{128})", example)
    published = next(line for line in example.splitlines() if line.startswith('{"machines"'))
    assert key is not None
    source = tmp_path / "machines.json"
    source.write_text(array)
    code, out, _ = invoke("pack", "--kind", "machines", str(source), key.group(1))
    assert code == 0
    assert json.loads(out) == json.loads(published)
    packed = tmp_path / "spec.json"
    packed.write_text(published)
    public = parse_public_key(key.group(1)[64:])
    code, text, _ = invoke("verify", str(packed), public.hex())
    assert code == 0 and text.startswith(f"Data file {packed} is signed using ")


# -- add and rm -----------------------------------------------------------------------------


def test_add_creates_and_updates_entries(tmp_path: Path) -> None:
    manifest = tmp_path / "plugins.json"
    code, out, _ = invoke(
        "add",
        "requests",
        "https://user:s%40cret@repo.example.net/requests-agent_1.0.tgz",
        SUM_A,
        SUM_B,
        "--manifest",
        str(manifest),
        "--matcher",
        "has_command('facter')",
    )
    assert code == 0
    assert out == f"Adding plugin requests\nUse the pack command to sign the {manifest} manifest\n"
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    assert json.loads(manifest.read_text()) == [
        {
            "name": "requests",
            "source": "https://repo.example.net/requests-agent_1.0.tgz",
            "checksum": SUM_A,
            "verify_checksum": SUM_B,
            "username": "user",
            "password": "s@cret",
            "match": "has_command('facter')",
        }
    ]
    # Updating keeps what was not given (credentials, matcher, unknown fields).
    entries = json.loads(manifest.read_text())
    entries[0]["verify"] = "SHA256SUMS"
    manifest.write_text(json.dumps(entries))
    code, out, _ = invoke(
        "add",
        "requests",
        "https://repo.example.net/requests-agent_2.0.tgz",
        SUM_B,
        SUM_A,
        "--manifest",
        str(manifest),
        "--governor",
        "PLUGINS",
    )
    assert code == 0 and out.startswith("Updating plugin requests\n")
    [updated] = json.loads(manifest.read_text())
    assert updated["source"] == "https://repo.example.net/requests-agent_2.0.tgz"
    assert (updated["checksum"], updated["verify_checksum"]) == (SUM_B, SUM_A)
    assert (updated["username"], updated["password"]) == ("user", "s@cret")
    assert updated["match"] == "has_command('facter')"
    assert updated["governor"] == "PLUGINS"
    assert updated["verify"] == "SHA256SUMS"


def test_add_takes_the_name_from_the_url_and_validates(tmp_path: Path) -> None:
    manifest = tmp_path / "plugins.json"
    code, out, _ = invoke(
        "add", "", "https://repo/x/facts-agent_1.0.tgz", SUM_A, SUM_B, "--manifest", str(manifest)
    )
    assert code == 0 and out.startswith("Adding plugin facts\n")
    for args, message in [
        (["x", "ftp://repo/x.tgz", SUM_A, SUM_B], "use an http:// or https:// URL"),
        (["x", "https://repo/x.tgz", "abc", SUM_B], "checksum must be a SHA-256"),
        (["x", "https://repo/x.tgz", SUM_A, SUM_B, "--matcher", "(("], "invalid matcher"),
    ]:
        code, _, err = invoke("add", *args, "--manifest", str(manifest))
        assert code == 1 and message in err, err
    assert [e["name"] for e in json.loads(manifest.read_text())] == ["facts"]
    manifest.write_text("{}")
    code, _, err = invoke("add", "x", "https://r/x.tgz", SUM_A, SUM_B, "--manifest", str(manifest))
    assert code == 1 and "JSON array of objects" in err


def test_rm_removes_an_entry_or_fails(tmp_path: Path) -> None:
    manifest = write_entries(tmp_path / "plugins.json", [an_entry("a"), an_entry("b")])
    code, out, _ = invoke("rm", "a", "--manifest", str(manifest))
    assert code == 0
    assert out == f"Removing plugin a\nUse the pack command to sign the {manifest} manifest\n"
    assert [e["name"] for e in json.loads(manifest.read_text())] == ["b"]
    code, _, err = invoke("rm", "a", "--manifest", str(manifest))
    assert (code, err) == (1, "machinery: no plugin named a found\n")
    code, _, err = invoke("rm", "a", "--manifest", str(tmp_path / "missing.json"))
    assert code == 1 and "does not exist" in err


# -- matcher --------------------------------------------------------------------------------


def test_matcher_evaluates_with_identity_and_facts(tmp_path: Path) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"os": {"family": "linux"}}))
    expression = "identity('^web') && get_fact('os.family') == 'linux'"
    code, out, _ = invoke("matcher", expression, "--identity", "web1", "--facts", str(facts))
    assert (code, out) == (0, f"Matched plugin matcher: {expression}\n")
    code, out, _ = invoke("matcher", expression, "--identity", "db1", "--facts", str(facts))
    assert (code, out) == (0, f"Failed to match plugin matcher: {expression}\n")
    code, _, err = invoke("matcher", "get_fact('x') > 1", "--identity", "db1")
    assert code == 1 and "could not evaluate the matcher" in err
    code, _, err = invoke("matcher", "nope(", "--identity", "db1")
    assert code == 1
    facts.write_text("{")
    assert invoke("matcher", "true", "--facts", str(facts))[0] == 1
