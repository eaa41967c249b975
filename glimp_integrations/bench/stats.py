"""Bootstrap confidence intervals (percentile method), plain and paired."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% bootstrap interval."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_mean(values: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> Interval:
    """Mean of `values` with a percentile bootstrap interval (resampling the values)."""
    if not values:
        raise ValueError("bootstrap_mean needs at least one value")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return Interval(sum(values) / n, means[int(tail * resamples)], means[min(resamples - 1, int((1 - tail) * resamples))])


def paired_difference(a: Sequence[float], b: Sequence[float], **kwargs) -> Interval:
    """Mean of a - b over paired observations (same question and seed), with its interval."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    return bootstrap_mean([x - y for x, y in zip(a, b)], **kwargs)
