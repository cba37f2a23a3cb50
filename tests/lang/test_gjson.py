"""Tests for machinery.lang.gjson, mostly against the examples gjson itself documents."""

from __future__ import annotations

import copy
import time
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machinery.lang.gjson import (
    MAX_ARRAY_COMPONENTS,
    MAX_PATH_LENGTH,
    MAX_QUERY_DEPTH,
    GJSONPathError,
    lookup,
    validate_path,
)
from tests.support import assert_took

# The example document of gjson's README and SYNTAX.md.
DOC: dict[str, Any] = {
    "name": {"first": "Tom", "last": "Anderson"},
    "age": 37,
    "children": ["Sara", "Alex", "Jack"],
    "fav.movie": "Deer Hunter",
    "friends": [
        {"first": "Dale", "last": "Murphy", "age": 44, "nets": ["ig", "fb", "tw"]},
        {"first": "Roger", "last": "Craig", "age": 68, "nets": ["fb", "tw"]},
        {"first": "Jane", "last": "Murphy", "age": 47, "nets": ["ig", "tw"]},
    ],
}
DALE = DOC["friends"][0]
ROGER = DOC["friends"][1]
JANE = DOC["friends"][2]

NOT_FOUND = (False, None)


def found(value: object) -> tuple[bool, object]:
    return (True, value)


# ------------------------------------------------------------------------- documented examples


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # Basic
        ("name.last", "Anderson"),
        ("name.first", "Tom"),
        ("age", 37),
        ("children", ["Sara", "Alex", "Jack"]),
        ("children.0", "Sara"),
        ("children.1", "Alex"),
        ("friends.1", ROGER),
        ("friends.1.first", "Roger"),
        ("friends.1.last", "Craig"),
        # Wildcards
        ("child*.2", "Jack"),
        ("c?ildren.0", "Sara"),
        # Escape character
        (r"fav\.movie", "Deer Hunter"),
        # Arrays
        ("friends.#", 3),
        ("children.#", 3),
        ("friends.#.age", [44, 68, 47]),
        ("friends.#.first", ["Dale", "Roger", "Jane"]),
        # Queries
        ('friends.#(last=="Murphy").first', "Dale"),
        ('friends.#(last=="Murphy")#.first', ["Dale", "Jane"]),
        ("friends.#(age>45)#.last", ["Craig", "Murphy"]),
        ("friends.#(age>47)#.last", ["Craig"]),
        ('friends.#(first%"D*").last', "Murphy"),
        ('friends.#(first!%"D*").last', "Craig"),
        ('children.#(!%"*a*")', "Alex"),
        ('children.#(%"*a*")#', ["Sara", "Jack"]),
        ('friends.#(nets.#(=="fb"))#.first', ["Dale", "Roger"]),
        # Dot vs pipe
        ("friends.0.first", "Dale"),
        ("friends|0.first", "Dale"),
        ("friends.0|first", "Dale"),
        ("friends|0|first", "Dale"),
        ("friends|#", 3),
        ('friends.#(last="Murphy")#', [DALE, JANE]),
        ('friends.#(last="Murphy")#.first', ["Dale", "Jane"]),
        ('friends.#(last="Murphy")#.0', []),
        ('friends.#(last="Murphy")#|0', DALE),
        ('friends.#(last="Murphy")#.#', []),
        ('friends.#(last="Murphy")#|#', 2),
        # Modifiers
        ("children.@reverse", ["Jack", "Alex", "Sara"]),
        ("children.@reverse.0", "Jack"),
        ("children|@reverse|0", "Jack"),
    ],
)
def test_documented_examples(path: str, expected: object) -> None:
    assert lookup(DOC, path) == found(expected)


def test_documented_non_existent_pipe() -> None:
    assert lookup(DOC, 'friends.#(last="Murphy")#|first') == NOT_FOUND


def test_lookup_does_not_mutate_the_document() -> None:
    before = copy.deepcopy(DOC)
    for path in ("children.@reverse", "@reverse", "friends.@join", "friends.#.nets|@flatten"):
        lookup(DOC, path)
    assert before == DOC


# ------------------------------------------------------------------------- keys, found vs None


