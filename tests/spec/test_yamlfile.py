from machinery.spec.diagnostics import Position, Severity
from machinery.spec.yamlfile import MAX_DEPTH, load_yaml


def test_yaml_12_keeps_on_off_yes_no_as_strings() -> None:
    doc = load_yaml("a: on\nb: off\nc: yes\nd: no\ne: true\nf: [on, off]\n", "m.yaml")
    assert doc.data == {"a": "on", "b": "off", "c": "yes", "d": "no", "e": True, "f": ["on", "off"]}


def test_scalars_keep_their_yaml_types() -> None:
    doc = load_yaml("a: 1\nb: 2.5\nc: null\nd: 0x1f\ne: 2019-01-01\nf: '5'\ng: 1.0.0\n", "m.yaml")
    assert doc.data == {
        "a": 1,
        "b": 2.5,
        "c": None,
        "d": 31,
        "e": "2019-01-01",
        "f": "5",
        "g": "1.0.0",
    }


def test_positions_of_keys_and_values_are_one_based() -> None:
    text = "name: x\nwatchers:\n  - name: w\n    properties:\n      timeout: 10\n"
    doc = load_yaml(text, "m.yaml")
    assert doc.key_position(("name",)) == Position(1, 1)
    assert doc.value_position(("name",)) == Position(1, 7)
    assert doc.value_position(("watchers", 0, "name")) == Position(3, 11)
    assert doc.key_position(("watchers", 0, "properties", "timeout")) == Position(5, 7)
    # A path that does not exist falls back to its closest existing parent.
    assert doc.value_position(("watchers", 0, "properties", "missing")) == Position(5, 7)


def test_position_inside_quoted_and_block_scalars() -> None:
    doc = load_yaml('a: "abc{{ x"\nb: |\n  line {{\n', "m.yaml")
    assert doc.position_in_scalar(("a",), 3) == Position(1, 8)
    assert doc.position_in_scalar(("b",), 5) == Position(3, 8)


def test_syntax_error_has_position_and_no_data() -> None:
    doc = load_yaml("a: [1, 2\nb: 3\n", "m.yaml")
    assert doc.data is None
    [diag] = doc.diagnostics
    assert diag.severity is Severity.ERROR
    assert diag.message.startswith("invalid YAML")
    assert diag.position.line == 2


def test_duplicate_keys_warn_and_last_wins() -> None:
    doc = load_yaml("a: 1\nb: 2\na: 3\n", "m.yaml")
    assert doc.data == {"a": 3, "b": 2}
    [diag] = doc.diagnostics
    assert diag.severity is Severity.WARNING
    assert "duplicate key 'a' (first at line 1)" in diag.message
    assert diag.position == Position(3, 1)


def test_merge_keys() -> None:
    doc = load_yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n", "m.yaml")
    assert doc.data["c"] == {"x": 1, "y": 3}


def test_alias_bombs_are_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")
    doc = load_yaml("\n".join(lines) + "\n", "bomb.yaml")
    assert doc.data is None
    assert "expands to more than" in doc.diagnostics[0].message


def test_deep_nesting_is_refused() -> None:
    text = "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    doc = load_yaml(text, "deep.yaml")
    assert doc.data is None
    assert "nested" in doc.diagnostics[0].message or "too deep" in doc.diagnostics[0].message


def test_very_deep_nesting_does_not_crash_the_parser() -> None:
    text = "[" * 5000 + "]" * 5000
    doc = load_yaml(text, "deep.yaml")
    assert doc.data is None
    assert doc.diagnostics


def test_multiple_documents_are_refused() -> None:
    doc = load_yaml("a: 1\n---\nb: 2\n", "m.yaml")
    assert doc.data is None
    assert "more than one YAML document" in doc.diagnostics[0].message


def test_empty_file_is_no_data_and_no_error() -> None:
    doc = load_yaml("", "m.yaml")
    assert doc.data is None
    assert doc.diagnostics == []


def test_nul_bytes_and_huge_files_are_refused() -> None:
    assert "NUL" in load_yaml("a: \x00", "m.yaml").diagnostics[0].message
    assert "larger than" in load_yaml("#" * (5 * 1024 * 1024), "m.yaml").diagnostics[0].message


def test_folded_scalars_have_no_fold_markers() -> None:
    doc = load_yaml("a: >-\n  one two\n  three\n", "m.yaml")
    assert doc.data == {"a": "one two three"}


def test_block_scalar_positions_use_the_block_indent() -> None:
    doc = load_yaml("b: |\n  first\n    deeper {{\n", "m.yaml")
    # "deeper {{" starts at offset 6 ("first\n"); its text starts 2 columns into the line.
    assert doc.position_in_scalar(("b",), 6 + 2) == Position(3, 5)
