"""GJSON paths over Python JSON values.

Choria's ``lookup`` template function and its ``get_fact`` expression function address facts and
data with `GJSON <https://github.com/tidwall/gjson>`_ paths. This module evaluates those paths over
already-decoded JSON (``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``) and
returns the Python objects it finds, never JSON text.

Supported syntax, following gjson's SYNTAX.md:

* keys separated by ``.``; a numeric key indexes a list; ``\\`` escapes the next character;
* ``*`` and ``?`` wildcards in keys, matched in the document's key order;
* ``#`` (length of a list) and ``#.rest`` (``rest`` mapped over every element; elements where it
  is not found are left out; a nested ``#`` gives nested lists, exactly as gjson does);
* queries ``#(...)`` (first match) and ``#(...)#`` (all matches) with ``==`` (or ``=``), ``!=``,
  ``<``, ``<=``, ``>``, ``>=``, ``%`` (like) and ``!%`` (not like), existence tests ``#(key)``,
  tests of the element itself ``#(=="x")``, nested queries, gjson's truthiness values
  ``~true``, ``~false``, ``~null`` and ``~*``, and the legacy ``#[...]`` brackets;
* the pipe ``|``, which differs from ``.`` only after ``#`` and ``#(...)#``: a ``.`` continues
  inside every element, a ``|`` continues on the resulting list;
* modifiers ``@reverse``, ``@keys``, ``@values``, ``@flatten`` (``@flatten:{"deep":true}``),
  ``@join``, ``@this``, ``@tostr``, ``@fromstr``, and ``@pretty``, ``@ugly`` and ``@valid``, which
  only change JSON formatting and so return their input unchanged here. An ``@name`` that is not
  a known modifier is an ordinary key, as in gjson, so it is normally not found.

Deliberate differences from gjson:

* Query comparisons are typed: a string compares only with a string, a number only with a
  number, a boolean only with a boolean, and ``null`` only equals ``null``. Any comparison across
  types is false, ``!=`` and ``!%`` included. gjson instead coerces the right-hand side to the
  element's type, so there ``#(age=="44")`` matches the number 44 and ``#(name!=5)`` matches
  every string name, while ``#(a==null)`` never matches.
* A query with an empty left side tests the element itself whatever its type; gjson does so only
  for scalar elements.
* Malformed paths raise :class:`GJSONPathError` where gjson silently guesses: unclosed queries,
  unknown operators, missing or unsupported query values, text after a query's ``)``, a dangling
  ``\\``, and multipaths (``[a,b]``, ``{a,b}``), which are not supported.
* Not supported: multipaths, literals (``!true``), JSON Lines (``..``), custom modifiers, the
  ``@dig`` and ``@group`` modifiers, ``@pretty`` options and ``@join``'s duplicate-preserving form.

To keep evaluation bounded whatever the input, a path may be at most 4096 characters long, may
nest queries at most 32 deep, and may hold at most 64 ``#`` components (queries included).
"""

from __future__ import annotations

import functools
import json
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["GJSONPathError", "lookup", "validate_path"]

MAX_PATH_LENGTH: Final = 4096
MAX_QUERY_DEPTH: Final = 32
# Every mapped ``#`` and every query can recurse once per level of the document; bounding their
# number keeps the Python stack well clear of its limit on adversarial paths and documents.
MAX_ARRAY_COMPONENTS: Final = 64


