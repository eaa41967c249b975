"""Routing policies: who writes each step.

A policy answers two questions for the router:
- `choose`: before a step, given the probe's entropy bounds (or None when the policy asks for
  no probe), who writes it: DELEGATE (small), INTERVENE (large) or UNDECIDED (probe again with
  more logprobs);
- `keep_small_step`: after the small model wrote a step, keep it or have the large model write
  it again.  Generate-then-measure policies (step entropy, step perplexity) decide here; the
  probe-based ones always keep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from glimp_integrations.config import RouterConfig
from glimp_integrations.entropy import EntropyBounds, Verdict, verdict


@dataclass(frozen=True)
class SmallStepDraft:
    """A step the small model has written, offered to `keep_small_step`."""

    text: str
    tokens: int


class RoutingPolicy:
    """Base policy: delegates everything and keeps every step."""

    name = "always_small"
    needs_probe = False
    """Whether `choose` reads the probe's entropy (then the router probes before each step)."""

    def choose(self, bounds: EntropyBounds | None, rng: random.Random) -> Verdict:
        return Verdict.DELEGATE

    def keep_small_step(self, draft: SmallStepDraft) -> bool:
        return True


class GlimpsePolicy(RoutingPolicy):
    """The paper's method: intervene when H_init > threshold."""

    name = "glimpse"
    needs_probe = True

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def choose(self, bounds: EntropyBounds | None, rng: random.Random) -> Verdict:
        assert bounds is not None, "glimpse needs a probe"
        return verdict(bounds, self.threshold)


class AlwaysLargePolicy(RoutingPolicy):
    name = "always_large"

    def choose(self, bounds: EntropyBounds | None, rng: random.Random) -> Verdict:
        return Verdict.INTERVENE


class RandomPolicy(RoutingPolicy):
    """Intervene with probability `rate`, independently per step (seeded by the run's seed)."""

    name = "random"

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def choose(self, bounds: EntropyBounds | None, rng: random.Random) -> Verdict:
        return Verdict.INTERVENE if rng.random() < self.rate else Verdict.DELEGATE


def make_policy(config: RouterConfig) -> RoutingPolicy:
    """The policy named by `config.policy`, with its parameters from `config`."""
    if config.policy == "glimpse":
        return GlimpsePolicy(config.threshold)
    if config.policy == "always_large":
        return AlwaysLargePolicy()
    if config.policy == "random":
        return RandomPolicy(config.random_rate)
    return RoutingPolicy()
