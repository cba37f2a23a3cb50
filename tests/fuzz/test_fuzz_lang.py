"""The small languages under hostile input: durations, Go templates, command lines, expr-lang,
Nagios perfdata and gjson paths.

Properties, for every input: only the documented error type (never a traceback), bounded time
(hypothesis' deadline) and, for large inputs, bounded memory (tracemalloc). Data rendered into
templates and commands stays data: ``{{`` in a value is text, and a value is one argument.
The tests in tests/lang/ already throw plain random text at each parser; these add
grammar-aware inputs built from each language's vocabulary, hostile data, and size limits.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machinery.lang.cmdline import render_command, split_command
from machinery.lang.duration import MAX_SECONDS, DurationError, parse_duration
from machinery.lang.expr import ExpressionError, compile_expression
from machinery.lang.gjson import GJSONPathError, lookup
from machinery.lang.perfdata import MAX_ITEMS, parse_perfdata, split_output
from machinery.lang.template import TemplateError, parse_template
from tests.fuzz.strategies import (
    HOSTILE_STRINGS,
    expression_soup,
    gjson_paths,
    hostile_json,
    hostile_text,
    template_soup,
)
from tests.support import assert_took

# The build machine is shared: a generous deadline still catches anything super-linear.
FUZZ = settings(
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def fuzz(examples: int) -> settings:
    """The suite's settings with ``examples`` examples."""
    return settings(FUZZ, max_examples=examples)


MAX_OUTPUT = 1 << 20


def _outcome(action: Callable[[], object]) -> object:
    try:
        return action()
    except Exception as exc:
        return exc


def peak_memory(action: Callable[[], object]) -> tuple[int, float, object]:
    """Peak traced bytes, seconds and the result (or the exception) of ``action()``.

    Timed on a first run without tracemalloc (which slows Python down several times), measured
    on a second run with it.
    """
    started = time.monotonic()
    result = _outcome(action)
    took = time.monotonic() - started
    tracemalloc.start()
    try:
        _outcome(action)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, took, result


# -- durations ---------------------------------------------------------------------------------

_UNITS = ["ns", "us", "µs", "ms", "s", "m", "h", "d", "w", "M", "y", "Y", "D", "W"]


@fuzz(100)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.integers(0, 10**6).map(str),
                st.decimals(0, 1000, places=3, allow_nan=False).map(str),
                st.sampled_from(["9" * 400, "1e5", ".5", "5.", "0x10", "", "+1", "1_0"]),
            ),
            st.sampled_from([*_UNITS, "", "x", " ", "S", "mm", "-"]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from(["", " ", "+", "-", "\t"]),
)
def test_durations_built_from_terms(terms: list[tuple[str, str]], lead: str) -> None:
    text = lead + "".join(number + unit for number, unit in terms)
    try:
        seconds = parse_duration(text)
    except DurationError as exc:
        assert 0 <= exc.column <= len(text)
        return
    assert 0.0 <= seconds <= MAX_SECONDS


def test_huge_duration_texts_are_bounded() -> None:
    cases = {
        "200,000 terms": "1s" * 200_000,
        "a 100k-digit number": "9" * 100_000 + "s",
        "four megabytes of junk": "1" * (4 << 20),
    }
    for what, text in cases.items():
        peak, took, result = peak_memory(functools.partial(parse_duration, text))
        print(f"duration, {what}: {type(result).__name__} in {took:.2f}s, peak {peak >> 10} KiB")
        assert isinstance(result, (float, DurationError))
        assert_took(took, 10.0, f"duration, {what}")
        assert peak < 64 << 20


# -- templates -----------------------------------------------------------------------------------


@fuzz(400)
@given(template_soup, hostile_json)
def test_template_token_soup_only_raises_template_errors(text: str, data: Any) -> None:
    try:
        template = parse_template(text)
    except TemplateError:
        return
    dot = {"data": {"x": data}, "facts": {"a": {"b": data}}, "identity": "n1"}
    try:
        out = template.render(dot, {"lookup": lambda path, default="": default})
    except TemplateError:
        return
    assert len(out.encode("utf-8", "surrogatepass")) <= 4 * MAX_OUTPUT


@fuzz(300)
@given(hostile_text)
def test_template_syntax_in_data_is_never_evaluated(value: str) -> None:
    # A value holding "{{ .data.secret }}" prints as those characters; nothing is rendered twice.
    dot = {"data": {"x": value, "secret": "LEAKED"}, "facts": {}}
    functions = {"lookup": lambda path, default="": value if path == "data.x" else default}
    for source in ("{{ .data.x }}", '{{ lookup "data.x" "" }}', '{{ printf "%s" .data.x }}'):
        assert parse_template(source).render(dot, functions) == value


