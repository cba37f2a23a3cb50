"""Template-aware command line splitting: data can never add or split arguments."""

from __future__ import annotations

import shlex
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machinery.lang.cmdline import CommandArgument, render_command, split_command
from machinery.lang.template import STANDARD_FUNCTION_NAMES, TemplateError

HOSTILE = "a b \"c\" ; rm -rf / $(x) `y` 'z' \\ --force\nnext"
FACTS: dict[str, object] = {
    "fqdn": "web1.example.net",
    "hostile": HOSTILE,
    "empty": "",
    "spaced": "two words",
    "flag": "--delete-everything",
}


def _lookup(key: str, default: object) -> object:
    scope, _, name = key.partition(".")
    if scope == "facts" and name in FACTS:
        return FACTS[name]
    return default


FUNCS: dict[str, Callable[..., object]] = {"lookup": _lookup}


def argv(line: str) -> list[str]:
    return render_command(split_command(line), {"facts": FACTS}, FUNCS)


def split_error(line: str) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        split_command(line)
    return info.value


def test_choria_check_command() -> None:
    arguments = split_command('check.sh --host {{ lookup "facts.fqdn" "localhost" }}')
    assert len(arguments) == 3
    assert [a.quoted for a in arguments] == [False, False, False]
    assert arguments[0].template.is_static
    assert not arguments[2].template.is_static
    assert render_command(arguments, None, FUNCS) == ["check.sh", "--host", "web1.example.net"]
    default = render_command(arguments, None, {"lookup": lambda key, default: default})
    assert default == ["check.sh", "--host", "localhost"]


@pytest.mark.parametrize(
    "line",
    [
        'check.sh --host {{ lookup "facts.hostile" "" }}',
        'check.sh --host "{{ lookup "facts.hostile" "" }}"',
        'check.sh --host \'{{ lookup "facts.hostile" "" }}\'',
        "check.sh --host {{ .facts.hostile }}",
    ],
)
def test_data_stays_one_argument(line: str) -> None:
    assert argv(line) == ["check.sh", "--host", HOSTILE]


def test_data_cannot_add_flags() -> None:
    assert argv("rm -i {{ .facts.flag }} {{ .facts.spaced }}") == [
        "rm",
        "-i",
        "--delete-everything",
        "two words",
    ]


def test_actions_join_the_word_they_touch() -> None:
    assert argv('cmd --name={{ lookup "facts.spaced" "" }}') == ["cmd", "--name=two words"]
    assert argv("cmd pre{{ .facts.fqdn }}post") == ["cmd", "preweb1.example.netpost"]
    assert argv("cmd {{ .facts.spaced }}{{ .facts.fqdn }}") == ["cmd", "two wordsweb1.example.net"]
    assert argv('cmd "a {{ .facts.fqdn }} b"x') == ["cmd", "a web1.example.net bx"]
    assert argv('cmd {{ printf "%s %s" "a b" "c" }}') == ["cmd", "a b c"]
    assert argv("cmd {{/* a comment with spaces */}}x") == ["cmd", "x"]


def test_empty_expansions() -> None:
    line = 'cmd {{ lookup "facts.empty" "" }} "{{ .facts.empty }}" \'\' "" end'
    arguments = split_command(line)
    assert [a.quoted for a in arguments] == [False, False, True, True, True, False]
    assert render_command(arguments, {"facts": FACTS}, FUNCS) == ["cmd", "", "", "", "end"]
    assert argv("cmd {{ .facts.missing_is_no_value }}") == ["cmd", "<no value>"]
    assert argv('cmd {{ lookup "data.extra" "" }}') == ["cmd"]
    assert argv("cmd x{{ .facts.empty }}") == ["cmd", "x"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", []),
        ("   \t\n ", []),
        ("a", ["a"]),
        ("  a   b\tc\nd  ", ["a", "b", "c", "d"]),
        ("'single  quoted' x", ["single  quoted", "x"]),
        ("'no \\escapes \"here\"'", ['no \\escapes "here"']),
        ('"double  quoted"', ["double  quoted"]),
        ('"esc \\" \\\\ \\$ \\` kept \\n \\x"', ['esc " \\ $ ` kept \\n \\x']),
        ('"$HOME `cmd` ;|&"', ["$HOME `cmd` ;|&"]),
        ("back\\ slash", ["back slash"]),
        ("\\'quote\\\"", ["'quote\""]),
        ("a\\\\b", ["a\\b"]),
        ("a'b'\"c\"d", ["abcd"]),
        ("''", [""]),
        ('""', [""]),
        ("x '' y", ["x", "", "y"]),
        ("a'' b", ["a", "b"]),
        ("'it'\\''s'", ["it's"]),
        ("semi;colon a|b", ["semi;colon", "a|b"]),
        ("# not a comment", ["#", "not", "a", "comment"]),
        ("{ } }} {x}", ["{", "}", "}}", "{x}"]),
        ("\\{{{ .facts.empty }}", ["{"]),
        ("'{'{{ .facts.fqdn }}", ["{web1.example.net"]),
        ("\\{\\{", ["{{"]),
        ("a\\{\\{ .x }}", ["a{{", ".x", "}}"]),
    ],
)
def test_shell_quoting(line: str, expected: list[str]) -> None:
    assert argv(line) == expected


