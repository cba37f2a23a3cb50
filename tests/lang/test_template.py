"""The Go text/template subset: syntax, semantics, errors with offsets, limits."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machinery.lang.template import (
    STANDARD_FUNCTION_NAMES,
    STANDARD_FUNCTIONS,
    Template,
    TemplateError,
    parse_template,
)

DATA: dict[str, object] = {
    "facts": {
        "location": "london",
        "fqdn": "web1.example.net",
        "os": {"family": "RedHat", "release": {"major": 9}},
        "list": ["a", "b", 3],
        "cpus": 4,
        "load": 1.5,
        "empty": "",
        "nothing": None,
        "ports": {"https": 443, "http": 80},
    },
    "name": "machine",
}


def _lookup(key: str, default: object) -> object:
    """A dict-based stand-in for Choria's data/facts lookup."""
    current: object = DATA
    for part in key.split("."):
        if not isinstance(current, dict) or part not in current:
            return default
        current = current[part]
    return current


FUNCS: dict[str, Callable[..., object]] = {"lookup": _lookup}


def render(
    text: str, dot: object = DATA, functions: Mapping[str, Callable[..., object]] = FUNCS
) -> str:
    return parse_template(text).render(dot, functions)


def parse_error(text: str) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        parse_template(text)
    return info.value


def render_error(text: str, dot: object = DATA) -> TemplateError:
    template = parse_template(text)
    with pytest.raises(TemplateError) as info:
        template.render(dot, FUNCS)
    return info.value


# --- Choria examples --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{{ lookup "facts.location" "DEFAULT" }}', "london"),
        ('{{ lookup "facts.missing" "DEFAULT" }}', "DEFAULT"),
        ('{{ lookup "facts.fqdn" "d" | ToUpper }}', "WEB1.EXAMPLE.NET"),
        ('{{ lookup "facts.x" "d" | ToUpper }}', "D"),
        ('{{ StringsJoin (lookup "facts.list" "") }}', "a, b, 3"),
        ('{{ StringJoin (lookup "facts.list" "") }}', "a, b, 3"),
        ('{{ StringsJoin (lookup "facts.absent" "") }}', ""),
        ('{{ printf "%s-%d" "a" 3 }}', "a-3"),
        (
            '/usr/bin/check --host {{ lookup "facts.fqdn" "localhost" }}',
            "/usr/bin/check --host web1.example.net",
        ),
        ('{{ lookup "facts.cpus" 1 }} cpus', "4 cpus"),
        ('{{ lookup "facts.load" 0 }}', "1.5"),
        ('{{ lookup "facts.ports" "" }}', "map[http:80 https:443]"),
        ('{{ if eq (lookup "facts.os.family" "") "RedHat" }}yum{{ else }}apt{{ end }}', "yum"),
    ],
)
def test_choria_examples(text: str, expected: str) -> None:
    assert render(text) == expected


# --- text, comments, trimming -----------------------------------------------------------------


def test_static_text_is_returned_unchanged() -> None:
    text = "no actions here } { }} {"
    template = parse_template(text)
    assert template.is_static
    assert template.source == text
    assert template.render(None, {}) is text


def test_non_static_template() -> None:
    template = parse_template("a{{/* c */}}b")
    assert not template.is_static
    assert template.render(None, {}) == "ab"
    assert parse_template("").render(None, {}) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a  {{- 1 -}}  b", "a1b"),
        ("a \n\t{{- 1 }} b", "a1 b"),
        ("a {{ 1 -}} \n b", "a 1b"),
        ("{{- 1 -}}", "1"),
        ("a {{- /* comment */ -}} b", "ab"),
        ("a {{/* comment */}} b", "a  b"),
        ("x{{/* multi\nline }} */}}y", "xy"),
        ("{{-3}}", "-3"),
        ("{{ -3 }}", "-3"),
        ("a{{ 1 }}{{ 2 }}b", "a12b"),
        ("{{ 1 }}\n{{- 2 }}", "12"),
        ("{{ 1 -}}\n\n   \t", "1"),
    ],
)
def test_trim_markers_and_comments(text: str, expected: str) -> None:
    assert render(text) == expected


# --- operands -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{{ "tab\\there" }}', "tab\there"),
        ('{{ "quote\\" backslash\\\\" }}', 'quote" backslash\\'),
        ('{{ "\\u00e9\\U0001F600\\x41\\101" }}', "é😀AA"),
        ('{{ "\\a\\b\\f\\n\\r\\v" }}', "\a\b\f\n\r\v"),
        ('{{ `raw \\n {{ }} "` }}', 'raw \\n {{ }} "'),
        ("{{ `a\r\nb` }}", "a\nb"),
        ('{{ "}}" }}', "}}"),
        ("{{ 42 }}", "42"),
        ("{{ -7 }}", "-7"),
        ("{{ +7 }}", "7"),
        ("{{ 0x1F }}", "31"),
        ("{{ 0o17 }}", "15"),
        ("{{ 017 }}", "15"),
        ("{{ 0b101 }}", "5"),
        ("{{ 1_000_000 }}", "1000000"),
        ("{{ 08 }}", "8"),
        ("{{ 1.5 }}", "1.5"),
        ("{{ 1.0 }}", "1"),
        ("{{ 1e3 }}", "1000"),
        ("{{ 1e6 }}", "1e+06"),
        ("{{ .5 }}", "0.5"),
        ("{{ 0x1p-2 }}", "0.25"),
        ("{{ 'a' }}", "97"),
        ("{{ '\\n' }}", "10"),
        ("{{ '\\x41' }}", "65"),
        ("{{ 'é' }}", "233"),
        ("{{ true }} {{ false }}", "true false"),
        ("{{ . }}", "hello"),
    ],
)
def test_literals(text: str, expected: str) -> None:
    assert render(text, "hello") == expected


