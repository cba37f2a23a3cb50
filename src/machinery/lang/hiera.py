"""Tiny Hiera: resolve one JSON document of data and per-level overrides against node facts.

The kv watcher's ``hiera_config`` (spec 3.7) stores, instead of the JSON object read from the
bucket, the data that object resolves to for this node. The document looks like::

    {
      "hierarchy": {"order": ["env:{{ lookup('facts.env') }}", "host:{{ lookup('facts.fqdn') }}"],
                    "merge": "deep"},
      "data": {"port": 8080, "packages": ["ca-certificates"]},
      "overrides": {"env:prod": {"port": 80}, "host:web1.example.net": {"packages": ["nginx"]}}
    }

Resolution, as Choria's ``tinyhiera`` does it:

* ``data`` is the base. Every string value in it (and in an override) that holds ``{{ expr }}``
  is expanded: a string that is exactly one ``{{ expr }}`` takes the expression's value with its
  type (``"{{ lookup('facts.port') | int() }}"`` gives a number); otherwise each ``{{ expr }}``
  is replaced by the value's text (Go's ``fmt.Sprint``).
* Each ``hierarchy.order`` entry is expanded the same way into a level name. An entry whose
  expressions all give an empty string or nil does not match; an entry without expressions
  always matches. ``overrides[<level name>]`` (a map) is merged over the result:
  ``merge: first`` (the default) applies the first matching level only, ``merge: deep`` applies
  all of them in order, merging maps recursively and concatenating lists.
* Expressions are expr-lang (:mod:`machinery.lang.expr`) evaluated with ``facts`` and
  ``lookup(path, default="")`` (a GJSON path over the environment, :mod:`machinery.lang.gjson`)
  in scope. The kv watcher passes ``{"facts": <node facts>}``, so ``lookup('facts.fqdn')`` and
  ``facts.fqdn`` both work.
* Numbers that are whole (``8080.0``) become integers, as Choria normalises them.

A document without ``hierarchy`` uses the single level ``default``.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from machinery.lang.expr import ExpressionError, compile_expression
from machinery.lang.gjson import GJSONPathError
from machinery.lang.gjson import lookup as gjson_lookup
from machinery.lang.gofmt import go_sprint

__all__ = ["HieraError", "resolve", "resolve_json"]

_PLACEHOLDER = re.compile(r"{{\s*(.*?)\s*}}")
_DEFAULT_ORDER = ("default",)
MERGE_MODES = ("first", "deep")


class HieraError(ValueError):
    """The document cannot be resolved (bad structure, bad expression, unknown merge mode)."""


def resolve_json(
    text: str | bytes, env: Mapping[str, Any], *, data_key: str = "data"
) -> dict[str, Any]:
    """Parse ``text`` as a JSON object and :func:`resolve` it."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise HieraError(f"failed to parse JSON: {exc}") from None
    if not isinstance(document, dict):
        raise HieraError("the document must be a JSON object")
    return resolve(document, env, data_key=data_key)


def resolve(
    document: Mapping[str, Any], env: Mapping[str, Any], *, data_key: str = "data"
) -> dict[str, Any]:
    """The data ``document`` resolves to with ``env`` (for the kv watcher ``{"facts": ...}``).

    ``document`` is not modified. Raises :class:`HieraError`.
    """
    root = _normalise(dict(document))
    assert isinstance(root, dict)
    order, merge = _hierarchy(root.get("hierarchy", {"order": list(_DEFAULT_ORDER)}))
    overrides = root.get("overrides")
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise HieraError("overrides must be a map of level name to data")
    resolver = _Resolver(env)
    data = root.get(data_key)
    has_data = isinstance(data, dict)
    result: dict[str, Any] = resolver.expand(copy.deepcopy(data)) if has_data else {}
    for entry in order:
        level, matched = resolver.interpolate(entry)
        if not matched or (level == data_key and has_data):
            continue
        candidate = overrides.get(level)
        if not isinstance(candidate, dict):
            continue
        expanded = resolver.expand(copy.deepcopy(candidate))
        if merge == "first":
            result.update(expanded)
            return result
        result = _deep_merge(result, expanded)
    return result


def _hierarchy(raw: object) -> tuple[list[str], str]:
    if not isinstance(raw, dict):
        raise HieraError("hierarchy section is required")
    order = raw.get("order")
    if not isinstance(order, list):
        raise HieraError("hierarchy.order must be a list")
    if not all(isinstance(item, str) for item in order):
        raise HieraError("hierarchy.order must contain only strings")
    merge = raw.get("merge")
    mode = merge.lower() if isinstance(merge, str) and merge else "first"
    if mode not in MERGE_MODES:
        raise HieraError(f"unsupported merge mode: {merge}")
    return order, mode


class _Resolver:
    """Expands ``{{ expr }}`` placeholders against one environment."""

    def __init__(self, env: Mapping[str, Any]) -> None:
        self._env: dict[str, Any] = dict(env)
        self._document = {k: v for k, v in env.items() if not callable(v)}
        self._env["lookup"] = self._lookup

    def _lookup(self, path: object, default: object = "") -> object:
        try:
            found, value = gjson_lookup(self._document, str(path))
        except GJSONPathError as exc:
            raise ValueError(f"invalid lookup path {path!r}: {exc}") from None
        return value if found else default

    def evaluate(self, source: str) -> object:
        try:
            return compile_expression(source).evaluate(self._env)
        except ExpressionError as exc:
            raise HieraError(f"expression {source!r} failed: {exc}") from None

    def interpolate(self, template: str) -> tuple[str, bool]:
        """``template`` with each placeholder replaced by its value's text, and whether it
        matched (no placeholders and not empty, or at least one non-empty value)."""
        matches = list(_PLACEHOLDER.finditer(template))
        if not matches:
            return template, template != ""
        out: list[str] = []
        last = 0
        matched = False
        for match in matches:
            value = self.evaluate(match.group(1))
            if value is not None and value != "":
                matched = True
            out.append(template[last : match.start()])
            out.append(go_sprint(value))
            last = match.end()
        out.append(template[last:])
        return "".join(out), matched

    def typed(self, template: str) -> object:
        """A string value: one whole placeholder keeps its value's type, else interpolate."""
        matches = _PLACEHOLDER.findall(template)
        if not matches:
            return template
        trimmed = template.strip()
        if len(matches) == 1 and trimmed.startswith("{{") and trimmed.endswith("}}"):
            return _normalise(self.evaluate(matches[0]))
        return self.interpolate(template)[0]

    def expand(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.typed(value)
        if isinstance(value, dict):
            return {key: self.expand(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.expand(item) for item in value]
        return value


def _normalise(value: Any) -> Any:
    # Choria turns whole floats into ints, so 8080.0 and 8080 resolve alike.
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    if (
        isinstance(value, float)
        and math.isfinite(value)
        and value == math.trunc(value)
        and -(2**63) <= value < 2**63
    ):
        return int(value)
    return value


def _deep_merge(target: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(target)
    for key, value in source.items():
        existing = result.get(key)
        if isinstance(existing, dict) and isinstance(value, dict):
            result[key] = _deep_merge(existing, value)
        elif isinstance(existing, list) and isinstance(value, list):
            result[key] = existing + copy.deepcopy(value)
        else:
            result[key] = copy.deepcopy(value)
    return result
