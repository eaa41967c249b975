"""Routing overhead: a routed run with every step delegated, against one plain generation.

Both sides run on the same backend and model (the embedded SmolLM2 on the transformers CPU
backend by default).  For each question, the routed run uses threshold = infinity (every step
probed, then delegated to the small model, which keeps the probe token); the plain side is one
`model.generate` call with the same sampling that writes exactly as many tokens.  The ratio
routed / plain is the cost of probing, step segmentation and event streaming.  Target: <= 1.15.

    python benchmarks/routing_overhead.py [--small PATH] [--tokens 160] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from questions import QUESTIONS

from glimp_integrations import GlimpRouter
from glimp_integrations.backends.transformers import TransformersBackend


def plain_generation_seconds(backend: TransformersBackend, question: str, tokens: int, seed: int) -> float:
    loaded = backend.models["small"]
    prompt = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    input_ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    torch.manual_seed(seed)
    started = time.perf_counter()
    with torch.inference_mode():
        output = loaded.model.generate(
            input_ids,
            do_sample=True,
            temperature=0.6,
            top_p=0.95,
            min_new_tokens=tokens,
            max_new_tokens=tokens,
            pad_token_id=loaded.tokenizer.eos_token_id,
        )
    seconds = time.perf_counter() - started
    assert output.shape[1] - input_ids.shape[1] == tokens
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", default=None, help="model folder (default: the embedded model)")
    parser.add_argument("--tokens", type=int, default=160, help="routed budget per question")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per question")
    parser.add_argument("--out", default="benchmarks/results/routing_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    router = GlimpRouter(args.small, args.small, threshold=math.inf, reasoning_budget=args.tokens)
    backend = router.backend
    router.run("Warm up.", reasoning_budget=8)
    plain_generation_seconds(backend, "Warm up.", 8, 0)
    rows = []
    for question in QUESTIONS[:5]:
        routed, plain = [], []
        for repeat in range(args.repeats):
            trace = router.run(question, seed=repeat, reasoning_budget=args.tokens)
            routed.append(trace.wall_seconds)
            plain.append(plain_generation_seconds(backend, question, trace.completion_tokens, repeat))
            tokens, steps = trace.completion_tokens, len(trace.steps)
        ratio = statistics.median(routed) / statistics.median(plain)
        rows.append(
            {
                "question": question,
                "tokens": tokens,
                "steps": steps,
                "routed_s": statistics.median(routed),
                "plain_s": statistics.median(plain),
                "ratio": ratio,
            }
        )
        print(
            f"{ratio:5.3f}  routed {statistics.median(routed):6.2f} s  plain {statistics.median(plain):6.2f} s  "
            f"{tokens} tokens, {steps} steps  | {question[:50]}"
        )
    total_ratio = sum(r["routed_s"] for r in rows) / sum(r["plain_s"] for r in rows)
    median_ratio = statistics.median(r["ratio"] for r in rows)
    print(
        f"routing overhead (routed / plain, same tokens): median {median_ratio:.3f}, "
        f"total {total_ratio:.3f}  (target <= 1.15)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"median_ratio": median_ratio, "total_ratio": total_ratio, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