def test_number_literal_types() -> None:
    # Integers stay integers, everything written with a fraction or exponent is a float64.
    assert render("{{ printf `%T %T %T %T` 1 1.0 1e3 'a' }}") == "int float64 float64 int"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ .name }}", "machine"),
        ("{{ .facts.os.family }}", "RedHat"),
        ("{{ .facts.os.release.major }}", "9"),
        ("{{ .facts.missing }}", "<no value>"),
        ("{{ .facts.missing.deeper.still }}", "<no value>"),
        ("{{ .nope }}", "<no value>"),
        # JSON null is a nil interface{}: Go prints no value (print/printf still say <nil>).
        ("{{ .facts.nothing }}", "<no value>"),
        ("{{ .facts.list }}", "[a b 3]"),
        ("{{ .facts.os }}", "map[family:RedHat release:map[major:9]]"),
        ("{{ $.name }}", "machine"),
        ("{{ $ | len }}", "2"),
        ('{{ (lookup "facts.os" "").family }}', "RedHat"),
        ('{{ (lookup "facts.os" "").release.major }}', "9"),
        ("{{ with .facts.os }}{{ .family }} {{ $.name }}{{ end }}", "RedHat machine"),
    ],
)
def test_fields(text: str, expected: str) -> None:
    assert render(text) == expected


def test_fields_on_objects() -> None:
    dot = SimpleNamespace(name="obj", inner=SimpleNamespace(value=3), _secret="hidden")
    assert render("{{ .name }} {{ .inner.value }}", dot) == "obj 3"
    error = render_error("{{ .missing }}", dot)
    assert "can't evaluate field missing" in error.message
    error = render_error("{{ ._secret }}", dot)
    assert "can't evaluate field _secret" in error.message


def test_failing_object_properties_become_template_errors() -> None:
    class Broken:
        @property
        def value(self) -> object:
            raise RuntimeError("boom")

    error = render_error("{{ .value }}", Broken())
    assert error.message == "error evaluating field value: boom"


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("ab {{ .facts.nothing.x }}", "nil pointer evaluating interface {}.x", 6),
        ("{{ .name.x }}", "can't evaluate field x in type string", 3),
        ("{{ .facts.cpus.x }}", "can't evaluate field x in type int", 3),
        ("{{ .facts.list.x }}", "can't evaluate field x in type []interface {}", 3),
    ],
)
def test_field_errors(text: str, message: str, offset: int) -> None:
    error = render_error(text)
    assert error.message == message
    assert error.offset == offset


# --- pipelines --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{{ "abc" | printf "%s-%s" "x" }}', "x-abc"),
        ("{{ 3 | printf `%d-%s` `a` }}", "%!d(string=a)-%!s(int=3)"),
        ('{{ "hello" | ToUpper | printf "[%s]" }}', "[HELLO]"),
        ('{{ .facts.location | len | printf "%03d" }}', "006"),
        ("{{ printf `%v` (len (index .facts.list 0)) }}", "1"),
        ('{{ (printf "%s" (printf "%s" (ToUpper "deep"))) }}', "DEEP"),
        ("{{ (.facts.os).family }}", "RedHat"),
        ('{{ lookup "facts.location" "x" | }}', "london"),
        ("{{ .facts.empty | printf `%q` }}", '""'),
        ("{{ .facts.missing | printf `%v` }}", "<nil>"),
    ],
)
def test_pipelines(text: str, expected: str) -> None:
    assert render(text) == expected


