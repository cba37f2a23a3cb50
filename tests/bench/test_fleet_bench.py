"""The fleet benchmark at 50 nodes: every node answers, acts and is seen (bounds far above
normal; the 1,000-node figures are in bench/results.md)."""

from __future__ import annotations

import pytest

from bench.fleet import run


@pytest.mark.timeout(600)
def test_fifty_simulated_nodes_answer_act_and_stay_current_on_the_dashboard() -> None:
    result = run(quick=True)
    details = result.details
    assert details["ls_incomplete_rounds"] == 0  # every round: all 50 answered with 10 machines
    assert details["ls"]["p99_ms"] < 20_000  # normal: ~0.4 s
    assert details["transition_done"] == 50
    assert details["transition_s"] < 60  # normal: ~0.4 s
    assert details["dashboard_initial_machines"] == 500  # asked at start, not waiting for events
    assert details["dashboard_caught_up_s"] is not None and details["dashboard_caught_up_s"] < 10
    assert details["dashboard_all_states_known"] is True
    assert details["dashboard_states_wrong"] == 0
