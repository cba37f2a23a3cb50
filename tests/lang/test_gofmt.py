"""Go ``fmt`` formatting: expected outputs are what Go itself prints."""

from __future__ import annotations

import math

import pytest

from machinery.lang.gofmt import (
    MAX_WIDTH,
    go_format_value,
    go_quote,
    go_sprint,
    go_sprintf,
    go_sprintln,
    go_type_name,
    sorted_map_items,
)

INF = math.inf
NAN = math.nan


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1000000.0, "1e+06"),
        (123456.0, "123456"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1234567.0, "1.234567e+06"),
        (2.5, "2.5"),
        (INF, "+Inf"),
        (-INF, "-Inf"),
        (NAN, "NaN"),
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (-7.0, "-7"),
        (100000.0, "100000"),
        (1e20, "1e+20"),
        (1e21, "1e+21"),
        (1.23456789e20, "1.23456789e+20"),
        (1e100, "1e+100"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1.2345678, "1.2345678"),
        (1234.5678e3, "1.2345678e+06"),
        (1.23456789e-3, "0.00123456789"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (-1e-9, "-1e-09"),
    ],
)
def test_float_v(value: float, expected: str) -> None:
    assert go_format_value(value) == expected
    assert go_sprintf("%v", value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "<nil>"),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-42, "-42"),
        (12345678901234567890, "12345678901234567890"),
        ("text as is", "text as is"),
        ("", ""),
        ([], "[]"),
        ([1, "a", 2.5, None], "[1 a 2.5 <nil>]"),
        ((1, 2), "[1 2]"),
        ([[1, 2], [3]], "[[1 2] [3]]"),
        ({}, "map[]"),
        ({"b": 2, "a": 1, "c": [1, 2]}, "map[a:1 b:2 c:[1 2]]"),
        ({"z": {"y": None}}, "map[z:map[y:<nil>]]"),
        ({2: "two", 10: "ten", 1: "one"}, "map[1:one 2:two 10:ten]"),
        ({"b": 1, 2: "x"}, "map[2:x b:1]"),
        (b"hi", "[104 105]"),
        (bytearray(b"\x00\xff"), "[0 255]"),
        (1e6, "1e+06"),
    ],
)
def test_format_value(value: object, expected: str) -> None:
    assert go_format_value(value) == expected


def test_format_value_of_unknown_objects_uses_str() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing!"

    assert go_format_value(Thing()) == "thing!"
    assert go_format_value([Thing()]) == "[thing!]"


def test_sorted_map_items() -> None:
    assert sorted_map_items({"b": 1, "a": 2}) == [("a", 2), ("b", 1)]
    assert sorted_map_items({"b": 1, 3: 2, None: 0}) == [(None, 0), (3, 2), ("b", 1)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "<nil>"),
        (True, "bool"),
        (1, "int"),
        (1.5, "float64"),
        ("s", "string"),
        (b"x", "[]uint8"),
        ([1], "[]interface {}"),
        ({"a": 1}, "map[string]interface {}"),
    ],
)
def test_type_names(value: object, expected: str) -> None:
    assert go_type_name(value) == expected
    if value is not None:
        assert go_sprintf("%T", value) == expected


def test_quote() -> None:
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("\a\b\f\n\r\t\v") == '"\\a\\b\\f\\n\\r\\t\\v"'
    assert go_quote("\x00\x7f") == '"\\x00\\x7f"'
    assert go_quote("日本語") == '"日本語"'
    assert go_quote("日本語", ascii_only=True) == '"\\u65e5\\u672c\\u8a9e"'
    assert go_quote("\U0010ffff") == '"\\U0010ffff"'
    assert go_quote("'", quote="'") == "'\\''"


