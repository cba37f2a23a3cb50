"""Go's ``time`` values for expressions: instants, durations, locations and layouts.

expr-lang hands expressions Go's ``time.Time``, ``time.Duration`` and ``*time.Location`` (from
``now()``, ``date()``, ``duration()``, ``timezone()``), with their methods (``.Format(layout)``,
``.Year()``, ``.Hours()``...). This module gives the same values to our interpreter:

- :class:`GoTime`: an instant in whole nanoseconds since the Unix epoch and the location it is
  shown in;
- :class:`GoDuration`: a signed count of nanoseconds (Go's ``int64``);
- :class:`GoLocation`: an IANA zone (``Europe/Zurich``), ``UTC``, ``Local`` or a fixed offset;
- :func:`format_time` / :func:`parse_time`: Go's reference-time layouts (``2006-01-02T15:04:05Z07:00``).

Each value answers :meth:`member` with a callable for the Go method of that name, which is how
the interpreter calls methods on them.
"""

from __future__ import annotations

import re
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from machinery.lang.duration import format_go_duration_ns

__all__ = [
    "DATE_LAYOUTS",
    "GoDuration",
    "GoLocation",
    "GoTime",
    "TimeError",
    "format_time",
    "load_location",
    "parse_time",
]

_NANOS = 1_000_000_000
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]

# The layouts expr-lang's date() tries when it is given none, in its order.
DATE_LAYOUTS: tuple[str, ...] = (
    "2006-01-02",
    "15:04:05",
    "2006-01-02 15:04:05",
    "2006-01-02T15:04:05Z07:00",  # RFC3339
    "02 Jan 06 15:04 MST",  # RFC822
    "Monday, 02-Jan-06 15:04:05 MST",  # RFC850
    "Mon, 02 Jan 2006 15:04:05 MST",  # RFC1123
)


class TimeError(ValueError):
    """A layout, a date or a zone Go would refuse."""


class GoLocation:
    """A ``*time.Location``."""

    __slots__ = ("name", "zone")

    def __init__(self, name: str, zone: tzinfo) -> None:
        self.name = name
        self.zone = zone

    def __repr__(self) -> str:
        return f"GoLocation({self.name!r})"

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GoLocation) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def member(self, name: str) -> Callable[..., Any] | None:
        return {"String": lambda: self.name}.get(name)


UTC_LOCATION = GoLocation("UTC", UTC)


def load_location(name: str) -> GoLocation:
    """Go's ``time.LoadLocation``: ``""`` and ``UTC`` are UTC, ``Local`` the host's zone."""
    if name in ("", "UTC"):
        return UTC_LOCATION
    if name == "Local":
        local = datetime.now().astimezone().tzinfo
        return GoLocation("Local", local or UTC)
    # Go's rules: no "..", no absolute path. Also no NUL, and no name longer than a path can
    # be (the OS would refuse it with an error of its own).
    if name.startswith(("/", "\\")) or ".." in name or "\0" in name or len(name) > _MAX_ZONE_NAME:
        raise TimeError(f"unknown time zone {_shown(name)}")
    try:
        return GoLocation(name, ZoneInfo(name))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory ("Europe")
        raise TimeError(f"unknown time zone {_shown(name)}") from None


_MAX_ZONE_NAME = 255


