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
from collections.abc import Collection, Sequence
from typing import Any, TextIO

from glimp_integrations.config import POLICY_NAMES
from glimp_integrations.errors import GlimpError
from glimp_integrations.router import GlimpRouter
from glimp_integrations.serve.limits import ServerLimits
from glimp_integrations.settings import SETTING_NAMES, add_cli_options, cli_settings
from glimp_integrations.trace import RunFinished, RunTrace, StepFinished, StepStarted, TokenDelta
from glimp_integrations.version import __version__


def _threshold(text: str) -> float:
    value = float(text)  # "inf" is accepted
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (nats) or inf; got {text!r}")
    return value


def _models(parser: argparse.ArgumentParser, swept: Collection[str] = ()) -> None:
    """Options shared by every command: the model pair, and an option per setting
    (`glimp_integrations.settings`) but those the command sweeps itself."""
    parser.add_argument("--small", help="small model: HF id or local folder (default: embedded SmolLM2)")
    parser.add_argument("--large", help="large model: HF id or local folder (default: embedded SmolLM2)")
    add_cli_options(parser, [name for name in SETTING_NAMES if name not in swept], aliases={"reasoning_mode": "--mode"})


def build_parser() -> argparse.ArgumentParser:
    """The `glimp` command line (long: one declaration per command and option, read top to bottom)."""
    parser = argparse.ArgumentParser(prog="glimp", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--version", action="version", version=f"glimp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer one question, showing each step and who wrote it")
    ask.add_argument("question")
    _models(ask)
    ask.add_argument("--json", action="store_true", help="print only the trace as JSON on stdout")
    serve = commands.add_parser(
        "serve",
        help="serve the router as an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health, /metrics)",
    )
    _models(serve)
    _serve_options(serve)
    check = commands.add_parser(
        "check", help="say what Glimp will do with a pair of models and what will not work, before any run"
    )
    check.add_argument("small", help="small model: folder, HF id in the local cache, or server URL (http://.../v1)")
    check.add_argument("large", help="large model: the same kinds")
    check.add_argument("--small-tokenizer", help="where the small server's tokenizer is (default: the id it serves)")
    check.add_argument("--large-tokenizer", help="where the large server's tokenizer is (default: the id it serves)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    for name, summary in (
        ("bench", "compare policies and thresholds over a problem set"),
        ("calibrate", "pick the threshold for a target intervention rate"),
    ):
        command = commands.add_parser(name, help=summary)
        command.add_argument("data", nargs="?", help="JSONL problems (default: the shipped arithmetic set)")
        _models(command, swept=("policy", "threshold", "random_rate"))
        command.add_argument("--limit", type=int, default=None, help="use the first N problems")
        command.add_argument("--seeds", type=int, default=3, help="seeded runs per problem and setting")
        command.add_argument("--out", default=f"glimp-{name}", help="output folder")
        command.add_argument(
            "--concurrency",
            type=int,
            default=1,
            help="runs at a time (every backend batches them; latency is then measured under load)",
        )
    bench = commands.choices["bench"]
    bench.add_argument(
        "--policies",
        default="glimpse,always_small,always_large",
        help=f"comma-separated, from: {', '.join(POLICY_NAMES)}",
    )
    bench.add_argument("--thresholds", default="0.6,0.9,1.8", help="comma-separated tau values for threshold policies")
    bench.add_argument("--random-rate", type=float, default=0.25, help="intervention rate of the random policy")
    calibrate = commands.choices["calibrate"]
    calibrate.add_argument("--target-rate", type=float, required=True, help="share of steps for the large model")
    calibrate.add_argument("--calibration-share", type=float, default=0.5, help="share of problems to calibrate on")
    return parser


def _serve_options(serve: argparse.ArgumentParser) -> None:
    """`glimp serve`'s own options: where it listens, its keys, and the operator's limits."""
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default="glimp", help="the model id clients pass as `model`")
    serve.add_argument(
        "--otlp-traces-endpoint",
        help="export OpenTelemetry spans (a run, its steps) over OTLP/gRPC to this URL, e.g. http://localhost:4317",
    )
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.add_argument(
        "--api-key",
        default=os.environ.get("GLIMP_API_KEY"),
        help="require `Authorization: Bearer KEY` on every route but the probes, /metrics and the playground "
        "page (default: $GLIMP_API_KEY; the environment keeps it out of `ps`)",
    )
    serve.add_argument(
        "--api-key-file",
        help="admit the keys in this file: one per line, optionally followed by a space and a name for logs and "
        "metrics; read again on SIGHUP",
    )
    limits = ServerLimits()
    serve.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=limits.max_concurrent_runs,
        help="runs in the engines at once (default: %(default)s)",
    )
    serve.add_argument(
        "--max-queued-runs",
        type=int,
        default=limits.max_queued_runs,
        help="requests waiting for a run's slot; past these a request gets a 429 at once (default: %(default)s)",
    )
    serve.add_argument(
        "--client-settings",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        default=",".join(limits.client_settings),
        help="run settings a request may change, comma-separated; the budgets and timeout up to this server's "
        "(default: %(default)s; the sampling settings always)",
    )
    serve.add_argument(
        "--requests-per-minute", type=int, help="per API key (with keys set): requests a minute (default: no limit)"
    )
    serve.add_argument(
        "--tokens-per-minute",
        type=int,
        help="per API key (with keys set): prompt and completion tokens a minute, counted as runs end (default: no limit)",
    )
    serve.add_argument(
        "--max-connections", type=int, help="open connections at once; past them uvicorn answers 503 (default: none)"
    )
    serve.add_argument(
        "--allowed-hosts",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        help="the names a request's Host header may give, comma-separated (default: the loopback names when "
        "--host is loopback, else any)",
    )


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
    if args.command == "check":
        return _check(args)
    try:
        router = GlimpRouter(
            args.small, args.large, **{**cli_settings(args), "backend_options": _backend_options(args)}
        )
        with router:  # shuts the engines down cleanly, whatever happens
            if args.command == "ask":
                trace = _ask(router, args.question, show=not args.json)
                if args.json:
                    print(trace.to_json(indent=2))
                else:
                    terminal_console(sys.stdout).print(summary_line(trace), style="bold")
            elif args.command == "serve":
                from glimp_integrations.serve import serve

                serve(
                    router,
                    args.host,
                    args.port,
                    args.served_model_name,
                    args.otlp_traces_endpoint,
                    args.log_level,
                    args.api_key,
                    api_key_file=args.api_key_file,
                    limits=ServerLimits(
                        args.max_concurrent_runs,
                        args.max_queued_runs,
                        args.client_settings,
                        requests_per_minute=args.requests_per_minute,
                        tokens_per_minute=args.tokens_per_minute,
                    ),
                    max_connections=args.max_connections,
                    allowed_hosts=args.allowed_hosts,
                )
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
    meta = {
        "data": args.data or "arithmetic (shipped)",
        "problems": len(problems),
        "seeds": args.seeds,
        "concurrency": args.concurrency,
        "small": router.backend.model_name("small"),
        "large": router.backend.model_name("large"),
        "backend": router.backend.name,
    }
    paths = write_report(records, rows, Path(args.out), meta)
    print(markdown_table(rows))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)


