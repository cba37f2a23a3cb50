"""Go ``text/template``, the subset Choria machine manifests use.

Watcher properties in a ``machine.yaml`` (commands, file contents, URLs...) are Go templates that
Choria renders with ``text/template`` against the machine's data and facts. This module parses
that language once into a small tree and renders it many times:

* a lexer turns the text into literal text and the tokens of each ``{{ ... }}`` action (trim
  markers ``{{-``/``-}}`` and ``{{/* comments */}}`` are resolved here);
* a recursive-descent parser builds node objects, checking at parse time what Go checks at parse
  time (unknown functions, undefined variables, unbalanced ``{{end}}``, misplaced ``{{break}}``);
* the nodes evaluate themselves against ``dot`` with Go's semantics: truthiness, pipelines that
  pass the previous value as the last argument, variables scoped to control structures, ``<no
  value>`` for missing map keys, and ``fmt``'s ``%v`` (see :mod:`machinery.lang.gofmt`) for
  printing.

Templates come from manifests and data from facts, so both are bounded: nesting depth, rendered
size and range iterations have hard limits and every failure is a :class:`TemplateError`.

Not supported: ``{{define}}``, ``{{template}}``, ``{{block}}``, method calls on Python objects,
complex numbers and the ``call`` builtin, none of which Choria manifests need.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import math
import unicodedata
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple, NoReturn

from machinery.lang.gofmt import (
    go_format_value,
    go_quote,
    go_sprint,
    go_sprintf,
    go_sprintln,
    go_type_name,
    sorted_map_items,
)

__all__ = [
    "STANDARD_FUNCTIONS",
    "STANDARD_FUNCTION_NAMES",
    "Template",
    "TemplateError",
    "parse_template",
]

_MAX_DEPTH = 100
_MAX_OUTPUT = 1 << 20
_MAX_RANGE_ITERATIONS = 100_000
_SPACE = " \t\r\n"


class TemplateError(ValueError):
    """A template that cannot be parsed or rendered.

    ``offset`` is the 0-based character offset in the template text where the problem is: the
    start of the offending token for syntax errors, the start of the action or command for
    execution errors.
    """

    offset: int

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class _Missing:
    """The value of a missing map key: falsy, printed ``<no value>`` as Go does."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<no value>"


_MISSING = _Missing()
_NO_FINAL = object()  # a pipeline's first command gets no previous value


class _ArgumentError(Exception):
    """A function argument of the wrong type; reported as is, like Go's own type checks."""


# --- lexer ------------------------------------------------------------------------------------


class _Token(NamedTuple):
    kind: str
    text: str
    pos: int
    spaced: bool  # whitespace separates it from the previous token of the action


_KEYWORDS = frozenset(
    {"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"}
)
_OPERAND_KINDS = frozenset(
    {"ident", "dot", "nil", "var", "field", "bool", "number", "char", "(", "string", "rawstring"}
)


_DECIMAL_DIGITS = "0123456789_"
_PREFIX_DIGITS = {"x": "0123456789abcdefABCDEF_", "o": "01234567_", "b": "01_"}


def _is_alnum(ch: str) -> bool:
    return ch == "_" or ch.isalpha() or ch.isdecimal()


def _rune_repr(ch: str) -> str:
    # Go's %#U, which its lexer uses to name a bad character.
    code = ord(ch)
    text = f"U+{code:04X}"
    return f"{text} '{ch}'" if ch.isprintable() else text


