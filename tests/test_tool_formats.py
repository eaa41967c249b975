"""Each model family's tool-call format: chosen from the chat template, forced by the family's grammar
on the embedded model (its tokens added), and read back by vLLM's parser of the family, whole and
streamed, in the library, through `glimp serve` and through LangChain's `bind_tools`."""

import copy
import json

import httpx
import pytest

from glimp_integrations import GlimpConfigError, GlimpRouter, TokenDelta
from glimp_integrations.bench.tool_families import OPENINGS, TEMPLATES, write_family_models
from glimp_integrations.constraints import JSON_LAYOUT
from glimp_integrations.tool_formats import (
    TOOL_FAMILIES,
    ToolCallReader,
    detect_tool_call_parser,
    hermes_structure,
    structural_tag_lark,
    tool_call_structure,
)
from tests.conftest import scripted_router

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris"]}, "days": {"type": "integer", "enum": [3]}},
            "required": ["city", "days"],
        },
    },
}
"""A tool whose only valid arguments are {"city": "Paris", "days": 3}: the grammar forces them."""
FORCED = {"city": "Paris", "days": 3}
QUESTION = [{"role": "user", "content": "What will the weather be in Paris?"}]


# --- choosing the format ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_each_family_is_read_from_its_chat_template(family):
    assert detect_tool_call_parser(TEMPLATES[family]) == family


def test_templates_of_no_family_get_hermes_and_harmony_is_refused_with_the_reason():
    assert detect_tool_call_parser(None) == detect_tool_call_parser("{{ messages }}") == "hermes"
    with pytest.raises(GlimpConfigError, match="harmony channels, which do not split into steps"):
        detect_tool_call_parser("<|start|>assistant<|channel|>analysis<|message|>")


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "mistrall",
            r"`tool_call_parser` is not a tool-call format Glimp supports \(supported: deepseek_v3, "
            r"deepseek_v31, llama3_json, hermes\)",
        ),
        ("qwen3_coder", "`tool_call_parser` is not supported: its calls are XML-styled parameters"),
        ("openai", "`tool_call_parser` is not supported: gpt-oss writes its reasoning in harmony channels"),
    ],
)
def test_a_format_glimp_does_not_support_is_an_error_that_lists_those_it_does(name, message):
    with pytest.raises(GlimpConfigError, match=message):
        scripted_router([], [], tool_call_parser=name)


