"""LangChain `batch` on the embedded default against calling `invoke` in turn, same prompts and seeds.

The transformers backend runs concurrent runs' tokens in turn under one lock per model (torch
already spreads one token's work over the cores), so a batch should take no longer than the
same calls made one after another.  Figure: batch seconds / in-turn seconds (target <= 1.0).

    python benchmarks/batch_embedded.py [--prompts 4] [--budget 48]
"""

from __future__ import annotations

import argparse
import json
import time

from questions import QUESTIONS

from langchain_glimp import ChatGlimpRouter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--budget", type=int, default=48, help="reasoning and answer tokens per call")
    args = parser.parse_args()
    llm = ChatGlimpRouter(seed=0, reasoning_budget=args.budget, max_tokens=args.budget)
    prompts = QUESTIONS[: args.prompts]
    llm.invoke("Warm up.", max_tokens=4)
    started = time.perf_counter()
    in_turn = [llm.invoke(p) for p in prompts]
    in_turn_seconds = time.perf_counter() - started
    started = time.perf_counter()
    batched = llm.batch(prompts)
    batch_seconds = time.perf_counter() - started
    tokens = [sum(m.usage_metadata["output_token_details"]["by_model"].values()) for m in (*in_turn, *batched)]
    summary = {
        "prompts": len(prompts),
        "in_turn_seconds": in_turn_seconds,
        "batch_seconds": batch_seconds,
        "batch_over_in_turn": batch_seconds / in_turn_seconds,
        "tokens_in_turn": sum(tokens[: len(prompts)]),
        "tokens_batched": sum(tokens[len(prompts) :]),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
