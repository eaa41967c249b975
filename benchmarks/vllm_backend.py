"""vLLM backend figures, in one run on one engine (the embedded SmolLM2 in both roles by default).

1. concurrency: questions answered per second with 8 chains in flight / with 1, 32 questions
   at the default threshold, in interleaved rounds (target >= 3);
2. routing overhead: a routed run with every step delegated (threshold = inf) / one plain
   generation of the same number of tokens on the same engine, one round per question
   (target <= 1.15);
(each ratio the median of its rounds' with a 95% bootstrap interval)
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

from engine_runs import interleaved_rounds, ratio, shown
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
            await router.arun(question, reasoning_budget=budget, answer_budget=budget, seed=seed)

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
    parser.add_argument("--budget", type=int, default=120, help="reasoning and answer budgets of each run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the concurrency comparison")
    parser.add_argument("--out", default="benchmarks/results/vllm_backend.json")
    args = parser.parse_args()
    router = GlimpRouter(args.small, args.large, backend="vllm", seed=0)
    backend = router.backend
    results: dict = {}
    run = _sync.run_sync  # the engines live on Glimp's background loop: drive everything from it

    router.run("Warm up.", reasoning_budget=16)
    qps = interleaved_rounds(
        {
            str(chains): lambda chains=chains: run(questions_per_second(router, chains, args.budget))
            for chains in (1, 8)
        },
        args.rounds,
    )
    results["concurrency"] = {
        "qps_1": statistics.median(qps["1"]),
        "qps_8": statistics.median(qps["8"]),
        "ratio": ratio(qps["8"], qps["1"]),
    }
    print(
        f"1. concurrency: 8 chains / 1 chain, questions per second: {shown(results['concurrency']['ratio'])} (target >= 3)"
    )

    traces = {}
    left = {"routed": iter(enumerate(QUESTIONS)), "plain": iter(enumerate(QUESTIONS))}

    def routed() -> float:
        seed, question = next(left["routed"])
        traces[seed] = router.run(
            question, threshold=math.inf, reasoning_budget=args.budget, answer_budget=args.budget, seed=seed
        )
        return traces[seed].wall_seconds

    def plain() -> float:  # as many tokens as the round's routed run wrote
        seed, question = next(left["plain"])
        return run(
            timed_generate(backend, prompt_ids(backend, question), traces[seed].completion_tokens, None, True, seed)
        )

    # one round per question, the routed run first: plain generation writes as many tokens as it did
    seconds = interleaved_rounds(
        {"routed": routed, "plain": plain}, len(QUESTIONS), shuffle=False, report=lambda _: None
    )
    results["overhead"] = ratio(seconds["routed"], seconds["plain"])
    print(
        f"2. routing overhead (threshold=inf / plain generate, same tokens): {shown(results['overhead'])} (target <= 1.15)"
    )

    one_token = [run(timed_generate(backend, prompt_ids(backend, q), 1, 20, False, i)) for i, q in enumerate(QUESTIONS)]
    at_default = router.run(QUESTIONS[0], reasoning_budget=args.budget, seed=1)  # glimpse at tau=0.9: some switches
    # (the entropy gate measures H_init in the step's own request: those steps have no probe)
    probes = [step.probe for trace in [*traces.values(), at_default] for step in trace.steps if step.probe]
    if probes:
        probe_seconds = statistics.mean(probe.seconds for probe in probes)
        escalated = sum(probe.escalations > 0 for probe in probes)
        probe_ratio = probe_seconds / statistics.mean(one_token)
        results["probe"] = {
            "mean_probe_s": probe_seconds,
            "mean_top20_request_s": statistics.mean(one_token),
            "ratio": probe_ratio,
            "escalated_share": escalated / len(probes),
            "probes": len(probes),
        }
        print(
            f"3. probe cost: mean probe {probe_seconds * 1000:.1f} ms / one-token top-20 request "
            f"{statistics.mean(one_token) * 1000:.1f} ms = {probe_ratio:.2f}; {escalated}/{len(probes)} probes escalated"
        )
    else:
        print("3. probe cost: no probes (the entropy gate measured H_init in each step's own request)")

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
