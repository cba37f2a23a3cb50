"""expr-lang expressions, the subset Choria machine manifests use.

Choria evaluates `expr-lang <https://github.com/expr-lang/expr>`_ expressions in the
``expression`` watcher (``success_when``/``fail_when``), in the ``match`` of ``machines`` and
``plugins`` specifications, and in Tiny Hiera hierarchies. This module parses such an expression
once into a tree of small node objects (:func:`compile_expression`) and evaluates it many times
against an environment of names (:meth:`Expression.evaluate`). The input is never handed to
Python's ``eval``; everything is interpreted here.

Syntax
------
* literals: ints (``42``, ``1_000``, ``0x2A``, ``0o52``, ``0b101010``), floats (``0.5``, ``.5``,
  ``1e3``), strings in single or double quotes with Go escapes (``\\n``, ``\\t``, ``\\u00e9``,
  ``\\x41``, ``\\101``...), raw strings in backquotes, ``true``, ``false``, ``nil``, arrays
  ``[1, 2]`` and maps ``{a: 1, "b": 2, (1 + 1): 3}``; ``//`` and ``/* */`` comments;
* member access ``data.temp``, ``data["temp"]``, optional chaining ``data?.temp`` and
  ``list?.[0]``, indexes (negative ones count from the end) and slices ``list[1:3]``;
* calls of built-in functions and of Python callables from the environment, the pipe
  ``x | f(y)`` (same as ``f(x, y)``), method calls ``value.name(args)`` of callables held in maps;
* predicates (closures) in ``all any none one filter map count find findIndex findLast
  findLastIndex sum``: ``#`` is the current element, ``#index`` its index and ``.name`` is short
  for ``#.name``; braces are optional: ``all(data.items, {# > 0})``;
* the ternary ``a ? b : c`` and ``a ?: b`` (``a ? a : b``).

Operator precedence, as in expr-lang's operator table (higher binds tighter)::

    precedence  operators                                   associativity
    500         ??  (nil coalescing; mixing it with another      left
                     operator after it needs parentheses)
    100         **  ^                                          right
     90         unary -  unary +
     60         *  /  %                                        left
     50         unary !  not
     30         +  -                                           left
     25         ..                                             left
     20         ==  !=  <  <=  >  >=  in  not in  matches       chains: a < b < c
                contains  startsWith  endsWith  (and their      means a < b && b < c
                "not" forms)
     15         &&  and                                        left
     10         ||  or                                         left
      0         |  (pipe)                                      left
    lowest      ?:  (ternary, only at the top of an expression or inside brackets)

So ``-2 ** 2`` is ``-(2 ** 2)``, ``!a == b`` is ``(!a) == b``, ``a ?? b + c`` is an error and
``a + b ?? c`` is ``a + (b ?? c)``, exactly as in expr-lang.

Semantics
---------
* ``==`` and ``!=`` never fail: values of different types are unequal, except that ints and
  floats compare numerically; arrays and maps compare element by element.
* ``<``, ``<=``, ``>``, ``>=`` compare two numbers or two strings; anything else (``nil < 1``) is
  a runtime error. ``&&``, ``||``, ``!`` and the ternary's condition need booleans.
* ``+`` adds numbers, joins strings and concatenates arrays; ``-``, ``*`` and ``%`` work on
  numbers (``%`` on ints only); int arithmetic wraps at 64 bits as in Go; ``/`` and ``**``
  always give floats (``1 / 0`` is ``+Inf``, as in Go).
* ``in`` tests array membership, map keys and substrings; ``matches`` is an unanchored regular
  expression search (Python :mod:`re` syntax, which for common patterns is RE2's).
* a missing map key is ``nil``; fetching from ``nil`` is an error (``cannot fetch x from <nil>``)
  unless written with ``?.``, which makes the rest of the chain ``nil``.
* a call of a callable from the environment that raises any exception is an
  :class:`ExpressionError` located at the call.

Limits keep any expression and any data bounded: sources of at most 10,000 characters, nesting
at most 100 levels deep, ranges (``1..10``) of at most 100,000 elements, strings built by an
expression of at most 1 MiB, and at most 1,000,000 predicate iterations, range elements and
concatenated array elements per evaluation.

Also ``let`` variables (``let x = 1; x + 1``), ``if cond { a } else { b }``, ``$env``, and
expr-lang v1.17's whole library of built-ins, including ``reduce``/``sortBy``/``groupBy`` (``#acc``
is reduce's accumulator) and Go's time values (:mod:`machinery.lang.gotime`): ``now()`` reads the
clock :meth:`Expression.evaluate` is given. Not supported: expr-lang's compile-time type checking
beyond names (a type error shows when the expression is evaluated) and its compile options
(undefined variables, operator overloading).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, NoReturn

from machinery.lang.duration import DurationError, parse_go_duration
from machinery.lang.gofmt import go_sprint
from machinery.lang.gojson import GoJSONError, GoMap, go_json, go_json_indent
from machinery.lang.gotime import (
    DATE_LAYOUTS,
    GoDuration,
    GoLocation,
    GoTime,
    TimeError,
    clamp_duration,
    format_time,
    load_location,
    parse_time,
)
from machinery.lang.regex import RegexError, compile_regex
from machinery.spec.diagnostics import did_you_mean

__all__ = ["BUILTIN_FUNCTION_NAMES", "Expression", "ExpressionError", "compile_expression"]

MAX_SOURCE_LENGTH: Final = 10_000
MAX_DEPTH: Final = 100
MAX_RANGE: Final = 100_000
MAX_STRING: Final = 1 << 20
MAX_COST: Final = 1_000_000
# Building text costs a step per this many characters (see _Context.charge_text).
TEXT_STEP: Final = 16

_I64: Final = 1 << 63
_U64_MASK: Final = (1 << 64) - 1


class ExpressionError(ValueError):
    """An expression that cannot be compiled or evaluated.

    ``offset`` is the 0-based character offset into the source of the offending token (syntax
    errors) or of the operator, member or call that failed (runtime errors).
    """

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class _Fault(Exception):
    """A runtime failure of a primitive operation; the node that ran it adds the offset."""


# -- values ------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, GoTime):
        return "time.Time"
    if isinstance(value, GoDuration):
        return "time.Duration"
    if isinstance(value, GoLocation):
        return "*time.Location"
    if callable(value):
        return "func"
    return type(value).__name__


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_array(value: object) -> bool:
    return isinstance(value, list | tuple)


def _wrap(value: int) -> int:
    """Go's int64 wrap-around."""
    if -_I64 <= value < _I64:
        return value
    return ((value + _I64) & _U64_MASK) - _I64


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, GoTime | GoDuration | GoLocation):
        return str(value)
    return go_sprint(value)


def _value_size(value: object, budget: int) -> int:
    """The work of walking all of ``value``: one per element, one per :data:`TEXT_STEP`
    characters of its strings. Shared parts count each time they are reached, as a walk
    reaches them; past ``budget`` it stops with a cost fault (self-referencing data never
    ends)."""
    size = 0
    pending = [value]
    while pending:
        item = pending.pop()
        size += 1
        if isinstance(item, str):
            size += len(item) // TEXT_STEP
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        if size > budget or len(pending) > budget:
            raise _Fault(f"expression evaluation is too expensive (more than {MAX_COST} steps)")
    return size