def test_found_none_is_not_missing() -> None:
    assert lookup({"a": None}, "a") == found(None)
    assert lookup({"a": None}, "b") == NOT_FOUND
    assert lookup({"a": None}, "a.b") == NOT_FOUND
    assert lookup({"a": [None]}, "a.0") == found(None)


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        ({"a": {"b": {"c": 1}}}, "a.b.c", found(1)),
        ({"a": {"b": {"c": 1}}}, "a.b", found({"c": 1})),
        ({"a": 1}, "a.b", NOT_FOUND),
        ({"a": "text"}, "a.0", NOT_FOUND),
        ({"a": False}, "a", found(False)),
        ({"a": 0}, "a", found(0)),
        ({"a": ""}, "a", found("")),
        ({"": 5}, "", found(5)),
        ({"a": {"": 5}}, "a.", found(5)),
        ({"a": 1}, "", NOT_FOUND),
        ({"A": 1}, "a", NOT_FOUND),
        ({"0": "zero"}, "0", found("zero")),
        ({"a": {"1": "one"}}, "a.1", found("one")),
        ("scalar", "a", NOT_FOUND),
        (None, "a", NOT_FOUND),
        (42, "0", NOT_FOUND),
    ],
)
def test_keys(document: object, path: str, expected: tuple[bool, object]) -> None:
    assert lookup(document, path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("children.0", found("Sara")),
        ("children.2", found("Jack")),
        ("children.3", NOT_FOUND),
        ("children.99999999999999999999999", NOT_FOUND),
        ("children.-1", NOT_FOUND),
        ("children.01", found("Alex")),  # gjson reads the digits, leading zeros and all
        ("children.1a", NOT_FOUND),
        ("children.first", NOT_FOUND),
        ("children.*", NOT_FOUND),
        ("name.0", NOT_FOUND),
        ("friends.2.nets.1", found("tw")),
    ],
)
def test_list_indexes(path: str, expected: tuple[bool, object]) -> None:
    assert lookup(DOC, path) == expected


def test_index_on_top_level_list() -> None:
    assert lookup([10, 20], "1") == found(20)
    assert lookup([[1, 2], [3]], "0.1") == found(2)


# ----------------------------------------------------------------------------------- wildcards


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        (DOC, "na*.last", found("Anderson")),
        (DOC, "*.first", found("Tom")),  # first key in document order with a "first"
        (DOC, "*e", found(DOC["name"])),  # "name" is the first key ending in "e"
        (DOC, "*ge", found(37)),
        (DOC, "fav?movie", found("Deer Hunter")),
        (DOC, "?ge", found(37)),
        (DOC, "??ge", NOT_FOUND),  # "?" is exactly one character
        (DOC, "a?e?", NOT_FOUND),
        (DOC, "*", found(DOC["name"])),
        (DOC, "c*n", found(["Sara", "Alex", "Jack"])),
        (DOC, "x*", NOT_FOUND),
        ({"b": 1, "ab": 2, "a": 3}, "a*", found(2)),
        ({"aXb": 1}, "a*X*b", found(1)),
        ({"ab": 1}, "a**b", found(1)),
        ({"abcabc": 1}, "*abc", found(1)),
        ({"a.b": 1}, "a?b", found(1)),
        ({"naïve": 1}, "na?ve", found(1)),
    ],
)
def test_wildcards(document: object, path: str, expected: tuple[bool, object]) -> None:
    assert lookup(document, path) == expected


def test_wildcard_tries_later_keys_until_the_rest_is_found() -> None:
    document = {"a1": {"x": 1}, "a2": {"y": 2}, "a3": {"y": 3}}
    assert lookup(document, "a*.y") == found(2)
    assert lookup(document, "a*.z") == NOT_FOUND
    assert lookup({"k1": [1], "k2": [1, 2]}, "k*.1") == found(2)


def test_wildcard_stops_at_an_array_operation_as_gjson_does() -> None:
    # gjson counts the first match of a query as found even if the rest is then missing.
    document = {"a1": [{"x": 1}], "a2": [{"x": 1, "y": 2}]}
    assert lookup(document, "a*.#(x==1).y") == NOT_FOUND
    assert lookup(document, "a2.#(x==1).y") == found(2)


def test_wildcard_skips_non_string_keys() -> None:
    assert lookup({1: "int", "1x": "str"}, "1*") == found("str")