def _shown(text: str, limit: int = 100) -> str:
    """``text`` for an error message: at most ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True, slots=True)
class GoDuration:
    """A ``time.Duration``: whole nanoseconds."""

    nanos: int

    def __str__(self) -> str:
        return format_go_duration_ns(self.nanos)

    def member(self, name: str) -> Callable[..., Any] | None:
        n = self.nanos
        methods: dict[str, Callable[..., Any]] = {
            "Hours": lambda: n / 3_600_000_000_000,
            "Minutes": lambda: n / 60_000_000_000,
            "Seconds": lambda: n / _NANOS,
            "Milliseconds": lambda: _trunc_div(n, 1_000_000),
            "Microseconds": lambda: _trunc_div(n, 1_000),
            "Nanoseconds": lambda: n,
            "String": lambda: str(self),
            # Go's Abs of the most negative duration is the most positive one.
            "Abs": lambda: GoDuration(min(abs(n), _MAX_DURATION)),
            "Truncate": lambda m: GoDuration(n if _nanos(m) <= 0 else n - _trunc_mod(n, _nanos(m))),
            "Round": lambda m: GoDuration(_round_duration(n, _nanos(m))),
        }
        return methods.get(name)


_MAX_DURATION = (1 << 63) - 1


def clamp_duration(nanos: int) -> int:
    """Go's ``Time.Sub``: a difference past what a Duration holds is the largest (or smallest)
    Duration, never a wrapped or unbounded one."""
    return max(-_MAX_DURATION - 1, min(nanos, _MAX_DURATION))


def _nanos(value: object) -> int:
    if isinstance(value, GoDuration):
        return value.nanos
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TimeError(f"expected a duration, got {type(value).__name__}")


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // b
    return q if a >= 0 else -q


def _trunc_mod(a: int, b: int) -> int:
    return a - _trunc_div(a, b) * b


def _round_duration(n: int, m: int) -> int:
    if m <= 0:
        return n
    r = _trunc_mod(n, m)
    if n < 0:
        r = -r
        return n + r if r + r < m else n - m + r
    return n - r if r + r < m else n + m - r


class GoTime:
    """A ``time.Time``: an instant (nanoseconds since the epoch) shown in a location."""

    __slots__ = ("location", "nanos")

    def __init__(self, nanos: int, location: GoLocation = UTC_LOCATION) -> None:
        self.nanos = nanos
        self.location = location

    @classmethod
    def from_unix(cls, seconds: float, location: GoLocation = UTC_LOCATION) -> GoTime:
        return cls(round(seconds * _NANOS), location)

    def __repr__(self) -> str:
        return f"GoTime({self})"

    def __str__(self) -> str:
        return format_time(self, "2006-01-02 15:04:05.999999999 -0700 MST")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GoTime) and other.nanos == self.nanos

    def __hash__(self) -> int:
        return hash(self.nanos)

    def wall(self) -> tuple[datetime, int]:
        """The wall clock (to the second) in this time's location, and how many years to take
        off its ``year``: Python's dates start at year 1, Go's reach before it (``date("15:04")``
        is in year 0), and end at year 9999, so instants outside are moved by whole 400-year
        cycles, which keep the calendar and the weekdays (a negative shift moves forward)."""
        seconds = self.nanos // _NANOS
        cycles = 0  # Python's dates end at year 9999 too: later instants move back
        if seconds < _EARLIEST:
            cycles = -((seconds - _EARLIEST) // _CYCLE_SECONDS)
        elif seconds > _LATEST:
            cycles = -((seconds - _LATEST + _CYCLE_SECONDS - 1) // _CYCLE_SECONDS)
        moment = _EPOCH + timedelta(seconds=seconds + cycles * _CYCLE_SECONDS)
        return moment, cycles * 400

    def local(self) -> datetime:
        """The wall clock in this time's location (years before 1 shifted, see :meth:`wall`)."""
        moment, _ = self.wall()
        return moment.astimezone(self.location.zone)

    @property
    def year(self) -> int:
        moment, shift = self.wall()
        return moment.astimezone(self.location.zone).year - shift

    @property
    def nanosecond(self) -> int:
        return self.nanos % _NANOS

    def member(self, name: str) -> Callable[..., Any] | None:
        methods: dict[str, Callable[..., Any]] = {
            "Year": lambda: self.year,
            "Month": lambda: self.local().month,
            "Day": lambda: self.local().day,
            "Hour": lambda: self.local().hour,
            "Minute": lambda: self.local().minute,
            "Second": lambda: self.local().second,
            "Nanosecond": lambda: self.nanosecond,
            "Weekday": lambda: (self.local().weekday() + 1) % 7,
            "YearDay": lambda: self.local().timetuple().tm_yday,
            "Unix": lambda: self.nanos // _NANOS,
            "UnixMilli": lambda: self.nanos // 1_000_000,
            "UnixMicro": lambda: self.nanos // 1_000,
            "UnixNano": lambda: self.nanos,
            "Format": lambda layout: format_time(self, _string(layout)),
            "String": lambda: str(self),
            "Location": lambda: self.location,
            "In": lambda loc: GoTime(self.nanos, _location(loc)),
            "UTC": lambda: GoTime(self.nanos, UTC_LOCATION),
            "Local": lambda: GoTime(self.nanos, load_location("Local")),
            "Add": lambda d: GoTime(self.nanos + _nanos(d), self.location),
            "Sub": lambda t: GoDuration(clamp_duration(self.nanos - _time_arg(t).nanos)),
            "AddDate": self.add_date,
            "Before": lambda t: self.nanos < _time_arg(t).nanos,
            "After": lambda t: self.nanos > _time_arg(t).nanos,
            "Equal": lambda t: self.nanos == _time_arg(t).nanos,
            "Compare": lambda t: (
                (self.nanos > _time_arg(t).nanos) - (self.nanos < _time_arg(t).nanos)
            ),
            "IsZero": lambda: self.nanos == _ZERO_TIME_NANOS,
            "Truncate": lambda d: GoTime(self._truncate(_nanos(d)), self.location),
        }
        return methods.get(name)

    def add_date(self, years: object, months: object, days: object) -> GoTime:
        for value in (years, months, days):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TimeError(f"expected ints (years, months, days), got {type(value).__name__}")
        assert isinstance(years, int) and isinstance(months, int) and isinstance(days, int)
        # In the wall clock's frame (see wall()): 400-year cycles keep the calendar.
        moment, shift = self.wall()
        local = moment.astimezone(self.location.zone)
        month_index = local.month - 1 + months
        year = local.year + years + month_index // 12
        month = month_index % 12 + 1
        try:
            # Go normalises overflowing days (Jan 31 + 1 month is Mar 3), as date arithmetic
            # does.
            first = datetime(year, month, 1, local.hour, local.minute, local.second)
            wall = first + timedelta(days=local.day - 1 + days)
            moved = wall.replace(tzinfo=self.location.zone)
            seconds = int(moved.timestamp())
        except (OverflowError, ValueError):
            raise TimeError(
                f"date out of range (adding {years} years, {months} months, {days} days)"
            ) from None
        seconds -= shift // 400 * _CYCLE_SECONDS
        return GoTime(seconds * _NANOS + self.nanosecond, self.location)

    def _truncate(self, step: int) -> int:
        if step <= 0:
            return self.nanos
        since_zero = self.nanos - _ZERO_TIME_NANOS
        return self.nanos - since_zero % step


