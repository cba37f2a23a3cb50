"""Reports of scenario runs: a pytest-like text report and JUnit XML for CI systems."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from machinery.simulation.scenario import ScenarioResult
from machinery.spec.diagnostics import Diagnostic

__all__ = ["junit_report", "text_report"]


def text_report(
    results: Sequence[ScenarioResult], errors: Sequence[Diagnostic], seconds: float
) -> str:
    lines = []
    for result in results:
        verdict = "PASSED" if result.passed else "FAILED"
        lines.append(f"{result.file}::{result.name} {verdict}")
        if result.failure:
            lines.append(f"    {result.failure}")
    for error in errors:
        lines.append(f"ERROR {error}")
    failed = sum(1 for r in results if not r.passed)
    passed = len(results) - failed
    parts = [f"{failed} failed"] if failed else []
    parts.append(f"{passed} passed")
    if errors:
        parts.append(f"{len(errors)} error{'s' if len(errors) != 1 else ''}")
    summary = f" {', '.join(parts)} in {seconds:.2f}s "
    lines.append(summary.center(72, "="))
    return "\n".join(lines) + "\n"


def junit_report(
    results: Sequence[ScenarioResult], errors: Sequence[Diagnostic], seconds: float
) -> str:
    suite = ET.Element(
        "testsuite",
        name="machinery",
        tests=str(len(results) + len(errors)),
        failures=str(sum(1 for r in results if not r.passed)),
        errors=str(len(errors)),
        time=f"{seconds:.3f}",
    )
    for result in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=str(result.file),
            name=result.name,
            time=f"{result.seconds:.3f}",
        )
        if not result.passed:
            failure = ET.SubElement(case, "failure", message=(result.failure or "failed")[:500])
            failure.text = result.failure
    for error in errors:
        case = ET.SubElement(suite, "testcase", classname=error.file, name="load")
        element = ET.SubElement(case, "error", message=error.message[:500])
        element.text = str(error)
    ET.indent(suite)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
    )
