"""YAML 1.2 loading that remembers where every value came from.

Manifests are composed by libyaml (through PyYAML's C parser, with our own YAML 1.2 core-schema
resolver: ``on``, ``off``, ``yes`` and ``no`` stay strings) and turned into plain Python values by
our own constructor, which records the position of every key and value, reports duplicate keys,
and refuses documents that would expand into something huge (alias bombs, deep nesting, very
large files).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.error import MarkedYAMLError, YAMLError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver

from machinery.spec.diagnostics import Diagnostic, Position, Severity

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "Path", "YamlDocument", "load_yaml"]

Path = tuple[str | int, ...]

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 50_000
MAX_DEPTH = 64

_TAG = "tag:yaml.org,2002:"


@dataclass(slots=True)
class YamlDocument:
    """A parsed YAML document: plain data plus where each path in it came from.

    Positions are kept as the parser's nodes and turned into :class:`Position` only when a
    problem is reported: most manifests have none, and a store of thousands loads faster.
    """

    file: str
    data: Any = None
    values: dict[Path, Node] = field(default_factory=dict)
    keys: dict[Path, Node] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def value_position(self, path: Path) -> Position:
        """The position of the value at ``path``, or of its closest ancestor that exists."""
        return self._closest(self.values, path)

    def key_position(self, path: Path) -> Position:
        """The position of the key naming ``path`` (falls back to the value's position)."""
        if path in self.keys:
            return _pos(self.keys[path])
        return self.value_position(path)

    def position_in_scalar(self, path: Path, offset: int) -> Position:
        """The position of character ``offset`` inside the scalar at ``path``, as near as YAML
        quoting allows (exact for plain and quoted single-line scalars and literal blocks)."""
        node = self.values.get(path)
        if not isinstance(node, ScalarNode):
            return self.value_position(path)
        start = _pos(node)
        style = node.style or None
        if style in ("|", ">"):
            # Block scalar text starts on the line after the indicator; its indent is not part of
            # the value, so find the line the offset falls on and add that line's indent.
            value = self._scalar_text(path)
            before = value[: max(offset, 0)]
            line = start.line + 1 + before.count("\n")
            column = len(before) - (before.rfind("\n") + 1)
            return Position(line, self._block_indent(start.line) + column + 1)
        text_offset = offset + (1 if style in ('"', "'") else 0)
        return Position(start.line, start.column + max(text_offset, 0))

    def _block_indent(self, indicator_line: int) -> int:
        """The indentation of a block scalar: that of its first non-empty line."""
        for source in self.lines[indicator_line:]:
            if source.strip():
                return len(source) - len(source.lstrip(" "))
        return 0

    def _scalar_text(self, path: Path) -> str:
        value: Any = self.data
        for part in path:
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                return ""
        return value if isinstance(value, str) else ""

    def _closest(self, table: dict[Path, Node], path: Path) -> Position:
        while path:
            if path in table:
                return _pos(table[path])
            path = path[:-1]
        root = table.get(())
        return _pos(root) if root is not None else Position(1, 1)


class _TooBig(Exception):
    def __init__(self, message: str, node: Node) -> None:
        super().__init__(message)
        self.node = node


# libyaml's C parser is ~30x faster than a pure-Python one: it matters for a store of thousands
# of machines (see docs/performance.md). The pure-Python parser is the fallback.
_CParser: Any
try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml
    _CParser = None


class _Yaml12Resolver(BaseResolver):
    """YAML 1.2 core schema: only true/false are booleans; ``on``/``yes`` stay strings."""


for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("merge", r"^(?:<<)$", "<"),
):
    _Yaml12Resolver.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first)
    )


if _CParser is not None:

    class _Loader(_CParser, _Yaml12Resolver):  # type: ignore[misc]  # a C extension type
        """Composes nodes only (with libyaml): construction is ours."""

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            _Yaml12Resolver.__init__(self)

else:  # pragma: no cover - PyYAML wheels ship libyaml

    class _Loader(  # type: ignore[no-redef]
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        yaml.composer.Composer,
        _Yaml12Resolver,
    ):
        """Composes nodes only (pure Python): construction is ours."""

        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Yaml12Resolver.__init__(self)