def test_template_amplification_is_bounded() -> None:
    big = "x" * 200_000
    nested: list[Any] = []
    for _ in range(5000):
        nested = [nested]
    dot = {"l": list(range(1000)), "s": big, "deep": nested}
    cases = {
        "width 10^9": '{{printf "%0999999999d" 1}}',
        "star width": '{{printf "%*d" 999999999 1}}',
        "10^9 range iterations": "{{range .l}}{{range $.l}}{{range $.l}}x{{end}}{{end}}{{end}}",
        "8x a 200 KB string": '{{printf "%s%s%s%s%s%s%s%s" .s .s .s .s .s .s .s .s}}',
        "base64 growth": '{{Base64Encode (Base64Encode (Base64Encode (printf "%s%s%s" .s .s .s)))}}',
        "5000-deep data": '{{printf "%v" .deep}}',
        "huge index": "{{index .l 99999999999999999999}}",
    }
    for what, source in cases.items():
        peak, took, result = peak_memory(
            functools.partial(lambda s: parse_template(s).render(dot, {}), source)
        )
        print(
            f"template, {what}: {type(result).__name__} "
            f"{str(result)[:60]!r} in {took:.2f}s, peak {peak >> 20} MiB"
        )
        assert isinstance(result, TemplateError), what
        assert_took(took, 10.0, f"template, {what}")
        assert peak < 64 << 20


# -- command lines -----------------------------------------------------------------------------


@fuzz(300)
@given(st.lists(hostile_text, min_size=1, max_size=4), st.data())
def test_each_templated_word_renders_to_exactly_one_argument(
    values: list[str], draw: st.DataObject
) -> None:
    # Words in every quoting context: bare, "double quoted", with a literal prefix.
    shapes = ["{{ .data.v%d }}", '"{{ .data.v%d }}"', "--opt={{ .data.v%d }}", "'x'{{ .data.v%d }}"]
    words = [draw.draw(st.sampled_from(shapes)) % i for i in range(len(values))]
    line = "./check.sh " + " ".join(words)
    dot = {"data": {f"v{i}": v for i, v in enumerate(values)}}
    argv = render_command(split_command(line), dot, {})
    expected = ["./check.sh"]
    for word, value in zip(words, values, strict=True):
        prefix = "--opt=" if word.startswith("--opt") else "x" if word.startswith("'x'") else ""
        quoted = word.startswith('"')
        if prefix or quoted or value:
            expected.append(prefix + value)
    assert argv == expected


@fuzz(300)
@given(st.lists(st.one_of(template_soup, st.sampled_from(['"', "'", "\\", " ", "x"])), max_size=8))
def test_command_line_soup_only_raises_template_errors(parts: list[str]) -> None:
    line = "".join(parts)
    try:
        arguments = split_command(line)
    except TemplateError:
        return
    try:
        argv = render_command(arguments, {"data": {"x": "a b"}, "facts": {}}, {})
    except TemplateError:
        return
    assert all(isinstance(arg, str) for arg in argv)


# -- expressions -------------------------------------------------------------------------------


@fuzz(500)
@given(expression_soup, hostile_json)
def test_expression_soup_only_raises_expression_errors(source: str, data: Any) -> None:
    try:
        expression = compile_expression(source)
    except ExpressionError:
        return
    env = {"data": {"x": data, "name": "n"}, "facts": {"x": data}, "list": [data, 1, "s"]}
    try:
        expression.evaluate(env)
    except ExpressionError:
        return


def test_expression_amplification_is_bounded() -> None:
    env = {"s": "a" * 100_000, "l": list(range(100_000))}
    cases = {
        "10^10 steps": "map(1..100000, map(1..100000, #))",
        "2 MB join": 'join(map(1..100000, string(#)), "xxxxxxxxxxxxxxxx")',
        "nested any": "filter(1..100000, any(1..100000, # > 0))",
        "huge range": "1..999999999999",
    }
    for what, source in cases.items():
        peak, took, result = peak_memory(
            functools.partial(lambda s: compile_expression(s).evaluate(env), source)
        )
        print(f"expression, {what}: {str(result)[:70]!r} in {took:.2f}s, peak {peak >> 20} MiB")
        assert isinstance(result, ExpressionError), what
        assert_took(took, 20.0, f"expression, {what}")
        assert peak < 128 << 20


