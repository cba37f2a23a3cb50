"""expr-lang expressions: syntax, precedence, semantics, errors with offsets, limits."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from machinery.lang.expr import (
    BUILTIN_FUNCTION_NAMES,
    Expression,
    ExpressionError,
    compile_expression,
)
from tests.support import assert_took

ENV: dict[str, object] = {
    "data": {
        "temp": 15,
        "load": 1.5,
        "name": "web1.example.net",
        "items": [3, 1, 2],
        "words": ["a", "b"],
        "nested": {"deep": {"value": 7}},
        "nothing": None,
        "flag": True,
        "users": [{"name": "ann", "age": 31}, {"name": "bob", "age": 17}],
    },
    "identity": "node1",
    "double": lambda x: x * 2,
    "fails": lambda: 1 / 0,
}


def ev(source: str, env: Mapping[str, object] = ENV) -> object:
    return compile_expression(source).evaluate(env)


def compile_error(source: str, names: set[str] | None = None) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        compile_expression(source, names)
    return info.value


def runtime_error(source: str, env: Mapping[str, object] = ENV) -> ExpressionError:
    expression = compile_expression(source)
    with pytest.raises(ExpressionError) as info:
        expression.evaluate(env)
    return info.value


# -- literals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("42", 42),
        ("1_000", 1000),
        ("0x2A", 42),
        ("0o52", 42),
        ("0b101010", 42),
        ("007", 7),
        ("0.5", 0.5),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("1.5e-3", 0.0015),
        ("2E+2", 200.0),
        ("9223372036854775807", 9223372036854775807),
        ("'single'", "single"),
        ('"double"', "double"),
        (r'"tab\there"', "tab\there"),
        (r"'it\'s'", "it's"),
        (r'"q\"q"', 'q"q'),
        (r'"\u00e9\x41\101\\"', "éAA\\"),
        (r'"\U0001F600"', "\U0001f600"),
        ("`raw\\n`", "raw\\n"),
        ("`two\nlines`", "two\nlines"),
        ("true", True),
        ("false", False),
        ("nil", None),
        ("[1, 'a', nil]", [1, "a", None]),
        ("[1, 2,]", [1, 2]),
        ("[]", []),
        ("{a: 1, 'b': 2, \"c\": 3, 4: 5}", {"a": 1, "b": 2, "c": 3, "4": 5}),
        ("{(1 + 1): 'two'}", {2: "two"}),
        ("{a: 1,}", {"a": 1}),
        ("{}", {}),
        ("1 /* comment */ + // another\n 2", 3),
    ],
)
def test_literals(source: str, value: object) -> None:
    result = ev(source)
    assert result == value
    assert type(result) is type(value)


# -- operators -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "value"),
    [
        # arithmetic
        ("1 + 2", 3),
        ("1 + 2.5", 3.5),
        ("'a' + 'b'", "ab"),
        ("[1] + [2, 3]", [1, 2, 3]),
        ("5 - 7", -2),
        ("2 * 3.5", 7.0),
        ("7 / 2", 3.5),
        ("6 / 3", 2.0),
        ("7 % 3", 1),
        ("-7 % 3", -1),
        ("7 % -3", 1),
        ("2 ** 10", 1024.0),
        ("2 ^ 3", 8.0),
        ("4 ** 0.5", 2.0),
        ("-data.temp", -15),
        ("+data.load", 1.5),
        ("- -3", 3),
        ("9223372036854775807 + 1", -9223372036854775808),
        ("-9223372036854775807 - 2", 9223372036854775807),
        ("4611686018427387904 * 2", -9223372036854775808),
        # comparison
        ("1 == 1.0", True),
        ("1 == '1'", False),
        ("nil == nil", True),
        ("nil == false", False),
        ("true == 1", False),
        ("[1, [2]] == [1, [2.0]]", True),
        ("{a: [1]} == {a: [1]}", True),
        ("{a: 1} == {a: 2}", False),
        ("[1] == [1, 2]", False),
        ("1 != 2", True),
        ("'a' != 'a'", False),
        ("1 < 2", True),
        ("2 <= 2.0", True),
        ("3 > 2.5", True),
        ("'b' >= 'a'", True),
        ("'abc' < 'abd'", True),
        ("1 < 2 < 3", True),
        ("1 < 3 < 2", False),
        ("3 > 2 > 1 == true", False),  # 3 > 2 && 2 > 1 && 1 == true
        # logic
        ("true && false", False),
        ("true and true", True),
        ("false || true", True),
        ("false or false", False),
        ("!true", False),
        ("not false", True),
        ("!!true", True),
        ("false && data.nothing.x", False),
        ("true || data.nothing.x", True),
        ("true ? 'y' : 'n'", "y"),
        ("false ? 'y' : 'n'", "n"),
        ("false ? 1 : true ? 2 : 3", 2),
        ("data.flag ?: false", True),
        ("nil ?? 'x'", "x"),
        ("false ?? 'x'", False),
        ("data.nothing ?? data.missing ?? 3", 3),
        # membership
        ("2 in data.items", True),
        ("2.0 in data.items", True),
        ("5 in data.items", False),
        ("'temp' in data", True),
        ("'nope' in data", False),
        ("'web' in data.name", True),
        ("5 not in data.items", True),
        ("'a' not in data.words", False),
        ("[1] in [[1], [2]]", True),
        ("[1] in {a: 1}", False),
        ("data.name contains 'example'", True),
        ("data.name startsWith 'web'", True),
        ("data.name endsWith '.net'", True),
        ("data.name not endsWith '.com'", True),
        ("data.name matches '^web[0-9]+'", True),
        ("data.name matches 'EXAMPLE'", False),
        ("data.name matches '(?i)EXAMPLE'", True),
        ("data.name not matches 'db'", True),
        ("1..3", [1, 2, 3]),
        ("3..1", []),
        ("-1..1", [-1, 0, 1]),
        ("1..1", [1]),
        # member access
        ("data.temp", 15),
        ("data['temp']", 15),
        ('data["nested"].deep["value"]', 7),
        ("data.missing", None),
        ("data.nothing", None),
        ("data?.temp", 15),
        ("data.nothing?.x", None),
        ("data.nothing?.x.y.z", None),
        ("data.missing?.['x']", None),
        ("data.items?.[0]", 3),
        ("data.items[0]", 3),
        ("data.items[-1]", 2),
        ("data.items[1.0]", 1),
        ("data.items[1:]", [1, 2]),
        ("data.items[:2]", [3, 1]),
        ("data.items[1:-1]", [1]),
        ("data.items[:]", [3, 1, 2]),
        ("data.items[5:9]", []),
        ("data.name[0:3]", "web"),
        ("data.name[0]", "w"),
        ("data.users[1].name", "bob"),
        ("data.in", None),
        ("identity", "node1"),
        # calls
        ("double(21)", 42),
        ("double('ab')", "abab"),
        ("data.name | upper()", "WEB1.EXAMPLE.NET"),
        ("data.name | split('.') | len()", 3),
        ("data.items | filter(# > 1)", [3, 2]),
    ],
)
def test_operators(source: str, value: object) -> None:
    result = ev(source)
    assert result == value
    assert type(result) is type(value)


def test_division_follows_go_floats() -> None:
    assert ev("1 / 0") == math.inf
    assert ev("-1 / 0") == -math.inf
    assert math.isnan(ev("0 / 0"))  # type: ignore[arg-type]
    assert ev("2 ** 2000") == math.inf
    assert ev("0 ** -1") == math.inf
    assert math.isnan(ev("(-8) ** 0.5"))  # type: ignore[arg-type]


def test_and_or_need_booleans() -> None:
    assert runtime_error("1 && true").message == (
        "invalid operation: && (mismatched types int and bool)"
    )
    assert runtime_error("false || nil").message == (
        "invalid operation: || (mismatched types bool and <nil>)"
    )
    assert runtime_error("!data.temp").message == "invalid operation: ! (mismatched type int)"
    assert runtime_error("data.temp ? 1 : 2").message == (
        "non-bool expression (type int) used as condition"
    )


# -- precedence ----------------------------------------------------------------------------

# The table in the module docstring, checked pairwise: each expression and its explicit form.
PRECEDENCE = [
    ("1 + 2 * 3", "1 + (2 * 3)", 7),
    ("2 * 3 + 1", "(2 * 3) + 1", 7),
    ("10 - 4 - 3", "(10 - 4) - 3", 3),
    ("2 ** 3 ** 2", "2 ** (3 ** 2)", 512.0),
    ("2 ^ 3 ^ 2", "2 ^ (3 ^ 2)", 512.0),
    ("-2 ** 2", "-(2 ** 2)", -4.0),
    ("-2 * 3", "(-2) * 3", -6),
    ("2 * 3 ** 2", "2 * (3 ** 2)", 18.0),
    ("12 / 2 * 3", "(12 / 2) * 3", 18.0),
    ("12 % 5 * 2", "(12 % 5) * 2", 4),
    ("1 + 1..2 + 2", "(1 + 1)..(2 + 2)", [2, 3, 4]),
    ("1..3 == [1, 2, 3]", "(1..3) == [1, 2, 3]", True),
    ("1 + 2 == 3", "(1 + 2) == 3", True),
    ("!true == false", "(!true) == false", True),
    ("!false && false", "(!false) && false", False),
    ("not true || true", "(not true) || true", True),
    ("true || true && false", "true || (true && false)", True),
    ("false && true || true", "(false && true) || true", True),
    ("1 < 2 == true", "(1 < 2) && (2 == true)", False),
    ("2 in [1, 2] == true", "(2 in [1, 2]) && ([1, 2] == true)", False),
    ("1 + nil ?? 2", "1 + (nil ?? 2)", 3),
    ("data.nothing ?? 1 ?? 2", "(data.nothing ?? 1) ?? 2", 1),
    ("true ? 1 : 2 + 3", "true ? 1 : (2 + 3)", 1),
    ("false ? 1 : 2 + 3", "false ? 1 : (2 + 3)", 5),
    ("1 > 2 ? 'a' : 'b'", "(1 > 2) ? 'a' : 'b'", "b"),
    ("true || false ? 'a' : 'b'", "(true || false) ? 'a' : 'b'", "a"),
    ("'a' + 'b' in 'xaby'", "('a' + 'b') in 'xaby'", True),
    ("data.items | len() + 1", "len(data.items) + 1", 4),
    ("1 + 2 | string()", "string(1 + 2)", "3"),
    ("-data.items[0]", "-(data.items[0])", -3),
    ("!data.flag", "!(data.flag)", False),
]


@pytest.mark.parametrize(("source", "explicit", "value"), PRECEDENCE)
def test_precedence(source: str, explicit: str, value: object) -> None:
    assert ev(source) == ev(explicit) == value


def test_not_negates_only_comparisons_tighter_than_it() -> None:
    # "not" binds looser than "*" but tighter than "+": !(a * b) is a type error, not a parse
    # error, while (!a) + 1 is a mismatched + after negation.
    assert runtime_error("!2 * 3").message == "invalid operation: ! (mismatched type int)"
    assert runtime_error("!true + 1").message == (
        "invalid operation: + (mismatched types bool and int)"
    )


def test_coalesce_cannot_be_mixed_without_parentheses() -> None:
    error = compile_error("data.x ?? 1 + 2")
    assert error.message == (
        "operator + and coalesce expressions (??) cannot be mixed; wrap either in parentheses"
    )
    assert error.offset == 12
    assert ev("(data.x ?? 1) + 2") == 3
    assert compile_error("data.x ?? 1 == 1").offset == 12
    assert ev("data.x ?? 'A' | lower()") == "a"


# -- member access and nil -----------------------------------------------------------------


def test_fetching_from_nil_is_an_error_unless_optional() -> None:
    error = runtime_error("data.missing.x == 1")
    assert error.message == "cannot fetch x from <nil>"
    assert error.offset == 13
    assert runtime_error("data.nothing['k']").message == "cannot fetch k from <nil>"
    # "?." on nil makes the rest of the chain nil; on a value it is an ordinary access.
    assert ev("data.nothing?.a.b") is None
    assert runtime_error("data.nested?.missing.b").message == "cannot fetch b from <nil>"
    assert ev("data.nested?.deep?.missing") is None


def test_bad_member_access() -> None:
    assert runtime_error("data.temp.x").message == "cannot fetch x from int"
    error = runtime_error("data.items[3]")
    assert error.message == "index out of range: 3 (array length is 3)"
    assert error.offset == 10
    assert runtime_error("data.items[-4]").message == "index out of range: -4 (array length is 3)"
    assert runtime_error("data.items['a']").message == "cannot fetch a from array"
    assert runtime_error("data.items[true]").message == "cannot fetch true from array"
    assert runtime_error("data[[1]]").message == "cannot use array as map key"
    assert runtime_error("data.temp[1:2]").message == "cannot slice int"
    assert runtime_error("{([1]): 2}").message == "cannot use array as map key"


def test_comparing_nil_with_a_number_is_an_error() -> None:
    error = runtime_error("data.missing < 20")
    assert error.message == "invalid operation: < (mismatched types <nil> and int)"
    assert error.offset == 13
    assert runtime_error("'a' > 1").message == (
        "invalid operation: > (mismatched types string and int)"
    )
    assert runtime_error("[1] <= [2]").message == (
        "invalid operation: <= (mismatched types array and array)"
    )


def test_mismatched_operands() -> None:
    cases = {
        "1 + 'a'": "invalid operation: + (mismatched types int and string)",
        "'a' - 'b'": "invalid operation: - (mismatched types string and string)",
        "nil * 2": "invalid operation: * (mismatched types <nil> and int)",
        "1 / nil": "invalid operation: / (mismatched types int and <nil>)",
        "1.5 % 1": "invalid operation: % (mismatched types float and int)",
        "7 % 0": "integer divide by zero",
        "'a' ** 2": "invalid operation: ** (mismatched types string and int)",
        "'a'..2": "invalid operation: .. (mismatched types string and int)",
        "1 in 5": "invalid operation: in (mismatched types int and int)",
        "1 in 'abc'": "invalid operation: in (mismatched types int and string)",
        "1 contains 'a'": "invalid operation: contains (mismatched types int and string)",
        "data.missing startsWith 'a'": (
            "invalid operation: startsWith (mismatched types <nil> and string)"
        ),
        "1 endsWith 'a'": "invalid operation: endsWith (mismatched types int and string)",
        "1 matches 'a'": "invalid operation: matches (mismatched types int and string)",
        "-'a'": "invalid operation: - (mismatched type string)",
    }
    for source, message in cases.items():
        assert runtime_error(source).message == message, source


def test_the_spec_examples() -> None:
    temp = compile_expression("data.temp != nil && data.temp < 20")
    assert temp.evaluate_bool({"data": {"temp": 15}}) is True
    assert temp.evaluate_bool({"data": {"temp": 25}}) is False
    assert temp.evaluate_bool({"data": {}}) is False
    fact = compile_expression("get_fact('fqdn') == 'x'")
    assert fact.evaluate_bool({"get_fact": {"fqdn": "x"}.get}) is True
    assert fact.evaluate_bool({"get_fact": {"fqdn": "y"}.get}) is False


# -- closures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("all(data.items, # > 0)", True),
        ("all(data.items, {# > 1})", False),
        ("all([], false)", True),
        ("any(data.items, # == 2)", True),
        ("any([], true)", False),
        ("none(data.items, # > 5)", True),
        ("none(data.items, # > 2)", False),
        ("one(data.items, # > 2)", True),
        ("one(data.items, # > 1)", False),
        ("one([], true)", False),
        ("filter(data.items, # >= 2)", [3, 2]),
        ("map(data.items, # * 10)", [30, 10, 20]),
        ("map(data.items, #index)", [0, 1, 2]),
        ("count(data.items, # > 1)", 2),
        ("count([true, false, true])", 2),
        ("sum(data.items)", 6),
        ("sum(data.items, # * 1.5)", 9.0),
        ("find(data.items, # < 3)", 1),
        ("find(data.items, # > 9)", None),
        ("findIndex(data.items, # == 2)", 2),
        ("findIndex(data.items, # == 9)", -1),
        ("findLast(data.items, # > 1)", 2),
        ("findLastIndex(data.items, # > 1)", 2),
        ("findLastIndex(data.items, # > 9)", -1),
        ("map(data.users, .name)", ["ann", "bob"]),
        ("filter(data.users, .age >= 18)[0].name", "ann"),
        ("map(data.users, #.name | upper())", ["ANN", "BOB"]),
        ("all(data.users, len(.name) == 3)", True),
        ("map([[1, 2], [3]], sum(#))", [3, 3]),
        ("map([[1, 2], [3]], map(#, # * 10))", [[10, 20], [30]]),
        ("map(1..3, # + data.temp)", [16, 17, 18]),
        ("filter(data.items, # > 1,)", [3, 2]),
        ("data.items | map(# + 1) | filter(# > 2)", [4, 3]),
        ("data.items | count(# > 1)", 2),
        ("data.items | sum()", 6),
    ],
)
def test_predicates(source: str, value: object) -> None:
    result = ev(source)
    assert result == value
    assert type(result) is type(value)


def test_predicate_errors() -> None:
    error = runtime_error("all(data.items, # + 1)")
    assert error.message == "all(): predicate must return bool, got int"
    assert error.offset == 0
    assert runtime_error("  any(data.temp, true)").message == "any(): expected an array, got int"
    assert runtime_error("  any(data.temp, true)").offset == 2
    assert runtime_error("sum(['a'])").message == "sum(): cannot sum string"
    assert compile_error("all(data.items)").message == "not enough arguments to call all"
    assert compile_error("# > 1").message == "cannot use pointer accessor outside predicate"
    error = compile_error("map(data.items, . > 1)")
    assert (error.message, error.offset) == ("expected a name, got token '>'", 18)
    assert compile_error("map(data.items, #acc)").message == "#acc is only defined inside reduce"
    assert compile_error("map(data.items, #key)").message == (
        "unknown pointer #key: use #, #index or #acc"
    )
    assert compile_error(".name").offset == 0


def test_short_circuit_stops_predicates_early() -> None:
    calls: list[object] = []

    def seen(value: object) -> bool:
        calls.append(value)
        return value == 1

    assert compile_expression("any([1, 2, 3], seen(#))").evaluate({"seen": seen}) is True
    assert calls == [1]


# -- built-in functions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("len('héllo')", 5),
        ("len([1, 2])", 2),
        ("len({a: 1})", 1),
        ("abs(-3)", 3),
        ("abs(-2.5)", 2.5),
        ("int(3.9)", 3),
        ("int(-3.9)", -3),
        ("int('42')", 42),
        ("int('-7')", -7),
        ("int(5)", 5),
        ("float(2)", 2.0),
        ("float('1.5')", 1.5),
        ("float('1e3')", 1000.0),
        ("string(42)", "42"),
        ("string(1.5)", "1.5"),
        ("string(true)", "true"),
        ("string(nil)", "<nil>"),
        ("string([1, 'a'])", "[1 a]"),
        ("string('x')", "x"),
        ("lower('AbC')", "abc"),
        ("upper('AbC')", "ABC"),
        ("trim('  x  ')", "x"),
        ("trim('__x__', '_')", "x"),
        ("trimPrefix('HelloWorld', 'Hello')", "World"),
        ("trimSuffix('HelloWorld', 'World')", "Hello"),
        ("split('a,b,c', ',')", ["a", "b", "c"]),
        ("split('a,b,c', ',', 2)", ["a", "b,c"]),
        ("split('a,b,c', ',', 0)", []),
        ("split('abc', '')", ["a", "b", "c"]),
        ("split('abc', '', 2)", ["a", "bc"]),
        ("split('', ',')", [""]),
        ("join(['a', 'b'], '-')", "a-b"),
        ("join(['a', 'b'])", "ab"),
        ("replace('aXbX', 'X', '-')", "a-b-"),
        ("hasPrefix('web1', 'web')", True),
        ("hasSuffix('web1', 'web')", False),
        ("keys({b: 1, a: 2})", ["b", "a"]),
        ("values({b: 1, a: 2})", [1, 2]),
        ("max(1, 5.5, 3)", 5.5),
        ("min([4, 2, 8])", 2),
        ("ceil(1.2)", 2.0),
        ("floor(-1.2)", -2.0),
        ("round(2.5)", 3.0),
        ("round(-2.5)", -3.0),
        ("ceil(3)", 3.0),  # expr-lang: ceil, floor and round always give a float
        ("first([7, 8])", 7),
        ("last([7, 8])", 8),
        ("first([])", None),
        ("get([1, 2], 5)", None),
        ("get({a: 1}, 'a')", 1),
        ("get(nil, 'a')", None),
        ("type(1)", "int"),
        ("type(1.0)", "float"),
        ("type(nil)", "nil"),
        ("type({})", "map"),
        ("type([])", "array"),
        ("type('')", "string"),
        ("type(true)", "bool"),
    ],
)
def test_builtins(source: str, value: object) -> None:
    result = ev(source)
    assert result == value
    assert type(result) is type(value)


def test_builtin_errors() -> None:
    cases = {
        "len(1)": "len(): invalid argument for len (type int)",
        "abs('a')": "abs(): invalid argument for abs (type string)",
        "int('1.5')": "int(): cannot parse '1.5' as int",
        "int(' 1')": "int(): cannot parse ' 1' as int",
        "int(true)": "int(): invalid argument for int (type bool)",
        "int(1 / 0)": "int(): cannot convert +Inf to int",
        "float('x')": "float(): cannot parse 'x' as float",
        "float(nil)": "float(): invalid argument for float (type <nil>)",
        "lower(1)": "lower(): expected a string argument, got int",
        "join([1], ',')": "join(): cannot join int: only strings",
        "join('a')": "join(): expected an array, got string",
        "keys([])": "keys(): expected a map, got array",
        "max([])": "max(): not enough arguments to call max",
        "max('a', 1)": "max(): invalid argument for max (type string)",
        "first(1)": "first(): expected an array, got int",
    }
    for source, message in cases.items():
        assert runtime_error(source).message == message, source
    assert compile_error("len()").message == "not enough arguments to call len"
    assert compile_error("len(1, 2)").message == "too many arguments to call len"
    assert compile_error("x + lower(1, 2)").offset == 4


def test_builtins_take_precedence_over_the_environment() -> None:
    assert compile_expression("len('ab')").evaluate({"len": lambda x: 99}) == 2
    assert "len" in BUILTIN_FUNCTION_NAMES and "all" in BUILTIN_FUNCTION_NAMES


# -- environment functions -----------------------------------------------------------------


def test_environment_callables() -> None:
    assert ev("double(data.temp) == 30") is True
    error = runtime_error("1 + fails()")
    assert error.message == "fails(): division by zero"
    assert error.offset == 4
    assert runtime_error("nope(1)").message == "unknown function 'nope'"
    assert runtime_error("identity(1)").message == "identity is not a function (it is string)"
    assert runtime_error("x").message == "unknown name 'x'"

    def raises_expression_error() -> None:
        raise ExpressionError("inner", 99)

    error = runtime_error("  f()", {"f": raises_expression_error})
    assert (error.message, error.offset) == ("f(): inner", 2)


def test_method_calls_on_maps() -> None:
    env = {"tools": {"twice": lambda x: x * 2}}
    assert compile_expression("tools.twice(4)").evaluate(env) == 8
    assert runtime_error("data.name.upper()").message == "cannot fetch upper from string"
    error = runtime_error("tools.twice(1, 2)", env)
    assert error.message.startswith("twice(): ")
    assert error.offset == 6


def test_evaluate_bool() -> None:
    assert compile_expression("1 < 2").evaluate_bool(ENV) is True
    with pytest.raises(ExpressionError) as info:
        compile_expression("data.temp").evaluate_bool(ENV)
    assert info.value.message == "expected bool, got int"
    with pytest.raises(ExpressionError) as info:
        compile_expression("data.nothing").evaluate_bool(ENV)
    assert info.value.message == "expected bool, got <nil>"


def test_expect_bool_refuses_expressions_that_cannot_be_bool() -> None:
    for source, kind in [
        ("1 + 2", "a number, string or array"),
        ("'x'", "string"),
        ("nil", "nil"),
        ("[true]", "array"),
        ("{}", "map"),
        ("-data.x", "number"),
        ("len(data.x)", "int"),
        ("map(data.x, # > 1)", "array"),
        ("data.x ? 1 : 2", "int"),
        ("1..2", "array"),
    ]:
        with pytest.raises(ExpressionError) as info:
            compile_expression(source, expect_bool=True)
        assert info.value.message == f"expected bool, but the expression gives {kind}"
    for source in ["data.x", "data.x ?? false", "data.x ? true : 1", "f()", "find(data.x, #)"]:
        compile_expression(source, expect_bool=True)


# -- syntax errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message", "offset"),
    [
        ("", "unexpected end of expression", 0),
        ("1 +", "unexpected end of expression", 3),
        ("1 + * 2", "unexpected token '*'", 4),
        ("(1 + 2", "unexpected end of expression, expected ')'", 6),
        ("1 + 2)", "unexpected token ')'", 5),
        ("[1, 2", "unexpected end of expression, expected ','", 5),
        ("{a 1}", "unexpected token '1', expected ':'", 3),
        ("{[1]: 2}", "a map key must be a quoted string, a number, an identifier, or an "
         "expression in parentheses (unexpected token '[')", 1),
        ("'abc", "literal not terminated", 0),
        ("x + 'ab\ncd'", "literal not terminated", 4),
        ("`abc", "literal not terminated", 0),
        (r"'\q'", "invalid char escape", 1),
        (r"'\x4'", "invalid char escape", 1),
        (r"'\ud800'", "invalid char escape", 1),
        (r"'\08'", "invalid octal escape", 1),
        ("1 /* open", "unclosed comment", 2),
        ("a @ b", "unrecognized character: U+0040 '@'", 2),
        ("1a", "bad number syntax: '1a'", 0),
        ("0x", "invalid number literal '0x'", 0),
        ("1e", "invalid number literal '1e'", 0),
        ("9223372036854775808", "integer literal is too large", 0),
        ("1e999", "float literal is too large", 0),
        ("a = 1", "unexpected token '='", 2),
        ("a & b", "unexpected token '&'", 2),
        ("a not b", "unexpected token 'b'", 6),
        ("data.", "expected a name, got end of expression", 5),
        ("data.1", "unexpected token '.1'", 4),
        ("true ? 1", "unexpected end of expression, expected ':'", 8),
        ("x | 1", "unexpected token '1'", 4),
        ("nil.x", "unexpected token '.'", 3),
        ("f(1 2)", "unexpected token '2', expected ','", 4),
        ("x matches '['", "invalid regular expression '[': missing ]: [", 10),
        # RE2, as Go: no backreferences or lookbehind, refused when the expression compiles.
        ("x matches '(?<=a)b'", "invalid regular expression '(?<=a)b': invalid perl operator: (?<=", 10),
        ("x matches '" + "a" * 1001 + "'", "regular expression too long (1001 characters, "
         "at most 1000)", 10),
    ],
)  # fmt: skip
def test_syntax_errors(source: str, message: str, offset: int) -> None:
    error = compile_error(source)
    assert (error.message, error.offset) == (message, offset)
    assert str(error) == message


def test_unknown_names_with_did_you_mean() -> None:
    names = {"data", "facts", "identity", "get_fact"}
    error = compile_error("data.ok && idnetity == 'x'", names)
    assert error.message == "unknown name 'idnetity'; did you mean 'identity'?"
    assert error.offset == 11
    error = compile_error("get_facts('x')", names)
    assert error.message == "unknown name 'get_facts'; did you mean 'get_fact'?"
    error = compile_error("lenn(data) > 1", names)
    assert error.message == "unknown name 'lenn'; did you mean 'len'?"
    assert compile_error("zzz", names).message == "unknown name 'zzz'"
    assert compile_error("DATA.x", names).message == "unknown name 'DATA'; did you mean 'data'?"
    assert compile_error("frob() > 1", names).message == "unknown name 'frob'"
    # Members, map keys, predicates' fields and built-ins are not names.
    compile_expression(
        "data.x.y && {k: 1}.k == 1 && all(data.l, .name == 'a') && len(facts) > 0", names
    )
    # Syntax errors come first.
    assert compile_error("zzz +", names).message == "unexpected end of expression"


# -- limits --------------------------------------------------------------------------------


def test_source_length_limit() -> None:
    compile_expression("x" * 10_000)
    error = compile_error("x" * 10_001)
    assert error.message == "expression is too long (10001 characters, at most 10000)"


def test_nesting_limit() -> None:
    compile_expression("(" * 99 + "1" + ")" * 99)
    error = compile_error("(" * 101 + "1" + ")" * 101)
    assert error.message == "expression is nested too deeply (more than 100 levels)"
    assert error.offset == 100
    assert compile_error("[" * 200).message.startswith("expression is nested too deeply")
    assert compile_error("-" * 5000 + "1").message.startswith("expression is nested too deeply")
    assert compile_error("!" * 5000 + "true").message.startswith("expression is nested")


def test_long_flat_chains_evaluate_without_deep_recursion() -> None:
    assert ev(" + ".join(["1"] * 2000)) == 2000
    assert ev(" && ".join(["true"] * 1000)) is True
    assert ev("data" + ".nested" + "?.x" * 2000) is None
    assert ev(" == ".join(["1"] * 1000)) is True


def test_range_limit() -> None:
    assert len(ev("1..100000")) == 100_000  # type: ignore[arg-type]
    error = runtime_error("  0..100000")
    assert error.message == "range is too large (100001 elements, at most 100000)"
    assert error.offset == 3


def test_evaluation_cost_limit() -> None:
    started = time.monotonic()
    error = runtime_error("count(1..100000, all(1..100000, # > 0))")
    assert error.message == "expression evaluation is too expensive (more than 1000000 steps)"
    assert_took(time.monotonic() - started, 30.0, "expression stopped at its cost limit")


def test_string_size_limit() -> None:
    env = {"s": "x" * (1 << 19)}
    assert len(compile_expression("s + s").evaluate(env)) == 1 << 20  # type: ignore[arg-type]
    assert runtime_error("s + s + 'x'", env).message == (
        "string too long (1048577 characters, at most 1048576)"
    )
    assert runtime_error("replace(s, 'x', 'yyy')", env).message.startswith("replace(): string")


def test_deeply_nested_data_is_an_error_not_a_crash() -> None:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    error = runtime_error("x == x", {"x": deep})
    assert error.message == "data nested too deeply to evaluate"


# -- properties ----------------------------------------------------------------------------


def test_expressions_are_reusable_and_hold_no_state() -> None:
    expression = compile_expression("data.n > 2")
    assert isinstance(expression, Expression)
    assert expression.source == "data.n > 2"
    assert [expression.evaluate({"data": {"n": n}}) for n in range(5)] == [
        False,
        False,
        False,
        True,
        True,
    ]
    assert repr(expression) == "Expression('data.n > 2')"


def test_evaluation_is_fast() -> None:
    expression = compile_expression("data.temp != nil && data.temp < 20 && identity == 'node1'")
    started = time.perf_counter()
    for _ in range(10_000):
        expression.evaluate(ENV)
    # A loose bound: about 10µs per evaluation here, allow a slow CI machine.
    assert_took(time.perf_counter() - started, 2.0, "10,000 expression evaluations")


EXPR_ALPHABET = "()[]{}.,:?!<>=+-*/%^&|#'\"` \n\\abcdxyz019_eE$é"


@settings(deadline=500, max_examples=400)
@given(st.text(max_size=300))
def test_any_text_compiles_or_raises_expression_error(text: str) -> None:
    try:
        compile_expression(text)
    except ExpressionError as exc:
        assert 0 <= exc.offset <= len(text)


@settings(deadline=500, max_examples=1000)
@given(st.text(alphabet=EXPR_ALPHABET, max_size=200))
def test_expression_like_text_compiles_and_evaluates_or_raises_expression_error(
    text: str,
) -> None:
    try:
        expression = compile_expression(text)
    except ExpressionError as exc:
        assert 0 <= exc.offset <= len(text)
        return
    env = {"a": 1, "b": [1, 2], "c": {"d": "e"}, "x": None, "y": "s", "z": 2.5}
    try:
        expression.evaluate(env)
    except ExpressionError as exc:
        assert 0 <= exc.offset <= len(text)


# -- random arithmetic against a reference --------------------------------------------------

_I64 = 1 << 63


def _wrap(value: int) -> int:
    return ((value + _I64) % (1 << 64)) - _I64


@dataclass(frozen=True)
class Num:
    value: int | float


@dataclass(frozen=True)
class Neg:
    operand: object


@dataclass(frozen=True)
class Bin:
    op: str
    left: object
    right: object


_PRECEDENCE = {"+": 30, "-": 30, "*": 60, "/": 60, "%": 60, "**": 100}


class Refused(Exception):
    """The reference says expr-lang refuses this (an error is expected)."""


def reference(node: object) -> int | float:
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Neg):
        value = reference(node.operand)
        return _wrap(-value) if isinstance(value, int) else -value
    assert isinstance(node, Bin)
    a, b = reference(node.left), reference(node.right)
    both_int = isinstance(a, int) and isinstance(b, int)
    if node.op == "+":
        return _wrap(a + b) if both_int else float(a) + float(b)  # type: ignore[operator]
    if node.op == "-":
        return _wrap(a - b) if both_int else float(a) - float(b)  # type: ignore[operator]
    if node.op == "*":
        return _wrap(a * b) if both_int else float(a) * float(b)  # type: ignore[operator]
    if node.op == "/":
        if b == 0:
            raise Refused  # Inf/NaN: checked separately
        return float(a) / float(b)
    if node.op == "%":
        if not both_int or b == 0:
            raise Refused
        assert isinstance(a, int) and isinstance(b, int)
        remainder = abs(a) % abs(b)
        return _wrap(-remainder if a < 0 else remainder)
    assert node.op == "**"
    return float(a) ** float(b)


def render(node: object) -> str:
    if isinstance(node, Num):
        return repr(node.value)
    if isinstance(node, Neg):
        inner = render(node.operand)
        needs = isinstance(node.operand, Bin) and _PRECEDENCE[node.operand.op] < 90
        return f"-({inner})" if needs else f"-{inner}"
    assert isinstance(node, Bin)
    precedence = _PRECEDENCE[node.op]
    right_assoc = node.op == "**"
    left, right = render(node.left), render(node.right)
    left_prec = _child_precedence(node.left)
    right_prec = _child_precedence(node.right)
    if left_prec < precedence or (right_assoc and left_prec == precedence):
        left = f"({left})"
    if right_prec < precedence or (not right_assoc and right_prec == precedence):
        right = f"({right})"
    return f"{left} {node.op} {right}"


def _child_precedence(node: object) -> int:
    if isinstance(node, Bin):
        return _PRECEDENCE[node.op]
    if isinstance(node, Neg):
        return 90
    return 1000


small_ints = st.integers(min_value=0, max_value=50).map(Num)
small_floats = st.sampled_from([0.5, 1.5, 2.25, 10.0]).map(Num)
powers = st.builds(
    lambda a, b: Bin("**", Num(a), Num(b)),
    st.integers(min_value=0, max_value=9),
    st.integers(min_value=0, max_value=3),
)
trees = st.recursive(
    st.one_of(small_ints, small_floats, powers),
    lambda children: st.one_of(
        st.builds(Neg, children),
        st.builds(Bin, st.sampled_from(["+", "-", "*", "/", "%"]), children, children),
    ),
    max_leaves=12,
)


@settings(deadline=None, max_examples=500)
@given(trees)
def test_random_arithmetic_matches_the_reference(tree: object) -> None:
    source = render(tree)
    try:
        expected = reference(tree)
    except Refused:
        expected = None
    except OverflowError:
        assume(False)
        return
    if expected is None:
        # Division by zero gives Inf or NaN (Go floats); % of floats or by zero is an error.
        try:
            result = ev(source)
        except ExpressionError:
            return
        assert isinstance(result, float)
        return
    result = ev(source)
    if isinstance(expected, float) and math.isnan(expected):
        assert isinstance(result, float) and math.isnan(result)
    else:
        assert result == expected, source
        assert type(result) is type(expected), source


@settings(deadline=None, max_examples=200)
@given(trees, trees, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
def test_random_comparisons_match_the_reference(left: object, right: object, op: str) -> None:
    try:
        a, b = reference(left), reference(right)
    except (Refused, OverflowError):
        assume(False)
        return
    assume(not (isinstance(a, float) and math.isnan(a)))
    assume(not (isinstance(b, float) and math.isnan(b)))
    expected = {
        "==": a == b,
        "!=": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }[op]
    source = f"{render(left)} {op} {render(right)}"
    assert compile_expression(source).evaluate_bool({}) is expected, source


# -- expr-lang v1.17 additions: let, if/else, $env, time values ---------------------------------


def test_let_variables_are_scoped_to_their_body() -> None:
    assert ev("let x = 2; let y = x * 3; x + y") == 8
    assert ev("map([1, 2], let sq = # * #; sq + 1)") == [2, 5]
    # A variable shadows nothing outside its body, and is not a name of the environment.
    assert compile_expression("let free = data.x; free > 1", {"data"}).evaluate({"data": {"x": 2}})
    assert compile_error("let x = 1; let x = 2; x").message == "cannot redeclare variable x"
    assert compile_error("let len = 1; len").message == "cannot redeclare builtin len"
    assert compile_error("let x = 1 x").message == "unexpected token 'x', expected ';'"


def test_if_else_chains() -> None:
    source = 'if data.load > 4 { "busy" } else if data.load > 1 { "ok" } else { "idle" }'
    assert [ev(source, {"data": {"load": n}}) for n in (5, 2, 0)] == ["busy", "ok", "idle"]
    assert compile_error("if true { 1 }").message == "unexpected end of expression, expected 'else'"
    assert runtime_error("if 1 { 1 } else { 2 }").message == (
        "non-bool expression (type int) used as condition"
    )


def test_now_reads_the_given_clock_and_times_compute_as_in_go() -> None:
    clock = lambda: 1_704_164_645.5  # noqa: E731 - 2024-01-02T03:04:05.5Z
    expression = compile_expression('now().UTC().Format("2006-01-02T15:04:05.000Z07:00")')
    assert expression.evaluate({}, clock=clock) == "2024-01-02T03:04:05.500Z"
    age = compile_expression('now() - date("2024-01-01T03:04:05Z") > duration("24h")')
    assert age.evaluate({}, clock=clock) is True
    assert ev('string(date("2024-03-10 12:00", "2006-01-02 15:04") - date("2024-03-09"))') == (
        "36h0m0s"
    )
    assert ev('duration("90m").Hours()') == 1.5
    assert ev('date("Mon, 02 Jan 2006 15:04:05 MST").Weekday()') == 1
    assert runtime_error('duration("10")').message == (
        'duration(): time: missing unit in duration "10"'
    )
    assert runtime_error("now().Nope()").message.endswith("has no field or method Nope")


def test_reduce_needs_an_initial_value_for_an_empty_array() -> None:
    assert runtime_error("reduce([], # + #acc)").message == (
        "reduce(): reduce of empty array with no initial value"
    )
    assert ev("reduce(['a', 'b'], #acc + #, '>')") == ">ab"


def test_to_json_is_go_marshal_indent() -> None:
    # Written out as Go's json.MarshalIndent(v, "", "  ") prints it: map keys sorted, Go's
    # floats and HTML escapes, empty arrays and objects on one line, times in RFC 3339.
    source = 'toJSON({b: [], a: [1, 2.5, {}], c: "<x>", d: 1e-7, t: date("2024-01-02")})'
    assert ev(source) == (
        "{\n"
        '  "a": [\n'
        "    1,\n"
        "    2.5,\n"
        "    {}\n"
        "  ],\n"
        '  "b": [],\n'
        '  "c": "\\u003cx\\u003e",\n'
        '  "d": 1e-7,\n'
        '  "t": "2024-01-02T00:00:00Z"\n'
        "}"
    )
    assert runtime_error("toJSON(1 / 0)").message == "toJSON(): json: unsupported value: +Inf"