# --- variables --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ $x := 1 }}{{ $x }}", "1"),
        ("{{ $x := 1 }}{{ $x = 2 }}{{ $x }}", "2"),
        ("{{ $x := .facts }}{{ $x.os.family }}", "RedHat"),
        ("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}", "2"),
        ("{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}", "21"),
        ("{{ $x := 0 }}{{ range .facts.list }}{{ $x = . }}{{ end }}{{ $x }}", "3"),
        ("{{ if $v := .facts.cpus }}{{ $v }}{{ end }}", "4"),
        ("{{ if $v := .facts.empty }}yes{{ else }}[{{ $v }}]{{ end }}", "[]"),
        ("{{ with $v := .facts.os.family }}{{ $v }}{{ . }}{{ end }}", "RedHatRedHat"),
        ("{{ range $v := .facts.list }}{{ $v }}{{ end }}", "ab3"),
        ("{{ range $i, $v := .facts.list }}{{ $i }}{{ $v }}{{ end }}", "0a1b23"),
        ("{{ $i := 9 }}{{ range $i = .facts.list }}{{ end }}{{ $i }}", "3"),
        (
            "{{ $i := 0 }}{{ $v := 0 }}{{ range $i, $v = .facts.list }}{{ end }}{{ $i }}{{ $v }}",
            "23",
        ),
        ("{{ range .facts.list }}{{ $y := . }}{{ $y }}{{ end }}", "ab3"),
        ("{{ ($x := 5) }} {{ $x }}", "5 5"),
        ("{{ $x := .nope }}{{ $x }}", "<no value>"),
        ("{{ range .facts.list }}{{ $.name }}{{ end }}", "machinemachinemachine"),
    ],
)
def test_variables(text: str, expected: str) -> None:
    assert render(text) == expected


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("{{ $x }}", 3),
        ("{{ $x = 1 }}", 3),
        ("{{ if true }}{{ $x := 1 }}{{ end }}{{ $x }}", 38),
        ("{{ range $i := . }}{{ end }}{{ $i }}", 31),
        ("{{ with $x := 1 }}{{ end }}{{ $x }}", 30),
        ("{{ $x := $x }}", 9),
    ],
)
def test_undefined_variables(text: str, offset: int) -> None:
    error = parse_error(text)
    assert error.message.startswith("undefined variable")
    assert error.offset == offset


# --- control structures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ if true }}yes{{ end }}", "yes"),
        ("{{ if false }}yes{{ end }}", ""),
        ("{{ if false }}yes{{ else }}no{{ end }}", "no"),
        ("{{ if 0 }}a{{ else if 1 }}b{{ else }}c{{ end }}", "b"),
        ("{{ if 0 }}a{{ else if 0 }}b{{ else if 0 }}c{{ else }}d{{ end }}", "d"),
        ("{{ if 0 }}a{{ else if 0 }}b{{ end }}", ""),
        ("{{ if .facts.missing }}a{{ else }}b{{ end }}", "b"),
        ("{{ if .facts.nothing }}a{{ else }}b{{ end }}", "b"),
        ('{{ if "" }}a{{ else }}b{{ end }}', "b"),
        ("{{ if 0.0 }}a{{ else }}b{{ end }}", "b"),
        ("{{ if .facts.list }}a{{ else }}b{{ end }}", "a"),
        ("{{ if index .facts.list 0 }}a{{ end }}", "a"),
        ("{{ with .facts.os }}{{ .family }}{{ end }}", "RedHat"),
        ("{{ with .facts.empty }}x{{ else }}empty{{ end }}", "empty"),
        ("{{ with .nope }}x{{ else with .facts.os.family }}{{ . }}{{ end }}", "RedHat"),
        ("{{ with .nope }}x{{ else with .nope2 }}y{{ else }}{{ .name }}{{ end }}", "machine"),
        ("{{ range .facts.list }}[{{ . }}]{{ end }}", "[a][b][3]"),
        ("{{ range .facts.ports }}{{ . }} {{ end }}", "80 443 "),
        ("{{ range $k, $v := .facts.ports }}{{ $k }}={{ $v }} {{ end }}", "http=80 https=443 "),
        ("{{ range 3 }}{{ . }}{{ end }}", "012"),
        ("{{ range $i := 3 }}{{ $i }}{{ end }}", "012"),
        ("{{ range 0 }}x{{ else }}none{{ end }}", "none"),
        ("{{ range -2 }}x{{ else }}none{{ end }}", "none"),
        ("{{ range .nope }}x{{ else }}none{{ end }}", "none"),
        ("{{ range .facts.nothing }}x{{ else }}none{{ end }}", "none"),
        ("{{ range .facts.empty_list }}x{{ else }}{{ .name }}{{ end }}", "machine"),
        ("{{ range .facts.list }}{{ if eq . `b` }}{{ break }}{{ end }}{{ . }}{{ end }}", "a"),
        (
            "{{ range $i, $v := .facts.list }}{{ if eq $i 1 }}{{ continue }}{{ end }}{{ $v }}{{ end }}",
            "a3",
        ),
        (
            "{{ range 3 }}{{ range 3 }}{{ if eq . 1 }}{{ break }}{{ end }}{{ . }}{{ end }};{{ end }}",
            "0;0;0;",
        ),
        (
            "{{ range $i := 3 }}{{ range 2 }}{{ $i }}{{ . }} {{ end }}{{ end }}",
            "00 01 10 11 20 21 ",
        ),
    ],
)
def test_control_structures(text: str, expected: str) -> None:
    assert render(text) == expected