# Go's zero time, January 1, year 1, 00:00:00 UTC, in nanoseconds from the Unix epoch.
_ZERO_TIME_NANOS = -62135596800 * _NANOS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Two days after the zero time: the earliest instant shown without shifting (zones reach +-1 day).
_EARLIEST = -62135596800 + 2 * 86400
_CYCLE_SECONDS = 146097 * 86400  # 400 Gregorian years, a whole number of weeks
# Two days before the end of year 9999: the latest instant shown without shifting.
_LATEST = int(datetime(9999, 12, 30, tzinfo=UTC).timestamp())


def _string(value: object) -> str:
    if isinstance(value, str):
        return value
    raise TimeError(f"expected a string, got {type(value).__name__}")


def _location(value: object) -> GoLocation:
    if isinstance(value, GoLocation):
        return value
    raise TimeError("expected a location (timezone(...))")


def _time_arg(value: object) -> GoTime:
    if isinstance(value, GoTime):
        return value
    raise TimeError("expected a time")


def now(clock: Callable[[], float] | None = None) -> GoTime:
    """The current instant in the host's zone (as Go's ``time.Now``)."""
    seconds = clock() if clock is not None else _time.time()
    return GoTime.from_unix(seconds, load_location("Local"))


# -- layouts ---------------------------------------------------------------------------------

# Go's std chunks, matched in the order time.nextStdChunk looks for them.
_STD_PREFIXES: tuple[tuple[str, str], ...] = (
    ("January", "month_long"),
    ("Jan", "month_short"),
    ("Monday", "weekday_long"),
    ("Mon", "weekday_short"),
    ("MST", "tz"),
    ("002", "yday_zero"),
    ("01", "month_zero"),
    ("02", "day_zero"),
    ("03", "hour12_zero"),
    ("04", "minute_zero"),
    ("05", "second_zero"),
    ("06", "year2"),
    ("15", "hour"),
    ("1", "month_num"),
    ("2006", "year"),
    ("2", "day"),
    ("__2", "yday_under"),
    ("_2006", "_year"),
    ("_2", "day_under"),
    ("3", "hour12"),
    ("4", "minute"),
    ("5", "second"),
    ("PM", "PM"),
    ("pm", "pm"),
    ("-070000", "tz_hhmmss"),
    ("-07:00:00", "tz_hh_mm_ss"),
    ("-0700", "tz_hhmm"),
    ("-07:00", "tz_hh_mm"),
    ("-07", "tz_hh"),
    ("Z070000", "iso_hhmmss"),
    ("Z07:00:00", "iso_hh_mm_ss"),
    ("Z0700", "iso_hhmm"),
    ("Z07:00", "iso_hh_mm"),
    ("Z07", "iso_hh"),
)


