"""Real agents as NATS services: discovery, reads with filters, signed transitions, refusals."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from machinery.core.signing import generate_keypair
from machinery.nats.control import sign_request
from machinery.nats.fleetclient import discover, gather, request_node
from tests.e2e.agent_process import AgentProcess
from tests.e2e.fleet_nodes import KEY, NODES, SVC, Fleet, fleet, signed
from tests.natsserver import NatsServer

__all__ = ["fleet"]  # the module-scoped fixture


def fleet_request(
    fleet: Fleet, verb: str, request: dict[str, Any], expected: set[str] | None = None
) -> dict[str, dict[str, Any]]:
    async def work(client: NATS) -> dict[str, dict[str, Any]]:
        result = await gather(client, verb, request, set(NODES) if expected is None else expected)
        assert not result.missing and not result.invalid
        return result.replies

    return fleet.ask(work)


def test_discovery_finds_every_agent_with_identity_and_version(fleet: Fleet) -> None:
    found = fleet.ask(lambda client: discover(client))
    assert set(found) == set(NODES)
    assert all(info.version and info.service_id for info in found.values())

    async def info(client: NATS) -> dict[str, Any]:
        msg = await client.request("$SRV.INFO.machinery", b"", timeout=5)
        return dict(json.loads(msg.data))

    described = fleet.ask(info)
    subjects = {endpoint["subject"] for endpoint in described["endpoints"]}
    identity = described["metadata"]["identity"]
    assert f"machinery.node.{identity}.machines" in subjects
    assert "machinery.fleet.transition" in subjects
    # Each node has a queue group of its own, so every node hears fleet requests.
    assert all(e["queue_group"] != "q" for e in described["endpoints"])


def test_machines_of_every_node(fleet: Fleet) -> None:
    replies = fleet_request(fleet, "machines", {"version": 1})
    assert set(replies) == set(NODES)
    for body in replies.values():
        assert body["version"] == 1 and body["matched"] is True
        names = {m["name"]: m for m in body["machines"]}
        assert set(names) == {"svc", "other"}
        svc = names["svc"]
        assert svc["state"] == "running" and svc["status"] == "running"
        assert svc["version"] == "1.0.0" and svc["available_transitions"] == ["maintenance"]
        assert svc["state_entered"] > 0


def test_filters_select_nodes_and_machines(fleet: Fleet) -> None:
    def matched(filter: dict[str, Any]) -> dict[str, list[str]]:
        replies = fleet_request(fleet, "machines", {"version": 1, "filter": filter})
        return {
            identity: sorted(m["name"] for m in body["machines"])
            for identity, body in replies.items()
            if body["matched"]
        }

    assert set(matched({"identity": "web*"})) == {"web1.example.net", "web2.example.net"}
    assert set(matched({"facts": {"os.family": "debian"}})) == {
        "web1.example.net",
        "db1.example.net",
    }
    assert matched({"facts": {"role": "web", "os.family": "redhat"}}) == {
        "web2.example.net": ["other", "svc"]
    }
    assert matched({"machine": "other"}) == {identity: ["other"] for identity in NODES}
    assert matched({"state": "idle"}) == {identity: ["other"] for identity in NODES}
    assert matched({"state": "maintenance"}) == {}


def test_node_subject_and_machine_detail(fleet: Fleet) -> None:
    async def work(client: NATS) -> Any:
        return await request_node(
            client, "web1.example.net", "machine", {"version": 1, "machine": "svc"}
        )

    body = fleet.ask(work)
    assert body["identity"] == "web1.example.net"
    detail = body["machine"]
    assert detail["name"] == "svc" and detail["state"] == "running"
    assert [w["name"] for w in detail["watchers"]] == ["tick"]
    assert detail["watchers"][0]["type"] == "timer"
    assert isinstance(detail["history"], list)

    async def missing(client: NATS) -> Any:
        return await request_node(
            client, "web1.example.net", "machine", {"version": 1, "machine": "nope"}
        )

    assert fleet.ask(missing)["matched"] is False


def test_agent_verb(fleet: Fleet) -> None:
    replies = fleet_request(fleet, "agent", {})
    for identity, body in replies.items():
        agent = body["agent"]
        assert agent["identity"] == identity and agent["version"]
        assert agent["uptime"] >= 0 and agent["machines"] == 2
        assert agent["nats"]["state"] == "connected"
        assert agent["spool"]["spool_depth"] >= 0


def test_bad_requests_get_clear_errors(fleet: Fleet) -> None:
    async def work(client: NATS) -> list[dict[str, Any]]:
        answers = []
        for data in (b"not json", b"[]", b'{"version": 9}', b'{"filter": {"bogus": 1}}'):
            msg = await client.request("machinery.node.web1.example.net.machines", data, 5)
            # The services protocol's error headers, for standard tools.
            assert (msg.headers or {}).get("Nats-Service-Error-Code") == "bad_request"
            answers.append(json.loads(msg.data))
        return answers

    for body in fleet.ask(work):
        assert body["error"]["code"] == "bad_request" and body["error"]["message"]
        assert body["version"] == 1


def transition_everywhere(fleet: Fleet, request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return fleet_request(fleet, "transition", request)


def test_signed_transition_reaches_exactly_the_filtered_nodes(fleet: Fleet) -> None:
    fleet.reset()
    replies = transition_everywhere(
        fleet, signed("svc", "maintenance", ["identity=web*", "os.family=debian"])
    )
    assert replies["web1.example.net"]["result"] == {
        "success": True,
        "machine": "svc",
        "transition": "maintenance",
        "from_state": "running",
        "to_state": "maintenance",
        "changed": True,
    }
    assert replies["web2.example.net"]["matched"] is False
    assert replies["db1.example.net"]["matched"] is False
    assert fleet.states() == {
        "web1.example.net": "maintenance",
        "web2.example.net": "running",
        "db1.example.net": "running",
    }
    # Not valid in its state: a clear error, nothing moved.
    again = transition_everywhere(fleet, signed("svc", "maintenance", ["identity=web1*"]))
    assert again["web1.example.net"]["error"]["code"] == "invalid"
    assert fleet.state("web1.example.net") == "maintenance"
    fleet.reset()


def refused(fleet: Fleet, request: dict[str, Any]) -> dict[str, str]:
    before = fleet.states()
    replies = transition_everywhere(fleet, request)
    codes = {
        identity: body["error"]["code"] if body["matched"] else "not_matched"
        for identity, body in replies.items()
    }
    assert fleet.states() == before, "a refused request moved a machine"
    return codes


def test_unsigned_untrusted_tampered_expired_and_replayed_are_refused(fleet: Fleet) -> None:
    fleet.reset()
    unsigned = signed("svc", "maintenance", [])
    del unsigned["signature"]
    assert refused(fleet, unsigned) == {
        "web1.example.net": "unsigned",
        "web2.example.net": "unsigned",
        "db1.example.net": "not_allowed",
    }
    stranger = generate_keypair()
    assert set(refused(fleet, signed("svc", "maintenance", [], key=stranger)).values()) == {
        "untrusted",
        "not_allowed",
    }
    tampered = signed("svc", "maintenance", ["identity=db1*"])
    tampered["filter"] = {"machine": "svc"}  # widened after signing
    assert refused(fleet, tampered)["web1.example.net"] == "bad_signature"
    stale = signed("svc", "maintenance", [], issued=int((time.time() - 120) * 1000))
    assert refused(fleet, stale)["web2.example.net"] == "expired"

    once = signed("svc", "maintenance", ["identity=web2*"])
    first = transition_everywhere(fleet, once)
    assert first["web2.example.net"]["result"]["to_state"] == "maintenance"
    fleet.agents["web2.example.net"].post(
        "/api/v1/machines/svc/transition", {"transition": "resume"}
    )
    fleet.agents["web2.example.net"].wait(
        lambda: fleet.state("web2.example.net") == "running", what="resumed"
    )
    assert refused(fleet, once)["web2.example.net"] == "replayed"


def test_refusals_are_logged_and_counted(fleet: Fleet) -> None:
    stranger = generate_keypair()
    request = sign_request(signed("svc", "maintenance", ["identity=web1*"]), stranger)
    transition_everywhere(fleet, request)
    agent = fleet.agents["web1.example.net"]
    agent.wait(
        lambda: "refused a transition request over NATS (untrusted)" in agent.log.read_text()
    )
    import httpx

    metrics = httpx.get(agent.url + "/metrics", timeout=10).text
    assert 'machinery_control_refusals_total{reason="untrusted"}' in metrics
    # db1 trusts no key: the refusal reason is not_allowed.
    db = fleet.agents["db1.example.net"]
    transition_everywhere(fleet, signed("svc", "maintenance", ["identity=db1*"]))
    metrics = httpx.get(db.url + "/metrics", timeout=10).text
    assert 'machinery_control_refusals_total{reason="not_allowed"}' in metrics
    assert KEY.public_hex not in metrics


def test_a_node_that_does_not_answer_is_named_after_the_timeout(fleet: Fleet) -> None:
    async def work(client: NATS) -> Any:
        return await gather(client, "machines", {}, {*NODES, "ghost.example.net"}, timeout=1.0)

    result = fleet.ask(work)
    assert result.missing == ["ghost.example.net"]
    assert set(result.replies) == set(NODES)


def test_sighup_reloads_the_trusted_keys(tmp_path: Path, nats_server: NatsServer) -> None:
    config = tmp_path / "machinery.toml"
    config.write_text("[control]\npublic_keys = []\n")
    agent = AgentProcess(
        tmp_path / "agent",
        env={"MACHINERY_CONFIG": str(config), "MACHINERY_NATS__SERVERS": nats_server.url},
        args=["--identity", "reload.example.net"],
    )
    (agent.store / "svc").mkdir()
    (agent.store / "svc" / "machine.yaml").write_text(SVC)
    here = Fleet(nats_server, {"reload.example.net": agent})

    def fire() -> dict[str, Any]:
        async def work(client: NATS) -> Any:
            for _ in range(100):  # the service registers once connected: retry a moment
                body = await request_node(
                    client,
                    "reload.example.net",
                    "transition",
                    signed("svc", "maintenance", []),
                    timeout=1,
                )
                if body is not None:
                    return body
            raise AssertionError("the agent never answered")

        return dict(here.ask(work))

    try:
        agent.start()
        assert fire()["error"]["code"] == "not_allowed"
        config.write_text(f'[control]\npublic_keys = ["{KEY.public_hex}"]\n')
        agent.signal(signal.SIGHUP)
        agent.wait(lambda: "1 trusted public key(s) now" in agent.log.read_text(), what="reload")
        assert fire()["result"]["to_state"] == "maintenance"
        assert here.state("reload.example.net") == "maintenance"
    finally:
        agent.kill()