def test_range_over_tuples_and_mappings_with_non_string_keys() -> None:
    assert render("{{ range . }}{{ . }}{{ end }}", ("x", "y")) == "xy"
    assert (
        render("{{ range $k, $v := . }}{{ $k }}{{ $v }} {{ end }}", {10: "a", 2: "b"}) == "2b 10a "
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ range .name }}{{ end }}", "range can't iterate over machine"),
        ("{{ range true }}{{ end }}", "range can't iterate over true"),
        ("{{ range 1.5 }}{{ end }}", "range can't iterate over 1.5"),
        ("{{ range $i, $v := 3 }}{{ end }}", "can't use 3 to iterate over more than one variable"),
    ],
)
def test_range_errors(text: str, message: str) -> None:
    assert render_error(text).message == message


# --- functions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # and / or return the deciding value and short-circuit
        ("{{ and 1 0 2 }}", "0"),
        ("{{ and 1 2 3 }}", "3"),
        ("{{ or 0 `` 3 4 }}", "3"),
        ("{{ or 0 `` }}", ""),
        ("{{ or .nope `fallback` }}", "fallback"),
        ("{{ and .nope (index .facts.list 99) }}", "<no value>"),
        ("{{ or 1 (index .facts.list 99) }}", "1"),
        ("{{ 0 | and 1 }}", "0"),
        ("{{ 5 | or 0 }}", "5"),
        ("{{ not 0 }} {{ not 1 }} {{ not `` }} {{ not .nope }}", "true false true true"),
        # comparisons
        ("{{ eq 1 1 }} {{ eq 1 2 }} {{ eq 1 2 3 1 }}", "true false true"),
        ("{{ eq 1 1.0 }} {{ eq 2.5 2.5 }}", "true true"),
        ("{{ eq `a` `a` }} {{ eq `a` `b` `a` }}", "true true"),
        ("{{ eq true true }} {{ eq true false }}", "true false"),
        ("{{ eq .nope `x` }} {{ eq .nope nil }} {{ eq nil nil }}", "false true true"),
        ("{{ ne 1 2 }} {{ ne `a` `a` }}", "true false"),
        ("{{ lt 1 2 }} {{ lt 2 1 }} {{ lt 1 1.5 }} {{ lt `a` `b` }}", "true false true true"),
        ("{{ le 1 1 }} {{ le 2 1 }} {{ le 1.0 1 }}", "true false true"),
        ("{{ gt 2 1 }} {{ gt 1 1 }} {{ ge 1 1 }} {{ ge `a` `b` }}", "true false true false"),
        ("{{ lt .facts.load 2 }}", "true"),
        # len, index, slice
        (
            "{{ len `abc` }} {{ len `héllo` }} {{ len .facts.list }} {{ len .facts.ports }}",
            "3 6 3 2",
        ),
        ("{{ index .facts.list 0 }} {{ index .facts.list 2 }}", "a 3"),
        ("{{ index .facts `os` `release` `major` }}", "9"),
        ("{{ index .facts.ports `https` }}", "443"),
        ("{{ index .facts.ports `gopher` }}", "<no value>"),
        ("{{ index `abc` 1 }}", "98"),
        ("{{ index .facts.list }}", "[a b 3]"),
        ("{{ slice `abcdef` 1 3 }} {{ slice `abcdef` 2 }} {{ slice `abcdef` }}", "bc cdef abcdef"),
        ("{{ slice .facts.list 1 }} {{ slice .facts.list 0 2 3 }}", "[b 3] [a b]"),
        ("{{ slice `héllo` 0 3 }}", "hé"),
        # printing
        ("{{ print 1 2 `a` `b` 3 }}", "1 2ab3"),
        ("{{ print nil }} {{ print }}", "<nil> "),
        ("{{ println 1 `a` }}", "1 a\n"),
        (
            '{{ printf "%5.1f|%-4s|%x|%q|%v" 3.14159 "ab" 255 "q" .facts.list }}',
            '  3.1|ab  |ff|"q"|[a b 3]',
        ),
        ('{{ printf "%d" }}', "%!d(MISSING)"),
        ('{{ printf "%s" "a" "b" }}', "a%!(EXTRA string=b)"),
        ("{{ printf `%v %v` .facts.nothing .nope }}", "<nil> <nil>"),
        # escaping
        (
            "{{ html `<a href=\"x\">'&'</a>` }}",
            "&lt;a href=&#34;x&#34;&gt;&#39;&amp;&#39;&lt;/a&gt;",
        ),
        ("{{ html 1 `<` }}", "1&lt;"),
        ('{{ js `it\'s "x" <b>&=\\` }}', 'it\\\'s \\"x\\" \\u003Cb\\u003E\\u0026\\u003D\\\\'),
        ('{{ js "\\n\\u2028é" }}', "\\u000A\\u2028é"),
        ("{{ urlquery `a b&c=d/é~_.-` }}", "a+b%26c%3Dd%2F%C3%A9~_.-"),
        ("{{ urlquery 1 2 }}", "1+2"),
        # Choria helpers
        ("{{ ToUpper `hello World` }} {{ ToLower `HeLLo` }}", "HELLO WORLD hello"),
        ("{{ ToUpper `straße` }} {{ ToLower `İSTANBUL` }}", "STRAßE istanbul"),
        ("{{ Title `hello wide world` }}", "Hello Wide World"),
        # cases.Title(language.AmericanEnglish): the rest of each word is lower-cased, an
        # apostrophe or a period between letters does not end a word, two in a row do, and a
        # digit does not start one.
        ("{{ Capitalize `hello wOrLD` }}", "Hello World"),
        ("{{ Title `HELLO WORLD` }}", "Hello World"),
        ("{{ Title `o'neil O'NEIL` }}", "O'neil O'neil"),
        ("{{ Title `foo-bar baz.qux x(y) a/b a..b x:y` }}", "Foo-Bar Baz.qux X(Y) A/B A..B X:y"),
        ("{{ Title `snake_case 3rd élan ñu` }}", "Snake_case 3Rd Élan Ñu"),
        ("{{ Title `ǆemal straße ÉCOLE` }}", "ǅemal Straße École"),
        ("{{ Title `ΟΔΟΣ ΣΑΣ` }}", "Οδος Σας"),
        ("{{ Title `` }}", ""),
        ("{{ StringsJoin .facts.list }}", "a, b, 3"),
        ("{{ StringsJoin `single` }}", "single"),
        ("{{ Base64Encode `hello world` }}", "aGVsbG8gd29ybGQ="),
        ("{{ Base64Encode `é` }}", "w6k="),
        ("{{ Base64Decode `aGVsbG8gd29ybGQ=` }}", "hello world"),
        ("{{ Base64Decode `aGVs\nbG8=` }}", "hello"),
        ("{{ Base64Encode `x` | Base64Decode }}", "x"),
    ],
)
def test_functions(text: str, expected: str) -> None:
    assert render(text) == expected


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("{{ lt 1 `a` }}", "error calling lt: incompatible types for comparison", 3),
        ("{{ eq 1 `a` }}", "error calling eq: incompatible types for comparison", 3),
        ("{{ eq .facts.list 1 }}", "error calling eq: invalid type for comparison", 3),
        ("{{ lt true false }}", "error calling lt: invalid type for comparison", 3),
        ("{{ lt nil 1 }}", "error calling lt: invalid type for comparison", 3),
        ("{{ eq 1 }}", "error calling eq: missing argument for comparison", 3),
        ("x {{ index .facts.list 3 }}", "error calling index: index out of range: 3", 5),
        ("{{ index .facts.list -1 }}", "error calling index: index out of range: -1", 3),
        (
            "{{ index .facts.list `a` }}",
            "error calling index: cannot index slice/array with type string",
            3,
        ),
        ("{{ index .facts.cpus 1 }}", "error calling index: can't index item of type int", 3),
        ("{{ index nil 1 }}", "error calling index: index of untyped nil", 3),
        ("{{ slice `abc` 2 1 }}", "error calling slice: invalid slice index: 2 > 1", 3),
        ("{{ slice `abc` 0 9 }}", "error calling slice: index out of range: 9", 3),
        ("{{ slice `abc` 0 1 2 }}", "error calling slice: cannot 3-index slice a string", 3),
        ("{{ slice 5 1 }}", "error calling slice: can't slice item of type int", 3),
        ("{{ len 3 }}", "error calling len: len of type int", 3),
        ("{{ len nil }}", "error calling len: len of nil pointer", 3),
        ("{{ len 1 2 }}", "wrong number of args for len: want 1 got 2", 3),
        ("{{ not }}", "wrong number of args for not: want 1 got 0", 3),
        ("{{ and }}", "wrong number of args for and: want at least 1 got 0", 3),
        ("{{ printf }}", "wrong number of args for printf: want at least 1 got 0", 3),
        ('{{ lookup "a" }}', "wrong number of args for lookup: want 2 got 1", 3),
        ("{{ printf 1 }}", "wrong type for value; expected string; got int", 3),
        ("{{ ToUpper 1 }}", "wrong type for value; expected string; got int", 3),
        ("{{ ToLower .nope }}", "invalid value; expected string", 3),
        ("{{ StringsJoin 1 }}", "wrong type for value; expected []string; got int", 3),
        (
            "{{ printf `%*d` 100000 1 }}",
            "error calling printf: fmt: width or precision larger than 10000",
            3,
        ),
    ],
)
def test_function_errors(text: str, message: str, offset: int) -> None:
    error = render_error(text)
    assert error.message == message
    assert error.offset == offset


