"""The ``expression`` watcher (spec 3.12): fire transitions when expr-lang conditions turn true.

On every interval tick and every state change (never at start) it evaluates ``success_when``
and then ``fail_when`` (see :mod:`machinery.lang.expr`) over the machine's data and the node's
facts. The outcome is ``success_when``, ``failed_when``, ``no_match``, ``skipped`` (not in a
matching state) or ``error``. It is edge-triggered: ``success_transition`` fires only when the
outcome becomes ``success_when`` after being something else, ``fail_transition`` likewise for
``failed_when``; being skipped in between resets the edge, so re-entering a state re-fires.

Both expressions are compiled when the manifest is loaded, so syntax errors and unknown names
are reported with the file, line and column inside the expression.

Expressions see:

* ``data``: a snapshot of the machine data, taken for each evaluation;
* ``facts``: the node facts as a map (in Choria it is raw JSON bytes, so only ``get_fact``
  works there; here both work);
* ``get_fact(path)``: a GJSON lookup in the facts, ``nil`` when nothing matches;
* ``identity``: the node identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, Final

from pydantic import Field

from machinery.lang.expr import Expression, ExpressionError, compile_expression
from machinery.lang.gjson import lookup as gjson_lookup
from machinery.spec.kinds import Problem
from machinery.spec.models import MachineSpec, WatcherProperties, WatcherSpec
from machinery.watchers.base import PolledWatcher

__all__ = ["ENVIRONMENT_NAMES", "ExpressionProperties", "ExpressionWatcher"]

ENVIRONMENT_NAMES: Final = frozenset({"data", "facts", "identity", "get_fact"})
"""The names an expression may use besides the built-in functions."""

SUCCESS_WHEN: Final = "success_when"
FAILED_WHEN: Final = "failed_when"
NO_MATCH: Final = "no_match"
SKIPPED: Final = "skipped"
ERROR: Final = "error"


class ExpressionProperties(WatcherProperties):
    """Properties of the expression watcher."""

    success_when: str = Field(
        "",
        description="expr-lang expression; when it becomes true, success_transition fires",
    )
    fail_when: str = Field(
        "",
        description="expr-lang expression checked when success_when is not true; when it "
        "becomes true, fail_transition fires",
    )


@lru_cache(maxsize=4096)
def _compile(source: str) -> Expression:
    # Cached: machines generated from one template share their compiled expressions.
    return compile_expression(source, ENVIRONMENT_NAMES, expect_bool=True)


class ExpressionWatcher(PolledWatcher[ExpressionProperties]):
    """Evaluates boolean expressions over data and facts; fires on changes of the result."""

    type_name = "expression"
    properties_model = ExpressionProperties
    default_interval = 10.0
    min_interval = 0.5

    @classmethod
    def check_definition(
        cls, machine: MachineSpec, watcher: WatcherSpec, properties: WatcherProperties
    ) -> Iterable[Problem]:
        assert isinstance(properties, ExpressionProperties)
        if not properties.success_when and not properties.fail_when:
            yield Problem(("properties",), "success_when or fail_when is required")
        for key in ("success_when", "fail_when"):
            source = getattr(properties, key)
            if not source:
                continue
            try:
                _compile(source)
            except ExpressionError as exc:
                yield Problem(
                    ("properties", key),
                    f"invalid {key} expression: {exc.message}",
                    offset=exc.offset,
                )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.previous_outcome = SKIPPED
        # (property, compiled expression or the error that prevented compiling it)
        self._expressions: list[tuple[str, Expression | ExpressionError]] = []
        for key in ("success_when", "fail_when"):
            source = getattr(self.properties, key)
            if not source:
                continue
            try:
                self._expressions.append((key, _compile(source)))
            except ExpressionError as exc:  # only reachable when the load-time check was skipped
                self._expressions.append((key, exc))

    async def check(self, reasons: int) -> None:
        previous = self.previous_outcome
        outcome, error = self._evaluate()
        self.previous_outcome = outcome
        self.record(outcome)
        if outcome == ERROR:
            self.status.last_error = error
            self.log_error(f"Evaluating expressions failed: {error}")
            self.publish()
            return
        self.status.last_error = None
        if outcome == SUCCESS_WHEN:
            self.publish()
            if previous != SUCCESS_WHEN:
                await self.fire_success()
        elif outcome == FAILED_WHEN:
            self.publish()
            if previous != FAILED_WHEN:
                await self.fire_fail()

    def _evaluate(self) -> tuple[str, str | None]:
        """The outcome of one check, and the error message for ``error``."""
        if not self.should_watch():
            return SKIPPED, None
        env = self._environment()
        for key, expression in self._expressions:
            if isinstance(expression, ExpressionError):
                return ERROR, f"{key}: {expression.message}"
            try:
                matched = expression.evaluate_bool(env, clock=self.machine.clock.now)
            except ExpressionError as exc:
                return ERROR, f"{key}: {exc.message} (at character {exc.offset + 1})"
            if matched:
                return (SUCCESS_WHEN if key == "success_when" else FAILED_WHEN), None
        return NO_MATCH, None

    def _environment(self) -> dict[str, object]:
        facts = self.machine.facts.get()

        def get_fact(query: object) -> object:
            if not isinstance(query, str):
                raise TypeError(f"the query must be a string, not {type(query).__name__}")
            found, value = gjson_lookup(facts, query)
            return value if found else None

        return {
            "data": self.machine.data.snapshot(),
            "facts": facts,
            "identity": self.machine.identity,
            "get_fact": get_fact,
        }

    def state_fields(self) -> dict[str, Any]:
        return {"previous_outcome": self.previous_outcome}

    @classmethod
    def describe_payload(cls, payload: Mapping[str, Any]) -> str:
        return (
            f"{payload.get('identity')} {payload.get('machine')}#{payload.get('name')} "
            f"previous: {payload.get('previous_outcome')}"
        )