# ------------------------------------------------------------------------------------- escapes


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        ({"fav.movie": 1}, r"fav\.movie", found(1)),
        ({"fav": {"movie": 2}}, r"fav\.movie", NOT_FOUND),
        ({"a*": 1, "ab": 2}, r"a\*", found(1)),
        ({"ab": 2, "a*": 1}, r"a\*", found(1)),
        ({"ab": 2, "a*": 1}, "a*", found(2)),
        ({"a?": 1, "ab": 2}, r"a\?", found(1)),
        ({"ab": 2}, r"a\?", NOT_FOUND),
        ({"a|b": 1}, r"a\|b", found(1)),
        ({"#": 1}, r"\#", found(1)),
        ({"@this": 1}, r"\@this", found(1)),
        ({"@reverse": [1, 2]}, r"\@reverse", found([1, 2])),
        ({"a\\b": 1}, r"a\\b", found(1)),
        ({"[x]": 1}, r"\[x]", found(1)),
        ({"{x}": 1}, r"\{x}", found(1)),
        ({"x*y.z": 1, "xay.z": 2}, r"x\*y\.z", found(1)),
        # An escaped wildcard character stays literal inside a wildcard key.
        ({"a*bc": 1, "axbc": 2}, r"a\*b*", found(1)),
        ({"axbc": 2, "a*bc": 1}, r"a\*b*", found(1)),
        ({"a.b": {"c": 3}}, r"a\.b.c", found(3)),
    ],
)
def test_escapes(document: object, path: str, expected: tuple[bool, object]) -> None:
    assert lookup(document, path) == expected


# ------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        ([], "#", found(0)),
        ([1, 2, 3], "#", found(3)),
        ([], "#.a", found([])),
        ([{"a": 1}, {"b": 2}, {"a": None}], "#.a", found([1, None])),
        (DOC, "friends.#.nets", found([["ig", "fb", "tw"], ["fb", "tw"], ["ig", "tw"]])),
        (DOC, "friends.#.nets.#", found([3, 2, 2])),
        (DOC, "friends.#.nets.0", found(["ig", "fb", "ig"])),
        (DOC, "friends.#.nets.2", found(["tw"])),
        (DOC, "friends.#.missing", found([])),
        (DOC, "friends.#.first|1", found("Roger")),
        (DOC, "friends.#.first.0", found([])),  # "0" of each string: not found
        (DOC, "friends|#.first", found(["Dale", "Roger", "Jane"])),
        (DOC, "friends.#|0", NOT_FOUND),  # the count 3 has no index 0
        (DOC, "name.#", NOT_FOUND),
        (DOC, "age.#", NOT_FOUND),
        ({"a": {"#": 9}}, "a.#", found(9)),  # on an object "#" is an ordinary key
        ({"#": {"b": 1}}, "#.b", found(1)),
        ([[1, 2], [3], []], "#.#", found([2, 1, 0])),
        ([[1, 2], [3], []], "#.0", found([1, 3])),
    ],
)
def test_hash(document: object, path: str, expected: tuple[bool, object]) -> None:
    assert lookup(document, path) == expected


def test_nested_hash_nests_as_gjson_does() -> None:
    # gjson does not flatten "#.x.#.y": every "#." level adds a level of list. "@flatten" after a
    # pipe flattens; after a dot it would run inside each element instead.
    document = {"a": [{"b": [{"c": 1}, {"c": 2}]}, {"b": [{"c": 3}]}, {"b": []}, {"x": 0}]}
    assert lookup(document, "a.#.b.#.c") == found([[1, 2], [3], []])
    assert lookup(document, "a.#.b.#.c|@flatten") == found([1, 2, 3])
    assert lookup(document, "a.#.b.#.c.@flatten") == found([[1, 2], [3], []])
    assert lookup(document, "a.#.b.#.c|@flatten|#") == found(3)
    assert lookup(DOC, "friends.#.nets|@flatten") == found(
        ["ig", "fb", "tw", "fb", "tw", "ig", "tw"]
    )
    assert lookup(DOC, 'friends.#.nets.#(=="ig")#') == found([["ig"], [], ["ig"]])
    assert lookup(DOC, 'friends.#.nets.#(=="tw")') == found(["tw", "tw", "tw"])