SPRINTF_CASES: list[tuple[str, tuple[object, ...], str]] = [
    # basics
    ("%d", (12345,), "12345"),
    ("%v", (12345,), "12345"),
    ("%t", (True,), "true"),
    ("%v", (False,), "false"),
    ("%5t", (True,), " true"),
    ("%s", ("abc",), "abc"),
    ("%q", ("abc",), '"abc"'),
    ("%%", (), "%"),
    ("100%% sure", (), "100% sure"),
    ("%5%", (), "%"),
    ("no verbs", (), "no verbs"),
    # %+v and %#v
    ("%+v", (5,), "5"),
    ("%+d", (5,), "+5"),
    ("%+v", ([1, 11, 111],), "[1 11 111]"),
    ("%+d", ([1, 11, 111],), "[+1 +11 +111]"),
    ("%#v", ("foo",), '"foo"'),
    ("%#v", (1.0,), "1"),
    ("%#v", (1000000.0,), "1e+06"),
    ("%#v", (1000000000,), "1000000000"),
    ("%#v", (None,), "<nil>"),
    ("%#v", ([1, "a", None],), '[]interface {}{1, "a", interface {}(nil)}'),
    ("%#v", ({"a": 1},), 'map[string]interface {}{"a":1}'),
    ("%#v", (b"\x01\x0b\x6f",), "[]byte{0x1, 0xb, 0x6f}"),
    # strings
    ("%x", ("xyz",), "78797a"),
    ("%X", ("xyz",), "78797A"),
    ("% x", ("xyz",), "78 79 7a"),
    ("%#x", ("xyz",), "0x78797a"),
    ("%# x", ("xyz",), "0x78 0x79 0x7a"),
    ("%# X", ("xyz",), "0X78 0X79 0X7A"),
    ("%x", ("",), ""),
    ("%2x", ("",), "  "),
    ("% 02x", ("",), "00"),
    ("%.1x", ("日本語",), "e6"),
    ("%#q", ("abc",), "`abc`"),
    ("%#q", ("\n",), '"\\n"'),
    ("%#q", ("`",), '"`"'),
    ("%+q", ("☺",), '"\\u263a"'),
    ("% q", ("☺",), '"☺"'),
    ("%10q", ("⌘",), '       "⌘"'),
    ("%-10q", ("⌘",), '"⌘"       '),
    ("%010q", ("⌘",), '0000000"⌘"'),
    ("%-010q", ("⌘",), '"⌘"       '),
    ("%+-10q", ("⌘",), '"\\u2318"  '),
    ("%5s", ("abc",), "  abc"),
    ("%-5s", ("abc",), "abc  "),
    ("%05s", ("abc",), "00abc"),
    ("%0-5s", ("abc",), "abc  "),
    ("%.5s", ("abcdefghijklmnopqrstuvwxyz",), "abcde"),
    ("%.0s", ("日本語日本語",), ""),
    ("%.5s", ("日本語日本語",), "日本語日本"),
    ("%.3q", ("日本語日本語",), '"日本語"'),
    ("%10.1q", ("日本語日本語",), '       "日"'),
    ("%20.5s", ("qwertyuiop",), "               qwert"),
    ("%2s", ("☺",), " ☺"),
    # bytes
    ("%s", (b"abc",), "abc"),
    ("%q", (b"abc",), '"abc"'),
    ("%x", (b"\xff\xf0\x0f\xff",), "fff00fff"),
    ("%d", (b"\x01\x02\x0f",), "[1 2 15]"),
    ("%c", (b"ABC",), "[A B C]"),
    ("%o", (b"ABC",), "[101 102 103]"),
    ("%U", (b"ABC",), "[U+0041 U+0042 U+0043]"),
    ("%b", (b"ABC",), "[1000001 1000010 1000011]"),
    ("%6v", (b"\x01\x0b\x6f",), "[     1     11    111]"),
    ("%-6v", (b"\x01\x0b\x6f",), "[1      11     111   ]"),
    ("%# 010x", (b"\xab\xcd",), "00xab 0xcd"),
    ("%#-10X", (b"\xab\xcd",), "0XABCD    "),
    # integers
    ("%d", (-12345,), "-12345"),
    ("%.d", (0,), ""),
    ("%6.0d", (0,), "      "),
    ("%06.0d", (0,), "      "),
    ("% d", (12345,), " 12345"),
    ("%b", (7,), "111"),
    ("%b", (-6,), "-110"),
    ("%#b", (-6,), "-0b110"),
    ("%o", (0o1234,), "1234"),
    ("%#o", (-0o1234,), "-01234"),
    ("%#o", (0,), "0"),
    ("%O", (0o1234,), "0o1234"),
    ("%x", (0x12ABCDEF,), "12abcdef"),
    ("%X", (0x12ABCDEF,), "12ABCDEF"),
    ("%#X", (0,), "0X0"),
    ("%#x", (255,), "0xff"),
    ("%.20b", (7,), "00000000000000000111"),
    ("%10d", (-12345,), "    -12345"),
    ("%+10d", (12345,), "    +12345"),
    ("%010d", (-12345,), "-000012345"),
    ("%20.8d", (-1234,), "           -00001234"),
    ("%020.8d", (1234,), "            00001234"),
    ("%-20.8d", (-1234,), "-00001234           "),
    ("%-#20.8x", (0x1234ABC,), "0x01234abc          "),
    ("%-#20.8o", (0o1234,), "00001234            "),
    ("%#08x", (0xAB,), "0x000000ab"),
    ("%x", ([1, 2, 15],), "[1 2 f]"),
    ("%#x", ([1, 2, 15],), "[0x1 0x2 0xf]"),
    ("%d", ([1, 2, 15],), "[1 2 15]"),
    ("%q", (["a", "b"],), '["a" "b"]'),
    # characters and code points
    ("%c", (ord("x"),), "x"),
    ("%c", (0x672C,), "本"),
    ("%3c", (0x2318,), "  ⌘"),
    ("%-3c", (0x2318,), "⌘  "),
    ("%.0c", (0x2318,), "⌘"),
    ("%c", (-1,), "\ufffd"),
    ("%c", (0xDC80,), "\ufffd"),
    ("%c", (0x110000,), "\ufffd"),
    ("%q", (0,), "'\\x00'"),
    ("%q", (ord("'"),), "'\\''"),
    ("%q", (ord('"'),), "'\"'"),
    ("%q", (0xFF,), "'ÿ'"),
    ("%+q", (0xFF,), "'\\u00ff'"),
    ("%q", (ord("\n"),), "'\\n'"),
    ("%q", (0x0E00,), "'\\u0e00'"),
    ("%q", (0x10FFFF,), "'\\U0010ffff'"),
    ("%q", (0xDC80,), "'\ufffd'"),
    ("%U", (0,), "U+0000"),
    ("%U", (-1,), "U+FFFFFFFFFFFFFFFF"),
    ("%U", (ord("\n"),), "U+000A"),
    ("%#U", (ord("\n"),), "U+000A"),
    ("%+U", (ord("x"),), "U+0078"),
    ("%# U", (ord("x"),), "U+0078 'x'"),
    ("%#.2U", (ord("x"),), "U+0078 'x'"),
    ("%#U", (0x263A,), "U+263A '☺'"),
    ("%#14.6U", (0x2318,), "  U+002318 '⌘'"),
    ("%#-14.6U", (0x2318,), "U+002318 '⌘'  "),
    ("%#014.6U", (0x2318,), "  U+002318 '⌘'"),
    # floats
    ("%+.3e", (0.0,), "+0.000e+00"),
    ("%+.3e", (1.0,), "+1.000e+00"),
    ("%+.3x", (0.0,), "+0x0.000p+00"),
    ("%+.3x", (1.0,), "+0x1.000p+00"),
    ("%+.3f", (-1.0,), "-1.000"),
    ("%+.3F", (-1.0,), "-1.000"),
    ("%+07.2f", (1.0,), "+001.00"),
    ("%+07.2f", (-1.0,), "-001.00"),
    ("%-07.2f", (1.0,), "1.00   "),
    ("%-07.2f", (-1.0,), "-1.00  "),
    ("%+-07.2f", (1.0,), "+1.00  "),
    ("%+10.2f", (1.0,), "     +1.00"),
    ("% .3E", (-1.0,), "-1.000E+00"),
    ("% .3e", (1.0,), " 1.000e+00"),
    ("% .3X", (-1.0,), "-0X1.000P+00"),
    ("% .3x", (1.0,), " 0x1.000p+00"),
    ("%+.3g", (0.0,), "+0"),
    ("%+.3g", (-1.0,), "-1"),
    ("% .3g", (1.0,), " 1"),
    ("%b", (1.0,), "4503599627370496p-52"),
    ("%b", (-1.0,), "-4503599627370496p-52"),
    ("%b", (0.0,), "0p-1074"),
    ("%#b", (1.0,), "4503599627370496p-52"),
    ("%x", (1.0,), "0x1p+00"),
    ("%x", (0.0,), "0x0p+00"),
    ("%x", (3.0,), "0x1.8p+01"),
    ("%X", (-3.0,), "-0X1.8P+01"),
    ("%x", (5e-324,), "0x1p-1074"),
    ("%.1x", (1.9375,), "0x1.fp+00"),
    # 0x1.f8 is a tie: it rounds to even and carries into the exponent.
    ("%.1x", (1.96875,), "0x1.0p+01"),
    ("%.1x", (1.90625,), "0x1.ep+00"),  # 0x1.e8 is a tie that rounds down to even
    ("%.0x", (1.5,), "0x1p+01"),
    ("%#g", (1e-323,), "1.00000e-323"),
    ("%#g", (-1.0,), "-1.00000"),
    ("%#g", (1.1,), "1.10000"),
    ("%#g", (123456.0,), "123456."),
    ("%#g", (1234567.0,), "1.234567e+06"),
    ("%#g", (1230000.0,), "1.23000e+06"),
    ("%#g", (1000000.0,), "1.00000e+06"),
    ("%#.0f", (1.0,), "1."),
    ("%#.0e", (1.0,), "1.e+00"),
    ("%#.0x", (1.0,), "0x1.p+00"),
    ("%#.0g", (1.0,), "1."),
    ("%#.0g", (1100000.0,), "1.e+06"),
    ("%#.4f", (1.0,), "1.0000"),
    ("%#.4e", (1.0,), "1.0000e+00"),
    ("%#.4x", (1.0,), "0x1.0000p+00"),
    ("%#.4g", (1.0,), "1.000"),
    ("%#.4g", (100000.0,), "1.000e+05"),
    ("%#.4g", (0.123,), "0.1230"),
    ("%#.4g", (10.2,), "10.20"),
    ("%#.4g", (0.0,), "0.000"),
    ("%#.4g", (0.012,), "0.01200"),
    ("%#.4x", (123.0,), "0x1.ec00p+06"),
    ("%#9.4g", (1.0,), "    1.000"),
    ("%.68f", (1.0,), "1." + "0" * 68),
    ("%e", (1.0,), "1.000000e+00"),
    ("%e", (1234.5678e3,), "1.234568e+06"),
    ("%e", (1234.5678e-8,), "1.234568e-05"),
    ("%e", (-1e-9,), "-1.000000e-09"),
    ("%e", (1e100,), "1.000000e+100"),
    ("%f", (1234.5678e3,), "1234567.800000"),
    ("%f", (1234.5678e-8,), "0.000012"),
    ("%f", (-1e-9,), "-0.000000"),
    ("%F", (2.5,), "2.500000"),
    ("%g", (1234.5678e3,), "1.2345678e+06"),
    ("%g", (-7.0,), "-7"),
    ("%g", (-1e-9,), "-1e-09"),
    ("%G", (1234.5678e-8,), "1.2345678E-05"),
    ("%G", (-1e-9,), "-1E-09"),
    ("%.3g", (100.0,), "100"),
    ("%.2g", (100.0,), "1e+02"),
    ("%.3g", (0.0001234,), "0.000123"),
    ("%.0g", (2.5,), "2"),
    ("%.3v", (3.14159,), "3.14"),
    ("%20.6e", (1.2345e3,), "        1.234500e+03"),
    ("%20.8f", (1.23456789e-3,), "          0.00123457"),
    ("%20f", (12345678901.23456789,), "  12345678901.234568"),
    ("%-20f", (1.23456789e3,), "1234.567890         "),
    ("%.2f", (2.675,), "2.67"),
    ("%07.2f", (-1.0,), "-001.00"),
    ("% 07.2f", (1.0,), " 001.00"),
    ("% +07.2f", (1.0,), "+001.00"),
    ("%06v", ([-10.0, 10],), "[-00010 000010]"),
    ("%03.6v", ([1, 2.0, "x"],), "[000001 002 00x]"),
    ("%03.0v", ([0, 2.0, "x"],), "[    002 000]"),
    ("%f", (INF,), "+Inf"),
    ("%.1f", (-INF,), "-Inf"),
    ("% f", (NAN,), " NaN"),
    ("%20f", (INF,), "                +Inf"),
    ("% 20F", (INF,), "                 Inf"),
    ("% 20x", (-INF,), "                -Inf"),
    ("%20e", (NAN,), "                 NaN"),
    ("% +20E", (NAN,), "                +NaN"),
    ("% -20g", (NAN,), " NaN                "),
    ("%+-20G", (INF,), "+Inf                "),
    ("%+020e", (INF,), "                +Inf"),
    ("%-020E", (NAN,), "NaN                 "),
    ("%v", (NAN,), "NaN"),
    # nil
    ("%v", (None,), "<nil>"),
    ("%10v", (None,), "     <nil>"),
    ("%-10v", (None,), "<nil>     "),
    ("%10T", (None,), "     <nil>"),
    ("%d", (None,), "%!d(<nil>)"),
    ("%s", (None,), "%!s(<nil>)"),
    ("%d", ([1, None],), "[1 <nil>]"),
    ("%s", ({"a": None},), "map[a:<nil>]"),
    # wrong types
    ("%d", ("hi",), "%!d(string=hi)"),
    ("%5d", ("hi",), "%!d(string=   hi)"),
    ("%s", (5,), "%!s(int=5)"),
    ("%s", (1.5,), "%!s(float64=1.5)"),
    ("%d", (2.5,), "%!d(float64=2.5)"),
    ("%x", (True,), "%!x(bool=true)"),
    ("%t", (1,), "%!t(int=1)"),
    ("%c", ("a",), "%!c(string=a)"),
    ("%p", (27,), "%!p(int=27)"),
    ("%z", (1,), "%!z(int=1)"),
    ("%☠", ("hello",), "%!☠(string=hello)"),
    ("%☠", (b"\x00\x01",), "[%!☠(uint8=0) %!☠(uint8=1)]"),
    ("%d", (["a", 1],), "[%!d(string=a) 1]"),
    ("%d", ({"k": "v"},), "map[%!d(string=k):%!d(string=v)]"),
    # missing and extra arguments
    ("%d", (), "%!d(MISSING)"),
    ("%d %s", (1,), "1 %!s(MISSING)"),
    ("", (None,), "%!(EXTRA <nil>)"),
    ("", (2,), "%!(EXTRA int=2)"),
    ("no args", ("hello",), "no args%!(EXTRA string=hello)"),
    ("%d", (1, "x", 2.5), "1%!(EXTRA string=x, float64=2.5)"),
    ("%s %", ("hello",), "hello %!(NOVERB)"),
    ("%s %.2", ("hello",), "hello %!(NOVERB)"),
    ("%010.2", ("12345",), "%!(NOVERB)%!(EXTRA string=12345)"),
    ("%.", (3,), "%!.(int=3)"),
    ("%.-3d", (42,), "%!-(int=42)3d"),
    # * widths and precisions
    ("%*d", (5, 42), "   42"),
    ("%-*d", (5, 42), "42   "),
    ("%*d", (-5, 42), "42   "),
    ("%0*d", (-5, 42), "42   "),
    ("%.*f", (2, 3.14159), "3.14"),
    ("%*.*f", (8, 2, 3.14159), "    3.14"),
    ("%*d", ("x", 42), "%!(BADWIDTH)42"),
    ("%.*d", ("x", 42), "%!(BADPREC)42"),
    ("%.*d", (-1, 42), "%!(BADPREC)42"),
    ("%*d", (), "%!(BADWIDTH)%!d(MISSING)"),
    # argument indexes
    ("%[1]d", (1,), "1"),
    ("%[2]d %[1]d", (1, 2), "2 1"),
    ("%[2]*[1]d", (2, 5), "    2"),
    ("%[3]*.[2]*[1]f", (12.0, 2, 6), " 12.00"),
    ("%[1]*.[3]f", (6, 3, 12.0), "    12"),
    ("%d %d %d %#[1]o %#o %#o", (11, 12, 13), "11 12 13 013 014 015"),
    ("%[d", (2, 1), "%!d(BADINDEX)"),
    ("%]d", (2, 1), "%!](int=2)d%!(EXTRA int=1)"),
    ("%[]d", (2, 1), "%!d(BADINDEX)"),
    ("%[-3]d", (2, 1), "%!d(BADINDEX)"),
    ("%[99]d", (2, 1), "%!d(BADINDEX)"),
    ("%[3]", (2, 1), "%!(NOVERB)"),
    ("%[1].2d", (5, 6), "%!d(BADINDEX)"),
    ("%[1]2d", (2, 1), "%!d(BADINDEX)"),
    ("%3.[2]d", (7,), "%!d(BADINDEX)"),
    ("%d %d %d %#[1]o %#o %#o %#o", (11, 12, 13), "11 12 13 013 014 015 %!o(MISSING)"),
    ("%[5]d %[2]d %d", (1, 2, 3), "%!d(BADINDEX) 2 3"),
    ("%d %[3]d %d", (1, 2), "1 %!d(BADINDEX) 2"),
    ("%.[]", (), "%!](BADINDEX)"),
]


