"""The `glimp` command line.

- `glimp ask "QUESTION"`: route one question, showing each step as it is written;
- `glimp bench [DATA.jsonl]`: compare policies and thresholds over a problem set (JSON of every
  run, a Markdown table, PNG plots);
- `glimp calibrate [DATA.jsonl] --target-rate R`: the threshold that gives intervention rate R on
  a calibration split, reported on a disjoint split;
- `glimp serve`: the router behind an OpenAI-compatible HTTP API (see `glimp_integrations.serve`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

from glimp_integrations.config import BACKEND_NAMES, POLICY_NAMES, REASONING_MODES
from glimp_integrations.errors import GlimpError
from glimp_integrations.router import GlimpRouter
from glimp_integrations.trace import RunFinished, RunTrace, StepFinished, StepStarted, TokenDelta


def _threshold(text: str) -> float:
    value = float(text)  # "inf" is accepted
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (nats) or inf; got {text!r}")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"must be a JSON object; got {text!r} ({error})") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object; got {text!r}")
    return value


def _models(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command: the model pair and how it runs."""
    parser.add_argument("--small", help="small model: HF id or local folder (default: embedded SmolLM2)")
    parser.add_argument("--large", help="large model: HF id or local folder (default: embedded SmolLM2)")
    parser.add_argument("--backend", default="transformers", choices=BACKEND_NAMES,
                        help="transformers, vllm (in this process) or openai (--small/--large are server URLs)")
    parser.add_argument("--speculative", nargs="?", const=True, default=False, type=_json_object, metavar="JSON",
                        help="draft the large model's tokens with the small one (vLLM); or a JSON dict of vLLM's "
                             'speculative_config, e.g. \'{"method": "ngram", "num_speculative_tokens": 3}\'')
    parser.add_argument("--backend-options", type=_json_object, default=None, metavar="JSON",
                        help="the backend's own options as a JSON object, e.g. for --backend openai "
                             '\'{"max_retries": 5, "entropy_gate": true}\' (API keys: GLIMP_SMALL_API_KEY, '
                             "GLIMP_LARGE_API_KEY)")
    parser.add_argument("--device", default="auto", help="torch device for the transformers backend")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--mode", choices=REASONING_MODES,
                        help="think: route <think> reasoning (default: auto; think for the embedded pair)")
    parser.add_argument("--reasoning-budget", type=int, help="most routed tokens (default: 8192; 256 embedded)")
    parser.add_argument("--answer-budget", type=int, default=2048, help="most tokens of the final answer")
    parser.add_argument("--tool-call-parser", help="the large model's tool-call format, as vLLM names it "
                                                   "(hermes, llama3_json, deepseek_v3, deepseek_v31; default: read "
                                                   "from its chat template)")
    parser.add_argument("--reasoning-parser", help="vLLM's reasoning parser giving the reasoning's markers "
                                                   "(default: the tool-call format's own)")


