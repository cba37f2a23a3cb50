"""What every benchmark returns, and small statistics helpers.

Benchmarks never assert absolute times: each figure is a ratio against a baseline measured in
the same run, or a latency distribution, so a noisy machine changes the numbers, not the verdict
logic.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Result:
    """One scenario's outcome: a figure, the target it is held to, and whether it is met."""

    scenario: str
    figure: str
    target: str
    met: bool | None  # None: informational, no target
    details: dict[str, object] = field(default_factory=dict)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` fall (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    return {
        "p50_ms": round(percentile(seconds, 0.50) * 1000, 2),
        "p99_ms": round(percentile(seconds, 0.99) * 1000, 2),
        "max_ms": round(max(seconds) * 1000, 2),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 2),
    }


def best_of(samples: Sequence[float]) -> float:
    """The least disturbed of repeated timings."""
    return min(samples)