# ------------------------------------------------------------------------------------- queries


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("friends.#(age==44)#.first", ["Dale"]),
        ("friends.#(age=44)#.first", ["Dale"]),
        ("friends.#(age!=44)#.first", ["Roger", "Jane"]),
        ("friends.#(age<47)#.first", ["Dale"]),
        ("friends.#(age<=47)#.first", ["Dale", "Jane"]),
        ("friends.#(age>47)#.first", ["Roger"]),
        ("friends.#(age>=47)#.first", ["Roger", "Jane"]),
        ("friends.#(age>=44.5)#.first", ["Roger", "Jane"]),
        ("friends.#(age==4.4e1)#.first", ["Dale"]),
        ("friends.#(age>-1)#.first", ["Dale", "Roger", "Jane"]),
        ('friends.#(first=="Jane")#.age', [47]),
        ('friends.#(first!="Jane")#.age', [44, 68]),
        ('friends.#(first<"Jane")#.age', [44]),
        ('friends.#(first<="Jane")#.age', [44, 47]),
        ('friends.#(first>"Jane")#.age', [68]),
        ('friends.#(first>="Jane")#.age', [68, 47]),
        ('friends.#(first%"?a*")#.age', [44, 47]),
        ('friends.#(first!%"?a*")#.age', [68]),
        ('friends.#(first%"*")#.age', [44, 68, 47]),
        ('friends.#(first%"")#.age', []),
        ('friends.#(first%"Dal?")#.age', [44]),
        ("friends.#(first%D*)#.age", [44]),  # unquoted pattern
        ("friends.#(last=Murphy)#.first", ["Dale", "Jane"]),  # unquoted word compares as text
        ("friends.#( age  >  45 )#.first", ["Roger", "Jane"]),
        ('friends.#(last=="Murphy")#', [DALE, JANE]),
        ('friends.#(last=="Nobody")#', []),
        ("friends.#(nets)#.first", ["Dale", "Roger", "Jane"]),
        ("friends.#(name)#.first", []),
        ("friends.#(nets.2)#.first", ["Dale"]),
        ('friends.#(nets.0=="ig")#.first', ["Dale", "Jane"]),
        ('friends.#(nets|0=="ig")#.first', ["Dale", "Jane"]),
        ("friends.#(nets.#>2)#.first", ["Dale"]),
        ("friends.#(nets.#==2)#.first", ["Roger", "Jane"]),
        ('friends.#(nets.@reverse.0=="tw")#.first', ["Dale", "Roger", "Jane"]),
        ('friends.#[last=="Murphy"]#.first', ["Dale", "Jane"]),  # pre-1.3 brackets
        ('friends.#(first=="Jane").nets.1', "tw"),
        ('friends.#(first=="Jane")|nets|1', "tw"),
        ('friends.#(first=="Jane").@keys', ["first", "last", "age", "nets"]),
        ('friends.#(last=="Murphy")#.@keys.0', ["first", "first"]),
        ('children.#(=="Alex")', "Alex"),
        ('children.#(!="Alex")#', ["Sara", "Jack"]),
        ('children.#(>"Jack")#', ["Sara"]),
        ('children.#(%"*a*")#|#', 2),
        ('friends.#(nets.#(=="ig"))#.first', ["Dale", "Jane"]),
        ('friends.#(nets.#(%"t*"))#.last', ["Murphy", "Craig", "Murphy"]),
        ('friends.#(nets.#(=="fb")#|#>0)#.first', ["Dale", "Roger"]),
    ],
)
def test_queries(path: str, expected: object) -> None:
    assert lookup(DOC, path) == found(expected)


@pytest.mark.parametrize(
    "path",
    [
        'friends.#(last=="Nobody")',
        'friends.#(last=="Nobody").first',
        'friends.#(first=="Dale").missing',  # the first match wins even if the rest is missing
        'name.#(first=="Tom")',  # queries only apply to lists
        "age.#(==37)",
        'friends.#(last=="Murphy")#|first',
    ],
)
def test_queries_not_found(path: str) -> None:
    assert lookup(DOC, path) == NOT_FOUND


def test_query_first_match_wins_even_without_the_rest() -> None:
    document = [{"k": 1}, {"k": 1, "v": "second"}]
    assert lookup(document, "#(k==1).v") == NOT_FOUND
    assert lookup(document, "#(k==1)#.v") == found(["second"])


def test_query_on_scalar_lists() -> None:
    numbers = [5, 1, 7, 5.0, -2]
    assert lookup(numbers, "#(==5)#") == found([5, 5.0])
    assert lookup(numbers, "#(>4)#") == found([5, 7, 5.0])
    assert lookup(numbers, "#(<0)") == found(-2)
    assert lookup(numbers, "#(!=5)#") == found([1, 7, -2])
    assert lookup([True, False, True], "#(==true)#") == found([True, True])
    assert lookup([True, False], "#(<true)#") == found([False])
    assert lookup([None, 0, "", False], "#(==null)#") == found([None])
    # Only ASCII digits make a number; anything else unquoted is a word.
    assert lookup([3, "٣"], "#(==٣)#") == found(["٣"])


