"""Run policies and thresholds over a problem set, summarise with intervals, and report.

Every (policy, threshold) configuration answers every problem once per seed on the same
router.  Accuracy (pass@1) and latency are averaged per problem over seeds, then over problems,
with a bootstrap 95% interval over problems.  Against `always_large` (when it is in the grid)
each configuration gets a paired comparison on the same problems and seeds.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glimp_integrations import _sync
from glimp_integrations.bench.checking import is_correct
from glimp_integrations.bench.problems import Problem
from glimp_integrations.bench.stats import Interval, bootstrap_mean, paired_difference
from glimp_integrations.errors import invalid, require_module
from glimp_integrations.router import GlimpRouter
from glimp_integrations.trace import RunTrace

THRESHOLD_POLICIES = ("glimpse", "step_entropy", "step_perplexity", "specreason")
BASELINE = "always_large"


@dataclass(frozen=True)
class Setting:
    """One point of the grid: a policy and, for those that read one, a threshold."""

    policy: str
    threshold: float | None = None

    @property
    def label(self) -> str:
        return self.policy if self.threshold is None else f"{self.policy} tau={self.threshold:g}"


@dataclass
class RunRecord:
    """One problem answered once under one setting and seed."""

    policy: str
    threshold: float | None
    seed: int
    problem_id: str
    correct: bool
    latency_s: float
    intervention_rate: float
    tokens_small: int
    tokens_large: int
    wasted_small: int
    answer: str
    steps: list[dict[str, Any]] = field(default_factory=list)


def grid(policies: Sequence[str], thresholds: Sequence[float]) -> list[Setting]:
    """Threshold policies once per threshold, the others once."""
    settings = []
    for policy in policies:
        settings += [Setting(policy, t) for t in thresholds] if policy in THRESHOLD_POLICIES else [Setting(policy)]
    return settings


def run_grid(
    router: GlimpRouter,
    problems: Sequence[Problem],
    settings: Sequence[Setting],
    seeds: Sequence[int],
    *,
    concurrency: int = 1,
    progress: bool = True,
    **overrides: Any,
) -> list[RunRecord]:
    """Answer every problem under every setting and seed, `concurrency` runs at a time (a progress
    bar on stderr); records come back in grid order.  With `concurrency` > 1 the runs batch in the
    engine (every backend batches concurrent runs) and each run's latency is measured under that load."""
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise invalid(
            "concurrency",
            concurrency,
            "must be a positive int",
            "Use 1 for per-question latency alone, more to batch runs on vLLM or servers.",
        )
    tqdm = require_module("tqdm", "bench", "The benchmark's progress bar").tqdm
    jobs = [(s, seed, p) for s in settings for seed in seeds for p in problems]
    with tqdm(total=len(jobs), desc="glimp bench", unit="run", disable=not progress) as bar:
        traces = _sync.run_sync(_run_jobs(router, jobs, concurrency, bar.update, overrides))
    return [
        RunRecord(
            policy=setting.policy,
            threshold=setting.threshold,
            seed=seed,
            problem_id=problem.id,
            correct=is_correct(trace.answer, problem),
            latency_s=trace.wall_seconds,
            intervention_rate=trace.intervention_rate,
            tokens_small=trace.tokens_by_model["small"],
            tokens_large=trace.tokens_by_model["large"],
            wasted_small=trace.discarded_tokens,
            answer=trace.answer,
            steps=[s.routing() for s in trace.steps],
        )
        for (setting, seed, problem), trace in zip(jobs, traces)
    ]


