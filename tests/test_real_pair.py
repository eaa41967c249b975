"""The paper's pair on its real tokenizers and chat templates: small = Qwen3, large =
DeepSeek-R1-Distill (tiny models from the real files, `tests/real_pairs.py`), on the transformers
backend.  Two vocabularies, two templates, two sets of think-marker ids: what a user with two GPUs
meets on the first day."""

from __future__ import annotations

import hashlib
import json
import math
import re

import pytest

from glimp_integrations import GlimpConfigError, GlimpRouter
from glimp_integrations.backends.transformers import TransformersBackend
from glimp_integrations.embedded import embedded_model_dir
from tests.real_pairs import (
    LARGE_R1,
    QWEN3,
    QWEN3_THINKING,
    R1_DISTILL,
    REALTOK,
    SHARED_TOKENIZER,
    SMALL_QWEN3,
    tiny_model,
)

pytestmark = pytest.mark.realtok

QUESTION = "What is 6 x 7?"
THINK = {QWEN3: (151667, 151668), QWEN3_THINKING: (151667, 151668), R1_DISTILL: (151648, 151649)}
"""Each tokenizer's own `<think>` and `</think>` ids."""


@pytest.mark.parametrize("name", [QWEN3, QWEN3_THINKING, R1_DISTILL])
def test_the_test_data_is_the_model_hubs_files(name):
    """Each file kept in tests/data/realtok has the sha256 its PROVENANCE.md records (the hub's)."""
    provenance = (REALTOK / name / "PROVENANCE.md").read_text()
    recorded = dict(re.findall(r"^\s+(\S+)\s+\d+\s+sha256=([0-9a-f]{64})", provenance, re.MULTILINE))
    folder = REALTOK / name
    files = [f for f in folder.iterdir() if f.name != "PROVENANCE.md"]
    if name in SHARED_TOKENIZER:
        files.append(REALTOK / SHARED_TOKENIZER[name] / "tokenizer.json")
    assert len(files) >= 4
    for file in files:
        assert hashlib.sha256(file.read_bytes()).hexdigest() == recorded[file.name], file


def transformers_pair(small: tuple, large: tuple, **settings) -> GlimpRouter:
    """A greedy router over two tiny models, each given as (name, script), on the transformers backend."""
    backend = TransformersBackend(str(tiny_model(*small)), str(tiny_model(*large)))
    return GlimpRouter(backend=backend, temperature=0, threshold=1.0, reasoning_budget=40, **settings)


@pytest.fixture(scope="module")
def paper_pair():
    """small = tiny Qwen3, large = tiny R1-Distill."""
    with transformers_pair((QWEN3, SMALL_QWEN3), (R1_DISTILL, LARGE_R1), answer_budget=8) as router:
        yield router


def seen_by(router: GlimpRouter, monkeypatch) -> dict[str, list]:
    """Collects, per role, the sessions that runs of `router` open (their contexts stay readable)."""
    sessions: dict[str, list] = {"small": [], "large": []}
    backend = router.backend
    open_session = type(backend).open_session

    async def recording(self, role, spec):
        session = await open_session(self, role, spec)
        sessions[role].append(session)
        return session

    monkeypatch.setattr(type(backend), "open_session", recording)
    return sessions


def context_ids(session) -> list[int]:
    return list(session._committed)


def raw_chain(trace) -> str:
    """The reasoning as the models wrote it: each step's text, the closing tag where a step closed it."""
    return "".join(
        s.text + ("</think>" if s.finish_reason == "end_of_reasoning" else "")
        for s in trace.steps
        if s.phase == "reasoning"
    )