def test_query_escaped_and_special_strings() -> None:
    document = [
        {"s": "Mur\nphy", "n": 1},
        {"s": 'say "hi"', "n": 2},
        {"s": "a)b", "n": 3},
        {"s": "x|y.z", "n": 4},
        {"s": "é", "n": 5},
        {"s": "a*b", "n": 6},
        {"s": "axb", "n": 7},
    ]
    assert lookup(document, r'#(s=="Mur\nphy").n') == found(1)
    assert lookup(document, r'#(s=="say \"hi\"").n') == found(2)
    assert lookup(document, '#(s=="a)b").n') == found(3)
    assert lookup(document, '#(s=="x|y.z").n') == found(4)
    assert lookup(document, r'#(s=="\u00e9").n') == found(5)
    assert lookup(document, r'#(s%"a\\*b")#.n') == found([6])
    assert lookup(document, '#(s%"a*b")#.n') == found([3, 6, 7])
    assert lookup({"a=b": [{"k=": 1}]}, r"a\=b.#(k\===1).k\=") == found(1)


def test_query_truthiness() -> None:
    # The example of gjson's SYNTAX.md for the "~" operator, plus its ~null and ~* forms.
    vals = {
        "vals": [
            {"a": 1, "b": True},
            {"a": 2, "b": True},
            {"a": 3, "b": False},
            {"a": 4, "b": "0"},
            {"a": 5, "b": 0},
            {"a": 6, "b": "1"},
            {"a": 7, "b": 1},
            {"a": 8, "b": "true"},
            {"a": 9, "b": False},
            {"a": 10, "b": None},
            {"a": 11},
        ]
    }
    assert lookup(vals, "vals.#(b==~true)#.a") == found([1, 2, 6, 7, 8])
    assert lookup(vals, "vals.#(b==~false)#.a") == found([3, 4, 5, 9, 10, 11])
    assert lookup(vals, "vals.#(b!=~false)#.a") == found([1, 2, 6, 7, 8])
    assert lookup(vals, "vals.#(b==~null)#.a") == found([10, 11])
    assert lookup(vals, "vals.#(b==~*)#.a") == found(list(range(1, 11)))
    assert lookup(vals, "vals.#(b!=~*)#.a") == found([11])
    assert lookup(["data", "TRUE", "F"], "#(==~true)#") == found(["TRUE"])
    assert lookup(["data", "TRUE", "F"], "#(==~false)#") == found(["F"])


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # Typed comparisons: across types every operator is false, "!=" included.
        ('#(v=="1")#.i', [1]),
        ("#(v==1)#.i", [0, 4]),
        ("#(v!=1)#.i", [5]),
        ('#(v!="1")#.i', [6]),
        ("#(v>0)#.i", [0, 4, 5]),
        ("#(v==true)#.i", [2]),
        ("#(v!=true)#.i", [3]),
        ("#(v==false)#.i", [3]),
        ("#(v==null)#.i", [7]),
        ("#(v!=null)#.i", []),
        ('#(v%"*")#.i', [1, 6]),
        ('#(v!%"*")#.i', []),
        ("#(v)#.i", [0, 1, 2, 3, 4, 5, 6, 7]),
    ],
)
def test_query_types_do_not_mix(path: str, expected: object) -> None:
    document = [
        {"i": 0, "v": 1},
        {"i": 1, "v": "1"},
        {"i": 2, "v": True},
        {"i": 3, "v": False},
        {"i": 4, "v": 1.0},
        {"i": 5, "v": 2},
        {"i": 6, "v": "x"},
        {"i": 7, "v": None},
        {"i": 8, "v_": None},
    ]
    assert lookup(document, path) == found(expected)


def test_mixed_type_arrays() -> None:
    # The PyPI gjson package gets this wrong: it stops at the scalars.
    mixed = [1, "x", {"c": "x"}]
    assert lookup(mixed, '#(c=="x").c') == found("x")
    assert lookup(mixed, '#(c=="x")') == found({"c": "x"})
    assert lookup(mixed, '#(c=="x")#') == found([{"c": "x"}])
    assert lookup(mixed, '#(=="x")') == found("x")
    assert lookup(mixed, "#(==1)") == found(1)
    assert lookup(mixed, "#(>0)#") == found([1])
    assert lookup(mixed, "#(c)#") == found([{"c": "x"}])
    assert lookup(mixed, "#.c") == found(["x"])
    assert lookup(mixed, "#") == found(3)
    assert lookup([True, 1, None, [1], {"c": 1}], "#(==1)#") == found([1])
    assert lookup([[1, 2], [3], "ab", {"#": 5}], "#(#>1)#") == found([[1, 2], {"#": 5}])
    assert lookup([None, {"c": None}, {"c": 0}], "#(c==null)#") == found([{"c": None}])


