"""Constrained answers: validity and cost, constrained against unconstrained, on one model and run.

Validity: N structured answers under a nested JSON schema (objects, a list of objects, an enum,
integers with a minimum) and N forced tool calls (its arguments the same schema), on the embedded
SmolLM2 by default; `--tasks call_or_structured` adds an agent's turn (the tool and the schema as
response format under `tool_choice="auto"`: a valid call or a valid order counts).  The
unconstrained side sees the same prompt (the schema or the tool instructions in its system
message) and is parsed the same way; a result counts as valid when it parses and validates
against the schema (`jsonschema`).  Target: 100% constrained.  Answers that end on the token budget are counted apart: on backends that
cannot steer an answer to close (vLLM, servers), a list the model keeps extending is truncated there.

Cost: answer tokens per second with the grammar against without, over the same questions (the
large model writes both, `policy=always_large`), one round per question with the two sides in a
fresh random order: the median of the rounds' ratios with its 95% interval.  Target: constrained
>= 0.9 of unconstrained.

    python benchmarks/constrained_output.py [--runs 50] [--backend transformers] [--max-tokens 200] [--tasks ...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import jsonschema
from engine_runs import interleaved_rounds, ratio, shown

from glimp_integrations import GlimpRouter
from glimp_integrations.constraints import AnswerConstraint
from glimp_integrations.tool_formats import parse_tool_calls
from glimp_integrations.tools import tool_instructions

ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "customer": {"type": "string"},
        "priority": {"enum": ["low", "normal", "urgent"]},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "product": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                    "unit_price": {"type": "number", "minimum": 0},
                },
                "required": ["product", "quantity", "unit_price"],
            },
        },
    },
    "required": ["customer", "priority", "items"],
}
"""Unbounded lists and strings on purpose: a grammar keeps every token valid but cannot make a model
stop, and a 135M model keeps adding list items; the transformers backend steers a constrained answer
to close as its budget runs out (`CLOSING_RESERVE`), which this measures too."""
TOOL = {
    "type": "function",
    "function": {"name": "place_order", "description": "Place a customer's order.", "parameters": ORDER_SCHEMA},
}
NAMES = ["Alice", "Bob", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jun"]
PRODUCTS = ["apples", "pears", "notebooks", "pens", "cables", "lamps", "chairs", "mugs"]


def questions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"{rng.choice(NAMES)} urgently needs {rng.randint(1, 9)} {rng.choice(PRODUCTS)} at "
        f"{rng.randint(1, 40)}.{rng.randint(0, 99):02d} each and {rng.randint(1, 9)} {rng.choice(PRODUCTS)}. "
        "Write the order."
        for _ in range(count)
    ]


def valid_structured(answer: str) -> bool:
    try:
        jsonschema.validate(json.loads(answer), ORDER_SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def valid_call(answer: str) -> bool:
    _, calls = parse_tool_calls(answer, ["place_order"])
    try:
        return len(calls) == 1 and jsonschema.validate(calls[0].arguments, ORDER_SCHEMA) is None
    except jsonschema.ValidationError:
        return False


def valid_call_or_structured(answer: str) -> bool:
    """Tools with a response format (an agent's turn): one valid call, or a valid order."""
    return valid_call(answer) or valid_structured(answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="questions per task")
    parser.add_argument("--backend", default="transformers")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--tasks", default="structured,forced_tool_call", help="comma-separated, from the default")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "constrained_output.json")
    args = parser.parse_args()

    router = GlimpRouter(backend=args.backend, policy="always_large", seed=0)
    order_format = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER_SCHEMA}}
    structured_prompt = AnswerConstraint.json_schema(ORDER_SCHEMA).instructions()
    tool_prompt = tool_instructions([TOOL], "place_order")
    agent_prompt = (
        AnswerConstraint.for_tools(
            [TOOL], answer_format=AnswerConstraint.from_response_format(order_format)
        ).instructions()
        + "\n\n"
        + tool_instructions([TOOL], "auto")
    )
    tasks = {
        "structured": (valid_structured, {"response_format": order_format}, structured_prompt),
        "forced_tool_call": (
            valid_call,
            {"tools": [TOOL], "tool_choice": "place_order", "parallel_tool_calls": False},
            tool_prompt,
        ),
        # not in the default run: what create_agent sends for a structured final answer
        "call_or_structured": (
            valid_call_or_structured,
            {"tools": [TOOL], "parallel_tool_calls": False, "response_format": order_format},
            agent_prompt,
        ),
    }
    tasks = {name: tasks[name] for name in args.tasks.split(",")}
    results: dict[str, dict] = {}
    speeds: dict[str, list[float]] = {"constrained": [], "unconstrained": []}
    started = time.perf_counter()
    for task, (is_valid, constraint, system) in tasks.items():
        counts = {"constrained": 0, "unconstrained": 0}
        tally = {"cut_by_budget": 0, "calls": 0}
        """Constrained answers still valid so far when `max_tokens` ran out; constrained answers
        that are a call (for call_or_structured: the model's choice)."""

        def side(name: str, is_valid=is_valid, constraint=constraint, system=system, counts=counts, tally=tally):
            """Side `name` of the comparison: each call answers the next question; its answer tokens per second."""
            left = iter(enumerate(questions(args.runs)))

            def answer_next() -> float:
                index, question = next(left)
                common = {"max_tokens": args.max_tokens, "seed": index, "reasoning_mode": "plain"}
                if name == "constrained":
                    trace = router.run(question, **common, **constraint)
                    tally["cut_by_budget"] += trace.steps[-1].finish_reason == "budget"
                    tally["calls"] += bool(parse_tool_calls(trace.answer, ["place_order"])[1])
                else:  # the same system text the constrained run gets, and no grammar
                    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
                    trace = router.run(messages, **common)
                counts[name] += is_valid(trace.answer)
                answer = [step for step in trace.steps if step.phase == "answer"]
                return sum(step.tokens for step in answer) / max(sum(step.seconds for step in answer), 1e-9)

            return answer_next

        # one round per question: the two sides answer it in a fresh random order
        measured = interleaved_rounds(
            {name: side(name) for name in counts}, args.runs, seed=len(results), report=lambda line: None
        )
        for name, rates in measured.items():
            speeds[name] += rates
        results[task] = {name: counts[name] / args.runs for name in counts}
        results[task]["constrained_cut_by_budget"] = tally["cut_by_budget"] / args.runs
        results[task]["constrained_calls"] = tally["calls"] / args.runs
        results[task]["answer_speed_ratio"] = ratio(measured["constrained"], measured["unconstrained"])
        print(
            f"{task}: valid constrained {counts['constrained']}/{args.runs} ({tally['cut_by_budget']} cut by the token "
            f"budget), unconstrained {counts['unconstrained']}/{args.runs}; answer speed constrained/unconstrained "
            f"{shown(results[task]['answer_speed_ratio'])}",
            flush=True,
        )
    summary = {
        "backend": args.backend,
        "model": router.backend.model_name("large"),
        "runs_per_task": args.runs,
        "valid_share": results,
        "answer_tokens_per_second": {name: round(statistics.median(rates), 1) for name, rates in speeds.items()},
        "constrained_speed_ratio": ratio(speeds["constrained"], speeds["unconstrained"]),
        "wall_seconds": time.perf_counter() - started,
    }
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    router.close()


if __name__ == "__main__":
    main()