class GJSONPathError(ValueError):
    """A malformed GJSON path; ``offset`` is the 0-based position of the problem in the path."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at offset {offset}")
        self.message = message
        self.offset = offset


class _Glob:
    """A gjson wildcard pattern: ``*`` matches any run of characters, ``?`` one character.

    ``\\`` makes the next character literal. The pattern is split at its stars into fixed-length
    chunks that are found left to right, which is linear in practice and never backtracks
    exponentially the way a naive matcher or a ``.*``-laden regular expression can.
    """

    __slots__ = ("_chunks", "_head", "_lengths", "_starred", "_tail")

    def __init__(self, pattern: str) -> None:
        chunks: list[list[str]] = [[]]
        i = 0
        while i < len(pattern):
            ch = pattern[i]
            if ch == "\\" and i + 1 < len(pattern):
                chunks[-1].append(re.escape(pattern[i + 1]))
                i += 2
                continue
            if ch == "*":
                chunks.append([])
            elif ch == "?":
                chunks[-1].append(".")
            else:
                chunks[-1].append(re.escape(ch))
            i += 1
        compiled = [re.compile("".join(chunk), re.DOTALL) for chunk in chunks]
        self._starred = len(chunks) > 1
        self._head = compiled[0]
        self._tail = compiled[-1]
        # Only the non-empty middle chunks need searching.
        self._chunks = [c for c, raw in zip(compiled[1:-1], chunks[1:-1], strict=True) if raw]
        self._lengths = (len(chunks[0]), len(chunks[-1]))

    def match(self, text: str) -> bool:
        """Whether ``text`` matches the whole pattern."""
        if not self._starred:
            return self._head.fullmatch(text) is not None
        head_len, tail_len = self._lengths
        limit = len(text) - tail_len
        if limit < head_len:
            return False
        if head_len and self._head.match(text) is None:
            return False
        pos = head_len
        # Leftmost placement of each chunk is always safe: it leaves the most room for the rest.
        for chunk in self._chunks:
            found = chunk.search(text, pos, limit)
            if found is None:
                return False
            pos = found.end()
        return not tail_len or self._tail.fullmatch(text, limit) is not None


@dataclass(frozen=True, slots=True)
class _Key:
    """An object key (possibly a wildcard pattern) or, on a list, an index."""

    text: str
    index: int | None
    glob: _Glob | None


@dataclass(frozen=True, slots=True)
class _Count:
    """``#``: the length of a list, or the mapping of the rest of the path over its elements."""


@dataclass(frozen=True, slots=True)
class _Query:
    """``#(path op value)``; ``path`` None tests the element itself, ``op`` None tests existence."""

    path: _Path | None
    op: str | None
    value: object
    truthy: str | None
    glob: _Glob | None
    all: bool


@dataclass(frozen=True, slots=True)
class _Modifier:
    """``@name`` or ``@name:arg``."""

    name: str
    arg: object


_Segment = _Key | _Count | _Query | _Modifier
# A path is a sequence of pipe-separated groups of dot-separated segments.
_Path = tuple[tuple[_Segment, ...], ...]

_MISSING: Final[tuple[bool, object]] = (False, None)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _truthy(value: object) -> bool:
    """gjson's ``Result.Bool`` reading, used by ``~true`` and by modifier arguments."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.lower() in ("1", "t", "true")
    if _is_number(value):
        return value != 0
    return False


def _falsy(value: object) -> bool:
    """What gjson's ``~false`` accepts: null, false, zero and false-like strings."""
    if value is None or value is False:
        return True
    if isinstance(value, str):
        return value.lower() in ("0", "f", "false")
    if _is_number(value):
        return value == 0
    return False


# ----------------------------------------------------------------------------------- modifiers


def _mod_identity(value: object, _arg: object) -> tuple[bool, object]:
    return True, value


def _mod_reverse(value: object, _arg: object) -> tuple[bool, object]:
    if isinstance(value, list):
        return True, value[::-1]
    if isinstance(value, dict):
        return True, dict(reversed(value.items()))
    return True, value


def _mod_keys(value: object, _arg: object) -> tuple[bool, object]:
    if isinstance(value, dict):
        return True, list(value)
    # gjson writes a null for every member of a non-object, and treats a scalar as one member.
    if isinstance(value, list):
        return True, [None] * len(value)
    return True, [None]


def _mod_values(value: object, _arg: object) -> tuple[bool, object]:
    if isinstance(value, dict):
        return True, list(value.values())
    if isinstance(value, list):
        return True, value
    return True, [value]