# Where a std chunk may start: a fraction (".000", ",999" not followed by a digit) or a prefix,
# tried in _STD_PREFIXES' order as Go does. One regular expression scans a layout in linear time
# (a layout can be a MiB of text from the data).
_STD_CHUNK = re.compile(
    # The lookahead on the first characters lets the scan skip literal text quickly.
    "(?=[" + re.escape("".join(sorted({p[0] for p, _ in _STD_PREFIXES} | {".", ","}))) + "])"
    r"(?:(?P<frac>[.,](?:0+|9+))(?![0-9])|"
    + "|".join(f"(?P<k{i}>{re.escape(prefix)})" for i, (prefix, _) in enumerate(_STD_PREFIXES))
    + ")"
)


def _chunks(layout: str) -> list[tuple[str, str]]:
    """Split a layout into ``(kind, text)``: kind "" for literal text."""
    out: list[tuple[str, str]] = []
    literal_start = 0
    position = 0
    while True:
        match = _STD_CHUNK.search(layout, position)
        if match is None:
            break
        text = match.group()
        start = match.start()
        if match.group("frac") is not None:
            # ".000" is a fraction only when its digits are all the same ("0" or "9").
            kind = "frac0" if text[1] == "0" else "frac9"
        else:
            kind = _STD_PREFIXES[int(match.lastgroup[1:])][1]  # type: ignore[index]
            if kind == "_year":
                # "_2006" is a literal underscore followed by the year.
                start += 1
                text = "2006"
                kind = "year"
        if start > literal_start:
            out.append(("", layout[literal_start:start]))
        out.append((kind, text))
        position = literal_start = start + len(text)
    if literal_start < len(layout):
        out.append(("", layout[literal_start:]))
    return out


def format_time(moment: GoTime, layout: str) -> str:
    """``t.Format(layout)`` as Go does."""
    local = moment.local()
    year = moment.year
    offset = int((local.utcoffset() or timedelta()).total_seconds())
    parts: list[str] = []
    for kind, text in _chunks(layout):
        if kind == "":
            parts.append(text)
        elif kind == "year":
            parts.append(f"{year:04d}")
        elif kind == "year2":
            parts.append(f"{year % 100:02d}")
        elif kind == "month_long":
            parts.append(_MONTHS[local.month - 1])
        elif kind == "month_short":
            parts.append(_MONTHS[local.month - 1][:3])
        elif kind == "month_num":
            parts.append(str(local.month))
        elif kind == "month_zero":
            parts.append(f"{local.month:02d}")
        elif kind == "weekday_long":
            parts.append(_DAYS[(local.weekday() + 1) % 7])
        elif kind == "weekday_short":
            parts.append(_DAYS[(local.weekday() + 1) % 7][:3])
        elif kind == "day":
            parts.append(str(local.day))
        elif kind == "day_under":
            parts.append(f"{local.day:>2d}")
        elif kind == "day_zero":
            parts.append(f"{local.day:02d}")
        elif kind in ("yday_zero", "yday_under"):
            yday = local.timetuple().tm_yday
            parts.append(f"{yday:03d}" if kind == "yday_zero" else f"{yday:>3d}")
        elif kind == "hour":
            parts.append(f"{local.hour:02d}")
        elif kind in ("hour12", "hour12_zero"):
            hour = local.hour % 12 or 12
            parts.append(str(hour) if kind == "hour12" else f"{hour:02d}")
        elif kind == "minute":
            parts.append(str(local.minute))
        elif kind == "minute_zero":
            parts.append(f"{local.minute:02d}")
        elif kind == "second":
            parts.append(str(local.second))
        elif kind == "second_zero":
            parts.append(f"{local.second:02d}")
        elif kind in ("PM", "pm"):
            marker = "PM" if local.hour >= 12 else "AM"
            parts.append(marker if kind == "PM" else marker.lower())
        elif kind == "tz":
            parts.append(_zone_abbreviation(local, offset))
        elif kind.startswith(("tz_", "iso_")):
            parts.append(_format_offset(kind, offset))
        else:  # fractional seconds
            digits = f"{moment.nanosecond:09d}"[: len(text) - 1]
            if kind == "frac9":
                digits = digits.rstrip("0")
                if not digits:
                    continue
            parts.append(text[0] + digits)
    return "".join(parts)