def test_base64_decode_rejects_invalid_input() -> None:
    for text in (
        "{{ Base64Decode `not base64!` }}",
        "{{ Base64Decode `aGk` }}",
        "{{ Base64Decode `é` }}",
    ):
        error = render_error(text)
        assert error.message.startswith("error calling Base64Decode: illegal base64 data")


def test_function_exceptions_become_template_errors() -> None:
    def broken(key: str, default: object) -> object:
        raise RuntimeError(f"no data for {key}")

    template = parse_template('ab {{ lookup "x" "y" }}')
    with pytest.raises(TemplateError) as info:
        template.render(None, {"lookup": broken})
    assert info.value.message == "error calling lookup: no data for x"
    assert info.value.offset == 6


def test_functions_fall_back_to_standard_functions() -> None:
    template = parse_template('{{ lookup "facts.location" "" | ToUpper }}')
    assert template.render(None, {"lookup": _lookup}) == "LONDON"
    # Callers can override a standard function for one render.
    assert template.render(None, {"lookup": _lookup, "ToUpper": lambda s: f"<{s}>"}) == "<london>"
    # A lookup that is allowed at parse time but not supplied fails when rendering.
    with pytest.raises(TemplateError, match='function "lookup" not defined') as info:
        template.render(None, {})
    assert info.value.offset == 3