@pytest.mark.parametrize(("fmt", "args", "expected"), SPRINTF_CASES)
def test_sprintf(fmt: str, args: tuple[object, ...], expected: str) -> None:
    assert go_sprintf(fmt, *args) == expected


def test_width_and_precision_are_capped() -> None:
    assert len(go_sprintf(f"%{MAX_WIDTH}d", 1)) == MAX_WIDTH
    assert len(go_sprintf(f"%.{MAX_WIDTH}f", 1.0)) == MAX_WIDTH + 2
    with pytest.raises(ValueError, match="width or precision"):
        go_sprintf(f"%{MAX_WIDTH + 1}d", 1)
    with pytest.raises(ValueError, match="width or precision"):
        go_sprintf(f"%.{MAX_WIDTH + 1}f", 1.0)
    with pytest.raises(ValueError, match="width or precision"):
        go_sprintf("%*d", MAX_WIDTH + 1, 1)
    with pytest.raises(ValueError, match="width or precision"):
        go_sprintf("%*d", -(MAX_WIDTH + 1), 1)
    with pytest.raises(ValueError, match="width or precision"):
        go_sprintf("%.*d", 10**9, 1)
    with pytest.raises(ValueError, match="width or precision"):
        go_sprintf("%" + "9" * 5000 + "d", 1)
    # An oversized argument index is just a bad index, not an allocation.
    assert go_sprintf("%[99999999999]d", 1) == "%!d(BADINDEX)"


