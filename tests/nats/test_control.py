"""The fleet control protocol: filters, canonical encoding, signatures, freshness, replays."""

from __future__ import annotations

import json
from typing import Any

import pytest

from machinery.core.clock import FakeClock
from machinery.core.signing import generate_keypair
from machinery.nats.control import (
    ControlError,
    Filter,
    NonceCache,
    RequestAuthenticator,
    canonical_bytes,
    fleet_subject,
    node_subject,
    parse_request,
    parse_where,
    sign_request,
    transition_request,
)

FACTS = {"os": {"family": "debian", "release": 12}, "role": "web", "virtual": True, "ips": ["a"]}
NOW = 1_800_000_000.0


def test_subjects() -> None:
    assert (
        node_subject("web1.example.net", "machines") == "machinery.node.web1.example.net.machines"
    )
    assert fleet_subject("transition") == "machinery.fleet.transition"
    for identity in ("web*", "a.>", "a..b", ".a", "", "a b"):
        with pytest.raises(ControlError):
            node_subject(identity, "machines")


@pytest.mark.parametrize(
    ("clauses", "identity", "expected"),
    [
        ([], "web1", True),
        (["identity=web*"], "web1", True),
        (["identity=web*"], "db1", False),
        (["identity=web[12]"], "web3", False),
        (["os.family=debian"], "web1", True),
        (["os.family=redhat"], "web1", False),
        (["os.release=12"], "web1", True),
        (["virtual=true"], "web1", True),
        (["ips.0=a"], "web1", True),
        (["ips.1=a"], "web1", False),
        (["os=debian"], "web1", False),  # objects are not compared
        (["missing.path=x"], "web1", False),
        (["role=web", "identity=w*"], "web1", True),
    ],
)
def test_node_filter(clauses: list[str], identity: str, expected: bool) -> None:
    assert parse_where(clauses).matches_node(identity, FACTS) is expected


def test_machine_filter() -> None:
    selected = parse_where(["machine=nginx", "state=maintenance"])
    assert selected.selects_machines
    assert selected.matches_machine("nginx", "maintenance")
    assert not selected.matches_machine("nginx", "running")
    assert not selected.matches_machine("mysql", "maintenance")
    assert parse_where(["state=x"]).matches_machine("any", "x")
    assert not Filter().selects_machines


def test_reserved_fact_names_use_a_prefix() -> None:
    selected = parse_where(["fact:identity=x", "identity=web1"])
    assert selected.facts == {"identity": "x"}
    assert selected.matches_node("web1", {"identity": "x"})
    assert not selected.matches_node("web1", {"identity": "y"})


@pytest.mark.parametrize(
    ("clauses", "message"),
    [
        (["identity"], "expected KEY=VALUE"),
        (["=x"], "expected KEY=VALUE"),
        (["identity=a", "identity=b"], "given twice"),
        (["machine=../etc"], "invalid machine name"),
        (["a..b=1"], "invalid fact path"),
        (["machine="], "1 to 128"),
    ],
)
def test_bad_where(clauses: list[str], message: str) -> None:
    with pytest.raises(ControlError, match=message):
        parse_where(clauses)


def test_filter_round_trip() -> None:
    selected = parse_where(["identity=w*", "machine=m", "state=s", "a.b=c"])
    assert Filter.from_dict(json.loads(json.dumps(selected.to_dict()))) == selected


@pytest.mark.parametrize(
    "data",
    [[], "x", {"identity": 1}, {"facts": {"a": 1}}, {"unknown": "x"}, {"facts": []}],
)
def test_bad_filter_documents(data: Any) -> None:
    with pytest.raises(ControlError) as caught:
        Filter.from_dict(data)
    assert caught.value.code == "bad_request"


@pytest.mark.parametrize(
    "data", [b"[1]", b"not json", b"{" * 100_000, b'{"version": 2}', b"x" * (70 * 1024)]
)
def test_bad_requests(data: bytes) -> None:
    with pytest.raises(ControlError) as caught:
        parse_request(data)
    assert caught.value.code == "bad_request"


def test_empty_request_is_version_1() -> None:
    assert parse_request(b"") == {"version": 1}


def test_canonical_bytes_ignore_order_whitespace_and_signature() -> None:
    a = {"b": 1, "a": {"y": 2, "x": "é"}, "signature": "00"}
    b = json.loads('{ "a": {"x": "é", "y": 2}, "b": 1 }')
    assert canonical_bytes(a) == canonical_bytes(b) == '{"a":{"x":"é","y":2},"b":1}'.encode()


