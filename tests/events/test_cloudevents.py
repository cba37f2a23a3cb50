"""CloudEvents in Choria's exact shape, and reading them back."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import uuid
from pathlib import Path

import pytest

from machinery.core.notifications import TransitionNotification, WatcherStateNotification
from machinery.events.cloudevents import (
    CloudEventError,
    decode_cloudevent,
    encode_cloudevent,
    go_json,
    new_event_id,
    rfc3339,
    shared_cloudevent,
    to_cloudevent,
)
from machinery.events.sinks import JsonLinesNotifier
from machinery.events.text import console_line, watch_line

TRANSITION = TransitionNotification(
    identity="web1",
    id="d8d1f4b2-0d0e-4f4e-9a51-4b7f0f1e2a3b",
    version="1.0.0",
    timestamp=1606924953,
    machine="HVAC",
    transition="air_bad",
    from_state="idle",
    to_state="running",
)


def test_transition_cloudevent_is_byte_for_byte_choria() -> None:
    text = encode_cloudevent(TRANSITION, event_id="8b2bb08e-1b59-4a3d-9b89-d3b5f6c2e1aa")
    assert text == (
        '{"specversion":"1.0","id":"8b2bb08e-1b59-4a3d-9b89-d3b5f6c2e1aa","source":"io.choria.machine",'
        '"type":"io.choria.machine.v1.transition","subject":"web1","datacontenttype":"application/json",'
        '"time":"2020-12-02T16:02:33Z","data":{"protocol":"io.choria.machine.v1.transition",'
        '"identity":"web1","id":"d8d1f4b2-0d0e-4f4e-9a51-4b7f0f1e2a3b","version":"1.0.0",'
        '"timestamp":1606924953,"machine":"HVAC","transition":"air_bad","from_state":"idle","to_state":"running"}}'
    )


def test_go_json_escapes_html_characters_and_keeps_utf8() -> None:
    assert (
        go_json({"a": "<b>&</b> é \u2028"})
        == '{"a":"\\u003cb\\u003e\\u0026\\u003c/b\\u003e é \\u2028"}'
    )


# Go's encoding/json escapes these five in every string (HTMLEscape plus the two JavaScript
# line terminators); written out here as Go writes them.
GO_ESCAPES = [
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
]


@pytest.mark.parametrize(("raw", "escaped"), GO_ESCAPES)
def test_transition_fast_encoder_escapes_as_go_does(raw: str, escaped: str) -> None:
    # Transitions have their own hand-written encoder: each character alone, in a field.
    event = dataclasses.replace(TRANSITION, to_state=f"run{raw}ning")
    text = encode_cloudevent(event, event_id="8b2bb08e-1b59-4a3d-9b89-d3b5f6c2e1aa")
    assert text.endswith(f'"to_state":"run{escaped}ning"}}}}')
    assert raw not in text
    assert decode_cloudevent(text) == event


def test_transition_fast_encoder_is_byte_for_byte_go_with_every_escape() -> None:
    event = TransitionNotification(
        identity="web<1>",
        id="d8d1f4b2-0d0e-4f4e-9a51-4b7f0f1e2a3b",
        version="1.0.0&1",
        timestamp=1606924953,
        machine="HVAC\u2028",
        transition="air_bad\u2029",
        from_state="idle é",
        to_state="<running>",
    )
    text = encode_cloudevent(event, event_id="8b2bb08e-1b59-4a3d-9b89-d3b5f6c2e1aa")
    assert text == (
        '{"specversion":"1.0","id":"8b2bb08e-1b59-4a3d-9b89-d3b5f6c2e1aa","source":"io.choria.machine",'
        '"type":"io.choria.machine.v1.transition","subject":"web\\u003c1\\u003e",'
        '"datacontenttype":"application/json","time":"2020-12-02T16:02:33Z",'
        '"data":{"protocol":"io.choria.machine.v1.transition","identity":"web\\u003c1\\u003e",'
        '"id":"d8d1f4b2-0d0e-4f4e-9a51-4b7f0f1e2a3b","version":"1.0.0\\u00261",'
        '"timestamp":1606924953,"machine":"HVAC\\u2028","transition":"air_bad\\u2029",'
        '"from_state":"idle é","to_state":"\\u003crunning\\u003e"}}'
    )
    # The general encoder writes the same bytes for the same event.
    assert text == go_json(to_cloudevent(event, "8b2bb08e-1b59-4a3d-9b89-d3b5f6c2e1aa"))


def test_round_trip_transition_and_watcher_state() -> None:
    assert decode_cloudevent(encode_cloudevent(TRANSITION)) == TRANSITION
    payload = {
        "protocol": "io.choria.machine.watcher.exec.v1.state",
        "identity": "web1",
        "id": "x",
        "version": "1.0.0",
        "timestamp": 1606924953,
        "type": "exec",
        "machine": "HVAC",
        "name": "monitor",
        "command": "monitor.sh",
        "previous_outcome": "success",
        "previous_run_time": 6000000,
    }
    state = WatcherStateNotification("exec", payload, "ignored")
    decoded = decode_cloudevent(encode_cloudevent(state))
    assert isinstance(decoded, WatcherStateNotification)
    assert decoded.payload == payload
    assert decoded.text == "web1 HVAC#monitor command: monitor.sh, previous: success ran: 0.006s"


def test_decode_accepts_pre_cloudevents_bare_data() -> None:
    decoded = decode_cloudevent(json.dumps(TRANSITION.data()))
    assert decoded == TRANSITION


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"specversion": "1.0", "data": 5}', "not an object"),
        ('{"protocol": "io.other.v1"}', 'unknown event type "io.other.v1"'),
        ('{"protocol": "io.choria.machine.watcher..v1.state"}', "invalid watcher type"),
    ],
)
def test_decode_rejects_garbage_clearly(text: str, message: str) -> None:
    with pytest.raises(CloudEventError, match=message):
        decode_cloudevent(text)


def test_console_and_watch_lines() -> None:
    assert console_line(TRANSITION) == "HVAC transitioned via event air_bad: idle => running"
    assert TRANSITION.describe() == "web1 HVAC transitioned via event air_bad: idle => running"
    assert (
        watch_line(TRANSITION, local_time=False)
        == "[16:02:33] web1 HVAC transitioned via event air_bad: idle => running"
    )


async def test_json_lines_sink_batches_within_a_loop_turn(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonLinesNotifier(path)
    for n in range(100):
        sink.notify(dataclasses.replace(TRANSITION, timestamp=TRANSITION.timestamp + n))
    assert path.read_text() == ""  # written once, after this turn of the loop
    await asyncio.sleep(0)
    lines = path.read_text().splitlines()
    assert len(lines) == 100 and sink.written == 100
    assert len({json.loads(line)["id"] for line in lines}) == 100
    sink.close()


async def test_every_sink_carries_one_encoding_of_an_event(tmp_path: Path) -> None:
    # The JSON-lines file and the NATS spool get the same CloudEvent: same id, same bytes.
    first, second = JsonLinesNotifier(tmp_path / "a.jsonl"), JsonLinesNotifier(tmp_path / "b.jsonl")
    event = dataclasses.replace(TRANSITION)
    first.notify(event)
    second.notify(event)
    first.close()
    second.close()
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    event_id, text = shared_cloudevent(event)
    assert json.loads(text)["id"] == event_id
    assert (tmp_path / "a.jsonl").read_text() == text + "\n"
    # Another event, equal in every field, is another CloudEvent.
    assert shared_cloudevent(dataclasses.replace(TRANSITION))[0] != event_id


def test_json_lines_sink_write_errors_are_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = JsonLinesNotifier("/dev/full")
    sink.notify(TRANSITION)  # no running loop: flushed at once
    assert sink.errors == 1
    assert "could not write 1 events to /dev/full" in caplog.text
    sink.close()


def _transition_json(**fields: object) -> str:
    return json.dumps({"protocol": "io.choria.machine.v1.transition", **fields})


def _exec_state(**fields: object) -> dict[str, object]:
    return {"protocol": "io.choria.machine.watcher.exec.v1.state", "identity": "web1", **fields}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "not a JSON object"),
        ('{"specversion": "1.0", "data": 5}', "event data is not an object"),
        ('{"identity": "web1"}', "event has no protocol"),
        ('{"protocol": 5}', "event has no protocol"),
        (
            '{"protocol": "io.choria.machine.watcher..v1.state"}',
            "invalid watcher type in watcher state",
        ),
        (
            '{"protocol": "io.choria.machine.watcher.exec.v2"}',
            'unknown event type "io.choria.machine.watcher.exec.v2"',
        ),
        (
            '{"protocol": "io.other.exec.v1.state"}',
            'unknown event type "io.other.exec.v1.state"',
        ),
        (
            _transition_json(timestamp="x"),
            "invalid transition event: timestamp 'x' is not a number",
        ),
        (
            _transition_json(timestamp=True),
            "invalid transition event: timestamp True is not a number",
        ),
        (
            _transition_json(timestamp=[1]),
            "invalid transition event: timestamp [1] is not a number",
        ),
        (
            '{"protocol": "io.choria.machine.v1.transition", "timestamp": NaN}',
            "invalid transition event: timestamp nan is not finite",
        ),
        (
            '{"protocol": "io.choria.machine.v1.transition", "timestamp": -Infinity}',
            "invalid transition event: timestamp -inf is not finite",
        ),
        (
            _transition_json(timestamp=2**53 + 1),
            f"invalid transition event: timestamp {2**53 + 1} is out of range",
        ),
        (
            json.dumps(_exec_state(timestamp="x")),
            "invalid watcher state: timestamp 'x' is not a number",
        ),
        (
            json.dumps({"specversion": "1.0", "data": _exec_state(timestamp=-(2**53) - 1)}),
            f"invalid watcher state: timestamp {-(2**53) - 1} is out of range",
        ),
    ],
)
def test_decode_errors_say_exactly_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(CloudEventError) as caught:
        decode_cloudevent(text)
    assert str(caught.value) == message


def test_decode_takes_missing_fields_as_go_zero_values() -> None:
    # Go's json.Unmarshal leaves absent fields at their zero values: "" and 0.
    assert decode_cloudevent(_transition_json()) == TransitionNotification(
        identity="",
        id="",
        version="",
        timestamp=0,
        machine="",
        transition="",
        from_state="",
        to_state="",
    )
    state = decode_cloudevent(json.dumps(_exec_state()))
    assert isinstance(state, WatcherStateNotification)
    assert state.watcher_type == "exec" and state.timestamp == 0


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [(1606924953.0, 1606924953), (2**53, 2**53), (-(2**53), -(2**53)), (0, 0)],
)
def test_decode_accepts_integral_timestamps_up_to_two_to_the_53(
    timestamp: float, expected: int
) -> None:
    decoded = decode_cloudevent(_transition_json(timestamp=timestamp))
    assert decoded.timestamp == expected


def test_decode_reads_the_type_when_data_has_no_protocol() -> None:
    document = to_cloudevent(TRANSITION, "8b2bb08e-1b59-4a3d-9b89-d3b5f6c2e1aa")
    del document["data"]["protocol"]
    assert decode_cloudevent(json.dumps(document)) == TRANSITION


def test_a_cloudevent_without_data_is_read_as_its_own_data() -> None:
    text = json.dumps({"specversion": "1.0", **TRANSITION.data()})
    assert decode_cloudevent(text) == TRANSITION


def test_bare_data_with_a_field_named_data_is_not_unwrapped() -> None:
    # Only a CloudEvent (it has specversion) carries its event in "data".
    payload = _exec_state(machine="HVAC", name="m", data={"protocol": "io.other.v1"})
    decoded = decode_cloudevent(json.dumps(payload))
    assert isinstance(decoded, WatcherStateNotification)
    assert decoded.watcher_type == "exec"
    assert decoded.payload == payload


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": "<"}, '{"a":"\\u003c"}'),
        ({"a": ">"}, '{"a":"\\u003e"}'),
        ({"a": "&"}, '{"a":"\\u0026"}'),
        ({"a": "\u2028"}, '{"a":"\\u2028"}'),
        ({"a": "\u2029"}, '{"a":"\\u2029"}'),
        ({"a": "plain é"}, '{"a":"plain é"}'),
    ],
)
def test_go_json_escapes_each_character_alone(value: object, expected: str) -> None:
    assert go_json(value) == expected


def test_rfc3339_is_utc_seconds_for_each_distinct_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # UTC whatever the local zone (a POSIX TZ string: no tz database needed).
    monkeypatch.setenv("TZ", "XST+5")
    time.tzset()
    try:
        _check_rfc3339_times()
    finally:
        monkeypatch.undo()
        time.tzset()


def _check_rfc3339_times() -> None:
    # Several seconds in a row: the one-second cache must not answer for another second.
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(951782400.75) == "2000-02-29T00:00:00Z"
    assert rfc3339(1606924953) == "2020-12-02T16:02:33Z"
    assert rfc3339(1606924953.999) == "2020-12-02T16:02:33Z"
    assert rfc3339(1606924954) == "2020-12-02T16:02:34Z"
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


def test_event_ids_are_random_version_4_uuids() -> None:
    pattern = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    ids = [new_event_id() for _ in range(300)]
    assert len(set(ids)) == len(ids)
    seen_one = seen_zero = 0
    for event_id in ids:
        assert pattern.fullmatch(event_id), event_id
        parsed = uuid.UUID(event_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        seen_one |= parsed.int
        seen_zero |= ~parsed.int
    # Every bit but the 6 fixed ones (version and variant) is random: each was seen as 1 and as
    # 0 (a random bit stuck for 300 ids has odds of 2**-299).
    fixed = (0xF000 << 64) | (0xC000 << 48)
    random_bits = ((1 << 128) - 1) & ~fixed
    assert seen_one & random_bits == random_bits
    assert seen_zero & random_bits == random_bits


def test_watcher_states_are_encoded_with_the_given_event_id() -> None:
    state = WatcherStateNotification("exec", {"protocol": "x", "timestamp": 0}, "")
    text = encode_cloudevent(state, event_id="8b2bb08e-1b59-4a3d-9b89-d3b5f6c2e1aa")
    assert json.loads(text)["id"] == "8b2bb08e-1b59-4a3d-9b89-d3b5f6c2e1aa"