def _routing(parser: argparse.ArgumentParser) -> None:
    """Routing options of `ask` and `serve` (a served request may override them per call)."""
    parser.add_argument("--policy", default="glimpse", choices=POLICY_NAMES)
    parser.add_argument("--threshold", type=_threshold,
                        help="tau in nats (default: 3.93, calibrated, for the embedded pair; the paper's 0.9 for "
                             "named models; inf delegates all)")
    parser.add_argument("--random-rate", type=float, default=0.25, help="intervention rate of --policy random")
    parser.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glimp", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer one question, showing each step and who wrote it")
    ask.add_argument("question")
    _models(ask)
    _routing(ask)
    ask.add_argument("--json", action="store_true", help="print only the trace as JSON on stdout")
    serve = commands.add_parser("serve", help="serve the router as an OpenAI-compatible API (/v1/chat/completions, "
                                              "/v1/models, /health, /metrics)")
    _models(serve)
    _routing(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default="glimp", help="the model id clients pass as `model`")
    serve.add_argument("--otlp-traces-endpoint", help="export OpenTelemetry spans (a run, its steps) over OTLP/gRPC "
                                                      "to this URL, e.g. http://localhost:4317")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.add_argument("--api-key", default=os.environ.get("GLIMP_API_KEY"),
                       help="require `Authorization: Bearer KEY` on every /v1 route (default: $GLIMP_API_KEY; "
                            "the environment keeps it out of `ps`)")
    for name, summary in (("bench", "compare policies and thresholds over a problem set"),
                          ("calibrate", "pick the threshold for a target intervention rate")):
        command = commands.add_parser(name, help=summary)
        command.add_argument("data", nargs="?", help="JSONL problems (default: the shipped arithmetic set)")
        _models(command)
        command.add_argument("--limit", type=int, default=None, help="use the first N problems")
        command.add_argument("--seeds", type=int, default=3, help="seeded runs per problem and setting")
        command.add_argument("--out", default=f"glimp-{name}", help="output folder")
        command.add_argument("--concurrency", type=int, default=1,
                             help="runs at a time (batch them on vLLM or servers; latency is then measured under load)")
    bench = commands.choices["bench"]
    bench.add_argument("--policies", default="glimpse,always_small,always_large",
                       help=f"comma-separated, from: {', '.join(POLICY_NAMES)}")
    bench.add_argument("--thresholds", default="0.6,0.9,1.8", help="comma-separated tau values for threshold policies")
    bench.add_argument("--random-rate", type=float, default=0.25)
    calibrate = commands.choices["calibrate"]
    calibrate.add_argument("--target-rate", type=float, required=True, help="share of steps for the large model")
    calibrate.add_argument("--calibration-share", type=float, default=0.5, help="share of problems to calibrate on")
    return parser


def _backend_options(args: argparse.Namespace) -> dict | None:
    """--backend-options, plus the model servers' API keys from the environment (never on a
    command line, where `ps` shows them) for the openai backend."""
    options = dict(args.backend_options or {})
    if args.backend == "openai":
        for role in ("small", "large"):
            if key := os.environ.get(f"GLIMP_{role.upper()}_API_KEY"):
                options.setdefault(f"{role}_api_key", key)
    return options or None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        chosen = {name: getattr(args, option, None) for name, option in (
            ("reasoning_mode", "mode"), ("reasoning_budget", "reasoning_budget"), ("threshold", "threshold"),
            ("seed", "seed"), ("policy", "policy"), ("random_rate", "random_rate"),
            ("tool_call_parser", "tool_call_parser"), ("reasoning_parser", "reasoning_parser"))}
        router = GlimpRouter(
            args.small, args.large, backend=args.backend, device=args.device, speculative=args.speculative,
            backend_options=_backend_options(args),
            temperature=args.temperature, top_p=args.top_p, answer_budget=args.answer_budget,
            **{name: value for name, value in chosen.items() if value is not None})
        with router:  # shuts the engines down cleanly, whatever happens
            if args.command == "ask":
                trace = _ask(router, args.question, show=not args.json)
                print(trace.to_json(indent=2) if args.json else summary_line(trace))
            elif args.command == "serve":
                from glimp_integrations.serve import serve

                serve(router, args.host, args.port, args.served_model_name, args.otlp_traces_endpoint,
                      args.log_level, args.api_key)
            elif args.command == "bench":
                _bench(router, args)
            else:
                _calibrate(router, args)
    except (GlimpError, ValueError) as error:
        print(f"glimp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nglimp: interrupted", file=sys.stderr)
        return 130
    return 0


def _problems(args: argparse.Namespace) -> list:
    from glimp_integrations.bench.problems import load_problems, shipped_arithmetic_path

    problems = load_problems(args.data or shipped_arithmetic_path())
    return problems[: args.limit] if args.limit else problems


