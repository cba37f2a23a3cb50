"""Go's text/template conformance suite (tests/lang/text_template_conformance.yaml).

Every case of Go's own execution tables runs through our template engine: it must render Go's
output, or fail where Go fails. Cases that cannot apply to Choria's templates carry a ``skip``
reason and are counted; cases where we knowingly differ carry a ``known_difference`` reason and
must still differ, so a fix cannot go unnoticed. ``python -m tests.lang.test_template_conformance``
prints the pass rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from machinery.lang.template import TemplateError, parse_template

CASES_FILE = Path(__file__).with_name("text_template_conformance.yaml")


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    template: str
    dot: Any
    output: str | None
    error: bool | str
    skip: str | None
    known_difference: str | None

    @property
    def id(self) -> str:
        return f"{self.group}: {self.name}"


def load_cases() -> list[Case]:
    document = yaml.safe_load(CASES_FILE.read_text())
    data_sets = document["data_sets"]
    cases = []
    for group, entries in document.items():
        if group == "data_sets":
            continue
        for entry in entries:
            dot = data_sets[entry["set"]] if "set" in entry else entry.get("value")
            cases.append(
                Case(
                    group=group,
                    name=entry["name"],
                    template=entry["template"],
                    dot=dot,
                    output=entry.get("output"),
                    error=entry.get("error", False),
                    skip=entry.get("skip"),
                    known_difference=entry.get("known_difference"),
                )
            )
    return cases


def run_case(case: Case) -> str | None:
    """None when we behave as Go does, else what differs."""
    try:
        rendered = parse_template(case.template).render(case.dot, {})
    except TemplateError as exc:
        if case.error is False:
            return f"failed: {exc}"
        if isinstance(case.error, str) and case.error not in str(exc):
            return f"failed with {exc!r}, Go's error says {case.error!r}"
        return None
    if case.error is not False:
        return f"rendered {rendered!r} where Go fails"
    if rendered != case.output:
        return f"rendered {rendered!r}, Go renders {case.output!r}"
    return None


def summary(cases: list[Case]) -> str:
    skipped = [c for c in cases if c.skip]
    known = [c for c in cases if c.known_difference and not c.skip]
    applicable = [c for c in cases if not c.skip]
    passed = [c for c in applicable if not c.known_difference and run_case(c) is None]
    return (
        f"text/template conformance: {len(passed)}/{len(applicable)} applicable cases pass "
        f"({100 * len(passed) / len(applicable):.1f}%); {len(cases)} cases in all, "
        f"{len(skipped)} skipped (not applicable to Choria's JSON data and functions), "
        f"{len(known)} known differences"
    )


CASES = load_cases()


@pytest.mark.parametrize("case", [c for c in CASES if not c.skip], ids=lambda c: c.id)
def test_case_behaves_as_go(case: Case) -> None:
    difference = run_case(case)
    if case.known_difference:
        assert difference is not None, f"now behaves as Go: remove known_difference from {case.id}"
    else:
        assert difference is None, difference


def test_every_case_is_well_formed_and_counted() -> None:
    names = [c.id for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for case in CASES:
        assert (case.output is None) != (case.error is False), f"{case.id}: output xor error"
        assert case.skip is None or case.skip.strip(), f"{case.id}: empty skip reason"
    assert len(CASES) >= 350  # every table of exec_test.go, not a hand-picked subset
    print("\n" + summary(CASES))


if __name__ == "__main__":
    print(summary(CASES))
    for case in CASES:
        if case.skip:
            continue
        difference = run_case(case)
        if difference and not case.known_difference:
            print(f"  FAIL {case.id}: {difference}")
