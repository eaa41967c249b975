"""The routing loop on the scripted backend: exact, fast, no model."""

import asyncio
import json
import math

import pytest

from glimp_integrations import (
    GlimpRunError,
    RoutingPolicy,
    StepDiscarded,
    StepFinished,
    StepStarted,
    TokenDelta,
)
from tests.conftest import scripted_router, step


def test_low_entropy_steps_are_delegated_and_high_ones_go_to_the_large_model():
    router, _backend = scripted_router(
        [step("Easy one.\n\n", 0.1), step("unused small text\n\n", 2.0), step("Easy again.", 0.3)],
        [step("Hard part by large.\n\n")],
        threshold=0.9,
    )
    trace = router.run("q")
    assert [(s.model, s.decision) for s in trace.steps] == [
        ("small", "delegate"),
        ("large", "intervene"),
        ("small", "delegate"),
    ]
    assert [s.text for s in trace.steps] == ["Easy one.\n\n", "Hard part by large.\n\n", "Easy again."]
    assert trace.answer == "Easy one.\n\nHard part by large.\n\nEasy again."
    assert [round(s.h_init, 6) for s in trace.steps] == [0.1, 2.0, 0.3]
    assert trace.intervention_rate == pytest.approx(1 / 3)
    assert trace.tokens_by_model == {"small": 5, "large": 5}  # "one.\n" and "\n" are two tokens
    assert trace.finish_reason == "stop" and trace.mode == "plain"


def test_the_probe_token_is_kept_as_the_delegated_steps_first_token():
    router, backend = scripted_router([step("A b c.\n\n", 0.1), step("D e.", 0.1)], [])
    trace = router.run("q")
    # each delegated step consumed exactly one scripted entry: the probe and the step are one
    assert backend.steps_taken["small"] == 2
    assert trace.steps[0].tokens == 4 and trace.steps[0].text.startswith("A ")
    assert [r for r, _ in backend.probe_requests] == ["small", "small"]


def test_think_mode_routes_the_reasoning_and_the_large_model_always_answers():
    router, _ = scripted_router(
        [step("Let me add.\n\n", 0.1), step("So 42. </think>", 0.2)],
        [step("The answer is 42.")],
        think=True,
    )
    trace = router.run("What is 12+30?")
    assert trace.mode == "think"
    assert [(s.model, s.phase, s.decision) for s in trace.steps] == [
        ("small", "reasoning", "delegate"),
        ("small", "reasoning", "delegate"),
        ("large", "answer", "forced"),
    ]
    assert trace.steps[1].finish_reason == "end_of_reasoning"
    assert trace.reasoning == "Let me add.\n\nSo 42."
    assert trace.answer == "The answer is 42."
    assert trace.routed_steps == trace.steps[:2]


def test_reasoning_budget_closes_the_reasoning_and_the_large_model_answers():
    router, _backend = scripted_router(
        [step("one two three four five six seven eight\n\n", 0.1)] * 5, [step("Final.")], think=True, reasoning_budget=5
    )
    trace = router.run("q")
    reasoning = [s for s in trace.steps if s.phase == "reasoning"]
    assert sum(s.tokens for s in reasoning) == 5
    assert reasoning[-1].finish_reason == "budget"
    assert trace.steps[-1].model == "large" and trace.answer == "Final."
    assert trace.finish_reason == "stop"


def test_plain_mode_budget_stops_the_run():
    router, _ = scripted_router([step("a b c\n\n", 0.1)] * 10, [], reasoning_budget=7)
    trace = router.run("q")
    assert trace.completion_tokens == 7 and trace.finish_reason == "budget"
    assert trace.steps[-1].finish_reason == "budget"


def test_max_step_tokens_cuts_a_step_and_routing_resumes():
    router, _ = scripted_router([step("a b c d e f\n\n", 0.1), step("g h", 0.1)], [], max_step_tokens=4)
    trace = router.run("q")
    assert [s.tokens for s in trace.steps] == [4, 2]
    assert trace.steps[0].finish_reason == "step_limit"


def test_a_step_ends_at_a_custom_separator():
    router, _ = scripted_router([step("x ; y ; z", 0.1), step("w", 0.1)], [], step_separator=";")
    trace = router.run("q")
    assert [s.text for s in trace.steps] == ["x ; ", "w"]
    assert trace.steps[0].finish_reason == "separator"