def _bench(router: GlimpRouter, args: argparse.Namespace) -> None:
    from pathlib import Path

    from glimp_integrations.bench.harness import (
        grid,
        markdown_table,
        run_grid,
        summarize,
        write_report,
    )

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        raise ValueError(f"`--policies` names unknown policies {unknown}; choose from {', '.join(POLICY_NAMES)}.")
    thresholds = [_threshold(t) for t in args.thresholds.split(",") if t.strip()]
    problems = _problems(args)
    records = run_grid(router, problems, grid(policies, thresholds), range(args.seeds), concurrency=args.concurrency)
    rows = summarize(records)
    meta = {"data": args.data or "arithmetic (shipped)", "problems": len(problems), "seeds": args.seeds,
            "concurrency": args.concurrency,
            "small": router.backend.model_name("small"), "large": router.backend.model_name("large"),
            "backend": router.backend.name}
    paths = write_report(records, rows, Path(args.out), meta)
    print(markdown_table(rows))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)


def _calibrate(router: GlimpRouter, args: argparse.Namespace) -> None:
    from pathlib import Path

    from glimp_integrations.bench.calibrate import calibrate

    if not 0 <= args.target_rate <= 1:
        raise ValueError(f"`--target-rate` must be in [0, 1]; got {args.target_rate}. Pass e.g. 0.25.")
    result = calibrate(router, _problems(args), args.target_rate, calibration_share=args.calibration_share,
                       seeds=range(args.seeds), concurrency=args.concurrency)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=2, default=str))
    evaluation = result["evaluation"]
    print(f"threshold {result['threshold']:.4f} nats gives intervention rate {result['calibration_rate']:.2f} on "
          f"{len(result['calibration_problems'])} calibration problems; on {len(result['evaluation_problems'])} "
          f"others: rate {evaluation['intervention_rate']:.2f}, pass@1 {evaluation['pass_at_1']['mean']:.3f} "
          f"[{evaluation['pass_at_1']['low']:.3f}, {evaluation['pass_at_1']['high']:.3f}]")


def _ask(router: GlimpRouter, question: str, show: bool) -> RunTrace:
    """Run the question; when `show`, print each step as it is written."""
    out = sys.stdout
    at_line_start = True
    for event in router.stream(question):
        if isinstance(event, RunFinished):
            return event.trace
        if not show:
            continue
        if isinstance(event, StepStarted):
            probe = event.probe
            h = "" if probe is None else f" H_init={probe.h_init:.3f}" if probe.h_init is not None else \
                f" H_init<={probe.h_upper:.3f}"
            label = "answer" if event.decision == "forced" else event.decision
            separator = "" if at_line_start else "\n"
            out.write(f"{separator}[step {event.index} | {event.model}{h} | {label}]\n")
            at_line_start = True
        elif isinstance(event, TokenDelta) and event.text:
            out.write(event.text)
            at_line_start = event.text.endswith("\n")
        elif isinstance(event, StepFinished) and event.step.drafted_tokens is not None:
            step = event.step
            out.write(f"{'' if at_line_start else chr(10)}[drafted {step.drafted_tokens}, accepted "
                      f"{step.accepted_tokens}]\n")
            at_line_start = True
        out.flush()
    raise AssertionError("the run ended without a RunFinished event")


def summary_line(trace: RunTrace) -> str:
    tokens = trace.tokens_by_model
    return (f"\n-- {len(trace.steps)} steps, intervention rate {trace.intervention_rate:.0%}, "
            f"tokens small={tokens.get('small', 0)} large={tokens.get('large', 0)}, "
            f"{trace.probe_count} probes, {trace.wall_seconds:.1f} s, finish={trace.finish_reason}"
            + (f", drafts accepted {trace.accepted_tokens}/{trace.drafted_tokens} ({trace.acceptance_rate:.0%})"
               if trace.drafted_tokens else ""))


if __name__ == "__main__":
    raise SystemExit(main())
