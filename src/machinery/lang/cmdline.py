"""Template-aware command line splitting.

Exec watchers run a ``command`` property that is a Go template, such as
``check.sh --host {{ lookup "facts.fqdn" "localhost" }}``. Rendering the whole line first and then
splitting it like a shell would let data inject arguments: a fact holding ``x --force`` or
``a; rm -rf /`` would become several words. So the line is split *before* rendering, with POSIX
shell word-splitting rules, and every word keeps its own template. After rendering, each word is
exactly one argv element, whatever characters the data contains.

Template actions are opaque to the splitter: their quotes and spaces are template syntax, and an
action belongs to the word it touches (``--name={{ lookup "facts.n" "" }}`` is one word).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from machinery.lang.template import (
    STANDARD_FUNCTION_NAMES,
    Template,
    TemplateError,
    _action_end,
    parse_template,
)

__all__ = ["CommandArgument", "render_command", "split_command"]

_WHITESPACE = " \t\r\n"
_DOUBLE_QUOTE_ESCAPES = '\\"$`'
# How a literal "{" that would touch another "{" is written so the template parser keeps it text.
_LITERAL_BRACE = '{{"{"}}'


@dataclass(frozen=True, slots=True)
class CommandArgument:
    """One word of a command line, still to be rendered into exactly one argv element."""

    template: Template
    """The word's own template: quotes removed, escapes resolved, actions kept as written."""
    quoted: bool
    """True if any part of the word was quoted; such a word survives rendering to ``""``."""


class _Word:
    """A word being collected: literal characters and action texts, each with its offset."""

    __slots__ = ("parts", "quoted")

    def __init__(self) -> None:
        self.parts: list[tuple[str, bool, int]] = []  # (text, is_action, offset in the line)
        self.quoted = False

    def source(self) -> tuple[str, list[int]]:
        """The word's template source and, for each of its characters, the offset in the line."""
        chunks: list[str] = []
        offsets: list[int] = []
        parts = self.parts
        for index, (text, is_action, offset) in enumerate(parts):
            if is_action:
                chunks.append(text)
                offsets.extend(range(offset, offset + len(text)))
                continue
            following = parts[index + 1][0] if index + 1 < len(parts) else ""
            if text == "{" and following.startswith("{"):
                # Two braces in a row would open an action the line never had.
                chunks.append(_LITERAL_BRACE)
                offsets.extend([offset] * len(_LITERAL_BRACE))
            else:
                chunks.append(text)
                offsets.append(offset)
        return "".join(chunks), offsets


def _split_words(text: str) -> list[_Word]:
    words: list[_Word] = []
    word = _Word()
    in_word = False
    quote = ""  # the quote character we are inside, if any
    quote_start = 0
    pos = 0
    size = len(text)
    while pos < size:
        if text.startswith("{{", pos):
            end = _action_end(text, pos)
            word.parts.append((text[pos:end], True, pos))
            in_word = True
            pos = end
            continue
        ch = text[pos]
        if quote == "'":
            if ch == "'":
                quote = ""
            else:
                word.parts.append((ch, False, pos))
        elif quote == '"':
            if ch == '"':
                quote = ""
            elif ch == "\\" and pos + 1 < size and text[pos + 1] in _DOUBLE_QUOTE_ESCAPES:
                pos += 1
                word.parts.append((text[pos], False, pos))
            else:
                word.parts.append((ch, False, pos))
        elif ch in _WHITESPACE:
            if in_word:
                words.append(word)
                word = _Word()
                in_word = False
        elif ch in "'\"":
            quote = ch
            quote_start = pos
            word.quoted = in_word = True
        elif ch == "\\":
            if pos + 1 >= size:
                raise TemplateError("no character after backslash", pos)
            pos += 1
            word.parts.append((text[pos], False, pos))
            in_word = True
        else:
            word.parts.append((ch, False, pos))
            in_word = True
        pos += 1
    if quote:
        kind = "single" if quote == "'" else "double"
        raise TemplateError(f"unterminated {kind} quote", quote_start)
    if in_word:
        words.append(word)
    return words


def split_command(
    text: str, functions: Collection[str] = STANDARD_FUNCTION_NAMES
) -> list[CommandArgument]:
    """Split a templated command line into words, each with its own parsed template.

    Whitespace separates words; single quotes are literal; double quotes allow backslash escapes
    of ``\\ " $ `````; a backslash outside quotes escapes the next character. Template actions
    are never split and join the word they touch, inside or outside quotes.

    Raises :class:`TemplateError` with the offset in *text* for unbalanced quotes, unclosed
    actions and template errors.
    """
    arguments: list[CommandArgument] = []
    for word in _split_words(text):
        source, offsets = word.source()
        try:
            template = parse_template(source, functions)
        except TemplateError as exc:
            if exc.offset < len(offsets):
                offset = offsets[exc.offset]
            else:
                offset = offsets[-1] + 1 if offsets else len(text)
            raise TemplateError(exc.message, offset) from None
        arguments.append(CommandArgument(template, word.quoted))
    return arguments


def render_command(
    arguments: Sequence[CommandArgument],
    dot: object,
    functions: Mapping[str, Callable[..., object]],
) -> list[str]:
    """Render each argument into exactly one argv element.

    Like an unquoted empty expansion in a shell, an unquoted argument that renders to ``""`` is
    dropped; a quoted one stays as an empty argument. Raises :class:`TemplateError` when an
    argument fails to render.
    """
    argv: list[str] = []
    for argument in arguments:
        value = argument.template.render(dot, functions)
        if value or argument.quoted:
            argv.append(value)
    return argv
