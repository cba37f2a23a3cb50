"""Go time values under hostile input: layouts, values, instants, zone names and AddDate.

Properties, for every input: only the documented error (TimeError from lang.gotime,
ExpressionError from expressions), never a traceback, in bounded time (hypothesis' deadline).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from machinery.lang.expr import ExpressionError, compile_expression
from machinery.lang.gotime import GoTime, TimeError, format_time, load_location, parse_time
from tests.fuzz.strategies import hostile_text
from tests.fuzz.test_fuzz_lang import fuzz

# Go's layout chunks and the text around them.
CHUNKS = [
    "2006", "06", "01", "1", "Jan", "January", "02", "2", "_2", "__2", "002", "Mon", "Monday",
    "15", "03", "3", "04", "4", "05", "5", "PM", "pm", "MST", "-0700", "-07:00", "-07",
    "-070000", "-07:00:00", "Z0700", "Z07:00", "Z07", "Z070000", "Z07:00:00", ".000", ",999",
    ".9", "_2006", " ", "-", ":", "T", "x", "0", "9", ".", ",", "+", "Z", "\u0663", "\x00",
]  # fmt: skip
layouts = st.lists(st.sampled_from(CHUNKS), max_size=12).map("".join) | hostile_text
values = (
    st.lists(st.sampled_from([*CHUNKS, "99", "+99:99", "24", "366", "0"]), max_size=12).map("".join)
    | hostile_text
)
# Whole nanoseconds from far before year 1 to far after 9999, and int64's ends.
instants = st.integers(min_value=-(1 << 90), max_value=1 << 90) | st.sampled_from(
    [-(1 << 63), (1 << 63) - 1, 0, -62135596800 * 10**9, 253402300799 * 10**9]
)
zones = st.sampled_from(["UTC", "Local", "Europe/Zurich", "Pacific/Kiritimati", "America/St_Johns"])


@fuzz(500)
@given(instants, layouts, zones)
def test_any_instant_formats_with_any_layout(nanos: int, layout: str, zone: str) -> None:
    text = format_time(GoTime(nanos, load_location(zone)), layout)
    assert isinstance(text, str)


@fuzz(500)
@given(layouts, values, zones)
def test_parsing_only_raises_time_errors(layout: str, value: str, zone: str) -> None:
    try:
        parsed = parse_time(layout, value, load_location(zone))
    except TimeError:
        return
    assert isinstance(parsed.nanos, int)


@fuzz(300)
@given(hostile_text)
def test_any_zone_name_is_a_zone_or_a_time_error(name: str) -> None:
    try:
        load_location(name)
    except TimeError as exc:
        assert len(str(exc)) < 200


@fuzz(300)
@given(
    instants,
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.one_of(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), st.booleans()),
)
def test_time_methods_in_expressions_only_raise_expression_errors(
    nanos: int, years: int, months: int, days: Any
) -> None:
    env = {"t": GoTime(nanos), "y": years, "m": months, "d": days}
    for source in (
        "t.AddDate(y, m, d).Year()",
        "string(t.Add(y))",
        "t.Sub(t.Add(y)).String()",
        "toJSON(t)",
        't.Format("2006-01-02T15:04:05.000Z07:00 Monday January _2 __2 002 PM")',
        "t.Truncate(m).Unix()",
        "t.Add(y).Sub(t.Add(m)).Abs().Hours()",
    ):
        try:
            compile_expression(source).evaluate(env)
        except ExpressionError:
            continue