def test_overridden_and_is_not_short_circuited() -> None:
    calls: list[object] = []

    def record(value: object) -> object:
        calls.append(value)
        return value

    template = parse_template("{{ and 0 (record 1) }}", STANDARD_FUNCTION_NAMES | {"record"})
    assert template.render(None, {"record": record}) == "0"
    assert calls == []
    assert template.render(None, {"record": record, "and": lambda *a: a[-1]}) == "1"
    assert calls == [1]


def test_custom_function_names() -> None:
    template = parse_template("{{ greet .name }}", {"greet"})
    assert template.render({"name": "x"}, {"greet": lambda n: f"hi {n}"}) == "hi x"
    with pytest.raises(TemplateError, match='function "greet" not defined'):
        parse_template("{{ greet .name }}")
    with pytest.raises(TemplateError, match='function "ToUpper" not defined'):
        parse_template("{{ ToUpper .name }}", {"greet"})


def test_standard_function_names() -> None:
    for name in (
        "and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index", "slice",
        "print", "printf", "println", "html", "js", "urlquery", "ToUpper", "ToLower",
        "Title", "Capitalize", "StringsJoin", "StringJoin", "Base64Encode", "Base64Decode",
    ):  # fmt: skip
        assert name in STANDARD_FUNCTIONS
    assert frozenset(STANDARD_FUNCTIONS) | {"lookup"} == STANDARD_FUNCTION_NAMES
    assert "lookup" not in STANDARD_FUNCTIONS
    with pytest.raises(TypeError):
        STANDARD_FUNCTIONS["x"] = len  # type: ignore[index]


# --- errors Go reports when executing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("{{ 1 2 }}", "can't give argument to non-function 1", 3),
        ("ab{{ .name 1 }}", "can't give argument to non-function .name", 5),
        ("{{ $x := 1 }}{{ $x 2 }}", "can't give argument to non-function $x", 16),
        ("{{ .name | .facts }}", "can't give argument to non-function .facts", 11),
        ("{{ nil }}", "nil is not a command", 3),
    ],
)
def test_execution_errors(text: str, message: str, offset: int) -> None:
    template = parse_template(text)  # Go accepts these until they run
    with pytest.raises(TemplateError) as info:
        template.render(DATA, FUNCS)
    assert info.value.message == message
    assert info.value.offset == offset


def test_dead_branches_are_not_executed() -> None:
    assert render("{{ if false }}{{ .name 1 }}{{ index .facts.list 9 }}{{ end }}ok") == "ok"


