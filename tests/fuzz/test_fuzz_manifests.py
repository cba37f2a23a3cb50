"""Manifests under hostile input: any text, YAML token soup, random manifests built from the real
models (every registered watcher type), mutations of the Choria corpus and our examples, and YAML
bombs.

Properties: checking never raises (problems are diagnostics with a position inside the file),
takes bounded time, and a manifest the checker accepts can be built into a running machine and
drawn as a graph. Bombs are refused with a clear message, through the library and through
``machinery validate``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machinery.core.machine import Machine
from machinery.spec.diagnostics import Diagnostic
from machinery.spec.graph import to_dot
from machinery.spec.validate import Manifest, check_manifest_text
from machinery.spec.yamlfile import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, load_yaml
from machinery.watchers.registry import default_registry
from tests.fuzz.strategies import HOSTILE_STRINGS, hostile_text
from tests.support import CORPUS, assert_took, make_node

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = default_registry()
KINDS = REGISTRY.kinds

FUZZ = settings(
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


def check(text: str, directory: Path | None = None) -> tuple[Manifest | None, list[Diagnostic]]:
    """Check ``text``; assert the invariants every answer must keep."""
    manifest, diagnostics = check_manifest_text(text, "machine.yaml", KINDS, directory=directory)
    # YAML also breaks lines at \r, NEL, LS and PS.
    lines = sum(text.count(c) for c in "\n\r\x85\u2028\u2029") + 2
    for diagnostic in diagnostics:
        assert diagnostic.file == "machine.yaml"
        assert 1 <= diagnostic.position.line <= lines, (diagnostic, lines)
        assert diagnostic.position.column >= 1
        assert diagnostic.message.strip()
    if manifest is None:
        assert any(d.is_error for d in diagnostics) or text.strip() == "" or diagnostics
    return manifest, diagnostics


def build(manifest: Manifest) -> None:
    """An accepted manifest must become a machine whose watchers can be created."""
    machine = Machine(manifest, make_node(), watcher_factory=REGISTRY.create)
    machine.build_watchers()
    try:
        assert len(machine.watchers) == len(manifest.spec.watchers)
        to_dot(manifest.spec, current=machine.state)
    finally:
        for watcher in machine.watchers:
            watcher.close()


# -- any text --------------------------------------------------------------------------------------

_YAML_TOKENS = [
    "name: m\n", "version: 1.0.0\n", "initial_state: a\n", "transitions:\n", "watchers:\n",
    "  - name: t\n", "    from: [a]\n", "    destination: b\n", "    type: exec\n",
    "    properties:\n", "      command: ./x.sh\n", "      timeout: 1s\n", "    interval: 10s\n",
    ":", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "<<: *a\n", "!!str ", "!!binary ", "!custom ",
    "|\n", ">-\n", "# c\n", "'", '"', "---\n", "...\n", "%YAML 1.2\n", "\t", "  ", "\n", "? ",
    "on", "off", "yes", "~", "null", "0x1F", "1e999", ".nan", "2019-01-01", "{{ .data.x }}",
    "\ufeff", "\x85", "\u2028",
]  # fmt: skip


@fuzz(300)
@given(st.text(max_size=400))
def test_any_text_is_checked_without_raising(text: str) -> None:
    check(text)


@fuzz(400)
@given(st.lists(st.one_of(st.sampled_from(_YAML_TOKENS), hostile_text), max_size=40).map("".join))
def test_yaml_token_soup_is_checked_without_raising(text: str) -> None:
    check(text)


# -- random manifests from the models ----------------------------------------------------------

_HEX = "a" * 64
_FIELD_VALUES: dict[str, list[Any]] = {
    "command": ["./check.sh", "/bin/true", "check.sh --host {{ lookup \"facts.fqdn\" \"x\" }}", ""],
    "plugin": ["/usr/lib/nagios/plugins/check_load -w 1", "{{ .data.plugin }}"],
    "builtin": ["", "goss", "agent_status", "heartbeat", "nope"],
    "path": ["file.txt", "/tmp/x", "{{ .data.p }}", "", "../escape"],
    "contents": ["hello {{ .data.x }}\n", "plain", None],
    "owner": ["root", "{{ .data.u }}", ""],
    "group": ["root", "wheel", ""],
    "mode": ["0644", "755", "0o600", "999", "{{ .data.m }}", ""],
    "source": ["http://127.0.0.1:9/a.tar.gz", "https://x/{{ .data.v }}.tgz", "ftp://x", ""],
    "checksum": [_HEX, "{{ .data.sum }}", "abc", ""],
    "verify_checksum": [_HEX, ""],
    "creates": ["app", "tmp", "a/b", "..", ""],
    "target": ["deploy", "/tmp/deploy", ""],
    "verify": ["SHA256SUMS", "../x", ""],
    "schedules": [["*/5 * * * *"], ["@daily", "0 0 * * 1"], ["not cron"], []],
    "timezone": ["UTC", "Europe/Paris", "Nowhere/Land", ""],
    "success_when": ["data.x > 1", "facts.os == 'linux'", "1 +", ""],
    "fail_when": ["data.x < 0", "", "\"s\""],
    "on_when": [["a"], ["b", "c"], []],
    "off_when": [["b"], []],
    "disable_when": [["c"], []],
    "bucket": ["CONFIG", "", "bad bucket"],
    "key": ["k", "", "a.b"],
    "mode_kv": ["poll", "watch", "sometimes"],
    "data_item": ["spec", ""],
    "public_key": [_HEX, "zz", ""],
    "environment": [["A=1"], ["BAD"], ["X={{ .data.x }}"], []],
    "labels": [{"a": "b"}, {}],
    "annotations": [{"a": "b"}, {}],
    "manager_machine_prefix": ["mm", "a_b", ""],
    "plugins_directory": ["plugins", ""],
    "subject": ["a.b", ""],
    "payload": ["{}", ""],
    "graphite_port": ["2003", "x"],
    "store_key": ["k", ""],
    "query": ["a.b", "#(", ""],
}  # fmt: skip


def _value_for(name: str, annotation: str, draw: st.DataObject) -> Any:
    if draw.draw(st.integers(0, 9)) == 0:
        return draw.draw(st.one_of(hostile_text, st.integers(), st.booleans(), st.none()))
    key = "mode_kv" if name == "mode" and "Literal" in annotation else name
    if key in _FIELD_VALUES:
        return draw.draw(st.sampled_from(_FIELD_VALUES[key]))
    if "bool" in annotation:
        return draw.draw(st.sampled_from([True, False, "true", "yes"]))
    if "float" in annotation:
        return draw.draw(st.sampled_from(["1s", "10s", "1m", "1h30m", "0", "2d", "-1s", 5, ""]))
    if "int" in annotation:
        return draw.draw(st.sampled_from([0, 1, 100, -1, "10", "512MiB"]))
    if "list" in annotation:
        return draw.draw(st.lists(st.sampled_from(["a", "b", "x"]), max_size=3))
    if "dict" in annotation:
        return draw.draw(st.dictionaries(st.sampled_from(["a", "b"]), st.just("v"), max_size=2))
    return draw.draw(st.sampled_from(["", "x", "{{ .data.x }}"]))


# A valid starting point per type; the strategy below perturbs it (or not).
GOOD_PROPERTIES: dict[str, dict[str, Any]] = {
    "exec": {"command": "./check.sh"},
    "file": {"path": "f.txt"},
    "schedule": {"schedules": ["*/5 * * * *"], "duration": "1m"},
    "timer": {"timer": "10s"},
    "expression": {"success_when": "data.x > 1"},
    "nagios": {"plugin": "/usr/lib/nagios/plugins/check_load"},
    "metric": {"command": "./m.sh"},
    "archive": {"source": "http://127.0.0.1:9/a.tgz", "checksum": _HEX, "creates": "app",
                "target": "deploy"},
    "httpswitch": {"on_when": ["b"], "off_when": ["a"]},
    "kv": {"bucket": "CONFIG", "key": "k"},
    "gossip": {"subject": "a.b", "payload": "{}"},
    "machines": {"data_item": "spec"},
    "plugins": {"data_item": "spec"},
}  # fmt: skip

_STATES = ["a", "b", "c", "idle"]
_BAD_NAMES = ["x y", "", "-dash", "a/b", "é", "on"]


def _properties(kind: str, draw: st.DrawFn, helper: st.DataObject, perturb: bool) -> dict[str, Any]:
    properties = dict(GOOD_PROPERTIES.get(kind, {}))
    model = REGISTRY[kind].properties_model if kind in REGISTRY else None
    if model is None:
        return properties
    for name, field in model.model_fields.items():
        if draw(st.integers(0, 4)) == 0:  # add optional settings, sometimes valid ones
            properties[name] = _value_for(name, str(field.annotation), helper)
    if perturb:
        action = draw(st.sampled_from(["drop", "replace", "unknown", "case"]))
        names = sorted(model.model_fields)
        if action == "drop" and properties:
            properties.pop(draw(st.sampled_from(sorted(properties))))
        elif action == "replace":
            name = draw(st.sampled_from(names))
            properties[name] = _value_for(name, str(model.model_fields[name].annotation), helper)
        elif action == "unknown":
            properties[draw(hostile_text)] = draw(hostile_text)
        elif properties:
            key = draw(st.sampled_from(sorted(properties)))
            properties[key.upper()] = properties.pop(key)  # keys are case-insensitive
    return properties


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid manifest using every watcher type, with zero to three faults injected."""
    helper = draw(st.data())
    faults = draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))
    spots = set(draw(st.lists(st.integers(0, 9), min_size=faults, max_size=faults)))
    states = _STATES[: draw(st.integers(2, 4))]
    transitions = [{"name": "go", "from": ["a"], "destination": "b"},
                   {"name": "back", "from": states[1:], "destination": "a"}]  # fmt: skip
    if len(states) > 2:
        transitions.append({"name": "on_to_c", "from": ["a", "b"], "destination": "c"})
    events = [t["name"] for t in transitions]
    if 0 in spots:
        transitions.append({"name": draw(st.sampled_from([*_BAD_NAMES, "go"])),
                            "from": [draw(st.sampled_from([*states, "nowhere"]))],
                            "destination": draw(st.sampled_from([*states, "", "x y"]))})  # fmt: skip
    kinds = draw(st.lists(st.sampled_from(REGISTRY.names()), min_size=1, max_size=4))
    watchers = []
    for index, kind in enumerate(kinds):
        watcher: dict[str, Any] = {
            "name": f"w{index}",
            "type": kind,
            "properties": _properties(kind, draw, helper, perturb=(index + 3) in spots),
        }
        if draw(st.booleans()):
            watcher["state_match"] = draw(st.lists(st.sampled_from(states), max_size=2))
        if kind != "timer" and draw(st.booleans()):
            watcher["success_transition"] = draw(st.sampled_from(events))
        if draw(st.booleans()):
            watcher["fail_transition"] = draw(st.sampled_from(events))
        if draw(st.booleans()):
            watcher["interval"] = draw(st.sampled_from(["1m", "10s", "2m30s", "1h"]))
        watchers.append(watcher)
    if 1 in spots and watchers:
        watchers[0][draw(st.sampled_from(["name", "type", "interval", "state_match",
                                          "success_transition", "announce_interval", "bogus"]))] = (
            draw(st.one_of(hostile_text, st.sampled_from(["x", "0s", "10", "bogus", "go"]))))  # fmt: skip
    if 2 in spots:
        watchers.append(dict(watchers[0]) if watchers else {"name": "dup"})
    document: dict[str, Any] = {
        "name": "fuzzed",
        "version": "1.0.0",
        "initial_state": "a",
        "splay_start": draw(st.sampled_from([0, 0, 5])),
        "transitions": transitions,
        "watchers": watchers,
    }
    if 9 in spots:
        document[draw(st.sampled_from(["name", "version", "initial_state", "splay_start"]))] = (
            draw(st.one_of(hostile_text, st.sampled_from([-1, "1", None, [], {}]))))  # fmt: skip
    return document


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML (strings double-quoted the JSON way, which YAML reads alike)."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}\n"
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{json.dumps(str(key))}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{json.dumps(str(key))}: {to_yaml(item, indent + 2)}")
        return "".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]\n"
        return "".join(f"{pad}- {to_yaml(item, indent + 2).lstrip()}" for item in value)
    return json.dumps(value) + "\n"


