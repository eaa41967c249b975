"""Shared fixtures.  Markers: `embedded` tests load the real SmolLM2 model (CPU, offline)."""

from __future__ import annotations

import math

import pytest

from glimp_integrations import GlimpRouter, RoutingPolicy, ScriptedBackend, ScriptedModel, ScriptedStep, Verdict


def distribution_with_entropy(target: float, vocab_size: int = 1000, tail: str = "flat") -> list[float]:
    """Logprobs (sorted descending) of a distribution whose entropy is `target` nats: one token
    at p and the rest shaped by `tail` ("flat": uniform, top-k bounds are then exact; "zipf":
    proportional to 1/rank, a long tail that top-k bounds cannot pin down), with p found by
    bisection (entropy falls as p grows)."""
    shape = [1.0] * (vocab_size - 1) if tail == "flat" else [1.0 / r for r in range(1, vocab_size)]
    total = sum(shape)
    shape_entropy = -sum(w / total * math.log(w / total) for w in shape)

    def entropy(p: float) -> float:
        return -(p * math.log(p)) - (1 - p) * math.log(1 - p) + (1 - p) * shape_entropy

    low, high = 1.0 / vocab_size, 1.0 - 1e-15
    assert entropy(high) <= target <= entropy(low), "target outside what this family reaches"
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if entropy(mid) > target else (low, mid)
    p = (low + high) / 2
    return sorted([math.log(p)] + [math.log((1 - p) * w / total) for w in shape], reverse=True)


class ScriptedChoices(RoutingPolicy):
    """A policy that answers its steps from a script: each a Verdict, or an exception to raise
    (a policy with a bug); the last one holds for every later step.  With `probes`, the router
    still probes the small model before each step (its requests happen) and the script decides:
    a real model's routing then holds on any machine, whatever its numerics."""

    name = "scripted"

    def __init__(self, *choices: Verdict | Exception, probes: bool = False) -> None:
        self._choices = list(choices)
        self.needs_probe = probes

    def choose(self, bounds, rng) -> Verdict:
        choice = self._choices.pop(0) if len(self._choices) > 1 else self._choices[0]
        if isinstance(choice, Exception):
            raise choice
        return choice


def step(text: str, entropy: float = 0.1, vocab_size: int = 1000, tail: str = "flat") -> ScriptedStep:
    """A scripted step: `text` split into word tokens (whitespace kept), first-token entropy given."""
    tokens, current = [], ""
    for char in text:
        current += char
        if char in " \n":
            tokens.append(current)
            current = ""
    if current:
        tokens.append(current)
    return ScriptedStep(tokens=tokens, first_logprobs=distribution_with_entropy(entropy, vocab_size, tail))


def scripted_router(
    small_steps, large_steps, *, think=False, top_k_only=False, max_top_k=None, context_window=4096, **config
) -> tuple[GlimpRouter, ScriptedBackend]:
    backend = ScriptedBackend(
        ScriptedModel(
            "tiny",
            list(small_steps),
            knows_think_tags=think,
            top_k_only=top_k_only,
            max_top_k=max_top_k,
            context_window=context_window,
        ),
        ScriptedModel("huge", list(large_steps), knows_think_tags=think, context_window=context_window),
    )
    return GlimpRouter(backend=backend, **config), backend


@pytest.fixture(scope="session")
def embedded_router() -> GlimpRouter:
    """The embedded pair (loaded once for the session) in `plain` mode, where the whole response is
    routed step by step: the tests of routing mechanics read that.  Its default is `think` mode."""
    return GlimpRouter(seed=0, reasoning_mode="plain")
