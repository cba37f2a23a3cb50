"""expr-lang conformance: runs the cases of ``expr_conformance.yaml`` against our interpreter.

``python -m tests.lang.expr_conformance`` prints the pass rate and every skipped case with its
reason; ``test_expr_conformance.py`` runs the same cases under pytest.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from machinery.lang.duration import parse_go_duration
from machinery.lang.expr import ExpressionError, compile_expression
from machinery.lang.gotime import DATE_LAYOUTS, GoDuration, GoTime, parse_time

DATA = Path(__file__).with_name("expr_conformance.yaml")
# now() reads this clock in the cases: 2024-01-02T03:04:05Z.
FIXED_CLOCK = 1704164645.0


@dataclass(frozen=True)
class Case:
    expr: str
    env: Mapping[str, Any]
    want: Any = None
    error: bool = False
    skip: str = ""

    @property
    def id(self) -> str:
        return self.expr if len(self.expr) <= 60 else self.expr[:57] + "..."


def _special(value: Any) -> Any:
    """Turn {$time: ...} / {$duration: ...} markers into Go values, recursively."""
    if isinstance(value, dict):
        if set(value) == {"$time"}:
            return parse_time(DATE_LAYOUTS[3], value["$time"])
        if set(value) == {"$duration"}:
            return GoDuration(parse_go_duration(value["$duration"]))
        return {key: _special(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_special(item) for item in value]
    return value


def load_cases() -> list[Case]:
    document = yaml.safe_load(DATA.read_text())
    environments = {name: _special(env) for name, env in document["environments"].items()}
    cases = []
    for entry in document["cases"]:
        cases.append(
            Case(
                expr=entry["expr"],
                env=environments.get(entry.get("env", ""), {}),
                want=_special(entry.get("want")),
                error=bool(entry.get("error", False)),
                skip=entry.get("skip", ""),
            )
        )
    return cases


def same(got: Any, want: Any) -> bool:
    """Equal values of the same Go kind (1 and 1.0 differ, as Go's assert.Equal has them)."""
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is type(want) and got == want
    if isinstance(want, float):
        return isinstance(got, float) and (got == want or (math.isnan(got) and math.isnan(want)))
    if isinstance(want, int):
        return type(got) is int and got == want
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(same(g, w) for g, w in zip(got, want, strict=True))
        )
    if isinstance(want, dict):
        return (
            isinstance(got, Mapping)
            and set(got) == set(want)
            and all(same(got[key], want[key]) for key in want)
        )
    if isinstance(want, GoTime | GoDuration):
        return type(got) is type(want) and got == want
    return type(got) is type(want) and got == want


def run_case(case: Case) -> str | None:
    """None when the case passes, else what went wrong."""
    try:
        value = compile_expression(case.expr).evaluate(case.env, clock=lambda: FIXED_CLOCK)
    except ExpressionError as exc:
        return None if case.error else f"error: {exc}"
    if case.error:
        return f"expected an error, got {value!r}"
    if not same(value, case.want):
        return f"got {value!r}, want {case.want!r}"
    return None


def main() -> int:
    cases = load_cases()
    skipped = [case for case in cases if case.skip]
    failures = [(case, run_case(case)) for case in cases if not case.skip]
    failed = [(case, why) for case, why in failures if why is not None]
    ran = len(failures)
    print(
        f"expr-lang conformance: {ran - len(failed)} of {ran} cases pass "
        f"({100 * (ran - len(failed)) / ran:.1f}%), {len(skipped)} skipped of {len(cases)}"
    )
    for case, why in failed:
        print(f"  FAIL {case.expr}: {why}")
    for case in skipped:
        print(f"  skip {case.expr}: {case.skip}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
