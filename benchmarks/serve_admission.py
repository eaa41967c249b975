"""`glimp serve` past its capacity: how many requests get a 429, how fast, and what the admitted
ones pay for the crowd.

    python benchmarks/serve_admission.py [--running 4] [--queued 4] [--rounds 5]

The embedded pair behind `glimp serve` with `--max-concurrent-runs RUNNING --max-queued-runs
QUEUED`.  Two sides, in alternating rounds (A B A B ...): *at capacity* sends RUNNING + QUEUED
requests at once, *4x* sends four times as many.  Reported per side: the 429s, the slowest 429
(they must come at once), and the admitted requests' median latency; then the ratio of admitted
latency 4x / at capacity per round, its median and 95% bootstrap interval over the rounds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import time

import httpx
from engine_runs import median_with_interval

from glimp_integrations import GlimpRouter
from glimp_integrations.serve import running_server
from glimp_integrations.serve.limits import ServerLimits

QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]


def burst(url: str, count: int) -> list[tuple[int, float]]:
    """(status, seconds) of `count` requests sent at once."""

    def ask(_: int) -> tuple[int, float]:
        started = time.monotonic()
        response = httpx.post(url + "/chat/completions", json={"messages": QUESTION}, timeout=600)
        return response.status_code, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(ask, range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--running", type=int, default=4)
    parser.add_argument("--queued", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    capacity = args.running + args.queued
    limits = ServerLimits(max_concurrent_runs=args.running, max_queued_runs=args.queued)
    router = GlimpRouter(seed=0, reasoning_budget=24, answer_budget=8)
    sides = {"at capacity": capacity, "4x": 4 * capacity}
    results: dict[str, list[list[tuple[int, float]]]] = {side: [] for side in sides}
    with running_server(router, limits=limits) as url:
        burst(url, args.running)  # warm-up
        for _ in range(args.rounds):
            for side, count in sides.items():
                results[side].append(burst(url, count))
    print(f"running {args.running}, queued {args.queued}, {args.rounds} rounds (alternating)")
    print("| side | requests | 429s per round | slowest 429 (s) | admitted median latency (s) |")
    print("| --- | --- | --- | --- | --- |")
    medians: dict[str, list[float]] = {}
    for side, rounds in results.items():
        refused = [sum(status == 429 for status, _ in r) for r in rounds]
        slowest = max((seconds for r in rounds for status, seconds in r if status == 429), default=0.0)
        medians[side] = [statistics.median(s for status, s in r if status == 200) for r in rounds]
        print(
            f"| {side} | {sides[side]} | {statistics.median(refused):.0f} ({min(refused)}-{max(refused)}) "
            f"| {slowest:.3f} | {statistics.median(medians[side]):.2f} |"
        )
    ratios = [crowded / calm for crowded, calm in zip(medians["4x"], medians["at capacity"])]
    median, low, high = median_with_interval(ratios)
    print(
        f"admitted latency 4x / at capacity: median {median:.2f} (95% interval {low:.2f}-{high:.2f}, {len(ratios)} rounds)"
    )


if __name__ == "__main__":
    main()
