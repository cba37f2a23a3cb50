"""Manifest checking: every problem at once, each at its FILE:LINE:COL."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from machinery.spec.diagnostics import Severity
from machinery.watchers.registry import check_manifest

GOOD = """\
name: demo
version: 1.0.0
initial_state: unknown
transitions:
  - name: go
    from: [unknown]
    destination: running
  - name: stop
    from: [running]
    destination: unknown
watchers:
  - name: check
    type: exec
    state_match: [running]
    success_transition: stop
    interval: 1m
    properties:
      command: ./check.sh --name {{ lookup "facts.name" "x" }}
"""


def check(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "machine.yaml"
    path.write_text(textwrap.dedent(text))
    return check_manifest(path)


def errors(tmp_path: Path, text: str) -> list[str]:
    manifest, diagnostics = check(tmp_path, text)
    found = [str(d).split(":", 1)[1] for d in diagnostics if d.severity is Severity.ERROR]
    assert manifest is None if found else manifest is not None
    return found


def test_good_manifest_loads(tmp_path: Path) -> None:
    manifest, diagnostics = check(tmp_path, GOOD)
    assert manifest is not None, diagnostics
    assert manifest.spec.name == "demo"
    assert manifest.properties[0].command.startswith("./check.sh")  # type: ignore[attr-defined]
    assert manifest.directory == tmp_path


# Each case: a change to GOOD (old, new) or a whole manifest, and the expected "LINE:COL: text".
BROKEN: list[tuple[str, str | tuple[str, str], list[str]]] = [
    ("bad yaml", ("    from: [unknown]\n", "    from: [unknown\n"), ["6:", "invalid YAML"]),
    ("tab indent", ("  - name: go\n", "\t- name: go\n"), ["invalid YAML"]),
    ("not a mapping", "- a\n- b\n", ["1:1: a manifest must be a mapping"]),
    (
        "wrong type",
        ("initial_state: unknown\n", "initial_state: unknown\nsplay_start: many\n"),
        ["4:14:", "splay_start"],
    ),
    (
        "missing command",
        ('      command: ./check.sh --name {{ lookup "facts.name" "x" }}\n', "      timeout: 5s\n"),
        ["17:5:", "watcher 'check': property 'command' is required"],
    ),
    ("bad interval", ("interval: 1m", "interval: 10"), ["16:15:", "a duration needs a unit"]),
    ("bad interval unit", ("interval: 1m", "interval: 5x"), ["16:16:", "unknown unit 'x'"]),
    (
        "bad property duration",
        ("      command:", "      timeout: 1S\n      command:"),
        ["18:17:", "unknown unit 'S'"],
    ),
    (
        "interval too small",
        ("interval: 1m", "interval: 100ms"),
        ["16:15:", "interval 100ms is too small", "minimum 500ms"],
    ),
    (
        "announce too small",
        ("    interval: 1m\n", "    interval: 1m\n    announce_interval: 10s\n"),
        ["17:24:", "announce interval 10s is too small"],
    ),
    ("bad template", ('"facts.name" "x" }}', '"facts.name" "x" '), ["18:", "invalid command"]),
    ("unknown template function", ("lookup", "lookkup"), ["18:", 'function "lookkup" not defined']),
    (
        "state as transition",
        ("success_transition: stop", "success_transition: unknown"),
        [
            "15:25:",
            "invalid success_transition 'unknown'",
            "is a state, not a transition",
            "did you mean 'stop'",
        ],
    ),
    (
        "unknown transition",
        ("success_transition: stop", "success_transition: stp"),
        ["15:25:", "invalid success_transition 'stp'", "did you mean 'stop'"],
    ),
    (
        "unknown state_match",
        ("state_match: [running]", "state_match: [runing]"),
        ["14:19:", "invalid state 'runing' in state_match", "did you mean 'running'"],
    ),
    (
        "transition in state_match",
        ("state_match: [running]", "state_match: [go]"),
        ["14:19:", "'go' is a transition, not a state"],
    ),
    (
        "unknown initial state",
        ("initial_state: unknown", "initial_state: unknwn"),
        ["3:16:", "initial state 'unknwn' is not used by any transition; did you mean 'unknown'?"],
    ),
    (
        "empty transition name",
        ("  - name: stop\n", "  - name: ''\n"),
        ["8:5:", "transition #2 has no name"],
    ),
    (
        "conflicting duplicate transition",
        ("  - name: stop\n    from: [running]", "  - name: go\n    from: [unknown]"),
        [
            "9:12:",
            "transition 'go' from state 'unknown' is defined twice with different destinations",
        ],
    ),
    (
        "duplicate watcher",
        ("watchers:\n", "watchers:\n  - name: check\n    type: file\n    properties: {path: x}\n"),
        ["15:11:", "duplicate watcher name 'check' (first at line 12)"],
    ),
    (
        "unknown watcher type",
        ("type: exec", "type: nagios-like"),
        ["13:11:", "unknown watcher type 'nagios-like'"],
    ),
    ("missing type", ("    type: exec\n", ""), ["12:5:", "watcher 'check' has no type"]),
    ("from not a list", ("from: [unknown]", "from: {a: 1}"), ["6:11:", "from"]),
    (
        "properties not a mapping",
        (
            '    properties:\n      command: ./check.sh --name {{ lookup "facts.name" "x" }}\n',
            "    properties: [1]\n",
        ),
        ["17:17:", "properties"],
    ),
    (
        "bad subscribe",
        (
            "    destination: running\n",
            "    destination: running\n    subscribe:\n      - event: x\n",
        ),
        ["9:9:", "machine name is required on subscription for transition 'go'"],
    ),
    (
        "disown with parse_as_data",
        ("      command:", "      disown: true\n      parse_as_data: true\n      command:"),
        ["18:15:", "cannot parse output as data while disowning child processes"],
    ),
    (
        "bad env entry",
        ("      command:", "      environment: [NOPE]\n      command:"),
        ["18:21:", "must look like NAME=value"],
    ),
    (
        "negative splay",
        ("initial_state: unknown\n", "initial_state: unknown\nsplay_start: -5\n"),
        ["4:14:", "splay_start"],
    ),
    (
        "bad file mode",
        (
            "    type: exec\n    state_match: [running]\n",
            "    type: file\n    state_match: [running]\n",
        ),
        ["17:5:", "watcher 'check': property 'path' is required"],
    ),
]

# Keys Choria ignores (its YAML and property decoding never refuse unused keys): each case is a
# change to GOOD and the expected warning; the machine still loads, without the key.
IGNORED_KEYS: list[tuple[str, tuple[str, str], list[str]]] = [
    (
        "unknown top key",
        ("version: 1.0.0\n", "version: 1.0.0\nversoin: 2\n"),
        ["3:1:", "unknown key 'versoin' is ignored; did you mean 'version'?"],
    ),
    (
        "unknown transition key",
        ("    destination: running\n", "    destination: running\n    destinaton: x\n"),
        ["8:5:", "transition 'go': unknown key 'destinaton' is ignored; did you mean"],
    ),
    (
        "unknown watcher key",
        ("    interval: 1m\n", "    interval: 1m\n    state_matchin: [x]\n"),
        ["17:5:", "unknown key 'state_matchin' is ignored; did you mean 'state_match'?"],
    ),
    (
        "unknown property",
        ("      command:", "      comand: x\n      command:"),
        ["18:7:", "unknown property 'comand' is ignored; did you mean 'command'?"],
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"),
    [(c, e) for _, c, e in IGNORED_KEYS],
    ids=[n for n, _, _ in IGNORED_KEYS],
)
def test_unknown_keys_are_warnings_and_the_machine_loads(
    tmp_path: Path, change: tuple[str, str], expected: list[str]
) -> None:
    text = GOOD.replace(change[0], change[1], 1)
    assert text != GOOD, f"test case does not apply: {change[0]!r}"
    manifest, diagnostics = check(tmp_path, text)
    assert manifest is not None, [str(d) for d in diagnostics]
    warnings = [str(d) for d in diagnostics if d.severity is Severity.WARNING]
    assert any(all(part in w for part in expected) for w in warnings), warnings
    assert manifest.warnings == tuple(d for d in diagnostics if not d.is_error)


def test_puppet_governor_on_a_file_watcher_loads_with_a_warning(tmp_path: Path) -> None:
    # What a Puppet module produced in the field: Choria runs it, ignoring ``governor``.
    text = """\