def load_yaml(text: str, file: str) -> YamlDocument:
    """Parse ``text`` (the contents of ``file``) into a :class:`YamlDocument`.

    Syntax errors and refused documents are reported as diagnostics with ``data`` left as None;
    this function never raises for bad input.
    """
    doc = YamlDocument(file=file)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        doc.diagnostics.append(
            _error(file, Position(1, 1), f"file is larger than {MAX_FILE_BYTES // 1024} KiB")
        )
        return doc
    if "\x00" in text:
        doc.diagnostics.append(_error(file, Position(1, 1), "file contains NUL bytes"))
        return doc
    too_deep = _flow_too_deep(text)
    if too_deep is not None:
        doc.diagnostics.append(
            _error(file, too_deep, f"document is nested more than {MAX_DEPTH} levels deep")
        )
        return doc
    try:
        nodes = _compose_all(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(mark.line + 1, mark.column + 1) if mark is not None else Position(1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        doc.diagnostics.append(_error(file, pos, f"invalid YAML: {problem}"))
        return doc
    except YAMLError as exc:
        doc.diagnostics.append(_error(file, Position(1, 1), f"invalid YAML: {exc}"))
        return doc
    except RecursionError:
        doc.diagnostics.append(_error(file, Position(1, 1), "YAML nesting is too deep"))
        return doc
    if not nodes:
        return doc
    if len(nodes) > 1:
        second = nodes[1]
        doc.diagnostics.append(
            _error(
                file,
                _pos(second),
                "the file holds more than one YAML document; a manifest is one document",
            )
        )
        return doc
    doc.lines = text.splitlines()
    builder = _Builder(doc)
    try:
        doc.data = builder.build(nodes[0], (), 0)
    except _TooBig as exc:
        doc.data = None
        doc.values.clear()
        doc.keys.clear()
        doc.diagnostics.append(_error(file, _pos(exc.node), str(exc)))
    return doc


def _flow_too_deep(text: str) -> Position | None:
    """Where flow brackets nest deeper than MAX_DEPTH, found without parsing.

    Deep nesting makes parsers recurse and (in pure Python) scan quadratically, so a hostile
    ``[[[[...`` is refused by this linear pre-scan (skipping quoted text and comments) first.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    depth = 0
    line, column = 1, 0
    quote: str | None = None
    comment = False
    previous = "\n"
    for char in text:
        column += 1
        if char == "\n":
            line, column, comment = line + 1, 0, False
            previous = char
            continue
        if comment:
            continue
        if quote is not None:
            if char == quote and previous != "\\":
                quote = None
        elif char in "\"'" and previous in " \t\n[{,:-":
            quote = char
        elif char == "#" and previous in " \t\n":
            comment = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return Position(line, column)
        elif char in "]}":
            depth = max(depth - 1, 0)
        previous = char
    return None


def _compose_all(text: str) -> list[Node]:
    loader = _Loader(text)
    try:
        nodes: list[Node] = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                nodes.append(node)
        return nodes
    finally:
        loader.dispose()


def _pos(node: Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _error(file: str, pos: Position, message: str) -> Diagnostic:
    return Diagnostic(file, pos, message, Severity.ERROR)


class _Builder:
    """Turns composed nodes into plain values, recording positions on the way."""

    def __init__(self, doc: YamlDocument) -> None:
        self.doc = doc
        self.count = 0

    def build(self, node: Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(
                f"document expands to more than {MAX_NODES} values "
                "(aliases that repeat large structures are refused)",
                node,
            )
        if depth > MAX_DEPTH:
            raise _TooBig(f"document is nested more than {MAX_DEPTH} levels deep", node)
        self.doc.values[path] = node
        if isinstance(node, ScalarNode):
            return _scalar(node)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            return self._mapping(node, path, depth)
        return None

    def _mapping(self, node: MappingNode, path: Path, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        seen: dict[Any, Node] = {}
        merged: list[dict[Any, Any]] = []
        for key_node, value_node in node.value:
            if str(key_node.tag) == _TAG + "merge":
                merged.extend(self._merge_sources(value_node, path, depth))
                continue
            if isinstance(key_node, ScalarNode):
                self.count += 1
                key = _scalar(key_node)
            else:
                key = self.build(key_node, (*path, "<key>"), depth + 1)
                self.doc.values.pop((*path, "<key>"), None)
            if isinstance(key, (dict, list)):
                self.doc.diagnostics.append(
                    _error(self.doc.file, _pos(key_node), "a mapping key must be a plain value")
                )
                continue
            if not isinstance(key, str):
                key = _format_key(key)
            child: Path = (*path, key)
            if key in seen:
                first = _pos(seen[key])
                self.doc.diagnostics.append(
                    Diagnostic(
                        self.doc.file,
                        _pos(key_node),
                        f"duplicate key {key!r} (first at line {first.line}); the last one wins",
                        Severity.WARNING,
                    )
                )
            seen[key] = key_node
            self.doc.keys[child] = key_node
            result[key] = self.build(value_node, child, depth + 1)
        for source in merged:
            for key, value in source.items():
                result.setdefault(key, value)
        return result

    def _merge_sources(self, node: Node, path: Path, depth: int) -> list[dict[Any, Any]]:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        sources = []
        for item in nodes:
            value = self.build(item, (*path, "<merge>"), depth + 1)
            if isinstance(value, dict):
                sources.append(value)
            else:
                self.doc.diagnostics.append(
                    _error(self.doc.file, _pos(item), "a merge key (<<) needs a mapping")
                )
        return sources


def _format_key(key: Any) -> str:
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _scalar(node: ScalarNode) -> Any:
    tag = str(node.tag)
    value: str = node.value
    if not tag.startswith(_TAG) or node.style:
        return value
    kind = tag[len(_TAG) :]
    if kind == "null":
        return None
    if kind == "bool":
        return value.lower() == "true"
    if kind == "int":
        return _int(value)
    if kind == "float":
        return _float(value)
    # Timestamps, binary and the rest stay as the text the author wrote.
    return value


def _int(value: str) -> int | str:
    text = value.replace("_", "")
    try:
        if text.lower().startswith(("0x", "-0x", "+0x")):
            return int(text, 16)
        if text.lower().startswith(("0o", "-0o", "+0o")):
            return int(text, 8)
        return int(text, 10)
    except ValueError:
        return value


def _float(value: str) -> float | str:
    text = value.replace("_", "").lower()
    if text in (".inf", "+.inf"):
        return math.inf
    if text == "-.inf":
        return -math.inf
    if text == ".nan":
        return math.nan
    try:
        return float(text)
    except ValueError:
        return value