@pytest.mark.vllm
def test_entropy_routes_the_pair_and_each_model_closes_with_its_own_think_id(paper_pair, monkeypatch):
    sessions = seen_by(paper_pair, monkeypatch)
    trace = paper_pair.run(QUESTION)
    assert [(s.model, s.decision, s.text) for s in trace.steps] == [
        ("small", "delegate", "Let me think.\n\n"),  # the separator ends inside the token ".\n\n"
        ("large", "intervene", "Okay, so"),
        ("large", "forced", "42"),
    ]
    assert trace.steps[0].probe.h_init < 0.1 and trace.steps[1].probe.h_init > 11  # far from the threshold
    assert trace.steps[1].finish_reason == "end_of_reasoning" and trace.finish_reason == "stop"
    small, large = (context_ids(sessions[role][0]) for role in ("small", "large"))
    # reasoning opened once in each prompt, with each tokenizer's own id (R1's template opens it itself)
    assert small.count(THINK[QWEN3][0]) == 1 and THINK[R1_DISTILL][0] not in small
    assert large.count(THINK[R1_DISTILL][0]) == 1 and THINK[QWEN3][0] not in large
    # the large model closed the reasoning with R1's `</think>`; the small model read it as Qwen3's
    assert large.count(THINK[R1_DISTILL][1]) == 1 and small.count(THINK[QWEN3][1]) == 1


@pytest.mark.vllm
def test_each_model_sees_its_own_template_then_exactly_the_chain(paper_pair, monkeypatch):
    """Cross-vocabulary handoff: the other model's steps go in as this model's tokens, and decoding
    what each model saw gives back its own template's prompt followed by exactly the steps."""
    sessions = seen_by(paper_pair, monkeypatch)
    for threshold in (1.0, math.inf, 0.0):  # mixed; every step small (it closes); every step large
        trace = paper_pair.run(QUESTION, threshold=threshold)
        chain = raw_chain(trace)
        assert chain.endswith("</think>")
        for role, name in (("small", QWEN3), ("large", R1_DISTILL)):
            session = sessions[role][-1]
            tokenizer = paper_pair.backend.tokenizer(role)
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
            )
            opened = prompt if prompt.endswith("<think>\n") else prompt + "<think>\n"
            seen = tokenizer.decode(context_ids(session), skip_special_tokens=False)
            answer = "\n\n42" if role == "large" else ""
            assert seen == opened + chain + answer, (role, threshold)
            # token for token: the context is the prompt's tokens, then the chain as this tokenizer encodes it
            expected = tokenizer.encode(opened, add_special_tokens=False) + tokenizer.encode(
                chain + answer, add_special_tokens=False
            )
            assert context_ids(session) == expected, (role, threshold)


@pytest.mark.vllm
def test_a_three_turn_chat_reaches_each_model_as_its_own_template_renders_it(paper_pair, monkeypatch):
    """Earlier turns' reasoning is dropped by each template's own rule (Qwen3 keeps it only after the
    last user turn; R1 drops what precedes `</think>`), whether sent as `reasoning_content` or inline."""
    sessions = seen_by(paper_pair, monkeypatch)
    chat = [
        {"role": "user", "content": "What is 6 x 7?"},
        {"role": "assistant", "content": "42", "reasoning_content": "SECRET-ONE six sevens"},
        {"role": "user", "content": "And 7 x 8?"},
        {"role": "assistant", "content": "<think>\nSECRET-TWO seven eights\n</think>\n\n56"},
        {"role": "user", "content": "And 8 x 9?"},
    ]
    trace = paper_pair.run(chat)
    assert trace.answer == "42"
    for role in ("small", "large"):
        tokenizer = paper_pair.backend.tokenizer(role)
        seen = tokenizer.decode(context_ids(sessions[role][-1]), skip_special_tokens=False)
        rendered = tokenizer.apply_chat_template(
            [*chat[:1], {**chat[1], "reasoning": chat[1]["reasoning_content"]}, *chat[2:]],
            tokenize=False,
            add_generation_prompt=True,
        )
        assert seen.startswith(rendered), role
        assert "SECRET" not in seen and "42" in rendered and "56" in rendered and "8 x 9" in rendered


@pytest.mark.vllm
def test_a_thinking_2507_small_model_whose_template_always_opens_the_reasoning(monkeypatch):
    with transformers_pair((QWEN3_THINKING, SMALL_QWEN3), (R1_DISTILL, LARGE_R1), answer_budget=8) as router:
        sessions = seen_by(router, monkeypatch)
        trace = router.run(QUESTION)
        assert router.backend.knows_think_tags("small") and trace.answer == "42"
    small = context_ids(sessions["small"][0])
    assert small.count(THINK[QWEN3_THINKING][0]) == 1  # the template opened it; Glimp did not again


