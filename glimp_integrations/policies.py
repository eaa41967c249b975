"""Routing policies: who writes each step.

A policy answers two questions for the router:
- `choose`: before a step, given the probe's entropy bounds (or None when the policy asks for
  no probe), who writes it: DELEGATE (small), INTERVENE (large) or UNDECIDED (probe again with
  more logprobs);
- `keep_small_step`: after the small model wrote a step, keep it or have the large model write
  it again (the small model's tokens are then wasted).  The paper's generate-then-measure
  baselines decide here: `step_entropy` (mean token entropy of the step), `step_perplexity`
  (perplexity of the step under the small model) and `specreason` (the large model scores the
  step 0-9); the probe-based policies always keep.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from glimp_integrations.config import RouterConfig
from glimp_integrations.entropy import EntropyBounds, Verdict, verdict

SCORE_DIGITS = tuple("0123456789")


@dataclass(frozen=True)
class SmallStepDraft:
    """A step the small model has written, offered to `keep_small_step`."""

    text: str
    tokens: int
    token_entropies: list[float] = field(default_factory=list)
    """Entropy (nats, temperature 1) of the small model's distribution at each token of the step."""
    token_logprobs: list[float] = field(default_factory=list)
    """Log-probability (nats, temperature 1) the small model gave each token it wrote."""
    score_with_large: Callable[[str], Awaitable[dict[str, float]]] | None = None
    """Asks the large model for the logprobs of the next token after the step and a prompt
    suffix, restricted to the digits 0-9 (SpecReason's judge)."""

    @property
    def mean_entropy(self) -> float:
        return sum(self.token_entropies) / len(self.token_entropies) if self.token_entropies else 0.0

    @property
    def perplexity(self) -> float:
        if not self.token_logprobs:
            return 1.0
        return math.exp(-sum(self.token_logprobs) / len(self.token_logprobs))


class RoutingPolicy:
    """Base policy: delegates everything and keeps every step."""

    name = "always_small"
    needs_probe = False
    """Whether `choose` reads the probe's entropy (then the router probes before each step)."""
    measures_steps = False
    """Whether `keep_small_step` reads per-token entropies and logprobs (backends then record them)."""

    @property
    def gate_threshold(self) -> float | None:
        """The threshold when `choose` intervenes exactly when H_init exceeds it (then a backend may
        decide inside its engine: `ModelSession.gated_probe`); None otherwise."""
        return None

    @property
    def keeps_every_step(self) -> bool:
        """True when `keep_small_step` keeps every step (then one gated request may write several)."""
        return type(self).keep_small_step is RoutingPolicy.keep_small_step

    def choose(self, bounds: EntropyBounds | None, rng: random.Random) -> Verdict:
        return Verdict.DELEGATE

    async def keep_small_step(self, draft: SmallStepDraft) -> bool:
        return True


class GlimpsePolicy(RoutingPolicy):
    """The paper's method: intervene when H_init > threshold."""

    name = "glimpse"
    needs_probe = True

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    @property
    def gate_threshold(self) -> float | None:
        return self.threshold if type(self).choose is GlimpsePolicy.choose else None  # unless a subclass decides

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


class StepEntropyPolicy(RoutingPolicy):
    """Generate, then measure: the small model writes the step; if the mean entropy of its
    token distributions exceeds the threshold, the large model writes the step again."""

    name = "step_entropy"
    measures_steps = True

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    async def keep_small_step(self, draft: SmallStepDraft) -> bool:
        return draft.mean_entropy <= self.threshold


class StepPerplexityPolicy(RoutingPolicy):
    """Generate, then measure: rewrite the step with the large model when its perplexity under
    the small model, exp(-mean log p), exceeds the threshold."""

    name = "step_perplexity"
    measures_steps = True

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    async def keep_small_step(self, draft: SmallStepDraft) -> bool:
        return draft.perplexity <= self.threshold


SPECREASON_PROMPT = "\n\nIs the last step correct and useful? Rate it from 0 (wrong) to 9 (certainly right). Score: "


class SpecReasonPolicy(RoutingPolicy):
    """SpecReason: the small model writes the step, the large model scores it 0-9 from its
    one-token distribution over the digits (the expected digit), and a step scoring below the
    threshold is written again by the large model."""

    name = "specreason"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    async def keep_small_step(self, draft: SmallStepDraft) -> bool:
        assert draft.score_with_large is not None, "the router provides the judge"
        return expected_digit(await draft.score_with_large(SPECREASON_PROMPT)) >= self.threshold


def expected_digit(digit_logprobs: dict[str, float]) -> float:
    """Mean of the digits 0-9 under their probabilities, renormalised over the digits given."""
    weights = {d: math.exp(lp) for d, lp in digit_logprobs.items() if d in SCORE_DIGITS}
    total = sum(weights.values())
    return sum(int(d) * w for d, w in weights.items()) / total if total > 0 else 0.0


def make_policy(config: RouterConfig) -> RoutingPolicy:
    """The policy named by `config.policy`, with its parameters from `config`."""
    by_threshold = {
        "glimpse": GlimpsePolicy,
        "step_entropy": StepEntropyPolicy,
        "step_perplexity": StepPerplexityPolicy,
        "specreason": SpecReasonPolicy,
    }
    if config.policy in by_threshold:
        return by_threshold[config.policy](config.threshold)
    if config.policy == "always_large":
        return AlwaysLargePolicy()
    if config.policy == "random":
        return RandomPolicy(config.random_rate)
    return RoutingPolicy()