def _zone_abbreviation(local: datetime, offset: int) -> str:
    name = local.tzname()
    if name and (name.isalpha() or name == "UTC"):
        return name
    # Go prints a zone without an abbreviation as its offset, -0700.
    return _format_offset("tz_hhmm", offset)


def _format_offset(kind: str, offset: int) -> str:
    if kind.startswith("iso_") and offset == 0:
        return "Z"
    sign = "-" if offset < 0 else "+"
    value = abs(offset)
    hours, rest = divmod(value, 3600)
    minutes, seconds = divmod(rest, 60)
    style = kind.split("_", 1)[1]
    if style == "hh":
        return f"{sign}{hours:02d}"
    if style == "hhmm":
        return f"{sign}{hours:02d}{minutes:02d}"
    if style == "hh_mm":
        return f"{sign}{hours:02d}:{minutes:02d}"
    if style == "hhmmss":
        return f"{sign}{hours:02d}{minutes:02d}{seconds:02d}"
    return f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"


def parse_time(layout: str, value: str, location: GoLocation = UTC_LOCATION) -> GoTime:
    """``time.ParseInLocation(layout, value, location)``; :class:`TimeError` when it fails.

    It reads ``value`` by position, never by slicing off what it has read: a layout of many
    chunks against a long value stays linear.
    """
    fields: dict[str, int] = {}
    offset: int | None = None
    pm: bool | None = None
    nanos = 0
    at = 0  # where the rest of ``value`` starts
    length = len(value)

    def fail() -> TimeError:
        return _parse_error(layout, value, value[at:])

    chunks = _chunks(layout)
    for index, (kind, text) in enumerate(chunks):
        if kind == "":
            if not value.startswith(text, at):
                raise fail()
            at += len(text)
            continue
        if kind in ("year", "year2"):
            digits = 4 if kind == "year" else 2
            number, at = _digits(value, at, digits, digits, fail)
            fields["year"] = (
                number if kind == "year" else (1900 + number if number >= 69 else 2000 + number)
            )
        elif kind in ("month_long", "month_short"):
            number, at = _name(value, at, _MONTHS, kind == "month_short", fail)
            fields["month"] = number + 1
        elif kind in ("weekday_long", "weekday_short"):
            _, at = _name(value, at, _DAYS, kind == "weekday_short", fail)
        elif kind in ("month_num", "month_zero"):
            number, at = _digits(value, at, 1 if kind == "month_num" else 2, 2, fail)
            fields["month"] = number
        elif kind in ("day", "day_under", "day_zero"):
            if kind == "day_under" and value.startswith(" ", at):
                at += 1
            number, at = _digits(value, at, 1 if kind != "day_zero" else 2, 2, fail)
            fields["day"] = number
        elif kind in ("yday_zero", "yday_under"):
            if kind == "yday_under":
                while at < length and value[at] == " ":
                    at += 1
            number, at = _digits(value, at, 1, 3, fail)
            fields["yday"] = number
        elif kind in ("hour", "hour12", "hour12_zero"):
            number, at = _digits(value, at, 1 if kind == "hour12" else 2, 2, fail)
            fields["hour"] = number
        elif kind in ("minute", "minute_zero"):
            number, at = _digits(value, at, 1 if kind == "minute" else 2, 2, fail)
            fields["minute"] = number
        elif kind in ("second", "second_zero"):
            number, at = _digits(value, at, 1 if kind == "second" else 2, 2, fail)
            fields["second"] = number
            # Go accepts a fractional second after the seconds even when the layout has none.
            following = chunks[index + 1][0] if index + 1 < len(chunks) else ""
            if (
                value[at : at + 1] in (".", ",")
                and value[at + 1 : at + 2].isdigit()
                and not following.startswith("frac")
            ):
                end = _digits_end(value, at + 1)
                nanos = _fraction_nanos(value[at + 1 : min(end, at + 10)])
                at = end
        elif kind.startswith("frac"):
            if value[at : at + 1] not in (".", ","):
                if kind == "frac9":
                    continue
                raise fail()
            end = _digits_end(value, at + 1)
            if kind == "frac0" and end - at != len(text):
                raise fail()
            nanos = _fraction_nanos(value[at + 1 : min(end, at + 10)])
            at = end
        elif kind in ("PM", "pm"):
            marker = value[at : at + 2].upper()
            if marker not in ("AM", "PM"):
                raise fail()
            pm = marker == "PM"
            at += 2
        elif kind == "tz":
            if value.startswith("UTC", at):
                offset = 0 if offset is None else offset
                at += 3
            else:
                end = at
                while end < length and value[end].isalpha() and value[end].isupper():
                    end += 1
                if end - at < 3:
                    raise fail()
                at = end
        else:  # numeric offsets
            if kind.startswith("iso_") and value.startswith("Z", at):
                offset = 0
                at += 1
                continue
            offset, at = _offset(kind.split("_", 1)[1], value, at, fail)
    if at < length:
        raise TimeError(f'parsing time "{_shown(value)}": extra text: "{_shown(value[at:])}"')
    hour = fields.get("hour", 0)
    if pm is not None:
        if hour > 12:
            raise TimeError(f'parsing time "{_shown(value)}": hour out of range')
        hour = hour % 12 + (12 if pm else 0)
    year = fields.get("year", 0)
    month = fields.get("month", 1)
    day = fields.get("day", 1)
    try:
        if "yday" in fields and "month" not in fields and "day" not in fields:
            leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
            if not 1 <= fields["yday"] <= 365 + leap:
                raise ValueError("day-of-year out of range")
            civil = datetime(max(year, 1), 1, 1) + timedelta(days=fields["yday"] - 1)
            month, day = civil.month, civil.day
        wall = datetime(
            max(year, 1), month, day, hour, fields.get("minute", 0), fields.get("second", 0)
        )
    except (ValueError, OverflowError) as exc:
        raise TimeError(f'parsing time "{_shown(value)}": {exc}') from None
    if offset is not None:
        zone: tzinfo = timezone(timedelta(seconds=offset))
        shown = location
        here = wall.replace(tzinfo=location.zone).utcoffset()
        if here is None or int(here.total_seconds()) != offset:
            shown = GoLocation("", zone)  # Go keeps a fabricated zone for a foreign offset
        epoch = int(wall.replace(tzinfo=zone).timestamp())
    else:
        shown = location
        epoch = int(wall.replace(tzinfo=location.zone).timestamp())
    if year == 0:
        epoch -= 366 * 86400  # year 0 (a layout without a year): a leap year before year 1
    return GoTime(epoch * _NANOS + nanos, shown)


