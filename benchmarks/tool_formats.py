"""Tool calls in each family's format: decoding speed with the family's grammar against without.

For each backend and family: N order requests (`constrained_output.questions`), each answered
twice by the large model in `plain` mode: constrained (the order tool in the chat template,
`tool_choice` naming it, one call, in the family's grammar) and unconstrained (the tool and the
family's call format described in a system message, no grammar).  The model is the embedded SmolLM2 with the families' tokens added and the
family's chat template (`glimp_integrations.bench.tool_families`); `hermes` is the default format
and `deepseek_v3` DeepSeek-R1's.  Figure: answer tokens per second constrained over
unconstrained (target 0.95 or more), the share of constrained answers vLLM's parser reads back
as one valid call, and the share the token budget cut (vLLM cannot steer an answer to close).

    python benchmarks/tool_formats.py [--runs 20] [--backends transformers,vllm] [--families hermes,deepseek_v3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jsonschema
from constrained_output import ORDER_SCHEMA, TOOL, questions

from glimp_integrations import GlimpRouter
from glimp_integrations.bench.tool_families import write_family_models
from glimp_integrations.tools import tool_instructions


def answer_speed(trace) -> tuple[int, float]:
    steps = [s for s in trace.steps if s.phase == "answer"]
    return sum(s.tokens for s in steps), sum(s.seconds for s in steps)


def valid_call(router: GlimpRouter, answer: str) -> bool:
    _, calls = router.tool_call_reader([TOOL]).read(answer)
    try:
        return len(calls) == 1 and jsonschema.validate(calls[0].arguments, ORDER_SCHEMA) is None
    except jsonschema.ValidationError:
        return False


def measure(router: GlimpRouter, runs: int, max_tokens: int) -> dict:
    tokens = {"constrained": 0, "unconstrained": 0}
    seconds = {"constrained": 0.0, "unconstrained": 0.0}
    valid = cut_by_budget = 0
    for index, question in enumerate(questions(runs)):
        messages = [{"role": "user", "content": question}]
        common = {"max_tokens": max_tokens, "seed": index}
        constrained = router.run(messages, tools=[TOOL], tool_choice="place_order", parallel_tool_calls=False, **common)
        # a run with tools is always constrained: the unconstrained side is told of the tool in a
        # system message, in the family's format, as templates without tools are
        instructions = tool_instructions([TOOL], "place_order", router.tool_call_reader([TOOL]).tool_call_parser)
        unconstrained = router.run([{"role": "system", "content": instructions}, *messages], **common)
        valid += valid_call(router, constrained.answer)
        cut_by_budget += constrained.steps[-1].finish_reason == "budget"
        for side, trace in (("constrained", constrained), ("unconstrained", unconstrained)):
            written, spent = answer_speed(trace)
            tokens[side] += written
            seconds[side] += spent
    speed = {side: tokens[side] / seconds[side] for side in tokens}
    return {
        "answer_tokens": tokens,
        "answer_tokens_per_second": speed,
        "constrained_speed_ratio": speed["constrained"] / speed["unconstrained"],
        "valid_calls": valid / runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backends", default="transformers,vllm")
    parser.add_argument("--families", default="hermes,deepseek_v3")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tool_formats.json")
    args = parser.parse_args()

    folders = write_family_models(Path(tempfile.mkdtemp(prefix="glimp-families-")))
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for backend in args.backends.split(","):
        for family in args.families.split(","):
            options = {"backend_options": {"max_model_len": 4096}} if backend == "vllm" else {}
            with GlimpRouter(
                folders[family],
                folders[family],
                backend=backend,
                policy="always_large",
                reasoning_mode="plain",
                tool_call_parser=family,
                **options,
            ) as router:
                results[f"{backend}/{family}"] = result = measure(router, args.runs, args.max_tokens)
            print(
                f"{backend}/{family}: constrained/unconstrained tokens per second "
                f"{result['constrained_speed_ratio']:.3f}, valid calls {result['valid_calls']:.0%} "
                f"(cut by the token budget: {result['constrained_cut_by_budget']:.0%})",
                flush=True,
            )
    summary = {
        "runs": args.runs,
        "max_tokens": args.max_tokens,
        "results": results,
        "wall_seconds": time.perf_counter() - started,
    }
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
