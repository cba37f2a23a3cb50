"""Go ``fmt`` formatting for the values Choria templates work with.

Choria renders manifest templates with Go's ``text/template``, so every value that reaches the
output goes through Go's ``fmt`` package: ``%v`` for plain ``{{ .x }}`` actions, ``fmt.Sprintf``
for ``printf``, ``fmt.Sprint`` for ``print``. A manifest that works in Choria must render the same
text here, so this module reproduces ``fmt``'s rules for the JSON-like values Python code hands to
templates: ``None`` (Go's ``nil``), ``bool``, ``int``, ``float`` (``float64``), ``str``, ``bytes``
(``[]byte``), lists and tuples (``[]interface{}``) and mappings (``map[string]interface{}``).

The formatting follows ``fmt``'s documented behaviour verb by verb, including its quirks (``%v``
of ``1e6`` is ``1e+06``, ``%+v`` does not add a sign, a wrong verb prints ``%!d(string=hi)``).
Widths and precisions are bounded by :data:`MAX_WIDTH` so that a hostile format string cannot make
the process allocate gigabytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

__all__ = [
    "MAX_WIDTH",
    "go_format_value",
    "go_json_float",
    "go_quote",
    "go_sprint",
    "go_sprintf",
    "go_sprintln",
    "go_type_name",
    "sorted_map_items",
]

MAX_WIDTH = 10_000
"""Largest width or precision :func:`go_sprintf` accepts; beyond it a ``ValueError`` is raised."""

_MAX_OUTPUT = 1 << 24  # what one go_sprintf call may produce; far beyond any real use
_MASK64 = (1 << 64) - 1
_MAX_RUNE = 0x10FFFF
_SIMPLE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def go_type_name(value: object) -> str:
    """The Go type name ``fmt`` would print for *value* (``%T`` and bad-verb messages)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes | bytearray):
        return "[]uint8"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    return type(value).__name__


def _key_order(key: object) -> tuple[int, object]:
    # Go sorts map keys of mixed dynamic types by type first, then by value; numbers compare
    # numerically and strings bytewise (code point order is the same for valid UTF-8).
    if key is None:
        return (0, 0)
    if isinstance(key, bool):
        return (1, int(key))
    if isinstance(key, int | float):
        return (2, key)
    if isinstance(key, str):
        return (3, key)
    return (4, go_format_value(key))


def sorted_map_items(mapping: Mapping[object, object]) -> list[tuple[object, object]]:
    """The items of *mapping* in the order Go prints and ranges over map keys."""
    items = list(mapping.items())
    try:
        # The common case, all keys strings, sorts directly; mixed keys need the type order.
        items.sort(key=lambda item: item[0])  # type: ignore[arg-type, return-value]
    except TypeError:
        items.sort(key=lambda item: _key_order(item[0]))
    return items


def go_quote(text: str, *, ascii_only: bool = False, quote: str = '"') -> str:
    """Quote *text* the way Go's ``strconv.Quote`` (or ``QuoteToASCII``) does."""
    out = [quote]
    for ch in text:
        code = ord(ch)
        if ch in (quote, "\\"):
            out.append("\\" + ch)
        elif (code < 0x80 or not ascii_only) and ch.isprintable():
            out.append(ch)
        elif ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            # A lone surrogate is not a valid rune; Go substitutes the replacement character.
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append(quote)
    return "".join(out)


def _can_backquote(text: str) -> bool:
    for ch in text:
        code = ord(ch)
        if ch == "`" or code in (0x7F, 0xFEFF) or 0xD800 <= code <= 0xDFFF:
            return False
        if code < 0x20 and ch != "\t":
            return False
    return True


def _valid_rune(code: int) -> int:
    code &= _MASK64
    if code > _MAX_RUNE or 0xD800 <= code <= 0xDFFF:
        return 0xFFFD
    return code