class _Lexer:
    """Splits template text into text tokens and the tokens of each action."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.size = len(text)
        self.tokens: list[_Token] = []

    def run(self) -> list[_Token]:
        text, size = self.text, self.size
        pos = 0
        trim = False
        while True:
            if trim:
                while pos < size and text[pos] in _SPACE:
                    pos += 1
            start = text.find("{{", pos)
            if start < 0:
                if pos < size:
                    self.tokens.append(_Token("text", text[pos:], pos, False))
                break
            inner = start + 2
            trim_left = inner + 1 < size and text[inner] == "-" and text[inner + 1] in _SPACE
            end = start
            if trim_left:
                while end > pos and text[end - 1] in _SPACE:
                    end -= 1
                inner += 2
            if end > pos:
                self.tokens.append(_Token("text", text[pos:end], pos, False))
            pos, trim = self.action(start, inner)
        self.tokens.append(_Token("eof", "", size, False))
        return self.tokens

    def right_delim(self, pos: int) -> tuple[int, bool] | None:
        """``(end, trim)`` when a closing ``}}`` or `` -}}`` starts at *pos*."""
        text = self.text
        if pos < self.size and text[pos] in _SPACE and text.startswith("-}}", pos + 1):
            return pos + 4, True
        if text.startswith("}}", pos):
            return pos + 2, False
        return None

    def at_terminator(self, pos: int) -> bool:
        if pos >= self.size:
            return True
        ch = self.text[pos]
        return ch in _SPACE or ch in ".,|:()" or self.text.startswith("}}", pos)

    def action(self, start: int, pos: int) -> tuple[int, bool]:
        """Lex the action opened at *start* (its body begins at *pos*); return where text resumes."""
        text = self.text
        if text.startswith("/*", pos):
            close = text.find("*/", pos + 2)
            if close < 0:
                raise TemplateError("unclosed comment", start)
            delim = self.right_delim(close + 2)
            if delim is None:
                raise TemplateError("comment ends before closing delimiter", start)
            return delim
        self.tokens.append(_Token("{{", "{{", start, False))
        depth = 0
        spaced = False
        while True:
            delim = self.right_delim(pos)
            if delim is not None:
                if depth > 0:
                    raise TemplateError("unclosed left paren", pos)
                self.tokens.append(_Token("}}", "}}", pos, spaced))
                return delim
            if pos >= self.size:
                raise TemplateError("unclosed action", start)
            ch = text[pos]
            if ch in _SPACE:
                pos += 1
                spaced = True
                continue
            begin = pos
            kind, pos = self.token(ch, pos)
            if kind == "(":
                depth += 1
            elif kind == ")":
                depth -= 1
                if depth < 0:
                    raise TemplateError("unexpected right paren", begin)
            value = text[begin + 1 : pos] if kind == "field" else text[begin:pos]
            self.tokens.append(_Token(kind, value, begin, spaced))
            spaced = False

    def token(self, ch: str, pos: int) -> tuple[str, int]:
        """Scan the token starting with *ch* at *pos*: its kind and where it ends."""
        text, size = self.text, self.size
        if ch in "=|(),":
            return ch, pos + 1
        if ch == ":":
            if not text.startswith(":=", pos):
                raise TemplateError("expected :=", pos)
            return ":=", pos + 2
        if ch == '"':
            return "string", self.quoted(pos, '"', "unterminated quoted string")
        if ch == "'":
            return "char", self.quoted(pos, "'", "unterminated character constant")
        if ch == "`":
            close = text.find("`", pos + 1)
            if close < 0:
                raise TemplateError("unterminated raw quoted string", pos)
            return "rawstring", close + 1
        if ch == "$":
            return "var", self.word(pos + 1)
        if ch == "." and not (pos + 1 < size and "0" <= text[pos + 1] <= "9"):
            if self.at_terminator(pos + 1):
                return "dot", pos + 1
            return "field", self.word(pos + 1)
        if ch in "+-." or "0" <= ch <= "9":
            return "number", self.number(pos)
        if _is_alnum(ch):
            end = self.word(pos)
            word = text[pos:end]
            if word in _KEYWORDS:
                return "kw", end
            if word == "nil":
                return "nil", end
            if word in ("true", "false"):
                return "bool", end
            return "ident", end
        if ch < "\x7f" and ch.isprintable():
            return "punct", pos + 1
        raise TemplateError(f"unrecognized character in action: {_rune_repr(ch)}", pos)

    def word(self, pos: int) -> int:
        text, size = self.text, self.size
        while pos < size and _is_alnum(text[pos]):
            pos += 1
        if not self.at_terminator(pos):
            raise TemplateError(f"bad character {_rune_repr(text[pos])}", pos)
        return pos

    def quoted(self, start: int, quote: str, message: str) -> int:
        text, size = self.text, self.size
        pos = start + 1
        while True:
            if pos >= size:
                raise TemplateError(message, start)
            ch = text[pos]
            if ch == "\\":
                if pos + 1 >= size or text[pos + 1] == "\n":
                    raise TemplateError(message, start)
                pos += 2
                continue
            if ch == "\n":
                raise TemplateError(message, start)
            if ch == quote:
                return pos + 1
            pos += 1

    def number(self, start: int) -> int:
        text, size = self.text, self.size

        def accept_run(pos: int, chars: str) -> int:
            while pos < size and text[pos] in chars:
                pos += 1
            return pos

        pos = start
        if pos < size and text[pos] in "+-":
            pos += 1
        digits, exponent = _DECIMAL_DIGITS, "eE"
        if pos < size and text[pos] == "0":
            pos += 1
            prefix = text[pos : pos + 1].lower()
            if prefix in _PREFIX_DIGITS:
                pos += 1
                digits = _PREFIX_DIGITS[prefix]
                exponent = "pP" if prefix == "x" else ""  # only hex floats have an exponent
        pos = accept_run(pos, digits)
        if pos < size and text[pos] == ".":
            pos = accept_run(pos + 1, digits)
        if exponent and pos < size and text[pos] in exponent:
            pos += 1
            if pos < size and text[pos] in "+-":
                pos += 1
            pos = accept_run(pos, _DECIMAL_DIGITS)
        if pos < size and text[pos] == "i":
            pos += 1
        if pos < size and _is_alnum(text[pos]):
            raise TemplateError(f"bad number syntax: {go_quote(text[start : pos + 1])}", start)
        return pos


def _action_end(text: str, start: int) -> int:
    """Index just past the action that opens with ``{{`` at *start* (used by the cmdline splitter)."""
    lexer = _Lexer(text)
    inner = start + 2
    if inner + 1 < len(text) and text[inner] == "-" and text[inner + 1] in _SPACE:
        inner += 2
    # The whitespace a closing trim marker swallows belongs to the text after the action.
    return lexer.action(start, inner)[0]


# --- literals ---------------------------------------------------------------------------------

_SIMPLE_ESCAPES = {
    "a": 7,
    "b": 8,
    "f": 12,
    "n": 10,
    "r": 13,
    "t": 9,
    "v": 11,
    "\\": 92,
}
_HEX = frozenset("0123456789abcdefABCDEF")
_OCTAL = frozenset("01234567")


def _unescape(body: str, pos: int, quote: str) -> tuple[int, bool, int]:
    """Decode the escape after a backslash: ``(value, is_raw_byte, next_pos)``."""
    ch = body[pos] if pos < len(body) else ""
    invalid = ValueError(f"invalid escape sequence \\{ch}")
    if ch in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[ch], False, pos + 1
    if ch == quote:
        return ord(quote), False, pos + 1
    if ch in ("x", "u", "U"):
        width = {"x": 2, "u": 4, "U": 8}[ch]
        digits = body[pos + 1 : pos + 1 + width]
        if len(digits) != width or not set(digits) <= _HEX:
            raise invalid
        value = int(digits, 16)
        if ch == "x":
            return value, True, pos + 1 + width
        if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
            raise invalid
        return value, False, pos + 1 + width
    if ch and "0" <= ch <= "7":
        digits = body[pos : pos + 3]
        if len(digits) != 3 or not set(digits) <= _OCTAL:
            raise invalid
        value = int(digits, 8)
        if value > 255:
            raise invalid
        return value, True, pos + 3
    raise invalid


def _unquote(token: str) -> str:
    """Go's ``strconv.Unquote`` for a double-quoted or raw string literal."""
    quote, body = token[0], token[1:-1]
    if quote == "`":
        return body.replace("\r", "")  # raw strings drop carriage returns in Go
    if "\\" not in body:
        return body
    out = bytearray()
    pos = 0
    while pos < len(body):
        ch = body[pos]
        if ch != "\\":
            out += ch.encode("utf-8", "surrogatepass")
            pos += 1
            continue
        value, raw, pos = _unescape(body, pos + 1, quote)
        if raw:
            out.append(value)
        else:
            out += chr(value).encode("utf-8")
    return out.decode("utf-8", "replace")


def _unquote_char(token: str) -> int:
    body = token[1:-1]
    if not body or body == "'":
        raise ValueError(f"malformed character constant: {token}")
    if body[0] == "\\":
        value, _raw, end = _unescape(body, 1, "'")
    else:
        value, end = ord(body[0]), 1
    if end != len(body):
        raise ValueError(f"malformed character constant: {token}")
    return value


def _underscores_ok(text: str) -> bool:
    # Go allows "_" only between digits, or between a base prefix and a digit.
    saw = "^"
    if text[:1] in ("+", "-"):
        text = text[1:]
    index = 0
    is_hex = False
    if len(text) >= 2 and text[0] == "0" and text[1] in "bBoOxX":
        index = 2
        saw = "0"
        is_hex = text[1] in "xX"
    while index < len(text):
        ch = text[index]
        if "0" <= ch <= "9" or (is_hex and ch in "abcdefABCDEF"):
            saw = "0"
        elif ch == "_":
            if saw != "0":
                return False
            saw = "_"
        else:
            if saw == "_":
                return False
            saw = "!"
        index += 1
    return saw != "_"


def _parse_number(token: str) -> int | float:
    """A Go number literal as text/template sees it: ints stay ints, the rest are float64."""
    illegal = f"illegal number syntax: {go_quote(token)}"
    if token.endswith("i"):
        raise ValueError("complex numbers are not supported")
    if not _underscores_ok(token):
        raise ValueError(illegal)
    text = token.replace("_", "")
    negative = text[:1] == "-"
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body:
        raise ValueError(illegal)
    lower = body.lower()
    integer: int | None = None
    try:
        if lower.startswith(("0x", "0o", "0b")):
            if "." not in lower and not (lower.startswith("0x") and "p" in lower):
                integer = int(body, 0)
        elif body.isdigit():
            # A leading 0 means octal for integers; "08" then fails and is read as a float.
            integer = int(body, 8) if len(body) > 1 and body[0] == "0" else int(body, 10)
    except ValueError:
        integer = None
    if integer is not None:
        integer = -integer if negative else integer
        if not -(1 << 63) <= integer < 1 << 64:
            raise ValueError(f"{token} overflows int")
        return integer
    try:
        if lower.startswith("0x"):
            if "p" not in lower:
                raise ValueError(illegal)
            value = float.fromhex(body)
        else:
            value = float(body)
    except (ValueError, OverflowError):
        raise ValueError(illegal) from None
    if math.isinf(value):
        raise ValueError(illegal)
    value = -value if negative else value
    if value.is_integer() and not any(ch in lower for ch in ".ep"):
        return int(value)
    return value


# --- evaluation state ---------------------------------------------------------------------------


class _Variable:
    __slots__ = ("name", "value")

    def __init__(self, name: str, value: object) -> None:
        self.name = name
        self.value = value


class _State:
    """Everything one render needs: output, variables, functions and the limits' counters."""

    __slots__ = ("escape", "functions", "iterations", "out", "size", "variables")

    def __init__(
        self,
        functions: Mapping[str, Callable[..., object]],
        dot: object,
        escape: Callable[[str], str] | None = None,
    ) -> None:
        self.functions = functions
        self.escape = escape
        self.out: list[str] = []
        self.size = 0
        self.variables = [_Variable("$", dot)]
        self.iterations = 0

    def write(self, text: str, pos: int) -> None:
        self.size += len(text)
        if self.size > _MAX_OUTPUT:
            raise TemplateError("template output too large", pos)
        self.out.append(text)

    def lookup(self, name: str, pos: int) -> object:
        for variable in reversed(self.variables):
            if variable.name == name:
                return variable.value
        raise TemplateError(f"undefined variable: {name}", pos)

    def assign(self, name: str, value: object, pos: int) -> None:
        for variable in reversed(self.variables):
            if variable.name == name:
                variable.value = value
                return
        raise TemplateError(f"undefined variable: {name}", pos)


class _BreakLoop(Exception):
    pass


class _ContinueLoop(Exception):
    pass


def _truth(value: object) -> bool:
    # Go's truth: false, 0, nil and empty strings, slices and maps are false; _MISSING is falsy.
    return bool(value)


def _printable(value: object) -> str:
    if type(value) is str:
        return value
    if value is _MISSING or value is None:
        # Go digs the value out of its interface{}: a nil one (JSON null, a nil dot, a
        # function returning nil) is no value at all.
        return "<no value>"
    return go_format_value(value)


def _fields(value: object, names: tuple[str, ...], pos: int) -> object:
    """Follow a field chain ``.a.b``: map keys on mappings, public attributes on objects."""
    for name in names:
        if type(value) is dict:
            value = value.get(name, _MISSING)
        elif value is _MISSING:
            return _MISSING  # Go keeps going with "no value" through missing keys
        elif value is None:
            raise TemplateError(f"nil pointer evaluating interface {{}}.{name}", pos)
        elif isinstance(value, Mapping):
            value = value.get(name, _MISSING)
        elif name.startswith("_") or isinstance(
            value, str | bytes | bytearray | int | float | list | tuple
        ):
            # Underscore names stay private so templates cannot reach Python internals.
            raise TemplateError(f"can't evaluate field {name} in type {go_type_name(value)}", pos)
        else:
            try:
                value = getattr(value, name)
            except AttributeError:
                raise TemplateError(
                    f"can't evaluate field {name} in type {go_type_name(value)}", pos
                ) from None
            except Exception as exc:  # a property of the data object failed
                raise TemplateError(f"error evaluating field {name}: {exc}", pos) from exc
    return value


# --- expression nodes -------------------------------------------------------------------------


class _Expr:
    """A value-producing node: an operand, a function call or a pipeline."""

    __slots__ = ("pos",)

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def eval(self, st: _State, dot: object) -> object:
        raise NotImplementedError


class _Const(_Expr):
    __slots__ = ("value",)

    def __init__(self, pos: int, value: object) -> None:
        super().__init__(pos)
        self.value = value

    def eval(self, st: _State, dot: object) -> object:
        return self.value


class _Nil(_Const):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        super().__init__(pos, None)


class _Dot(_Expr):
    __slots__ = ()

    def eval(self, st: _State, dot: object) -> object:
        return dot


class _Field(_Expr):
    __slots__ = ("names",)

    def __init__(self, pos: int, names: tuple[str, ...]) -> None:
        super().__init__(pos)
        self.names = names

    def eval(self, st: _State, dot: object) -> object:
        return _fields(dot, self.names, self.pos)


class _Var(_Expr):
    __slots__ = ("name", "names")

    def __init__(self, pos: int, name: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(pos)
        self.name = name
        self.names = names

    def eval(self, st: _State, dot: object) -> object:
        value = st.lookup(self.name, self.pos)
        return _fields(value, self.names, self.pos) if self.names else value


class _Chain(_Expr):
    __slots__ = ("base", "names")

    def __init__(self, pos: int, base: _Expr, names: tuple[str, ...]) -> None:
        super().__init__(pos)
        self.base = base
        self.names = names

    def eval(self, st: _State, dot: object) -> object:
        return _fields(self.base.eval(st, dot), self.names, self.pos)


class _Fail(_Expr):
    """A command Go rejects only when it runs, such as ``{{ .x 1 }}``: fail when evaluated."""

    __slots__ = ("message",)

    def __init__(self, pos: int, message: str) -> None:
        super().__init__(pos)
        self.message = message

    def eval(self, st: _State, dot: object) -> object:
        raise TemplateError(self.message, self.pos)

    def apply(self, st: _State, dot: object, final: object) -> object:
        raise TemplateError(self.message, self.pos)


def _arity_message(name: str, function: Callable[..., object], count: int) -> str | None:
    """Go's "wrong number of args" message when *count* arguments do not fit *function*."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*([None] * count))
    except TypeError:
        pass
    else:
        return None
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = sum(1 for p in positional if p.default is p.empty)
    variadic = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    want = f"at least {required}" if variadic else str(required)
    return f"wrong number of args for {name}: want {want} got {count}"


class _Call(_Expr):
    """A function call; later pipeline stages get the previous value as the last argument."""

    __slots__ = ("args", "constant_args", "name")

    def __init__(self, pos: int, name: str, args: tuple[_Expr, ...]) -> None:
        super().__init__(pos)
        self.name = name
        self.args = args
        # Literal-only arguments (the usual `lookup "facts.x" "default"`) are computed once.
        self.constant_args: tuple[object, ...] | None = None
        values: list[object] = []
        for arg in args:
            if not isinstance(arg, _Const):
                break
            values.append(arg.value)
        else:
            self.constant_args = tuple(values)

    def eval(self, st: _State, dot: object) -> object:
        return self.apply(st, dot, _NO_FINAL)

    def apply(self, st: _State, dot: object, final: object) -> object:
        name = self.name
        function = st.functions.get(name)
        if function is None:
            function = STANDARD_FUNCTIONS.get(name)
            if function is None:
                raise TemplateError(f"function {go_quote(name)} not defined", self.pos)
        if function is _fn_and or function is _fn_or:
            return self.short_circuit(st, dot, final, function is _fn_or)
        if self.constant_args is not None:
            args = list(self.constant_args)
        else:
            args = [None if (v := arg.eval(st, dot)) is _MISSING else v for arg in self.args]
        if final is not _NO_FINAL:
            args.append(None if final is _MISSING else final)
        try:
            result = function(*args)
        except _ArgumentError as exc:
            raise TemplateError(str(exc), self.pos) from None
        except Exception as exc:
            message = None
            if isinstance(exc, TypeError):
                message = _arity_message(name, function, len(args))
            raise TemplateError(message or f"error calling {name}: {exc}", self.pos) from exc
        if type(result) is str and len(result) > _MAX_OUTPUT:
            raise TemplateError("template output too large", self.pos)
        return result

    def short_circuit(self, st: _State, dot: object, final: object, is_or: bool) -> object:
        # Go evaluates and/or arguments lazily and returns the value that decided the result.
        count = len(self.args) + (final is not _NO_FINAL)
        if count == 0:
            raise TemplateError(
                f"wrong number of args for {self.name}: want at least 1 got 0", self.pos
            )
        value: object = None
        for arg in self.args:
            value = arg.eval(st, dot)
            if _truth(value) == is_or:
                return value
        if final is not _NO_FINAL:
            value = final
        return value


class _Pipe(_Expr):
    """``$x := cmd | cmd | cmd``: the commands run in order, then variables are declared/set."""

    __slots__ = ("decls", "first", "is_assign", "rest")

    def __init__(
        self,
        pos: int,
        first: _Expr,
        rest: tuple[_Call | _Fail, ...],
        decls: tuple[str, ...],
        is_assign: bool,
    ) -> None:
        super().__init__(pos)
        self.first = first
        self.rest = rest
        self.decls = decls
        self.is_assign = is_assign

    def eval(self, st: _State, dot: object) -> object:
        value = self.first.eval(st, dot)
        for command in self.rest:
            value = command.apply(st, dot, value)
        if self.decls:
            if self.is_assign:
                for name in self.decls:
                    st.assign(name, value, self.pos)
            else:
                st.variables.extend(_Variable(name, value) for name in self.decls)
        return value


# --- statement nodes --------------------------------------------------------------------------


class _Node:
    __slots__ = ("pos",)

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def run(self, st: _State, dot: object) -> None:
        raise NotImplementedError


def _run(nodes: tuple[_Node, ...], st: _State, dot: object) -> None:
    for node in nodes:
        node.run(st, dot)


class _Text(_Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        super().__init__(pos)
        self.text = text

    def run(self, st: _State, dot: object) -> None:
        st.write(self.text, self.pos)


class _Action(_Node):
    __slots__ = ("pipe", "prints")

    def __init__(self, pos: int, pipe: _Pipe) -> None:
        super().__init__(pos)
        self.pipe = pipe
        self.prints = not pipe.decls  # `{{ $x := ... }}` prints nothing

    def run(self, st: _State, dot: object) -> None:
        value = self.pipe.eval(st, dot)
        if self.prints:
            try:
                text = _printable(value)
            except RecursionError:
                raise TemplateError("value nested too deeply to print", self.pos) from None
            if st.escape is not None:
                text = st.escape(text)
            st.write(text, self.pos)


class _If(_Node):
    """``if`` and ``with`` with their ``else if``/``else with`` chains flattened into branches."""

    __slots__ = ("branches", "else_body", "is_with")

    def __init__(
        self,
        pos: int,
        branches: tuple[tuple[_Pipe, tuple[_Node, ...]], ...],
        else_body: tuple[_Node, ...],
        is_with: bool,
    ) -> None:
        super().__init__(pos)
        self.branches = branches
        self.else_body = else_body
        self.is_with = is_with

    def run(self, st: _State, dot: object) -> None:
        mark = len(st.variables)
        try:
            for pipe, body in self.branches:
                value = pipe.eval(st, dot)
                if _truth(value):
                    _run(body, st, value if self.is_with else dot)
                    return
            _run(self.else_body, st, dot)
        finally:
            del st.variables[mark:]


def _range_items(value: object, declared: int, pos: int) -> Iterable[tuple[object, object]]:
    if value is None or value is _MISSING:
        return ()
    if isinstance(value, list | tuple):
        return enumerate(value)
    if isinstance(value, Mapping):
        return sorted_map_items(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if declared > 1:
            raise TemplateError(f"can't use {value} to iterate over more than one variable", pos)
        return ((i, i) for i in range(value))
    raise TemplateError(f"range can't iterate over {go_format_value(value)}", pos)


class _Range(_Node):
    __slots__ = ("body", "else_body", "pipe")

    def __init__(
        self, pos: int, pipe: _Pipe, body: tuple[_Node, ...], else_body: tuple[_Node, ...]
    ) -> None:
        super().__init__(pos)
        self.pipe = pipe
        self.body = body
        self.else_body = else_body

    def run(self, st: _State, dot: object) -> None:
        mark = len(st.variables)
        try:
            value = self.pipe.eval(st, dot)
            decls = self.pipe.decls
            top = len(st.variables)
            ran = False
            for key, element in _range_items(value, len(decls), self.pos):
                ran = True
                st.iterations += 1
                if st.iterations > _MAX_RANGE_ITERATIONS:
                    raise TemplateError("too many range iterations", self.pos)
                if decls:
                    self.bind(st, top, key, element)
                try:
                    _run(self.body, st, element)
                except _ContinueLoop:
                    pass
                except _BreakLoop:
                    break
                finally:
                    del st.variables[top:]
            if not ran:
                _run(self.else_body, st, dot)
        finally:
            del st.variables[mark:]

    def bind(self, st: _State, top: int, key: object, element: object) -> None:
        decls = self.pipe.decls
        if self.pipe.is_assign:
            if len(decls) > 1:
                st.assign(decls[0], key, self.pos)
                st.assign(decls[1], element, self.pos)
            else:
                st.assign(decls[0], element, self.pos)
        else:
            # The pipeline pushed the declared variables; the last one gets the element.
            st.variables[top - 1].value = element
            if len(decls) > 1:
                st.variables[top - 2].value = key


class _Break(_Node):
    __slots__ = ()

    def run(self, st: _State, dot: object) -> None:
        raise _BreakLoop


class _Continue(_Node):
    __slots__ = ()

    def run(self, st: _State, dot: object) -> None:
        raise _ContinueLoop


# --- parser -----------------------------------------------------------------------------------


class _Ident:
    """A function name seen as an operand; it becomes a call once its arguments are known."""

    __slots__ = ("name", "pos")

    def __init__(self, pos: int, name: str) -> None:
        self.pos = pos
        self.name = name


def _source(token: _Token) -> str:
    return "." + token.text if token.kind == "field" else token.text


def _describe(token: _Token) -> str:
    if token.kind == "eof":
        return "EOF"
    if token.kind in ("{{", "}}"):
        return "delimiter " + go_quote(token.text)
    if token.kind == "kw":
        return f"<{token.text}>"
    return go_quote(_source(token))


class _Parser:
    def __init__(self, text: str, functions: Collection[str]) -> None:
        self.text = text
        self.functions = functions
        self.tokens = _Lexer(text).run()
        self.index = 0
        self.variables: list[str] = ["$"]
        self.depth = 0
        self.range_depth = 0

    # token access

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def next(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "eof":
            self.index += 1
        return token

    def fail(self, message: str, pos: int) -> NoReturn:
        raise TemplateError(message, pos)

    def expect_close(self, context: str) -> None:
        token = self.next()
        if token.kind != "}}":
            self.fail(f"unexpected {_describe(token)} in {context}", token.pos)

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            self.fail("template nesting too deep", pos)

    # structure

    def parse(self) -> tuple[_Node, ...]:
        nodes, end = self.item_list()
        if end is not None:
            word, token = end
            self.fail(f"unexpected {{{{{word}}}}}", token.pos)
        return nodes

    def item_list(self) -> tuple[tuple[_Node, ...], tuple[str, _Token] | None]:
        """Parse text and actions up to ``{{end}}``, ``{{else}}`` or the end of the text."""
        nodes: list[_Node] = []
        while True:
            token = self.next()
            if token.kind == "eof":
                return tuple(nodes), None
            if token.kind == "text":
                nodes.append(_Text(token.pos, token.text))
                continue
            first = self.peek()
            if first.kind != "kw":
                nodes.append(_Action(token.pos, self.pipeline("command", "}}")))
                continue
            self.next()
            word = first.text
            if word == "end":
                self.expect_close("end")
                return tuple(nodes), ("end", token)
            if word == "else":
                return tuple(nodes), ("else", token)
            if word in ("if", "with"):
                nodes.append(self.if_or_with(token, word))
            elif word == "range":
                nodes.append(self.range_(token))
            elif word in ("break", "continue"):
                if self.range_depth == 0:
                    self.fail(f"{{{{{word}}}}} outside {{{{range}}}}", first.pos)
                self.expect_close(f"{{{{{word}}}}}")
                nodes.append(_Break(token.pos) if word == "break" else _Continue(token.pos))
            else:
                self.fail(f"{{{{{word}}}}} is not supported", first.pos)

    def body(self, opener: _Token, context: str) -> tuple[tuple[_Node, ...], tuple[str, _Token]]:
        nodes, end = self.item_list()
        if end is None:
            self.fail(f"unexpected EOF: {{{{{context}}}}} has no matching {{{{end}}}}", opener.pos)
        return nodes, end

    def else_body(self, opener: _Token, context: str) -> tuple[_Node, ...]:
        self.expect_close("else")
        nodes, end = self.body(opener, context)
        if end[0] != "end":
            self.fail("expected {{end}}; found {{else}}", end[1].pos)
        return nodes

    def if_or_with(self, opener: _Token, context: str) -> _If:
        self.enter(opener.pos)
        mark = len(self.variables)
        branches: list[tuple[_Pipe, tuple[_Node, ...]]] = []
        else_nodes: tuple[_Node, ...] = ()
        pipe = self.pipeline(context, "}}")
        while True:
            nodes, (word, _token) = self.body(opener, context)
            branches.append((pipe, nodes))
            if word == "end":
                break
            following = self.peek()
            if following.kind == "kw" and following.text == context:
                # {{else if}} / {{else with}}: another branch of the same chain.
                self.next()
                pipe = self.pipeline(context, "}}")
                continue
            else_nodes = self.else_body(opener, context)
            break
        del self.variables[mark:]
        self.depth -= 1
        return _If(opener.pos, tuple(branches), else_nodes, context == "with")

    def range_(self, opener: _Token) -> _Range:
        self.enter(opener.pos)
        mark = len(self.variables)
        pipe = self.pipeline("range", "}}", max_decls=2)
        self.range_depth += 1
        nodes, (word, _token) = self.body(opener, "range")
        self.range_depth -= 1
        else_nodes: tuple[_Node, ...] = ()
        if word == "else":
            else_nodes = self.else_body(opener, "range")
        del self.variables[mark:]
        self.depth -= 1
        return _Range(opener.pos, pipe, nodes, else_nodes)

    # pipelines

    def declarations(self, context: str, max_decls: int) -> tuple[list[_Token], bool]:
        if self.peek().kind != "var" or self.peek(1).kind not in (":=", "=", ","):
            return [], False
        names = [self.next()]
        while self.peek().kind == ",":
            comma = self.next()
            if len(names) >= max_decls:
                self.fail(f"too many declarations in {context}", comma.pos)
            variable = self.next()
            if variable.kind != "var":
                self.fail("range can only initialize variables", variable.pos)
            names.append(variable)
        operator = self.next()
        if operator.kind not in (":=", "="):
            self.fail(f"unexpected {_describe(operator)} in {context}", operator.pos)
        is_assign = operator.kind == "="
        if is_assign:
            for variable in names:
                if variable.text not in self.variables:
                    self.fail(f"undefined variable {go_quote(variable.text)}", variable.pos)
        return names, is_assign

    def pipeline(self, context: str, end: str, max_decls: int = 1) -> _Pipe:
        start = self.peek()
        names, is_assign = self.declarations(context, max_decls)
        commands: list[list[tuple[_Expr | _Ident, _Token]]] = []
        while True:
            token = self.peek()
            if token.kind == end:
                self.next()
                break
            if token.kind not in _OPERAND_KINDS:
                self.fail(f"unexpected {_describe(token)} in {context}", token.pos)
            commands.append(self.command(end))
        if not commands:
            self.fail(f"missing value for {context}", start.pos)
        # Declared only now, so that `$x := $x` cannot read the variable it declares.
        if names and not is_assign:
            self.variables.extend(variable.text for variable in names)
        first = self.build(commands[0], 0)
        rest: list[_Call | _Fail] = []
        for stage, operands in enumerate(commands[1:], start=2):
            built = self.build(operands, stage)
            if not isinstance(built, _Call | _Fail):
                built = _Fail(
                    built.pos, f"can't give argument to non-function {_source(operands[0][1])}"
                )
            rest.append(built)
        decls = tuple(variable.text for variable in names)
        return _Pipe(start.pos, first, tuple(rest), decls, is_assign)

    def command(self, end: str) -> list[tuple[_Expr | _Ident, _Token]]:
        operands: list[tuple[_Expr | _Ident, _Token]] = []
        while True:
            token = self.peek()
            operand = self.operand()
            if operand is None:
                self.fail(f"unexpected {_describe(token)} in operand", token.pos)
            operands.append((operand, token))
            following = self.peek()
            if following.kind == end:
                return operands
            if following.kind == "|":
                self.next()
                return operands
            if not following.spaced:
                self.fail(f"unexpected {_describe(following)} in operand", following.pos)

    def build(self, operands: list[tuple[_Expr | _Ident, _Token]], stage: int) -> _Expr:
        """Turn a command's operands into a call, or a plain operand when it is not a function."""
        head, token = operands[0]
        if isinstance(head, _Ident):
            return _Call(head.pos, head.name, tuple(self.argument(op) for op, _ in operands[1:]))
        if stage > 1 and isinstance(head, _Const | _Dot):
            self.fail(f"non executable command in pipeline stage {stage}", token.pos)
        if isinstance(head, _Nil):
            return _Fail(token.pos, "nil is not a command")
        if len(operands) > 1:
            return _Fail(token.pos, f"can't give argument to non-function {_source(token)}")
        return head

    @staticmethod
    def argument(operand: _Expr | _Ident) -> _Expr:
        if isinstance(operand, _Ident):
            return _Call(operand.pos, operand.name, ())  # a function used as an argument is called
        return operand

    def operand(self) -> _Expr | _Ident | None:
        token = self.peek()
        kind = token.kind
        node: _Expr | _Ident
        if kind == "(":
            self.next()
            self.enter(token.pos)
            node = self.pipeline("parenthesized pipeline", ")")
            self.depth -= 1
        elif kind not in _OPERAND_KINDS:
            return None
        else:
            self.next()
            node = self.term(token)
        following = self.peek()
        if following.kind != "field" or following.spaced:
            return node
        names: list[str] = []
        while self.peek().kind == "field" and not self.peek().spaced:
            names.append(self.next().text)
        if isinstance(node, _Field):
            return _Field(node.pos, node.names + tuple(names))
        if isinstance(node, _Var):
            return _Var(node.pos, node.name, node.names + tuple(names))
        if isinstance(node, _Const | _Dot):
            self.fail(f"unexpected . after term {go_quote(token.text)}", following.pos)
        base = self.argument(node)
        return _Chain(token.pos, base, tuple(names))

    def term(self, token: _Token) -> _Expr | _Ident:
        kind, text, pos = token.kind, token.text, token.pos
        if kind == "ident":
            if text not in self.functions:
                self.fail(f"function {go_quote(text)} not defined", pos)
            return _Ident(pos, text)
        if kind == "dot":
            return _Dot(pos)
        if kind == "nil":
            return _Nil(pos)
        if kind == "var":
            if text not in self.variables:
                self.fail(f"undefined variable {go_quote(text)}", pos)
            return _Var(pos, text)
        if kind == "field":
            return _Field(pos, (text,))
        if kind == "bool":
            return _Const(pos, text == "true")
        try:
            if kind == "number":
                return _Const(pos, _parse_number(text))
            if kind == "char":
                return _Const(pos, _unquote_char(text))
            return _Const(pos, _unquote(text))
        except ValueError as exc:
            if kind == "string":
                self.fail(f"bad string literal {text}: {exc}", pos)
            self.fail(str(exc), pos)


# --- functions --------------------------------------------------------------------------------


def _fn_and(arg: object, *args: object) -> object:
    for value in (arg, *args):
        if not _truth(value):
            return value
    return args[-1] if args else arg


def _fn_or(arg: object, *args: object) -> object:
    for value in (arg, *args):
        if _truth(value):
            return value
    return args[-1] if args else arg


def _fn_not(arg: object) -> bool:
    return not _truth(arg)


def _byte_length(text: str) -> int:
    # Go strings are UTF-8 bytes: len, index and slice count bytes, not characters.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _fn_len(item: object) -> int:
    if isinstance(item, str):
        return _byte_length(item)
    if isinstance(item, list | tuple | bytes | bytearray | Mapping):
        return len(item)
    if item is None:
        raise ValueError("len of nil pointer")
    raise ValueError(f"len of type {go_type_name(item)}")


def _index_arg(index: object, cap: int) -> int:
    if index is None:
        raise ValueError("cannot index slice/array with nil")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"cannot index slice/array with type {go_type_name(index)}")
    if index < 0 or index > cap:
        raise ValueError(f"index out of range: {index}")
    return index


def _fn_index(item: object, *indexes: object) -> object:
    if item is None:
        raise ValueError("index of untyped nil")
    for index in indexes:
        if item is None or item is _MISSING:
            raise ValueError("index of nil pointer")
        if isinstance(item, str):
            item = item.encode("utf-8", "surrogatepass")
        if isinstance(item, list | tuple | bytes | bytearray):
            position = _index_arg(index, len(item))
            if position >= len(item):
                raise ValueError(f"index out of range: {position}")
            item = item[position]
        elif isinstance(item, Mapping):
            # JSON objects are map[string]interface{}: the key must be a string, and a missing
            # key gives the zero value, a nil interface, which Go prints as <no value>.
            if index is None or index is _MISSING:
                raise ValueError("value is nil; should be of type string")
            if not isinstance(index, str):
                raise ValueError(f"value has type {go_type_name(index)}; should be string")
            item = item.get(index, _MISSING)
        else:
            raise ValueError(f"can't index item of type {go_type_name(item)}")
    return item


def _fn_slice(item: object, *indexes: object) -> object:
    if item is None:
        raise ValueError("slice of untyped nil")
    if len(indexes) > 3:
        raise ValueError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise ValueError("cannot 3-index slice a string")
        data: str | bytes | list[object] | tuple[object, ...] = (
            item if item.isascii() else item.encode("utf-8", "surrogatepass")
        )
    elif isinstance(item, list | tuple | bytes | bytearray):
        data = bytes(item) if isinstance(item, bytearray) else item
    else:
        raise ValueError(f"can't slice item of type {go_type_name(item)}")
    cap = len(data)
    bounds = [0, cap, cap]
    for position, index in enumerate(indexes):
        bounds[position] = _index_arg(index, cap)
    if bounds[0] > bounds[1]:
        raise ValueError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    if len(indexes) == 3 and bounds[1] > bounds[2]:
        raise ValueError(f"invalid slice index: {bounds[1]} > {bounds[2]}")
    result = data[bounds[0] : bounds[1]]
    if isinstance(item, str) and isinstance(result, bytes):
        return result.decode("utf-8", "replace")
    return result


_NIL, _BOOL, _NUMBER, _STRING, _OTHER, _UNCOMPARABLE = range(6)


def _kind(value: object) -> int:
    if value is None or value is _MISSING:
        return _NIL
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int | float):
        return _NUMBER
    if isinstance(value, str):
        return _STRING
    if isinstance(value, list | tuple | Mapping | bytes | bytearray | set):
        return _UNCOMPARABLE
    return _OTHER


def _fn_eq(arg1: object, *args: object) -> bool:
    if not args:
        raise ValueError("missing argument for comparison")
    kind1 = _kind(arg1)
    if kind1 == _UNCOMPARABLE:
        raise ValueError("invalid type for comparison")
    for arg in args:
        kind2 = _kind(arg)
        if kind2 == _UNCOMPARABLE:
            raise ValueError("invalid type for comparison")
        if kind1 != kind2:
            if _NIL in (kind1, kind2):
                continue  # nil equals nothing but nil, without an error (as in Go)
            raise ValueError("incompatible types for comparison")
        if kind1 == _NIL or arg1 == arg:
            return True
    return False


def _fn_ne(arg1: object, arg2: object) -> bool:
    return not _fn_eq(arg1, arg2)


def _fn_lt(arg1: object, arg2: object) -> bool:
    kind1, kind2 = _kind(arg1), _kind(arg2)
    basic = (_BOOL, _NUMBER, _STRING)
    if kind1 not in basic or kind2 not in basic:
        raise ValueError("invalid type for comparison")
    if kind1 != kind2:
        raise ValueError("incompatible types for comparison")
    if kind1 == _BOOL:
        raise ValueError("invalid type for comparison")
    return bool(arg1 < arg2)  # type: ignore[operator]


def _fn_le(arg1: object, arg2: object) -> bool:
    return _fn_lt(arg1, arg2) or _fn_eq(arg1, arg2)


def _fn_gt(arg1: object, arg2: object) -> bool:
    return not _fn_le(arg1, arg2)


def _fn_ge(arg1: object, arg2: object) -> bool:
    return not _fn_lt(arg1, arg2)


def _expect_string(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise _ArgumentError("invalid value; expected string")
    raise _ArgumentError(f"wrong type for value; expected string; got {go_type_name(value)}")


def _fn_printf(format: object, *args: object) -> str:
    return go_sprintf(_expect_string(format), *args)


def _plain_text(args: tuple[object, ...]) -> str:
    # Go's html, js and urlquery format their arguments like print unless given one string.
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return go_sprint(*args)


_HTML_ESCAPES = str.maketrans(
    {'"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\0": "\ufffd"}
)
_JS_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "<": "\\u003C",
    ">": "\\u003E",
    "&": "\\u0026",
    "=": "\\u003D",
}


def _fn_html(*args: object) -> str:
    return _plain_text(args).translate(_HTML_ESCAPES)


def _fn_js(*args: object) -> str:
    out: list[str] = []
    for ch in _plain_text(args):
        code = ord(ch)
        if ch in _JS_ESCAPES:
            out.append(_JS_ESCAPES[ch])
        elif code < 0x20:
            out.append(f"\\u{code:04X}")
        elif code < 0x80 or ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{code:04X}")
    return "".join(out)


def _fn_urlquery(*args: object) -> str:
    return urllib.parse.quote_plus(_plain_text(args), safe="", errors="replace")


def _simple_case(ch: str, mapped: str, fallback: str) -> str:
    # Go maps case rune by rune (simple case mapping); Python's full mapping may expand a
    # character (ß -> SS), which Go never does.
    if len(mapped) == 1:
        return mapped
    return fallback if len(fallback) == 1 else ch


def _fn_to_upper(value: object) -> str:
    text = _expect_string(value)
    if text.isascii():
        return text.upper()
    return "".join(_simple_case(ch, ch.upper(), ch.title()) for ch in text)


def _fn_to_lower(value: object) -> str:
    text = _expect_string(value)
    if text.isascii():
        return text.lower()
    return "".join(_simple_case(ch, ch.lower(), ch.lower()[:1]) for ch in text)


# Word classes of golang.org/x/text/cases' approximation of Unicode word breaking (UAX #29):
# letters, digits, connectors and marks join a word; "mid" characters (an apostrophe, a period,
# a colon, format characters) join it once but two in a row break it; anything else breaks it.
_LETTER, _MID, _BREAK = 0, 1, 2
_MID_CHARACTERS = frozenset(
    "'.:\u00b7\u0387\u055f\u05f4\u2018\u2019\u2024\u2027\ufe13\ufe52\ufe55\uff07\uff0e\uff1a"
)


def _word_class(ch: str) -> int:
    if ch in _MID_CHARACTERS:
        return _MID
    category = unicodedata.category(ch)
    if category == "Cf":
        return _MID
    if category[0] in "LM" or category in ("Nd", "Nl", "Pc"):
        return _LETTER
    return _BREAK


def _is_cased(ch: str) -> bool:
    return unicodedata.category(ch) in ("Lu", "Ll", "Lt") or ch.lower() != ch or ch.upper() != ch


def _fn_title(value: object) -> str:
    """Choria's ``Title``/``Capitalize``: ``cases.Title(language.AmericanEnglish)``.

    The first cased letter of every word is title-cased and the rest of the word lower-cased
    (``hELLO wORLD`` is ``Hello World``); ``o'neil`` and ``v1.2`` are one word each, a digit does
    not start a word (``3rd`` is ``3Rd``, as in Go).
    """
    text = _expect_string(value)
    out: list[str] = []
    in_word = False
    was_mid = False
    for index, ch in enumerate(text):
        kind = _word_class(ch)
        if was_mid and kind == _MID:
            in_word = False  # two "mid" characters in a row end the word
        if _is_cased(ch):
            if not in_word:
                out.append(ch.title())
                in_word = True
            else:
                out.append(_lower_in_word(text, index))
        else:
            out.append(ch)
            if kind == _BREAK:
                in_word = False
        was_mid = kind == _MID
    return "".join(out)


def _lower_in_word(text: str, index: int) -> str:
    ch = text[index]
    if ch != "\u03a3":
        return ch.lower()
    # Greek capital sigma: final form unless a cased letter follows (after case-ignorables).
    # By position, not over a slice: a copy of the rest per sigma made long text quadratic.
    for position in range(index + 1, len(text)):
        following = text[position]
        if _is_cased(following):
            return "\u03c3"
        ignorable = following in _MID_CHARACTERS or unicodedata.category(following) in (
            "Mn",
            "Me",
            "Cf",
            "Lm",
            "Sk",
        )
        if not ignorable:
            break
    return "\u03c2"


def _fn_strings_join(items: object) -> str:
    """Choria's ``StringsJoin``: the elements of a list joined with ", "."""
    if items is None:
        return ""
    if isinstance(items, str):
        return items  # a single string is a one-element list
    if isinstance(items, list | tuple):
        return ", ".join(go_format_value(item) for item in items)
    raise _ArgumentError(f"wrong type for value; expected []string; got {go_type_name(items)}")


def _fn_base64_encode(value: object) -> str:
    data = _expect_string(value).encode("utf-8", "surrogatepass")
    return base64.b64encode(data).decode("ascii")


def _fn_base64_decode(value: object) -> str:
    # Go's StdEncoding ignores line breaks but insists on the alphabet and padding.
    text = _expect_string(value).replace("\r", "").replace("\n", "")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise ValueError(f"illegal base64 data: {exc}") from None
    return data.decode("utf-8", "replace")


STANDARD_FUNCTIONS: Mapping[str, Callable[..., object]] = MappingProxyType(
    {
        "and": _fn_and,
        "or": _fn_or,
        "not": _fn_not,
        "eq": _fn_eq,
        "ne": _fn_ne,
        "lt": _fn_lt,
        "le": _fn_le,
        "gt": _fn_gt,
        "ge": _fn_ge,
        "len": _fn_len,
        "index": _fn_index,
        "slice": _fn_slice,
        "print": go_sprint,
        "printf": _fn_printf,
        "println": go_sprintln,
        "html": _fn_html,
        "js": _fn_js,
        "urlquery": _fn_urlquery,
        "ToUpper": _fn_to_upper,
        "ToLower": _fn_to_lower,
        "Title": _fn_title,
        "Capitalize": _fn_title,
        "StringsJoin": _fn_strings_join,
        "StringJoin": _fn_strings_join,
        "Base64Encode": _fn_base64_encode,
        "Base64Decode": _fn_base64_decode,
    }
)
"""Go's template built-ins and Choria's string helpers, by name."""

STANDARD_FUNCTION_NAMES: frozenset[str] = frozenset(STANDARD_FUNCTIONS) | {"lookup"}
"""The names templates may call by default: :data:`STANDARD_FUNCTIONS` plus ``lookup``, which the
caller supplies at render time bound to the machine's data and facts."""


# --- the public API ---------------------------------------------------------------------------


class Template:
    """A parsed template: create it with :func:`parse_template`, render it any number of times."""

    __slots__ = ("_constant", "_nodes", "is_static", "source")

    source: str
    """The template text as given to :func:`parse_template`."""
    is_static: bool
    """True when the text has no actions at all: :meth:`render` returns it unchanged."""

    def __init__(self, source: str, nodes: tuple[_Node, ...]) -> None:
        self.source = source
        self._nodes = nodes
        self.is_static = "{{" not in source
        # Templates that only had comments or trimming still render to fixed text.
        texts = [node.text for node in nodes if isinstance(node, _Text)]
        self._constant = "".join(texts) if len(texts) == len(nodes) else None

    def render(
        self,
        dot: object,
        functions: Mapping[str, Callable[..., object]],
        escape: Callable[[str], str] | None = None,
    ) -> str:
        """Render with *dot* as ``.`` (and ``$``).

        *functions* maps names to callables; names it lacks fall back to
        :data:`STANDARD_FUNCTIONS`, so a caller usually passes just ``{"lookup": ...}``.
        *escape*, when given, is applied to the printed value of every action but not to the
        literal text, as Go's ``html/template`` escapes interpolated values.
        Raises :class:`TemplateError` when execution fails or exceeds a limit.
        """
        if self._constant is not None:
            return self._constant
        if dot is None:
            dot = _MISSING  # Go's Execute(w, nil): an invalid dot, "no value" through any field
        st = _State(functions, dot, escape)
        for node in self._nodes:
            node.run(st, dot)
        return "".join(st.out)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def __eq__(self, other: object) -> bool:
        # The same source always parses to the same tree, so it identifies the template.
        if not isinstance(other, Template):
            return NotImplemented
        return self.source == other.source

    def __hash__(self) -> int:
        return hash(self.source)


def parse_template(text: str, functions: Collection[str] = STANDARD_FUNCTION_NAMES) -> Template:
    """Parse Go template *text*; *functions* are the function names it may call.

    The default is :data:`STANDARD_FUNCTION_NAMES` (the built-ins, Choria's helpers and
    ``lookup``). Raises :class:`TemplateError` with the offset of the problem for syntax errors,
    unknown functions, undefined variables, unbalanced ``{{end}}`` and templates nested deeper
    than 100 levels.
    """
    if "{{" not in text:
        return Template(text, (_Text(0, text),) if text else ())
    return Template(text, _Parser(text, functions).parse())
