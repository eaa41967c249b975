"""The playground page of `glimp serve`, in a real browser: Debian's Chromium (installed by
scripts/setup.sh) driven by Playwright, against the embedded pair on 127.0.0.1, with an API key."""

import os
import shutil
from pathlib import Path

import pytest

from glimp_integrations import GlimpRouter
from glimp_integrations.serve import running_server
from glimp_integrations.serve.limits import DEFAULT_CLIENT_SETTINGS, ServerLimits

pytestmark = pytest.mark.embedded

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEY = "playground-test-key"
#: Chromium flags for this machine: no sandbox as root, and no calls home (the network is closed).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = (
    Path(os.environ.get("GLIMP_PLAYGROUND_SCREENSHOT", "")) if os.environ.get("GLIMP_PLAYGROUND_SCREENSHOT") else None
)
"""Where to save the page's screenshot for the README (docs/images/playground.png), if set."""


@pytest.fixture(scope="module")
def page():
    """A browser page on `glimp serve` (the embedded pair in think mode, at a threshold that sends
    steps both ways), served with an API key."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: scripts/setup.sh installs Debian's chromium"
    router = GlimpRouter(seed=0, threshold=2.5, reasoning_budget=48, answer_budget=24, temperature=0)
    limits = ServerLimits(client_settings=(*DEFAULT_CLIENT_SETTINGS, "policy"))  # the compare panel's policy
    with running_server(router, api_key=KEY, limits=limits) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url.removesuffix("/v1") + "/")
        yield page
        browser.close()


def finished(page, count: int = 1) -> None:
    page.wait_for_function(
        f"document.querySelectorAll('.run:not([data-state=running])').length === {count}", timeout=240_000
    )


def test_a_missing_key_shows_the_servers_401_message(page):
    page.fill("#api_key", "")
    page.click("#run")
    finished(page)
    assert "Missing or wrong API key" in page.inner_text(".run .error")


def test_a_run_streams_steps_of_both_models_with_their_h_init_then_the_answer(page):
    page.fill("#api_key", KEY)
    page.click("#run")
    page.wait_for_selector(".step", timeout=120_000)  # the first step shows while the run goes on
    finished(page)
    run = page.locator(".run").first
    assert run.get_attribute("data-state") == "done"
    reasoning = run.locator(".steps .step")
    models = {reasoning.nth(i).get_attribute("data-model") for i in range(reasoning.count())}
    assert models == {"small", "large"}
    for i in range(reasoning.count()):
        step = reasoning.nth(i)
        head = step.locator(".head").inner_text()
        assert step.get_attribute("data-model").upper() in head.upper()  # labelled, not only coloured
        assert "H_init" in head and "τ 2.500" in head
        assert "tokens" in step.locator(".stats").inner_text()
    answer = run.locator(".answer .step")
    assert answer.count() == 1 and answer.get_attribute("data-model") == "large"
    assert answer.locator(".text").inner_text().strip()
    summary = run.locator(".summary").inner_text()
    assert "intervention rate" in summary and "small" in summary and "latency" in summary
    # the key lives in the page's memory only
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0 and page.evaluate("document.cookie") == ""
    if SCREENSHOT is not None:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_compare_shows_two_runs_side_by_side(page):
    page.fill("#api_key", KEY)
    page.fill("#compare_threshold", "")
    page.select_option("#compare_policy", "always_large")
    page.click("#compare")
    finished(page, 2)
    first, second = page.locator(".run[data-run=A]"), page.locator(".run[data-run=B]")
    assert first.get_attribute("data-state") == second.get_attribute("data-state") == "done"
    assert "always_large," in second.locator(".summary").inner_text()
    assert {m for m in second.locator(".step").evaluate_all("s => s.map(e => e.dataset.model)")} == {"large"}
    for run in (first, second):
        assert "latency" in run.locator(".summary").inner_text() and "tokens" in run.locator(".summary").inner_text()


def test_a_bad_setting_shows_the_servers_400_message(page):
    page.fill("#api_key", KEY)
    page.fill("#reasoning_budget", "-3")
    page.click("#run")
    finished(page)
    message = page.inner_text(".run .error")
    page.fill("#reasoning_budget", "48")
    assert "reasoning_budget" in message and "-3" in message
