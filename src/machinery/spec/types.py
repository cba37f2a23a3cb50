"""Field types shared by the manifest models: durations, templates and command lines.

Each type checks its value when the manifest loads, so a bad duration or template is reported
with its position instead of surfacing when the watcher first runs. Parsed templates are cached:
a store of many machines made from one template shares them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from machinery.lang.cmdline import CommandArgument, split_command
from machinery.lang.duration import DurationError, parse_duration
from machinery.lang.template import Template, TemplateError, parse_template

__all__ = [
    "DURATION_PATTERN",
    "CommandLine",
    "Duration",
    "NameList",
    "TemplateText",
    "compile_command",
    "compile_template",
]

DURATION_PATTERN = r"^\s*\+?((\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|D|w|W|M|y|Y))+\s*$|^\s*0?\s*$"


def _duration(value: Any) -> float:
    if isinstance(value, bool):
        raise PydanticCustomError(
            "duration", "expected a duration such as 10s, got {value}", {"value": value}
        )
    if isinstance(value, (int, float)):
        if value == 0:
            return 0.0
        raise PydanticCustomError(
            "duration",
            "a duration needs a unit: write {value}s or {value}m, not {value}",
            {"value": value},
        )
    if not isinstance(value, str):
        raise PydanticCustomError("duration", "expected a duration such as 10s", {})
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise PydanticCustomError(
            "duration", "{message}", {"message": str(exc), "offset": exc.column}
        ) from None


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema(
        {"type": "string", "pattern": DURATION_PATTERN, "examples": ["10s", "1h30m", "2d"]}
    ),
]
"""A duration in seconds, written as ``500ms``, ``1h30m``, ``2d`` or ``1w``."""


@lru_cache(maxsize=4096)
def compile_template(text: str) -> Template:
    """Parse a template once; the same text always gives the same (immutable) Template."""
    return parse_template(text)


@lru_cache(maxsize=4096)
def compile_command(text: str) -> tuple[CommandArgument, ...]:
    """Split and parse a command line once (see :func:`machinery.lang.cmdline.split_command`)."""
    return tuple(split_command(text))


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "expected a string", {})
    return value


def _template(value: Any) -> str:
    text = _as_text(value)
    try:
        compile_template(text)
    except TemplateError as exc:
        raise PydanticCustomError(
            "template", "invalid template: {message}", {"message": str(exc), "offset": exc.offset}
        ) from None
    return text


def _command(value: Any) -> str:
    text = _as_text(value)
    try:
        compile_command(text)
    except TemplateError as exc:
        raise PydanticCustomError(
            "template", "invalid command: {message}", {"message": str(exc), "offset": exc.offset}
        ) from None
    return text


TemplateText = Annotated[
    str,
    BeforeValidator(_template),
    WithJsonSchema({"type": "string", "description": "text with Go template actions"}),
]
"""A string rendered as a Go template each time it is used."""

CommandLine = Annotated[
    str,
    BeforeValidator(_command),
    WithJsonSchema(
        {
            "type": "string",
            "description": "a command and its arguments; each argument is a template",
        }
    ),
]
"""A command line: split into arguments first, then each argument rendered on its own."""


def _names(value: Any) -> Any:
    # Choria decodes a lone name where a list is expected; so do we.
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list):
        return [
            str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value
        ]
    return value


NameList = Annotated[list[str], BeforeValidator(_names)]
"""A list of state or transition names; a single name is accepted as a list of one."""