def _parse_error(layout: str, value: str, rest: str) -> TimeError:
    return TimeError(
        f'parsing time "{_shown(value)}" as "{_shown(layout)}": cannot parse "{_shown(rest)}"'
    )


def _digits_end(text: str, start: int) -> int:
    end = start
    while end < len(text) and text[end].isdigit():
        end += 1
    return end


def _digits(
    text: str, at: int, fewest: int, most: int, fail: Callable[[], TimeError]
) -> tuple[int, int]:
    end = at
    while end < len(text) and end - at < most and text[end].isdigit():
        end += 1
    if end - at < fewest:
        raise fail()
    return int(text[at:end]), end


def _name(
    text: str, at: int, names: Sequence[str], short: bool, fail: Callable[[], TimeError]
) -> tuple[int, int]:
    for index, full in enumerate(names):
        name = full[:3] if short else full
        if text[at : at + len(name)].lower() == name.lower():
            return index, at + len(name)
    raise fail()


def _offset(style: str, text: str, at: int, fail: Callable[[], TimeError]) -> tuple[int, int]:
    sign = text[at : at + 1]
    if sign not in ("+", "-"):
        raise fail()
    pattern = {"hh": "00", "hhmm": "0000", "hh_mm": "00:00", "hhmmss": "000000"}.get(
        style, "00:00:00"
    )
    candidate = text[at + 1 : at + 1 + len(pattern)]
    if len(candidate) != len(pattern) or any(
        (p == ":") != (c == ":") or (p == "0" and not c.isdigit())
        for p, c in zip(pattern, candidate, strict=True)
    ):
        raise fail()
    digits = candidate.replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    seconds = int(digits[4:6] or 0)
    # Go refuses hours past 24 and minutes or seconds past 60; a whole day or more is past
    # what a zone offset can be here too.
    total = hours * 3600 + minutes * 60 + seconds
    if hours > 24 or minutes > 60 or seconds > 60 or total >= 86400:
        raise TimeError(
            f'parsing time "{_shown(text)}": time zone offset {sign}{candidate} out of range'
        )
    return (-total if sign == "-" else total), at + 1 + len(pattern)


def _fraction_nanos(digits: str) -> int:
    return int((digits + "000000000")[:9]) if digits else 0