@pytest.mark.vllm
def test_speculative_decoding_maps_the_pairs_added_tokens_and_refuses_another_vocabulary():
    """Qwen3 and R1-Distill share their base tokens but not their added ones (think markers,
    template tokens) nor their table sizes: vLLM maps the draft's tokens onto the target's by text
    (`use_heterogeneous_vocab`).  A draft of another vocabulary is refused, saying why."""
    from glimp_integrations.backends.speculative import speculative_config

    qwen3, r1 = str(tiny_model(QWEN3, SMALL_QWEN3)), str(tiny_model(R1_DISTILL, LARGE_R1))
    assert speculative_config(qwen3, r1, True)["use_heterogeneous_vocab"] is True
    with pytest.raises(GlimpConfigError, match="share the large model's vocabulary"):
        speculative_config(str(embedded_model_dir()), r1, True)


WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]


@pytest.fixture(scope="module")
def reverse_pair():
    """small = tiny R1-Distill, large = tiny Qwen3: the large model's template is Qwen3's (Hermes calls)."""
    with transformers_pair((R1_DISTILL, LARGE_R1), (QWEN3, SMALL_QWEN3), answer_budget=80) as router:
        yield router


@pytest.mark.vllm
@pytest.mark.parametrize("pair, family", [("paper_pair", "deepseek_v3"), ("reverse_pair", "hermes")])
@pytest.mark.parametrize("choice", ["required", "get_weather"])
def test_tool_calls_in_the_large_models_family_format_are_read_back_whole_and_streamed(request, pair, family, choice):
    """The format is read from the large model's real template; DeepSeek's markers are plain text
    of several tokens in R1-Distill's tokenizer, and vLLM's parser still reads them, streamed too."""
    router = request.getfixturevalue(pair)
    events = list(
        router.stream(
            "Weather in Paris?", tools=WEATHER, tool_choice=choice, parallel_tool_calls=False, answer_budget=80
        )
    )
    trace = events[-1].trace
    marker = "<｜tool▁calls▁begin｜>" if family == "deepseek_v3" else "<tool_call>"
    assert trace.answer.startswith(marker)
    if family == "deepseek_v3":
        assert len(router.backend.tokenizer("large").encode(marker, add_special_tokens=False)) > 1
    reader = router.tool_call_reader(WEATHER)
    assert reader.tool_call_parser == family
    text, calls = reader.read(trace.answer)
    assert text == "" and [(c.name, set(c.arguments)) for c in calls] == [("get_weather", {"city"})]
    streamed = router.tool_call_reader(WEATHER)
    answer_deltas = [e.text for e in events if getattr(e, "phase", None) == "answer" and hasattr(e, "text")]
    assert len(answer_deltas) > 5  # token by token
    parts = [part for delta in answer_deltas for part in streamed.feed(delta)[1]]
    shown, rest, whole = streamed.finish()
    parts += rest
    assert shown == "" and [c.arguments for c in whole] == [c.arguments for c in calls]
    assert "".join(p.name or "" for p in parts) == "get_weather"
    assert json.loads("".join(p.arguments for p in parts)) == calls[0].arguments