class _Flags:
    """The state of one ``%`` directive: Go's ``fmt.fmtFlags`` plus width and precision."""

    __slots__ = (
        "minus",
        "padded",
        "plus",
        "plus_v",
        "prec",
        "sharp",
        "sharp_v",
        "space",
        "wid",
        "zero",
    )

    def __init__(self) -> None:
        self.padded = 0  # container elements formatted with a width or precision, per call
        self.clear()

    def clear(self) -> None:
        self.minus = False
        self.plus = False
        self.plus_v = False
        self.sharp = False
        self.sharp_v = False
        self.space = False
        self.zero = False
        self.wid: int | None = None
        self.prec: int | None = None


def _charge(f: _Flags, count: int) -> None:
    # A width or precision applies to every element of a list or map, so a small format and a
    # large value could multiply into gigabytes: bound the total before building anything.
    extra = (f.wid or 0) + (f.prec or 0)
    if extra:
        f.padded += count
        if f.padded * extra > _MAX_OUTPUT:
            raise ValueError("fmt: formatted output too large")


def _padding(f: _Flags, count: int) -> str:
    if count <= 0:
        return ""
    return ("0" if f.zero and not f.minus else " ") * count


def _pad(f: _Flags, text: str) -> str:
    if not f.wid:
        return text
    count = f.wid - len(text)
    if count <= 0:
        return text
    if f.minus:
        return text + " " * count
    return ("0" if f.zero else " ") * count + text


def _pad_spaces(f: _Flags, text: str) -> str:
    # Several formats ignore the 0 flag because their zero padding was already applied (or
    # would be meaningless, as for Inf and NaN).
    if not f.wid or f.wid <= len(text):
        return text
    fill = " " * (f.wid - len(text))
    return text + fill if f.minus else fill + text


def _bad_verb(f: _Flags, value: object, verb: str) -> str:
    if value is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({go_type_name(value)}={_format(f, value, 'v', 0)})"


# --- integers ---------------------------------------------------------------------------------


def _fmt_integer(f: _Flags, value: int, base: int, verb: str, upper: bool = False) -> str:
    negative = value < 0
    magnitude = -value if negative else value
    prec = 0
    if f.prec is not None:
        prec = f.prec
        if prec == 0 and magnitude == 0:
            return " " * (f.wid or 0)
    elif f.zero and not f.minus and f.wid is not None:
        prec = f.wid
        if negative or f.plus or f.space:
            prec -= 1  # leave room for the sign
    if base == 10:
        digits = str(magnitude)
    elif base == 16:
        digits = format(magnitude, "X" if upper else "x")
    elif base == 8:
        digits = format(magnitude, "o")
    else:
        digits = format(magnitude, "b")
    if len(digits) < prec:
        digits = "0" * (prec - len(digits)) + digits
    if f.sharp:
        if base == 2:
            digits = "0b" + digits
        elif base == 8 and digits[0] != "0":
            digits = "0" + digits
        elif base == 16:
            digits = ("0X" if upper else "0x") + digits
    if verb == "O":
        digits = "0o" + digits
    if negative:
        digits = "-" + digits
    elif f.plus:
        digits = "+" + digits
    elif f.space:
        digits = " " + digits
    return _pad_spaces(f, digits)


def _fmt_unicode(f: _Flags, value: int) -> str:
    code = value & _MASK64
    prec = f.prec if f.prec is not None and f.prec > 4 else 4
    text = "U+" + format(code, "X").rjust(prec, "0")
    if f.sharp and code <= _MAX_RUNE and not 0xD800 <= code <= 0xDFFF and chr(code).isprintable():
        text += " '" + chr(code) + "'"
    return _pad_spaces(f, text)


def _fmt_int_verb(f: _Flags, value: int, verb: str) -> str:
    if verb in "vd":
        return _fmt_integer(f, value, 10, verb)
    if verb == "b":
        return _fmt_integer(f, value, 2, verb)
    if verb in "oO":
        return _fmt_integer(f, value, 8, verb)
    if verb == "x":
        return _fmt_integer(f, value, 16, verb)
    if verb == "X":
        return _fmt_integer(f, value, 16, verb, upper=True)
    if verb == "c":
        return _pad(f, chr(_valid_rune(value)))
    if verb == "q":
        return _pad(f, go_quote(chr(_valid_rune(value)), ascii_only=f.plus, quote="'"))
    if verb == "U":
        return _fmt_unicode(f, value)
    return _bad_verb(f, value, verb)