name: files
version: 1.0.0
initial_state: watching
transitions:
  - name: changed
    from: [watching]
    destination: watching
watchers:
  - name: hosts
    type: file
    state_match: [watching]
    success_transition: changed
    interval: 10s
    properties:
      path: /etc/hosts
      governor: FILES
"""
    manifest, diagnostics = check(tmp_path, text)
    assert manifest is not None, [str(d) for d in diagnostics]
    assert [str(d).split("machine.yaml:", 1)[1] for d in diagnostics] == [
        "16:7: warning: watcher 'hosts': properties: unknown property 'governor' is ignored; "
        "valid properties: contents, gather_initial_state, group, mode, owner, path"
    ]
    assert manifest.properties[0].path == "/etc/hosts"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("change", "expected"), [(c, e) for _, c, e in BROKEN], ids=[n for n, _, _ in BROKEN]
)
def test_broken_manifests_report_file_line_col(
    tmp_path: Path, change: str | tuple[str, str], expected: list[str]
) -> None:
    text = change if isinstance(change, str) else GOOD.replace(change[0], change[1], 1)
    if isinstance(change, tuple):
        assert text != GOOD, f"test case does not apply: {change[0]!r}"
    manifest, diagnostics = check(tmp_path, text)
    problems = [str(d) for d in diagnostics if d.is_error]
    if not expected:
        assert manifest is None and problems
        return
    assert manifest is None, "expected the manifest to be rejected"
    assert any(all(part in p for part in expected) for p in problems), problems
    for problem in problems:
        assert problem.startswith(f"{tmp_path / 'machine.yaml'}:"), problem
        assert "Traceback" not in problem


@pytest.mark.parametrize(
    ("after_success", "expected"),
    [
        (
            "    fail_transition: nope\n",
            "invalid fail_transition 'nope' specified in watcher 'check'",
        ),
        (
            "    fail_transition: running\n",
            "invalid fail_transition 'running' specified in watcher 'check'; "
            "'running' is a state, not a transition; did you mean 'go' (leading to 'running')?",
        ),
        (
            "    foreign_state_required:\n      - machine_name: other\n",
            "watcher 'check': foreign_state_required needs state",
        ),
        (
            "    foreign_state_required:\n      - state: up\n",
            "watcher 'check': foreign_state_required needs machine_name",
        ),
    ],
)
def test_every_watcher_field_is_checked_after_a_valid_success_transition(
    tmp_path: Path, after_success: str, expected: str
) -> None:
    # GOOD's watcher has a valid success_transition; what follows it must still be checked.
    text = GOOD.replace(
        "    success_transition: stop\n", "    success_transition: stop\n" + after_success
    )
    assert text != GOOD
    manifest, diagnostics = check(tmp_path, text)
    assert manifest is None
    assert expected in [d.message for d in diagnostics if d.is_error]


def test_a_bad_fail_transition_is_reported_beside_a_bad_success_transition(
    tmp_path: Path,
) -> None:
    text = GOOD.replace(
        "    success_transition: stop\n", "    success_transition: stpo\n    fail_transition: og\n"
    )
    manifest, diagnostics = check(tmp_path, text)
    assert manifest is None
    messages = [d.message for d in diagnostics if d.is_error]
    assert any(m.startswith("invalid success_transition 'stpo'") for m in messages), messages
    assert any(m.startswith("invalid fail_transition 'og'") for m in messages), messages


def test_all_missing_fields_are_reported_at_once(tmp_path: Path) -> None:
    manifest, diagnostics = check(tmp_path, "{}\n")
    assert manifest is None
    messages = [d.message for d in diagnostics]
    assert messages == [
        "a machine name is required",
        "a machine version is required",
        "an initial state is required",
        "no transitions defined",
        "no watchers defined",
    ]


def test_warnings_for_unreachable_and_dead_end_states(tmp_path: Path) -> None:
    text = GOOD.replace(
        "watchers:\n",
        "  - name: lost\n    from: [island]\n    destination: nowhere\nwatchers:\n",
    ).replace("state_match: [running]", "state_match: [island]")
    manifest, diagnostics = check(tmp_path, text)
    assert manifest is not None
    warnings = [d.message for d in diagnostics if d.severity is Severity.WARNING]
    assert "state 'island' can never be reached from 'unknown'" in warnings
    assert "state 'nowhere' can never be reached from 'unknown'" in warnings
    assert "watcher 'check' can never be active: none of its states can be reached" in warnings


def test_missing_file_and_directory(tmp_path: Path) -> None:
    manifest, diagnostics = check_manifest(tmp_path / "nope")
    assert manifest is None
    assert "cannot read" in diagnostics[0].message


def test_property_keys_are_case_insensitive(tmp_path: Path) -> None:
    manifest, diagnostics = check(
        tmp_path, GOOD.replace("      command:", "      Timeout: 5s\n      Command:")
    )
    assert manifest is not None, diagnostics
    assert manifest.properties[0].timeout == 5  # type: ignore[attr-defined]


def test_scalar_name_where_a_list_is_expected(tmp_path: Path) -> None:
    manifest, _ = check(tmp_path, GOOD.replace("from: [unknown]", "from: unknown"))
    assert manifest is not None
    assert manifest.spec.transitions[0].from_ == ["unknown"]


def test_names_that_yaml_11_would_turn_into_booleans(tmp_path: Path) -> None:
    text = GOOD.replace("destination: running", "destination: on").replace("[running]", "[on]")
    text = text.replace("  - name: check", "  - name: off")
    manifest, diagnostics = check(tmp_path, text)
    assert manifest is not None, diagnostics
    assert manifest.spec.watchers[0].name == "off"
    assert "on" in manifest.spec.states()


# -- only regular files inside their directory are read --------------------------------------


def test_only_regular_files_inside_their_directory_are_read(tmp_path: Path) -> None:
    import os
    import socket
    import stat

    from machinery.spec.validate import ManifestReadError, read_manifest_bytes

    secret = tmp_path / "secret.txt"
    secret.write_text("canary: value\n")
    cases: dict[str, str] = {}
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "machine.yaml")
    cases["fifo"] = "not a regular file (a FIFO (named pipe))"
    (tmp_path / "folder" / "machine.yaml").mkdir(parents=True)
    cases["folder"] = "not a regular file (a directory)"
    (tmp_path / "sock").mkdir()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "sock" / "machine.yaml"))
    cases["sock"] = "not a regular file (a socket)"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "machine.yaml").symlink_to(secret)
    cases["out"] = "a symbolic link out of its directory (not followed)"
    (tmp_path / "devnull").mkdir()
    (tmp_path / "devnull" / "machine.yaml").symlink_to("/dev/null")
    cases["devnull"] = "a symbolic link out of its directory (not followed)"
    try:
        os.mknod(tmp_path / "dev" / "machine.yaml", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except FileNotFoundError:
        (tmp_path / "dev").mkdir()
        try:
            os.mknod(tmp_path / "dev" / "machine.yaml", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            cases["dev"] = "not a regular file (a character device)"
        except PermissionError:
            print("mknod not permitted: no device case")
    for name, reason in cases.items():
        file = tmp_path / name / "machine.yaml"
        with pytest.raises(ManifestReadError) as caught:
            read_manifest_bytes(file)
        assert caught.value.strerror == reason, name
        # check_manifest (and so `machinery validate`) says the same, quoting nothing.
        manifest, diagnostics = check_manifest(tmp_path / name)
        assert manifest is None
        assert [d.message for d in diagnostics] == [f"cannot read {file}: {reason}"]
        assert "canary" not in str(diagnostics)
    # A link that stays inside the directory is followed.
    (tmp_path / "ok" / "versions").mkdir(parents=True)
    (tmp_path / "ok" / "versions" / "v1.yaml").write_text("name: x\n")
    (tmp_path / "ok" / "machine.yaml").symlink_to("versions/v1.yaml")
    assert read_manifest_bytes(tmp_path / "ok" / "machine.yaml") == b"name: x\n"


# Every diagnostic of a manifest, in order, as "severity:LINE:COL: message": a change to GOOD.
DIAGNOSED: list[tuple[str, str, list[str]]] = [
    (
        "name: demo",
        "name: bad name!",
        ["error:1:7: machine name 'bad name!' may only use letters, digits and _ . : @ -"],
    ),
    (
        "name: demo",
        "name: 9lives",
        [
            "warning:1:7: warning: machine name '9lives' does not fit Choria's schema "
            "(a letter, then letters, digits, _ or -)"
        ],
    ),
    (
        "version: 1.0.0",
        "version: '1.0'",
        ["warning:2:10: warning: version '1.0' is not SemVer (like 1.0.0)"],
    ),
    ("version: 1.0.0", "version: ''", ["error:2:10: a machine version is required"]),
    ("initial_state: unknown", "initial_state: ''", ["error:3:16: an initial state is required"]),
    (
        "initial_state: unknown",
        "initial_state: unknwn",
        [
            "error:3:16: initial state 'unknwn' is not used by any transition; "
            "did you mean 'unknown'?",
            "warning:6:12: warning: state 'unknown' can never be reached from 'unknwn'",
            "warning:7:18: warning: state 'running' can never be reached from 'unknwn'",
            "warning:14:18: warning: watcher 'check' can never be active: "
            "none of its states can be reached",
        ],
    ),
    (
        "initial_state: unknown",
        "initial_state: zzz",
        [
            "error:3:16: initial state 'zzz' is not used by any transition; "
            "states are named in from and destination",
            "warning:6:12: warning: state 'unknown' can never be reached from 'zzz'",
            "warning:7:18: warning: state 'running' can never be reached from 'zzz'",
            "warning:14:18: warning: watcher 'check' can never be active: "
            "none of its states can be reached",
        ],
    ),
    ("  - name: go\n", "  - name: ''\n", ["error:5:5: transition #1 has no name"]),
    (
        "    destination: running\n",
        "    destination: ''\n",
        [
            "error:5:5: transition 'go' has no destination",
            "warning:9:12: warning: state 'running' can never be reached from 'unknown'",
            "warning:14:18: warning: watcher 'check' can never be active: "
            "none of its states can be reached",
        ],
    ),
    (
        "watchers:\n",
        "  - name: go\n    from: [unknown]\n    destination: unknown\nwatchers:\n",
        [
            "error:12:12: transition 'go' from state 'unknown' is defined twice with different "
            "destinations ('running' at line 5, 'unknown' here)"
        ],
    ),
    (
        "    state_match: [running]\n",
        "    state_match: [go]\n",
        [
            "warning:14:18: warning: watcher 'check' can never be active: "
            "none of its states can be reached",
            "error:14:19: invalid state 'go' in state_match for watcher 'check'; "
            "'go' is a transition, not a state",
        ],
    ),
    (
        "    state_match: [running]\n",
        "    state_match: [runing]\n",
        [
            "warning:14:18: warning: watcher 'check' can never be active: "
            "none of its states can be reached",
            "error:14:19: invalid state 'runing' in state_match for watcher 'check'; "
            "did you mean 'running'?",
        ],
    ),
    (
        "    success_transition: stop\n",
        "    success_transition: stpo\n",
        [
            "error:15:25: invalid success_transition 'stpo' specified in watcher 'check'; "
            "did you mean 'stop'?"
        ],
    ),
    (
        "    interval: 1m\n",
        "    interval: 1x\n",
        [
            "error:16:16: watcher 'check': interval: invalid duration '1x': unknown unit 'x' "
            "(use ns, us, ms, s, m, h, d, w, M or y)"
        ],
    ),
    ("    type: exec\n", "    type: ''\n", ["error:12:5: watcher 'check' has no type"]),
    (
        "name: demo\n",
        "name: demo\nnmae: x\n",
        ["warning:2:1: warning: the manifest: unknown key 'nmae' is ignored; did you mean 'name'?"],
    ),
    (
        "    interval: 1m\n",
        "    interval: 1m\n    intreval: 2m\n",
        [
            "warning:17:5: warning: watcher 'check': unknown key 'intreval' is ignored; did you "
            "mean 'interval'?"
        ],
    ),
    (
        "      command:",
        "      comand: x\n      command:",
        [
            "warning:18:7: warning: watcher 'check': properties: unknown property 'comand' is "
            "ignored; did you mean 'command'?"
        ],
    ),
    ("      command:", "      Command:", []),  # property keys are case-insensitive
    (
        "    from: [unknown]\n",
        "    from: []\n",
        [
            "error:5:5: transition 'go' has no from states",
            "warning:7:18: warning: state 'running' can never be reached from 'unknown'",
            "warning:10:18: warning: state 'unknown' has no way out: no transition starts from it",
            "warning:14:18: warning: watcher 'check' can never be active: "
            "none of its states can be reached",
        ],
    ),
    (
        "    destination: running\n",
        "    destination: running\n    subscribe:\n      - machine_name: other\n      - event: x\n",
        [
            "error:9:9: event name is required on subscription for transition 'go'",
            "error:10:9: machine name is required on subscription for transition 'go'",
        ],
    ),
    (
        "watchers:\n",
        "  - name: go\n    from: [unknown]\n    destination: running\nwatchers:\n",
        [
            "warning:12:12: warning: transition 'go' from state 'unknown' is already defined at line 5"
        ],
    ),
    (
        "  - name: check\n",
        "  - name: check\n    type: exec\n    properties:\n      command: /bin/true\n"
        "  - name: check\n",
        ["error:16:11: duplicate watcher name 'check' (first at line 12)"],
    ),
    ("  - name: check\n", "  - name: ''\n", ["error:12:5: watcher #1 has no name"]),
    (
        "version: 1.0.0\n",
        "version: [1]\n",
        ["error:2:10: version: input should be a valid string, got [1]"],
    ),
    (
        "    interval: 1m\n",
        "    interval: [1]\n",
        ["error:16:15: watcher 'check': interval: expected a duration such as 10s"],
    ),
    (
        '      command: ./check.sh --name {{ lookup "facts.name" "x" }}\n',
        "      timeout: 5x\n",
        [
            "error:17:5: watcher 'check': property 'command' is required",
            "error:18:17: watcher 'check': properties.timeout: invalid duration '5x': "
            "unknown unit 'x' (use ns, us, ms, s, m, h, d, w, M or y)",
        ],
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), DIAGNOSED, ids=[n for _, n, _ in DIAGNOSED])
def test_every_diagnostic_in_full_and_in_order(
    tmp_path: Path, old: str, new: str, expected: list[str]
) -> None:
    assert old in GOOD
    manifest, diagnostics = check(tmp_path, GOOD.replace(old, new, 1))
    prefix = f"{tmp_path / 'machine.yaml'}:"
    found = [f"{d.severity.value}:{str(d).removeprefix(prefix)}" for d in diagnostics]
    assert found == expected
    assert (manifest is None) == any(e.startswith("error:") for e in expected)


def test_files_that_cannot_be_read_say_why_at_their_own_name(tmp_path: Path) -> None:
    def problems(path: Path) -> list[str]:
        manifest, diagnostics = check_manifest(path)
        assert manifest is None
        return [str(d) for d in diagnostics]

    missing = tmp_path / "nope"
    assert problems(missing) == [f"{missing}:1:1: cannot read {missing}: no such file"]
    file = tmp_path / "machine.yaml"
    assert problems(tmp_path) == [f"{file}:1:1: cannot read {file}: no such file"]
    file.write_bytes(b"name: a\nversion: \xff\n")
    assert problems(tmp_path) == [f"{file}:2:1: file is not UTF-8 text (byte 17)"]
    inner = tmp_path / "sub" / "machine.yaml"
    inner.mkdir(parents=True)
    assert problems(tmp_path / "sub") == [
        f"{inner}:1:1: cannot read {inner}: not a regular file (a directory)"
    ]


def test_a_loaded_manifest_knows_its_file_directory_and_digest(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "machine.yaml"
    path.write_text(GOOD)
    for where in (tmp_path, path):
        manifest, _ = check_manifest(where)
        assert manifest is not None
        assert manifest.file == path and manifest.directory == tmp_path
        assert manifest.sha256 == hashlib.sha256(GOOD.encode()).hexdigest()
        assert manifest.name == "demo"


CHAIN = """\
name: chain
version: {version}
initial_state: a
transitions:
  - name: ab
    from: [a]
    destination: b
  - name: bc
    from: [b]
    destination: c
  - name: cd
    from: [c]
    destination: d
  - name: xy
    from: [x, y]
    destination: y