accepted_counter = {"accepted": 0, "checked": 0}


@fuzz(300)
@given(manifests(), st.booleans())
def test_random_manifests_from_the_models(document: dict[str, Any], as_json: bool) -> None:
    text = json.dumps(document, indent=1) if as_json else to_yaml(document)
    manifest, _ = check(text)
    accepted_counter["checked"] += 1
    if manifest is not None:
        accepted_counter["accepted"] += 1
        build(manifest)


def test_random_manifests_produce_some_accepted_ones() -> None:
    # Runs after the property above (file order): make sure it did not only test rejections.
    print(f"random manifests: {accepted_counter}")
    if accepted_counter["checked"]:
        assert accepted_counter["accepted"] > 0


# -- mutations of real manifests ---------------------------------------------------------------


def _corpus_texts() -> list[tuple[str, str]]:
    files = sorted(CORPUS.glob("*/machine.yaml")) + sorted(CORPUS.glob("fragments/*.yaml"))
    files += sorted((ROOT / "examples").glob("*/machine.yaml"))
    return [(str(p.relative_to(p.parents[1])), p.read_text()) for p in files]


CORPUS_TEXTS = _corpus_texts()


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True) or ["\n"]
    for _ in range(rng.randint(1, 4)):
        operation = rng.randrange(8)
        i = rng.randrange(len(lines))
        if operation == 0 and len(lines) > 1:
            del lines[i]
        elif operation == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif operation == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif operation == 3:
            cut = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:cut] + rng.choice(HOSTILE_STRINGS)[:200] + lines[i][cut:]
        elif operation == 4:
            lines[i] = " " * rng.randint(0, 6) + lines[i].lstrip()
        elif operation == 5:
            lines = lines[: i + 1]
            lines[-1] = lines[-1][: rng.randrange(len(lines[-1]) + 1)]
        elif operation == 6 and ":" in lines[i]:
            key, _, _ = lines[i].partition(":")
            lines[i] = f"{key}: {json.dumps(rng.choice(HOSTILE_STRINGS)[:100])}\n"
        else:
            lines[i] = lines[i].replace("-", "", 1).replace(":", "", 1)
    return "".join(lines)