def _mod_flatten(value: object, arg: object) -> tuple[bool, object]:
    if not isinstance(value, list):
        return True, value
    out: list[object] = []
    if not (isinstance(arg, dict) and _truthy(arg.get("deep"))):
        for item in value:
            if isinstance(item, list):
                out.extend(item)
            else:
                out.append(item)
        return True, out
    # An explicit stack rather than recursion, so document depth cannot exhaust the Python stack.
    stack = [iter(value)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return True, out


def _mod_join(value: object, _arg: object) -> tuple[bool, object]:
    if not isinstance(value, list):
        return True, value
    out: dict[object, object] = {}
    # A later duplicate key keeps the first one's position but takes its value, as gjson does.
    for item in value:
        if isinstance(item, dict):
            out.update(item)
    return True, out


def _mod_tostr(value: object, _arg: object) -> tuple[bool, object]:
    try:
        return True, json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        # Not JSON after all (a set, a cycle, an absurdly deep or long value): nothing to show.
        return _MISSING


def _mod_fromstr(value: object, _arg: object) -> tuple[bool, object]:
    if not isinstance(value, str):
        return True, value
    try:
        return True, json.loads(value)
    except (ValueError, RecursionError):
        return _MISSING


_MODIFIERS: Final[dict[str, Callable[[object, object], tuple[bool, object]]]] = {
    "reverse": _mod_reverse,
    "keys": _mod_keys,
    "values": _mod_values,
    "flatten": _mod_flatten,
    "join": _mod_join,
    "this": _mod_identity,
    "tostr": _mod_tostr,
    "fromstr": _mod_fromstr,
    # These only reformat JSON text, which Python values do not have.
    "pretty": _mod_identity,
    "ugly": _mod_identity,
    "valid": _mod_identity,
}

# --------------------------------------------------------------------------------------- parser

_QUERY_OPERATORS: Final = ("==", "!=", "<=", ">=", "!%", "<", ">", "=", "%")
_OPERATOR_CHARS: Final = "!=<>%"
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_TRUTHINESS: Final = ("true", "false", "null", "*")
# Digit strings longer than this cannot index any list; skipping int() also sidesteps Python's
# limit on converting very long digit strings.
_MAX_INDEX_DIGITS: Final = 18
_STRING_DECODER: Final = json.JSONDecoder(strict=False)


class _Parser:
    """Recursive-descent parser; every offset it reports is into the full path text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.array_components = 0

    def error(self, message: str, offset: int) -> GJSONPathError:
        return GJSONPathError(message, offset)

    def path(self, start: int, end: int, depth: int) -> _Path:
        groups: list[tuple[_Segment, ...]] = []
        group: list[_Segment] = []
        pos = start
        while True:
            segment, pos = self.component(pos, end, depth)
            group.append(segment)
            if pos >= end:
                break
            if self.text[pos] == "|":
                groups.append(tuple(group))
                group = []
            pos += 1
            # A trailing separator leaves an empty key, which gjson looks up as the key "".
        groups.append(tuple(group))
        return tuple(groups)

    def component(self, pos: int, end: int, depth: int) -> tuple[_Segment, int]:
        text = self.text
        first = text[pos] if pos < end else ""
        if first == "@":
            name_end = pos + 1
            while name_end < end and text[name_end] not in ".|:":
                name_end += 1
            name = text[pos + 1 : name_end]
            if name in _MODIFIERS:
                return self.modifier(name, name_end, end)
        elif first == "#":
            after = text[pos + 1] if pos + 1 < end else ""
            if after in ("", ".", "|"):
                self.count_array_component(pos)
                return _Count(), pos + 1
            if after in "([":
                return self.query(pos, end, depth)
        elif first in ("[", "{"):
            raise self.error(
                f"multipaths are not supported (escape the {first!r} to use it in a key)", pos
            )
        return self.key(pos, end)

    def count_array_component(self, pos: int) -> None:
        self.array_components += 1
        if self.array_components > MAX_ARRAY_COMPONENTS:
            raise self.error(f"more than {MAX_ARRAY_COMPONENTS} '#' components", pos)

    def modifier(self, name: str, pos: int, end: int) -> tuple[_Segment, int]:
        text = self.text
        arg: object = None
        if pos < end and text[pos] == ":":
            pos += 1
            parsed = False
            if pos < end and text[pos] in '{["':
                try:
                    arg, pos = _STRING_DECODER.raw_decode(text[:end], pos)
                    parsed = True
                except (ValueError, RecursionError):
                    parsed = False
            if not parsed:
                # gjson reads a non-JSON argument up to the next pipe, dots included.
                arg_end = text.find("|", pos, end)
                arg_end = end if arg_end < 0 else arg_end
                arg, pos = text[pos:arg_end], arg_end
        if pos < end and text[pos] not in ".|":
            raise self.error(f"unexpected {text[pos]!r} after modifier @{name}", pos)
        return _Modifier(name, arg), pos

    def key(self, pos: int, end: int) -> tuple[_Segment, int]:
        text = self.text
        chars: list[str] = []
        wild = False
        i = pos
        while i < end:
            ch = text[i]
            if ch in ".|":
                break
            if ch == "\\":
                if i + 1 >= end:
                    raise self.error("dangling escape character '\\'", i)
                chars.append(text[i + 1])
                i += 2
                continue
            if ch in "*?":
                wild = True
            chars.append(ch)
            i += 1
        raw = text[pos:i]
        index: int | None = None
        if raw.isascii() and raw.isdigit():
            index = int(raw) if len(raw) <= _MAX_INDEX_DIGITS else 10**_MAX_INDEX_DIGITS
        return _Key("".join(chars), index, _Glob(raw) if wild else None), i

    def query(self, pos: int, end: int, depth: int) -> tuple[_Segment, int]:
        text = self.text
        if depth >= MAX_QUERY_DEPTH:
            raise self.error(f"queries nested more than {MAX_QUERY_DEPTH} deep", pos)
        self.count_array_component(pos)
        # Find the closing bracket and, at the outer level, the first operator character;
        # quoted strings and escaped characters can hold either without ending anything.
        i = pos + 2
        level = 1
        op_at = -1
        while i < end:
            ch = text[i]
            if level == 1 and op_at < 0 and ch in _OPERATOR_CHARS:
                op_at = i
            elif ch == "\\":
                i += 1
            elif ch in "([":
                level += 1
            elif ch in ")]":
                level -= 1
                if level == 0:
                    break
            elif ch == '"':
                i += 1
                while i < end and text[i] != '"':
                    i += 2 if text[i] == "\\" else 1
            i += 1
        if i >= end:
            raise self.error("unclosed query: missing ')'", pos + 1)
        close = i

        left_start, left_end = _trim(text, pos + 2, op_at if op_at >= 0 else close)
        query_path = self.path(left_start, left_end, depth + 1) if left_start < left_end else None
        op: str | None = None
        value: object = None
        truthy: str | None = None
        glob: _Glob | None = None
        if op_at < 0:
            if query_path is None:
                raise self.error("empty query", pos)
        else:
            op = next((o for o in _QUERY_OPERATORS if text.startswith(o, op_at, close)), None)
            if op is None:  # a "!" followed by neither "=" nor "%"
                raise self.error("bad query operator", op_at)
            value_start, value_end = _trim(text, op_at + len(op), close)
            op = "==" if op == "=" else op
            raw = text[value_start:value_end]
            if not raw:
                raise self.error("missing query value", close)
            if raw[0] in _OPERATOR_CHARS:
                raise self.error("bad query operator", op_at)
            if op in ("%", "!%"):
                pattern = self.query_string(raw, value_start) if raw[0] == '"' else raw
                glob = _Glob(pattern)
            else:
                value, truthy = self.query_value(raw, value_start)

        after = close + 1
        every = after < end and text[after] == "#"
        if every:
            after += 1
        if after < end and text[after] not in ".|":
            raise self.error(f"unexpected {text[after]!r} after query", after)
        return _Query(query_path, op, value, truthy, glob, every), after

    def query_value(self, raw: str, offset: int) -> tuple[object, str | None]:
        if raw[0] == "~":
            if raw[1:] in _TRUTHINESS:
                return None, raw[1:]
            raise self.error("unknown truthiness test (use ~true, ~false, ~null or ~*)", offset)
        if raw[0] == '"':
            return self.query_string(raw, offset), None
        if raw in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[raw], None
        if _INTEGER.fullmatch(raw):
            return int(raw), None
        if _NUMBER.fullmatch(raw):
            return float(raw), None
        if raw[0] in "[{":
            raise self.error("a query value must be a string, number, true, false or null", offset)
        # gjson compares an unquoted word as text (friends.#(last=Murphy)); so do we.
        return raw, None

    def query_string(self, raw: str, offset: int) -> str:
        try:
            value, stop = _STRING_DECODER.raw_decode(raw)
        except ValueError:
            raise self.error("malformed query string", offset) from None
        if stop != len(raw) or not isinstance(value, str):
            raise self.error("malformed query string", offset)
        return value


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Narrow ``text[start:end]`` past whitespace and control characters, as gjson does."""
    while start < end and text[start] <= " ":
        start += 1
    while end > start and text[end - 1] <= " ":
        end -= 1
    return start, end


@functools.lru_cache(maxsize=512)
def _compile(path: str) -> _Path:
    # Templates and expressions evaluate the same few paths over and over.
    if len(path) > MAX_PATH_LENGTH:
        raise GJSONPathError(f"path longer than {MAX_PATH_LENGTH} characters", MAX_PATH_LENGTH)
    return _Parser(path).path(0, len(path), 0)


# ------------------------------------------------------------------------------------ evaluator

_COMPARISONS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _compare(value: object, query: _Query) -> bool:
    op = query.op
    assert op is not None
    if query.glob is not None:
        return isinstance(value, str) and query.glob.match(value) == (op == "%")
    wanted = query.value
    if wanted is None:
        return value is None and op in ("==", "<=", ">=")
    if isinstance(wanted, bool):
        same_type = isinstance(value, bool)
    elif isinstance(wanted, str):
        same_type = isinstance(value, str)
    else:
        same_type = _is_number(value)
    return same_type and bool(_COMPARISONS[op](value, wanted))


def _query_matches(query: _Query, element: object) -> bool:
    if query.path is None:
        found, value = True, element
    elif isinstance(element, dict | list):
        found, value = _evaluate(element, query.path)
    else:
        # gjson never looks a path up inside a scalar element, not even for ~false.
        return False
    if query.truthy is not None:
        kind = query.truthy
        if kind == "*":
            ish = found
        elif kind == "null":
            ish = not found or value is None
        elif kind == "true":
            ish = found and _truthy(value)
        else:
            ish = not found or _falsy(value)
        assert query.op is not None
        return bool(_COMPARISONS[query.op](ish, True))
    if not found:
        return False
    return query.op is None or _compare(value, query)


def _map(elements: list[object], group: Sequence[_Segment], start: int) -> list[object]:
    out: list[object] = []
    for element in elements:
        found, value = _eval_group(element, group, start)
        if found:
            out.append(value)
    return out


def _eval_group(value: object, group: Sequence[_Segment], start: int) -> tuple[bool, object]:
    """Evaluate ``group[start:]`` (dot-separated segments) from ``value``.

    A wildcard key tries every matching key in order until the rest of the group is found, as
    gjson does; ``pending`` holds the alternatives not yet tried. gjson stops trying them once it
    reaches an array operation or a modifier, which count as found whatever follows, so those
    clear ``pending``.
    """
    end = len(group)
    pending: list[tuple[object, int]] = [(value, start)]
    while pending:
        current, i = pending.pop()
        while True:
            if i == end:
                return True, current
            segment = group[i]
            if isinstance(segment, _Key):
                if isinstance(current, dict):
                    if segment.glob is None:
                        if segment.text not in current:
                            break
                        current = current[segment.text]
                        i += 1
                        continue
                    glob = segment.glob
                    matches = [
                        v for k, v in current.items() if isinstance(k, str) and glob.match(k)
                    ]
                    if not matches:
                        break
                    pending.extend((v, i + 1) for v in reversed(matches[1:]))
                    current = matches[0]
                    i += 1
                    continue
                if isinstance(current, list) and segment.index is not None:
                    if segment.index >= len(current):
                        break
                    current = current[segment.index]
                    i += 1
                    continue
                break
            if isinstance(segment, _Count):
                if isinstance(current, list):
                    pending.clear()
                    if i + 1 < end:
                        return True, _map(current, group, i + 1)
                    current = len(current)
                    i += 1
                    continue
                if isinstance(current, dict) and "#" in current:
                    # On an object gjson reads "#" as an ordinary key.
                    current = current["#"]
                    i += 1
                    continue
                break
            if isinstance(segment, _Query):
                if not isinstance(current, list):
                    break
                if segment.all:
                    pending.clear()
                    hits = [e for e in current if _query_matches(segment, e)]
                    if i + 1 < end:
                        return True, _map(hits, group, i + 1)
                    current = hits
                    i += 1
                    continue
                for element in current:
                    if _query_matches(segment, element):
                        pending.clear()
                        current = element
                        i += 1
                        break
                else:
                    break
                continue
            pending.clear()
            found, current = _MODIFIERS[segment.name](current, segment.arg)
            if not found:
                break
            i += 1
    return _MISSING


def _evaluate(value: object, path: _Path) -> tuple[bool, object]:
    current = value
    for group in path:
        found, current = _eval_group(current, group, 0)
        if not found:
            return _MISSING
    return True, current


# ----------------------------------------------------------------------------------- public API


def validate_path(path: str) -> None:
    """Check that ``path`` is a well-formed GJSON path this module supports.

    Raises :class:`GJSONPathError` (with the offset of the problem) otherwise. Meant for manifest
    load time, so that a bad path is reported once and early instead of at every evaluation.
    """
    _compile(path)


def lookup(document: object, path: str) -> tuple[bool, object]:
    """Evaluate the GJSON ``path`` over ``document``, a decoded JSON value.

    Returns ``(found, value)``. ``found`` is False when nothing matches (gjson's ``!Exists()``);
    a JSON null that is found is ``(True, None)``. Values are the objects inside ``document``
    (not copies), or new objects built by ``#``, queries and modifiers; callers must not mutate
    them. Raises :class:`GJSONPathError` for a malformed path and nothing else, whatever the
    document.
    """
    return _evaluate(document, _compile(path))
