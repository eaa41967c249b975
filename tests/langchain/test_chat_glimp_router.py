"""ChatGlimpRouter beyond the standard suite: routing made visible, usage, tools, cancellation."""

import asyncio

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool

from glimp_integrations import (
    ContextLengthError,
    GlimpInputError,
    ScriptedBackend,
    ScriptedModel,
)
from langchain_glimp import STEP_EVENT, ChatGlimpRouter
from tests.conftest import step
from tests.scripted_pairs import PLAIN_ANSWER, scripted_pair


class StepRecorder(BaseCallbackHandler):
    def __init__(self):
        self.steps = []

    def on_custom_event(self, name, data, **kwargs):
        if name == STEP_EVENT:
            self.steps.append(data)


class AsyncStepRecorder(AsyncCallbackHandler):
    def __init__(self):
        self.steps = []

    async def on_custom_event(self, name, data, **kwargs):
        if name == STEP_EVENT:
            self.steps.append(data)


def test_reasoning_steps_are_standard_blocks_with_their_routing():
    message = ChatGlimpRouter(backend=scripted_pair()).invoke("What is 6 x 7?")
    assert message.text == PLAIN_ANSWER
    reasoning = [b for b in message.content_blocks if b["type"] == "reasoning"]
    assert [b["reasoning"] for b in reasoning] == ["Let me think about it.\n\n", "I know what to do. "]
    assert [b["index"] for b in reasoning] == ["lc_step_0", "lc_step_1"]
    routing = [b["extras"]["glimp"] for b in reasoning]
    assert [(r["model"], r["decision"]) for r in routing] == [("small", "delegate"), ("small", "delegate")]
    assert routing[0]["h_init"] == pytest.approx(0.2) and routing[1]["h_init"] == pytest.approx(0.3)
    assert all(r["tokens"] > 0 and r["seconds"] >= 0 for r in routing)
    assert message.additional_kwargs["reasoning_content"] == "Let me think about it.\n\nI know what to do. "
    summary = message.response_metadata["glimp"]
    assert summary["intervention_rate"] == 0.0 and summary["tokens_by_model"] == {"small": 12, "large": 1}
    assert [s["model"] for s in summary["steps"]] == ["small", "small", "large"]
    assert message.response_metadata["model_name"] == "scripted-small+scripted-large"


def test_stream_yields_reasoning_deltas_before_the_answer_and_aggregates_like_invoke():
    llm = ChatGlimpRouter(backend=scripted_pair())
    chunks = list(llm.stream("What is 6 x 7?"))
    kinds = [b["type"] for c in chunks if isinstance(c.content, list) for b in c.content]
    assert kinds.index("text") > max(i for i, k in enumerate(kinds) if k == "reasoning")
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    invoked = llm.invoke("What is 6 x 7?")
    assert full.text == invoked.text
    assert [b["reasoning"] for b in full.content_blocks if b["type"] == "reasoning"] == [
        b["reasoning"] for b in invoked.content_blocks if b["type"] == "reasoning"
    ]
    assert sum(1 for c in chunks if c.usage_metadata) == 1  # usage once, in the last chunk
    assert full.usage_metadata == invoked.usage_metadata
    assert full.usage_metadata["output_token_details"]["reasoning"] == 12


def test_usage_counts_prompt_answer_and_reasoning_tokens():
    message = ChatGlimpRouter(backend=scripted_pair()).invoke("What is 6 x 7?")
    usage, summary = message.usage_metadata, message.response_metadata["glimp"]
    assert usage["output_tokens"] == 13 and usage["output_token_details"]["reasoning"] == 12
    assert usage["output_token_details"]["by_model"] == {"small": 12, "large": 1}
    # the small model read only its prompt; the large model its prompt, then the small model's steps
    inputs = usage["input_token_details"]["by_model"]
    assert inputs["small"] == summary["prompt_tokens"]
    answer = summary["steps"][-1]
    assert answer["model"] == "large" and answer["prefill_tokens"] > 0
    assert inputs["large"] == summary["prompt_tokens"] + answer["prefill_tokens"]
    assert usage["input_tokens"] == sum(inputs.values())
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_a_callback_handler_receives_one_step_event_per_step():
    recorder = StepRecorder()
    ChatGlimpRouter(backend=scripted_pair()).invoke("hi", config={"callbacks": [recorder]})
    assert [(s["index"], s["model"], s["phase"]) for s in recorder.steps] == [
        (0, "small", "reasoning"),
        (1, "small", "reasoning"),
        (2, "large", "answer"),
    ]
    assert recorder.steps[0]["text"] == "Let me think about it.\n\n"


async def test_async_callback_handler_receives_step_events():
    recorder = AsyncStepRecorder()
    await ChatGlimpRouter(backend=scripted_pair()).ainvoke("hi", config={"callbacks": [recorder]})
    assert [s["model"] for s in recorder.steps] == ["small", "small", "large"]