@fuzz(300)
@given(st.sampled_from(CORPUS_TEXTS), st.randoms(use_true_random=False))
def test_mutated_corpus_and_example_manifests(item: tuple[str, str], rng: random.Random) -> None:
    _, text = item
    manifest, _ = check(mutate(text, rng))
    if manifest is not None:
        build(manifest)


def test_every_corpus_and_example_manifest_checks_without_raising() -> None:
    accepted = 0
    for _, text in CORPUS_TEXTS:
        manifest, _ = check(text)
        if manifest is not None:
            accepted += 1
            build(manifest)
    print(f"corpus and examples: {len(CORPUS_TEXTS)} manifests, {accepted} accepted and built")
    assert accepted >= 5


# -- bombs -------------------------------------------------------------------------------------


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    lines = ["name: bomb", "version: 1.0.0", 'lol0: &l0 ["lol"]']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"lol{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def block_nesting(depth: int) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}v\n"


BOMBS = {
    "billion laughs (10^9 values)": (billion_laughs(), "expands to more than"),
    "alias of a mapping, repeated": (
        "a: &a {" + ", ".join(f"k{i}: v" for i in range(400)) + "}\n"
        + "b: [" + ", ".join(["*a"] * 400) + "]\n",
        "expands to more than",
    ),
    "flow nesting 100k deep": ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested"),
    "flow mapping nesting 10k deep": ("a: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", "nested"),
    "block nesting 200 deep": (block_nesting(200), "nested"),
    "5 MiB file": ("name: x\n" + "# padding\n" * (512 * 1024), "larger than"),
    f"{MAX_NODES + 10} values": (
        "items:\n" + "".join(f"  - {i}\n" for i in range(MAX_NODES + 10)),
        "expands to more than",
    ),
}  # fmt: skip


