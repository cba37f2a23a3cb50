"""A real headless Chromium (Debian's /usr/bin/chromium) driven by playwright, for the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

# Records, with the page's wall clock, every change of the graph's current state (the graph is
# sometimes rebuilt, so the whole view is observed), and every timeline entry added.
RECORDER = """() => {
  window.__states = [];
  const note = () => {
    const node = document.querySelector('#graph g.state[aria-current="true"]');
    const state = node ? node.dataset.state : null;
    const last = window.__states[window.__states.length - 1];
    if (!last || last.state !== state) window.__states.push({state, t: Date.now() / 1000});
  };
  note();
  new MutationObserver(note).observe(document.getElementById('main'),
    {subtree: true, childList: true, attributes: true, attributeFilter: ['aria-current']});
}"""

# The contrast ratio (WCAG) of an element's text against the first opaque background behind it.
CONTRAST = """(selector) => {
  const el = document.querySelector(selector);
  if (!el) return null;
  const parse = (c) => { const m = c.match(/[\\d.]+/g).map(Number); return {r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1}; };
  const lum = ({r, g, b}) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }; return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  let bg = null;
  for (let node = el; node; node = node.parentElement) {
    const c = parse(getComputedStyle(node).backgroundColor);
    if (c.a > 0.5) { bg = c; break; }
  }
  bg = bg || {r: 255, g: 255, b: 255};
  const fg = parse(getComputedStyle(el).color);
  const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
  return {ratio: (hi + 0.05) / (lo + 0.05), background: lum(bg)};
}"""


class WatchedPage:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: self.requests.append(f"{r.method} {r.url}"))

    def unexpected_errors(self, *allowed: str) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in allowed)]

    async def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        await self.page.screenshot(path=str(path), full_page=full_page)
        return path

    async def until(
        self, script: str, arg: Any = None, *, timeout: float = 30.0, interval: float = 0.02
    ) -> Any:
        """Evaluate ``script`` (an expression or a function of ``arg``) until it is truthy.

        playwright's own ``wait_for_function`` evaluates its predicate with ``eval``, which the
        dashboard's Content-Security-Policy forbids (as it should); ``evaluate`` is not subject
        to it, so this polls from the test side.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.page.evaluate(script, arg)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for: {script}")
            await asyncio.sleep(interval)

    async def wait_live(self, timeout: float = 10_000) -> None:
        await self.page.wait_for_selector('#conn[data-state="live"]', timeout=timeout)

    async def no_horizontal_overflow(self) -> tuple[int, int]:
        width = await self.page.evaluate("document.documentElement.scrollWidth")
        viewport = await self.page.evaluate("window.innerWidth")
        assert width <= viewport, f"the page is {width}px wide in a {viewport}px window"
        return width, viewport


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        missing = f"no Chromium at {CHROMIUM}: install Debian's chromium package"
        if os.environ.get("CI_REQUIRE_BROWSER_TESTS"):
            pytest.fail(missing + " (.ci/run requires the browser tests to run)")
        pytest.skip(missing)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def open_page(browser: Any) -> Any:
    """``async with open_page(url, width=, height=, scheme=) as watched`` (closes its context)."""

    @contextlib.asynccontextmanager
    async def start(
        url: str, *, width: int = 1280, height: int = 800, scheme: str = "light"
    ) -> AsyncIterator[WatchedPage]:
        context = await browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=scheme
        )
        try:
            page = await context.new_page()
            watched = WatchedPage(page)
            await page.goto(url)
            yield watched
        finally:
            await context.close()

    return start
