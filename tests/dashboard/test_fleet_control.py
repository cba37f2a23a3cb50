"""The fleet dashboard asks the nodes: states at once, silent nodes marked, signed transitions."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from machinery.fleet.model import FleetModel
from machinery.fleet.server import FleetControl
from tests.dashboard.test_fleet import running_dashboard, transition, until
from tests.e2e.fleet_nodes import KEY, NODES, Fleet, start_fleet

pytestmark = pytest.mark.timeout(300)

TOKEN = "dashboard-token-0123456789"

# -- the model ------------------------------------------------------------------------------


def test_snapshot_gives_states_at_once_and_newer_events_win() -> None:
    model = FleetModel(now=lambda: 1_000.0)
    taken = model.apply_snapshot(
        "web1",
        [
            {
                "name": "svc",
                "state": "running",
                "status": "running",
                "version": "1.0.0",
                "state_entered": 500.7,
                "available_transitions": ["maintenance"],
            },
            {"name": "broken", "status": "invalid"},
            "junk",
            {"name": 5},
        ],
        900.0,
    )
    assert taken == 2
    [node] = model.nodes_document()
    assert node["answering"] is True and node["last_answer"] == 900.0
    svc = {m["name"]: m for m in node["machines"]}["svc"]
    assert svc["state"] == "running" and svc["status"] == "running"
    assert svc["available_transitions"] == ["maintenance"]
    # A transition in the same second as the snapshot's state counts as newer.
    model.apply(transition("web1", "svc", "maintenance", "running", "maintenance", 500))
    machine = model.machine("web1", "svc")
    assert machine is not None and machine.state == "maintenance"
    assert machine.available is None  # the snapshot's list was about the state left
    # An older snapshot does not move the machine back.
    model.apply_snapshot("web1", [{"name": "svc", "state": "running", "state_entered": 400}], 950)
    assert machine.state == "maintenance"


def test_silent_nodes_are_marked_and_come_back() -> None:
    model = FleetModel(now=lambda: 1_000.0)
    model.apply_snapshot("a", [], 10)
    model.apply_snapshot("b", [], 10)
    model.apply(transition("choria-node", "m", "x", "s1", "s2", 10))
    model.mark_answering({"a"}, 20)
    answering = {n["identity"]: n["answering"] for n in model.nodes_document()}
    assert answering == {"a": True, "b": False, "choria-node": None}
    model.mark_answering({"a", "b"}, 30)
    assert model.nodes["b"].answering is True


# -- with real agents -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from start_fleet(tmp_path_factory.mktemp("dashboard-fleet"))


def control() -> FleetControl:
    return FleetControl(KEY, TOKEN)


async def test_states_are_known_at_once_without_any_transition(
    fleet: Fleet, open_page: Any
) -> None:
    fleet.reset()
    async with running_dashboard(fleet.server.url, stream=None) as dashboard:
        await until(
            lambda: all(
                (m := dashboard.model.machine(identity, "other")) is not None and m.state == "idle"
                for identity in NODES
            ),
            what="every node's machines from their answers",
        )
        assert dashboard.model.events == 0  # no event told it: the nodes did
        async with open_page(dashboard.url) as watched:
            page = watched.page
            await watched.wait_live()
            await page.wait_for_selector("tr.machine-row >> nth=5")
            pills = await page.eval_on_selector_all(
                "tr.machine-row",
                "rows => rows.map(r => [r.dataset.node, r.dataset.machine,"
                " r.querySelector('.state-pill')?.textContent])",
            )
            expected = {(i, "svc", "running") for i in NODES} | {
                (i, "other", "idle") for i in NODES
            }
            assert {tuple(p) for p in pills} == expected
            # Read-only: no token field, no selection panel, and the API refuses.
            assert await page.locator("#token-form").is_hidden()
            assert await page.locator("#selection-form").count() == 0
            async with httpx.AsyncClient(timeout=30) as http:
                answer = await http.post(
                    dashboard.url + "api/fleet/transition",
                    json={"machine": "svc", "transition": "maintenance", "where": []},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
            assert answer.status_code == 403 and "read-only" in answer.json()["error"]
            assert watched.unexpected_errors() == []


async def test_browser_fires_on_one_machine_and_on_a_selection(
    fleet: Fleet, open_page: Any
) -> None:
    fleet.reset()
    async with running_dashboard(fleet.server.url, stream=None, control=control()) as dashboard:
        await until(
            lambda: dashboard.model.machine("web1.example.net", "svc") is not None,
            what="web1's svc",
        )
        async with open_page(dashboard.url + "#/node/web1.example.net/machine/svc") as watched:
            page = watched.page
            await watched.wait_live()
            await page.fill("#token-input", TOKEN)
            await page.click("#token-form button[type=submit]")
            button = page.locator('#transition-buttons [data-transition="maintenance"]')
            await button.click()
            await watched.until(
                "() => document.querySelector('#transition-result.ok') ||"
                " !document.getElementById('transition-error').hidden"
            )
            assert await page.locator("#transition-error").is_hidden(), await page.inner_text(
                "#transition-error"
            )
            assert "running → maintenance" in await page.inner_text("#transition-result")
            await until(
                lambda: fleet.state("web1.example.net") == "maintenance",
                what="web1 in maintenance",
            )
            # The page follows: resume is offered now.
            await page.wait_for_selector('#transition-buttons [data-transition="resume"]')

            await page.goto(dashboard.url + "#/")
            await page.wait_for_selector("#selection-form")
            await page.fill("#selection-machine", "svc")
            await page.fill("#selection-transition", "maintenance")
            await page.fill("#selection-where", "role=web")
            await page.click("#selection-fire")
            await watched.until(
                "() => document.querySelector('#selection-outcomes, #selection-result .error')",
                timeout=30,
            )
            assert await page.locator("#selection-outcomes").count() == 1, await page.inner_text(
                "#selection-result"
            )
            outcomes = await page.eval_on_selector_all(
                "#selection-outcomes tbody tr",
                "rows => rows.map(r => [r.dataset.node, r.dataset.outcome])",
            )
            # web1 was in maintenance already: not valid in its state; web2 did it.
            assert sorted(tuple(o) for o in outcomes) == [
                ("web1.example.net", "invalid"),
                ("web2.example.net", "done"),
            ]
            assert fleet.states() == {
                "web1.example.net": "maintenance",
                "web2.example.net": "maintenance",
                "db1.example.net": "running",
            }
            assert watched.unexpected_errors("409") == []
    fleet.reset()


async def test_state_changes_need_the_token_and_the_dashboards_origin(fleet: Fleet) -> None:
    fleet.reset()
    async with running_dashboard(fleet.server.url, stream=None, control=control()) as dashboard:
        url = dashboard.url + "api/fleet/transition"
        body = {"machine": "svc", "transition": "maintenance", "where": ["identity=web1*"]}
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.post(url, json=body)).status_code == 401
            wrong = await http.post(url, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            foreign = await http.post(
                url,
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"},
            )
            assert foreign.status_code == 403
            form = await http.post(
                url,
                content=b"machine=svc",
                headers={
                    "Authorization": f"Bearer {TOKEN}",
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            )
            assert form.status_code == 415
            huge = await http.post(
                url,
                content=b"{" + b" " * 20_000 + b"}",
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
            assert huge.status_code == 413
            for bad in (
                {"machine": "../x", "transition": "t"},
                {"machine": "svc", "transition": "t", "where": "role=web"},
                {"machine": "svc", "transition": "t", "identity": "a", "where": ["b=c"]},
                {"machine": "svc", "transition": "t", "extra": 1},
                {"machine": "svc", "transition": "t", "where": ["nonsense"]},
            ):
                answer = await http.post(
                    url, json=bad, headers={"Authorization": f"Bearer {TOKEN}"}
                )
                assert answer.status_code == 400, (bad, answer.text)
            assert set(fleet.states().values()) == {"running"}
            good = await http.post(
                url,
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}", "Origin": dashboard.url.rstrip("/")},
            )
            assert good.status_code == 200, good.text
            assert good.json()["counts"] == {"done": 1}
    assert fleet.state("web1.example.net") == "maintenance"
    fleet.reset()


async def test_a_node_that_stops_answering_is_marked(fleet: Fleet, open_page: Any) -> None:
    async with running_dashboard(fleet.server.url, stream=None, refresh=1.0) as dashboard:
        await until(
            lambda: all(
                (node := dashboard.model.nodes.get(identity)) is not None and node.answering
                for identity in NODES
            ),
            what="every node answering",
        )
        async with open_page(dashboard.url) as watched:
            page = watched.page
            await watched.wait_live()
            agent = fleet.agents["db1.example.net"]
            agent.signal(signal.SIGSTOP)  # frozen: it answers nothing
            try:
                await until(
                    lambda: dashboard.model.nodes["db1.example.net"].answering is False,
                    what="db1 marked as not answering",
                )
                await page.reload()
                await page.wait_for_selector(
                    'a.node-chip[data-node="db1.example.net"] [data-answering="false"]'
                )
                assert await page.locator('[data-answering="false"]').count() == 1
            finally:
                agent.signal(signal.SIGCONT)
            await until(
                lambda: dashboard.model.nodes["db1.example.net"].answering is True,
                what="db1 answering again",
            )
    await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: ["--token-file", str(d / "token")], "only with --seed-file"),
        (lambda d: ["--seed-file", str(d / "missing")], "--seed-file"),
        (lambda d: ["--seed-file", str(d / "seed"), "--token-file", str(d / "short")], "too short"),
        (lambda d: ["--seed-file", str(d / "seed"), "--token-file", str(d / "open")], "chmod 600"),
        (lambda d: ["--refresh", "0.1s"], "at least 1s"),
    ],
)
def test_the_command_refuses_bad_control_options(tmp_path: Any, make: Any, message: str) -> None:
    from typer.testing import CliRunner

    from machinery.cli.dashboard import app as dashboard_cli

    (tmp_path / "seed").write_text(KEY.seed_hex)
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "short").write_text("abc")
    (tmp_path / "short").chmod(0o600)
    (tmp_path / "open").write_text(TOKEN)
    (tmp_path / "open").chmod(0o644)
    result = CliRunner().invoke(dashboard_cli, ["--nats", "nats://127.0.0.1:1", *make(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