watchers:
  - name: check
    type: exec
    state_match: [c, x]
    properties:
      command: /bin/true
  - name: never
    type: exec
    state_match: [x, y]
    properties:
      command: /bin/true
"""

CHAIN_WARNINGS = [
    "warning:13:18: warning: state 'd' has no way out: no transition starts from it",
    "warning:15:12: warning: state 'x' can never be reached from 'a'",
    "warning:15:15: warning: state 'y' can never be reached from 'a'",
    "warning:25:18: warning: watcher 'never' can never be active: "
    "none of its states can be reached",
]


def _all(tmp_path: Path, text: str) -> list[str]:
    _manifest, diagnostics = check(tmp_path, text)
    prefix = f"{tmp_path / 'machine.yaml'}:"
    return [f"{d.severity.value}:{str(d).removeprefix(prefix)}" for d in diagnostics]


def test_reachability_follows_chains_of_transitions(tmp_path: Path) -> None:
    # a -> b -> c -> d: all reached, d a dead end; x and y only reach each other.
    assert _all(tmp_path, CHAIN.format(version="1.0.0")) == CHAIN_WARNINGS


def test_long_wrong_values_are_shown_shortened(tmp_path: Path) -> None:
    version = "[" + ", ".join(["123456789"] * 10) + "]"
    assert _all(tmp_path, CHAIN.format(version=version)) == [
        "error:2:10: version: input should be a valid string, got "
        "[123456789, 123456789, 123456789, 123456789, 123456789, 1...",
        *CHAIN_WARNINGS,
    ]


@pytest.mark.parametrize(
    ("intervals", "expected"),
    [
        # Choria: announce_interval at least 1 minute; exec's interval at least 500ms; 0 is off.
        (
            "interval: 1m\n    announce_interval: 59s",
            ["error:17:24: announce interval 59s is too small for watcher 'check' (minimum 1m)"],
        ),
        ("interval: 1m\n    announce_interval: 1m", []),
        ("interval: 1m\n    announce_interval: 0s", []),
        (
            "interval: 499ms",
            ["error:16:15: interval 499ms is too small for watcher 'check' (minimum 500ms)"],
        ),
        ("interval: 500ms", []),
        ("interval: 0s", []),
    ],
)
def test_interval_minimums_to_the_millisecond(
    tmp_path: Path, intervals: str, expected: list[str]
) -> None:
    text = GOOD.replace("interval: 1m", intervals, 1)
    assert _all(tmp_path, text) == expected