# --- parse errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("abc {{ .x", "unclosed action", 4),
        ("abc {{ .x }", "unclosed action", 4),
        ("x {{ nope 1 }}", 'function "nope" not defined', 5),
        ("x {{ 1 | nope }}", 'function "nope" not defined', 9),
        ("ab{{ end }}", "unexpected {{end}}", 2),
        ("ab{{ else }}", "unexpected {{else}}", 2),
        ("x {{ if 1 }}y", "unexpected EOF: {{if}} has no matching {{end}}", 2),
        (
            "{{ range . }}{{ if 1 }}{{ end }}",
            "unexpected EOF: {{range}} has no matching {{end}}",
            0,
        ),
        ("{{ with 1 }}", "unexpected EOF: {{with}} has no matching {{end}}", 0),
        ("{{ if 1 }}{{ else }}{{ else }}{{ end }}", "expected {{end}}; found {{else}}", 20),
        ("{{ end 1 }}", 'unexpected "1" in end', 7),
        ("{{ if 1 }}{{ else 2 }}{{ end }}", 'unexpected "2" in else', 18),
        ("{{ range . }}{{ else if 1 }}{{ end }}", "unexpected <if> in else", 21),
        ('x {{ "a\\q" }}', 'bad string literal "a\\q": invalid escape sequence \\q', 5),
        ('{{ "\\u12" }}', 'bad string literal "\\u12": invalid escape sequence \\u', 3),
        ('{{ "\\ud800" }}', 'bad string literal "\\ud800": invalid escape sequence \\u', 3),
        ('{{ "\\400" }}', 'bad string literal "\\400": invalid escape sequence \\4', 3),
        ('{{ "\\\'" }}', "bad string literal \"\\'\": invalid escape sequence \\'", 3),
        ('x {{ "abc }}', "unterminated quoted string", 5),
        ('{{ "ab\ncd" }}', "unterminated quoted string", 3),
        ("{{ `abc }}", "unterminated raw quoted string", 3),
        ("{{ 'a }}", "unterminated character constant", 3),
        ("{{ 'ab' }}", "malformed character constant: 'ab'", 3),
        ("{{ '' }}", "malformed character constant: ''", 3),
        ("{{/* x }}", "unclosed comment", 0),
        ("{{/* x */ y }}", "comment ends before closing delimiter", 0),
        ("{{ }}", "missing value for command", 3),
        ("{{ if }}{{ end }}", "missing value for if", 6),
        ("{{ range }}{{ end }}", "missing value for range", 9),
        ('{{ printf "%d" ( ) }}', "missing value for parenthesized pipeline", 17),
        ("{{ break }}", "{{break}} outside {{range}}", 3),
        ("{{ continue }}", "{{continue}} outside {{range}}", 3),
        ("{{ range . }}{{ else }}{{ break }}{{ end }}", "{{break}} outside {{range}}", 26),
        ("{{ range . }}{{ break 1 }}{{ end }}", 'unexpected "1" in {{break}}', 22),
        ("{{ . | 1 }}", "non executable command in pipeline stage 2", 7),
        ('{{ . | "x" }}', "non executable command in pipeline stage 2", 7),
        ("{{ . | . }}", "non executable command in pipeline stage 2", 7),
        ("{{ . | nil }}", "non executable command in pipeline stage 2", 7),
        ("{{ 1.E }}", 'illegal number syntax: "1.E"', 3),
        ("{{ 12abc }}", 'bad number syntax: "12a"', 3),
        ("{{ - }}", 'illegal number syntax: "-"', 3),
        ("{{ 1__0 }}", 'illegal number syntax: "1__0"', 3),
        ("{{ 0x1.8 }}", 'illegal number syntax: "0x1.8"', 3),
        ("{{ 1e400 }}", 'illegal number syntax: "1e400"', 3),
        ("{{ 99999999999999999999 }}", "99999999999999999999 overflows int", 3),
        ("{{ 1i }}", "complex numbers are not supported", 3),
        ('{{ "a"."b" }}', "bad character U+0022 '\"'", 7),
        ('{{ .a"x" }}', "bad character U+0022 '\"'", 5),
        ("{{ .facts.list.0 }}", 'unexpected ".0" in operand', 14),
        ('{{ "a""b" }}', 'unexpected "\\"b\\"" in operand', 6),
        ("{{ $x := 1 }}{{ $x+2 }}", "bad character U+002B '+'", 18),
        ("{{ 1+2 }}", 'unexpected "+2" in operand', 4),
        ('{{ lookup("a") }}', 'unexpected "(" in operand', 9),
        ("{{ @ }}", 'unexpected "@" in command', 3),
        ("{{ 1 @ }}", 'unexpected "@" in operand', 5),
        ("{{ \x01 }}", "unrecognized character in action: U+0001", 3),
        ("{{ ( 1 }}", "unclosed left paren", 7),
        ("{{ 1 ) }}", "unexpected right paren", 5),
        ("{{ x:1 }}", "expected :=", 4),
        ("{{ 1.5.x }}", 'unexpected . after term "1.5"', 6),
        ("{{ true.x }}", 'unexpected . after term "true"', 7),
        ('{{ "s".x }}', 'unexpected . after term "\\"s\\""', 6),
        ("{{ nil.x }}", 'unexpected . after term "nil"', 6),
        ("{{ ..x }}", 'unexpected . after term "."', 4),
        ("{{ $a, $b := 1 }}", "too many declarations in command", 5),
        ("{{ if $a, $b := 1 }}{{ end }}", "too many declarations in if", 8),
        ("{{ range $a, $b, $c := . }}{{ end }}", "too many declarations in range", 15),
        ("{{ range $a, 1 := . }}{{ end }}", "range can only initialize variables", 13),
        ('{{ define "x" }}{{ end }}', "{{define}} is not supported", 3),
        ('{{ template "x" }}', "{{template}} is not supported", 3),
        ('{{ block "x" . }}{{ end }}', "{{block}} is not supported", 3),
        ("{{ if 1 else }}{{ end }}", "unexpected <else> in operand", 8),
        ("{{ | 1 }}", 'unexpected "|" in command', 3),
    ],
)
def test_parse_errors(text: str, message: str, offset: int) -> None:
    error = parse_error(text)
    assert error.message == message
    assert str(error) == message
    assert error.offset == offset
    assert isinstance(error, ValueError)


# --- limits -----------------------------------------------------------------------------------


def test_nesting_limit() -> None:
    ok = "{{ if 1 }}" * 100 + "x" + "{{ end }}" * 100
    assert render(ok) == "x"
    too_deep = "{{ if 1 }}" * 101 + "{{ end }}" * 101
    error = parse_error(too_deep)
    assert error.message == "template nesting too deep"
    assert error.offset == 1000
    parens = "{{ " + "(" * 101 + "1" + ")" * 101 + " }}"
    assert parse_error(parens).message == "template nesting too deep"
    assert render("{{ " + "(" * 99 + "1" + ")" * 99 + " }}") == "1"
    # else-if chains are flat, so long ones are fine.
    chain = "{{ if 0 }}" + "{{ else if 0 }}" * 500 + "{{ else }}end{{ end }}"
    assert render(chain) == "end"