@pytest.mark.vllm
@pytest.mark.parametrize("pair, parser", [("paper_pair", "deepseek_r1"), ("reverse_pair", "qwen3")])
def test_glimp_serve_splits_reasoning_from_the_answer_as_vllms_parser_of_the_large_model(request, pair, parser):
    """What `vllm serve --reasoning-parser` would answer for the large model's whole output (the
    chain, its closing tag, the answer): the same reasoning, whole and streamed; the content the
    same text (Glimp strips the blank line the models write after `</think>`)."""
    import httpx
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.reasoning import ReasoningParserManager

    from glimp_integrations.serve import running_server

    router = request.getfixturevalue(pair)
    body = {"model": "glimp", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
    with running_server(router) as url:
        message = httpx.post(url + "/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]
        with httpx.stream("POST", url + "/chat/completions", json={**body, "stream": True}, timeout=120) as stream:
            lines = [line[6:] for line in stream.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [c["choices"][0]["delta"] for c in map(json.loads, lines) if c.get("choices")]
    trace = router.run(QUESTION)
    whole_output = raw_chain(trace) + "\n\n" + trace.answer  # what the large model's context holds after the prompt
    vllm_request = ChatCompletionRequest.model_validate(body)
    tokenizer = router.backend.tokenizer("large")
    reasoning, content = ReasoningParserManager.get_reasoning_parser(parser)(tokenizer).extract_reasoning(
        whole_output, vllm_request
    )
    assert message["reasoning"] == reasoning == "".join(d.get("reasoning") or "" for d in deltas)
    assert message["content"] == content.lstrip() == "".join(d.get("content") or "" for d in deltas) == "42"


# --- `glimp check` and the files a model folder needs ---------------------------------------------


def glimp_check(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    from glimp_integrations.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["check", *args])
    return status, out.getvalue()


def test_glimp_check_on_the_papers_pair_says_what_glimp_will_do():
    status, report = glimp_check(str(tiny_model(QWEN3, SMALL_QWEN3)), str(tiny_model(R1_DISTILL, LARGE_R1)))
    assert status == 0 and report.endswith("the pair works\n")
    for expected in (
        "two vocabularies: each step goes to the other model as text",
        "'</think>' [151668]",  # Qwen3's own closing id
        "'</think>' [151649] (its template opens it)",  # R1's
        "(Glimp opens it after the prompt)",
        "think (reasoning_mode='auto')",
        "`deepseek_v3`",
        "'<｜tool▁calls▁begin｜>' is 11 tokens",
        "'.\\n\\n' is one token",
        "a run fits in 40960",
        "use_heterogeneous_vocab",
    ):
        assert expected in report, expected


def test_glimp_check_on_other_pairs(tmp_path):
    """Same vocabulary (two Qwen3): ids hand over and the draft needs no mapping; Thinking-2507's
    template opens the reasoning itself; a small model without think markers (SmolLM2) is noted."""
    qwen3 = str(tiny_model(QWEN3, SMALL_QWEN3))
    status, report = glimp_check(qwen3, qwen3)
    assert status == 0 and "one vocabulary: each step goes to the other model as the token ids" in report
    assert "the small model drafts in the same vocabulary" in report
    status, report = glimp_check(str(tiny_model(QWEN3_THINKING, SMALL_QWEN3)), str(tiny_model(R1_DISTILL, LARGE_R1)))
    assert status == 0 and report.count("(its template opens it)") == 2
    status, report = glimp_check(str(embedded_model_dir()), str(tiny_model(R1_DISTILL, LARGE_R1)))
    assert status == 0 and "has no think markers: it reads the reasoning after its prompt as plain text" in report
    assert "not with the small model as draft" in report


def test_glimp_check_reads_a_servers_tokenizer_by_the_id_it_serves():
    """A server's card names its model (vLLM's `root`); the report reads that tokenizer."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    root = str(tiny_model(R1_DISTILL, LARGE_R1))

    class Models(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "r1", "root": root, "max_model_len": 2048}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        status, report = glimp_check(str(tiny_model(QWEN3, SMALL_QWEN3)), url, "--json")
    finally:
        server.shutdown()
    facts = json.loads(report)
    assert status == 0 and facts["large"]["source"] == "server" and facts["large"]["context_window"] == 2048
    assert facts["large"]["marker_ids"] == [[151648], [151649]]


def model_folder_with(tmp_path, name: str, script, *, drop=(), config=None):
    """A copy of a tiny model's folder (weights linked) without the files in `drop`, its config updated."""
    source = tiny_model(name, script)
    folder = tmp_path / "model"
    folder.mkdir()
    for file in source.iterdir():
        if file.name not in drop:
            (folder / file.name).symlink_to(file) if file.suffix == ".safetensors" else (
                folder / file.name
            ).write_bytes(file.read_bytes())
    if config:
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, **config}))
    return folder