def _calibrate(router: GlimpRouter, args: argparse.Namespace) -> None:
    from pathlib import Path

    from glimp_integrations.bench.calibrate import calibrate

    if not 0 <= args.target_rate <= 1:
        raise ValueError(f"`--target-rate` must be in [0, 1]; got {args.target_rate}. Pass e.g. 0.25.")
    result = calibrate(
        router,
        _problems(args),
        args.target_rate,
        calibration_share=args.calibration_share,
        seeds=range(args.seeds),
        concurrency=args.concurrency,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=2, default=str))
    evaluation = result["evaluation"]
    print(
        f"threshold {result['threshold']:.4f} nats gives intervention rate {result['calibration_rate']:.2f} on "
        f"{len(result['calibration_problems'])} calibration problems; on {len(result['evaluation_problems'])} "
        f"others: rate {evaluation['intervention_rate']:.2f}, pass@1 {evaluation['pass_at_1']['mean']:.3f} "
        f"[{evaluation['pass_at_1']['low']:.3f}, {evaluation['pass_at_1']['high']:.3f}]"
    )


#: Each model's colour (Okabe-Ito's sky blue and orange, told apart with every common colour
#: vision deficiency); every step also names its model, so nothing depends on the colour.
MODEL_STYLES = {"small": "#56B4E9", "large": "#E69F00"}