def test_top_k_probes_escalate_only_when_the_bounds_straddle_the_threshold():
    # entropies far from tau are settled by top-20; one close to tau needs more
    router, backend = scripted_router(
        [
            step("far below\n\n", 0.05, tail="zipf"),
            step("near tau\n\n", 0.88, tail="zipf"),
            step("far above\n\n", 4.0, tail="zipf"),
        ],
        [step("large step\n\n")],
        top_k_only=True,
        threshold=0.9,
        probe_ladder=(20, 1000, None),
    )
    trace = router.run("q")
    probes = [s.probe for s in trace.steps]
    assert [p.escalations for p in probes[:3]] == [0, probes[1].escalations, 0]
    assert probes[1].escalations >= 1 and probes[1].h_upper - probes[1].h_lower < probes[0].h_upper
    assert [s.decision for s in trace.steps[:3]] == ["delegate", "delegate", "intervene"]
    for p, exact in zip(probes, (0.05, 0.88, 4.0)):
        assert p.h_lower - 1e-9 <= exact <= p.h_upper + 1e-9
    assert backend.probe_requests[:1] == [("small", 20)]
    assert trace.escalations == probes[1].escalations


@pytest.mark.parametrize("cap, ladder", [(20, [20]), (50, [20, 50]), (100, [20, 100])])
def test_a_capped_backend_climbs_to_its_cap_then_decides_from_the_midpoint(cap, ladder):
    steps = [step("far below\n\n", 0.05, tail="zipf"), step("near tau\n\n", 0.8999, tail="zipf")]
    router, backend = scripted_router(
        steps, [step("large step\n\n")], max_top_k=cap, threshold=0.9, probe_ladder=(20, 1000, None)
    )
    far, near = (s.probe for s in router.run("q").steps[:2])
    assert far.basis == "bounds" and far.escalations == 0
    asked = [k for _, k in backend.probe_requests]
    assert asked[: 1 + len(ladder)] == [20, *ladder] and max(asked) == cap  # never past the cap, never everything
    assert near.basis == "capped" and near.top_k == cap and near.h_lower <= 0.9 < near.h_upper
    assert near.h_init == pytest.approx((near.h_lower + near.h_upper) / 2)
    assert (near.h_init > 0.9) == (router.run("q").steps[1].model == "large")


@pytest.mark.parametrize("entropy", [0.5, 0.89, 0.9, 0.91, 1.3])
def test_bounded_decisions_equal_exact_ones(entropy):
    bounded, _ = scripted_router([step("s\n\n", entropy)], [step("l\n\n")], top_k_only=True)
    exact, _ = scripted_router([step("s\n\n", entropy)], [step("l\n\n")])
    exact_step = exact.run("q").steps[0]
    assert bounded.run("q").steps[0].decision == exact_step.decision
    assert exact_step.probe.basis == "full"


@pytest.mark.parametrize(
    "policy, expected", [("always_small", ["small", "small"]), ("always_large", ["large", "large"])]
)
def test_fixed_policies_need_no_probe(policy, expected):
    router, backend = scripted_router([step("a\n\n"), step("b")], [step("A\n\n"), step("B")], policy=policy)
    trace = router.run("q")
    assert [s.model for s in trace.steps] == expected
    assert backend.probe_requests == [] and trace.probe_count == 0
    assert all(s.basis == "policy" for s in trace.steps)


def test_random_policy_is_seeded():
    def models(seed):
        router, _ = scripted_router(
            [step("s\n\n")] * 12, [step("l\n\n")] * 12, policy="random", random_rate=0.5, seed=seed, reasoning_budget=12
        )
        return [s.model for s in router.run("q").steps]

    assert models(3) == models(3)
    assert {"small", "large"} <= set(models(3))


class RejectLongSteps(RoutingPolicy):
    """A generate-then-measure policy: the small model writes, long steps are rewritten."""

    name = "reject_long"

    async def keep_small_step(self, draft):
        return draft.tokens < 3


def test_generate_then_measure_policies_rewrite_and_record_wasted_tokens():
    router, _backend = scripted_router(
        [step("ok\n\n"), step("far too long step\n\n"), step("end")],
        [step("Better.\n\n")],
        policy=RejectLongSteps(),
        reasoning_budget=20,
    )
    events = list(router.stream("q"))
    trace = events[-1].trace
    assert [(s.model, s.discarded_tokens) for s in trace.steps] == [("small", 0), ("large", 5), ("small", 0)]
    assert trace.steps[1].text == "Better.\n\n" and trace.discarded_tokens == 5
    discarded = [e for e in events if isinstance(e, StepDiscarded)]
    assert [(e.index, e.text) for e in discarded] == [(1, "far too long step\n\n")]


def test_events_arrive_in_order_and_rebuild_the_trace():
    router, _ = scripted_router([step("one two\n\n", 0.1), step("x", 3.0)], [step("big step")])
    events = list(router.stream("q"))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "StepStarted" and kinds[-1] == "RunFinished"
    trace = events[-1].trace
    for s in trace.steps:
        deltas = [e.text for e in events if isinstance(e, TokenDelta) and e.index == s.index]
        assert "".join(deltas) == s.text
    starts = [e for e in events if isinstance(e, StepStarted)]
    assert [(e.model, e.decision) for e in starts] == [("small", "delegate"), ("large", "intervene")]
    assert [e.step for e in events if isinstance(e, StepFinished)] == trace.steps


