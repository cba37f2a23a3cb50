"""Nagios plugin output: the message and the performance data after ``|``.

A Nagios plugin prints one line such as ``DISK OK - free space: / 3326 MB|/=2643MB;5948;5958;0;5968``
optionally followed by more lines of long text, where a second ``|`` may start more performance
data. The nagios watcher publishes the parsed items, the metric watcher turns them into metrics.

Each item is ``label=value[unit];warn;crit;min;max``. Items are separated by whitespace; a label
with spaces is written in single quotes (``'free space'=5``, a quote inside doubled as ``''``) and
its spaces become ``_``, as Choria does. Thresholds, minimum and maximum are discarded. The value
is read with Choria's pattern ``^([-*\\d+\\.]+)(us|ms|s|%|B|KB|MB|TB|c)*``; an item whose value is
not a finite number is skipped (Choria's Go code panics on some of them).

Output comes from arbitrary programs, so nothing here raises, whatever the input, and at most
:data:`MAX_ITEMS` items are returned.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

__all__ = ["MAX_ITEMS", "PerfData", "parse_perfdata", "split_output"]

MAX_ITEMS = 1000
"""The most items :func:`parse_perfdata` returns; the rest of the text is ignored."""

_VALUE = re.compile(r"^([-*\d+\.]+)(us|ms|s|%|B|KB|MB|TB|c)*")
_WHITESPACE = " \t\r\n\f\v"


class PerfData(NamedTuple):
    """One performance data item."""

    label: str
    value: float
    unit: str

    def to_json(self) -> dict[str, Any]:
        """The item as Choria publishes it (``{"unit", "label", "value"}``, in that order)."""
        return {"unit": self.unit, "label": self.label, "value": float(self.value)}


def split_output(text: str) -> tuple[str, str]:
    """Split plugin output into its message and its performance data text.

    The first line is ``message|perfdata``. Later lines are long text until one holds a ``|``:
    what follows it, and every line after it, is more performance data (the Nagios plugin
    guidelines). The message is the first line's text plus the long text, trimmed; the
    performance data parts are joined with a space.
    """
    lines = text.strip().splitlines()
    if not lines:
        return "", ""
    message, _, perf = lines[0].partition("|")
    message_lines = [message.strip()]
    perf_parts = [perf.strip()] if perf.strip() else []
    for index, line in enumerate(lines[1:], start=1):
        long_text, bar, more = line.partition("|")
        if bar:
            if long_text.strip():
                message_lines.append(long_text.rstrip())
            perf_parts.extend(part.strip() for part in [more, *lines[index + 1 :]] if part.strip())
            break
        message_lines.append(line.rstrip())
    return "\n".join(message_lines).strip(), " ".join(perf_parts)


def _items(text: str) -> list[tuple[str, str]]:
    """``(label, rest)`` pairs: the label (quotes resolved) and what follows its ``=``."""
    items: list[tuple[str, str]] = []
    size = len(text)
    pos = 0
    while pos < size and len(items) < MAX_ITEMS:
        while pos < size and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= size:
            break
        if text[pos] == "'":
            label_chars: list[str] = []
            pos += 1
            while pos < size:
                if text[pos] == "'":
                    if pos + 1 < size and text[pos + 1] == "'":
                        label_chars.append("'")
                        pos += 2
                        continue
                    pos += 1
                    break
                label_chars.append(text[pos])
                pos += 1
            end = pos
            while end < size and text[end] not in _WHITESPACE:
                end += 1
            tail = text[pos:end]
            pos = end
            if not tail.startswith("="):
                continue
            items.append(("".join(label_chars), tail[1:]))
            continue
        end = pos
        while end < size and text[end] not in _WHITESPACE:
            end += 1
        word = text[pos:end]
        pos = end
        # A stray closing quote is dropped, as Choria trims quotes around items.
        word = word.strip("'")
        label, equals, rest = word.partition("=")
        if equals:
            items.append((label, rest))
    return items


def _value(text: str) -> tuple[float, str] | None:
    field = text.split(";", 1)[0]
    if "=" in field:
        return None  # "a=b=c" is not an item (Choria requires exactly one "=")
    match = _VALUE.match(field)
    if match is None:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return value, match.group(2) or ""


def parse_perfdata(text: str) -> list[PerfData]:
    """The performance data items in plugin output (the part after ``|``, see
    :func:`split_output`); items that cannot be read are skipped. Never raises."""
    try:
        _, perf = split_output(text)
        result: list[PerfData] = []
        for label, rest in _items(perf):
            label = label.replace(" ", "_")
            if not label:
                continue
            parsed = _value(rest)
            if parsed is None:
                continue
            result.append(PerfData(label, parsed[0], parsed[1]))
        return result
    except Exception:  # defensive: plugin output must never break a watcher
        return []
