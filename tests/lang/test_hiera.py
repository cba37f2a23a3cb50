"""Tiny Hiera resolution: hierarchy order, first and deep merges, typed expressions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from machinery.lang.hiera import HieraError, resolve, resolve_json
from tests.support import CORPUS as CHORIA_CORPUS

CORPUS = CHORIA_CORPUS / "fragments/docs-kv-tiny-hiera.json"

DOCUMENT: dict[str, Any] = {
    "hierarchy": {
        "order": [
            "env:{{ lookup('facts.env') }}",
            "role:{{ lookup('facts.role') }}",
            "host:{{ lookup('facts.hostname') }}",
        ],
        "merge": "deep",
    },
    "data": {
        "log_level": "INFO",
        "packages": ["ca-certificates"],
        "web": {"listen_port": 80, "tls": False},
    },
    "overrides": {
        "env:prod": {"log_level": "WARN"},
        "role:web": {"packages": ["nginx"], "web": {"tls": True}},
        "host:web01": {"log_level": "TRACE"},
    },
}
FACTS = {"facts": {"env": "prod", "role": "web", "hostname": "web01"}}


def test_deep_merge_applies_every_matching_level_in_order() -> None:
    assert resolve(DOCUMENT, FACTS) == {
        "log_level": "TRACE",
        "packages": ["ca-certificates", "nginx"],
        "web": {"listen_port": 80, "tls": True},
    }


def test_first_merge_applies_only_the_first_matching_level() -> None:
    document = {**DOCUMENT, "hierarchy": {**DOCUMENT["hierarchy"], "merge": "first"}}
    assert resolve(document, FACTS) == {
        "log_level": "WARN",
        "packages": ["ca-certificates"],
        "web": {"listen_port": 80, "tls": False},
    }
    # first is the default; the first level without overrides is passed over.
    document = {**DOCUMENT, "hierarchy": {"order": DOCUMENT["hierarchy"]["order"]}}
    facts = {"facts": {"env": "dev", "role": "web", "hostname": "web01"}}
    result = resolve(document, facts)
    assert result["packages"] == ["nginx"]  # a shallow merge replaces the whole value
    assert result["web"] == {"tls": True}
    assert result["log_level"] == "INFO"


def test_levels_whose_facts_are_missing_do_not_match() -> None:
    facts = {"facts": {"role": "db"}}
    assert resolve(DOCUMENT, facts) == DOCUMENT["data"]
    # An empty lookup gives "env:", which is not looked up even if such an override exists.
    document = {**DOCUMENT, "overrides": {"env:": {"log_level": "NOPE"}}}
    assert resolve(document, facts)["log_level"] == "INFO"


def test_entries_without_expressions_always_match() -> None:
    document = {
        "hierarchy": {"order": ["global", "", "site:{{ lookup('facts.site') }}"], "merge": "deep"},
        "data": {"a": 1},
        "overrides": {"global": {"b": 2}, "": {"c": 3}},
    }
    assert resolve(document, {"facts": {}}) == {"a": 1, "b": 2}


def test_a_missing_hierarchy_uses_the_default_level() -> None:
    document = {"data": {"a": 1}, "overrides": {"default": {"a": 2}}}
    assert resolve(document, {"facts": {}}) == {"a": 2}


def test_the_documented_example_resolves_per_host() -> None:
    document = json.loads(CORPUS.read_text())
    # Choria's documentation example has an unbalanced parenthesis; Choria fails on it too.
    with pytest.raises(HieraError, match="lookup"):
        resolve(document, {"facts": {"networking": {"fqdn": "example.net"}}})
    document["hierarchy"]["order"] = ["fqdn:{{ lookup('facts.networking.fqdn') }}"]
    assert resolve(document, {"facts": {"networking": {"fqdn": "example.net"}}}) == {"port": 8081}
    assert resolve(document, {"facts": {"networking": {"fqdn": "other.net"}}}) == {"port": 8080}


def test_values_are_expanded_with_their_types() -> None:
    document = {
        "hierarchy": {"order": ["role:{{ facts.role | upper() }}"]},
        "data": {
            "port": "{{ lookup('facts.port') | int() }}",
            "ratio": "{{ lookup('facts.ratio') }}",
            "flags": "{{ lookup('facts.flags') }}",
            "greeting": "hello {{ lookup('facts.name') }} on {{ lookup('facts.port') }}",
            "missing": "{{ lookup('facts.nope', 'fallback') }}",
            "nested": [{"deep": "{{ facts.name }}"}],
            "plain": "no expressions",
        },
        "overrides": {"role:WEB": {"port": "{{ int(lookup('facts.port')) + 1 }}"}},
    }
    facts = {
        "facts": {"port": "8080", "ratio": 0.5, "flags": [1, "x"], "name": "web1", "role": "web"}
    }
    result = resolve(document, facts)
    assert result == {
        "port": 8081,  # from the override
        "ratio": 0.5,
        "flags": [1, "x"],
        "greeting": "hello web1 on 8080",
        "missing": "fallback",
        "nested": [{"deep": "web1"}],
        "plain": "no expressions",
    }
    facts["facts"]["role"] = "db"
    assert resolve(document, facts)["port"] == 8080


def test_interpolated_values_use_go_formatting() -> None:
    document = {"data": {"text": "n={{ facts.n }} f={{ facts.f }} nil={{ facts.none }}"}}
    assert resolve(document, {"facts": {"n": 3, "f": 1e6, "none": None}}) == {
        "text": "n=3 f=1e+06 nil=<nil>"
    }


def test_whole_numbers_become_integers() -> None:
    result = resolve({"data": {"a": 8080.0, "b": [1.0, 2.5]}}, {"facts": {}})
    assert result == {"a": 8080, "b": [1, 2.5]}
    assert isinstance(result["a"], int)


def test_the_document_is_not_modified() -> None:
    before = json.dumps(DOCUMENT, sort_keys=True)
    resolve(DOCUMENT, FACTS)
    assert json.dumps(DOCUMENT, sort_keys=True) == before


def test_deep_merge_does_not_share_lists_between_results() -> None:
    first = resolve(DOCUMENT, FACTS)
    first["packages"].append("mutated")
    assert resolve(DOCUMENT, FACTS)["packages"] == ["ca-certificates", "nginx"]


def test_a_level_named_like_the_data_key_is_not_an_override() -> None:
    document = {
        "hierarchy": {"order": ["data"]},
        "data": {"a": 1},
        "overrides": {"data": {"a": 2}},
    }
    assert resolve(document, {"facts": {}}) == {"a": 1}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"hierarchy": "x"}, "hierarchy section is required"),
        ({"hierarchy": {"order": "x"}}, "hierarchy.order must be a list"),
        ({"hierarchy": {"order": [1]}}, "only strings"),
        ({"hierarchy": {"order": [], "merge": "sideways"}}, "unsupported merge mode"),
        ({"hierarchy": {"order": []}, "overrides": []}, "overrides must be a map"),
        ({"hierarchy": {"order": ["{{ 1 + }}"]}}, "failed"),
        ({"data": {"x": "{{ nope.deeper }}"}}, "failed"),
    ],
)
def test_bad_documents_are_errors(document: dict[str, Any], message: str) -> None:
    with pytest.raises(HieraError, match=message):
        resolve(document, {"facts": {}})


def test_resolve_json() -> None:
    assert resolve_json('{"data": {"a": 1}}', {"facts": {}}) == {"a": 1}
    with pytest.raises(HieraError, match="parse JSON"):
        resolve_json("{not json", {"facts": {}})
    with pytest.raises(HieraError, match="JSON object"):
        resolve_json("[1]", {"facts": {}})