# --- floats -----------------------------------------------------------------------------------


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-tripping decimal digits of a finite *value* >= 0 and the decimal point.

    The result ``(digits, dp)`` means ``0.<digits> * 10**dp``; zero is ``("", 0)``.
    """
    text = repr(value)
    exp = 0
    if "e" in text:
        text, exp_text = text.split("e")
        exp = int(exp_text)
    int_part, _, frac_part = text.partition(".")
    digits = int_part + frac_part
    dp = len(int_part) + exp
    stripped = digits.lstrip("0")
    dp -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    if not digits:
        return "", 0
    return digits, dp


def _digits_e(digits: str, dp: int, prec: int, exp_char: str) -> str:
    text = digits[0] if digits else "0"
    if prec > 0:
        frac = digits[1 : 1 + prec]
        text += "." + frac + "0" * (prec - len(frac))
    exp = dp - 1 if digits else 0
    sign = "-" if exp < 0 else "+"
    return f"{text}{exp_char}{sign}{abs(exp):02d}"


def _digits_f(digits: str, dp: int, prec: int) -> str:
    if dp > 0:
        head = digits[:dp]
        text = head + "0" * (dp - len(head))
    else:
        text = "0"
    if prec > 0:
        frac = []
        for i in range(prec):
            j = dp + i
            frac.append(digits[j] if 0 <= j < len(digits) else "0")
        text += "." + "".join(frac)
    return text


def _hex_float(value: float, prec: int, verb: str) -> str:
    # Go's %x for floats: a normalised mantissa 1.xxx (shortest unless a precision is given).
    if value == 0:
        mant, exp = 0, 0
    else:
        fraction, exponent = math.frexp(value)
        mant = int(fraction * (1 << 61))  # leading 1 at bit 60; exact, 53 significant bits
        exp = exponent - 1
    if 0 <= prec < 15:
        shift = prec * 4
        extra = (mant << shift) & ((1 << 60) - 1)
        mant >>= 60 - shift
        if extra | (mant & 1) > 1 << 59:
            mant += 1
        mant <<= 60 - shift
        if mant & (1 << 61):
            mant >>= 1
            exp += 1
    hex_digits = "0123456789ABCDEF" if verb == "X" else "0123456789abcdef"
    out = ["0", verb, str((mant >> 60) & 1)]
    mant = (mant << 4) & _MASK64
    if prec < 0 and mant:
        out.append(".")
        while mant:
            out.append(hex_digits[(mant >> 60) & 15])
            mant = (mant << 4) & _MASK64
    elif prec > 0:
        out.append(".")
        for _ in range(prec):
            out.append(hex_digits[(mant >> 60) & 15])
            mant = (mant << 4) & _MASK64
    out.append("P" if verb == "X" else "p")
    out.append("-" if exp < 0 else "+")
    out.append(f"{abs(exp):02d}")
    return "".join(out)


def _binary_float(value: float) -> str:
    bits = struct.unpack("<Q", struct.pack("<d", value))[0]
    exp = (bits >> 52) & 0x7FF
    mant = bits & ((1 << 52) - 1)
    if exp == 0:
        exp = 1
    else:
        mant |= 1 << 52
    exp -= 1023 + 52
    return f"{mant}p{exp:+d}"


def _strconv_float(value: float, verb: str, prec: int) -> str:
    """Go's ``strconv.FormatFloat(value, verb, prec, 64)``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    negative = math.copysign(1.0, value) < 0
    magnitude = -value if negative else value
    if verb == "F":
        verb = "f"
    if verb == "b":
        body = _binary_float(magnitude)
    elif verb in "xX":
        body = _hex_float(magnitude, prec, verb)
    elif prec < 0:
        digits, dp = _shortest_digits(magnitude)
        if verb in "eE":
            body = _digits_e(digits, dp, max(len(digits) - 1, 0), verb)
        elif verb == "f":
            body = _digits_f(digits, dp, max(len(digits) - dp, 0))
        else:
            # Shortest %g switches to exponent form as if the precision were 6.
            exp = dp - 1
            if exp < -4 or exp >= 6:
                body = _digits_e(digits, dp, len(digits) - 1, "e" if verb == "g" else "E")
            else:
                body = _digits_f(digits, dp, max(len(digits) - dp, 0))
    else:
        # Python's fixed-precision formatting rounds the exact binary value like Go does, and its
        # %g drops trailing zeros exactly as strconv's 'g' does.
        body = format(magnitude, f".{prec}{verb}")
    return "-" + body if negative else body


