"""Speculative decoding on the vLLM backend: the large model's tokens per second with and without
drafting, and the share of drafts accepted, in one run on one machine.

Every step goes to the large model (threshold 0), so each run times only large-model writing.
For each drafting option the same questions run with the same seeds on a router built with that
option and on one built without it; the figure is large-step tokens / large-step seconds, with
drafting over without.  What governs it: a verification pass over k drafted tokens costs about
one decoding step of the large model when the hardware has spare parallel compute (a GPU), so
accepted drafts are nearly free tokens there; on a CPU the pass costs roughly k+1 decoding steps,
and the draft model's own k steps come on top, so drafting is slower even when every draft is
accepted.  With the embedded SmolLM2 drafting for itself, acceptance is close to 100%: this
measures the mechanism's cost, not a real pair's gain.

    python benchmarks/speculative_decoding.py [--small PATH --large PATH] [--questions 8] [--budget 120]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from questions import QUESTIONS

from glimp_integrations import GlimpRouter

OPTIONS = {
    "draft_model_k3": True,  # the paper's setting: the small model drafts 3 tokens per verification
    "ngram_k3": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 2},
}


def large_speed(router: GlimpRouter, questions: list[str], budget: int, temperature: float) -> dict:
    """Large-model tokens per second over the runs, and the drafting counts."""
    tokens, seconds, drafted, accepted = 0, 0.0, 0, 0
    for seed, question in enumerate(questions):
        trace = router.run(
            question, threshold=0.0, reasoning_budget=budget, answer_budget=budget, seed=seed, temperature=temperature
        )
        for step in trace.steps:
            tokens += step.tokens
            seconds += step.seconds
            drafted += step.drafted_tokens or 0
            accepted += step.accepted_tokens or 0
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance_rate": accepted / drafted if drafted else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small")
    parser.add_argument("--large")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--budget", type=int, default=120, help="most tokens per run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speculative_decoding.json"))
    args = parser.parse_args()
    questions = (QUESTIONS * 4)[: args.questions]
    options = {"max_model_len": 4096}
    results: dict[str, dict] = {}
    started = time.perf_counter()
    with GlimpRouter(args.small, args.large, backend="vllm", backend_options=options) as plain:
        plain.run("Warm up.", reasoning_budget=8)
        for temperature in (0.0, 0.6):
            results[f"none_t{temperature}"] = large_speed(plain, questions, args.budget, temperature)
    for name, option in OPTIONS.items():
        with GlimpRouter(args.small, args.large, backend="vllm", speculative=option, backend_options=options) as router:
            router.run("Warm up.", reasoning_budget=8)
            for temperature in (0.0, 0.6):
                measured = large_speed(router, questions, args.budget, temperature)
                measured["speed_ratio"] = (
                    measured["tokens_per_second"] / results[f"none_t{temperature}"]["tokens_per_second"]
                )
                results[f"{name}_t{temperature}"] = measured
                print(
                    f"{name} at temperature {temperature}: {measured['speed_ratio']:.2f}x the tokens/s without "
                    f"drafting, acceptance {measured['acceptance_rate']:.1%}",
                    flush=True,
                )
    import vllm

    summary = {
        "vllm": vllm.__version__,
        "questions": len(questions),
        "budget": args.budget,
        "results": results,
        "wall_seconds": time.perf_counter() - started,
    }
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
