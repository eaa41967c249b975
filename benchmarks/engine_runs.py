"""What the throughput benchmarks share: timing concurrent runs, counting the requests routed runs
make, plain vLLM generation of a given number of tokens on the engine glimp's vLLM backend
started, and a ratio's median with its bootstrap interval over interleaved rounds."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any


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


class SessionRequests:
    """Within `with`, counts (`sent`) the requests glimp's sessions send to engines of `engine`'s
    type, where they are made; plain generation's requests (sent without a session) are not counted."""

    def __init__(self, engine: Any) -> None:
        self._engine_type = type(engine)
        self._stream = self._engine_type.stream
        self.sent = 0

    def __enter__(self) -> SessionRequests:
        stream = self._stream

        def counted(engine: Any, ids: list[int], params: Any, session: Any = None) -> Any:
            self.sent += session is not None
            return stream(engine, ids, params, session)

        self._engine_type.stream = counted
        return self

    def __exit__(self, *exception: object) -> None:
        self._engine_type.stream = self._stream


def median_with_interval(ratios: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """The median of per-round ratios and its 95% bootstrap interval (percentiles of the medians of
    `resamples` resamplings of the rounds, with replacement): (median, low, high)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return statistics.median(ratios), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]