async def test_astream_events_of_a_chain_show_routing_as_it_happens():
    chain = ChatPromptTemplate.from_messages([("user", "{question}")]) | ChatGlimpRouter(backend=scripted_pair())
    events = [e async for e in chain.astream_events({"question": "hi"}, version="v2")]
    custom = [e for e in events if e["event"] == "on_custom_event" and e["name"] == STEP_EVENT]
    assert [e["data"]["model"] for e in custom] == ["small", "small", "large"]
    names = [e["event"] for e in events]
    assert names.index("on_custom_event") < names.index("on_chat_model_end")


def test_lcel_chain_with_str_output_parser_and_batch():
    chain = (
        ChatPromptTemplate.from_messages([("user", "{q}")])
        | ChatGlimpRouter(backend=scripted_pair())
        | StrOutputParser()
    )
    assert chain.invoke({"q": "hi"}) == PLAIN_ANSWER
    assert chain.batch([{"q": "a"}, {"q": "b"}, {"q": "c"}]) == [PLAIN_ANSWER] * 3


async def _let_finalizers_run():
    """LangChain's astream drops its inner generator on close; asyncio closes it on a later turn."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_closing_a_stream_early_stops_the_run():
    backend = ScriptedBackend(
        ScriptedModel("s", [step("a b c\n\n", 0.1)] * 50), ScriptedModel("l", [step("x\n\n")] * 50)
    )
    llm = ChatGlimpRouter(backend=backend, reasoning_budget=500)
    stream = llm.astream("go on")
    chunk = await stream.__anext__()
    assert isinstance(chunk, AIMessageChunk)
    await stream.aclose()
    await _let_finalizers_run()
    assert backend.open_sessions == 0
    sync_stream = llm.stream("go on")
    next(sync_stream)
    sync_stream.close()
    assert backend.open_sessions == 0  # at once, not at the next garbage collection
    assert (await llm.ainvoke("again")).text  # still usable


async def test_a_cancelled_task_stops_the_run():
    backend = ScriptedBackend(
        ScriptedModel("s", [step("a b c\n\n", 0.1)] * 50), ScriptedModel("l", [step("x\n\n")] * 50)
    )
    llm = ChatGlimpRouter(backend=backend, reasoning_budget=500)

    async def consume():
        async for _ in llm.astream("go on"):
            await asyncio.sleep(0.01)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _let_finalizers_run()
    assert backend.open_sessions == 0


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def test_bind_tools_parses_tool_calls_into_the_message():
    message = ChatGlimpRouter(backend=scripted_pair()).bind_tools([multiply]).invoke("What is 3 times 3?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("multiply", {"a": 3, "b": 3})]
    assert message.text == "" and message.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
def test_langgraph_react_agent_calls_the_tool_and_answers():
    from langgraph.prebuilt import create_react_agent

    agent = create_react_agent(ChatGlimpRouter(backend=scripted_pair()), [multiply])
    result = agent.invoke({"messages": [HumanMessage("What is 3 times 3?")]})
    kinds = [m.type for m in result["messages"]]
    assert kinds == ["human", "ai", "tool", "ai"]
    assert result["messages"][2].content == "9"
    assert result["messages"][-1].text == PLAIN_ANSWER


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([], "empty"),
        (
            [HumanMessage(content=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}])],
            "text only",
        ),
        ([SystemMessage("be brief")], "no user message"),
    ],
)
def test_bad_input_is_rejected_and_the_model_stays_usable(messages, fragment):
    llm = ChatGlimpRouter(backend=scripted_pair())
    with pytest.raises(GlimpInputError, match=fragment):
        llm.invoke(messages)
    assert llm.invoke("hi").text == PLAIN_ANSWER


def test_a_conversation_longer_than_the_context_is_an_error():
    backend = ScriptedBackend(
        ScriptedModel("s", [step("ok")], context_window=20), ScriptedModel("l", [step("ok")], context_window=20)
    )
    with pytest.raises(ContextLengthError, match="context window is 20"):
        ChatGlimpRouter(backend=backend).invoke("word " * 40)


def test_a_model_override_for_another_pair_is_refused():
    llm = ChatGlimpRouter(backend=scripted_pair())
    with pytest.raises(GlimpInputError, match="cannot swap the pair"):
        llm.invoke("hi", model="gpt-5")
    assert llm.invoke("hi", model=llm.model_name).text == PLAIN_ANSWER


def test_identifying_and_tracing_params_name_both_models():
    llm = ChatGlimpRouter(
        small="Qwen/Qwen3-4B",
        large="deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        temperature=0.6,
        max_tokens=512,
        stop=["###"],
    )
    assert llm._identifying_params["small"] == "Qwen/Qwen3-4B"
    assert llm.model_name == "Qwen/Qwen3-4B+deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
    params = llm._get_ls_params()
    assert params["ls_model_name"] == llm.model_name and params["ls_provider"] == "glimp"
    assert params["ls_max_tokens"] == 512 and params["ls_stop"] == ["###"]
