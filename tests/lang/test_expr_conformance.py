"""expr-lang's own test tables, run against our interpreter (see expr_conformance.py)."""

from __future__ import annotations

import pytest

from tests.lang.expr_conformance import load_cases, run_case

CASES = load_cases()


@pytest.mark.parametrize("case", [c for c in CASES if not c.skip], ids=lambda c: c.id)
def test_case(case: object) -> None:
    assert run_case(case) is None, run_case(case)  # type: ignore[arg-type]


def test_every_skipped_case_names_its_reason_and_skips_stay_few() -> None:
    skipped = [c for c in CASES if c.skip]
    assert all(len(c.skip) > 20 for c in skipped)
    assert len(skipped) * 20 < len(CASES)  # under 5%: the suite covers the language