async def _run_jobs(
    router: GlimpRouter,
    jobs: Sequence[tuple[Setting, int, Problem]],
    concurrency: int,
    done: Callable[[], Any],
    overrides: dict[str, Any],
) -> list[RunTrace]:
    """The traces of `jobs`, in order, at most `concurrency` runs at a time; `done()` after each."""
    slots = asyncio.Semaphore(concurrency)

    async def answer(setting: Setting, seed: int, problem: Problem) -> RunTrace:
        extra = {"threshold": setting.threshold} if setting.threshold is not None else {}
        async with slots:
            trace = await router.arun(problem.prompt(), policy=setting.policy, seed=seed, **extra, **overrides)
        done()
        return trace

    tasks = [asyncio.ensure_future(answer(*job)) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # one run failed (or the bench was cancelled): stop the others
        for task in tasks:
            task.cancel()


def _per_problem(records: Sequence[RunRecord], value) -> dict[str, float]:
    """Mean of `value(record)` per problem, over seeds."""
    by_problem: dict[str, list[float]] = defaultdict(list)
    for record in records:
        by_problem[record.problem_id].append(float(value(record)))
    return {pid: statistics.mean(v) for pid, v in sorted(by_problem.items())}


def summarize(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per setting: pass@1 and latency with intervals, routing and token means, and the
    paired comparison against `always_large` when it was run."""
    groups: dict[tuple[str, float | None], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(record.policy, record.threshold)].append(record)
    baseline = groups.get((BASELINE, None))
    rows = []
    for (policy, threshold), runs in groups.items():
        accuracy = _per_problem(runs, lambda r: r.correct)
        latency = _per_problem(runs, lambda r: r.latency_s)
        row: dict[str, Any] = {
            "policy": policy,
            "threshold": threshold,
            "runs": len(runs),
            "problems": len(accuracy),
            "pass_at_1": asdict(bootstrap_mean(list(accuracy.values()))),
            "latency_s": asdict(bootstrap_mean(list(latency.values()))),
            "intervention_rate": statistics.mean(r.intervention_rate for r in runs),
            "tokens_small": statistics.mean(r.tokens_small for r in runs),
            "tokens_large": statistics.mean(r.tokens_large for r in runs),
            "wasted_small": statistics.mean(r.wasted_small for r in runs),
        }
        if baseline is not None and policy != BASELINE:
            ours = {(r.problem_id, r.seed): r for r in runs}
            pairs = [(ours[k], b) for b in baseline if (k := (b.problem_id, b.seed)) in ours]
            if pairs:
                row["vs_always_large"] = {
                    "pairs": len(pairs),
                    "accuracy_difference": asdict(
                        paired_difference([float(a.correct) for a, _ in pairs], [float(b.correct) for _, b in pairs])
                    ),
                    "latency_difference_s": asdict(
                        paired_difference([a.latency_s for a, _ in pairs], [b.latency_s for _, b in pairs])
                    ),
                    "latency_ratio": sum(a.latency_s for a, _ in pairs) / sum(b.latency_s for _, b in pairs),
                }
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    def interval(data: dict) -> str:
        return str(Interval(**data))

    lines = [
        (
            "| policy | tau | runs | pass@1 [95% CI] | latency s [95% CI] | intervention rate | tokens small | "
            "tokens large | wasted small | Δ pass@1 vs always_large | latency vs always_large |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        versus = r.get("vs_always_large")
        tau = "" if r["threshold"] is None else f"{r['threshold']:g}"
        difference = interval(versus["accuracy_difference"]) if versus else ""
        ratio = f"{versus['latency_ratio']:.2f}x" if versus else ""
        lines.append(
            f"| {r['policy']} | {tau} | {r['runs']} | {interval(r['pass_at_1'])} | {interval(r['latency_s'])} | "
            f"{r['intervention_rate']:.2f} | {r['tokens_small']:.1f} | {r['tokens_large']:.1f} | "
            f"{r['wasted_small']:.1f} | {difference} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def plot_pareto(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy against latency for every setting, with both intervals."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 5))
    for r in rows:
        acc, lat = r["pass_at_1"], r["latency_s"]
        axes.errorbar(
            lat["mean"],
            acc["mean"],
            xerr=[[lat["mean"] - lat["low"]], [lat["high"] - lat["mean"]]],
            yerr=[[acc["mean"] - acc["low"]], [acc["high"] - acc["mean"]]],
            fmt="o",
            capsize=3,
        )
        label = r["policy"] if r["threshold"] is None else f"{r['policy']} {r['threshold']:g}"
        axes.annotate(label, (lat["mean"], acc["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axes.set_xlabel("mean latency per question (s)")
    axes.set_ylabel("pass@1")
    axes.set_title("Accuracy against latency (95% bootstrap intervals)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_steps(record: RunRecord, threshold: float | None, path: Path) -> None:
    """H_init of each step of one run, coloured by the model that wrote it."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 3.5))
    colours = {"small": "tab:blue", "large": "tab:red"}
    for model in ("small", "large"):
        points = [(s["index"], s["h_init"]) for s in record.steps if s["model"] == model and s["h_init"] is not None]
        if points:
            axes.scatter(*zip(*points), c=colours[model], label=f"{model} model")
    if threshold is not None and math.isfinite(threshold):
        axes.axhline(threshold, color="grey", linestyle="--", label=f"tau = {threshold:g}")
    axes.set_xlabel("step")
    axes.set_ylabel("H_init (nats)")
    axes.set_title(f"{record.problem_id}: {record.policy}, seed {record.seed}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _pyplot():
    matplotlib = require_module("matplotlib", "bench", "The benchmark's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(
    records: Sequence[RunRecord], rows: Sequence[dict[str, Any]], out: Path, meta: dict[str, Any]
) -> dict[str, Path]:
    """runs.json (every run), summary.md, pareto.png and steps.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "runs": out / "runs.json",
        "summary": out / "summary.md",
        "pareto": out / "pareto.png",
        "steps": out / "steps.png",
    }
    paths["runs"].write_text(
        json.dumps({"meta": meta, "summary": rows, "runs": [asdict(r) for r in records]}, indent=2, default=str)
    )
    paths["summary"].write_text(f"# glimp bench\n\n{json.dumps(meta)}\n\n" + markdown_table(rows))
    plot_pareto(rows, paths["pareto"])
    probed = next((r for r in records if r.policy == "glimpse"), records[0])
    plot_steps(probed, probed.threshold, paths["steps"])
    return paths