@pytest.mark.parametrize(
    "drop, config, expected",
    [
        (("tokenizer.json",), None, "has no tokenizer: none of tokenizer.json"),
        (("config.json",), None, "has no config.json"),
        ((), {"vocab_size": 151000}, "`vocab_size` is 151000, but tokenizer.json has token id 151668"),
    ],
)
def test_a_folder_missing_what_glimp_needs_is_refused_before_any_weights_load(tmp_path, drop, config, expected):
    folder = model_folder_with(tmp_path, QWEN3, SMALL_QWEN3, drop=drop, config=config)
    with pytest.raises(GlimpConfigError, match=re.escape(expected)) as error:
        TransformersBackend(str(folder), str(tiny_model(R1_DISTILL, LARGE_R1)))
    assert "`small`" in str(error.value) and str(folder) in str(error.value)
    status, report = glimp_check(str(folder), str(tiny_model(R1_DISTILL, LARGE_R1)))
    assert status == 1 and "PROBLEM small model" in report and expected in report


def test_a_folder_without_a_chat_template_is_refused(tmp_path):
    folder = model_folder_with(tmp_path, R1_DISTILL, LARGE_R1)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    del tokenizer_config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(GlimpConfigError, match="has no chat template: tokenizer_config.json has no `chat_template`"):
        TransformersBackend(str(tiny_model(QWEN3, SMALL_QWEN3)), str(folder))
    status, report = glimp_check(str(tiny_model(QWEN3, SMALL_QWEN3)), str(folder))
    assert status == 1 and "PROBLEM large model" in report


@pytest.mark.vllm
def test_a_small_model_without_think_markers_routes_the_r1_reasoning(monkeypatch):
    """The templates disagree (SmolLM2 has no think markers): the run works around it as designed,
    the small model reading the reasoning as plain text after its prompt."""
    backend = TransformersBackend(str(embedded_model_dir()), str(tiny_model(R1_DISTILL, LARGE_R1)))
    with GlimpRouter(
        backend=backend, temperature=0, threshold=math.inf, reasoning_budget=12, answer_budget=8
    ) as router:
        sessions = seen_by(router, monkeypatch)
        trace = router.run(QUESTION, max_step_tokens=6)
        small = router.backend.tokenizer("small").decode(context_ids(sessions["small"][0]))
    assert trace.mode == "think" and trace.answer == "42" and {s.model for s in trace.steps} == {"small", "large"}
    assert small.count("<think>\n") == 1 and trace.steps[-2].finish_reason in ("step_limit", "budget")


# --- the framework adapters on the pair ------------------------------------------------------------


@pytest.mark.vllm
def test_chat_glimp_router_on_the_papers_pair_streamed_and_not(paper_pair):
    from langchain_glimp import ChatGlimpRouter

    llm = ChatGlimpRouter(backend=paper_pair.backend, temperature=0, threshold=1.0, reasoning_budget=40)
    message = llm.invoke(QUESTION)
    reasoning = [b for b in message.content_blocks if b["type"] == "reasoning"]
    assert message.text == "42" and [b["reasoning"] for b in reasoning] == ["Let me think.\n\n", "Okay, so"]
    assert [b["extras"]["glimp"]["model"] for b in reasoning] == ["small", "large"]
    assert message.response_metadata["finish_reason"] == "stop"
    chunks = list(llm.stream(QUESTION))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.text == "42" and whole.additional_kwargs["reasoning_content"] == "Let me think.\n\nOkay, so"


@pytest.mark.vllm
async def test_glimp_router_llm_on_the_papers_pair_streamed_and_not(paper_pair):
    from llama_index.core.base.llms.types import ChatMessage, ThinkingBlock

    from llamaindex_glimp import GlimpRouterLLM

    llm = GlimpRouterLLM(backend=paper_pair.backend, temperature=0, threshold=1.0, reasoning_budget=40)
    chat = [ChatMessage(role="user", content=QUESTION)]
    response = await llm.achat(chat)
    thinking = [b for b in response.message.blocks if isinstance(b, ThinkingBlock)]
    assert response.message.content == "42" and [b.content for b in thinking] == ["Let me think.\n\n", "Okay, so"]
    assert [b.additional_information["model"] for b in thinking] == ["small", "large"]
    streamed = [r async for r in await llm.astream_chat(chat)]
    assert "".join(r.additional_kwargs.get("thinking_delta") or "" for r in streamed) == "Let me think.\n\nOkay, so"
    assert "".join(r.delta or "" for r in streamed) == "42"


