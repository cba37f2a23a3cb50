"""Whole events, byte for byte, as a Choria agent's Go code would publish them.

Every expected string below is written out by hand from Go's rules (``encoding/json`` of
Choria's notification structs): struct fields in declaration order, map keys sorted, float64
in ``strconv.FormatFloat`` 'f' form between 1e-6 and 1e21 and 'e' form outside it (with
``e-07`` shortened to ``e-7``), ``time.Duration`` as integer nanoseconds, ``time.Time`` as
RFC 3339 with nanoseconds, ``<``, ``>``, ``&`` escaped. None of them is computed by our
encoder. Each watcher type's state is built by the real watcher class, on a fake clock.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from machinery.core.clock import FakeClock
from machinery.core.machine import Machine
from machinery.core.notifications import GoMap, WatcherStateNotification
from machinery.events.cloudevents import EventEncodingError, encode_cloudevent, go_json
from machinery.lang.perfdata import PerfData
from tests.support import Recorder, make_machine, write_machine

START = 1_767_225_600  # 2026-01-01T00:00:00Z
EVENT_ID = "0b7e7a1e-3c1f-4d2a-9e57-8f1c2d3e4f50"
INSTANCE = "5d6c1a2b-7e8f-4a9b-8c0d-1e2f3a4b5c6d"

MANIFEST = """\
name: golden
version: 1.2.3
initial_state: idle
transitions:
  - name: go
    from: [idle]
    destination: busy
