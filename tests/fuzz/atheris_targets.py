"""Coverage-guided fuzz targets (atheris/libFuzzer) for machinery's parsers.

Run one target for a while::

    python -m tests.fuzz.atheris_targets template -max_total_time=600

Each target feeds the fuzzer's bytes to one parser and lets only the documented error type pass;
anything else is a crash that libFuzzer reports with the input that caused it. The bounded runs
in tests/fuzz/test_atheris.py start each target from a seed corpus (the bundled examples and the
Choria corpus) and run it for a few seconds.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-untyped]

__all__ = ["TARGETS", "seeds"]

_DOT = {"data": {"x": "{{ .data.secret }}", "n": 1, "l": [1, "a", None]}, "facts": {"os": "linux"}}
_ENV = {"data": {"x": 1, "s": "text", "l": [1, 2, 3]}, "facts": {"os": {"family": "linux"}}}
_DOC = {"a": {"b": [1, {"c": "x"}, "y"]}, "items": [{"name": "n1", "v": 1}, {"name": "n2"}]}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# Each builder imports (and so instruments) only the modules its target exercises: instrumenting
# the whole package costs seconds per process.


def template() -> Callable[[bytes], None]:
    with atheris.instrument_imports(include=["machinery.lang"]):
        from machinery.lang.template import TemplateError, parse_template

    def run(data: bytes) -> None:
        try:
            parse_template(_text(data)).render(_DOT, {"lookup": lambda path, default="": default})
        except TemplateError:
            pass

    return run


def command() -> Callable[[bytes], None]:
    with atheris.instrument_imports(include=["machinery.lang"]):
        from machinery.lang.cmdline import render_command, split_command
        from machinery.lang.template import TemplateError

    def run(data: bytes) -> None:
        try:
            argv = render_command(split_command(_text(data)), _DOT, {})
        except TemplateError:
            return
        assert all(isinstance(arg, str) for arg in argv)

    return run


def expression() -> Callable[[bytes], None]:
    with atheris.instrument_imports(include=["machinery.lang"]):
        from machinery.lang.expr import ExpressionError, compile_expression

    def run(data: bytes) -> None:
        try:
            compile_expression(_text(data)).evaluate(_ENV)
        except ExpressionError:
            pass

    return run


def gjson() -> Callable[[bytes], None]:
    with atheris.instrument_imports(include=["machinery.lang"]):
        from machinery.lang.gjson import GJSONPathError, lookup

    def run(data: bytes) -> None:
        try:
            lookup(_DOC, _text(data))
        except GJSONPathError:
            pass

    return run


def duration() -> Callable[[bytes], None]:
    with atheris.instrument_imports(include=["machinery.lang"]):
        from machinery.lang.duration import DurationError, parse_duration

    def run(data: bytes) -> None:
        try:
            parse_duration(_text(data))
        except DurationError:
            pass

    return run


def perfdata() -> Callable[[bytes], None]:
    with atheris.instrument_imports(include=["machinery.lang"]):
        from machinery.lang.perfdata import parse_perfdata

    def run(data: bytes) -> None:
        parse_perfdata(_text(data))

    return run


def manifest() -> Callable[[bytes], None]:
    with atheris.instrument_imports(include=["machinery.spec", "machinery.lang"]):
        from machinery.spec.validate import check_manifest_text
        from machinery.spec.yamlfile import load_yaml
        from machinery.watchers.registry import default_registry

    kinds = default_registry().kinds

    def run(data: bytes) -> None:
        text = _text(data)
        load_yaml(text, "machine.yaml")
        check_manifest_text(text, "machine.yaml", kinds)

    return run


def cloudevent() -> Callable[[bytes], None]:
    # The watchers' describe_payload methods print decoded events: instrument them too.
    with atheris.instrument_imports(include=["machinery.events", "machinery.watchers"]):
        from machinery.events.cloudevents import CloudEventError, decode_cloudevent
        from machinery.events.text import watch_line
        from machinery.watchers.registry import default_registry

    default_registry()

    def run(data: bytes) -> None:
        try:
            event = decode_cloudevent(data)
        except CloudEventError:
            return
        watch_line(event)

    return run


TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "template": template,
    "command": command,
    "expression": expression,
    "gjson": gjson,
    "duration": duration,
    "perfdata": perfdata,
    "manifest": manifest,
    "cloudevent": cloudevent,
}

_ROOT = Path(__file__).resolve().parents[2]
# tests.support.CORPUS, without importing (uninstrumented) machinery through tests.support.
_CORPUS = _ROOT / "tests" / "choria_corpus"


def seeds(target: str) -> list[bytes]:
    """Starting inputs for ``target``: real manifests, and strings taken from them."""
    manifests = sorted((_ROOT / "examples").glob("*/machine.yaml"))
    manifests += sorted(_CORPUS.glob("*/machine.yaml"))
    texts = [p.read_bytes() for p in manifests]
    if target == "manifest":
        return texts
    if target == "cloudevent":
        return [
            json.dumps({"specversion": "1.0", "type": "io.choria.machine.v1.transition",
                        "data": {"protocol": "io.choria.machine.v1.transition", "timestamp": 1,
                                 "machine": "m", "transition": "t"}}).encode(),
            json.dumps({"protocol": "io.choria.machine.watcher.exec.v1.state", "timestamp": 1,
                        "previous_run_time": 5, "command": "x"}).encode(),
        ]  # fmt: skip
    by_target = {
        "template": [b'{{ lookup "facts.x" "d" }}', b"{{ range .data.l }}{{ . }}{{ end }}",
                     b'{{ printf "%s-%d" .data.x 3 | ToUpper }}'],
        "command": [b'./check.sh --host "{{ .facts.os }}" x\\ y', b"a 'b c' \"d{{ .data.n }}\""],
        "expression": [b"data.x > 1 && facts.os.family == 'linux'",
                       b'all(data.l, {# > 0}) ? "a" : "b"', b"len(data.s) in 1..10"],
        "gjson": [b'items.#(name=="n1").v', b"a.b.#", b"items.#.name|@reverse", b"a.b.1.c"],
        "duration": [b"1h30m", b"2d12h", b"500ms", b"1.5s"],
        "perfdata": [b"OK | a=1ms;2;3;0;9 'b c'=5%", b"X\nlong|c=1"],
    }  # fmt: skip
    return by_target[target]


def main() -> None:
    name = sys.argv[1]
    target = TARGETS[name]()
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