def test_output_limit() -> None:
    template = parse_template('{{ range 2000 }}{{ printf "%1000d" 1 }}{{ end }}')
    with pytest.raises(TemplateError, match="template output too large"):
        template.render(None, {})
    with pytest.raises(TemplateError, match="template output too large"):
        parse_template("x" * 10 + "{{ 1 }}" + "y" * (1 << 20)).render(None, {})
    # Doubling a variable never reaches the output, but is stopped all the same.
    doubling = '{{ $x := "ab" }}{{ range 60 }}{{ $x = printf "%s%s" $x $x }}{{ end }}'
    with pytest.raises(TemplateError, match="template output too large") as info:
        parse_template(doubling).render(None, {})
    assert info.value.offset == doubling.index("printf")
    # Exactly at the limit is fine.
    assert len(parse_template('{{ printf "%10000d" 1 }}').render(None, {})) == 10_000


def test_range_iteration_limit() -> None:
    with pytest.raises(TemplateError, match="too many range iterations"):
        parse_template("{{ range 100001 }}{{ end }}").render(None, {})
    assert parse_template("{{ range 100000 }}{{ end }}").render(None, {}) == ""
    nested = "{{ range 400 }}{{ range 400 }}{{ end }}{{ end }}"
    with pytest.raises(TemplateError, match="too many range iterations"):
        parse_template(nested).render(None, {})
    endless = "{{ range 1000000000000 }}{{ end }}"
    with pytest.raises(TemplateError, match="too many range iterations"):
        parse_template(endless).render(None, {})


def test_each_render_has_its_own_limits() -> None:
    template = parse_template("{{ range 60000 }}{{ end }}done")
    assert template.render(None, {}) == "done"
    assert template.render(None, {}) == "done"


# --- rendering --------------------------------------------------------------------------------


def test_template_is_reusable_and_independent_of_dot() -> None:
    template = parse_template("{{ .a }}-{{ $x := .b }}{{ $x }}")
    assert template.render({"a": 1, "b": 2}, {}) == "1-2"
    assert template.render({"a": "x", "b": None}, {}) == "x-<no value>"
    assert template.render({}, {}) == "<no value>-<no value>"
    assert repr(template) == "Template('{{ .a }}-{{ $x := .b }}{{ $x }}')"
    assert isinstance(template, Template)


def test_templates_compare_by_source() -> None:
    assert parse_template("{{ .a }}") == parse_template("{{ .a }}")
    assert parse_template("{{ .a }}") != parse_template("{{ .b }}")
    assert len({parse_template("x"), parse_template("x")}) == 1
    assert parse_template("x") != "x"


def test_values_too_deep_to_print() -> None:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    error = render_error("ab{{ . }}", deep)
    assert error.message == "value nested too deeply to print"
    assert error.offset == 2


def test_values_print_like_go() -> None:
    dot = {
        "f": 1e6,
        "g": 0.5,
        "b": True,
        "l": [1.0, None, "x"],
        "m": {"z": 1, "a": {}},
        "bytes": b"hi",
    }
    assert render("{{ .f }} {{ .g }} {{ .b }} {{ .l }} {{ .m }} {{ .bytes }}", dot) == (
        "1e+06 0.5 true [1 <nil> x] map[a:map[] z:1] [104 105]"
    )


def test_lookup_render_is_fast() -> None:
    template = parse_template('{{ lookup "facts.location" "d" }}')
    functions = {"lookup": lambda key, default: default}
    template.render(None, functions)
    rounds = 20_000
    start = time.perf_counter()
    for _ in range(rounds):
        template.render(None, functions)
    per_render = (time.perf_counter() - start) / rounds
    assert per_render < 50e-6  # a few microseconds in practice; generous for slow CI machines


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_parse_only_raises_template_errors(text: str) -> None:
    try:
        template = parse_template(text)
    except TemplateError as error:
        assert 0 <= error.offset <= len(text)
    else:
        assert template.source == text


_TEMPLATE_ALPHABET = st.sampled_from(
    ["{{", "}}", "{{-", "-}}", " ", "(", ")", "|", "$x", ":=", "=", ".a", ".", '"s"', "`r`",
     "'c'", "1", "-2.5", "if", "else", "end", "range", "with", "break", "printf", "len", "eq",
     "nil", "true", ",", "/*", "*/", "\\", "x", "\n"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_TEMPLATE_ALPHABET, max_size=25).map("".join))
def test_token_soup_never_crashes(text: str) -> None:
    try:
        template = parse_template(text)
    except TemplateError as error:
        assert 0 <= error.offset <= len(text)
        return
    try:
        result = template.render({"a": [1, 2]}, {"lookup": _lookup})
    except TemplateError as error:
        assert 0 <= error.offset <= len(text)
    else:
        assert isinstance(result, str)


@given(st.text().filter(lambda text: "{{" not in text))
def test_action_free_text_renders_unchanged(text: str) -> None:
    template = parse_template(text)
    assert template.is_static
    assert template.render({"any": "data"}, {}) == text