REDOS = """
import sys, time
from machinery.lang.expr import compile_expression
expression = compile_expression('data.name matches "^(a+)+$"')
started = time.monotonic()
expression.evaluate({"data": {"name": "a" * 40 + "!"}})
print(time.monotonic() - started)
"""


def test_a_catastrophic_regex_over_hostile_data_is_bounded() -> None:
    # In a child process, so an exponential evaluation cannot hang the suite. The child's own
    # start (Python and imports) is not measured: on a loaded box it alone can take seconds.
    try:
        done = subprocess.run(
            [sys.executable, "-c", REDOS], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        print("'^(a+)+$' over 40 a's and '!': still running after 60s")
        raise AssertionError("regular expression evaluation is unbounded") from None
    assert done.returncode == 0, done.stderr
    assert_took(float(done.stdout), 1.0, "'^(a+)+$' over 40 a's and '!'")


# -- perfdata ----------------------------------------------------------------------------------

_PERF_PIECES = st.sampled_from(
    [
        "'",
        "''",
        "=",
        ";",
        "|",
        " ",
        "\n",
        "label",
        "'a b'",
        "1",
        "-1.5",
        "1e308",
        "1e999",
        "nan",
        "inf",
        "*",
        "+",
        ".",
        "us",
        "ms",
        "%",
        "KB",
        "c",
        "U",
        "~",
        "\\",
        "é",
    ]
)


@fuzz(400)
@given(st.lists(_PERF_PIECES, max_size=60).map("".join))
def test_perfdata_soup_never_raises(text: str) -> None:
    message, _ = split_output(text)
    items = parse_perfdata(text)
    assert len(items) <= MAX_ITEMS
    for item in items:
        assert item.value == item.value and abs(item.value) != float("inf")  # finite
    assert isinstance(message, str)


def test_huge_plugin_output_is_bounded() -> None:
    cases = {
        "1.5 MiB of items": "OK | " + " ".join(f"l{i}=1ms;2;3;0;9" for i in range(80_000)),
        "one 2 MiB label": "OK | '" + "x" * (2 << 20) + "'=1",
        "unterminated quote": "OK | '" + "a b " * 250_000,
    }
    for what, text in cases.items():
        peak, took, result = peak_memory(functools.partial(parse_perfdata, text))
        count = len(result) if isinstance(result, list) else result
        print(f"perfdata, {what}: {count} items in {took:.2f}s, peak {peak >> 20} MiB")
        assert isinstance(result, list) and len(result) <= MAX_ITEMS
        if what.startswith("1.5"):
            assert len(result) == MAX_ITEMS
        assert_took(took, 20.0, f"perfdata, {what}")
        assert peak < 128 << 20


# -- gjson -------------------------------------------------------------------------------------


@fuzz(500)
@given(gjson_paths, hostile_json)
def test_gjson_path_soup_only_raises_path_errors(path: str, document: Any) -> None:
    wrapped = {"a": document, "b": [document, {"x": document}], "x": "x"}
    try:
        lookup(wrapped, path)
    except GJSONPathError:
        pass


def test_gjson_over_large_documents_is_bounded() -> None:
    wide = {"items": [{"name": f"n{i}", "tags": list(range(10))} for i in range(100_000)]}
    deep: Any = {}
    for _ in range(900):
        deep = {"a": deep, "l": [1, 2]}
    cases = {
        "query over 100k items": (wide, 'items.#(name%"*9*9*9*")#.tags|@flatten'),
        "@flatten deep over 100k": (wide, 'items.#.tags|@flatten:{"deep":true}'),
        "64 nested # over 100k": (wide, "items" + ".#" * 64),
        "900-deep document": (deep, "a." * 899 + "a"),
        "900-deep with #": (deep, "a." * 800 + "l.#"),
        "@tostr of 900-deep": (deep, "@tostr"),
    }
    for what, (document, path) in cases.items():
        peak, took, result = peak_memory(functools.partial(lookup, document, path))
        shown = type(result).__name__ if not isinstance(result, tuple) else f"found={result[0]}"
        print(f"gjson, {what}: {shown} in {took:.2f}s, peak {peak >> 20} MiB")
        assert isinstance(result, (tuple, GJSONPathError)), result
        assert_took(took, 20.0, f"gjson, {what}")
        assert peak < 256 << 20


def test_hostile_strings_are_listed() -> None:
    # The strategies above lean on this list; keep it broad.
    assert len(HOSTILE_STRINGS) >= 30