class Signed:
    def __init__(self) -> None:
        self.key = generate_keypair()
        self.clock = FakeClock(start=NOW)
        self.auth = RequestAuthenticator([self.key.public], now=self.clock.now)

    def request(self, **changes: Any) -> dict[str, Any]:
        request = transition_request(
            "nginx", "maintenance", parse_where(["identity=web*"]), now=self.clock.now()
        )
        request.update(changes)
        return sign_request(request, self.key)


def test_signed_request_accepted_once() -> None:
    signed = Signed()
    request = signed.request()
    assert request["filter"] == {"identity": "web*", "machine": "nginx"}
    assert signed.auth.check(request) == signed.key.public_hex
    with pytest.raises(ControlError) as caught:
        signed.auth.check(request)
    assert caught.value.code == "replayed"


def refusal(auth: RequestAuthenticator, request: dict[str, Any]) -> str:
    with pytest.raises(ControlError) as caught:
        auth.check(request)
    return caught.value.code


def test_no_keys_no_state_change() -> None:
    signed = Signed()
    auth = RequestAuthenticator([], now=signed.clock.now)
    assert refusal(auth, signed.request()) == "not_allowed"


def test_unsigned_and_untrusted() -> None:
    signed = Signed()
    request = signed.request()
    del request["signature"]
    assert refusal(signed.auth, request) == "unsigned"
    stranger = generate_keypair()
    assert refusal(signed.auth, sign_request(signed.request(), stranger)) == "untrusted"


@pytest.mark.parametrize(
    "change",
    [
        {"transition": "resume"},
        {"filter": {"identity": "*", "machine": "nginx"}},  # widening the filter
        {"machine": "other"},
        {"nonce": "00" * 16},
        {"issued": 1},
        {"extra": "field"},
    ],
)
def test_any_change_breaks_the_signature(change: dict[str, Any]) -> None:
    signed = Signed()
    request = signed.request()
    request.update(change)
    assert refusal(signed.auth, request) == "bad_signature"


def test_malformed_signature() -> None:
    signed = Signed()
    assert refusal(signed.auth, {**signed.request(), "signature": "zz" * 64}) == "bad_signature"
    assert refusal(signed.auth, {**signed.request(), "signature": "00"}) == "bad_signature"


def test_freshness_window_with_skew() -> None:
    signed = Signed()
    request = signed.request()
    signed.clock.set_wall(signed.clock.now() + 65)  # 60 s plus the 5 s skew tolerance: still good
    assert signed.auth.check(request)
    request = signed.request()
    signed.clock.set_wall(signed.clock.now() + 65.5)
    assert refusal(signed.auth, request) == "expired"
    future = signed.request(issued=int((signed.clock.now() + 4) * 1000))
    assert signed.auth.check(future)
    future = signed.request(issued=int((signed.clock.now() + 6) * 1000))
    assert refusal(signed.auth, future) == "expired"


def test_signed_but_malformed_fields_are_bad_requests() -> None:
    signed = Signed()
    assert refusal(signed.auth, signed.request(issued="now")) == "bad_request"
    assert refusal(signed.auth, signed.request(nonce="x")) == "bad_request"


def test_nonce_cache_forgets_stale_nonces_and_is_bounded() -> None:
    cache = NonceCache(limit=2)
    cache.add("a", expires=10, now=0)
    cache.add("b", expires=20, now=0)
    with pytest.raises(ControlError) as caught:
        cache.add("c", expires=30, now=5)
    assert caught.value.code == "busy"
    cache.add("c", expires=30, now=10)  # "a" expired
    assert not cache.seen("a") and cache.seen("b") and cache.seen("c")
    assert len(cache) == 2


def test_replay_cache_survives_until_the_request_is_stale() -> None:
    signed = Signed()
    request = signed.request()
    signed.auth.check(request)
    signed.clock.set_wall(signed.clock.now() + 64)
    assert refusal(signed.auth, request) == "replayed"
    signed.clock.set_wall(signed.clock.now() + 2)
    assert refusal(signed.auth, request) == "expired"


def test_identity_globs_from_requests_do_not_accumulate_in_a_cache() -> None:
    # fnmatch keeps up to 32,768 compiled patterns; whoever may ask chooses the patterns.
    import fnmatch

    before = fnmatch._compile_pattern.cache_info().currsize  # type: ignore[attr-defined]
    for i in range(2_000):
        Filter(identity=f"web{i}-*" + "x" * 200).matches_node("web1", {})
    assert fnmatch._compile_pattern.cache_info().currsize - before < 10  # type: ignore[attr-defined]
