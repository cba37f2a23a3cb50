"""JSON exactly as Go's ``encoding/json`` writes it.

Choria publishes its events with ``json.Marshal`` of Go structs. Python's encoder differs in
ways a byte-for-byte consumer sees: float formatting (``1.0`` for Go's ``1``, ``1e-07`` for
``1e-7``), map key order, HTML escaping and invalid UTF-8. :func:`go_json` writes what Go would,
for the JSON-like values our payloads hold: a ``dict`` stands for a Go struct (fields in
insertion order, which is the struct's declaration order) and a :class:`GoMap` for a Go map
(keys sorted, as Go sorts them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from machinery.lang.gofmt import go_json_float

__all__ = ["GoJSONError", "GoMap", "go_json", "go_json_escapes", "go_json_indent"]

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


class GoMap(dict[str, Any]):
    """A field that is a Go ``map`` (labels, metrics, annotations): written with sorted keys.

    A plain ``dict`` stands for a Go struct and keeps its declared field order.
    """

    __slots__ = ()


class GoJSONError(ValueError):
    """A value Go's ``encoding/json`` refuses to write (NaN, infinities, unknown types)."""


_quote: Callable[[str], str] = json.encoder.encode_basestring  # the C string encoder
_SURROGATE = re.compile("[\ud800-\udfff]")


def go_json(value: Any) -> str:
    """JSON text exactly as Go's ``encoding/json`` writes ``value``.

    ``dict`` values are Go structs (keys in insertion order, which is the struct's declaration
    order); :class:`GoMap` values are Go maps (keys sorted). Floats are float64 as Go formats
    them (``1``, ``1e-7``, ``10000000000000000``); ``<``, ``>``, ``&``, U+2028 and U+2029 are
    escaped, non-ASCII stays UTF-8, and invalid UTF-8 (lone surrogates from undecodable bytes)
    becomes U+FFFD. NaN and infinities raise :class:`GoJSONError`, as Go's ``json.Marshal``
    returns an error for them.
    """
    parts: list[str] = []
    try:
        _encode_value(value, parts)
    except RecursionError:
        raise GoJSONError("json: value nested too deeply") from None
    except ValueError as exc:
        raise GoJSONError(str(exc)) from None
    return go_json_escapes("".join(parts))


def go_json_escapes(text: str) -> str:
    """Go's escaping on top of Python's for JSON text built from ``json`` encoder output:
    HTML characters, U+2028/9, invalid UTF-8 (lone surrogates) as U+FFFD."""
    if text.isascii():
        if "<" in text or ">" in text or "&" in text:
            text = text.translate(_GO_ESCAPES)
        return text
    return _SURROGATE.sub("\ufffd", text).translate(_GO_ESCAPES)


def _encode_value(value: Any, out: list[str]) -> None:
    # Exact type checks first: the common cases, and bool before int (bool is an int).
    kind = type(value)
    if kind is str:
        out.append(_quote(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif kind is int:
        out.append(int.__repr__(value))
    elif kind is float:
        out.append(go_json_float(value))
    elif isinstance(value, GoMap):
        _encode_object(sorted(value.items(), key=_map_key_order), out)
    elif isinstance(value, Mapping):
        _encode_object(value.items(), out)
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode_value(item, out)
        out.append("]")
    elif isinstance(value, str):
        out.append(_quote(str(value)))
    elif isinstance(value, int):
        out.append(int.__repr__(int(value)))
    elif isinstance(value, float):
        out.append(go_json_float(float(value)))
    else:
        raise GoJSONError(f"json: unsupported type: {type(value).__name__}")


def _map_key_order(item: tuple[Any, Any]) -> str:
    return _map_key(item[0])


def _map_key(key: object) -> str:
    # Go map keys are strings (or integers, written as strings).
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(int(key))
    raise GoJSONError(f"json: unsupported map key type: {type(key).__name__}")


def _encode_object(items: Iterable[tuple[Any, Any]], out: list[str]) -> None:
    out.append("{")
    first = True
    for key, item in items:
        if not first:
            out.append(",")
        first = False
        out.append(_quote(_map_key(key)))
        out.append(":")
        _encode_value(item, out)
    out.append("}")


def go_json_indent(text: str, indent: str = "  ", *, limit: int | None = None) -> str:
    """Go's ``json.Indent(dst, text, "", indent)`` of compact JSON ``text``: what
    ``json.MarshalIndent`` writes (one element per line, ``": "`` after keys, empty arrays and
    objects kept as ``[]`` and ``{}``).

    With ``limit``, output longer than ``limit`` characters raises :class:`GoJSONError` before
    it is built: indentation grows with depth, so a small deep value can indent to gigabytes.
    """
    out: list[str] = []
    size = length = len(text)  # the output so far, bounded below by the input
    depth = 0
    in_string = False
    escaped = False
    i = 0
    while i < length:
        char = text[i]
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif char in "[{":
            closing = "]" if char == "[" else "}"
            if i + 1 < length and text[i + 1] == closing:
                out.append(char + closing)
                i += 1
            else:
                depth += 1
                out.append(char + "\n" + indent * depth)
                size += 1 + len(indent) * depth
        elif char in "]}":
            depth -= 1
            out.append("\n" + indent * depth + char)
            size += 1 + len(indent) * depth
        elif char == ",":
            out.append(",\n" + indent * depth)
            size += 1 + len(indent) * depth
        elif char == ":":
            out.append(": ")
            size += 1
        else:
            out.append(char)
        if limit is not None and size > limit:
            raise GoJSONError(f"json: indented text too long (more than {limit} characters)")
        i += 1
    return "".join(out)
