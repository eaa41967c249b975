import math
import random

import pytest

from glimp_integrations import (
    EntropyBounds,
    Verdict,
    entropy_bounds,
    entropy_nats,
    verdict,
)
from glimp_integrations.backends.base import TokenDistribution
from tests.conftest import distribution_with_entropy


def logprobs_of(probs):
    return [math.log(p) for p in probs]


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_uniform_distribution_has_entropy_ln_n(n):
    assert entropy_nats(logprobs_of([1 / n] * n)) == pytest.approx(math.log(n))


def test_one_hot_has_zero_entropy_and_zero_probability_tokens_are_ignored():
    assert entropy_nats([0.0, -math.inf, -math.inf]) == 0.0


@pytest.mark.parametrize("target", [0.01, 0.5, 0.9, 2.0, 5.0])
def test_helper_builds_the_entropy_it_promises(target):
    assert entropy_nats(distribution_with_entropy(target)) == pytest.approx(target, abs=1e-9)


def test_full_vocabulary_bounds_are_exact():
    probs = [0.5, 0.25, 0.125, 0.125]
    bounds = entropy_bounds(logprobs_of(probs), vocab_size=4)
    assert bounds.exact
    assert bounds.lower == pytest.approx(entropy_nats(logprobs_of(probs)))


def test_bounds_on_a_hand_computed_tail():
    # top-2 of a 10-token vocabulary: 0.5, 0.2 known; tail mass 0.3 over 8 tokens, each <= 0.2
    bounds = entropy_bounds(logprobs_of([0.5, 0.2]), vocab_size=10)
    head = -(0.5 * math.log(0.5) + 0.2 * math.log(0.2))
    assert bounds.lower == pytest.approx(head - 0.2 * math.log(0.2) - 0.1 * math.log(0.1))
    assert bounds.upper == pytest.approx(head + 0.3 * math.log(8 / 0.3))


def test_bounds_contain_the_exact_entropy_of_random_distributions():
    rng = random.Random(0)
    for _ in range(300):
        vocab = rng.randint(2, 400)
        weights = [rng.random() ** rng.choice([1, 4, 12]) for _ in range(vocab)]
        total = sum(weights)
        probs = sorted((w / total for w in weights), reverse=True)
        exact = entropy_nats(logprobs_of(probs))
        for k in {1, min(5, vocab), min(20, vocab), vocab}:
            bounds = entropy_bounds(logprobs_of(probs[:k]), vocab)
            assert bounds.lower - 1e-9 <= exact <= bounds.upper + 1e-9, (vocab, k)


def test_bounds_narrow_as_k_grows():
    probs = sorted((1 / (i + 1) for i in range(500)), reverse=True)
    total = sum(probs)
    logprobs = logprobs_of([p / total for p in probs])
    widths = [entropy_bounds(logprobs[:k], 500).width for k in (5, 20, 100, 400)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0]


@pytest.mark.parametrize(
    "lower, upper, threshold, expected",
    [
        (0.1, 0.5, 0.9, Verdict.DELEGATE),
        (0.9, 0.9, 0.9, Verdict.UNDECIDED),  # top-k bounds at tau: rounding could tip them
        (0.5, 0.9 - 1e-6, 0.9, Verdict.DELEGATE),
        (1.0, 2.0, 0.9, Verdict.INTERVENE),
        (0.5, 1.5, 0.9, Verdict.UNDECIDED),
        (5.0, 9.0, math.inf, Verdict.DELEGATE),
        (0.0, 0.0, 0.0, Verdict.UNDECIDED),
    ],
)
def test_verdict(lower, upper, threshold, expected):
    assert verdict(EntropyBounds(lower, upper), threshold) is expected


@pytest.mark.parametrize("entropy, expected", [(0.9, Verdict.DELEGATE), (0.9 + 1e-12, Verdict.INTERVENE)])
def test_exact_entropy_is_compared_as_is(entropy, expected):
    assert verdict(EntropyBounds(entropy, entropy, exact=True), 0.9) is expected


def test_distribution_prefers_the_exact_entropy_when_given():
    distribution = TokenDistribution((-0.1, -3.0), vocab_size=50_000, exact_entropy=0.42)
    assert distribution.is_full and distribution.bounds() == EntropyBounds(0.42, 0.42, exact=True)


def test_bounds_reject_more_logprobs_than_the_vocabulary():
    with pytest.raises(ValueError, match="vocabulary of 2"):
        entropy_bounds([-1.0, -1.0, -1.0], vocab_size=2)
