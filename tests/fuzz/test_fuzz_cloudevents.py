"""CloudEvents as ``machinery watch`` reads them: from NATS, an agent's event stream or a JSON-lines
file, i.e. from anyone who can publish on ``choria.machine.>``.

Property: whatever arrives, ``decode_cloudevent`` returns an event or raises CloudEventError, and
printing a decoded event (``watch_line``, the console line, the watch loop's ``_print``) never
raises: one hostile event must not stop an operator's ``machinery watch``.
"""

from __future__ import annotations

import contextlib
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machinery.cli.watch import EventFilter, _print
from machinery.events.cloudevents import CloudEventError, decode_cloudevent
from machinery.events.text import console_line, watch_line
from machinery.watchers.registry import default_registry
from tests.fuzz.strategies import hostile_json, hostile_text

SETTINGS = settings(
    max_examples=400,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

PROTOCOLS = [
    "io.choria.machine.v1.transition",
    *(f"io.choria.machine.watcher.{t}.v1.state" for t in default_registry().names()),
    "io.choria.machine.watcher.unknown.v1.state",
    "io.choria.machine.watcher..v1.state",
    "io.choria.machine.v2.transition",
    "",
]

# Keys the watcher types publish: each type's describe_payload reads some of them.
KEYS = [
    "identity", "id", "version", "machine", "name", "type", "transition", "from_state",
    "to_state", "previous_outcome", "previous_run_time", "command", "path", "source", "state",
    "status", "status_code", "output", "check", "perfdata", "runtime", "key", "value", "creates",
    "timer", "splay", "on", "values", "labels", "metrics", "machines", "plugins", "rendered",
]  # fmt: skip


def decode_and_print(text: str) -> str:
    """What ``machinery watch`` does with one received event; returns what it printed."""
    try:
        event = decode_cloudevent(text)
    except CloudEventError:
        event = None
    if event is not None:
        watch_line(event)
        console_line(event)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        _print(text, EventFilter(), as_json=False)
    return out.getvalue() + err.getvalue()


@SETTINGS
@given(
    st.sampled_from(PROTOCOLS),
    st.dictionaries(st.sampled_from(KEYS), hostile_json, max_size=12),
    st.integers(min_value=0, max_value=2**33),
    st.sampled_from(["cloudevent", "bare", "type-only"]),
)
def test_structured_hostile_events_never_break_watch(
    protocol: str, data: dict[str, Any], timestamp: int, shape: str
) -> None:
    payload = {**data, "protocol": protocol, "timestamp": timestamp}
    if shape == "cloudevent":
        document: Any = {"specversion": "1.0", "type": protocol, "data": payload}
    elif shape == "type-only":
        document = {"specversion": "1.0", "type": protocol, "data": data}
    else:
        document = payload
    printed = decode_and_print(json.dumps(document))
    assert printed  # either the event's line or "skipping an event: <why>"


@SETTINGS
@given(st.one_of(st.text(max_size=200), hostile_text, st.binary(max_size=200).map(repr)))
def test_arbitrary_text_never_breaks_watch(text: str) -> None:
    decode_and_print(text)


@SETTINGS
@given(hostile_json)
def test_arbitrary_json_never_breaks_watch(value: Any) -> None:
    decode_and_print(json.dumps(value))
    decode_and_print(json.dumps({"specversion": "1.0", "data": value}))


def test_deeply_nested_and_large_events_are_refused_or_read() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    huge = json.dumps({"protocol": "io.choria.machine.v1.transition", "machine": "m" * (8 << 20)})
    for what, text in {"100k-deep": deep, "8 MiB machine name": huge}.items():
        printed = decode_and_print(text)
        print(f"watch, {what}: {printed[:80]!r}")


# Numbers JSON allows (Python's json even reads Infinity and NaN) that are not sane timestamps
# or durations. The transition protocol and the exec type stand for every type.
T = "io.choria.machine.v1.transition"
E = "io.choria.machine.watcher.exec.v1.state"


@pytest.mark.parametrize(
    ("protocol", "field", "raw"),
    [
        (T, "timestamp", "Infinity"),
        (T, "timestamp", "1e300"),
        (T, "timestamp", "-1e300"),
        (E, "timestamp", '"x"'),
        (E, "timestamp", "1e300"),
        (E, "previous_run_time", "1" + "0" * 400),
        (T, "timestamp", "NaN"),
        (T, "timestamp", '"x"'),
        (T, "timestamp", "-1"),
        (E, "timestamp", "-1"),
        (E, "previous_run_time", "NaN"),
        (E, "previous_run_time", '"x"'),
    ],
)  # fmt: skip
def test_hostile_numbers_do_not_break_watch(protocol: str, field: str, raw: str) -> None:
    base = {"protocol": protocol, "identity": "n1", "machine": "m", "name": "w", "timestamp": 1}
    base[field] = "__RAW__"
    text = json.dumps({"specversion": "1.0", "type": protocol, "data": base}).replace(
        '"__RAW__"', raw
    )
    printed = decode_and_print(text)
    print(f"{field}={raw[:12]}: {printed.strip()[:100]!r}")
