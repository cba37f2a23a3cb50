"""Log line formats: text for a terminal, JSON for operators who ship logs to a collector.

Both escape control characters wherever they come from (a machine directory's name, a manifest,
a command's output): a newline in a message cannot forge a second log line, and an escape
sequence never reaches the terminal. Escaping happens here, once, for every log line.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "escape_control"]

# C0 and C1 controls and DEL, and the Unicode characters that end a line or reorder what
# follows them (bidirectional overrides and isolates) in the viewers logs end up in.
_UNICODE_CONTROLS = (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ESCAPES: dict[int, str] = {
    code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))
} | {code: f"\\u{code:04x}" for code in _UNICODE_CONTROLS}
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})
# In JSON, C0 controls are escaped by the encoder already; the rest become JSON escapes.
_JSON_ESCAPES: dict[int, str] = {
    code: f"\\u{code:04x}" for code in (0x7F, *range(0x80, 0xA0), *_UNICODE_CONTROLS)
}


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``,
    ``\\u202e``): one line, and nothing a terminal would act on."""
    # isprintable() is False for every character escaped (and a few harmless others): the
    # common case costs one scan in C.
    return text if text.isprintable() else text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose lines are escaped by :func:`escape_control`; a
    traceback keeps its lines, each escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_control(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        value = ei[1]
        if value is None:
            return _escape_lines(super().formatException(ei))
        shown: list[str] = []
        for chunk in traceback.TracebackException(type(value), value, ei[2]).format():
            if chunk.startswith(_TRACEBACK_LINES):
                shown.append(_escape_lines(chunk))  # frames, headers: ours, line by line
            else:
                # The exception's message (and notes) may carry anything: one line each.
                shown.append(escape_control(chunk.removesuffix("\n")) + "\n")
        return "".join(shown).removesuffix("\n")

    def formatStack(self, stack_info: str) -> str:
        return _escape_lines(super().formatStack(stack_info))


# How the chunks of a formatted traceback that are not an exception's message begin.
_TRACEBACK_LINES = ("Traceback (most recent call last):", "  File ", "  [Previous line", "\n")


def _escape_lines(text: str) -> str:
    return "\n".join(escape_control(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False).translate(_JSON_ESCAPES)
