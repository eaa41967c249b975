"""`glimp calibrate`: pick the threshold that gives a target intervention rate on a calibration
split, then report on a disjoint split (the paper tuned tau on its test set)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from glimp_integrations.bench.harness import Setting, run_grid, summarize
from glimp_integrations.bench.problems import Problem
from glimp_integrations.router import GlimpRouter


def split_problems(problems: Sequence[Problem], calibration_share: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle cut into disjoint calibration and evaluation sets (each non-empty)."""
    if len(problems) < 2:
        raise ValueError(f"calibration needs at least 2 problems to split; got {len(problems)}")
    shuffled = list(problems)
    random.Random(seed).shuffle(shuffled)
    cut = min(len(shuffled) - 1, max(1, round(len(shuffled) * calibration_share)))
    return shuffled[:cut], shuffled[cut:]


def threshold_for_rate(entropies: Sequence[float], target_rate: float) -> float:
    """The smallest tau with at most `target_rate` of the entropies above it (an empirical
    quantile: H_init > tau intervenes)."""
    if not entropies:
        raise ValueError("no probe entropies to calibrate on")
    ordered = sorted(entropies)
    allowed_above = math.floor(target_rate * len(ordered))
    return ordered[len(ordered) - allowed_above - 1] if allowed_above < len(ordered) else 0.0


def calibrate(
    router: GlimpRouter,
    problems: Sequence[Problem],
    target_rate: float,
    *,
    calibration_share: float = 0.5,
    seeds: Sequence[int] = (0,),
    split_seed: int = 0,
    concurrency: int = 1,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Probe every step of the calibration runs (glimpse with tau = inf: each step delegated,
    its H_init recorded), take the threshold at the target rate, and evaluate it on the rest."""
    calibration, evaluation = split_problems(problems, calibration_share, split_seed)
    probes = run_grid(
        router,
        calibration,
        [Setting("glimpse", math.inf)],
        seeds,
        concurrency=concurrency,
        progress=progress,
        **overrides,
    )
    entropies = [s["h_init"] for r in probes for s in r.steps if s["h_init"] is not None]
    threshold = threshold_for_rate(entropies, target_rate)
    evaluated = run_grid(
        router,
        evaluation,
        [Setting("glimpse", threshold)],
        seeds,
        concurrency=concurrency,
        progress=progress,
        **overrides,
    )
    return {
        "target_rate": target_rate,
        "threshold": threshold,
        "calibration_problems": [p.id for p in calibration],
        "evaluation_problems": [p.id for p in evaluation],
        "calibration_probes": len(entropies),
        "calibration_rate": sum(h > threshold for h in entropies) / len(entropies),
        "evaluation": summarize(evaluated)[0],
    }