def go_json_float(value: float) -> str:
    """A float64 as Go's ``encoding/json`` writes it.

    Shortest round-tripping digits, in plain form between 1e-6 and 1e21 and in exponent form
    outside (``1e-7``, ``1e+21``: a one-digit negative exponent loses its leading zero), ``-0``
    kept. NaN and the infinities raise ``ValueError`` with Go's message: JSON has no such
    numbers and Go refuses to write them.
    """
    if not math.isfinite(value):
        raise ValueError(f"json: unsupported value: {_strconv_float(value, 'g', -1)}")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = _strconv_float(value, "e", -1)
        if len(text) >= 4 and text[-4] == "e" and text[-3] == "-" and text[-2] == "0":
            text = text[:-2] + text[-1]
        return text
    return _strconv_float(value, "f", -1)


def _fmt_float(f: _Flags, value: float, verb: str, prec: int) -> str:
    if f.prec is not None:
        prec = f.prec
    num = _strconv_float(value, verb, prec)
    if num[0] in "+-":
        sign, body = num[0], num[1:]
    else:
        sign, body = "+", num
    if f.space and sign == "+" and not f.plus:
        sign = " "
    if body[0] in "IN":
        # Infinities and NaN are never zero padded, and NaN shows a sign only when asked to.
        if body[0] == "N" and not f.space and not f.plus:
            return _pad_spaces(f, body)
        return _pad_spaces(f, sign + body)
    if f.sharp and verb != "b":
        body = _sharp_float(body, verb, prec)
    if f.plus or sign != "+":
        text = sign + body
        if f.zero and not f.minus and f.wid is not None and f.wid > len(text):
            return sign + "0" * (f.wid - len(text)) + body
        return _pad(f, text)
    return _pad(f, body)


def _sharp_float(body: str, verb: str, prec: int) -> str:
    # The # flag keeps a decimal point and restores the trailing zeros %g would drop.
    digits = 0
    if verb in "vgGx":
        digits = 6 if prec == -1 else prec
    tail = ""
    has_point = False
    saw_nonzero = False
    for i, ch in enumerate(body):
        if ch == ".":
            has_point = True
        elif ch in "pP" or (ch in "eE" and verb not in "xX"):
            tail = body[i:]
            body = body[:i]
            break
        else:
            if ch != "0":
                saw_nonzero = True
            if saw_nonzero:
                digits -= 1
    if not has_point:
        if body == "0":
            digits -= 1
        body += "."
    if digits > 0:
        body += "0" * digits
    return body + tail


def _fmt_float_verb(f: _Flags, value: float, verb: str) -> str:
    if verb == "v":
        return _fmt_float(f, value, "g", -1)
    if verb in "bgGxX":
        return _fmt_float(f, value, verb, -1)
    if verb in "feEF":
        return _fmt_float(f, value, verb, 6)
    return _bad_verb(f, value, verb)


# --- strings and bytes ------------------------------------------------------------------------


def _fmt_s(f: _Flags, text: str) -> str:
    if f.prec is not None:
        text = text[: f.prec]
    return _pad(f, text)


def _fmt_q(f: _Flags, text: str) -> str:
    if f.prec is not None:
        text = text[: f.prec]
    if f.sharp and _can_backquote(text):
        return _pad(f, "`" + text + "`")
    return _pad(f, go_quote(text, ascii_only=f.plus))