def test_nested_queries() -> None:
    document = {
        "groups": [
            {"name": "g1", "members": [{"roles": ["admin", "dev"]}, {"roles": ["ops"]}]},
            {"name": "g2", "members": [{"roles": ["dev"]}]},
            {"name": "g3", "members": []},
        ]
    }
    assert lookup(document, 'groups.#(members.#(roles.#(=="ops")))#.name') == found(["g1"])
    assert lookup(document, 'groups.#(members.#(roles.#(=="dev")))#.name') == found(["g1", "g2"])
    assert lookup(document, 'groups.#(members.#(roles.#(=="nope")))#.name') == found([])
    assert lookup(document, "groups.#(members.#==0).name") == found("g3")
    assert lookup(document, 'groups.#(name%"g*")#.members.#') == found([2, 1, 0])


# ---------------------------------------------------------------------------------------- pipe


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("friends|1|first", found("Roger")),
        ("name|first", found("Tom")),
        ("friends.#.first|#", found(3)),
        ("friends.#.first|@reverse", found(["Jane", "Roger", "Dale"])),
        ("friends.#.first.@reverse", found(["Dale", "Roger", "Jane"])),  # per element
        ("friends.#(age>45)#|0|first", found("Roger")),
        ("friends.#(age>45)#|1.first", found("Jane")),
        ("friends.#(age>45)#.first|1", found("Jane")),
        ('friends.#(last=="Murphy")|first', found("Dale")),
        ("friends.#.nets|0|1", found("fb")),
        ("friends.#.nets.0|1", found("fb")),
        ("friends|", NOT_FOUND),
        ("|friends", NOT_FOUND),
        ("friends|x", NOT_FOUND),
    ],
)
def test_pipe(path: str, expected: tuple[bool, object]) -> None:
    assert lookup(DOC, path) == expected


# ----------------------------------------------------------------------------------- modifiers


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        (DOC, "@this", found(DOC)),
        (DOC, "@this.name.first", found("Tom")),
        (DOC, "name.@this", found(DOC["name"])),
        (DOC, "@keys", found(["name", "age", "children", "fav.movie", "friends"])),
        (DOC, "name.@keys", found(["first", "last"])),
        (DOC, "name.@values", found(["Tom", "Anderson"])),
        (DOC, "name.@reverse", found({"last": "Anderson", "first": "Tom"})),
        (DOC, "age.@reverse", found(37)),
        (DOC, "age.@flatten", found(37)),
        (DOC, "age.@join", found(37)),
        (DOC, "children.@join", found({})),
        (DOC, "children.@values", found(["Sara", "Alex", "Jack"])),
        (DOC, "children.@keys", found([None, None, None])),  # gjson: a null per element
        (DOC, "age.@keys", found([None])),
        (DOC, "age.@values", found([37])),
        (
            DOC,
            "friends.@join",
            found({"first": "Jane", "last": "Murphy", "age": 47, "nets": ["ig", "tw"]}),
        ),
        (DOC, "friends.@reverse.#.first", found(["Jane", "Roger", "Dale"])),
        (DOC, "@reverse.@keys.0", found("friends")),
        (DOC, "name.@ugly", found(DOC["name"])),
        (DOC, "name.@pretty", found(DOC["name"])),
        (DOC, 'name.@pretty:{"sortKeys":true}', found(DOC["name"])),
        (DOC, "name.@valid", found(DOC["name"])),
        ([1, [2], [3, 4], [5, [6, 7]], []], "@flatten", found([1, 2, 3, 4, 5, [6, 7]])),
        (
            [1, [2], [3, 4], [5, [6, 7]], [[[]]]],
            '@flatten:{"deep":true}',
            found([1, 2, 3, 4, 5, 6, 7]),
        ),
        ([[1, [2]]], '@flatten:{"deep":false}', found([1, [2]])),
        ([[1, [2]]], '@flatten:{"deep":true}|0', found(1)),
        ([[1, [2]]], '@flatten:{"deep":true}.1', found(2)),
        (
            [{"first": "Tom", "age": 37}, {"age": 41}, 5, [1]],
            "@join",
            found({"first": "Tom", "age": 41}),
        ),
        ({"a": '{"b": [1, 2]}'}, "a.@fromstr.b.1", found(2)),
        ({"a": "not json"}, "a.@fromstr", NOT_FOUND),
        ({"a": 5}, "a.@fromstr", found(5)),
        ({"a": {"b": [1, "x"]}}, "a.@tostr", found('{"b":[1,"x"]}')),
        ({"a": "x"}, "a.@tostr", found('"x"')),
        ({"a": {1, 2}}, "a.@tostr", NOT_FOUND),
        # An @name that is no modifier is an ordinary key, as in gjson.
        (DOC, "children.@nope", NOT_FOUND),
        (DOC, "@nope", NOT_FOUND),
        ({"@nope": 1}, "@nope", found(1)),
        ({"@nope:x": 1}, "@nope:x", found(1)),
        ({"@": 1}, "@", found(1)),
    ],
)
def test_modifiers(document: object, path: str, expected: tuple[bool, object]) -> None:
    assert lookup(document, path) == expected


