"""Concurrent runs on the default transformers backend (the embedded pair, this CPU): their steps
share forward passes on the model's worker.  One run, three sections:

- throughput: the same runs with 1, 4, 8 and 16 in flight, runs per second against one at a time,
  and the peak resident memory at each level;
- langchain: LangChain `batch` over 8 prompts against `invoke` in turn (same prompts and seeds);
  (both in interleaved rounds, each ratio the median of the rounds' with its 95% interval)
- same_text: greedy runs alone and 8 together, how many give the same text and the same steps.

    python benchmarks/batch_embedded.py [--runs 16] [--levels 1,4,8,16] [--rounds 5] [--sections throughput,langchain,same_text]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine_runs import interleaved_rounds, ratio, shown
from questions import QUESTIONS

from glimp_integrations import GlimpRouter
from langchain_glimp import ChatGlimpRouter

RUN = {"reasoning_budget": 48, "answer_budget": 32}


class PeakMemory:
    """Peak resident set size (MB) of this process while the block runs, sampled every 20 ms."""

    def __enter__(self) -> PeakMemory:
        self.peak_mb = self._rss_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def at_most(level: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    slots = asyncio.Semaphore(level)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with slots:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


def throughput(router: GlimpRouter, runs: int, levels: list[int], rounds: int) -> dict[str, Any]:
    """Runs per second at each level in interleaved rounds, each level's ratio to the first (one at
    a time), and the peak resident memory at each level over the rounds."""
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(runs)]
    peaks: dict[str, float] = {}

    def at(level: int):
        def side() -> float:
            jobs = [lambda q=q, i=i: router.arun(q, seed=i, **RUN) for i, q in enumerate(questions)]
            with PeakMemory() as memory:
                started = time.perf_counter()
                asyncio.run(at_most(level, jobs))
                seconds = time.perf_counter() - started
            peaks[str(level)] = max(peaks.get(str(level), 0.0), memory.peak_mb)
            return runs / seconds

        return side

    measured = interleaved_rounds({str(level): at(level) for level in levels}, rounds)
    one = str(levels[0])
    rows = {
        level: {
            "runs_per_second": round(statistics.median(rates), 3),
            "over_one_at_a_time": ratio(rates, measured[one]),
            "peak_rss_mb": round(peaks[level]),
        }
        for level, rates in measured.items()
    }
    for level, row in rows.items():
        print(
            f"{level:>3} in flight: {shown(row['over_one_at_a_time'])} x one at a time, peak RSS {row['peak_rss_mb']} MB"
        )
    return rows


def written(message: Any) -> list[str]:
    """A chat message's reasoning and answer text (its content also holds each run's timings)."""
    return [block.get("reasoning", block.get("text")) for block in message.content_blocks]


def langchain(prompts: int, rounds: int) -> dict[str, Any]:
    """LangChain `batch` over `prompts` prompts against `invoke` on each in turn, in interleaved
    rounds: seconds of each, and how many answers the last round's two ways wrote alike."""
    llm = ChatGlimpRouter(seed=0, reasoning_budget=RUN["reasoning_budget"], max_tokens=RUN["answer_budget"])
    inputs = QUESTIONS[:prompts]
    written_by: dict[str, list[Any]] = {}

    def timed(way: str, answer_all: Callable[[], list[Any]]):
        def side() -> float:
            started = time.perf_counter()
            written_by[way] = answer_all()
            return time.perf_counter() - started

        return side

    measured = interleaved_rounds(
        {
            "in_turn": timed("in_turn", lambda: [llm.invoke(p) for p in inputs]),
            "batch": timed("batch", lambda: llm.batch(inputs)),
        },
        rounds,
    )
    return {
        "prompts": prompts,
        "in_turn_seconds": round(statistics.median(measured["in_turn"]), 2),
        "batch_seconds": round(statistics.median(measured["batch"]), 2),
        "in_turn_over_batch": ratio(measured["in_turn"], measured["batch"]),
        "same_text": sum(written(a) == written(b) for a, b in zip(written_by["in_turn"], written_by["batch"])),
    }


def same_text(router: GlimpRouter) -> dict[str, Any]:
    async def both() -> tuple[list[Any], list[Any]]:
        alone = [await router.arun(q, temperature=0, **RUN) for q in QUESTIONS]
        together = await asyncio.gather(*(router.arun(q, temperature=0, **RUN) for q in QUESTIONS))
        return alone, together

    alone, together = asyncio.run(both())

    def outcome(trace: Any) -> Any:
        return trace.reasoning, trace.answer, [(s.model, s.tokens) for s in trace.steps]

    return {
        "runs": len(QUESTIONS),
        "same_text_and_steps": sum(outcome(a) == outcome(b) for a, b in zip(alone, together)),
        "tokens": sum(t.completion_tokens for t in alone),
        "largest_batch": router.backend.models["small"].worker.largest_batch,  # type: ignore[attr-defined]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=16, help="runs at each level of the throughput section")
    parser.add_argument("--levels", default="1,4,8,16")
    parser.add_argument("--prompts", type=int, default=8, help="prompts of the LangChain batch")
    parser.add_argument("--sections", default="throughput,langchain,same_text")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each comparison")
    args = parser.parse_args()
    sections = args.sections.split(",")
    router = GlimpRouter(seed=0)
    router.run("Warm up.", max_tokens=4)
    results: dict[str, Any] = {}
    if "throughput" in sections:
        results["throughput"] = throughput(router, args.runs, [int(n) for n in args.levels.split(",")], args.rounds)
    if "langchain" in sections:
        results["langchain"] = langchain(args.prompts, args.rounds)
        print(f"LangChain batch of {args.prompts}: {shown(results['langchain']['in_turn_over_batch'])} x in turn")
    if "same_text" in sections:
        results["same_text"] = same_text(router)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