def _fmt_hex_bytes(f: _Flags, data: bytes, upper: bool) -> str:
    length = len(data)
    if f.prec is not None and f.prec < length:
        length = f.prec
    width = 2 * length
    if width == 0:
        return _padding(f, f.wid) if f.wid is not None else ""
    if f.space:
        if f.sharp:
            width *= 2
        width += length - 1
    elif f.sharp:
        width += 2
    digits = "0123456789ABCDEF" if upper else "0123456789abcdef"
    prefix = "0X" if upper else "0x"
    out: list[str] = []
    if f.wid is not None and f.wid > width and not f.minus:
        out.append(_padding(f, f.wid - width))
    if f.sharp:
        out.append(prefix)
    for i in range(length):
        if f.space and i > 0:
            out.append(" ")
            if f.sharp:
                out.append(prefix)
        byte = data[i]
        out.append(digits[byte >> 4] + digits[byte & 0xF])
    if f.wid is not None and f.wid > width and f.minus:
        out.append(_padding(f, f.wid - width))
    return "".join(out)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _fmt_string_verb(f: _Flags, text: str, verb: str) -> str:
    if verb == "v":
        return _fmt_q(f, text) if f.sharp_v else _fmt_s(f, text)
    if verb == "s":
        return _fmt_s(f, text)
    if verb == "q":
        return _fmt_q(f, text)
    if verb in "xX":
        return _fmt_hex_bytes(f, _utf8(text), verb == "X")
    return _bad_verb(f, text, verb)


def _fmt_bytes_verb(f: _Flags, data: bytes, verb: str) -> str:
    if verb in "vd":
        if f.sharp_v:
            return "[]byte{" + ", ".join(_go_hex(f, byte) for byte in data) + "}"
        return "[" + " ".join(_fmt_integer(f, byte, 10, verb) for byte in data) + "]"
    if verb == "s":
        return _fmt_s(f, data.decode("utf-8", "replace"))
    if verb in "xX":
        return _fmt_hex_bytes(f, data, verb == "X")
    if verb == "q":
        return _fmt_q(f, data.decode("utf-8", "replace"))
    if verb in "bcoOqU":
        return "[" + " ".join(_fmt_int_verb(f, byte, verb) for byte in data) + "]"
    # The elements of a []byte are uint8 values, which is what a bad verb names.
    return "[" + " ".join(f"%!{verb}(uint8={_fmt_integer(f, b, 10, 'v')})" for b in data) + "]"


def _go_hex(f: _Flags, value: int) -> str:
    sharp = f.sharp
    f.sharp = True
    try:
        return _fmt_integer(f, value, 16, "v")
    finally:
        f.sharp = sharp


# --- dispatch ---------------------------------------------------------------------------------


def _go_syntax(f: _Flags, value: object, depth: int) -> str:
    """A simplified ``%#v``: Go-syntax representation of JSON-like values."""
    if value is None:
        return "<nil>" if depth == 0 else "interface {}(nil)"
    if isinstance(value, bytes | bytearray):
        return _fmt_bytes_verb(f, bytes(value), "v")
    if isinstance(value, bool | int | float | str):
        return _format(f, value, "v", depth)
    if isinstance(value, Mapping):
        items = ", ".join(
            _go_syntax(f, key, depth + 1) + ":" + _go_syntax(f, item, depth + 1)
            for key, item in sorted_map_items(value)
        )
        return "map[string]interface {}{" + items + "}"
    if isinstance(value, list | tuple):
        return "[]interface {}{" + ", ".join(_go_syntax(f, v, depth + 1) for v in value) + "}"
    return _pad(f, str(value))


def _format(f: _Flags, value: object, verb: str, depth: int) -> str:
    """Go's ``printArg`` (depth 0) and ``printValue`` (inside containers)."""
    if value is None:
        # A nil element inside a slice or map prints <nil> whatever the verb.
        if depth > 0 or verb in "Tv":
            return _pad(f, "<nil>")
        return _bad_verb(f, value, verb)
    if depth == 0:
        if verb == "T":
            return _fmt_s(f, go_type_name(value))
        if verb == "p":
            return _bad_verb(f, value, verb)
    if verb == "v" and f.sharp_v and not isinstance(value, bool | int | float | str):
        return _go_syntax(f, value, depth)
    if isinstance(value, bool):
        if verb in "tv":
            return _pad(f, "true" if value else "false")
        return _bad_verb(f, value, verb)
    if isinstance(value, int):
        return _fmt_int_verb(f, value, verb)
    if isinstance(value, float):
        return _fmt_float_verb(f, value, verb)
    if isinstance(value, str):
        return _fmt_string_verb(f, value, verb)
    if isinstance(value, bytes | bytearray):
        if verb not in "sxXq":
            _charge(f, len(value))
        return _fmt_bytes_verb(f, bytes(value), verb)
    if isinstance(value, Mapping):
        _charge(f, 2 * len(value))
        parts = [
            _format(f, key, verb, depth + 1) + ":" + _format(f, item, verb, depth + 1)
            for key, item in sorted_map_items(value)
        ]
        return "map[" + " ".join(parts) + "]"
    if isinstance(value, list | tuple):
        _charge(f, len(value))
        return "[" + " ".join(_format(f, item, verb, depth + 1) for item in value) + "]"
    if verb in "vs":
        return _fmt_s(f, str(value))
    return _bad_verb(f, value, verb)


