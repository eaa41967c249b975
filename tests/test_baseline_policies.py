"""The paper's generate-then-measure baselines: which steps are rewritten, which tokens are wasted."""

import math

import pytest

from glimp_integrations import StepDiscarded
from glimp_integrations.policies import SPECREASON_PROMPT, expected_digit
from tests.conftest import scripted_router, step


def measured(text, entropy=0.1, logprob=-0.1):
    entry = step(text)
    entry.token_entropies = [entropy] * len(entry.tokens)
    entry.token_logprobs = [logprob] * len(entry.tokens)
    return entry


def test_step_entropy_rewrites_uncertain_steps_and_counts_the_waste():
    router, _ = scripted_router(
        [
            measured("sure step\n\n", entropy=0.2),
            measured("shaky guess here\n\n", entropy=1.5),
            measured("done", entropy=0.1),
        ],
        [step("Large rewrite.\n\n")],
        policy="step_entropy",
        threshold=0.9,
    )
    events = list(router.stream("q"))
    trace = events[-1].trace
    assert [(s.model, s.decision, s.basis, s.discarded_tokens) for s in trace.steps] == [
        ("small", "delegate", "policy", 0),
        ("large", "intervene", "policy", 4),
        ("small", "delegate", "policy", 0),
    ]
    assert trace.steps[1].text == "Large rewrite.\n\n" and trace.discarded_tokens == 4
    assert [e.text for e in events if isinstance(e, StepDiscarded)] == ["shaky guess here\n\n"]
    assert trace.probe_count == 0  # generate-then-measure needs no probe


def test_step_perplexity_uses_exp_of_the_mean_negative_logprob():
    # perplexity exp(0.5) = 1.65 passes a threshold of 2; exp(1.0) = 2.72 does not
    router, _ = scripted_router(
        [measured("fluent\n\n", logprob=-0.5), measured("odd\n\n", logprob=-1.0)],
        [step("L\n\n")],
        policy="step_perplexity",
        threshold=2.0,
        reasoning_budget=6,
    )
    trace = router.run("q")
    assert [s.model for s in trace.steps[:2]] == ["small", "large"]
    assert trace.steps[1].discarded_tokens == 2


def test_specreason_asks_the_large_model_to_score_each_small_step():
    small = [step("good step\n\n"), step("bad step\n\n"), step("end")]
    large = [step("judge 1"), step("judge 2"), step("Fixed step.\n\n"), step("judge 3")]
    large[0].judge_logprobs = {"9": math.log(0.8), "8": math.log(0.2)}  # expected 8.8: keep
    large[1].judge_logprobs = {"2": math.log(0.5), "3": math.log(0.5)}  # expected 2.5: rewrite
    large[3].judge_logprobs = {"9": 0.0}
    router, backend = scripted_router(small, large, policy="specreason", threshold=7)
    trace = router.run("q")
    assert [(s.model, s.discarded_tokens) for s in trace.steps] == [("small", 0), ("large", 3), ("small", 0)]
    assert trace.steps[1].text == "Fixed step.\n\n"
    assert [suffix for role, suffix in backend.judge_requests] == [
        "good step\n\n" + SPECREASON_PROMPT,
        "bad step\n\n" + SPECREASON_PROMPT,
        "end" + SPECREASON_PROMPT,
    ]


@pytest.mark.parametrize(
    "digits, expected",
    [
        ({"9": 0.0}, 9.0),
        ({"0": math.log(0.5), "4": math.log(0.5)}, 2.0),
        ({}, 0.0),
        ({"7": math.log(0.1), "x": 0.0}, 7.0),
    ],
)
def test_expected_digit(digits, expected):
    assert expected_digit(digits) == pytest.approx(expected)


@pytest.mark.embedded
@pytest.mark.parametrize(
    "policy, threshold, writer",
    [
        ("step_entropy", math.inf, "small"),
        ("step_entropy", 0.0, "large"),
        ("step_perplexity", math.inf, "small"),
        ("step_perplexity", 1.0, "large"),
        ("specreason", 0.0, "small"),
        ("specreason", 9.5, "large"),
    ],
)
def test_baselines_on_the_real_model(embedded_router, policy, threshold, writer):
    trace = embedded_router.run(
        "Name three colours, one per paragraph.",
        policy=policy,
        threshold=threshold,
        reasoning_budget=30,
        max_step_tokens=10,
    )
    assert {s.model for s in trace.steps} == {writer}
    assert (trace.discarded_tokens > 0) == (writer == "large")
