"""The paper's pair (tiny Qwen3 small, tiny R1-Distill large, on the real tokenizers and templates)
on the real vLLM engine in this process, the small model drafting for the large one: routing by the
in-engine entropy gate, step ends inside the token ".\\n\\n", what each model's requests held, and
speculative decoding across the two vocabularies."""

from __future__ import annotations

import pytest

from glimp_integrations import GlimpRouter
from glimp_integrations.backends.base import vocabulary_digest
from tests.real_pairs import LARGE_R1, QWEN3, R1_DISTILL, SMALL_QWEN3, tiny_model
from tests.test_real_pair import QUESTION, THINK, raw_chain

pytestmark = [pytest.mark.vllm, pytest.mark.realtok]


@pytest.fixture(scope="module")
def vllm_pair():
    with vllm_router(R1_DISTILL) as router:
        yield router


def vllm_router(large_name: str) -> GlimpRouter:
    """Tiny Qwen3 (small) and a tiny `large_name` on vLLM in process, the small model drafting."""
    return GlimpRouter(
        str(tiny_model(QWEN3, SMALL_QWEN3)),
        str(tiny_model(large_name, LARGE_R1)),
        backend="vllm",
        speculative=True,
        temperature=0,
        threshold=1.0,
        reasoning_budget=40,
        answer_budget=8,
        backend_options={"max_model_len": 2048},
    )


def test_the_pair_routes_closes_and_hands_over_on_the_vllm_engine(vllm_pair, monkeypatch):
    requests: dict[str, list[list[int]]] = {"small": [], "large": []}
    for role, model in vllm_pair.backend.models.items():
        stream = type(model).stream
        monkeypatch.setattr(
            model,
            "stream",
            lambda ids, params, session=None, _role=role, _model=model, _stream=stream: (
                requests[_role].append(list(ids)) or _stream(_model, ids, params, session)
            ),
        )
    trace = vllm_pair.run(QUESTION)
    assert [(s.model, s.decision, s.text) for s in trace.steps] == [
        ("small", "delegate", "Let me think.\n\n"),  # the gate found the separator inside ".\n\n"
        ("large", "intervene", "Okay, so"),
        ("large", "forced", "42"),
    ]
    assert trace.steps[0].probe.basis == "full" and trace.steps[1].finish_reason == "end_of_reasoning"
    small_prompt, large_answer = requests["small"][0], requests["large"][-1]
    assert small_prompt.count(THINK[QWEN3][0]) == 1 and large_answer.count(THINK[R1_DISTILL][0]) == 1
    # the large model's last request: its own template, then exactly the chain in its own tokens
    tokenizer = vllm_pair.backend.tokenizer("large")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(large_answer, skip_special_tokens=False) == prompt + raw_chain(trace)
    assert large_answer.count(THINK[R1_DISTILL][1]) == 1 and THINK[QWEN3][1] not in large_answer


def test_streamed_steps_and_every_small_step_on_the_vllm_engine(vllm_pair):
    events = list(vllm_pair.stream(QUESTION, threshold=float("inf")))
    trace = events[-1].trace
    assert [(s.model, s.text) for s in trace.steps] == [
        ("small", "Let me think.\n\n"),
        ("small", "So"),
        ("large", "42"),
    ]
    streamed = "".join(e.text for e in events if getattr(e, "phase", None) == "reasoning" and hasattr(e, "text"))
    assert streamed == trace.reasoning


def check_drafting(router: GlimpRouter, trace, one_vocabulary: bool) -> None:
    """One vocabulary: the steps hand over as token ids and the draft needs no mapping; two: vLLM maps
    the draft's tokens by text.  The draft knows the answer's tokens after the closing tag: vLLM
    accepts them."""
    tokenizers = [router.backend.tokenizer(role) for role in ("small", "large")]
    assert (vocabulary_digest(tokenizers[0]) == vocabulary_digest(tokenizers[1])) == one_vocabulary
    assert all(s.drafted_tokens for s in trace.steps if s.model == "large") and trace.steps[-1].accepted_tokens >= 2


def test_the_small_model_drafts_across_the_pairs_vocabularies(vllm_pair):
    check_drafting(vllm_pair, vllm_pair.run(QUESTION), one_vocabulary=False)


def test_two_qwen3_share_one_vocabulary_and_the_small_one_drafts():
    with vllm_router(QWEN3) as router:
        trace = router.run(QUESTION)
        assert [(s.model, s.text) for s in trace.steps] == [
            ("small", "Let me think.\n\n"),
            ("large", "Okay, so"),
            ("large", "42"),
        ]
        check_drafting(router, trace, one_vocabulary=True)