watchers:
  - name: w1
    type: {type}
{extra}    properties:
{properties}
"""


def _machine(tmp_path: Path, watcher_type: str, properties: str, extra: str = "") -> Machine:
    body = textwrap.indent(textwrap.dedent(properties).strip(), "      ")
    extra = textwrap.indent(textwrap.dedent(extra).strip(), "    ") + "\n" if extra else ""
    directory = write_machine(
        tmp_path / "golden",
        MANIFEST.format(type=watcher_type, properties=body, extra=extra),
        {"check.sh": "#!/bin/sh\ncat output.txt\nexit 1\n"},
    )
    machine = make_machine(directory, clock=FakeClock(start=START), identity="web1.example.net")
    machine.instance_id = INSTANCE
    machine.build_watchers()
    return machine


def _header(watcher_type: str) -> str:
    return (
        '{"specversion":"1.0","id":"' + EVENT_ID + '","source":"io.choria.machine",'
        '"type":"io.choria.machine.watcher.' + watcher_type + '.v1.state",'
        '"subject":"web1.example.net","datacontenttype":"application/json",'
        '"time":"2026-01-01T00:00:00Z","data":{"protocol":"io.choria.machine.watcher.'
        + watcher_type
        + '.v1.state","identity":"web1.example.net","id":"'
        + INSTANCE
        + '","version":"1.2.3","timestamp":1767225600,"type":"'
        + watcher_type
        + '","machine":"golden","name":"w1",'
    )


def _event(machine: Machine) -> str:
    return encode_cloudevent(machine.watchers[0].current_state(), event_id=EVENT_ID)


def _set(machine: Machine, **attributes: Any) -> None:
    for name, value in attributes.items():
        setattr(machine.watchers[0], name, value)


# -- one golden event per watcher type ------------------------------------------------------------


def test_exec(tmp_path: Path) -> None:
    machine = _machine(tmp_path, "exec", "command: ./check.sh --x '<a&b>'")
    _set(machine, previous_outcome="success", previous_run_time=1.5)
    assert _event(machine) == _header("exec") + (
        '"command":"./check.sh --x \'\\u003ca\\u0026b\\u003e\'","previous_outcome":"success",'
        '"previous_run_time":1500000000}}'
    )


def test_ccm_manifest(tmp_path: Path) -> None:
    # Choria's ccmmanifestwatcher StateNotification: the header, previous_outcome, and
    # previous_run_time as int64 nanoseconds.
    machine = _machine(tmp_path, "ccm_manifest", "manifest_file: manifest.yaml")
    _set(machine, previous_outcome="changes", previous_run_time=0.231)
    assert _event(machine) == _header("ccm_manifest") + (
        '"previous_outcome":"changes","previous_run_time":231000000}}'
    )


def test_file(tmp_path: Path) -> None:
    machine = _machine(tmp_path, "file", "path: /etc/motd")
    _set(machine, previous_outcome="changed")
    assert _event(machine) == _header("file") + (
        '"path":"/etc/motd","previous_outcome":"changed"}}'
    )


def test_schedule(tmp_path: Path) -> None:
    machine = _machine(tmp_path, "schedule", 'schedules: ["0 * * * *"]\nduration: 1m')
    _set(machine, state="on")
    assert _event(machine) == _header("schedule") + '"state":"on"}}'


def test_timer(tmp_path: Path) -> None:
    machine = _machine(tmp_path, "timer", "timer: 1h30m0.000000001s", extra="")
    # time.Duration marshals as int64 nanoseconds: 1h30m plus one nanosecond.
    assert _event(machine) == _header("timer") + '"state":"stopped","timer":5400000000001}}'


def test_expression(tmp_path: Path) -> None:
    machine = _machine(tmp_path, "expression", 'success_when: data.x == "y"')
    _set(machine, previous_outcome="success")
    assert _event(machine) == _header("expression") + '"previous_outcome":"success"}}'


def test_kv(tmp_path: Path) -> None:
    machine = _machine(tmp_path, "kv", "bucket: CFG\nkey: a.b\nmode: poll", extra="interval: 1m")
    _set(machine, previous_state="changed")
    assert _event(machine) == _header("kv") + (
        '"state":"changed","bucket":"CFG","key":"a.b","mode":"poll"}}'
    )


def test_gossip(tmp_path: Path) -> None:
    machine = _machine(tmp_path, "gossip", 'subject: a.b\npayload: "{}"', extra="interval: 10s")
    _set(machine, previous_subject="a.b", previous_payload='{"x":1}', previous_gossip=1767225601)
    assert _event(machine) == _header("gossip") + (
        '"previous_subject":"a.b","previous_payload":"{\\"x\\":1}","previous_gossip":1767225601}}'
    )


def test_archive(tmp_path: Path) -> None:
    machine = _machine(
        tmp_path,
        "archive",
        """\
        source: https://user:secret@example.net/a.tgz
        checksum: "abababababababababababababababababababababababababababababababab"
        creates: app
        target: /srv
        """,
        extra="interval: 1m",
    )
    _set(machine, previous_outcome="success", previous_run_time=0.25)
    assert _event(machine) == _header("archive") + (
        '"source":"https://example.net/a.tgz","creates":"app","previous_outcome":"success",'
        '"previous_run_time":250000000}}'
    )


@pytest.mark.parametrize(
    ("watcher_type", "field"), [("machines", "machines"), ("plugins", "plugins")]
)
def test_managers(tmp_path: Path, watcher_type: str, field: str) -> None:
    machine = _machine(tmp_path, watcher_type, "data_item: spec", extra="interval: 1m")
    _set(machine, previous_names=["b", "a"], previous_outcome="success", previous_run_time=2e-9)
    # A []string keeps its order; 2ns of run time is 2.
    assert _event(machine) == _header(watcher_type) + (
        f'"{field}":["b","a"],"previous_outcome":"success","previous_run_time":2}}}}'
    )


def test_httpswitch_annotations_are_a_sorted_map(tmp_path: Path) -> None:
    machine = _machine(
        tmp_path,
        "httpswitch",
        """\
        on_when: [busy]
        off_when: [idle]
        annotations:
          zone: "b<1>"
          Alpha: x
          alpha: y
          "10": ten
          "9": nine
        """,
    )
    _set(machine, switch_status="off")
    # Go sorts map keys bytewise: digits, then upper case, then lower case.
    assert _event(machine) == _header("httpswitch") + (
        '"status":"off","is_on":false,"annotations":{"10":"ten","9":"nine","Alpha":"x",'
        '"alpha":"y","zone":"b\\u003c1\\u003e"}}}'
    )


def test_metric_numbers_and_maps(tmp_path: Path) -> None:
    machine = _machine(tmp_path, "metric", "command: ./check.sh", extra="interval: 1m")
    _set(
        machine,
        previous_run_time=0.5,
        last_metric={
            "labels": {"z": "1", "a": "2", "B": "3"},
            "metrics": {
                "one": 1,  # a whole number is still float64: "1", never "1.0"
                "big": 1e16,  # plain below 1e21
                "huge": 1e21,  # exponent form from 1e21
                "tiny": 1e-7,  # exponent form below 1e-6, "e-7" not "e-07"
                "small": -0.000001,  # 1e-6 itself is plain
                "above53": 2**53 + 1,  # a float64 cannot hold it: 9007199254740992
                "negzero": -0.0,
                "frac": 0.1,
            },
            "time": 1767225600,
        },
    )
    assert _event(machine) == _header("metric") + (
        '"metrics":{"labels":{"B":"3","a":"2","z":"1"},"metrics":{"above53":9007199254740992,'
        '"big":10000000000000000,"choria_runtime_seconds":0.5,"frac":0.1,"huge":1e+21,'
        '"negzero":-0,"one":1,"small":-0.000001,"tiny":1e-7},"time":1767225600}}}'
    )


async def test_metric_state_from_a_real_run_is_go_encoded(tmp_path: Path) -> None:
    machine = _machine(tmp_path, "metric", "command: ./check.sh", extra="interval: 1m")
    (machine.directory / "check.sh").write_text(
        '#!/bin/sh\necho \'{"labels":{"zz":"1","aa":"2"},"metrics":{"z":2,"a":0.00000001}}\'\n'
    )
    watcher = machine.watchers[0]
    await watcher.check(0)  # type: ignore[attr-defined]
    metrics = watcher.current_state().payload["metrics"]
    runtime = go_json(metrics["metrics"]["choria_runtime_seconds"])
    assert go_json(metrics) == (
        '{"labels":{"aa":"2","format":"choria","zz":"1"},"metrics":{"a":1e-8,"choria_runtime_seconds":'
        + runtime
        + ',"z":2},"time":1767225600}'
    )


def test_nagios(tmp_path: Path) -> None:
    machine = _machine(
        tmp_path,
        "nagios",
        """\
        plugin: ./check.sh -w 1
        annotations:
          runbook: "https://x/?a=1&b=2"
          owner: ops
        """,
    )
    perf = [PerfData("load1", 0.00000025, ""), PerfData("used", 100.0, "%")]
    _set(
        machine,
        previous=1,
        previous_plugin="./check.sh -w 1",
        previous_output="WARNING: load",
        previous_check=1767225600.0,
        previous_perfdata=perf,
        previous_run_time=0.012345678,
        history=[
            {
                "execute": "2026-01-01T00:00:00.123456789Z",
                "status": 1,
                "perfdata": [p.to_json() for p in perf],
            }
        ],
    )
    perf_json = (
        '[{"unit":"","label":"load1","value":2.5e-7},{"unit":"%","label":"used","value":100}]'
    )
    assert _event(machine) == _header("nagios") + (
        '"plugin":"./check.sh -w 1","status":"WARNING","status_code":1,"output":"WARNING: load",'
        '"check_time":1767225600,"perfdata":' + perf_json + ',"runtime":0.012345678,'
        '"history":[{"execute":"2026-01-01T00:00:00.123456789Z","status":1,"perfdata":'
        + perf_json
        + '}],"annotations":{"owner":"ops","runbook":"https://x/?a=1\\u0026b=2"}}}'
    )


class _NanosecondClock(FakeClock):
    """A fake clock whose wall time has a nanosecond part a float cannot hold."""

    def now_ns(self) -> int:
        return START * 1_000_000_000 + 123_456_789


async def test_nagios_real_check_history_keeps_nanoseconds(tmp_path: Path) -> None:
    directory = write_machine(
        tmp_path / "golden",
        MANIFEST.format(
            type="nagios", extra="", properties='      plugin: ./check.sh -w {{ o "warn" 5 }}'
        ),
        {"check.sh": "#!/bin/sh\ncat output.txt\nexit 1\n", "output.txt": "WARN | x=0.0000001\n"},
    )
    machine = make_machine(directory, clock=_NanosecondClock(start=START))
    machine.build_watchers()
    watcher = machine.watchers[0]
    await watcher.check(0)  # type: ignore[attr-defined]
    payload = watcher.current_state().payload
    # The line as rendered (Choria's processOverrides result), not re-quoted argv.
    assert payload["plugin"] == "./check.sh -w 5"
    assert go_json(payload["history"]) == (
        '[{"execute":"2026-01-01T00:00:00.123456789Z","status":1,'
        '"perfdata":[{"unit":"","label":"x","value":1e-7}]}]'
    )


# -- the encoder's rules on their own --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (-1.0, "-1"),
        (1e16, "10000000000000000"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (1e-6, "0.000001"),
        (-0.000001, "-0.000001"),
        (1e-7, "1e-7"),
        (1.2e-8, "1.2e-8"),
        (1e-10, "1e-10"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (float(2**53 + 1), "9007199254740992"),
        (-0.0, "-0"),
        (0.0, "0"),
        (0.1, "0.1"),
        (123456789.125, "123456789.125"),
        (2**64, "18446744073709551616"),  # an int64/uint64-like Python int stays exact
    ],
)
def test_numbers_as_go_writes_them(value: float, expected: str) -> None:
    assert go_json(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "json: unsupported value: NaN"),
        (float("inf"), "json: unsupported value: +Inf"),
        (float("-inf"), "json: unsupported value: -Inf"),
    ],
)
def test_nan_and_infinities_are_refused_as_go_refuses_them(value: float, message: str) -> None:
    with pytest.raises(EventEncodingError, match=message.replace("+", "\\+")):
        go_json({"metrics": GoMap({"x": value})})


def test_unencodable_state_is_logged_not_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    machine = _machine(tmp_path, "metric", "command: ./check.sh", extra="interval: 1m")
    recorder = Recorder()
    machine.node.notifiers.append(recorder)
    _set(machine, previous_run_time=float("nan"))
    machine.watchers[0].publish()
    assert recorder.states("w1") == []
    assert "json: unsupported value: NaN" in caplog.text


def test_strings_as_go_writes_them() -> None:
    # HTML characters and U+2028/9 escaped, control characters as Go >= 1.22 writes them,
    # DEL and non-ASCII kept, and a byte that is not UTF-8 (a lone surrogate after
    # surrogateescape decoding) becomes U+FFFD, as Go replaces invalid UTF-8.
    text = "<&>\u2028\u2029\b\f\n\r\t\x01\x7f é" + b"a\xffb".decode("utf-8", "surrogateescape")
    assert go_json(text) == (
        '"\\u003c\\u0026\\u003e\\u2028\\u2029\\b\\f\\n\\r\\t\\u0001\x7f é' + 'a\ufffdb"'
    )
    go_json(text).encode()  # always encodable


def test_structs_keep_their_order_and_maps_are_sorted() -> None:
    value = {"z": 1, "a": GoMap({"b": [GoMap({"y": 1, "x": 2})], "a": None}), "m": True}
    assert go_json(value) == '{"z":1,"a":{"a":null,"b":[{"x":2,"y":1}]},"m":true}'


def test_decoded_event_is_re_encoded_unchanged() -> None:
    # Events read back from NATS keep the order the producer wrote, so re-encoding gives the
    # same bytes.
    text = (
        _header("metric").split('"data":', 1)[1]
        + '"metrics":{"labels":{"a":"1"},"metrics":{"x":1e-7,"y":2},"time":1}}'
    )
    import json

    payload = json.loads(text)
    state = WatcherStateNotification("metric", payload, "")
    assert go_json(state.payload) == text


def test_a_state_is_encoded_once_for_every_sink(tmp_path: Path) -> None:
    machine = _machine(tmp_path, "file", "path: /etc/motd")
    recorder = Recorder()
    machine.node.notifiers.append(recorder)
    machine.watchers[0].publish()
    (state,) = recorder.states("w1")
    data = state.encoded
    assert data is not None and data.startswith('{"protocol":"io.choria.machine.watcher.file')
    first, second = encode_cloudevent(state, "a"), encode_cloudevent(state, "b")
    assert first.endswith(',"data":' + data + "}") and second.endswith(',"data":' + data + "}")
    assert state.encoded is data  # reused, not encoded again


def test_every_watcher_type_has_a_golden_event() -> None:
    from machinery.watchers.registry import default_registry

    source = Path(__file__).read_text()
    missing = [name for name in default_registry().names() if f'"{name}"' not in source]
    assert missing == [], f"no golden event test for {missing}"
