"""The `glimp` command line: `glimp ask "QUESTION"` routes one question and shows each step."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Sequence

from glimp_integrations.config import BACKEND_NAMES, POLICY_NAMES, REASONING_MODES
from glimp_integrations.errors import GlimpError
from glimp_integrations.router import GlimpRouter
from glimp_integrations.trace import RunFinished, RunTrace, StepFinished, StepStarted, TokenDelta


def _threshold(text: str) -> float:
    value = float(text)  # "inf" is accepted
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (nats) or inf; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glimp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer one question, showing each step and who wrote it")
    ask.add_argument("question")
    ask.add_argument("--small", help="small model: HF id or local folder (default: embedded SmolLM2)")
    ask.add_argument("--large", help="large model: HF id or local folder (default: embedded SmolLM2)")
    ask.add_argument("--backend", default="transformers", choices=BACKEND_NAMES,
                     help="transformers, vllm (in this process) or openai (--small/--large are server URLs)")
    ask.add_argument("--speculative", action="store_true", help="draft the large model's steps with the small one (vLLM, GPU)")
    ask.add_argument("--device", default="auto", help="torch device for the transformers backend")
    ask.add_argument("--policy", default="glimpse", choices=POLICY_NAMES)
    ask.add_argument("--threshold", type=_threshold, default=0.9, help="tau in nats (default 0.9; inf delegates all)")
    ask.add_argument("--random-rate", type=float, default=0.25, help="intervention rate of --policy random")
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--temperature", type=float, default=0.6)
    ask.add_argument("--top-p", type=float, default=0.95)
    ask.add_argument("--mode", default="auto", choices=REASONING_MODES, help="think: route <think> reasoning")
    ask.add_argument("--reasoning-budget", type=int, default=8192, help="most routed tokens")
    ask.add_argument("--answer-budget", type=int, default=2048, help="most tokens of the final answer")
    ask.add_argument("--json", action="store_true", help="print only the trace as JSON on stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        router = GlimpRouter(
            args.small, args.large, backend=args.backend, device=args.device, speculative=args.speculative,
            policy=args.policy,
            threshold=args.threshold, random_rate=args.random_rate, seed=args.seed,
            temperature=args.temperature, top_p=args.top_p, reasoning_mode=args.mode,
            reasoning_budget=args.reasoning_budget, answer_budget=args.answer_budget)
        trace = _ask(router, args.question, show=not args.json)
    except GlimpError as error:
        print(f"glimp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nglimp: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(trace.to_json(indent=2))
    else:
        print(summary_line(trace))
    return 0


def _ask(router: GlimpRouter, question: str, show: bool) -> RunTrace:
    """Run the question; when `show`, print each step as it is written."""
    out = sys.stdout
    for event in router.stream(question):
        if isinstance(event, RunFinished):
            return event.trace
        if not show:
            continue
        if isinstance(event, StepStarted):
            h = f" H_init={event.probe.h_init:.3f}" if event.probe else ""
            label = "answer" if event.decision == "forced" else event.decision
            out.write(f"\n[step {event.index} | {event.model}{h} | {label}]\n")
        elif isinstance(event, TokenDelta):
            out.write(event.text)
        elif isinstance(event, StepFinished) and not event.step.text.endswith("\n"):
            out.write("\n")
        out.flush()
    raise AssertionError("the run ended without a RunFinished event")


def summary_line(trace: RunTrace) -> str:
    tokens = trace.tokens_by_model
    return (f"\n-- {len(trace.steps)} steps, intervention rate {trace.intervention_rate:.0%}, "
            f"tokens small={tokens.get('small', 0)} large={tokens.get('large', 0)}, "
            f"{trace.probe_count} probes, {trace.wall_seconds:.1f} s, finish={trace.finish_reason}")


if __name__ == "__main__":
    raise SystemExit(main())