def test_trim_markers_inside_a_word() -> None:
    assert argv('x "a  {{- .facts.fqdn -}}  b"') == ["x", "aweb1.example.netb"]


@pytest.mark.parametrize(
    ("line", "message", "offset"),
    [
        ('a "b', "unterminated double quote", 2),
        ("a 'b", "unterminated single quote", 2),
        ("abc 'x\" y", "unterminated single quote", 4),
        ("a b\\", "no character after backslash", 3),
        ('x "a\\"', "unterminated double quote", 2),  # the last quote is escaped
        ('a {{ lookup "x" ', "unclosed action", 2),
        ('a "{{ lookup "x" "y" }}', "unterminated double quote", 2),
        ("ab {{ nope }}", 'function "nope" not defined', 6),
        ("ab x{{ .a 1 2 ) }}", "unexpected right paren", 14),
        ('ab "x" {{ "a\\q" }}', 'bad string literal "a\\q": invalid escape sequence \\q', 10),
        ("ab 'x'{{ .a\"b }}", "bad character U+0022 '\"'", 11),
        ("run {{ if .x }}a b{{ end }}", "unexpected EOF: {{if}} has no matching {{end}}", 4),
        ("run a b{{ end }}", "unexpected {{end}}", 7),
        ("x \\{{{ end }}", "unexpected {{end}}", 4),
    ],
)
def test_errors_point_into_the_command_line(line: str, message: str, offset: int) -> None:
    error = split_error(line)
    assert error.message == message
    assert error.offset == offset


def test_custom_function_names() -> None:
    with pytest.raises(TemplateError, match='function "lookup" not defined'):
        split_command('x {{ lookup "a" "b" }}', {"ToUpper"})
    arguments = split_command("x {{ shout .a }}", STANDARD_FUNCTION_NAMES | {"shout"})
    assert render_command(arguments, {"a": "hi"}, {"shout": str.upper}) == ["x", "HI"]


def test_render_errors_propagate() -> None:
    arguments = split_command("x {{ index .l 5 }}")
    with pytest.raises(TemplateError, match="index out of range"):
        render_command(arguments, {"l": []}, {})


def test_command_argument_is_frozen() -> None:
    argument = split_command("x")[0]
    assert isinstance(argument, CommandArgument)
    with pytest.raises(AttributeError):
        argument.quoted = True  # type: ignore[misc]


_SAFE_WORDS = st.lists(st.text(st.characters(blacklist_characters="{"), max_size=12), max_size=8)


@settings(max_examples=300)
@given(_SAFE_WORDS)
def test_quoted_words_round_trip_like_shlex(words: list[str]) -> None:
    line = " ".join(shlex.quote(word) for word in words)
    assert render_command(split_command(line), None, {}) == shlex.split(line) == words


_LINE_ALPHABET = st.sampled_from(list("ab \t\n'\"\\é#;|=-"))


@settings(max_examples=500)
@given(st.lists(_LINE_ALPHABET, max_size=30).map("".join))
def test_action_free_lines_split_like_shlex(line: str) -> None:
    try:
        expected = shlex.split(line)
    except ValueError:
        with pytest.raises(TemplateError):
            split_command(line)
        return
    assert render_command(split_command(line), None, {}) == expected


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_data_values_are_always_exactly_one_argument(value: str) -> None:
    arguments = split_command('cmd --opt {{ lookup "v" "" }} "{{ lookup "v" "" }}"')
    result = render_command(arguments, None, {"lookup": lambda key, default: value})
    if value:
        assert result == ["cmd", "--opt", value, value]
    else:
        assert result == ["cmd", "--opt", ""]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_split_only_raises_template_errors(line: str) -> None:
    try:
        arguments = split_command(line)
    except TemplateError as error:
        assert 0 <= error.offset <= len(line)
    else:
        assert all(isinstance(a, CommandArgument) for a in arguments)


@pytest.mark.parametrize(
    ("line", "words"),
    [("  a", 1), ("a  ", 1), ("  a   b  ", 2), (" \t\n", 0), ("a\t\tb\n\nc", 3)],
)
def test_runs_of_whitespace_make_no_empty_words(line: str, words: int) -> None:
    # POSIX word splitting: whitespace only separates; it never makes a word of its own.
    assert len(split_command(line)) == words


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{\\{", ["{{"]),  # a plain brace, then an escaped one: still two literal braces
        ('"{"{{ .facts.fqdn }}', ["{web1.example.net"]),  # a quoted brace before an action
        ("{{{ .facts.fqdn }}", None),  # three braces: the action starts at the first two
    ],
)
def test_a_literal_brace_never_joins_another_into_an_action(
    line: str, expected: list[str] | None
) -> None:
    if expected is None:
        with pytest.raises(TemplateError):
            argv(line)
    else:
        assert argv(line) == expected