@pytest.mark.parametrize("what", list(BOMBS))
def test_yaml_bombs_are_refused_with_a_clear_message(what: str) -> None:
    text, message = BOMBS[what]
    started = time.monotonic()
    document = load_yaml(text, "bomb.yaml")
    took = time.monotonic() - started
    manifest, diagnostics = check_manifest_text(text, "bomb.yaml", KINDS)
    shown = document.diagnostics[0].message if document.diagnostics else "(no diagnostic)"
    print(f"yaml bomb, {what}: refused in {took:.2f}s: {shown}")
    assert document.data is None and manifest is None
    assert any(message in d.message for d in diagnostics), diagnostics[:3]
    assert_took(took, 20.0, f"yaml bomb refused, {what}")


VALIDATE = [sys.executable, "-m", "machinery", "validate"]


def _validate(path: Path) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """Run ``machinery validate``; returns its result, seconds taken and its own peak RSS (KiB,
    from wait4: RUSAGE_CHILDREN would be the largest of every child this test run started)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen([*VALIDATE, str(path)], stdout=out, stderr=err)
        while True:  # reaped here, not by Popen, to get its rusage
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > 120:
                child.kill()
                raise AssertionError(f"machinery validate {path} took over 120 s")
            time.sleep(0.01)
        child.returncode = os.waitstatus_to_exitcode(status)
        took = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(
            child.args, child.returncode, out.read().decode(), err.read().decode()
        )
    return done, took, usage.ru_maxrss


def test_machinery_validate_refuses_bombs(tmp_path: Path) -> None:
    for index, what in enumerate(["billion laughs (10^9 values)", "flow nesting 100k deep",
                                  "5 MiB file"]):  # fmt: skip
        directory = tmp_path / f"bomb{index}"
        directory.mkdir()
        (directory / "machine.yaml").write_text(BOMBS[what][0])
        done, took, _ = _validate(directory)
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        print(f"machinery validate, {what}: exit {done.returncode} in {took:.1f}s: {last}")
        assert done.returncode == 1
        assert BOMBS[what][1] in done.stderr
        assert "Traceback" not in done.stderr
        assert_took(took, 60.0, f"machinery validate refusing a bomb, {what}")


def test_a_huge_manifest_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    (small / "machine.yaml").write_text("name: small\n")
    _, _, baseline_kib = _validate(small)
    directory = tmp_path / "huge"
    directory.mkdir()
    with open(directory / "machine.yaml", "wb") as handle:
        handle.write(b"name: huge\n")
        handle.truncate(256 << 20)  # sparse: costs no disk
    done, took, peak_kib = _validate(directory)
    print(f"machinery validate, 256 MiB manifest: exit {done.returncode} in {took:.1f}s, "
          f"peak RSS {peak_kib >> 10} MiB (a one-line manifest: {baseline_kib >> 10} MiB)")  # fmt: skip
    assert done.returncode == 1 and "larger than" in done.stderr
    assert peak_kib < baseline_kib + (32 << 10)  # at most the 4 MiB limit read, never 256 MiB


def test_limits_are_what_the_docs_say() -> None:
    assert (MAX_FILE_BYTES, MAX_NODES, MAX_DEPTH) == (4 << 20, 50_000, 64)


def test_a_manifest_with_every_hostile_string_as_values(tmp_path: Path) -> None:
    # Hostile strings everywhere a string goes: diagnostics, never a crash.
    for value in HOSTILE_STRINGS:
        quoted = json.dumps(value)
        text = textwrap.dedent(
            f"""\
            name: {quoted}
            version: 1.0.0
            initial_state: {quoted}
            transitions:
              - name: {quoted}
                from: [{quoted}]
                destination: {quoted}
            watchers:
              - name: {quoted}
                type: exec
                interval: 10s
                properties:
                  command: {quoted}
                  environment: [{quoted}]
            """
        )
        check(text, tmp_path)