@pytest.mark.vllm
@pytest.mark.parametrize("pair", ["paper_pair", "reverse_pair"])
def test_glimp_serve_streams_the_pairs_tool_calls_as_openai_deltas(request, pair):
    """Through `glimp serve`: each family's call (DeepSeek's text markers, Qwen3's Hermes tokens)
    becomes OpenAI `tool_calls`, whole and streamed, with the same name and arguments."""
    import httpx

    from glimp_integrations.serve import running_server

    body = {
        "model": "glimp",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": WEATHER,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "max_tokens": 80,
    }
    with running_server(request.getfixturevalue(pair)) as url:
        whole = httpx.post(url + "/chat/completions", json=body, timeout=120).json()["choices"][0]
        with httpx.stream("POST", url + "/chat/completions", json={**body, "stream": True}, timeout=120) as stream:
            chunks = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    assert whole["finish_reason"] == "tool_calls" and not whole["message"]["content"]
    (call,) = whole["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"])["city"]
    parts = [part for c in chunks if c.get("choices") for part in c["choices"][0]["delta"].get("tool_calls") or []]
    assert "".join(p["function"].get("name") or "" for p in parts) == "get_weather"
    assert json.loads("".join(p["function"].get("arguments") or "" for p in parts)) == json.loads(
        call["function"]["arguments"]
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")][-1] == "tool_calls"


def test_glimp_check_finds_the_readmes_hub_ids_in_the_local_cache(tmp_path):
    """The README's pair by its hub ids, offline: the tokenizers and configs come from the local HF
    cache (laid out as huggingface_hub lays it: models--ORG--NAME/snapshots/REVISION, refs/main)."""
    import os
    import subprocess
    import sys

    from tests.real_pairs import tokenizer_folder

    for hub_id, name in (("Qwen/Qwen3-4B", QWEN3), ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", R1_DISTILL)):
        repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0" * 40)
        (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
        for file in tokenizer_folder(name).iterdir():
            (repo / "snapshots" / ("0" * 40) / file.name).symlink_to(file)
    environment = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "glimp_integrations.cli", "check", "Qwen/Qwen3-4B"]
    finished = subprocess.run(
        [*command, "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"], env=environment, capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "small: Qwen/Qwen3-4B (hub cache, Qwen3ForCausalLM)" in finished.stdout
    assert "two vocabularies" in finished.stdout and "use_heterogeneous_vocab" in finished.stdout
    missing = subprocess.run([*command, "nobody/nothing"], env=environment, capture_output=True, text=True)
    assert missing.returncode == 1 and "PROBLEM large model" in missing.stdout and "offline" in missing.stdout


def test_glimp_check_refuses_a_large_model_whose_closing_marker_is_text(tmp_path):
    """A template that opens `<think>` on a tokenizer without it as a token (SmolLM2's, edited): the
    reasoning runs in `think` mode, but `</think>` is several tokens, which vLLM's reasoning parsers
    (glimp serve's split, the servers' own) cannot use: a problem, with the fix."""
    folder = tmp_path / "thinking-smollm2"
    folder.mkdir()
    for file in embedded_model_dir().iterdir():
        (folder / file.name).symlink_to(file)
    (folder / "chat_template.jinja").unlink()
    template = (embedded_model_dir() / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").write_text(
        template.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n<think>\n'")
    )
    status, report = glimp_check(str(tiny_model(QWEN3, SMALL_QWEN3)), str(folder))
    assert status == 1 and "PROBLEM large markers" in report and "reasoning_mode='plain'" in report
    assert "'</think>' [9617, 17400, 46]" in report
