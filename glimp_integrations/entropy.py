"""Entropy of a next-token distribution, exact or bounded from its top-k logprobs.

All entropies are Shannon entropies in nats (natural log).  A *probe* gives the distribution of
the first token of a step, P(t1 | context), at temperature 1.  Backends return either the whole
vocabulary (exact entropy) or only the k most likely tokens; from those the tail's entropy is
bounded (see `entropy_bounds`), and the routing decision is certain whenever both bounds fall on
the same side of the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


def entropy_nats(logprobs: Sequence[float]) -> float:
    """Exact entropy of a distribution given as log-probabilities (nats) over all its support."""
    return -sum(math.exp(lp) * lp for lp in logprobs if lp > -math.inf)


#: Rounding allowance (nats) for bounds computed from top-k logprobs: a bound this close to the
#: threshold does not settle the decision, so more logprobs are asked for.
ROUNDING_MARGIN = 1e-9


@dataclass(frozen=True)
class EntropyBounds:
    """An interval [lower, upper] (nats) certain to contain the exact entropy."""

    lower: float
    upper: float
    exact: bool = False
    """True when the interval has no rounding error to allow for: computed from the whole
    distribution (then lower == upper is the entropy), or proven against the threshold itself."""

    @property
    def width(self) -> float:
        return self.upper - self.lower


def entropy_bounds(top_logprobs: Sequence[float], vocab_size: int) -> EntropyBounds:
    """Bound the entropy of a `vocab_size`-token distribution from its k largest logprobs.

    With p1 >= ... >= pk known and tail mass m = 1 - sum(p) spread over the V - k other tokens
    (each at most pk):
    - lower: pack the tail into as few tokens as allowed, n = floor(m / pk) tokens of pk and
      one of the remainder r, giving n * (-pk ln pk) - r ln r;
    - upper: spread the tail evenly, m ln((V - k) / m).
    With k == V (or no tail mass) both equal the exact entropy.
    """
    probs = sorted((math.exp(lp) for lp in top_logprobs), reverse=True)
    k = len(probs)
    if k == 0:
        raise ValueError("entropy_bounds needs at least one logprob")
    if k > vocab_size:
        raise ValueError(f"got {k} logprobs for a vocabulary of {vocab_size} tokens")
    head = -sum(p * math.log(p) for p in probs if p > 0.0)
    tail_mass = max(0.0, 1.0 - sum(probs))
    tail_tokens = vocab_size - k
    if tail_tokens == 0:
        return EntropyBounds(head, head, exact=True)
    if tail_mass <= 1e-12:
        return EntropyBounds(head, head)
    smallest = probs[-1]
    full_tokens = min(math.floor(tail_mass / smallest), tail_tokens) if smallest > 0 else 0
    remainder = tail_mass - full_tokens * smallest
    lower_tail = full_tokens * (-smallest * math.log(smallest)) if smallest > 0 else 0.0
    if remainder > 0:
        lower_tail -= remainder * math.log(remainder)
    upper_tail = tail_mass * math.log(tail_tokens / tail_mass)
    return EntropyBounds(head + lower_tail, head + max(upper_tail, lower_tail))


class Verdict(str, Enum):
    """What a probe's entropy says about a step, given the threshold."""

    DELEGATE = "delegate"  # H_init <= threshold: the small model writes the step
    INTERVENE = "intervene"  # H_init > threshold: the large model writes the step
    UNDECIDED = "undecided"  # the bounds straddle the threshold: ask for more logprobs


def verdict(bounds: EntropyBounds, threshold: float) -> Verdict:
    """The decision the exact entropy would give, or UNDECIDED if the bounds cannot tell."""
    margin = 0.0 if bounds.exact else ROUNDING_MARGIN
    if bounds.upper + margin <= threshold:
        return Verdict.DELEGATE
    if bounds.lower - margin > threshold:
        return Verdict.INTERVENE
    return Verdict.UNDECIDED
