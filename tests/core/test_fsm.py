from machinery.core.fsm import FSM, FireResult, Outcome


def hvac() -> FSM:
    return FSM(
        "unknown",
        [
            ("variables_unknown", ["unknown", "idle", "running"], "unknown"),
            ("variables_changed", ["unknown", "idle", "running"], "idle"),
            ("air_good", ["idle", "running"], "idle"),
            ("air_bad", ["idle", "running"], "running"),
        ],
    )


def test_valid_event_changes_state() -> None:
    fsm = hvac()
    result = fsm.fire("variables_changed")
    assert result.outcome is Outcome.CHANGED
    assert (result.source, result.destination) == ("unknown", "idle")
    assert fsm.state == "idle"


def test_self_transition_is_silent_but_valid() -> None:
    fsm = hvac()
    result = fsm.fire("variables_unknown")
    assert result.outcome is Outcome.SELF
    assert result.valid and not result.changed
    assert fsm.state == "unknown"


def test_invalid_event_changes_nothing() -> None:
    fsm = hvac()
    result = fsm.fire("air_bad")
    assert result.outcome is Outcome.INVALID
    assert not result.valid
    assert fsm.state == "unknown"


def test_empty_event_does_nothing() -> None:
    fsm = hvac()
    assert fsm.fire("").outcome is Outcome.EMPTY
    assert fsm.state == "unknown"


def test_available_transitions_are_sorted() -> None:
    fsm = hvac()
    fsm.fire("variables_changed")
    assert fsm.available() == ["air_bad", "air_good", "variables_changed", "variables_unknown"]


def test_same_event_in_several_entries_merges_and_later_pair_wins() -> None:
    fsm = FSM("a", [("go", ["a"], "b"), ("go", ["b"], "c"), ("go", ["a"], "d")])
    assert fsm.destination("go") == "d"
    fsm.force_state("b")
    assert fsm.destination("go") == "c"


def test_edges_and_states_are_sorted() -> None:
    fsm = hvac()
    assert fsm.edges()[0] == ("idle", "air_bad", "running")
    assert fsm.states() == ["idle", "running", "unknown"]


def test_results_name_the_event_and_the_unchanged_state_for_every_outcome() -> None:
    fsm = FSM("off", [("go", ["off"], "on"), ("stay", ["off"], "off")])
    assert fsm.initial == "off"
    assert fsm.fire("") == FireResult(Outcome.EMPTY, "", "off", "off")
    assert fsm.fire("nope") == FireResult(Outcome.INVALID, "nope", "off", "off")
    assert fsm.fire("stay") == FireResult(Outcome.SELF, "stay", "off", "off")
    assert fsm.fire("go") == FireResult(Outcome.CHANGED, "go", "off", "on")
    assert fsm.initial == "off"  # the initial state stays what the manifest said


def test_a_state_no_transition_leaves_has_no_events() -> None:
    fsm = FSM("off", [("go", ["off"], "on")])
    fsm.fire("go")
    assert fsm.state == "on"
    assert fsm.available() == []
    assert fsm.destination("go") is None
    assert not fsm.can("go")
    assert fsm.fire("go") == FireResult(Outcome.INVALID, "go", "on", "on")
