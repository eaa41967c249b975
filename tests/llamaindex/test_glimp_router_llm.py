"""GlimpRouterLLM on the scripted pair (exact) and on the embedded model (real)."""

import asyncio
import time
from typing import Any

import pytest
from llama_index.core.agent.workflow import (
    AgentStream,
    FunctionAgent,
    ReActAgent,
    ToolCallResult,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ImageBlock,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
)

from examples.llamaindex_query_engine import build_query_engine
from glimp_integrations import (
    ContextLengthError,
    GlimpInputError,
    ScriptedBackend,
    ScriptedModel,
)
from llamaindex_glimp import GlimpRouterLLM, GlimpStepEvent
from tests.conftest import step
from tests.scripted_pairs import PLAIN_ANSWER, scripted_pair

USER = [ChatMessage(role="user", content="What is 6 x 7?")]


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class Recorder(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def recorder():
    handler = Recorder(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def test_metadata_names_both_models_and_the_pairs_limits():
    metadata = GlimpRouterLLM(backend=scripted_pair(), max_tokens=300).metadata
    assert metadata.model_name == "scripted-small+scripted-large"
    assert metadata.context_window == 4096 and metadata.num_output == 300
    assert metadata.is_chat_model and metadata.is_function_calling_model


def test_chat_answer_thinking_blocks_usage_and_summary():
    response = GlimpRouterLLM(backend=scripted_pair()).chat(USER)
    assert response.message.content == PLAIN_ANSWER
    thinking = [b for b in response.message.blocks if isinstance(b, ThinkingBlock)]
    assert [b.content for b in thinking] == ["Let me think about it.\n\n", "I know what to do. "]
    routing = [b.additional_information for b in thinking]
    assert [(r["model"], r["decision"]) for r in routing] == [("small", "delegate")] * 2
    assert routing[0]["h_init"] == pytest.approx(0.2) and thinking[0].num_tokens == routing[0]["tokens"] == 6
    usage, by_model = response.raw["usage"], response.raw["glimp"]["usage_by_model"]
    assert usage["by_model"] == by_model and by_model["small"]["output_tokens"] == 12
    assert usage["prompt_tokens"] == by_model["small"]["input_tokens"] + by_model["large"]["input_tokens"]
    assert usage["completion_tokens"] == 13 and usage["reasoning_tokens"] == 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + 13
    assert response.raw["glimp"]["intervention_rate"] == 0.0


def test_stream_chat_carries_thinking_deltas_then_the_answer():
    responses = list(GlimpRouterLLM(backend=scripted_pair()).stream_chat(USER))
    thinking = "".join(r.additional_kwargs.get("thinking_delta") or "" for r in responses)
    assert thinking == "Let me think about it.\n\nI know what to do. "
    first_answer = next(i for i, r in enumerate(responses) if r.delta)
    assert all("thinking_delta" not in r.additional_kwargs for r in responses[first_answer:])
    assert "".join(r.delta or "" for r in responses) == PLAIN_ANSWER
    assert responses[-1].message.content == PLAIN_ANSWER and responses[-1].raw["usage"]["completion_tokens"] == 13


async def test_async_chat_stream_and_completion_paths():
    llm = GlimpRouterLLM(backend=scripted_pair())
    assert (await llm.achat(USER)).message.content == PLAIN_ANSWER
    deltas = [r.delta async for r in await llm.astream_chat(USER)]
    assert "".join(d or "" for d in deltas) == PLAIN_ANSWER
    assert llm.complete("hi").text == PLAIN_ANSWER
    assert (await llm.acomplete("hi")).text == PLAIN_ANSWER
    assert "".join(r.delta or "" for r in llm.stream_complete("hi")) == PLAIN_ANSWER
    assert "".join([r.delta or "" async for r in await llm.astream_complete("hi")]) == PLAIN_ANSWER


def test_stop_sequences_end_the_answer_before_them_and_a_call_replaces_them():
    """`stop=` as on LlamaIndex's Vllm LLM: the answer ends before the first stop sequence."""
    llm = GlimpRouterLLM(backend=scripted_pair(), stop=["answers"])
    assert llm.chat(USER).message.content == "Hello! The scripted pair"
    assert "".join(r.delta or "" for r in llm.stream_chat(USER)).strip() == "Hello! The scripted pair"
    assert llm.chat(USER, stop=["42"]).message.content == "Hello! The scripted pair answers:"
    assert GlimpRouterLLM(backend=scripted_pair()).chat(USER).message.content == PLAIN_ANSWER


def test_unsupported_call_arguments_are_refused_with_what_a_call_takes():
    with pytest.raises(GlimpInputError) as raised:
        GlimpRouterLLM(backend=scripted_pair()).chat(USER, frequency_penalty=1.0)
    message = str(raised.value)
    assert "['frequency_penalty']" in message and "tool_required" in message
    assert all(name in message for name in ("stop", "max_tokens", "temperature", "threshold", "reasoning_budget"))


def test_an_event_handler_sees_each_step_as_it_happens(recorder):
    GlimpRouterLLM(backend=scripted_pair()).chat(USER)
    kinds = [type(e).__name__ for e in recorder.events]
    steps = [e for e in recorder.events if isinstance(e, GlimpStepEvent)]
    assert [(e.routing["index"], e.routing["model"]) for e in steps] == [(0, "small"), (1, "small"), (2, "large")]
    assert steps[0].text == "Let me think about it.\n\n"
    assert kinds.index("LLMChatStartEvent") < kinds.index("GlimpStepEvent") < kinds.index("LLMChatEndEvent")
    assert any(isinstance(e, LLMChatStartEvent) for e in recorder.events)
    assert any(isinstance(e, LLMChatEndEvent) for e in recorder.events)


def test_tool_calls_become_tool_selections():
    llm = GlimpRouterLLM(backend=scripted_pair())
    from llama_index.core.tools import FunctionTool

    response = llm.chat_with_tools([FunctionTool.from_defaults(multiply)], user_msg="What is 3 x 3?")
    selections = llm.get_tool_calls_from_response(response)
    assert [(s.tool_name, s.tool_kwargs) for s in selections] == [("multiply", {"a": 3, "b": 3})]
    assert any(isinstance(b, ToolCallBlock) for b in response.message.blocks)
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(llm.chat(USER))


async def test_function_agent_calls_the_tool_and_streams_thinking():
    agent = FunctionAgent(tools=[multiply], llm=GlimpRouterLLM(backend=scripted_pair()))
    handler = agent.run("What is 3 times 3?")
    thinking, results = "", []
    async for event in handler.stream_events():
        if isinstance(event, AgentStream):
            thinking += event.thinking_delta or ""
        elif isinstance(event, ToolCallResult):
            results.append((event.tool_name, event.tool_kwargs, event.tool_output.content))
    answer = await handler
    assert results == [("multiply", {"a": 3, "b": 3}, "9")]
    assert "Let me think about it." in thinking
    assert str(answer).strip() == PLAIN_ANSWER


async def test_react_agent_acts_then_answers():
    agent = ReActAgent(tools=[multiply], llm=GlimpRouterLLM(backend=scripted_pair()))
    handler = agent.run("What is 3 times 3?")
    results = [
        (e.tool_name, e.tool_output.content) async for e in handler.stream_events() if isinstance(e, ToolCallResult)
    ]
    answer = await handler
    assert results == [("multiply", "9")]
    assert PLAIN_ANSWER in str(answer)


def test_query_engine_over_documents_with_the_scripted_pair():
    response = build_query_engine(GlimpRouterLLM(backend=scripted_pair())).query("When does the bakery open?")
    assert str(response).strip() == PLAIN_ANSWER
    assert "bakery opens at 7 am" in response.source_nodes[0].node.get_content()


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([], "empty"),
        (
            [ChatMessage(role="user", blocks=[TextBlock(text="what is this?"), ImageBlock(url="http://x/y.png")])],
            "text only",
        ),
        ([ChatMessage(role="system", content="be brief")], "no user message"),
    ],
)
def test_bad_input_is_rejected_and_the_llm_stays_usable(messages, fragment):
    llm = GlimpRouterLLM(backend=scripted_pair())
    with pytest.raises(GlimpInputError, match=fragment):
        llm.chat(messages)
    assert llm.chat(USER).message.content == PLAIN_ANSWER


