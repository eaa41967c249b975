"""How long `glimp serve`'s liveness probe takes while the largest prompts are processed.

    python benchmarks/serve_probes.py [--megabytes 16,8,1] [--rounds 3]

For each prompt size, a request with one user message of that many megabytes is sent while
`/livez` is polled every 50 ms; the figure is the slowest probe of each round (Kubernetes' default
probe timeout is 1 s) and the request's own seconds.  Embedded model, transformers backend.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import time

import httpx

from glimp_integrations import GlimpRouter
from glimp_integrations.serve import running_server

SENTENCE = "The quick brown fox jumps over the lazy dog. "


def probe_while(url: str, megabytes: float) -> tuple[float, float, int]:
    """(slowest /livez in seconds, the request's seconds, its status) for one prompt."""
    question = SENTENCE * int(megabytes * 1024 * 1024 / len(SENTENCE))
    base = url.removesuffix("/v1")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        asked = pool.submit(
            httpx.post,
            url + "/chat/completions",
            json={"messages": [{"role": "user", "content": question}]},
            headers={"Content-Type": "application/json"},
            timeout=300,
        )
        slowest = 0.0
        while not asked.done():
            probe_started = time.monotonic()
            httpx.get(base + "/livez", timeout=60)
            slowest = max(slowest, time.monotonic() - probe_started)
            time.sleep(0.05)
        response = asked.result()
    return slowest, time.monotonic() - started, response.status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", default="16,8,1")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with running_server(GlimpRouter(reasoning_budget=8, answer_budget=8)) as url:
        print("| prompt MB | slowest /livez, median of rounds (min-max) | request seconds | status |")
        print("| --- | --- | --- | --- |")
        for megabytes in (float(m) for m in args.megabytes.split(",")):
            rounds = [probe_while(url, megabytes) for _ in range(args.rounds)]
            slowest = [r[0] * 1000 for r in rounds]
            print(
                f"| {megabytes:g} | {statistics.median(slowest):.0f} ms ({min(slowest):.0f}-{max(slowest):.0f}) "
                f"| {statistics.median(r[1] for r in rounds):.1f} | {rounds[0][2]} |"
            )


if __name__ == "__main__":
    main()