def test_modifier_applies_per_element_after_hash_dot() -> None:
    document = {"rows": [[1, 2], [3, 4]]}
    assert lookup(document, "rows.#.@reverse") == found([[2, 1], [4, 3]])
    assert lookup(document, "rows|@reverse") == found([[3, 4], [1, 2]])
    assert lookup(document, "rows.@reverse") == found([[3, 4], [1, 2]])


def test_modifier_in_the_middle_commits_a_wildcard() -> None:
    # gjson treats ".@modifier" as a pipe, so the first matching key is final.
    document = {"a1": [], "a2": [5]}
    assert lookup(document, "a*.@reverse.0") == NOT_FOUND
    assert lookup(document, "a*.0") == found(5)


# ----------------------------------------------------------------------------- malformed paths


@pytest.mark.parametrize(
    ("path", "offset"),
    [
        ('friends.#(last=="Murphy"', 9),
        ("friends.#(", 9),
        ("#[a==1", 1),
        ("#(a.#(b==1)", 1),
        ('friends.#(last=="Murphy)', 9),
        ("friends.#(last!Murphy)", 14),
        ("friends.#(last=>1)", 14),
        ("friends.#(last<>1)", 14),
        ("friends.#(last===1)", 14),
        ("friends.#(age==)", 15),
        ("friends.#(age== )", 16),
        ("friends.#()", 8),
        ("friends.#( )", 8),
        ("friends.#(age==[1])", 15),
        ("friends.#(age=={})", 15),
        ('friends.#(age=="x"y)', 15),
        ("friends.#(age==~maybe)", 15),
        ("friends.#(age==1)x", 17),
        ("friends.#(age==1)#x", 18),
        ("friends.#(nets.#(==1)x)", 21),
        ("name\\", 4),
        ("a.b\\", 3),
        ("{name.first,age}", 0),
        ("[name.first,age]", 0),
        ("friends.{first}", 8),
        ('@flatten:{"deep":true}x', 22),
    ],
)
def test_malformed_paths(path: str, offset: int) -> None:
    with pytest.raises(GJSONPathError) as excinfo:
        validate_path(path)
    assert excinfo.value.offset == offset
    assert f"offset {offset}" in str(excinfo.value)
    with pytest.raises(GJSONPathError):
        lookup(DOC, path)


def test_path_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unclosed query"):
        validate_path("a.#(b==1")


@pytest.mark.parametrize(
    "path",
    [
        "",
        ".",
        "a..b",
        "#",
        "#.#.#",
        "@this",
        "@reverse|@reverse",
        '@flatten:{"deep":true}',
        "@flatten:anything.at|all",
        "facts.os.family",
        r"a\.b\*c\?\|\#\@\\",
        "friends.#(last=Murphy)",
        'friends.#(  nets.#(  ==  "fb"  )  )#.first',
        "#(a%b)",
        "#(a==-1.5e3)",
        "#(a==~*)",
        '#(a=="(")',
        "a*.b?.c",
        "#x",
        "##",
        "#[a==1]#",
    ],
)
def test_valid_paths(path: str) -> None:
    validate_path(path)
    assert isinstance(lookup(DOC, path), tuple)


def test_path_length_limit() -> None:
    longest = "a" * MAX_PATH_LENGTH
    validate_path(longest)
    with pytest.raises(GJSONPathError) as excinfo:
        validate_path(longest + "a")
    assert excinfo.value.offset == MAX_PATH_LENGTH


def _nested_query(depth: int) -> str:
    path = "x"
    for _ in range(depth):
        path = f"#({path})"
    return path


def test_query_nesting_limit() -> None:
    validate_path(_nested_query(MAX_QUERY_DEPTH))
    # Each query steps one list down, so the innermost one meets {"x": 1}.
    first: list[Any] = [{"x": 1}]
    for _ in range(MAX_QUERY_DEPTH - 2):
        first = [first]
    assert lookup([first], _nested_query(MAX_QUERY_DEPTH)) == found(first)
    with pytest.raises(GJSONPathError, match="nested") as excinfo:
        validate_path(_nested_query(MAX_QUERY_DEPTH + 1))
    # The 33rd "#(" is the one refused.
    assert excinfo.value.offset == 2 * MAX_QUERY_DEPTH