def go_format_value(value: object) -> str:
    """What Go's ``fmt`` prints for *value* with ``%v`` (as in ``fmt.Sprint(value)``).

    ``None`` is ``<nil>``, booleans ``true``/``false``, floats use Go's shortest ``%g`` form
    (``1e+06``, ``123456``, ``1e-05``, ``+Inf``), lists ``[a b c]``, mappings
    ``map[k1:v1 k2:v2]`` with sorted keys and bytes ``[104 105]``.
    """
    # Fast paths for the scalars that make up almost every rendered value.
    if type(value) is str:
        return value
    if value is None:
        return "<nil>"
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return int.__repr__(value)
    return _format(_Flags(), value, "v", 0)


def go_sprint(*args: object) -> str:
    """Go's ``fmt.Sprint``: operands joined with a space when neither side is a string."""
    f = _Flags()
    out: list[str] = []
    previous_string = False
    for index, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if index > 0 and not is_string and not previous_string:
            out.append(" ")
        out.append(_format(f, arg, "v", 0))
        previous_string = is_string
    return "".join(out)


def go_sprintln(*args: object) -> str:
    """Go's ``fmt.Sprintln``: operands always separated by spaces, plus a newline."""
    f = _Flags()
    return " ".join(_format(f, arg, "v", 0) for arg in args) + "\n"


def _parse_number(text: str, start: int, end: int) -> tuple[int, bool, int]:
    number = 0
    found = False
    index = start
    while index < end and "0" <= text[index] <= "9":
        number = number * 10 + ord(text[index]) - 48
        if number > MAX_WIDTH:
            raise ValueError(f"fmt: width or precision larger than {MAX_WIDTH}")
        found = True
        index += 1
    return number, found, index


def _int_from_arg(args: tuple[object, ...], argnum: int) -> tuple[int, bool, int]:
    if argnum >= len(args):
        return 0, False, argnum
    value = args[argnum]
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_WIDTH:
            raise ValueError(f"fmt: width or precision larger than {MAX_WIDTH}")
        return value, True, argnum + 1
    return 0, False, argnum + 1


class _ArgIndex:
    """Result of reading an explicit argument index such as ``[2]``."""

    __slots__ = ("argnum", "found", "index", "valid")

    def __init__(self, argnum: int, index: int, found: bool, valid: bool) -> None:
        self.argnum = argnum
        self.index = index
        self.found = found
        self.valid = valid


def _arg_number(text: str, index: int, argnum: int, nargs: int) -> _ArgIndex | None:
    """Go's ``argNumber``: ``None`` when there is no ``[n]`` at *index*."""
    if index >= len(text) or text[index] != "[":
        return None
    if len(text) - index < 3:
        return _ArgIndex(argnum, index + 1, False, False)
    close = text.find("]", index + 1)
    if close < 0:
        return _ArgIndex(argnum, index + 1, False, False)
    try:
        number, found, after = _parse_number(text, index + 1, close)
    except ValueError:
        return _ArgIndex(argnum, close + 1, True, False)
    if not found or after != close:
        return _ArgIndex(argnum, close + 1, False, False)
    if 0 <= number - 1 < nargs:
        return _ArgIndex(number - 1, close + 1, True, True)
    return _ArgIndex(argnum, close + 1, True, False)