def terminal_console(file: TextIO) -> Any:
    """A rich console writing to `file`: in colour on a terminal, plain text (no escape codes at
    all) when `file` is not one or `NO_COLOR` is set (https://no-color.org)."""
    from rich.console import Console

    colour = file.isatty() and not os.environ.get("NO_COLOR")
    return Console(
        file=file,
        force_terminal=colour,
        color_system="auto" if colour else None,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=True,
    )


def step_header(event: StepStarted, threshold: float | None) -> str:
    """`[step 3 | large | H_init=4.012 > 3.930 | intervene]`: who writes the step and why: the
    probe's H_init (or the bound that settled it) against the threshold of a threshold policy."""
    if event.decision == "forced":
        return f"[answer | {event.model}]"
    probe, why = event.probe, ""
    if probe is not None:
        if probe.h_init is not None:
            value, above = f"H_init={probe.h_init:.3f}", threshold is not None and probe.h_init > threshold
        elif event.decision == "intervene":
            value, above = f"H_init>={probe.h_lower:.3f}", True
        else:
            value, above = f"H_init<={probe.h_upper:.3f}", False
        why = f" | {value}" + ("" if threshold is None else f" {'>' if above else '<='} {threshold:.3f}")
    return f"[step {event.index} | {event.model}{why} | {event.decision}]"


def _ask(router: GlimpRouter, question: str, show: bool, console: Any = None) -> RunTrace:
    """Run the question; when `show`, print each step as it is written (on `console`, by default
    stdout's: each step in its model's colour on a terminal)."""
    from rich.text import Text

    console = console or terminal_console(sys.stdout)
    threshold = router.config.threshold if router.config.policy == "glimpse" else None
    at_line_start = True
    for event in router.stream(question):
        if isinstance(event, RunFinished):
            return event.trace
        if not show:
            continue
        if isinstance(event, StepStarted):
            separator = "" if at_line_start else "\n"
            style = MODEL_STYLES[event.model]
            header = Text(
                separator + step_header(event, threshold),
                style=f"bold {style}" + (" reverse" if event.decision == "forced" else ""),
            )
            console.print(header)
            at_line_start = True
        elif isinstance(event, TokenDelta) and event.text:
            console.print(Text(event.text, style=MODEL_STYLES[event.model]), end="")
            at_line_start = event.text.endswith("\n")
        elif isinstance(event, StepFinished) and event.step.drafted_tokens is not None:
            step = event.step
            console.print(
                Text(
                    f"{'' if at_line_start else chr(10)}[drafted {step.drafted_tokens}, accepted {step.accepted_tokens}]",
                    style="dim",
                )
            )
            at_line_start = True
        console.file.flush()
    raise AssertionError("the run ended without a RunFinished event")


def summary_line(trace: RunTrace) -> str:
    tokens = trace.tokens_by_model
    return (
        f"\n-- {len(trace.steps)} steps, intervention rate {trace.intervention_rate:.0%}, "
        f"tokens small={tokens.get('small', 0)} large={tokens.get('large', 0)}, "
        f"{trace.probe_count} probes, {trace.wall_seconds:.1f} s, finish={trace.finish_reason}"
        + (
            f", drafts accepted {trace.accepted_tokens}/{trace.drafted_tokens} ({trace.acceptance_rate:.0%})"
            if trace.drafted_tokens
            else ""
        )
    )


def _check(args: argparse.Namespace) -> int:
    """`glimp check`: the pair's report; exit status 1 when the pair will not work as is."""
    from glimp_integrations.pair_check import check_pair

    report = check_pair(
        args.small, args.large, small_tokenizer=args.small_tokenizer, large_tokenizer=args.large_tokenizer
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
