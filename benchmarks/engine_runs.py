"""What the throughput benchmarks share: timing concurrent runs, counting the requests routed runs
make and their prefix-cache hits, plain vLLM generation of a given number of tokens on the engine
glimp's vLLM backend started, and the comparison design every ratio the benchmarks report uses:
its sides measured in interleaved rounds (a fresh random order each round), the ratio as the
median of the rounds' ratios with a 95% bootstrap interval."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def runs_at(level: int) -> int:
    """How many runs a measurement at `level` concurrent runs makes: every slot at least twice, at least 8."""
    return max(8, 2 * level)


async def runs_per_second(concurrency: int, jobs: int, run_one: Callable[[int], Awaitable[Any]]) -> float:
    """`jobs` runs (`run_one(i)`), `concurrency` at a time: completed runs per second."""
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with slots:
            await run_one(index)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    return jobs / (time.perf_counter() - started)


def chat_prompt_ids(engine: Any, messages: list[dict[str, str]]) -> list[int]:
    """The chat prompt of `messages` as token ids, as plain generation starts from it."""
    return engine.encode(engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


async def generate_plain(engine: Any, ids: list[int], count: int) -> list[int]:
    """Exactly `count` tokens after `ids`, greedy, in one request on `engine` (a vLLM backend's
    `_Engine`); `ids` followed by them."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(
        temperature=0, max_tokens=count, min_tokens=count, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY
    )
    request = engine.stream(ids, params)
    while (output := await request.next()) is not None:
        ids = ids + list(output.outputs[0].token_ids)
    return ids


class EngineRequests:
    """Within `with`, what engines of `engine`'s type are asked, where the requests are made: how
    many glimp's sessions send (`sent`; plain generation's, sent without a session, are not
    counted), and over every request the share of prompt tokens found in the prefix cache."""

    def __init__(self, engine: Any) -> None:
        self._engine_type = type(engine)
        self._stream = self._engine_type.stream
        self.sent = 0
        self._requests: list[Any] = []

    def __enter__(self) -> EngineRequests:
        stream = self._stream

        def counted(engine: Any, ids: list[int], params: Any, session: Any = None) -> Any:
            self.sent += session is not None
            request = stream(engine, ids, params, session)
            self._requests.append(request)
            return request

        self._engine_type.stream = counted
        return self

    def __exit__(self, *exception: object) -> None:
        self._engine_type.stream = self._stream

    def cache_hit_rate(self) -> float:
        """Prompt tokens served from the prefix cache over prompt tokens, of the requests so far."""
        answered = [request for request in self._requests if request.prefill_tokens is not None]
        prompt = sum(request.prompt_len for request in answered)
        return 1 - sum(request.prefill_tokens for request in answered) / prompt if prompt else 0.0


def interleaved_rounds(
    sides: dict[str, Callable[[], float]],
    rounds: int,
    seed: int = 0,
    report: Callable[[str], None] = print,
    shuffle: bool = True,
) -> dict[str, list[float]]:
    """Measure every side once per round, in a fresh random order each round (in the order given,
    A B A B ..., without `shuffle`: where a side needs what the one before it measured), so that
    whatever else the machine does lands on every side alike; each side's measurements, in round
    order."""
    rng = random.Random(seed)
    measured: dict[str, list[float]] = {name: [] for name in sides}
    for round_number in range(1, rounds + 1):
        order = list(sides)
        if shuffle:
            rng.shuffle(order)
        for name in order:
            measured[name].append(sides[name]())
            report(f"   round {round_number}/{rounds}, {name}: {measured[name][-1]:.3f}")
    return measured


def ratio(numerators: list[float], denominators: list[float]) -> dict[str, Any]:
    """Round-by-round ratios of two sides measured in the same rounds: their median, its 95%
    bootstrap interval, and the rounds."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    median, low, high = median_with_interval(ratios)
    return {"median": round(median, 3), "low": round(low, 3), "high": round(high, 3), "rounds": len(ratios)}


def shown(summary: dict[str, Any]) -> str:
    """A ratio as the docs quote it: median [low, high]."""
    return f"{summary['median']:.2f} [{summary['low']:.2f}, {summary['high']:.2f}]"


def median_with_interval(ratios: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """The median of per-round ratios and its 95% bootstrap interval (percentiles of the medians of
    `resamples` resamplings of the rounds, with replacement): (median, low, high)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return statistics.median(ratios), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def write_results(name: str, results: dict[str, Any]) -> None:
    """Print `results` and keep them as `benchmarks/results/NAME.json`."""
    print(json.dumps(results, indent=2))
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