async def test_async_run_and_concurrent_runs():
    router, _ = scripted_router([step("a\n\n", 0.1)] * 10, [step("B\n\n")] * 10, reasoning_budget=3)
    traces = await asyncio.gather(*(router.arun(f"q{i}") for i in range(4)))
    assert all(isinstance(t.answer, str) and t.completion_tokens == 3 for t in traces)


async def test_closing_the_stream_early_closes_the_run():
    router, _ = scripted_router([step("a b c\n\n", 0.1)] * 5, [])
    stream = router.astream("q")
    first = await stream.__anext__()
    assert isinstance(first, StepStarted)
    await stream.aclose()
    # the router still serves runs afterwards
    assert (await router.arun("again")).steps


def test_trace_is_json_serialisable_with_infinite_threshold():
    router, _ = scripted_router([step("a\n\n", 5.0), step("b", 6.0)], [], threshold=math.inf)
    trace = router.run("q")
    data = json.loads(trace.to_json())
    assert data["threshold"] == "inf" and data["intervention_rate"] == 0.0
    assert [s["model"] for s in data["steps"]] == ["small", "small"]
    assert data["steps"][0]["h_init"] == pytest.approx(5.0)
    assert data["tokens_by_model"] == {"small": 3, "large": 0}


def test_per_run_overrides_do_not_change_the_router():
    router, _ = scripted_router([step("s\n\n", 0.5)] * 2, [step("L\n\n")] * 2)
    assert router.run("q", threshold=0.1).steps[0].model == "large"
    assert router.config.threshold == 0.9


def test_a_backend_failure_mid_run_carries_the_partial_trace():
    router, backend = scripted_router([step("fine\n\n", 0.1), step("x", 0.1)], [])

    async def broken(*args):
        raise ConnectionError("server went away")

    original = backend.open_session

    async def open_session(role, spec):
        session = await original(role, spec)
        if role == "small":
            calls = {"n": 0}
            probe = session.probe

            async def flaky(*args):
                calls["n"] += 1
                return await (probe(*args) if calls["n"] == 1 else broken(*args))

            session.probe = flaky
        return session

    backend.open_session = open_session
    with pytest.raises(GlimpRunError, match="server went away") as info:
        router.run("q")
    assert [s.text for s in info.value.partial_trace.steps] == ["fine\n\n"]


def test_a_per_run_policy_name_overrides_a_custom_policy():
    router, _ = scripted_router([step("ok\n\n"), step("x")], [step("L\n\n"), step("M")], policy=RejectLongSteps())
    assert {s.model for s in router.run("q", policy="always_large").steps} == {"large"}
    assert router.run("q").steps[0].model == "small"


def test_identical_steps_in_a_row_end_the_reasoning_and_the_large_model_answers():
    """A small model that loops: the third identical step ends the reasoning (`max_repeated_steps`,
    3 by default), the trace says so, and the large model answers after the closing tag."""
    router, backend = scripted_router(
        [step("Let me think.\n\n", 0.1)] * 20, [step("It is 42.", 0.1)], think=True, reasoning_budget=1000
    )
    trace = router.run("q")
    assert [s.text for s in trace.steps] == ["Let me think.\n\n"] * 3 + ["It is 42."]
    assert [s.finish_reason for s in trace.steps[:3]] == ["separator", "separator", "repetition"]
    assert trace.answer == "It is 42." and trace.finish_reason == "stop"


@pytest.mark.parametrize("limit", [2, 5, None])
def test_max_repeated_steps_sets_how_many_end_a_plain_response(limit):
    router, _ = scripted_router([step("again\n\n", 0.1)] * 12, [], reasoning_budget=1000, max_repeated_steps=limit)
    trace = router.run("q")
    repeated = [s for s in trace.steps if s.text == "again\n\n"]
    assert len(repeated) == (limit or 12)
    assert trace.finish_reason == ("repetition" if limit else "stop")
    assert trace.steps[-1].finish_reason == ("repetition" if limit else "stop")


def test_steps_that_differ_between_repeats_do_not_end_the_reasoning():
    router, _ = scripted_router([step("a\n\n"), step("a\n\n"), step("b\n\n"), step("a\n\n"), step("a\n\n")], [])
    trace = router.run("q")
    assert [s.text for s in trace.steps[:5]] == ["a\n\n", "a\n\n", "b\n\n", "a\n\n", "a\n\n"]
    assert trace.finish_reason == "stop" and "repetition" not in {s.finish_reason for s in trace.steps}
