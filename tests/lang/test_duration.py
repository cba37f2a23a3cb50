import pytest
from hypothesis import given
from hypothesis import strategies as st

from machinery.lang.duration import DurationError, format_go_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("1.5h", 5400),
        ("10s", 10),
        ("300ms", 0.3),
        ("2h45m", 9900),
        ("6M", 6 * 30 * 86400),
        ("1Y", 365 * 86400),
        ("1y", 365 * 86400),
        ("1D", 86400),
        ("1W", 604800),
        ("1d12h", 129600),
        (" 5m ", 300),
        ("", 0),
        ("0", 0),
        ("1us", 1e-6),
        ("1µs", 1e-6),
        ("100ns", 1e-7),
        (".5s", 0.5),
    ],
)
def test_parses_go_and_choria_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "fragment", "column"),
    [
        ("10", "missing unit", 2),
        ("1S", "unknown unit 'S'", 1),
        ("1H", "unknown unit 'H'", 1),
        ("5x", "unknown unit 'x'", 1),
        ("-1s", "negative", 0),
        ("abc", "expected a number", 0),
        ("1h 30m", "expected a number", 2),
        ("+", "invalid duration", 0),
    ],
)
def test_rejects_bad_durations_with_position(text: str, fragment: str, column: int) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert fragment in str(info.value)
    assert info.value.column == column


def test_refuses_absurdly_long_durations() -> None:
    with pytest.raises(DurationError, match="too long"):
        parse_duration("99999999999Y")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (120, "2m0s"),
        (5400, "1h30m0s"),
        (7200, "2h0m0s"),
        (90061.5, "25h1m1.5s"),
        (1e-6, "1µs"),
        (1e-9, "1ns"),
        (0.0015, "1.5ms"),
    ],
)
def test_formats_like_go(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**5), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_round_trips_through_go_format(value: int, unit: str) -> None:
    seconds = parse_duration(f"{value}{unit}")
    assert parse_duration(format_go_duration(seconds)) == pytest.approx(seconds)


@given(st.text(max_size=40))
def test_never_raises_anything_but_duration_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except DurationError:
        return
    assert value >= 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("+0", 0), ("-0", 0), (" -0 ", 0), ("+5m", 300), ("+1h30m", 5400)],
)
def test_signed_zero_and_a_plus_sign_are_accepted_as_go_does(text: str, seconds: float) -> None:
    # Go's time.ParseDuration takes an optional sign; "-0" is the one negative it accepts.
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("  -1s", "duration '  -1s' must not be negative", 2),
        ("  +", "invalid duration '  +'", 2),
        (
            "5x",
            "invalid duration '5x': unknown unit 'x' (use ns, us, ms, s, m, h, d, w, M or y)",
            1,
        ),
        ("  99999999999Y", "duration '  99999999999Y' is too long", 2),
    ],
)
def test_error_messages_and_columns_in_full(text: str, message: str, column: int) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert str(info.value) == message
    assert info.value.column == column


def test_a_thousand_years_is_the_longest_duration() -> None:
    assert parse_duration("1000y") == 1000 * 365 * 86400
    with pytest.raises(DurationError, match="too long"):
        parse_duration("1000y1s")


def test_a_duration_error_points_at_the_start_unless_told() -> None:
    assert DurationError("bad").column == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-1.5, "-1.5s"), (-0.5, "-500ms"), (-5400, "-1h30m0s"), (-1e-9, "-1ns"), (1e-9, "1ns")],
)
def test_formats_negative_durations_like_go(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text