def _brief(value: object) -> str:
    """``value`` as Go prints it, for an error message: short, and never a long walk."""
    try:
        _value_size(value, 1_000)
    except _Fault:
        return f"<{_type_name(value)} too big to show>"
    text = _text(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _equal(a: object, b: object, ctx: _Context) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if _is_array(a) and _is_array(b):
        assert isinstance(a, list | tuple) and isinstance(b, list | tuple)
        if len(a) != len(b):
            return False
        # A step per element: equality of shared data (reduce's [#acc, #acc]) is exponential.
        ctx.charge(len(a))
        return all(_equal(x, y, ctx) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if len(a) != len(b):
            return False
        ctx.charge(len(a))
        return all(k in b and _equal(v, b[k], ctx) for k, v in a.items())
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _mismatch(op: str, a: object, b: object) -> _Fault:
    return _Fault(f"invalid operation: {op} (mismatched types {_type_name(a)} and {_type_name(b)})")


class _Context:
    """One evaluation: the environment, ``let`` variables in scope, the clock ``now()`` reads,
    and the work done so far."""

    __slots__ = ("clock", "cost", "env", "variables")

    def __init__(self, env: Mapping[str, object], clock: Callable[[], float]) -> None:
        self.env = env
        self.clock = clock
        self.variables: dict[str, object] = {}
        self.cost = 0

    def charge(self, amount: int) -> None:
        self.cost += amount
        if self.cost > MAX_COST:
            raise _Fault(f"expression evaluation is too expensive (more than {MAX_COST} steps)")

    def charge_text(self, text: str) -> str:
        """Charge for building ``text`` (a step per :data:`TEXT_STEP` characters) and check
        its size: without this, a loop of cheap steps could each build a MiB of text."""
        if len(text) > MAX_STRING:
            raise _Fault(f"string too long ({len(text)} characters, at most {MAX_STRING})")
        self.charge(len(text) // TEXT_STEP)
        return text

    def charge_value(self, value: object) -> None:
        """Charge for walking all of ``value`` (an element a step, strings by length) before
        something walks it whole: shared or self-referencing data (``[#acc, #acc]`` in
        reduce) is far bigger than it looks, and this stops the walk at the budget."""
        self.charge(_value_size(value, MAX_COST - self.cost))


# A predicate's frame: (current element, its index, the enclosing frame[, reduce's accumulator]).
_Frame = tuple[Any, ...] | None


# -- operators ---------------------------------------------------------------------------


def _op_add(a: object, b: object, ctx: _Context) -> object:
    if type(a) is int and type(b) is int:
        return _wrap(a + b)
    if isinstance(a, GoTime) and isinstance(b, GoDuration):
        return GoTime(a.nanos + b.nanos, a.location)
    if isinstance(a, GoDuration) and isinstance(b, GoTime):
        return GoTime(b.nanos + a.nanos, b.location)
    if isinstance(a, GoDuration) and isinstance(b, GoDuration):
        return GoDuration(_wrap(a.nanos + b.nanos))
    if _is_number(a) and _is_number(b):
        return _float(a) + _float(b)  # type: ignore[arg-type]
    if isinstance(a, str) and isinstance(b, str):
        if len(a) + len(b) > MAX_STRING:
            raise _Fault(f"string too long ({len(a) + len(b)} characters, at most {MAX_STRING})")
        return ctx.charge_text(a + b)
    if _is_array(a) and _is_array(b):
        result = [*a, *b]  # type: ignore[misc]
        ctx.charge(len(result))
        return result
    raise _mismatch("+", a, b)


def _op_sub(a: object, b: object, ctx: _Context) -> object:
    if type(a) is int and type(b) is int:
        return _wrap(a - b)
    if isinstance(a, GoTime) and isinstance(b, GoTime):
        return GoDuration(clamp_duration(a.nanos - b.nanos))
    if isinstance(a, GoTime) and isinstance(b, GoDuration):
        return GoTime(a.nanos - b.nanos, a.location)
    if isinstance(a, GoDuration) and isinstance(b, GoDuration):
        return GoDuration(_wrap(a.nanos - b.nanos))
    if _is_number(a) and _is_number(b):
        return _float(a) - _float(b)  # type: ignore[arg-type]
    raise _mismatch("-", a, b)


def _op_mul(a: object, b: object, ctx: _Context) -> object:
    if type(a) is int and type(b) is int:
        return _wrap(a * b)
    # A duration is Go's int64: times an int it stays a duration, times a float it is a float.
    if isinstance(a, GoDuration) and _is_number(b):
        a, b = b, a
    if isinstance(b, GoDuration) and _is_number(a):
        if type(a) is int:
            return GoDuration(_wrap(a * b.nanos))
        return _float(a) * b.nanos  # type: ignore[arg-type]
    if _is_number(a) and _is_number(b):
        return _float(a) * _float(b)  # type: ignore[arg-type]
    raise _mismatch("*", a, b)


def _op_div(a: object, b: object, ctx: _Context) -> object:
    a, b = _duration_number(a), _duration_number(b)
    if not (_is_number(a) and _is_number(b)):
        raise _mismatch("/", a, b)
    x, y = _float(a), _float(b)  # type: ignore[arg-type]
    if y == 0.0:
        # Go's float division: no exception, but Inf or NaN.
        if x == 0.0 or math.isnan(x):
            return math.nan
        return math.copysign(math.inf, x) * math.copysign(1.0, y)
    return x / y


def _op_mod(a: object, b: object, ctx: _Context) -> object:
    if not (_is_int(a) and _is_int(b)):
        raise _mismatch("%", a, b)
    assert isinstance(a, int) and isinstance(b, int)
    if b == 0:
        raise _Fault("integer divide by zero")
    # Go truncates toward zero: the remainder has the sign of the dividend.
    remainder = abs(a) % abs(b)
    return _wrap(-remainder if a < 0 else remainder)


def _go_pow(x: float, y: float) -> float:
    try:
        return math.pow(x, y)
    except OverflowError:
        odd = y.is_integer() and int(y) % 2 == 1
        return -math.inf if x < 0 and odd else math.inf
    except ValueError:
        if x == 0.0 and y < 0:
            odd = y.is_integer() and int(y) % 2 == 1
            return math.copysign(math.inf, x) if odd else math.inf
        return math.nan


def _op_pow(a: object, b: object, ctx: _Context) -> object:
    if not (_is_number(a) and _is_number(b)):
        raise _mismatch("**", a, b)
    return _go_pow(_float(a), _float(b))  # type: ignore[arg-type]


def _to_int(value: object, what: str) -> int:
    if _is_int(value):
        return value  # type: ignore[return-value]
    if isinstance(value, float) and not isinstance(value, bool):
        if math.isfinite(value):
            return int(value)
        raise _Fault(f"{what} must be a finite number, got {value}")
    raise _Fault(f"{what} must be an int, got {_type_name(value)}")


def _op_range(a: object, b: object, ctx: _Context) -> object:
    if not (_is_number(a) and _is_number(b)):
        raise _mismatch("..", a, b)
    low, high = _to_int(a, "range start"), _to_int(b, "range end")
    count = high - low + 1
    if count <= 0:
        return []
    if count > MAX_RANGE:
        raise _Fault(f"range is too large ({count} elements, at most {MAX_RANGE})")
    ctx.charge(count)
    return list(range(low, high + 1))


def _op_eq(a: object, b: object, ctx: _Context) -> object:
    return _equal(a, b, ctx)


def _op_ne(a: object, b: object, ctx: _Context) -> object:
    return not _equal(a, b, ctx)


def _duration_number(value: object) -> object:
    return value.nanos if isinstance(value, GoDuration) else value


def _ordered(op: str, a: object, b: object) -> tuple[Any, Any]:
    if (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
        return a, b
    if isinstance(a, GoTime | GoDuration) and type(a) is type(b):
        return a.nanos, b.nanos
    raise _mismatch(op, a, b)


def _op_lt(a: object, b: object, ctx: _Context) -> object:
    x, y = _ordered("<", a, b)
    return bool(x < y)


def _op_le(a: object, b: object, ctx: _Context) -> object:
    x, y = _ordered("<=", a, b)
    return bool(x <= y)


def _op_gt(a: object, b: object, ctx: _Context) -> object:
    x, y = _ordered(">", a, b)
    return bool(x > y)


def _op_ge(a: object, b: object, ctx: _Context) -> object:
    x, y = _ordered(">=", a, b)
    return bool(x >= y)


def _op_in(a: object, b: object, ctx: _Context) -> object:
    if _is_array(b):
        assert isinstance(b, list | tuple)
        ctx.charge(len(b))
        return any(_equal(a, item, ctx) for item in b)
    if isinstance(b, Mapping):
        try:
            return a in b
        except TypeError:  # an unhashable needle is never a key
            return False
    if isinstance(b, str) and isinstance(a, str):
        return a in b
    raise _mismatch("in", a, b)


def _strings(op: str, a: object, b: object) -> tuple[str, str]:
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    raise _mismatch(op, a, b)


def _op_contains(a: object, b: object, ctx: _Context) -> object:
    x, y = _strings("contains", a, b)
    return y in x


def _op_starts(a: object, b: object, ctx: _Context) -> object:
    x, y = _strings("startsWith", a, b)
    return x.startswith(y)


def _op_ends(a: object, b: object, ctx: _Context) -> object:
    x, y = _strings("endsWith", a, b)
    return x.endswith(y)


def _regex(pattern: str) -> Any:
    try:
        return compile_regex(pattern)
    except RegexError as exc:
        raise _Fault(str(exc)) from None


def _op_matches(a: object, b: object, ctx: _Context) -> object:
    x, y = _strings("matches", a, b)
    return _regex(y).search(x) is not None


_Operator = Callable[[object, object, _Context], object]

_BINARY_FUNCTIONS: Final[dict[str, _Operator]] = {
    "+": _op_add,
    "-": _op_sub,
    "*": _op_mul,
    "/": _op_div,
    "%": _op_mod,
    "**": _op_pow,
    "^": _op_pow,
    "..": _op_range,
    "==": _op_eq,
    "!=": _op_ne,
    "<": _op_lt,
    "<=": _op_le,
    ">": _op_gt,
    ">=": _op_ge,
    "in": _op_in,
    "contains": _op_contains,
    "startsWith": _op_starts,
    "endsWith": _op_ends,
    "matches": _op_matches,
}

_LEFT, _RIGHT = 0, 1
# name: (precedence, associativity)
_BINARY: Final[dict[str, tuple[int, int]]] = {
    "|": (0, _LEFT),
    "or": (10, _LEFT),
    "||": (10, _LEFT),
    "and": (15, _LEFT),
    "&&": (15, _LEFT),
    "==": (20, _LEFT),
    "!=": (20, _LEFT),
    "<": (20, _LEFT),
    ">": (20, _LEFT),
    ">=": (20, _LEFT),
    "<=": (20, _LEFT),
    "in": (20, _LEFT),
    "matches": (20, _LEFT),
    "contains": (20, _LEFT),
    "startsWith": (20, _LEFT),
    "endsWith": (20, _LEFT),
    "..": (25, _LEFT),
    "+": (30, _LEFT),
    "-": (30, _LEFT),
    "*": (60, _LEFT),
    "/": (60, _LEFT),
    "%": (60, _LEFT),
    "**": (100, _RIGHT),
    "^": (100, _RIGHT),
    "??": (500, _LEFT),
}
_UNARY: Final[dict[str, int]] = {"not": 50, "!": 50, "-": 90, "+": 90}
_COMPARISON_PRECEDENCE: Final = 20
_NEGATABLE: Final = frozenset({"in", "matches", "contains", "startsWith", "endsWith"})
_WORD_OPERATORS: Final = frozenset(
    {"not", "in", "or", "and", "matches", "contains", "startsWith", "endsWith"}
)
_ALIASES: Final = {"or": "||", "and": "&&", "not": "!", "^": "**"}


# -- nodes -------------------------------------------------------------------------------


class _Node:
    __slots__ = ("offset",)

    offset: int

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        raise NotImplementedError


class _Const(_Node):
    __slots__ = ("value",)

    def __init__(self, value: object, offset: int) -> None:
        self.value = value
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        return self.value


class _Ident(_Node):
    __slots__ = ("name",)

    def __init__(self, name: str, offset: int) -> None:
        self.name = name
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        try:
            return ctx.env[self.name]
        except KeyError:
            raise ExpressionError(f"unknown name {self.name!r}", self.offset) from None


class _Variable(_Node):
    """A name bound by ``let``."""

    __slots__ = ("name",)

    def __init__(self, name: str, offset: int) -> None:
        self.name = name
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        return ctx.variables[self.name]


class _Let(_Node):
    """``let name = value; body``: ``name`` is ``value`` while ``body`` is evaluated."""

    __slots__ = ("body", "name", "value")

    def __init__(self, name: str, value: _Node, body: _Node, offset: int) -> None:
        self.name = name
        self.value = value
        self.body = body
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        variables = ctx.variables
        missing = object()
        outer = variables.get(self.name, missing)
        variables[self.name] = self.value.ev(ctx, frame)
        try:
            return self.body.ev(ctx, frame)
        finally:
            if outer is missing:
                del variables[self.name]
            else:
                variables[self.name] = outer


class _Environment(_Node):
    """``$env``: every name the expression was given, as a map."""

    __slots__ = ()

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        return ctx.env


class _Pointer(_Node):
    """``#`` (the predicate's current element), ``#index`` or ``#acc`` (reduce's accumulator)."""

    __slots__ = ("slot",)

    _SLOTS: Final = {"#": 0, "#index": 1, "#acc": 3}

    def __init__(self, name: str, offset: int) -> None:
        self.slot = self._SLOTS[name]
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        assert frame is not None  # the parser allows pointers only inside predicates
        if self.slot >= len(frame):
            raise ExpressionError("#acc is only defined inside reduce", self.offset)
        return frame[self.slot]


class _Unary(_Node):
    __slots__ = ("op", "operand")

    def __init__(self, op: str, operand: _Node, offset: int) -> None:
        self.op = op
        self.operand = operand
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        value = self.operand.ev(ctx, frame)
        if self.op == "!":
            if isinstance(value, bool):
                return not value
            raise ExpressionError(
                f"invalid operation: ! (mismatched type {_type_name(value)})", self.offset
            )
        if type(value) is int:
            return _wrap(-value) if self.op == "-" else value
        if isinstance(value, float):
            return -value if self.op == "-" else value
        if isinstance(value, GoDuration):
            return GoDuration(_wrap(-value.nanos)) if self.op == "-" else value
        raise ExpressionError(
            f"invalid operation: {self.op} (mismatched type {_type_name(value)})", self.offset
        )


class _Step:
    """One left-to-right step of a :class:`_Fold`: ``accumulated <op> right``."""

    __slots__ = ("fn", "kind", "offset", "op", "right")

    def __init__(self, op: str, right: _Node, offset: int) -> None:
        self.op = op
        self.right = right
        self.offset = offset
        self.kind = op if op in ("&&", "||", "??") else ""
        self.fn = _BINARY_FUNCTIONS.get(op)


class _Fold(_Node):
    """A run of left-associative binary operators, evaluated iteratively.

    ``a + b - c && d`` is one node instead of a left-deep tree, so that evaluating a long chain
    never recurses deeper than its syntactic nesting.
    """

    __slots__ = ("first", "steps")

    def __init__(self, first: _Node, steps: Sequence[_Step]) -> None:
        self.first = first
        self.steps = tuple(steps)
        self.offset = first.offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        value = self.first.ev(ctx, frame)
        for step in self.steps:
            kind = step.kind
            if kind in ("&&", "||"):
                if not isinstance(value, bool):
                    raise ExpressionError(
                        f"invalid operation: {kind} (mismatched types {_type_name(value)} "
                        "and bool)",
                        step.offset,
                    )
                if value is (kind == "||"):  # short circuit: false && x, true || x
                    continue
                value = step.right.ev(ctx, frame)
                if not isinstance(value, bool):
                    raise ExpressionError(
                        f"invalid operation: {kind} (mismatched types bool and "
                        f"{_type_name(value)})",
                        step.offset,
                    )
            elif kind == "??":
                if value is None:
                    value = step.right.ev(ctx, frame)
            else:
                right = step.right.ev(ctx, frame)
                assert step.fn is not None
                try:
                    value = step.fn(value, right, ctx)
                except _Fault as fault:
                    raise ExpressionError(str(fault), step.offset) from None
        return value


class _Conditional(_Node):
    __slots__ = ("condition", "no", "yes")

    def __init__(self, condition: _Node, yes: _Node, no: _Node, offset: int) -> None:
        self.condition = condition
        self.yes = yes
        self.no = no
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        condition = self.condition.ev(ctx, frame)
        if condition is True:
            return self.yes.ev(ctx, frame)
        if condition is False:
            return self.no.ev(ctx, frame)
        raise ExpressionError(
            f"non-bool expression (type {_type_name(condition)}) used as condition", self.offset
        )


class _Array(_Node):
    __slots__ = ("items",)

    def __init__(self, items: Sequence[_Node], offset: int) -> None:
        self.items = tuple(items)
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        return [item.ev(ctx, frame) for item in self.items]


class _Map(_Node):
    __slots__ = ("pairs",)

    def __init__(self, pairs: Sequence[tuple[_Node, _Node]], offset: int) -> None:
        self.pairs = tuple(pairs)
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        result: dict[Any, object] = {}
        for key_node, value_node in self.pairs:
            key = key_node.ev(ctx, frame)
            value = value_node.ev(ctx, frame)
            try:
                result[key] = value
            except TypeError:
                raise ExpressionError(
                    f"cannot use {_type_name(key)} as map key", key_node.offset
                ) from None
        return result


def _fetch(value: object, key: object) -> object:
    if isinstance(value, GoTime | GoDuration | GoLocation) and isinstance(key, str):
        method = value.member(key)
        if method is None:
            raise _Fault(f"type {_type_name(value)} has no field or method {key}")
        return method
    if isinstance(value, Mapping):
        try:
            return value.get(key)
        except TypeError:
            raise _Fault(f"cannot use {_type_name(key)} as map key") from None
    if (_is_array(value) or isinstance(value, str)) and _is_number(key):
        assert isinstance(value, list | tuple | str)
        index = _to_int(key, "array index")
        length = len(value)
        position = index + length if index < 0 else index
        if not 0 <= position < length:
            raise _Fault(f"index out of range: {index} (array length is {length})")
        return value[position]
    raise _Fault(f"cannot fetch {_brief(key)} from {_type_name(value)}")


class _Member:
    """``.name``, ``[key]``, or their ``?.`` forms."""

    __slots__ = ("key", "offset", "optional")

    def __init__(self, key: _Node, optional: bool, offset: int) -> None:
        self.key = key
        self.optional = optional
        self.offset = offset

    def apply(self, value: object, ctx: _Context, frame: _Frame) -> object:
        key = self.key.ev(ctx, frame)
        try:
            return _fetch(value, key)
        except _Fault as fault:
            raise ExpressionError(str(fault), self.offset) from None


class _Slice:
    __slots__ = ("offset", "optional", "start", "stop")

    def __init__(self, start: _Node | None, stop: _Node | None, offset: int) -> None:
        self.start = start
        self.stop = stop
        self.offset = offset
        self.optional = False

    def apply(self, value: object, ctx: _Context, frame: _Frame) -> object:
        start = None if self.start is None else self.start.ev(ctx, frame)
        stop = None if self.stop is None else self.stop.ev(ctx, frame)
        try:
            if not (_is_array(value) or isinstance(value, str)):
                raise _Fault(f"cannot slice {_type_name(value)}")
            assert isinstance(value, list | tuple | str)
            low = None if start is None else _to_int(start, "slice index")
            high = None if stop is None else _to_int(stop, "slice index")
        except _Fault as fault:
            raise ExpressionError(str(fault), self.offset) from None
        part = value[low:high]
        return list(part) if isinstance(part, tuple) else part


def _invoke(name: str, function: object, args: list[object], offset: int) -> object:
    if not callable(function):
        raise ExpressionError(f"{name} is not a function (it is {_type_name(function)})", offset)
    try:
        return function(*args)
    except ExpressionError as exc:
        raise ExpressionError(f"{name}(): {exc.message}", offset) from None
    except Exception as exc:
        raise ExpressionError(f"{name}(): {exc}", offset) from None


class _MethodCall:
    """``value.name(args)``: calls a callable found in a map."""

    __slots__ = ("args", "name", "offset", "optional")

    def __init__(self, name: str, args: Sequence[_Node], offset: int) -> None:
        self.name = name
        self.args = tuple(args)
        self.offset = offset
        self.optional = False

    def apply(self, value: object, ctx: _Context, frame: _Frame) -> object:
        args = [arg.ev(ctx, frame) for arg in self.args]
        try:
            # A step per character of text given: a layout (Format) is read chunk by chunk,
            # and a MiB of layout given to Format in a loop is real work.
            for arg in args:
                if isinstance(arg, str):
                    ctx.charge(len(arg))
            result = _invoke(self.name, value, args, self.offset)
            if isinstance(result, str):
                ctx.charge_text(result)
        except _Fault as fault:
            raise ExpressionError(f"{self.name}(): {fault}", self.offset) from None
        return result


_PostfixOp = _Member | _Slice | _MethodCall


class _Postfix(_Node):
    """A value followed by member accesses, indexes, slices and method calls."""

    __slots__ = ("base", "ops")

    def __init__(self, base: _Node, ops: Sequence[_PostfixOp]) -> None:
        self.base = base
        self.ops = tuple(ops)
        self.offset = base.offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        value = self.base.ev(ctx, frame)
        for op in self.ops:
            if value is None and op.optional:
                return None  # ?. on nil: the rest of the chain is nil too
            value = op.apply(value, ctx, frame)
        return value


class _Call(_Node):
    """A call of a function from the environment."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, args: Sequence[_Node], offset: int) -> None:
        self.name = name
        self.args = tuple(args)
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        try:
            function = ctx.env[self.name]
        except KeyError:
            raise ExpressionError(f"unknown function {self.name!r}", self.offset) from None
        args = [arg.ev(ctx, frame) for arg in self.args]
        return _invoke(self.name, function, args, self.offset)


_BuiltinFn = Callable[[list[object], _Context], object]


class _BuiltinCall(_Node):
    __slots__ = ("args", "fn", "name")

    def __init__(self, name: str, fn: _BuiltinFn, args: Sequence[_Node], offset: int) -> None:
        self.name = name
        self.fn = fn
        self.args = tuple(args)
        self.offset = offset

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        args = [arg.ev(ctx, frame) for arg in self.args]
        try:
            return self.fn(args, ctx)
        except _Fault as fault:
            raise ExpressionError(f"{self.name}(): {fault}", self.offset) from None


class _PredicateCall(_Node):
    """``all(items, predicate)`` and friends: the predicate runs once per element.

    ``extra`` is reduce's initial value or sortBy's order, when given.
    """

    __slots__ = ("extra", "items", "name", "predicate")

    def __init__(
        self,
        name: str,
        items: _Node,
        predicate: _Node | None,
        offset: int,
        extra: _Node | None = None,
    ) -> None:
        self.name = name
        self.items = items
        self.predicate = predicate
        self.offset = offset
        self.extra = extra

    def _fail(self, message: str) -> NoReturn:
        raise ExpressionError(f"{self.name}(): {message}", self.offset)

    def _test(self, ctx: _Context, frame: _Frame, item: object, index: int) -> bool:
        result = item if self.predicate is None else self.predicate.ev(ctx, (item, index, frame))
        if not isinstance(result, bool):
            self._fail(f"predicate must return bool, got {_type_name(result)}")
        return result

    def ev(self, ctx: _Context, frame: _Frame) -> object:
        items = self.items.ev(ctx, frame)
        if not _is_array(items):
            self._fail(f"expected an array, got {_type_name(items)}")
        assert isinstance(items, list | tuple)
        try:
            ctx.charge(len(items))
        except _Fault as fault:
            raise ExpressionError(str(fault), self.offset) from None
        name = self.name
        if name == "all":
            return all(self._test(ctx, frame, item, i) for i, item in enumerate(items))
        if name == "any":
            return any(self._test(ctx, frame, item, i) for i, item in enumerate(items))
        if name == "none":
            return not any(self._test(ctx, frame, item, i) for i, item in enumerate(items))
        if name == "one":
            found = 0
            for i, item in enumerate(items):
                if self._test(ctx, frame, item, i):
                    found += 1
                    if found > 1:
                        return False
            return found == 1
        if name == "filter":
            return [item for i, item in enumerate(items) if self._test(ctx, frame, item, i)]
        if name == "count":
            return sum(1 for i, item in enumerate(items) if self._test(ctx, frame, item, i))
        if name == "map":
            assert self.predicate is not None
            return [self.predicate.ev(ctx, (item, i, frame)) for i, item in enumerate(items)]
        if name in ("find", "findIndex"):
            for i, item in enumerate(items):
                if self._test(ctx, frame, item, i):
                    return item if name == "find" else i
            return None if name == "find" else -1
        if name in ("findLast", "findLastIndex"):
            for i in range(len(items) - 1, -1, -1):
                if self._test(ctx, frame, items[i], i):
                    return items[i] if name == "findLast" else i
            return None if name == "findLast" else -1
        if name == "reduce":
            return self._reduce(ctx, frame, items)
        if name == "groupBy":
            return self._group_by(ctx, frame, items)
        if name == "sortBy":
            return self._sort_by(ctx, frame, items)
        assert name == "sum"
        values = (
            list(items)
            if self.predicate is None
            else [self.predicate.ev(ctx, (item, i, frame)) for i, item in enumerate(items)]
        )
        try:
            return _sum(values)
        except _Fault as fault:
            raise ExpressionError(f"sum(): {fault}", self.offset) from None

    def _reduce(self, ctx: _Context, frame: _Frame, items: Sequence[object]) -> object:
        assert self.predicate is not None
        start = 0
        if self.extra is not None:
            accumulator = self.extra.ev(ctx, frame)
        elif items:
            accumulator, start = items[0], 1
        else:
            self._fail("reduce of empty array with no initial value")
        for i in range(start, len(items)):
            accumulator = self.predicate.ev(ctx, (items[i], i, frame, accumulator))
        return accumulator

    def _group_by(self, ctx: _Context, frame: _Frame, items: Sequence[object]) -> object:
        assert self.predicate is not None
        groups: dict[Any, list[object]] = {}
        # The first key of each group: Go's map keeps 1, 1.0 and true apart, a Python dict
        # merges them, and silently putting them in one group would give wrong data.
        first_keys: dict[Any, object] = {}
        for i, item in enumerate(items):
            key = self.predicate.ev(ctx, (item, i, frame))
            try:
                _check_key(first_keys, key)
            except _Fault as fault:
                self._fail(str(fault))
            groups.setdefault(key, []).append(item)
        return groups

    def _sort_by(self, ctx: _Context, frame: _Frame, items: Sequence[object]) -> object:
        assert self.predicate is not None
        order = "asc" if self.extra is None else self.extra.ev(ctx, frame)
        if order not in ("asc", "desc"):
            self._fail(f"unknown order {_brief(order)}, use asc or desc")
        keys = [self.predicate.ev(ctx, (item, i, frame)) for i, item in enumerate(items)]
        try:
            ranked = _sortable(keys)
        except _Fault as fault:
            self._fail(str(fault))
        positions = sorted(range(len(items)), key=ranked.__getitem__, reverse=order == "desc")
        return [items[i] for i in positions]


def _check_key(first_keys: dict[Any, object], key: object) -> None:
    """Record ``key`` of a map being built; refuse an unhashable key, and one that Go's map
    keeps apart from an earlier key but a Python dict merges with it (1, 1.0 and true)."""
    try:
        first = first_keys.setdefault(key, key)
    except TypeError:
        raise _Fault(f"cannot use {_type_name(key)} as map key") from None
    if type(first) is not type(key):
        raise _Fault(
            f"keys {_brief(first)} ({_type_name(first)}) and {_brief(key)} "
            f"({_type_name(key)}) are different keys in expr-lang but one key here; "
            "convert them to one type, for example with string()"
        )


# -- built-in functions ------------------------------------------------------------------


def _sum(values: Sequence[object]) -> object:
    total: int | float = 0
    for value in values:
        if not _is_number(value):
            raise _Fault(f"cannot sum {_type_name(value)}")
        if type(total) is int and type(value) is int:
            total = _wrap(total + value)
        else:
            total = _float(total) + _float(value)  # type: ignore[arg-type]
    return total


def _need_string(value: object) -> str:
    if isinstance(value, str):
        return value
    raise _Fault(f"expected a string argument, got {_type_name(value)}")


def _b_len(args: list[object], ctx: _Context) -> object:
    value = args[0]
    if isinstance(value, str | list | tuple | Mapping):
        return len(value)
    raise _Fault(f"invalid argument for len (type {_type_name(value)})")


def _b_abs(args: list[object], ctx: _Context) -> object:
    value = args[0]
    if type(value) is int:
        return _wrap(abs(value))
    if isinstance(value, float):
        return abs(value)
    raise _Fault(f"invalid argument for abs (type {_type_name(value)})")


_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def _b_int(args: list[object], ctx: _Context) -> object:
    value = args[0]
    if _is_int(value):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or not -_I64 <= value < _I64:
            raise _Fault(f"cannot convert {go_sprint(value)} to int")
        return int(value)
    if isinstance(value, str):
        # Go's strconv.Atoi: an optional sign and ASCII digits, nothing else.
        if not _INT_TEXT.fullmatch(value) or len(value) > 20:
            raise _Fault(f"cannot parse {value!r} as int")
        number = int(value)
        if not -_I64 <= number < _I64:
            raise _Fault(f"cannot parse {value!r} as int: value out of range")
        return number
    raise _Fault(f"invalid argument for int (type {_type_name(value)})")


def _b_float(args: list[object], ctx: _Context) -> object:
    value = args[0]
    if _is_number(value):
        return _float(value)  # type: ignore[arg-type]
    if isinstance(value, str):
        if value != value.strip() or "_" in value or len(value) > 400:
            raise _Fault(f"cannot parse {value!r} as float")
        try:
            return float(value)
        except ValueError:
            raise _Fault(f"cannot parse {value!r} as float") from None
    raise _Fault(f"invalid argument for float (type {_type_name(value)})")


def _b_string(args: list[object], ctx: _Context) -> object:
    ctx.charge_value(args[0])
    return ctx.charge_text(_text(args[0]))


def _b_lower(args: list[object], ctx: _Context) -> object:
    return ctx.charge_text(_need_string(args[0]).lower())


def _b_upper(args: list[object], ctx: _Context) -> object:
    return ctx.charge_text(_need_string(args[0]).upper())


def _b_trim(args: list[object], ctx: _Context) -> object:
    text = _need_string(args[0])
    if len(args) > 1:
        return ctx.charge_text(text.strip(_need_string(args[1])))
    return ctx.charge_text(text.strip())


def _b_trim_prefix(args: list[object], ctx: _Context) -> object:
    return ctx.charge_text(_need_string(args[0]).removeprefix(_need_string(args[1])))


def _b_trim_suffix(args: list[object], ctx: _Context) -> object:
    return ctx.charge_text(_need_string(args[0]).removesuffix(_need_string(args[1])))


def _b_split(args: list[object], ctx: _Context) -> object:
    text = _need_string(args[0])
    separator = _need_string(args[1])
    limit = -1 if len(args) < 3 else _to_int(args[2], "split count")
    if limit == 0:
        return []
    # Go's strings.SplitN: an empty separator splits into characters.
    if separator == "":
        parts = list(text)
        if 0 < limit < len(parts):
            parts = [*parts[: limit - 1], "".join(parts[limit - 1 :])]
    else:
        parts = text.split(separator, limit - 1) if limit > 0 else text.split(separator)
    ctx.charge(len(parts))
    return parts


def _b_join(args: list[object], ctx: _Context) -> object:
    items = args[0]
    if not _is_array(items):
        raise _Fault(f"expected an array, got {_type_name(items)}")
    assert isinstance(items, list | tuple)
    separator = "" if len(args) < 2 else _need_string(args[1])
    ctx.charge(len(items))
    for item in items:
        if not isinstance(item, str):
            raise _Fault(f"cannot join {_type_name(item)}: only strings")
    total = sum(map(len, items)) + len(separator) * max(len(items) - 1, 0)
    if total > MAX_STRING:
        raise _Fault(f"string too long ({total} characters, at most {MAX_STRING})")
    return ctx.charge_text(separator.join(items))


def _b_replace(args: list[object], ctx: _Context) -> object:
    text, old, new = (_need_string(a) for a in args[:3])
    if old and len(new) > len(old) and text.count(old) * (len(new) - len(old)) > MAX_STRING:
        raise _Fault(f"string too long (at most {MAX_STRING} characters)")
    if not old and (len(text) + 1) * len(new) > MAX_STRING:
        raise _Fault(f"string too long (at most {MAX_STRING} characters)")
    # Go's strings.Replace takes a count (negative: every one); ReplaceAll has none.
    count = -1 if len(args) < 4 else _to_int(args[3], "replace count")
    return ctx.charge_text(text.replace(old, new, count))


def _b_has_prefix(args: list[object], ctx: _Context) -> object:
    return _need_string(args[0]).startswith(_need_string(args[1]))


def _b_has_suffix(args: list[object], ctx: _Context) -> object:
    return _need_string(args[0]).endswith(_need_string(args[1]))


def _need_map(value: object) -> Mapping[Any, object]:
    if isinstance(value, Mapping):
        return value
    raise _Fault(f"expected a map, got {_type_name(value)}")


def _b_keys(args: list[object], ctx: _Context) -> object:
    mapping = _need_map(args[0])
    ctx.charge(len(mapping))
    return list(mapping.keys())


def _b_values(args: list[object], ctx: _Context) -> object:
    mapping = _need_map(args[0])
    ctx.charge(len(mapping))
    return list(mapping.values())


def _numbers(name: str, args: Sequence[object], ctx: _Context) -> list[int | float]:
    """The numbers in ``args``, arrays flattened into them, as expr-lang's aggregates read them."""
    values: list[int | float] = []
    pending = list(reversed(args))
    while pending:
        value = pending.pop()
        if _is_array(value):
            ctx.charge(len(value))  # type: ignore[arg-type]
            pending.extend(reversed(value))  # type: ignore[call-overload]
        elif _is_number(value):
            values.append(value)  # type: ignore[arg-type]
        else:
            raise _Fault(f"invalid argument for {name} (type {_type_name(value)})")
    return values


def _b_max(args: list[object], ctx: _Context) -> object:
    values = _numbers("max", args, ctx)
    if not values:
        raise _Fault("not enough arguments to call max")
    return max(values)


def _b_min(args: list[object], ctx: _Context) -> object:
    values = _numbers("min", args, ctx)
    if not values:
        raise _Fault("not enough arguments to call min")
    return min(values)


def _b_mean(args: list[object], ctx: _Context) -> object:
    values = _numbers("mean", args, ctx)
    if not values:
        return 0.0
    try:
        total = math.fsum(values)
    except OverflowError:  # float64 sums overflow to an infinity in Go, not an error
        total = sum(map(_float, values), 0.0)
    return total / len(values)


def _b_median(args: list[object], ctx: _Context) -> object:
    values = sorted(_float(v) for v in _numbers("median", args, ctx))
    count = len(values)
    if not count:
        return 0.0
    middle = count // 2
    return values[middle] if count % 2 else (values[middle - 1] + values[middle]) / 2


def _byte_index(text: str, found: int) -> int:
    return -1 if found < 0 else len(text[:found].encode())


def _b_index_of(args: list[object], ctx: _Context) -> object:
    text, part = _need_string(args[0]), _need_string(args[1])
    return _byte_index(text, text.find(part))  # Go's strings.Index counts bytes


def _b_last_index_of(args: list[object], ctx: _Context) -> object:
    text, part = _need_string(args[0]), _need_string(args[1])
    return _byte_index(text, text.rfind(part))


def _b_repeat(args: list[object], ctx: _Context) -> object:
    text = _need_string(args[0])
    count = _to_int(args[1], "repeat count")
    if count < 0:
        raise _Fault(f"invalid argument for repeat (expected positive integer, got {count})")
    if count > 1_000_000 or len(text) * count > MAX_STRING:
        raise _Fault("memory budget exceeded")
    return ctx.charge_text(text * count)


def _b_split_after(args: list[object], ctx: _Context) -> object:
    text = _need_string(args[0])
    separator = _need_string(args[1])
    limit = -1 if len(args) < 3 else _to_int(args[2], "split count")
    if limit == 0:
        return []
    if separator == "":
        return _b_split(args, ctx)
    parts: list[str] = []
    start = 0
    while limit < 0 or len(parts) < limit - 1:
        found = text.find(separator, start)
        if found < 0:
            break
        parts.append(text[start : found + len(separator)])
        start = found + len(separator)
    parts.append(text[start:])
    ctx.charge(len(parts))
    return parts


def _need_array(value: object, what: str = "") -> Sequence[object]:
    if _is_array(value):
        return value  # type: ignore[return-value]
    raise _Fault(
        f"cannot {what or 'use'} {_type_name(value)}"
        if what
        else f"expected an array, got {_type_name(value)}"
    )


def _b_take(args: list[object], ctx: _Context) -> object:
    items = _need_array(args[0], "take from")
    count = _to_int(args[1], "take count")
    result = list(items[: max(count, 0)])
    ctx.charge(len(result))
    return result


def _b_reverse(args: list[object], ctx: _Context) -> object:
    items = _need_array(args[0], "reverse")
    ctx.charge(len(items))
    return list(reversed(items))


def _b_concat(args: list[object], ctx: _Context) -> object:
    result: list[object] = []
    for value in args:
        result.extend(_need_array(value, "concat"))
    ctx.charge(len(result))
    return result


def _b_flatten(args: list[object], ctx: _Context) -> object:
    result: list[object] = []
    pending = [iter(_need_array(args[0], "flatten"))]
    while pending:
        for item in pending[-1]:
            if _is_array(item):
                pending.append(iter(item))  # type: ignore[call-overload]
                break
            result.append(item)
            ctx.charge(1)
        else:
            pending.pop()
    return result


def _b_uniq(args: list[object], ctx: _Context) -> object:
    result: list[object] = []
    seen_scalars: set[tuple[str, object]] = set()
    seen_others: list[object] = []  # arrays, maps, times: compared one by one
    items = _need_array(args[0], "uniq")
    ctx.charge(len(items))
    for item in items:
        key = _scalar_key(item)
        if key is not None:
            if key in seen_scalars:
                continue
            seen_scalars.add(key)
        else:
            ctx.charge(len(seen_others))
            if any(_equal(item, seen, ctx) for seen in seen_others):
                continue
            seen_others.append(item)
        result.append(item)
    return result


def _scalar_key(value: object) -> tuple[str, object] | None:
    """A hashable key equal for values :func:`_equal` finds equal (1 and 1.0, but never 1 and
    true), or None for values compared another way."""
    if value is None or isinstance(value, bool | str):
        return (_type_name(value), value)
    if _is_number(value):
        return ("number", value)
    return None


def _sortable(values: Sequence[object]) -> list[Any]:
    """Sort keys for ``values``: all numbers, all strings, or all times/durations."""
    if all(_is_number(v) for v in values) or all(isinstance(v, str) for v in values):
        return list(values)
    if all(isinstance(v, GoTime) for v in values) or all(isinstance(v, GoDuration) for v in values):
        return [v.nanos for v in values]  # type: ignore[attr-defined]
    kinds = sorted({_type_name(v) for v in values})
    raise _Fault(f"cannot sort a mix of {', '.join(kinds)}")


def _b_sort(args: list[object], ctx: _Context) -> object:
    items = list(_need_array(args[0], "sort"))
    ctx.charge(len(items))
    order = "asc" if len(args) < 2 else args[1]
    if order not in ("asc", "desc"):
        raise _Fault(f"unknown order {_brief(order)}, use asc or desc")
    keys = _sortable(items)
    positions = sorted(range(len(items)), key=keys.__getitem__, reverse=order == "desc")
    return [items[i] for i in positions]


def _b_to_pairs(args: list[object], ctx: _Context) -> object:
    mapping = _need_map(args[0])
    ctx.charge(len(mapping))
    return [[key, value] for key, value in mapping.items()]


def _b_from_pairs(args: list[object], ctx: _Context) -> object:
    result: dict[Any, object] = {}
    pairs = _need_array(args[0], "make a map from")
    ctx.charge(len(pairs))
    first_keys: dict[Any, object] = {}
    for pair in pairs:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise _Fault(f"invalid pair {_brief(pair)}: expected [key, value]")
        key: Any = pair[0]
        _check_key(first_keys, key)
        result[key] = pair[1]
    return result


def _b_to_json(args: list[object], ctx: _Context) -> object:
    # Charged before anything walks the value: shared data (reduce's [#acc, #acc]) is
    # exponentially bigger than it looks and self-referencing data never ends.
    ctx.charge_value(args[0])
    try:
        compact = ctx.charge_text(go_json(_go_value(args[0])))
        return ctx.charge_text(go_json_indent(compact, limit=MAX_STRING))
    except GoJSONError as exc:
        raise _Fault(str(exc)) from None


def _b_from_json(args: list[object], ctx: _Context) -> object:
    text = _need_string(args[0])
    try:
        value = json.loads(text, parse_int=float, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise _Fault(str(exc)) from None
    ctx.charge_value(value)
    return value


def _refuse_constant(name: str) -> object:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _b_to_base64(args: list[object], ctx: _Context) -> object:
    text = _need_string(args[0])
    if len(text) > MAX_STRING:  # the encoding is at least 4/3 as long: refuse before building
        raise _Fault(f"string too long ({len(text)} characters, at most {MAX_STRING})")
    return ctx.charge_text(base64.b64encode(text.encode()).decode())


def _b_from_base64(args: list[object], ctx: _Context) -> object:
    try:
        raw = base64.b64decode(_need_string(args[0]).encode(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Fault(f"illegal base64 data: {exc}") from None
    return ctx.charge_text(raw.decode("utf-8", "replace"))


def _bits(name: str, args: Sequence[object]) -> list[int]:
    for value in args:
        if not _is_int(value):
            raise _Fault(f"cannot use {_type_name(value)} as argument (type int) to call {name}")
    return list(args)  # type: ignore[arg-type]


def _shift(name: str, args: Sequence[object]) -> tuple[int, int]:
    value, count = _bits(name, args)
    if count < 0:
        raise _Fault(f"invalid operation: negative shift count {count} (type int)")
    return value, count


def _b_bitand(args: list[object], ctx: _Context) -> object:
    a, b = _bits("bitand", args)
    return a & b


def _b_bitor(args: list[object], ctx: _Context) -> object:
    a, b = _bits("bitor", args)
    return a | b


def _b_bitxor(args: list[object], ctx: _Context) -> object:
    a, b = _bits("bitxor", args)
    return a ^ b


def _b_bitnand(args: list[object], ctx: _Context) -> object:
    a, b = _bits("bitnand", args)
    return a & ~b


def _b_bitnot(args: list[object], ctx: _Context) -> object:
    (a,) = _bits("bitnot", args)
    return ~a


def _b_bitshl(args: list[object], ctx: _Context) -> object:
    value, count = _shift("bitshl", args)
    return _wrap((value << min(count, 64)) & _U64_MASK)


def _b_bitshr(args: list[object], ctx: _Context) -> object:
    value, count = _shift("bitshr", args)
    return value >> min(count, 64)


def _b_bitushr(args: list[object], ctx: _Context) -> object:
    value, count = _shift("bitushr", args)
    return _wrap((value & _U64_MASK) >> min(count, 64))


def _b_now(args: list[object], ctx: _Context) -> object:
    seconds = ctx.clock()
    if not math.isfinite(seconds) or abs(seconds) > _MAX_CLOCK_SECONDS:
        raise _Fault(f"the clock gives no usable time ({seconds})")
    moment = GoTime.from_unix(seconds, load_location("Local"))
    if args:
        return GoTime(moment.nanos, _need_location(args[0], "now"))
    return moment


# Go's time.Time reaches about 292 billion years either side of year 1.
_MAX_CLOCK_SECONDS: Final = float(_I64 - 1)


def _need_location(value: object, name: str) -> GoLocation:
    if isinstance(value, GoLocation):
        return value
    raise _Fault(f"cannot use {_type_name(value)} as argument (type *time.Location) to call {name}")


def _b_duration(args: list[object], ctx: _Context) -> object:
    try:
        return GoDuration(parse_go_duration(_need_string(args[0])))
    except DurationError as exc:
        raise _Fault(str(exc)) from None


def _b_date(args: list[object], ctx: _Context) -> object:
    location = None
    if args and isinstance(args[0], GoLocation):
        location, args = args[0], args[1:]
    if not args or len(args) > 3:
        raise _Fault(f"invalid number of arguments (expected 1 to 3, got {len(args)})")
    if args[0] is None:
        raise _Fault("interface {} is nil, not string")
    text = _need_string(args[0])
    # A step per character: parsing reads the layout chunk by chunk.
    ctx.charge(sum(len(arg) for arg in args if isinstance(arg, str)))
    try:
        if len(args) == 3:
            location = load_location(_need_string(args[2]))
        if len(args) >= 2:
            return parse_time(_need_string(args[1]), text, location or load_location("UTC"))
        for layout in DATE_LAYOUTS:
            try:
                return parse_time(layout, text, location or load_location("UTC"))
            except TimeError:
                continue
    except TimeError as exc:
        raise _Fault(str(exc)) from None
    raise _Fault(f"invalid date {text}")


def _b_timezone(args: list[object], ctx: _Context) -> object:
    if args[0] is None:
        raise _Fault("cannot use nil as argument (type string) to call timezone")
    try:
        return load_location(_need_string(args[0]))
    except TimeError as exc:
        raise _Fault(str(exc)) from None


def _go_value(value: object) -> object:
    """``value`` as Go's ``encoding/json`` sees it: expr-lang's maps are Go maps (sorted keys),
    times are RFC 3339 strings, durations nanoseconds, locations empty structs."""
    if isinstance(value, Mapping):
        return GoMap({_text(key): _go_value(item) for key, item in value.items()})
    if _is_array(value):
        return [_go_value(item) for item in value]  # type: ignore[attr-defined]
    if isinstance(value, GoTime):
        if not 0 <= value.year <= 9999:  # Go's Time.MarshalJSON refuses these years too
            raise _Fault(
                "json: error calling MarshalJSON for type time.Time: "
                "Time.MarshalJSON: year outside of range [0,9999]"
            )
        return format_time(value, "2006-01-02T15:04:05.999999999Z07:00")
    if isinstance(value, GoDuration):
        return value.nanos
    if isinstance(value, GoLocation):
        return {}
    return value


def _b_ceil(args: list[object], ctx: _Context) -> object:
    value = args[0]
    if _is_int(value):
        return _float(value)  # type: ignore[arg-type]
    if isinstance(value, float):
        return float(math.ceil(value)) if math.isfinite(value) else value
    raise _Fault(f"invalid argument for ceil (type {_type_name(value)})")


def _b_floor(args: list[object], ctx: _Context) -> object:
    value = args[0]
    if _is_int(value):
        return _float(value)  # type: ignore[arg-type]
    if isinstance(value, float):
        return float(math.floor(value)) if math.isfinite(value) else value
    raise _Fault(f"invalid argument for floor (type {_type_name(value)})")


def _b_round(args: list[object], ctx: _Context) -> object:
    value = args[0]
    if _is_int(value):
        return _float(value)  # type: ignore[arg-type]
    if isinstance(value, float):
        if not math.isfinite(value):
            return value
        # Go's math.Round: half away from zero (Python's round() is half to even).
        return math.copysign(math.floor(abs(value) + 0.5), value)
    raise _Fault(f"invalid argument for round (type {_type_name(value)})")


def _b_first(args: list[object], ctx: _Context) -> object:
    items = args[0]
    if not _is_array(items):
        raise _Fault(f"expected an array, got {_type_name(items)}")
    return items[0] if items else None  # type: ignore[index]


def _b_last(args: list[object], ctx: _Context) -> object:
    items = args[0]
    if not _is_array(items):
        raise _Fault(f"expected an array, got {_type_name(items)}")
    return items[-1] if items else None  # type: ignore[index]


def _b_get(args: list[object], ctx: _Context) -> object:
    container = args[0]
    if not (container is None or _is_array(container) or isinstance(container, str | Mapping)):
        raise _Fault(f"type {_type_name(container)} does not support indexing")
    try:
        return _fetch(container, args[1])
    except _Fault:
        return None  # out of range or missing: nil, as expr-lang's get


def _b_type(args: list[object], ctx: _Context) -> object:
    name = _type_name(args[0])
    return "nil" if name == "<nil>" else name


# name: (function, fewest arguments, most arguments, result kind or "" when it varies)
_BUILTINS: Final[dict[str, tuple[_BuiltinFn, int, int, str]]] = {
    "len": (_b_len, 1, 1, "int"),
    "abs": (_b_abs, 1, 1, "number"),
    "int": (_b_int, 1, 1, "int"),
    "float": (_b_float, 1, 1, "float"),
    "string": (_b_string, 1, 1, "string"),
    "lower": (_b_lower, 1, 1, "string"),
    "upper": (_b_upper, 1, 1, "string"),
    "trim": (_b_trim, 1, 2, "string"),
    "trimPrefix": (_b_trim_prefix, 2, 2, "string"),
    "trimSuffix": (_b_trim_suffix, 2, 2, "string"),
    "split": (_b_split, 2, 3, "array"),
    "join": (_b_join, 1, 2, "string"),
    "replace": (_b_replace, 3, 4, "string"),
    "hasPrefix": (_b_has_prefix, 2, 2, "bool"),
    "hasSuffix": (_b_has_suffix, 2, 2, "bool"),
    "keys": (_b_keys, 1, 1, "array"),
    "values": (_b_values, 1, 1, "array"),
    "max": (_b_max, 1, 1 << 16, "number"),
    "min": (_b_min, 1, 1 << 16, "number"),
    "ceil": (_b_ceil, 1, 1, "number"),
    "floor": (_b_floor, 1, 1, "number"),
    "round": (_b_round, 1, 1, "number"),
    "first": (_b_first, 1, 1, ""),
    "last": (_b_last, 1, 1, ""),
    "get": (_b_get, 2, 2, ""),
    "type": (_b_type, 1, 1, "string"),
    "mean": (_b_mean, 1, 1 << 16, "float"),
    "median": (_b_median, 1, 1 << 16, "float"),
    "indexOf": (_b_index_of, 2, 2, "int"),
    "lastIndexOf": (_b_last_index_of, 2, 2, "int"),
    "repeat": (_b_repeat, 2, 2, "string"),
    "splitAfter": (_b_split_after, 2, 3, "array"),
    "take": (_b_take, 2, 2, "array"),
    "reverse": (_b_reverse, 1, 1, "array"),
    "concat": (_b_concat, 1, 1 << 16, "array"),
    "flatten": (_b_flatten, 1, 1, "array"),
    "uniq": (_b_uniq, 1, 1, "array"),
    "sort": (_b_sort, 1, 2, "array"),
    "toPairs": (_b_to_pairs, 1, 1, "array"),
    "fromPairs": (_b_from_pairs, 1, 1, "map"),
    "toJSON": (_b_to_json, 1, 1, "string"),
    "fromJSON": (_b_from_json, 1, 1, ""),
    "toBase64": (_b_to_base64, 1, 1, "string"),
    "fromBase64": (_b_from_base64, 1, 1, "string"),
    "bitand": (_b_bitand, 2, 2, "int"),
    "bitor": (_b_bitor, 2, 2, "int"),
    "bitxor": (_b_bitxor, 2, 2, "int"),
    "bitnand": (_b_bitnand, 2, 2, "int"),
    "bitnot": (_b_bitnot, 1, 1, "int"),
    "bitshl": (_b_bitshl, 2, 2, "int"),
    "bitshr": (_b_bitshr, 2, 2, "int"),
    "bitushr": (_b_bitushr, 2, 2, "int"),
    "now": (_b_now, 0, 1, "time.Time"),
    "duration": (_b_duration, 1, 1, "time.Duration"),
    "date": (_b_date, 1, 4, "time.Time"),
    "timezone": (_b_timezone, 1, 1, "*time.Location"),
}

# name: (predicate optional?, result kind, takes a further optional argument?)
_PREDICATES: Final[dict[str, tuple[bool, str, bool]]] = {
    "all": (False, "bool", False),
    "any": (False, "bool", False),
    "none": (False, "bool", False),
    "one": (False, "bool", False),
    "filter": (False, "array", False),
    "map": (False, "array", False),
    "count": (True, "int", False),
    "find": (False, "", False),
    "findIndex": (False, "int", False),
    "findLast": (False, "", False),
    "findLastIndex": (False, "int", False),
    "sum": (True, "number", False),
    "reduce": (False, "", True),
    "groupBy": (False, "map", False),
    "sortBy": (False, "array", True),
}

BUILTIN_FUNCTION_NAMES: Final[frozenset[str]] = frozenset(_BUILTINS) | frozenset(_PREDICATES)
"""Functions every expression can call; they take precedence over names in the environment."""

# Words the grammar owns: never names of variables.
_KEYWORDS: Final = frozenset({"let", "if", "else"})


# -- lexer -------------------------------------------------------------------------------

_EOF, _NUMBER, _STRING, _IDENT, _OP, _BRACKET = range(6)
_TWO_CHAR_OPERATORS: Final = frozenset({"||", "&&", "==", "!=", "<=", ">=", "**", "??", "?.", ".."})
_ONE_CHAR_OPERATORS: Final = frozenset("!<>+-*/%^?:,.|=&;")
_SIMPLE_ESCAPES: Final = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "`": "`",
    "?": "?",
}
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


class _Token:
    __slots__ = ("kind", "offset", "text", "value")

    def __init__(self, kind: int, text: str, offset: int, value: object = None) -> None:
        self.kind = kind
        self.text = text
        self.offset = offset
        self.value = value

    def is_(self, kind: int, text: str) -> bool:
        return self.kind == kind and self.text == text

    def describe(self) -> str:
        if self.kind == _EOF:
            return "end of expression"
        return f"token {self.text!r}"


def _alnum(char: str) -> bool:
    return char.isalpha() or char.isdecimal() or char in "_$"


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    length = len(source)
    i = 0
    while i < length:
        char = source[i]
        if char.isspace():
            i += 1
            continue
        start = i
        if char in "'\"":
            text, i = _scan_string(source, i)
            tokens.append(_Token(_STRING, source[start:i], start, text))
        elif char == "`":
            end = source.find("`", i + 1)
            if end < 0:
                raise ExpressionError("literal not terminated", start)
            i = end + 1
            tokens.append(_Token(_STRING, source[start:i], start, source[start + 1 : end]))
        elif "0" <= char <= "9" or (char == "." and i + 1 < length and "0" <= source[i + 1] <= "9"):
            number, i = _scan_number(source, i)
            tokens.append(_Token(_NUMBER, source[start:i], start, number))
        elif char == "/" and source.startswith("//", i):
            end = source.find("\n", i)
            i = length if end < 0 else end + 1
        elif char == "/" and source.startswith("/*", i):
            end = source.find("*/", i + 2)
            if end < 0:
                raise ExpressionError("unclosed comment", start)
            i = end + 2
        elif char == "#":
            i += 1
            while i < length and _alnum(source[i]):
                i += 1
            tokens.append(_Token(_OP, source[start:i], start))
        elif source[i : i + 2] in _TWO_CHAR_OPERATORS:
            i += 2
            tokens.append(_Token(_OP, source[start:i], start))
        elif char in _ONE_CHAR_OPERATORS:
            i += 1
            tokens.append(_Token(_OP, char, start))
        elif char in "()[]{}":
            i += 1
            tokens.append(_Token(_BRACKET, char, start))
        elif _alnum(char):
            while i < length and _alnum(source[i]):
                i += 1
            word = source[start:i]
            tokens.append(_Token(_OP if word in _WORD_OPERATORS else _IDENT, word, start))
        else:
            raise ExpressionError(f"unrecognized character: U+{ord(char):04X} {char!r}", start)
    tokens.append(_Token(_EOF, "", length))
    return tokens


def _scan_string(source: str, start: int) -> tuple[str, int]:
    quote = source[start]
    out: list[str] = []
    i = start + 1
    length = len(source)
    while True:
        if i >= length or source[i] == "\n":
            raise ExpressionError("literal not terminated", start)
        char = source[i]
        if char == quote:
            return "".join(out), i + 1
        if char != "\\":
            out.append(char)
            i += 1
            continue
        if i + 1 >= length:
            raise ExpressionError("literal not terminated", start)
        escape = source[i + 1]
        if escape in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[escape])
            i += 2
            continue
        if escape in "xuU":
            size = {"x": 2, "u": 4, "U": 8}[escape]
            digits = source[i + 2 : i + 2 + size]
            if len(digits) != size or not set(digits) <= _HEX_DIGITS:
                raise ExpressionError("invalid char escape", i)
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ExpressionError("invalid char escape", i)
            out.append(chr(code))
            i += 2 + size
            continue
        if escape in "0123":
            digits = source[i + 1 : i + 4]
            if len(digits) != 3 or not all("0" <= d <= "7" for d in digits):
                raise ExpressionError("invalid octal escape", i)
            out.append(chr(int(digits, 8)))
            i += 4
            continue
        raise ExpressionError("invalid char escape", i)


def _scan_number(source: str, start: int) -> tuple[int | float, int]:
    length = len(source)
    i = start
    digits = "0123456789_"
    if source[i] == "0" and i + 1 < length and source[i + 1] in "xXoObB":
        digits = {"x": "0123456789abcdefABCDEF_", "o": "01234567_", "b": "01_"}[
            source[i + 1].lower()
        ]
        i += 2
    while i < length and source[i] in digits:
        i += 1
    if i < length and source[i] == "." and not source.startswith("..", i):
        i += 1
        while i < length and source[i] in digits:
            i += 1
    if i < length and source[i] in "eE":
        i += 1
        if i < length and source[i] in "+-":
            i += 1
        while i < length and source[i] in digits:
            i += 1
    if i < length and _alnum(source[i]):
        end = i + 1
        raise ExpressionError(f"bad number syntax: {source[start:end]!r}", start)
    text = source[start:i].replace("_", "").lower()
    prefixed = text.startswith(("0x", "0o", "0b"))
    is_float = not prefixed and ("." in text or "e" in text)
    if not is_float and len(text) > 70:  # far beyond int64 in any base, and cheap to refuse
        raise ExpressionError("integer literal is too large", start)
    try:
        value: int | float = float(text) if is_float else int(text, 0 if prefixed else 10)
    except ValueError:
        raise ExpressionError(f"invalid number literal {source[start:i]!r}", start) from None
    if isinstance(value, float) and math.isinf(value):
        raise ExpressionError("float literal is too large", start)
    if isinstance(value, int) and value >= _I64:
        raise ExpressionError("integer literal is too large", start)
    return value, i


# -- parser ------------------------------------------------------------------------------


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokenize(source)
        self.pos = 0
        self.tok = self.tokens[0]
        self.depth = 0
        self.predicates = 0
        self.reductions = 0  # reduce predicates being parsed: where #acc is defined
        self.variables: list[str] = []  # names bound by enclosing lets, innermost last
        # Top-level names used, in source order: (name, offset, is a call).
        self.references: list[tuple[str, int, bool]] = []

    # helpers

    def advance(self) -> None:
        if self.pos < len(self.tokens) - 1:
            self.pos += 1
        self.tok = self.tokens[self.pos]

    def peek(self) -> _Token:
        return self.tokens[min(self.pos + 1, len(self.tokens) - 1)]

    def unexpected(self, token: _Token | None = None) -> NoReturn:
        token = token or self.tok
        raise ExpressionError(f"unexpected {token.describe()}", token.offset)

    def expect(self, kind: int, text: str) -> _Token:
        token = self.tok
        if not token.is_(kind, text):
            if token.kind == _EOF:
                raise ExpressionError(
                    f"unexpected end of expression, expected {text!r}", token.offset
                )
            raise ExpressionError(
                f"unexpected token {token.text!r}, expected {text!r}", token.offset
            )
        self.advance()
        return token

    def at(self, kind: int, text: str) -> bool:
        return self.tok.is_(kind, text)

    # grammar

    def parse(self) -> _Node:
        node = self.expression(0)
        if self.tok.kind != _EOF:
            self.unexpected()
        return node

    def expression(self, precedence: int) -> _Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(
                f"expression is nested too deeply (more than {MAX_DEPTH} levels)", self.tok.offset
            )
        try:
            if precedence == 0 and self.tok.kind == _IDENT and self.tok.text in ("let", "if"):
                return self.let() if self.tok.text == "let" else self.if_else()
            first = self.primary()
            steps: list[_Step] = []
            previous = ""
            while self.tok.kind == _OP:
                op_token = self.tok
                negate = False
                if op_token.text == "not":
                    following = self.peek()
                    if following.kind != _OP or following.text not in _NEGATABLE:
                        self.unexpected(following)
                    if precedence > _COMPARISON_PRECEDENCE:
                        break
                    negate = True
                    self.advance()
                    op_token = self.tok
                info = _BINARY.get(op_token.text)
                if info is None or info[0] < precedence:
                    break
                self.advance()
                op = _ALIASES.get(op_token.text, op_token.text)
                if op == "|":
                    name = self.tok
                    if name.kind != _IDENT:
                        self.unexpected()
                    self.advance()
                    first = self.call(name, [_materialize(first, steps)])
                    steps = []
                    previous = op
                    continue
                if previous == "??" and op != "??":
                    raise ExpressionError(
                        f"operator {op_token.text} and coalesce expressions (??) cannot be "
                        "mixed; wrap either in parentheses",
                        op_token.offset,
                    )
                if info[0] == _COMPARISON_PRECEDENCE:
                    node = self.comparison(_materialize(first, steps), op_token)
                    first = _Unary("!", node, op_token.offset) if negate else node
                    steps = []
                else:
                    right = self.expression(info[0] + 1 if info[1] == _LEFT else info[0])
                    steps.append(_Step(op, right, op_token.offset))
                previous = op
            node = _materialize(first, steps)
            if precedence == 0:
                node = self.conditional(node)
            return node
        finally:
            self.depth -= 1

    def let(self) -> _Node:
        start = self.tok
        self.advance()
        name = self.tok
        if name.kind != _IDENT or name.text in _KEYWORDS:
            raise ExpressionError(f"expected a variable name, got {name.describe()}", name.offset)
        if name.text in BUILTIN_FUNCTION_NAMES or name.text == "$env":
            raise ExpressionError(f"cannot redeclare builtin {name.text}", name.offset)
        if name.text in self.variables:
            raise ExpressionError(f"cannot redeclare variable {name.text}", name.offset)
        self.advance()
        self.expect(_OP, "=")
        value = self.expression(0)
        self.expect(_OP, ";")
        self.variables.append(name.text)
        try:
            body = self.expression(0)
        finally:
            self.variables.pop()
        return _Let(name.text, value, body, start.offset)

    def if_else(self) -> _Node:
        start = self.tok
        self.advance()
        condition = self.expression(0)
        yes = self.block()
        if not self.tok.is_(_IDENT, "else"):
            raise ExpressionError(
                f"unexpected {self.tok.describe()}, expected 'else'", self.tok.offset
            )
        self.advance()
        no = self.if_else() if self.tok.is_(_IDENT, "if") else self.block()
        return _Conditional(condition, yes, no, start.offset)

    def block(self) -> _Node:
        self.expect(_BRACKET, "{")
        node = self.expression(0)
        self.expect(_BRACKET, "}")
        return node

    def comparison(self, left: _Node, op_token: _Token) -> _Node:
        # a < b < c means a < b && b < c, as in expr-lang.
        parts: list[_Node] = []
        while True:
            right = self.expression(_COMPARISON_PRECEDENCE + 1)
            op = op_token.text
            if op == "matches" and isinstance(right, _Const) and isinstance(right.value, str):
                try:
                    _regex(right.value)
                except _Fault as fault:
                    raise ExpressionError(str(fault), right.offset) from None
            parts.append(_Fold(left, [_Step(op, right, op_token.offset)]))
            left = right
            token = self.tok
            info = _BINARY.get(token.text) if token.kind == _OP else None
            if info is None or info[0] != _COMPARISON_PRECEDENCE:
                break
            op_token = token
            self.advance()
        if len(parts) == 1:
            return parts[0]
        return _Fold(parts[0], [_Step("&&", part, part.offset) for part in parts[1:]])

    def conditional(self, node: _Node) -> _Node:
        while self.at(_OP, "?"):
            question = self.tok
            self.advance()
            if self.at(_OP, ":"):
                self.advance()
                yes = node
            else:
                yes = self.expression(0)
                self.expect(_OP, ":")
            no = self.expression(0)
            node = _Conditional(node, yes, no, question.offset)
        return node

    def primary(self) -> _Node:
        token = self.tok
        if token.kind == _OP and token.text in _UNARY:
            self.advance()
            operand = self.expression(_UNARY[token.text])
            op = _ALIASES.get(token.text, token.text)
            node: _Node
            if op == "-" and isinstance(operand, _Const) and _is_number(operand.value):
                value = operand.value
                node = _Const(_wrap(-value) if type(value) is int else -value, token.offset)  # type: ignore[operator]
            else:
                node = _Unary(op, operand, token.offset)
            return self.postfix(node)
        if token.is_(_BRACKET, "("):
            self.advance()
            node = self.expression(0)
            self.expect(_BRACKET, ")")
            return self.postfix(node)
        if token.kind == _OP and (token.text.startswith("#") or token.text == "."):
            if not self.predicates:
                raise ExpressionError("cannot use pointer accessor outside predicate", token.offset)
            if token.text == ".":
                # ".name" inside a predicate is "#.name": the postfix parser reads the ".name".
                return self.postfix(_Pointer("#", token.offset))
            self.advance()
            if token.text == "#acc" and not self.reductions:
                raise ExpressionError("#acc is only defined inside reduce", token.offset)
            if token.text not in ("#", "#index", "#acc"):
                raise ExpressionError(
                    f"unknown pointer {token.text}: use #, #index or #acc", token.offset
                )
            return self.postfix(_Pointer(token.text, token.offset))
        return self.secondary()

    def secondary(self) -> _Node:
        token = self.tok
        node: _Node
        if token.kind == _IDENT:
            self.advance()
            if token.text in ("true", "false"):
                return _Const(token.text == "true", token.offset)
            if token.text == "nil":
                return _Const(None, token.offset)
            if token.text in _KEYWORDS:
                self.unexpected(token)
            if self.at(_BRACKET, "("):
                node = self.call(token, [])
            elif token.text == "$env":
                node = _Environment(token.offset)
            elif token.text in self.variables:
                node = _Variable(token.text, token.offset)
            else:
                self.references.append((token.text, token.offset, False))
                node = _Ident(token.text, token.offset)
        elif token.kind in (_NUMBER, _STRING):
            self.advance()
            node = _Const(token.value, token.offset)
        elif token.is_(_BRACKET, "["):
            node = self.array()
        elif token.is_(_BRACKET, "{"):
            node = self.map()
        else:
            self.unexpected()
        return self.postfix(node)

    def arguments(self, args: list[_Node]) -> list[_Node]:
        piped = len(args)
        self.expect(_BRACKET, "(")
        while not self.at(_BRACKET, ")"):
            if len(args) > piped:
                self.expect(_OP, ",")
                if self.at(_BRACKET, ")"):
                    break
            args.append(self.expression(0))
        self.expect(_BRACKET, ")")
        return args

    def call(self, name: _Token, args: list[_Node]) -> _Node:
        if name.text in _PREDICATES:
            return self.predicate_call(name, args)
        builtin = _BUILTINS.get(name.text)
        args = self.arguments(args)
        if builtin is None:
            self.references.append((name.text, name.offset, True))
            return _Call(name.text, args, name.offset)
        fn, fewest, most, _ = builtin
        if len(args) < fewest:
            raise ExpressionError(f"not enough arguments to call {name.text}", name.offset)
        if len(args) > most:
            raise ExpressionError(f"too many arguments to call {name.text}", name.offset)
        return _BuiltinCall(name.text, fn, args, name.offset)

    def predicate_call(self, name: _Token, args: list[_Node]) -> _Node:
        optional, _, takes_extra = _PREDICATES[name.text]
        self.expect(_BRACKET, "(")
        piped = len(args)
        wanted = ("items", "predicate")[piped:]
        items: _Node | None = args[0] if args else None
        predicate: _Node | None = None
        for index, what in enumerate(wanted):
            if self.at(_BRACKET, ")"):
                if what == "predicate" and optional:
                    break
                raise ExpressionError(f"not enough arguments to call {name.text}", self.tok.offset)
            if index > 0:
                self.expect(_OP, ",")
            if what == "items":
                items = self.expression(0)
            else:
                reducing = name.text == "reduce"
                self.reductions += reducing
                try:
                    predicate = self.predicate()
                finally:
                    self.reductions -= reducing
        extra = None
        if self.at(_OP, ","):
            self.advance()
            if takes_extra and not self.at(_BRACKET, ")"):
                extra = self.expression(0)
                if self.at(_OP, ","):
                    self.advance()
        self.expect(_BRACKET, ")")
        assert items is not None
        return _PredicateCall(name.text, items, predicate, name.offset, extra)

    def predicate(self) -> _Node:
        braced = self.at(_BRACKET, "{")
        if braced:
            self.advance()
        self.predicates += 1
        try:
            node = self.expression(0)
        finally:
            self.predicates -= 1
        if braced:
            self.expect(_BRACKET, "}")
        return node

    def array(self) -> _Node:
        start = self.expect(_BRACKET, "[")
        items: list[_Node] = []
        while not self.at(_BRACKET, "]"):
            if items:
                self.expect(_OP, ",")
                if self.at(_BRACKET, "]"):
                    break
            items.append(self.expression(0))
        self.expect(_BRACKET, "]")
        return _Array(items, start.offset)

    def map(self) -> _Node:
        start = self.expect(_BRACKET, "{")
        pairs: list[tuple[_Node, _Node]] = []
        while not self.at(_BRACKET, "}"):
            if pairs:
                self.expect(_OP, ",")
                if self.at(_BRACKET, "}"):
                    break
            token = self.tok
            key: _Node
            if token.kind in (_NUMBER, _IDENT):
                key = _Const(token.text, token.offset)
                self.advance()
            elif token.kind == _STRING:
                key = _Const(token.value, token.offset)
                self.advance()
            elif token.is_(_BRACKET, "("):
                key = self.expression(0)
            else:
                raise ExpressionError(
                    "a map key must be a quoted string, a number, an identifier, or an "
                    f"expression in parentheses (unexpected {token.describe()})",
                    token.offset,
                )
            self.expect(_OP, ":")
            pairs.append((key, self.expression(0)))
        self.expect(_BRACKET, "}")
        return _Map(pairs, start.offset)

    def postfix(self, node: _Node) -> _Node:
        ops: list[_PostfixOp] = []
        while True:
            token = self.tok
            optional = token.is_(_OP, "?.")
            if optional or token.is_(_OP, "."):
                self.advance()
                if optional and self.at(_BRACKET, "["):
                    ops.append(self.index(optional=True))
                    continue
                name = self.tok
                if name.kind != _IDENT and not (name.kind == _OP and name.text in _WORD_OPERATORS):
                    raise ExpressionError(f"expected a name, got {name.describe()}", name.offset)
                self.advance()
                ops.append(_Member(_Const(name.text, name.offset), optional, name.offset))
                if self.at(_BRACKET, "("):
                    ops.append(_MethodCall(name.text, self.arguments([]), name.offset))
            elif token.is_(_BRACKET, "["):
                ops.append(self.index(optional=False))
            else:
                break
        return _Postfix(node, ops) if ops else node

    def index(self, *, optional: bool) -> _PostfixOp:
        bracket = self.expect(_BRACKET, "[")
        start: _Node | None = None
        if not self.at(_OP, ":"):
            start = self.expression(0)
            if not self.at(_OP, ":"):
                self.expect(_BRACKET, "]")
                return _Member(start, optional, bracket.offset)
        self.advance()  # the ':'
        stop = None if self.at(_BRACKET, "]") else self.expression(0)
        self.expect(_BRACKET, "]")
        slice_ = _Slice(start, stop, bracket.offset)
        slice_.optional = optional
        return slice_


def _materialize(first: _Node, steps: list[_Step]) -> _Node:
    return _Fold(first, steps) if steps else first


# -- static result kinds (for "must be bool" checks at load time) -------------------------

_BOOL_OPS: Final = frozenset(
    {"&&", "||", "==", "!=", "<", "<=", ">", ">=", "in", "contains", "startsWith", "endsWith",
     "matches"}
)  # fmt: skip
_ARITHMETIC_RESULT: Final = {
    "+": "a number, string or array",
    "-": "number",
    "*": "number",
    "/": "float",
    "%": "int",
    "**": "float",
    "..": "array",
}


def _result_kind(node: _Node) -> str:
    """What an expression certainly evaluates to ("bool", another kind, or "" if unknown)."""
    if isinstance(node, _Const):
        return _type_name(node.value).replace("<nil>", "nil")
    if isinstance(node, _Array):
        return "array"
    if isinstance(node, _Map):
        return "map"
    if isinstance(node, _Unary):
        return "bool" if node.op == "!" else "number"
    if isinstance(node, _Fold):
        op = node.steps[-1].op
        if op in _BOOL_OPS:
            return "bool"
        return _ARITHMETIC_RESULT.get(op, "")
    if isinstance(node, _BuiltinCall):
        return _BUILTINS[node.name][3]
    if isinstance(node, _PredicateCall):
        return _PREDICATES[node.name][1]
    if isinstance(node, _Let):
        return _result_kind(node.body)
    if isinstance(node, _Conditional):
        yes, no = _result_kind(node.yes), _result_kind(node.no)
        return yes if yes == no else ""
    return ""


# -- public API --------------------------------------------------------------------------


class Expression:
    """A compiled expression; evaluate it as often as needed (it holds no per-run state)."""

    __slots__ = ("_root", "source")

    def __init__(self, source: str, root: _Node) -> None:
        self.source = source
        self._root = root

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def evaluate(
        self, env: Mapping[str, object], *, clock: Callable[[], float] = time.time
    ) -> object:
        """The value of the expression with ``env`` naming its variables and functions.

        ``clock`` gives the Unix time ``now()`` reads (the node's injectable clock).
        Raises :class:`ExpressionError` for any failure, including a Python callable in
        ``env`` that raises.
        """
        try:
            return self._root.ev(_Context(env, clock), None)
        except _Fault as fault:  # a cost overrun raised outside any node's own handler
            raise ExpressionError(str(fault), 0) from None
        except RecursionError:
            raise ExpressionError("data nested too deeply to evaluate", 0) from None
        except ExpressionError:
            raise
        except Exception as exc:
            # A safety net: every failure the interpreter knows of has its own message; one
            # that slips through is still an error of this expression, never a crash.
            raise ExpressionError(
                f"cannot evaluate the expression: {type(exc).__name__}: {exc}", 0
            ) from None

    def evaluate_bool(
        self, env: Mapping[str, object], *, clock: Callable[[], float] = time.time
    ) -> bool:
        """Like :meth:`evaluate`, for expressions that must give true or false."""
        value = self.evaluate(env, clock=clock)
        if not isinstance(value, bool):
            raise ExpressionError(f"expected bool, got {_type_name(value)}", 0)
        return value


def compile_expression(
    source: str, names: Collection[str] | None = None, *, expect_bool: bool = False
) -> Expression:
    """Parse ``source`` into an :class:`Expression`.

    Syntax errors raise :class:`ExpressionError` pointing at the offending token. With
    ``names``, every variable or function the expression uses at its top level (not members
    such as ``.temp`` in ``data.temp``, not built-in functions) must be one of them. With
    ``expect_bool``, an expression that certainly cannot give a bool (``1 + 2``, ``"x"``) is
    refused too.
    """
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(
            f"expression is too long ({len(source)} characters, at most {MAX_SOURCE_LENGTH})",
            MAX_SOURCE_LENGTH,
        )
    parser = _Parser(source)
    try:
        root = parser.parse()
    except RecursionError:  # a safety net: the depth limit should make this unreachable
        raise ExpressionError("expression is nested too deeply", parser.tok.offset) from None
    if names is not None:
        known = set(names)
        for name, offset, is_call in parser.references:
            if name not in known:
                candidates = known | BUILTIN_FUNCTION_NAMES if is_call else known
                raise ExpressionError(
                    f"unknown name {name!r}{did_you_mean(name, candidates)}", offset
                )
    if expect_bool:
        kind = _result_kind(root)
        if kind and kind != "bool":
            raise ExpressionError(f"expected bool, but the expression gives {kind}", 0)
    return Expression(source, root)
