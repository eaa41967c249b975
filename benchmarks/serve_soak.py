"""A soak of `glimp serve`: many runs with misbehaving clients mixed in, watching for leaks.

    python benchmarks/serve_soak.py [--runs 500] [--clients 8]

Starts `glimp serve` (the embedded pair, short budgets) as a process of its own, then sends
`--runs` requests from `--clients` threads, each request one of: a whole answer, a streamed one,
a stream the client drops after its first event, a client that times out (50 ms), a bad request
(400).  Reports the server's resident memory before the first request, after warm-up (the first
20 runs), at 100 and at the end, its open file descriptors before and after, and that no run is left running (`/metrics`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import subprocess
import sys
import time
from collections import Counter

import httpx
import psutil

QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]
KINDS = ("whole", "stream", "dropped", "timeout", "bad")


def one(url: str, kind: str) -> str:
    body = {"messages": QUESTION, "stream": kind in ("stream", "dropped")}
    try:
        if kind == "bad":
            return str(
                httpx.post(url + "/chat/completions", json={**body, "temperature": "hot"}, timeout=60).status_code
            )
        if kind == "timeout":
            httpx.post(url + "/chat/completions", json=body, timeout=0.05)
            return "200"
        with httpx.stream("POST", url + "/chat/completions", json=body, timeout=120) as response:
            for _ in response.iter_lines():
                if kind == "dropped":
                    return "dropped"
            return str(response.status_code)
    except httpx.TimeoutException:
        return "timed out"


def scrape(url: str, name: str) -> float:
    for line in httpx.get(url.removesuffix("/v1") + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    glimp = os.path.join(os.path.dirname(sys.executable), "glimp")
    server = subprocess.Popen(
        [glimp, "serve", "--port", str(args.port), "--reasoning-budget", "24", "--answer-budget", "8", "--seed", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{args.port}/v1"
    try:
        while True:
            try:
                if httpx.get(url.removesuffix("/v1") + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        process = psutil.Process(server.pid)
        fds_before = process.num_fds()
        memory: dict[int, float] = {0: process.memory_info().rss / 2**20}
        outcomes: Counter = Counter()
        kinds = itertools.cycle(KINDS)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            done = 0
            for outcome in pool.map(lambda kind: one(url, kind), (next(kinds) for _ in range(args.runs))):
                outcomes[outcome] += 1
                done += 1
                if done in (20, 100, args.runs):
                    memory[done] = process.memory_info().rss / 2**20
        time.sleep(2)  # the dropped and timed-out runs finish being cancelled
        print(f"{args.runs} requests in {time.monotonic() - started:.0f} s, {args.clients} clients: {dict(outcomes)}")
        print("| after requests | server RSS (MiB) |\n| --- | --- |")
        for count, mib in memory.items():
            print(f"| {count} | {mib:.0f} |")
        print(f"open file descriptors: {fds_before} before, {process.num_fds()} after")
        print(
            f"runs left running: {scrape(url, 'glimp_runs_running'):.0f}; queued: {scrape(url, 'glimp_runs_queued'):.0f}"
        )
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