def test_padding_of_containers_is_bounded() -> None:
    # The width applies to each element, so a large list could multiply it into gigabytes.
    assert len(go_sprintf("%100v", list(range(5000)))) == 5000 * 101 + 1
    with pytest.raises(ValueError, match="too large"):
        go_sprintf("%10000v", list(range(5000)))
    with pytest.raises(ValueError, match="too large"):
        go_sprintf("%.10000f", [1.0] * 5000)
    with pytest.raises(ValueError, match="too large"):
        go_sprintf("%10000d", bytes(5000))
    with pytest.raises(ValueError, match="too large"):
        go_sprintf("%10000d" * 2000, *range(2000))
    # Without a width, large values format normally.
    assert go_sprintf("%v", list(range(100_000))).startswith("[0 1 2")


def test_sprint_spacing_follows_go() -> None:
    assert go_sprint() == ""
    assert go_sprint(1, 2) == "1 2"
    assert go_sprint("a", "b") == "ab"
    assert go_sprint(1, "a", 2) == "1a2"
    assert go_sprint("a", 1, 2, "b") == "a1 2b"
    assert go_sprint(None, 1.5, [1, 2]) == "<nil> 1.5 [1 2]"


def test_sprintln() -> None:
    assert go_sprintln() == "\n"
    assert go_sprintln("a", "b", 1) == "a b 1\n"
