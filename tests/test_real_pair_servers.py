"""The paper's pair (tiny Qwen3 small, tiny R1-Distill large, real tokenizers and templates) on two
real `vllm serve` (the servers backend; the small one runs Glimp's entropy gate), and through
`glimp serve` over them: chat completions and the Responses API, whole and streamed."""

from __future__ import annotations

import json

import httpx
import pytest

from glimp_integrations import GlimpRouter
from glimp_integrations.backends.gate_arguments import GATE_PROCESSOR
from glimp_integrations.serve import running_server
from tests.cutting_proxy import cutting_proxy
from tests.real_pairs import LARGE_R1, QWEN3, R1_DISTILL, SMALL_QWEN3, tiny_model
from tests.test_real_pair import QUESTION, THINK, raw_chain
from tests.vllm_servers import vllm_server

pytestmark = [pytest.mark.vllm, pytest.mark.realtok]

STEPS = [("small", "delegate", "Let me think.\n\n"), ("large", "intervene", "Okay, so"), ("large", "forced", "42")]


@pytest.fixture(scope="module")
def servers():
    small, large = tiny_model(QWEN3, SMALL_QWEN3), tiny_model(R1_DISTILL, LARGE_R1)
    with vllm_server("-1", "--logits-processors", GATE_PROCESSOR, model=str(small)) as small_url:
        with vllm_server("-1", model=str(large)) as large_url:
            yield small_url, large_url


@pytest.fixture(scope="module")
def servers_pair(servers):
    router = GlimpRouter(*servers, backend="openai", temperature=0, threshold=1.0, reasoning_budget=40)
    yield router
    router.close()


def test_the_gate_on_vllm_serve_ends_the_step_inside_a_token_and_each_server_gets_its_own_tokens(servers):
    """Every request goes through a recording proxy: the small server's gated request ends the step
    where ".\\n\\n" holds the separator; the large server's last request is its own template, then the
    chain in its own tokens (text from the other vocabulary, encoded by R1's tokenizer)."""
    proxies = {role: cutting_proxy(url, cut_after=10**9) for role, url in zip(("small", "large"), servers)}
    try:
        urls = [f"http://127.0.0.1:{proxy.server_address[1]}/v1" for _, proxy in proxies.values()]
        with GlimpRouter(*urls, backend="openai", temperature=0, threshold=1.0, reasoning_budget=40) as router:
            trace = router.run(QUESTION)
            tokenizer = router.backend.tokenizer("large")
    finally:
        for _, proxy in proxies.values():
            proxy.shutdown()
    assert [(s.model, s.decision, s.text) for s in trace.steps] == STEPS
    assert trace.steps[0].probe.basis in ("gate", "full") and trace.steps[1].finish_reason == "end_of_reasoning"
    small_requests, large_requests = (proxies[role][0].streamed for role in ("small", "large"))
    assert "glimp_gate_separator" in small_requests[0]["request"]["vllm_xargs"]
    last = large_requests[-1]
    prompt_ids = last["events"][0]["choices"][0]["prompt_token_ids"]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(prompt_ids, skip_special_tokens=False) == rendered + raw_chain(trace)
    assert prompt_ids.count(THINK[R1_DISTILL][0]) == 1 and prompt_ids.count(THINK[R1_DISTILL][1]) == 1


def test_glimp_serve_over_the_servers_chat_and_responses_whole_and_streamed(servers_pair):
    body = {"model": "glimp", "messages": [{"role": "user", "content": QUESTION}]}
    with running_server(servers_pair) as url:
        chat = httpx.post(url + "/chat/completions", json=body, timeout=120).json()
        with httpx.stream("POST", url + "/chat/completions", json={**body, "stream": True}, timeout=120) as stream:
            chunks = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
        response = httpx.post(url + "/responses", json={"model": "glimp", "input": QUESTION}, timeout=120).json()
        with httpx.stream(
            "POST", url + "/responses", json={"model": "glimp", "input": QUESTION, "stream": True}, timeout=120
        ) as stream:
            events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    message = chat["choices"][0]["message"]
    assert message["content"] == "42" and message["reasoning"] == "Let me think.\n\nOkay, so"
    assert [(s["model"], s["decision"]) for s in chat["glimp"]["steps"]] == [(m, d) for m, d, _ in STEPS]
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    assert "".join(d.get("content") or "" for d in deltas) == "42"
    assert "".join(d.get("reasoning") or "" for d in deltas) == message["reasoning"]
    reasoning = [item["content"][0]["text"] for item in response["output"] if item["type"] == "reasoning"]
    answer = [item for item in response["output"] if item["type"] == "message"]
    assert reasoning == ["Let me think.\n\n", "Okay, so"] and answer[0]["content"][0]["text"] == "42"
    streamed = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert streamed == "42" and events[-1]["type"] == "response.completed"
