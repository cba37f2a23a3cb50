"""Nagios performance data parsing, and the template escape hook the nagios watcher uses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from machinery.lang.perfdata import MAX_ITEMS, PerfData, parse_perfdata, split_output
from machinery.lang.template import parse_template
from tests.support import CORPUS as CHORIA_CORPUS

CORPUS = CHORIA_CORPUS / "fragments"


def test_the_documented_puppet_check_output() -> None:
    text = (CORPUS / "docs-metric-nagios-perfdata-output.txt").read_text()
    assert parse_perfdata(text) == [
        PerfData("time_since_last_run", 1491.0, "s"),
        PerfData("failed_resources", 0.0, ""),
        PerfData("failed_events", 0.0, ""),
        PerfData("last_run_duration", 59.67, ""),
    ]
    message, perf = split_output(text)
    assert message == (
        "OK: last run 24 minutes ago with 0 failed resources 0 failed events and currently enabled"
    )
    assert perf.startswith("time_since_last_run=1491s;1;1;0 failed_resources")


def test_units_thresholds_and_signs() -> None:
    text = "OK | a=1us b=2ms c=3s d=4% e=5B f=6KB g=7MB h=8TB i=9c j=-1.5;1;2;0;10 k=+.5 l=3"
    assert parse_perfdata(text) == [
        PerfData("a", 1.0, "us"),
        PerfData("b", 2.0, "ms"),
        PerfData("c", 3.0, "s"),
        PerfData("d", 4.0, "%"),
        PerfData("e", 5.0, "B"),
        PerfData("f", 6.0, "KB"),
        PerfData("g", 7.0, "MB"),
        PerfData("h", 8.0, "TB"),
        PerfData("i", 9.0, "c"),
        PerfData("j", -1.5, ""),
        PerfData("k", 0.5, ""),
        PerfData("l", 3.0, ""),
    ]


def test_quoted_labels_spaces_become_underscores() -> None:
    text = "DISK OK|'free space'=5GB;1;2 'it''s'=1 '/var'=20% plain=2"
    assert parse_perfdata(text) == [
        PerfData("free_space", 5.0, ""),  # GB is not a unit Choria knows
        PerfData("it's", 1.0, ""),
        PerfData("/var", 20.0, "%"),
        PerfData("plain", 2.0, ""),
    ]


def test_unparseable_items_are_skipped() -> None:
    text = "X | noequals a=b=c u=U bad=abc dots=1.2.3 star=* inf=" + "9" * 400 + " =5 ok=1"
    assert parse_perfdata(text) == [PerfData("ok", 1.0, "")]


def test_no_bar_means_no_perfdata() -> None:
    assert parse_perfdata("OK all fine a=1") == []
    assert parse_perfdata("") == []
    assert split_output("") == ("", "")
    assert split_output("  just text  ") == ("just text", "")


def test_multiline_output_follows_the_plugin_guidelines() -> None:
    text = "OK - first | a=1\nlong text line\nmore text | b=2\nc=3\n"
    message, perf = split_output(text)
    assert message == "OK - first\nlong text line\nmore text"
    assert perf == "a=1 b=2 c=3"
    assert [p.label for p in parse_perfdata(text)] == ["a", "b", "c"]


def test_json_form_matches_choria() -> None:
    assert PerfData("x", 1.5, "s").to_json() == {"unit": "s", "label": "x", "value": 1.5}
    assert list(PerfData("x", 1.5, "s").to_json()) == ["unit", "label", "value"]


def test_items_are_capped() -> None:
    text = "OK |" + " ".join(f"m{i}=1" for i in range(MAX_ITEMS + 50))
    result = parse_perfdata(text)
    assert len(result) == MAX_ITEMS
    assert result[-1].label == f"m{MAX_ITEMS - 1}"


@settings(max_examples=400, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab'= ;|.-+*0123456789usmKBMTc%\n\t\"U")), max_size=200)
)
def test_never_raises_on_perfdata_like_input(text: str) -> None:
    for item in parse_perfdata(text):
        assert isinstance(item.value, float)
        assert item.label
        assert " " not in item.label


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_never_raises_on_any_text(text: str) -> None:
    parse_perfdata(text)
    split_output(text)


# -- Template.render(escape=...) -----------------------------------------------------------------


def test_escape_applies_to_printed_values_only() -> None:
    template = parse_template('<b>{{ .v }}</b> & {{ "a+b" }}{{ $x := "<i>" }}{{ if .v }}"{{ end }}')
    rendered = template.render({"v": "x<y>&'\"z"}, {}, escape=lambda s: f"[{s.upper()}]")
    assert rendered == '<b>[X<Y>&\'"Z]</b> & [A+B]"'
    # Without an escape function nothing changes; a template without actions never escapes.
    assert template.render({"v": "x"}, {}) == '<b>x</b> & a+b"'
    assert parse_template("a<b").render({}, {}, escape=lambda s: "!") == "a<b"