def go_sprintf(format: str, *args: object) -> str:
    """Go's ``fmt.Sprintf``.

    Supports the verbs ``%v %+v %#v %T %s %q %d %b %o %O %x %X %c %U %e %E %f %F %g %G %t %%``,
    the flags ``-+# 0``, widths and precisions (also ``*`` and explicit argument indexes such
    as ``%[2]d``). Errors render inline as Go does: ``%!d(string=hi)``, ``%!d(MISSING)``,
    ``%!(EXTRA int=3)``, ``%!(NOVERB)``, ``%!(BADWIDTH)``, ``%!(BADPREC)``, ``%!d(BADINDEX)``.

    Raises ``ValueError`` when a width or precision exceeds :data:`MAX_WIDTH`, or when the
    result would grow beyond 16 MiB (a width applies to every element of a list).
    """
    f = _Flags()
    out: list[str] = []
    end = len(format)
    nargs = len(args)
    argnum = 0
    reordered = False
    total = 0
    i = 0
    while i < end:
        percent = format.find("%", i)
        if percent < 0:
            out.append(format[i:])
            break
        if percent > i:
            out.append(format[i:percent])
        i = percent + 1
        f.clear()
        good_argnum = True
        while i < end:
            ch = format[i]
            if ch == "#":
                f.sharp = True
            elif ch == "0":
                f.zero = True
            elif ch == "+":
                f.plus = True
            elif ch == "-":
                f.minus = True
            elif ch == " ":
                f.space = True
            else:
                break
            i += 1

        after_index = False
        found = _arg_number(format, i, argnum, nargs)
        if found is not None:
            reordered = True
            argnum, i, after_index = found.argnum, found.index, found.found
            good_argnum = good_argnum and found.valid

        if i < end and format[i] == "*":
            i += 1
            width, ok, argnum = _int_from_arg(args, argnum)
            if ok:
                f.wid = width
                if width < 0:
                    f.wid = -width
                    f.minus = True
                    f.zero = False
            else:
                out.append("%!(BADWIDTH)")
            after_index = False
        else:
            width, ok, i = _parse_number(format, i, end)
            if ok:
                f.wid = width
                if after_index:
                    good_argnum = False

        if i + 1 < end and format[i] == ".":
            i += 1
            if after_index:
                good_argnum = False
            found = _arg_number(format, i, argnum, nargs)
            after_index = False
            if found is not None:
                reordered = True
                argnum, i, after_index = found.argnum, found.index, found.found
                good_argnum = good_argnum and found.valid
            if i < end and format[i] == "*":
                i += 1
                prec, ok, argnum = _int_from_arg(args, argnum)
                if ok and prec >= 0:
                    f.prec = prec
                else:
                    out.append("%!(BADPREC)")
                after_index = False
            else:
                prec, ok, i = _parse_number(format, i, end)
                f.prec = prec if ok else 0

        if not after_index:
            found = _arg_number(format, i, argnum, nargs)
            if found is not None:
                reordered = True
                argnum, i, after_index = found.argnum, found.index, found.found
                good_argnum = good_argnum and found.valid

        if i >= end:
            out.append("%!(NOVERB)")
            break
        verb = format[i]
        i += 1
        if verb == "%":
            out.append("%")
        elif not good_argnum:
            out.append(f"%!{verb}(BADINDEX)")
        elif argnum >= nargs:
            out.append(f"%!{verb}(MISSING)")
        else:
            if verb == "v":
                # %#v asks for Go syntax and %+v for field names; neither adds sharp or plus.
                f.sharp_v, f.sharp = f.sharp, False
                f.plus_v, f.plus = f.plus, False
            out.append(_format(f, args[argnum], verb, 0))
            argnum += 1
            total += len(out[-1])
            if total > _MAX_OUTPUT:
                raise ValueError("fmt: formatted output too large")

    if not reordered and argnum < nargs:
        f.clear()
        extras = [
            "<nil>" if arg is None else f"{go_type_name(arg)}={_format(f, arg, 'v', 0)}"
            for arg in args[argnum:]
        ]
        out.append("%!(EXTRA " + ", ".join(extras) + ")")
    return "".join(out)
