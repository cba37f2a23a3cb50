"""Durations as manifests write them.

One parser serves every duration in a manifest. It accepts the union of the two syntaxes Choria
uses, Go's ``time.ParseDuration`` (``300ms``, ``1.5h``, ``2h45m``) and Choria's extended form
(``2d``, ``1w``, ``6M``, ``1Y``), and also lets the long units combine (``1d12h``). Values are
float seconds; :func:`format_go_duration` prints them back the way Go's ``Duration.String`` does,
which is what Choria shows in its events and templates.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "DurationError",
    "format_go_duration",
    "format_go_duration_ns",
    "parse_duration",
    "parse_go_duration",
]

_UNIT_SECONDS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "D": 86400.0,
    "w": 7 * 86400.0,
    "W": 7 * 86400.0,
    "M": 30 * 86400.0,
    "y": 365 * 86400.0,
    "Y": 365 * 86400.0,
}

# Longest units first so that "ms" is not read as "m" followed by a stray "s".
_UNIT_PATTERN = "|".join(sorted(map(re.escape, _UNIT_SECONDS), key=len, reverse=True))
_TERM = re.compile(rf"(\d+\.?\d*|\.\d+)({_UNIT_PATTERN})?")

# A year of seconds times a thousand: anything longer is a typo, and it keeps values finite.
MAX_SECONDS = 1000 * 365 * 86400.0


class DurationError(ValueError):
    """A duration that cannot be parsed; ``column`` is the 0-based offset of the problem."""

    def __init__(self, message: str, column: int = 0) -> None:
        super().__init__(message)
        self.column = column


def parse_duration(text: str) -> float:
    """Parse ``text`` into seconds.

    An empty string is 0, as in Choria. A number without a unit is refused (Go reads a bare
    integer as nanoseconds, which is never what a manifest author meant), except ``0``.
    """
    stripped = text.strip()
    lead = len(text) - len(text.lstrip())
    if stripped == "":
        return 0.0
    if stripped in ("0", "+0", "-0"):
        return 0.0
    if stripped[0] == "-":
        raise DurationError(f"duration {text!r} must not be negative", lead)
    pos = 1 if stripped[0] == "+" else 0
    if pos == len(stripped):
        raise DurationError(f"invalid duration {text!r}", lead)
    total = 0.0
    while pos < len(stripped):
        match = _TERM.match(stripped, pos)
        if match is None:
            raise DurationError(
                f"invalid duration {text!r}: expected a number at {stripped[pos:]!r}", lead + pos
            )
        number, unit = match.group(1), match.group(2)
        if unit is None:
            after = match.end()
            if after < len(stripped):
                bad = stripped[after]
                raise DurationError(
                    f"invalid duration {text!r}: unknown unit {bad!r} "
                    "(use ns, us, ms, s, m, h, d, w, M or y)",
                    lead + after,
                )
            raise DurationError(
                f"invalid duration {text!r}: missing unit (for example {number}s or {number}m)",
                lead + match.end(),
            )
        total += float(number) * _UNIT_SECONDS[unit]
        pos = match.end()
    if not math.isfinite(total) or total > MAX_SECONDS:
        raise DurationError(f"duration {text!r} is too long", lead)
    return total


def format_go_duration(seconds: float) -> str:
    """Format seconds as Go's ``time.Duration.String()`` does (``1h30m0s``, ``500ms``, ``0s``)."""
    return format_go_duration_ns(round(seconds * 1e9))


def format_go_duration_ns(nanos: int) -> str:
    """Format whole nanoseconds as Go's ``time.Duration.String()`` does."""
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000_000_000:
        # Below one second Go picks the largest unit that keeps the integer part non-zero.
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size:
                return sign + _fraction(nanos, size) + unit
    hours, rest = divmod(nanos, 3600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    secs = _fraction(rest, 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}"
    if minutes:
        return f"{sign}{minutes}m{secs}"
    return sign + secs


def _fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if frac == 0:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


_GO_UNIT_NANOS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_GO_TERM = re.compile(r"([0-9]*)(?:\.([0-9]*))?(ns|us|µs|μs|ms|s|m|h)")
_INT64_MAX = (1 << 63) - 1
_FRACTION_DIGITS = 18  # the digits of a fraction Go's leadingFraction reads


def parse_go_duration(text: str) -> int:
    """Parse ``text`` exactly as Go's ``time.ParseDuration`` does, into whole nanoseconds.

    Only Go's units (``ns us µs ms s m h``), an optional sign, and ``0`` without a unit;
    fractions are truncated to the nanosecond as Go does.
    """
    body = text
    negative = False
    if body[:1] in ("-", "+"):
        negative = body[0] == "-"
        body = body[1:]
    if body == "0":
        return 0
    if body == "":
        raise DurationError(f"time: invalid duration {_go_quote(text)}")
    total = 0
    pos = 0
    while pos < len(body):
        match = _GO_TERM.match(body, pos)
        if match is None or (match.group(1) == "" and not match.group(2)):
            if match is None and _GO_TERM_NO_UNIT.match(body, pos):
                raise DurationError(f"time: missing unit in duration {_go_quote(text)}")
            raise DurationError(f"time: invalid duration {_go_quote(text)}")
        whole, fraction, unit = match.group(1), match.group(2) or "", match.group(3)
        size = _GO_UNIT_NANOS[unit]
        whole = whole.lstrip("0")
        if len(whole) > 19:  # past int64 (and past Python's int() digit limit): Go's overflow
            raise DurationError(f"time: invalid duration {_go_quote(text)}")
        value = int(whole or "0") * size
        if fraction:
            # Go reads fraction digits only while they fit in an int64 and ignores the rest.
            fraction = fraction[:_FRACTION_DIGITS]
            value += int(fraction) * size // 10 ** len(fraction)
        total += value
        if total > _INT64_MAX + (1 if negative else 0):
            raise DurationError(f"time: invalid duration {_go_quote(text)}")
        pos = match.end()
    return -total if negative else total


_GO_TERM_NO_UNIT = re.compile(r"[0-9.]+$")


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
