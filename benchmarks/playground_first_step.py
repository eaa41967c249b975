"""Time to the first step on the playground page against time to the first `step_started` event
from the API, on the same run (same question, settings and seed; greedy), alternating, one run.

    python benchmarks/playground_first_step.py [--rounds 3]

Needs Debian's chromium (scripts/setup.sh installs it) and Playwright.  The browser runs on the
server's machine here: on 2 cores torch keeps to one thread (`--torch-threads`), else the browser's
work stalls torch's second thread and the first step takes 0.3 to 6 s, page and API alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from glimp_integrations import GlimpRouter  # noqa: E402
from glimp_integrations.serve import running_server  # noqa: E402
from tests.test_playground import CHROMIUM, FLAGS  # noqa: E402

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have? Think step by step."
SETTINGS = {"threshold": 2.5, "reasoning_budget": 48, "answer_budget": 24, "seed": 0, "temperature": 0}


def api_first_step(url: str) -> float:
    """Seconds from sending the request to the first `step_started` event of its stream."""
    body = {"model": "glimp", "stream": True, "messages": [{"role": "user", "content": QUESTION}], **SETTINGS}
    started, first = time.perf_counter(), None
    with httpx.stream("POST", url + "/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if first is None and line.startswith("data: {") and "step_started" in json.loads(line[6:]).get("glimp", {}):
                first = time.perf_counter() - started
    assert first is not None
    return first


def page_first_step(page) -> float:
    """Seconds from the click to the first step on the page (the page's own clock, `data-first-step-ms`)."""
    page.click("#run")
    page.wait_for_function("document.querySelector('.run[data-state=done]')", timeout=300_000)
    return float(page.get_attribute(".run", "data-first-step-ms")) / 1000


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1, help="the browser needs a core of its own on 2 cores")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)
    router = GlimpRouter(**SETTINGS)
    api, browser_times = [], []
    with running_server(router) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(url.removesuffix("/v1") + "/")
        api_first_step(url)  # warm up
        for _ in range(args.rounds):
            api.append(api_first_step(url))
            browser_times.append(page_first_step(page))
        browser.close()
    result = {
        "api_first_step_s": api,
        "page_first_step_s": browser_times,
        "median_api_s": statistics.median(api),
        "median_page_s": statistics.median(browser_times),
        "page_over_api": statistics.median(browser_times) / statistics.median(api),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