@pytest.mark.vllm
def test_glimps_hermes_structure_is_vllms():
    """Glimp writes Hermes's structure itself (the slim install has no vLLM); it must stay vLLM's."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionToolsParam
    from vllm.tool_parsers.structural_tag_registry import get_model_structural_tag
    from vllm.tool_parsers.tool_strict_level import ToolStrictLevel
    from xgrammar import StructuralTag

    strict = [ChatCompletionToolsParam(type="function", function={**WEATHER["function"], "strict": True})]
    for choice in ("auto", "required"):
        vllms = get_model_structural_tag("hermes", strict, choice, False, strict_level=ToolStrictLevel.PARAMETER)
        glimps = StructuralTag.model_validate({"type": "structural_tag", "format": hermes_structure([WEATHER], choice)})
        assert glimps.model_dump(mode="json") == vllms.model_dump(mode="json")


# --- the grammar ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    return write_family_models(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="module")
def tokenizer(family_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(family_models["deepseek_v3"])


@pytest.mark.vllm
@pytest.mark.embedded
@pytest.mark.parametrize("family", sorted(TOOL_FAMILIES))
def test_the_family_grammar_takes_its_own_calls_and_no_other_familys(family, tokenizer):
    import llguidance.hf

    tokens = llguidance.hf.from_tokenizer(tokenizer)
    calls = {name: _call_text(name) for name in TOOL_FAMILIES}
    structure = tool_call_structure(family, [WEATHER], "required", parallel=True)
    grammar = "start: calls\n" + structural_tag_lark(structure, JSON_LAYOUT, tuple(tokenizer.get_added_vocab()))

    def accepts(text: str) -> bool:
        matcher = llguidance.LLMatcher(tokens, grammar, log_level=0)
        return matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False)) and matcher.is_accepting()

    assert {name: accepts(text) for name, text in calls.items()} == {name: name == family for name in calls}
    text, read = ToolCallReader(family, [WEATHER], tokenizer).read(calls[family])
    assert (text, [(c.name, c.arguments) for c in read]) == ("", [("get_weather", FORCED)])


@pytest.mark.vllm
@pytest.mark.embedded
@pytest.mark.parametrize("family", sorted(TOOL_FAMILIES))
@pytest.mark.parametrize("choice, parallel", [("auto", True), ("required", True), ("required", False)])
def test_glimps_lark_accepts_what_xgrammar_accepts_of_the_same_structure(family, choice, parallel, tokenizer):
    """The structure compiled for llguidance takes exactly the texts xgrammar (the structural tag's
    own engine, as `vllm serve` runs it) takes: calls, text around them, repeats, wrong names."""
    import llguidance.hf
    import xgrammar
    from xgrammar.testing import _is_grammar_accept_string

    structure = tool_call_structure(family, [WEATHER], choice, parallel=parallel)
    lark = "start: calls\n" + structural_tag_lark(structure, JSON_LAYOUT, tuple(tokenizer.get_added_vocab()))
    xgrammars = xgrammar.Grammar.from_structural_tag(json.dumps({"type": "structural_tag", "format": structure}))
    tokens = llguidance.hf.from_tokenizer(tokenizer)
    call = _call_text(family)
    texts = [
        call,
        "Sure. " + call,
        call + call,
        call + " Done.",
        "Just text.",
        "",
        _call_text(family, name="get_wether"),
        _call_text(family, arguments={"city": "Rome", "days": 3}),
    ]

    def llguidance_accepts(text: str) -> bool:
        matcher = llguidance.LLMatcher(tokens, lark, log_level=0)
        return matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False)) and matcher.is_accepting()

    assert [llguidance_accepts(t) for t in texts] == [_is_grammar_accept_string(xgrammars, t) for t in texts]


@pytest.mark.vllm
@pytest.mark.embedded
@pytest.mark.parametrize("family", sorted(TOOL_FAMILIES))
def test_a_call_without_arguments_reads_back_as_one(family, tokenizer):
    from glimp_integrations.tool_formats import render_call

    ping = {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}
    text, calls = ToolCallReader(family, [ping], tokenizer).read(render_call(family, "ping", "{}"))
    assert (text, [(c.name, c.arguments) for c in calls]) == ("", [("ping", {})])


def _call_text(family: str, name: str = "get_weather", arguments: dict = FORCED) -> str:
    from glimp_integrations.tool_formats import render_call

    return render_call(family, name, json.dumps(arguments))


# --- runs on the embedded model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_routers(family_models):
    routers = {
        family: GlimpRouter(folder, folder, reasoning_mode="plain", temperature=0, seed=0)
        for family, folder in family_models.items()
    }
    yield routers
    for router in routers.values():
        router.close()


@pytest.mark.vllm
@pytest.mark.embedded
@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_a_forced_call_is_written_in_the_family_format_and_read_back_whole_and_streamed(family, family_routers):
    router = family_routers[family]
    events = list(router.stream(QUESTION, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False))
    trace = events[-1].trace
    assert trace.tool_call_parser == family and trace.summary()["tool_call_parser"] == family
    assert trace.answer.startswith(OPENINGS[family])
    text, calls = router.tool_call_reader([WEATHER]).read(trace.answer)
    assert (text, [(c.name, c.arguments) for c in calls]) == ("", [("get_weather", FORCED)])

    reader = router.tool_call_reader([WEATHER])
    shown, names, arguments = "", {}, {}
    for delta in (e.text for e in events if isinstance(e, TokenDelta) and e.phase == "answer"):
        piece, parts = reader.feed(delta)
        shown += piece
        for part in parts:
            names[part.index] = names.get(part.index, "") + (part.name or "")
            arguments[part.index] = arguments.get(part.index, "") + part.arguments
    rest, parts, whole = reader.finish()
    for part in parts:
        arguments[part.index] = arguments.get(part.index, "") + part.arguments
    assert (shown + rest, names, {i: json.loads(a) for i, a in arguments.items()}) == (
        "",
        {0: "get_weather"},
        {0: FORCED},
    )
    assert [(c.name, c.arguments) for c in whole] == [("get_weather", FORCED)]


@pytest.mark.vllm
@pytest.mark.embedded
def test_the_chat_template_shows_the_tools_and_earlier_calls_in_the_familys_way(family_routers):
    router = family_routers["deepseek_v3"]
    earlier = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(FORCED)}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny."},
    ]
    trace = router.run(earlier, tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert trace.tool_call_parser == "deepseek_v3" and "<｜tool▁calls▁begin｜>" not in trace.answer
    prompt = router.backend.tokenizer("large").apply_chat_template(
        earlier, tools=[WEATHER], tokenize=False, add_generation_prompt=True
    )
    assert "## Tools" in prompt and "function<｜tool▁sep｜>get_weather\n```json" in prompt


# --- through glimp serve and LangChain -------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.embedded
@pytest.mark.parametrize("family", ["deepseek_v3", "llama3_json"])
def test_glimp_serve_returns_the_familys_calls_whole_and_streamed(family, family_routers):
    from glimp_integrations.serve import running_server

    with running_server(family_routers[family]) as url:
        body = {
            "model": "glimp",
            "messages": QUESTION,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
        }
        message = httpx.post(url + "/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]
        assert message["content"] is None and message["tool_calls"][0]["function"]["name"] == "get_weather"
        assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == FORCED
        with httpx.stream("POST", url + "/chat/completions", json={**body, "stream": True}, timeout=120) as response:
            lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [json.loads(line)["choices"][0]["delta"] for line in lines[:-1] if json.loads(line)["choices"]]
    calls = [call for delta in deltas for call in delta.get("tool_calls") or []]
    assert "".join(c["function"].get("name") or "" for c in calls) == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == FORCED
    assert not "".join(d.get("content") or "" for d in deltas).strip()


@pytest.mark.vllm
@pytest.mark.embedded
@pytest.mark.parametrize("family", ["deepseek_v3", "llama3_json"])
def test_langchain_bind_tools_gets_the_familys_calls(family, family_models):
    from langchain_glimp import ChatGlimpRouter

    folder = family_models[family]
    model = ChatGlimpRouter(
        small=folder, large=folder, reasoning_mode="plain", temperature=0, seed=0, tool_call_parser=family
    )
    message = model.bind_tools([WEATHER], tool_choice="get_weather", parallel_tool_calls=False).invoke(QUESTION)
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", FORCED)]
    assert OPENINGS[family] not in message.text
    assert message.response_metadata["glimp"]["tool_call_parser"] == family


# --- on vLLM, in process and served ----------------------------------------------------------------


def _forced_call(router: GlimpRouter) -> list[tuple[str, dict]]:
    trace = router.run(QUESTION, tools=[WEATHER], tool_choice="get_weather", parallel_tool_calls=False)
    text, calls = router.tool_call_reader([WEATHER]).read(trace.answer)
    assert text == "" and trace.tool_call_parser == "deepseek_v3"
    return [(c.name, c.arguments) for c in calls]


@pytest.mark.vllm
@pytest.mark.embedded
def test_vllm_in_process_and_vllm_serve_decode_under_the_familys_grammar(family_models):
    """vLLM's `guidance` structured outputs compile the same grammar, the family's tokens matched as
    tokens, in this process and in `vllm serve` (the servers backend)."""
    from tests.vllm_servers import vllm_server

    folder = family_models["deepseek_v3"]
    with GlimpRouter(
        folder,
        folder,
        backend="vllm",
        reasoning_mode="plain",
        temperature=0,
        seed=0,
        backend_options={"max_model_len": 4096},
    ) as router:
        assert _forced_call(router) == [("get_weather", FORCED)]
    with (
        vllm_server("-1", model=folder) as url,
        GlimpRouter(url, url, backend="openai", reasoning_mode="plain", temperature=0, seed=0) as router,
    ):
        assert _forced_call(router) == [("get_weather", FORCED)]


# --- the reasoning's markers -----------------------------------------------------------------------


def _scripted_with_tokenizer(small_steps, large_steps, tokenizer, **settings):
    from glimp_integrations.backends.scripted import ScriptedBackend, ScriptedModel

    backend = ScriptedBackend(
        ScriptedModel("tiny", small_steps, knows_think_tags=True, tokenizer=tokenizer),
        ScriptedModel("huge", large_steps, knows_think_tags=True, tokenizer=tokenizer),
    )
    return GlimpRouter(backend=backend, **settings), backend


@pytest.mark.vllm
@pytest.mark.embedded
def test_the_reasoning_parser_gives_the_markers_that_open_and_close_the_reasoning(tokenizer):
    """seed_oss's reasoning is `<seed:think>...</seed:think>`: the prompt opens it, the small
    model's `</seed:think>` ends the routed steps, and `<think>` is only text there."""
    from tests.conftest import step

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens(["<seed:think>", "</seed:think>"])
    router, backend = _scripted_with_tokenizer(
        [step("I think <think> is text.\n\n"), step("Done.</seed:think>")],
        [step("42")],
        tokenizer,
        reasoning_parser="seed_oss",
    )
    trace = router.run("q")
    assert backend.prompts[0].endswith("<seed:think>\n")
    assert (trace.reasoning, trace.answer, [s.phase for s in trace.steps]) == (
        "I think <think> is text.\n\nDone.",
        "42",
        ["reasoning", "reasoning", "answer"],
    )


@pytest.mark.vllm
def test_a_family_reasoning_parser_that_refuses_the_tokenizer_falls_back_unless_it_was_chosen():
    """DeepSeek-R1's parser looks `<think>` up in the vocabulary: a model of the family without it
    keeps `<think>`/`</think>`; naming the parser for that model is an error that says why."""
    from transformers import AutoTokenizer

    from glimp_integrations.embedded import embedded_model_dir
    from tests.conftest import step

    plain = AutoTokenizer.from_pretrained(embedded_model_dir())  # no <think> token
    plain.chat_template = TEMPLATES["deepseek_v3"]
    router, backend = _scripted_with_tokenizer([step("Done.</think>")], [step("42")], plain)
    assert router.run("q").answer == "42" and backend.prompts[0].endswith("<think>\n")
    with pytest.raises(GlimpConfigError, match="`reasoning_parser` does not fit the large model's tokenizer"):
        router.run("q", reasoning_parser="deepseek_r1")
    with pytest.raises(GlimpConfigError, match="`reasoning_parser` is not one of vLLM's reasoning parsers"):
        router.run("q", reasoning_parser="deepseek_r2")