def test_array_component_limit() -> None:
    validate_path(".".join(["#"] * MAX_ARRAY_COMPONENTS))
    with pytest.raises(GJSONPathError, match="components") as excinfo:
        validate_path(".".join(["#"] * (MAX_ARRAY_COMPONENTS + 1)))
    assert excinfo.value.offset == 2 * MAX_ARRAY_COMPONENTS


# ----------------------------------------------------------------------- robustness and speed


def _deep_list(depth: int) -> list[Any]:
    root: list[Any] = []
    current = root
    for _ in range(depth):
        child: list[Any] = []
        current.append(child)
        current = child
    return root


def _deep_dict(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    current = root
    for _ in range(depth):
        current["b"] = {}
        current["a"] = {}
        current = current["a"]
    return root


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"a" * 20_000: 1}, "*" * MAX_PATH_LENGTH),
        ({"a" * 20_000 + "b": 1}, "*a" * (MAX_PATH_LENGTH // 2)),
        ({"a" * 20_000: 1}, "*" + "?" * (MAX_PATH_LENGTH - 2) + "*"),
        (["a" * 20_000], '#(%"' + "*a" * 2000 + '")'),
        (_deep_list(3000), ".".join(["#"] * MAX_ARRAY_COMPONENTS)),
        (_deep_list(3000), "#." * (MAX_ARRAY_COMPONENTS - 1) + '@flatten:{"deep":true}'),
        (_deep_list(3000), '@flatten:{"deep":true}'),
        (_deep_list(3000), "@tostr"),
        (_deep_dict(3000), ".".join(["*"] * (MAX_PATH_LENGTH // 2))),
        (_deep_dict(3000), "*." * (MAX_PATH_LENGTH // 2 - 2) + "zz"),
        (_deep_dict(3000), "a." * (MAX_PATH_LENGTH // 2 - 3) + "@this"),
        (_deep_list(40), _nested_query(MAX_QUERY_DEPTH)),
        ({"k": "[" * 5000 + "]" * 5000}, "k.@fromstr"),
    ],
)
def test_adversarial_inputs_finish_quickly(document: object, path: str) -> None:
    start = time.perf_counter()
    result = lookup(document, path)
    assert isinstance(result, tuple)
    assert_took(time.perf_counter() - start, 10.0, f"gjson adversarial lookup {path[:30]!r}")


def test_adversarial_modifier_argument() -> None:
    # A JSON argument nested too deeply for the decoder falls back to a plain-text argument.
    path = "@flatten:" + "[" * 3000 + "]" * 1000
    validate_path(path)
    assert lookup([[1]], path) == found([1])


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
_json_documents = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=25,
)
_path_alphabet = st.sampled_from([*'ab0129#.|()[]{}@*?\\"=!<>%~: ', "é", "\n"])
_components = st.sampled_from(
    [
        "a",
        "b",
        "0",
        "1",
        "#",
        "*",
        "a?",
        "@reverse",
        "@keys",
        "@values",
        "@flatten",
        "@join",
        "@this",
        "@tostr",
        "@fromstr",
        '@flatten:{"deep":true}',
        "#(a)",
        "#(a==1)#",
        '#(=="a")',
        '#(%"*")#',
        "#(a>0)",
        "#(b.#>1)#",
        "#(==~true)#",
        '#(a.#(=="b"))',
        "",
    ]
)
_structured_paths = st.lists(
    st.tuples(_components, st.sampled_from([".", "|"])), min_size=1, max_size=8
).map(lambda parts: "".join(c + s for c, s in parts)[:-1])
_paths = st.text(_path_alphabet, max_size=40) | st.text(max_size=20) | _structured_paths


@settings(max_examples=600, deadline=timedelta(milliseconds=500))
@given(document=_json_documents, path=_paths)
def test_lookup_is_total(document: object, path: str) -> None:
    try:
        result = lookup(document, path)
    except GJSONPathError as exc:
        assert 0 <= exc.offset <= len(path)
        with pytest.raises(GJSONPathError):
            validate_path(path)
        return
    assert isinstance(result, tuple)
    assert len(result) == 2
    assert isinstance(result[0], bool)
    if not result[0]:
        assert result[1] is None
    validate_path(path)
