"""Scenario 1: bare FSM transitions per second against `transitions` and `python-statemachine`."""

from __future__ import annotations

import time

from bench.common import Result, best_of
from machinery.core.fsm import FSM


def _ours(events: int) -> float:
    fsm = FSM("a", [("flip", ["a"], "b"), ("flop", ["b"], "a")])
    fire = fsm.fire
    start = time.perf_counter()
    for _ in range(events // 2):
        fire("flip")
        fire("flop")
    return time.perf_counter() - start


def _transitions_lib(events: int) -> float:
    from transitions import Machine

    class Model:
        pass

    model = Model()
    Machine(
        model,
        states=["a", "b"],
        transitions=[["flip", "a", "b"], ["flop", "b", "a"]],
        initial="a",
        auto_transitions=False,
    )
    start = time.perf_counter()
    for _ in range(events // 2):
        model.flip()  # type: ignore[attr-defined]
        model.flop()  # type: ignore[attr-defined]
    return time.perf_counter() - start


def _statemachine_lib(events: int) -> float:
    from statemachine import State, StateMachine

    class Toggle(StateMachine):  # type: ignore[misc]
        a = State(initial=True)
        b = State()
        flip = a.to(b)
        flop = b.to(a)

    machine = Toggle()
    start = time.perf_counter()
    for _ in range(events // 2):
        machine.flip()
        machine.flop()
    return time.perf_counter() - start


def run(quick: bool) -> Result:
    events = 20_000 if quick else 200_000
    rounds = 2 if quick else 5
    rates = {}
    for name, func in (
        ("machinery", _ours),
        ("transitions", _transitions_lib),
        ("python-statemachine", _statemachine_lib),
    ):
        lib_events = events if name == "machinery" else max(events // 10, 2000)
        elapsed = best_of([func(lib_events) for _ in range(rounds)])
        rates[name] = lib_events / elapsed
    fastest_other = max(rates["transitions"], rates["python-statemachine"])
    ratio = rates["machinery"] / fastest_other
    return Result(
        scenario="1. bare FSM transitions/s",
        figure=f"{ratio:.1f}x the faster library ({rates['machinery']:,.0f}/s)",
        target=">= 2x the faster of transitions, python-statemachine",
        met=ratio >= 2,
        details={k: round(v) for k, v in rates.items()},
    )
