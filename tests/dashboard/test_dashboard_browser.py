"""The agent's dashboard in a real headless Chromium, against a real in-process agent."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.test_store import write
from tests.dashboard.conftest import CONTRAST, RECORDER
from tests.natsserver import free_port
from tests.support import assert_took

TOKEN = "dashboard-token-for-tests-0123456789"
BROKEN = "name: broken\nversion: 1.0.0\ninitial_state: a\ntransitions: []\nwatchers: []\n"
# A calm machine with a fast exec watcher: its run durations arrive every half second.
PULSE = """\
name: pulse
version: 2.0.0
initial_state: resting
transitions:
  - name: wake
    from: [resting]
    destination: awake
  - name: rest
    from: [awake]
    destination: resting
watchers:
  - name: beat
    type: exec
    interval: 500ms
    properties:
      command: /bin/true
"""


def prepare_store(tmp_path: Path, *, pulse: bool = True) -> None:
    """Machines the agent finds at start: a broken one and (optionally) pulse."""
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    write(store, "broken", BROKEN)
    if pulse:
        write(store, "pulse", PULSE)


async def current_state(run: Any, name: str) -> str:
    return str((await run.http.get(f"/api/v1/machines/{name}")).json()["state"])


async def test_a_running_machine_shows_the_warnings_of_its_manifest(
    tmp_path: Path, agent_factory: Any, open_page: Any
) -> None:
    # An unknown key: Choria runs the machine ignoring it, so does the agent, and says so.
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    write(store, "pulse", PULSE.replace("      command:", "      retries: 3\n      command:"))
    async with agent_factory() as run, open_page(run.agent.http_url + "/") as watched:
        page = watched.page
        await watched.wait_live()
        await page.wait_for_selector('tr.machine-row[data-machine="pulse"] .badge')
        pulse = (await run.http.get("/api/v1/machines/pulse")).json()
        assert pulse["status"] == "running" and "errors" not in pulse
        problems = page.locator('tr[data-problems="pulse"] li.problem.warning code')
        await problems.first.wait_for()
        texts = await problems.all_inner_texts()
        assert texts == pulse["warnings"]
        assert any("unknown property 'retries' is ignored" in t for t in texts), texts
        await page.click('a.machine-link[data-key="pulse"]')
        await page.wait_for_selector(".problems-panel li.problem.warning")
        panel = page.locator(".problems-panel li.problem.warning code")
        assert await panel.all_inner_texts() == texts


async def test_machine_list_shows_every_machine_with_status_and_errors(
    tmp_path: Path, agent_factory: Any, open_page: Any
) -> None:
    prepare_store(tmp_path)
    async with (
        agent_factory(("hvac", "container-manager")) as run,
        open_page(run.agent.http_url + "/") as watched,
    ):
        page = watched.page
        await watched.wait_live()
        await page.wait_for_selector("tr.machine-row >> nth=3")
        rows = page.locator("tr.machine-row")
        names = sorted(await page.locator("a.machine-link").all_inner_texts())
        assert names == ["ContainerManager", "HVAC", "broken", "pulse"]
        assert await rows.count() == 4

        api = {m["name"]: m for m in (await run.http.get("/api/v1/machines")).json()["machines"]}
        for name, machine in api.items():
            row = page.locator(f'tr.machine-row[data-machine="{name}"]')
            assert await row.locator(".badge").inner_text() == machine["status"]
            if machine["status"] == "running":
                pill = row.locator(".state-pill")
                await pill.wait_for()
                assert await row.locator("td").nth(3).inner_text() == machine["version"]
                # "In state since" is a relative, ticking <time> with the exact instant.
                since = row.locator(".since-cell time")
                assert re.fullmatch(r"(just now|\d+s ago)", await since.inner_text())
                assert await since.get_attribute("data-ts") is not None

        # The broken manifest: its errors, FILE:LINE:COL: message, under its row.
        problems = page.locator('tr[data-problems="broken"] li.problem.error')
        texts = await problems.all_inner_texts()
        assert texts == api["broken"]["errors"]
        assert all(re.search(r"broken/machine\.yaml:\d+:\d+: ", t) for t in texts), texts
        assert "no transitions defined" in texts[0]

        counts = await page.locator("#machine-counts").inner_text()
        assert "4 machines" in counts and "3 running" in counts and "1 invalid" in counts

        # The broken machine's own page: its errors, and no request for what it cannot have.
        await page.click('a.machine-link[data-key="broken"]')
        await page.wait_for_selector(".problems-panel li.problem")
        assert await page.locator(".problems-panel li.problem.error").all_inner_texts() == texts
        assert await page.locator("#graph").count() == 0
        assert await page.locator(".machine-head .badge").inner_text() == "invalid"
        await page.keyboard.press("Escape")
        await page.wait_for_selector("#machine-filter")

        # The filter narrows the list as one types; the counts follow.
        await page.fill("#machine-filter", "invalid")
        assert await page.locator("a.machine-link").all_inner_texts() == ["broken"]
        assert "1 machine" in await page.locator("#machine-counts").inner_text()
        await page.fill("#machine-filter", "")
        assert await rows.count() == 4

        # Events stream in (pulse beats twice a second) without any request of the page.
        before = len(watched.requests)
        await watched.until("document.querySelectorAll('#events-list li').length >= 3", timeout=30)
        await asyncio.sleep(1.0)
        assert watched.requests[before:] == [], "the list must not poll"

        # Pause keeps the events but holds the list still; "p" resumes.
        shown = await page.locator("#events-list li").count()
        await page.click("#events-pause")
        assert await page.get_attribute("#events-pause", "aria-pressed") == "true"
        await watched.until(
            "parseInt(document.getElementById('events-status').textContent.replace('Paused: ', '')) >= 2"
        )
        assert await page.locator("#events-list li").count() == shown
        await page.keyboard.press("p")
        assert await page.get_attribute("#events-pause", "aria-pressed") == "false"
        assert await page.locator("#events-list li").count() >= shown + 2
        # Filters: free text, machine, kind.
        await page.fill("#filter-text", "/bin/true")
        texts = await page.locator("#events-list li .ev-text").all_inner_texts()
        assert texts and all(t.startswith("pulse#beat exec: command=/bin/true") for t in texts)
        await page.fill("#filter-text", "no such event anywhere")
        assert await page.locator("#events-list li").count() == 0
        await page.fill("#filter-text", "")
        await page.select_option("#filter-machine", "pulse")
        machines = await page.eval_on_selector_all(
            "#events-list li", "items => [...new Set(items.map(i => i.dataset.machine))]"
        )
        assert machines == ["pulse"]
        await page.select_option("#filter-machine", "")
        await page.select_option("#filter-kind", "transitions")
        kinds = await page.eval_on_selector_all(
            "#events-list li", "items => items.map(i => i.dataset.kind)"
        )
        assert set(kinds) <= {"transition"}
        await page.select_option("#filter-kind", "")

        await page.evaluate("document.activeElement.blur()")
        await watched.screenshot("dashboard-machines.png")
        assert watched.unexpected_errors() == []


async def test_after_a_reconnect_the_page_reads_the_state_once(
    tmp_path: Path, agent_factory: Any, open_page: Any
) -> None:
    prepare_store(tmp_path)
    listen = {"http.listen": f"127.0.0.1:{free_port()}"}
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(agent_factory(**listen))
        watched = await stack.enter_async_context(open_page(first.agent.http_url + "/"))
        page = watched.page
        await watched.wait_live()
        await page.wait_for_selector('tr.machine-row[data-machine="pulse"]')
        version = page.locator('tr.machine-row[data-machine="pulse"] td').nth(3)
        assert await version.inner_text() == "2.0.0"

        first.agent.stop()
        assert await asyncio.wait_for(first.task, 10) == 0
        await watched.until("document.getElementById('conn').dataset.state !== 'live'")
        # While the page is away, the machine is upgraded: no event will say so.
        write(first.store, "pulse", PULSE.replace("version: 2.0.0", "version: 3.0.0"))
        before = len(watched.requests)

        await stack.enter_async_context(agent_factory(**listen))
        await watched.wait_live(timeout=20_000)
        await watched.until(
            "document.querySelector('tr.machine-row[data-machine=\"pulse\"] td:nth-of-type(4)')"
            "?.textContent === '3.0.0'"
        )
        await asyncio.sleep(1.0)
        fetched = [r.split(" ", 1)[1].split("/", 3)[3] for r in watched.requests[before:]]
        fetched = [f for f in fetched if f != "api/v1/events"]
        assert sorted(fetched) == ["api/v1/machines", "healthz"], fetched
        # The browser notes the stream cut off by the stopping agent, and the refused retries.
        assert (
            watched.unexpected_errors("ERR_INCOMPLETE_CHUNKED_ENCODING", "ERR_CONNECTION_REFUSED")
            == []
        )


async def test_machine_page_graph_watchers_history_and_live_transition(
    tmp_path: Path, agent_factory: Any, open_page: Any
) -> None:
    prepare_store(tmp_path)
    async with (
        agent_factory(("hvac", "container-manager")) as run,
        open_page(run.agent.http_url + "/#/machine/HVAC") as watched,
    ):
        page = watched.page
        await watched.wait_live()
        await page.wait_for_selector("#graph svg g.state")

        graph = (await run.http.get("/api/v1/machines/HVAC/graph")).json()
        drawn = await page.eval_on_selector_all(
            "#graph g.state", "nodes => nodes.map(n => n.dataset.state)"
        )
        assert sorted(drawn) == sorted(graph["states"])
        # Parallel edges merged: one arrow per (from, to) pair, one label line per event.
        pairs = {(e["source"], e["destination"]) for e in graph["edges"]}
        assert await page.locator("#graph g.edge").count() == len(pairs)
        assert await page.locator("#graph g.edge.loop").count() == sum(
            1 for s, d in pairs if s == d
        )
        assert await page.locator("#graph text.edge-label tspan").count() == len(graph["edges"])
        # Exactly one current state, the machine's (which may move meanwhile: compare afresh).
        current = page.locator('#graph g.state[aria-current="true"]')
        deadline = time.monotonic() + 5
        while True:
            shown = await current.get_attribute("data-state")
            if shown == await current_state(run, "HVAC"):
                break
            assert time.monotonic() < deadline, f"the graph shows {shown}"
            await asyncio.sleep(0.05)
        assert await current.count() == 1
        assert "current" in (await current.get_attribute("class") or "")

        watchers = await page.locator("#watchers tbody th").all_inner_texts()
        assert watchers == ["variables", "off", "on", "monitor"]

        # A transition forced through the API shows within a second of the answer.
        await page.evaluate(RECORDER)
        delays = []
        for _ in range(3):
            state = await current_state(run, "HVAC")
            event = "variables_unknown" if state != "unknown" else "variables_changed"
            answer = await run.http.post(
                "/api/v1/machines/HVAC/transition", json={"transition": event}
            )
            answered = time.time()
            assert answer.status_code == 200, answer.text
            target = answer.json()["to_state"]
            await watched.until(
                "(s) => window.__states.some(x => x.state === s && x.t >= %f)" % (answered - 0.05),
                arg=target,
                timeout=15,
            )
            seen = await page.evaluate(
                "(a) => window.__states.find(x => x.state === a.s && x.t >= a.t).t",
                {"s": target, "t": answered - 0.05},
            )
            delays.append(max(0.0, seen - answered))
            # The timeline got it too, newest first.
            first = page.locator("#timeline li").first
            await watched.until(
                "(e) => document.querySelector('#timeline li .tl-via code')?.textContent === e",
                arg=event,
                timeout=15,
            )
            assert event in await first.inner_text()
        # The dashboard promises "within a second"; the test box is loaded and runs chromium, so
        # the bound is 10x that (the figure is recorded in bench/test-timings.md).
        assert_took(max(delays), 10.0, "a forced transition shown on the machine page")

        # The events panel has the transitions; the kind filter keeps only them.
        await page.select_option("#filter-kind", "transitions")
        kinds = await page.eval_on_selector_all(
            "#events-list li", "items => items.map(i => i.dataset.kind)"
        )
        assert kinds and set(kinds) == {"transition"}
        await page.select_option("#filter-kind", "")

        assert watched.unexpected_errors() == []
        await page.evaluate("document.getElementById('transition-buttons')?.scrollIntoView()")


async def test_watcher_durations_are_charted_and_grow_live(
    tmp_path: Path, agent_factory: Any, open_page: Any
) -> None:
    prepare_store(tmp_path)
    async with agent_factory() as run:
        await run.wait(lambda: run.entry_status("pulse") == "running")
        async with open_page(run.agent.http_url + "/#/machine/pulse") as watched:
            page = watched.page
            await watched.wait_live()
            await page.wait_for_selector('#watchers tr[data-watcher="beat"]')
            await page.wait_for_selector('#charts figure[data-watcher="beat"] svg rect.bar')
            bars = page.locator('#charts figure[data-watcher="beat"] rect.bar')
            before = await bars.count()
            await watched.until(
                "(n) => document.querySelectorAll('#charts figure[data-watcher=\"beat\"] rect.bar').length > n",
                arg=before,
                timeout=5,
            )
            row = page.locator('#watchers tr[data-watcher="beat"]')
            cells = await row.locator("td").all_inner_texts()
            # type, active, outcome, last run, duration, next run, runs
            assert cells[0] == "exec" and cells[1] == "active" and cells[2] == "success"
            assert re.fullmatch(r"[\d.]+ (µs|ms|s)", cells[4]), cells
            assert await row.locator("svg.sparkline rect.bar").count() >= 1
            caption = await page.locator(
                '#charts figure[data-watcher="beat"] figcaption'
            ).inner_text()
            assert "median" in caption and "max" in caption
            assert watched.unexpected_errors() == []


async def test_transition_buttons_need_the_token(
    tmp_path: Path, agent_factory: Any, open_page: Any
) -> None:
    prepare_store(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    settings = {"http.require_token": True, "http.token_file": str(token_file)}
    async with (
        agent_factory(("hvac",), **settings) as run,
        open_page(run.agent.http_url + "/#/machine/pulse") as watched,
    ):
        page = watched.page
        await watched.wait_live()
        buttons = page.locator("#transition-buttons button.transition-btn")
        await buttons.first.wait_for()
        api = (await run.http.get("/api/v1/machines/pulse")).json()
        names = await buttons.evaluate_all("bs => bs.map(b => b.dataset.transition)")
        assert names == api["available_transitions"] == ["wake"]

        async def click_and_answer() -> int:
            async with page.expect_response(lambda r: r.url.endswith("/transition")) as info:
                await buttons.first.click()
            return int((await info.value).status)

        # Without a token the agent refuses, and the page says so: status and reason.
        assert await click_and_answer() == 401
        error = page.locator("#transition-error")
        await error.wait_for(state="visible")
        text = await error.inner_text()
        assert "HTTP 401" in text and "a valid bearer token is required" in text
        assert await error.get_attribute("role") == "alert"
        assert await current_state(run, "pulse") == "resting"

        # A wrong token: refused the same way.
        await page.fill("#token-input", "not-the-right-token-at-all")
        await page.click("#token-form button[type=submit]")
        await page.evaluate("document.getElementById('transition-error').textContent = ''")
        assert await click_and_answer() == 401
        await watched.until(
            "document.getElementById('transition-error').textContent.includes('HTTP 401')"
        )

        # The right token, kept for the tab (sessionStorage), fires it.
        await page.fill("#token-input", TOKEN)
        await page.click("#token-form button[type=submit]")
        assert await page.evaluate("sessionStorage.getItem('machinery.token')") == TOKEN
        assert await page.locator("#token-state").inner_text() == "set for this tab"
        assert await click_and_answer() == 200
        result = page.locator("#transition-result")
        await watched.until(
            "document.getElementById('transition-result').textContent.startsWith('wake:')"
        )
        assert await result.inner_text() == "wake: resting → awake"
        assert await error.is_hidden()
        assert await current_state(run, "pulse") == "awake"
        await page.wait_for_selector('#graph g.state[data-state="awake"][aria-current="true"]')
        # The buttons follow the state: now only "rest" is possible.
        await watched.until(
            "[...document.querySelectorAll('#transition-buttons button')].map(b => b.dataset.transition).join() === 'rest'"
        )
        # The token survives a reload of the tab.
        await page.reload()
        await watched.wait_live()
        assert await page.input_value("#token-input") == TOKEN
        await page.locator("#transition-buttons button").first.click()
        await watched.until(
            "document.getElementById('transition-result').textContent === 'rest: awake → resting'"
        )
        # Only the two refusals logged by the browser; nothing else went wrong.
        assert watched.unexpected_errors("status of 401") == []
        assert len(watched.errors) == 2


async def test_a_machine_moving_on_by_itself_answers_409_clearly(
    tmp_path: Path, agent_factory: Any, open_page: Any
) -> None:
    prepare_store(tmp_path)
    async with (
        agent_factory() as run,
        open_page(run.agent.http_url + "/#/machine/pulse") as watched,
    ):
        page = watched.page
        await watched.wait_live()
        await page.locator('#transition-buttons button[data-transition="wake"]').wait_for()
        # The machine moves without a word (as if the page had missed the event), and the
        # user clicks a button that is no longer valid.
        run.agent.store.find("pulse").machine.fsm.force_state("awake")
        await page.click('#transition-buttons button[data-transition="wake"]')
        error = page.locator("#transition-error")
        await error.wait_for(state="visible")
        text = await error.inner_text()
        assert "HTTP 409" in text
        assert "transition wake is not valid while in awake state" in text
        assert watched.unexpected_errors("status of 409") == []


async def test_state_changes_without_any_token_configured_answer_403(
    tmp_path: Path, agent_factory: Any, open_page: Any
) -> None:
    prepare_store(tmp_path)
    async with (
        agent_factory(**{"http.require_token": True}) as run,
        open_page(run.agent.http_url + "/#/machine/pulse") as watched,
    ):
        page = watched.page
        await watched.wait_live()
        await page.locator("#transition-buttons button").first.click()
        error = page.locator("#transition-error")
        await error.wait_for(state="visible")
        text = await error.inner_text()
        assert "HTTP 403" in text and "set http.token_file" in text


async def test_keyboard_reaches_the_list_and_the_transition_buttons(
    tmp_path: Path, agent_factory: Any, open_page: Any
) -> None:
    prepare_store(tmp_path)
    async with (
        agent_factory(("hvac",)) as run,
        open_page(run.agent.http_url + "/") as watched,
    ):
        page = watched.page
        await watched.wait_live()
        await page.wait_for_selector("a.machine-link >> nth=2")

        async def tab_until(selector: str, limit: int = 40) -> list[str]:
            visited = []
            for _ in range(limit):
                await page.keyboard.press("Tab")
                hit = await page.evaluate("(s) => document.activeElement.matches(s)", selector)
                visited.append(
                    await page.evaluate(
                        "document.activeElement.id || document.activeElement.textContent.trim().slice(0, 30)"
                    )
                )
                if hit:
                    return visited
            raise AssertionError(f"Tab never reached {selector}: {visited}")

        visited = await tab_until("a.machine-link")
        assert visited[0] == "skip-link"
        # A visible focus indicator.
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"
        first = await page.evaluate("document.activeElement.textContent")
        await page.keyboard.press("ArrowDown")
        second = await page.evaluate("document.activeElement.textContent")
        assert second != first and second in ("HVAC", "broken", "pulse")
        await page.keyboard.press("ArrowUp")
        assert await page.evaluate("document.activeElement.textContent") == first

        # "/" jumps to the filter; Escape out of it, then open pulse with Enter.
        await page.keyboard.press("/")
        assert await page.evaluate("document.activeElement.id") == "machine-filter"
        await page.locator('a.machine-link[data-key="pulse"]').focus()
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#transition-buttons button")
        assert await page.evaluate("location.hash") == "#/machine/pulse"

        # From the top of the machine page, Tab reaches the transition buttons.
        await page.evaluate("document.activeElement.blur()")
        await page.evaluate("window.scrollTo(0, 0)")
        await tab_until("#transition-buttons button")
        # Enter on the button fires it (loopback, no token needed).
        await page.keyboard.press("Enter")
        await watched.until(
            "document.getElementById('transition-result').textContent === 'wake: resting → awake'"
        )
        # The focus stays on the buttons as they change with the state.
        await watched.until("document.activeElement.closest('#transition-buttons') !== null")
        # Escape goes back to the list; "?" opens the shortcuts.
        await page.keyboard.press("Escape")
        await page.wait_for_selector("#machine-table")
        await page.keyboard.press("?")
        assert await page.locator("#help-dialog").is_visible()
        await page.keyboard.press("Escape")
        assert not await page.locator("#help-dialog").is_visible()
        assert watched.unexpected_errors() == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_phone_size_and_color_schemes_render_without_overflow(
    tmp_path: Path, agent_factory: Any, open_page: Any, scheme: str
) -> None:
    prepare_store(tmp_path)
    async with agent_factory(("hvac", "container-manager")) as run:
        for width, height in ((390, 844), (1280, 800)):
            async with open_page(
                run.agent.http_url + "/", width=width, height=height, scheme=scheme
            ) as watched:
                page = watched.page
                await watched.wait_live()
                await page.wait_for_selector("a.machine-link >> nth=3")
                await watched.no_horizontal_overflow()
                body = await page.evaluate(CONTRAST, "body")
                assert (body["background"] < 0.05) == (scheme == "dark"), body
                for selector in (
                    "body",
                    "a.machine-link",
                    ".counts .count:not(.total)",
                    ".badge.status-running",
                    ".badge.status-invalid",
                    "li.problem.error",
                    ".state-pill",
                    "label",
                ):
                    found = await page.evaluate(CONTRAST, selector)
                    assert found is not None, selector
                    assert found["ratio"] >= 4.5, (selector, scheme, found)

                await page.click('a.machine-link[data-key="HVAC"]')
                await page.wait_for_selector("#graph svg g.state")
                await page.wait_for_selector("#watchers tbody tr")
                await watched.no_horizontal_overflow()
                for selector in (".transition-btn .t-name", ".facts dt", "#watchers th"):
                    found = await page.evaluate(CONTRAST, selector)
                    assert found is not None and found["ratio"] >= 4.5, (selector, scheme, found)
                # The graph fits the width it has: a phone gets the top-to-bottom layout.
                direction = await page.get_attribute("#graph svg", "data-direction")
                assert direction == ("TB" if width < 500 else "LR")
                svg_width = await page.evaluate(
                    "document.querySelector('#graph svg').getBoundingClientRect().width"
                )
                assert svg_width <= width
                await watched.screenshot(f"dashboard-{scheme}-{width}.png")
                assert watched.unexpected_errors() == []


async def test_screenshot_of_a_busy_machine(
    tmp_path: Path, agent_factory: Any, open_page: Any
) -> None:
    """docs/dashboard-machine.png: HVAC after a few transitions, its watchers having run."""
    prepare_store(tmp_path)
    async with agent_factory(("hvac", "container-manager")) as run:
        machine = run.agent.store.find("HVAC").machine
        async with open_page(run.agent.http_url + "/#/machine/HVAC", height=900) as watched:
            page = watched.page
            await watched.wait_live()
            await page.wait_for_selector("#graph svg g.state")
            for event in ("variables_unknown", "variables_changed", "air_bad"):
                if machine.fsm.can(event):
                    await run.http.post(
                        "/api/v1/machines/HVAC/transition", json={"transition": event}
                    )
                    await asyncio.sleep(0.3)
            await page.wait_for_selector("#charts figure svg rect.bar", timeout=5000)
            await watched.until(
                "document.querySelectorAll('#events-list li').length >= 4", timeout=5
            )
            await asyncio.sleep(0.8)
            await watched.screenshot("dashboard-machine.png")
            assert watched.unexpected_errors() == []


async def test_dashboard_assets_content_types_and_caching(agent_factory: Any) -> None:
    async with agent_factory() as run, httpx.AsyncClient(base_url=run.agent.http_url) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert 'data-mode="agent"' in page.text
        assets = re.findall(r"/static/([\w.]+)\?v=([0-9a-f]{16})", page.text)
        assert {name for name, _ in assets} >= {"app.js", "app.css", "favicon.svg"}
        for name, digest in assets:
            versioned = await http.get(f"/static/{name}?v={digest}")
            assert versioned.status_code == 200
            assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
            plain = await http.get(f"/static/{name}")
            assert plain.headers["cache-control"] == "no-cache"
            again = await http.get(
                f"/static/{name}", headers={"If-None-Match": plain.headers["etag"]}
            )
            assert again.status_code == 304 and again.content == b""
        types = {
            "app.js": "text/javascript; charset=utf-8",
            "graph.js": "text/javascript; charset=utf-8",
            "app.css": "text/css; charset=utf-8",
            "favicon.svg": "image/svg+xml",
        }
        for name, content_type in types.items():
            assert (await http.get(f"/static/{name}")).headers["content-type"] == content_type
        assert (await http.head("/")).status_code == 200
        missing = await http.get("/static/nope.js")
        assert missing.status_code == 404 and missing.json() == {"error": "no such file: nope.js"}
        assert (await http.get("/static/index.html")).status_code == 404
        assert (await http.get("/static/..%2Fdashboard.py")).status_code == 404
        # Not in the API's OpenAPI document.
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert "/" not in paths and "/static/{name}" not in paths
        # Nothing on the page comes from elsewhere.
        for name in ("app.js", "graph.js", "charts.js", "util.js", "app.css"):
            body = (await http.get(f"/static/{name}")).text
            assert not re.search(r"https?://", body.replace("http://www.w3.org/2000/svg", "")), name
