"""vLLM backend figures, in one run on one engine (the embedded SmolLM2 in both roles by default).

1. concurrency: questions answered per second with 8 chains in flight / with 1, 32 questions
   at the default threshold (target >= 3);
2. routing overhead: a routed run with every step delegated (threshold = inf) / one plain
   generation of the same number of tokens on the same engine (target <= 1.15);
3. probe cost: mean probe time (certified top-k, escalations included) / mean time of a
   one-token top-20 request on the same contexts; and the share of probes that escalated;
4. prefix reuse: context tokens computed per step (vLLM's prefix-cache hits subtracted),
   against the step's own length and its whole context, on a long prompt (vLLM caches whole
   blocks only: 16 tokens on a GPU, 32 on the CPU backend as Glimp starts it).

    python benchmarks/vllm_backend.py [--small PATH --large PATH] [--budget 120]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import statistics
import time
from pathlib import Path

from questions import QUESTIONS

from glimp_integrations import GlimpRouter, _sync
from glimp_integrations.backends.vllm import VLLMBackend


async def timed_generate(
    backend: VLLMBackend, ids: list[int], max_tokens: int, logprobs: int | None, exact: bool, seed: int
) -> float:
    """Seconds for one request on the large engine (the engines are driven on Glimp's loop)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = backend.models["large"]
    params = SamplingParams(
        temperature=0.6,
        top_p=0.95,
        max_tokens=max_tokens,
        min_tokens=max_tokens if exact else 0,
        ignore_eos=exact,
        logprobs=logprobs,
        seed=seed,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )
    started = time.perf_counter()
    request = engine.stream(ids, params)
    while await request.next() is not None:
        pass
    return time.perf_counter() - started


async def questions_per_second(router: GlimpRouter, concurrency: int, budget: int, rounds: int = 4) -> float:
    """Answer every question `rounds` times, keeping `concurrency` chains in flight."""
    slots = asyncio.Semaphore(concurrency)

    async def answer(seed: int, question: str) -> None:
        async with slots:
            await router.arun(question, reasoning_budget=budget, seed=seed)

    jobs = [(seed, q) for seed in range(rounds) for q in QUESTIONS]
    started = time.perf_counter()
    await asyncio.gather(*(answer(seed, q) for seed, q in jobs))
    return len(jobs) / (time.perf_counter() - started)


def prompt_ids(backend: VLLMBackend, question: str) -> list[int]:
    engine = backend.models["small"]
    text = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return engine.encode(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small")
    parser.add_argument("--large")
    parser.add_argument("--budget", type=int, default=120)
    parser.add_argument("--out", default="benchmarks/results/vllm_backend.json")
    args = parser.parse_args()
    router = GlimpRouter(args.small, args.large, backend="vllm", seed=0)
    backend = router.backend
    results: dict = {}
    run = _sync.run_sync  # the engines live on Glimp's background loop: drive everything from it

    router.run("Warm up.", reasoning_budget=16)
    one, eight = run(questions_per_second(router, 1, args.budget)), run(questions_per_second(router, 8, args.budget))
    results["concurrency"] = {"qps_1": one, "qps_8": eight, "ratio": eight / one}
    print(
        f"1. concurrency: {one:.3f} q/s alone, {eight:.3f} q/s with 8 at once -> ratio {eight / one:.2f} (target >= 3)"
    )

    ratios, probe_times, escalated, probes, rows = [], [], 0, 0, []
    for seed, question in enumerate(QUESTIONS):
        trace = router.run(question, threshold=math.inf, reasoning_budget=args.budget, seed=seed)
        plain = run(timed_generate(backend, prompt_ids(backend, question), trace.completion_tokens, None, True, seed))
        ratios.append(trace.wall_seconds / plain)
        for step in trace.steps:
            probes += 1
            escalated += step.probe.escalations > 0
            probe_times.append(step.probe.seconds)
            rows.append({"tokens": step.tokens, "prefill": step.prefill_tokens, "model": step.model})
    results["overhead"] = {"median": statistics.median(ratios), "per_question": ratios}
    print(
        f"2. routing overhead (threshold=inf / plain generate, same tokens): median {statistics.median(ratios):.3f} "
        f"(range {min(ratios):.3f}-{max(ratios):.3f}; target <= 1.15)"
    )

    one_token = [run(timed_generate(backend, prompt_ids(backend, q), 1, 20, False, i)) for i, q in enumerate(QUESTIONS)]
    routed = router.run(QUESTIONS[0], reasoning_budget=args.budget, seed=1)  # glimpse at tau=0.9: some switches
    for step in routed.steps:
        if step.probe:
            probes += 1
            escalated += step.probe.escalations > 0
            probe_times.append(step.probe.seconds)
    probe_ratio = statistics.mean(probe_times) / statistics.mean(one_token)
    results["probe"] = {
        "mean_probe_s": statistics.mean(probe_times),
        "mean_top20_request_s": statistics.mean(one_token),
        "ratio": probe_ratio,
        "escalated_share": escalated / probes,
        "probes": probes,
    }
    print(
        f"3. probe cost: mean probe {statistics.mean(probe_times) * 1000:.1f} ms / one-token top-20 request "
        f"{statistics.mean(one_token) * 1000:.1f} ms = {probe_ratio:.2f}; {escalated}/{probes} probes escalated"
    )

    document = " ".join(f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(80))
    routed = router.run(
        f"{document}\n\nWhich of the facts above mention the number 12? Explain step by step.",
        reasoning_budget=2 * args.budget,
        seed=3,
    )
    context, reuse = routed.prompt_tokens, []
    for step in routed.steps:
        reuse.append(
            {
                "model": step.model,
                "decision": step.decision,
                "computed": step.prefill_tokens,
                "step_tokens": step.tokens,
                "context_tokens": context,
            }
        )
        context += step.tokens
    switches = [r for prev, r in itertools.pairwise(reuse) if r["model"] != prev["model"]]
    results["prefix_reuse"] = {"steps": reuse}
    print("4. prefix reuse (tau=0.9, long prompt): context tokens computed per step / whole context:")
    for r in reuse:
        print(
            f"   {r['model']:5} {r['decision']:9} computed {r['computed']:4d} of {r['context_tokens']:4d} "
            f"context tokens (step writes {r['step_tokens']})"
        )
    if switches:
        share = statistics.mean(r["computed"] / r["context_tokens"] for r in switches)
        print(f"   after a switch: {share:.0%} of the context recomputed on average ({len(switches)} switches)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    router.close()


if __name__ == "__main__":
    main()