def test_a_prompt_longer_than_the_context_is_an_error():
    backend = ScriptedBackend(
        ScriptedModel("s", [step("ok")], context_window=20), ScriptedModel("l", [step("ok")], context_window=20)
    )
    with pytest.raises(ContextLengthError):
        GlimpRouterLLM(backend=backend).complete("word " * 40)


@pytest.mark.embedded
def test_query_engine_on_the_embedded_model_answers_from_the_documents(recorder):
    llm = GlimpRouterLLM(seed=0, max_tokens=40, reasoning_budget=48)  # the default pair reasons, then answers
    response = build_query_engine(llm).query("When does the bakery open?")
    assert str(response).strip()
    assert "bakery" in response.source_nodes[0].node.get_content()
    steps = [e.routing for e in recorder.events if isinstance(e, GlimpStepEvent)]
    reasoning = [s for s in steps if s["phase"] == "reasoning"]
    assert reasoning and all(s["h_init"] is not None for s in reasoning)
    assert sum(s["tokens"] for s in reasoning) <= 48
    assert (steps[-1]["model"], steps[-1]["phase"]) == ("large", "answer") and steps[-1]["tokens"] <= 40


@pytest.mark.embedded
async def test_async_chat_on_the_embedded_model_does_not_block_the_event_loop():
    llm = GlimpRouterLLM(seed=0, max_tokens=30, reasoning_budget=30)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    response = await llm.achat([ChatMessage(role="user", content="Name three colours.")])
    elapsed = time.perf_counter() - started
    ticking.cancel()
    assert response.message.content
    # the model computes in worker threads: the loop keeps ticking for most of the run
    assert ticks >= 0.3 * elapsed / 0.01, (ticks, elapsed)


@pytest.mark.embedded
def test_streaming_on_the_embedded_model_matches_its_final_message():
    responses = list(GlimpRouterLLM(seed=1, max_tokens=20, reasoning_budget=30).stream_chat(USER))
    assert "".join(r.delta or "" for r in responses).strip() == responses[-1].message.content
    thinking = "".join(r.additional_kwargs.get("thinking_delta") or "" for r in responses)
    final = responses[-1].message.blocks
    assert thinking == "".join(b.content for b in final if isinstance(b, ThinkingBlock)) and thinking
    assert responses[-1].raw["glimp"]["steps"][-1]["tokens"] <= 20
