"""Bootstrap confidence intervals (percentile method, by scipy), plain and paired."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from glimp_integrations.errors import require_module


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% bootstrap interval."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_mean(values: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of `values` with a percentile bootstrap interval (resampling the values)."""
    if not values:
        raise ValueError("bootstrap_mean needs at least one value")
    mean = sum(values) / len(values)
    if len(set(values)) == 1:  # no spread to resample (scipy needs two distinct observations)
        return Interval(mean, mean, mean)
    numpy = require_module("numpy", "bench", "Bootstrap intervals")
    stats = require_module("scipy.stats", "bench", "Bootstrap intervals")
    result = stats.bootstrap(
        (list(values),),
        numpy.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        rng=numpy.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return Interval(mean, float(interval.low), float(interval.high))


def paired_difference(a: Sequence[float], b: Sequence[float], **kwargs) -> Interval:
    """Mean of a - b over paired observations (same question and seed), with its interval."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    return bootstrap_mean([x - y for x, y in zip(a, b)], **kwargs)
