"""GlimpRouterLLM's tool calls and structured prediction: valid by construction on the embedded model."""

import pytest
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, ThinkingBlock, ToolCallBlock
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool

from llamaindex_glimp import GlimpRouterLLM
from tests.constrained_cases import Order, WeatherReport
from tests.scripted_pairs import scripted_pair


def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return f"It is sunny in {location}."


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


PROMPT = PromptTemplate("{customer} orders 2 red apples and 1 red pear. Write the order.")
TOOLS = [FunctionTool.from_defaults(get_weather), FunctionTool.from_defaults(multiply)]


def test_streamed_tool_calls_grow_and_carry_openai_tool_calls():
    llm = GlimpRouterLLM(backend=scripted_pair())
    responses = list(llm.stream_chat_with_tools(TOOLS[1:], user_msg="What is 3 x 3?", tool_required=True))
    with_calls = [r for r in responses if any(isinstance(b, ToolCallBlock) for b in r.message.blocks)]
    assert with_calls and all(r.message.additional_kwargs["tool_calls"] for r in with_calls)
    ids = {b.tool_call_id for r in with_calls for b in r.message.blocks if isinstance(b, ToolCallBlock)}
    assert len(ids) == 1  # one call, one id for the whole stream
    assert llm.get_tool_calls_from_response(responses[-1])[0].tool_kwargs == {"a": 3, "b": 3}


def test_tool_required_and_parallel_calls_reach_the_grammar():
    backend = scripted_pair()
    llm = GlimpRouterLLM(backend=backend)
    llm.chat_with_tools(TOOLS, user_msg="What is 3 x 3?", tool_required=True, allow_parallel_tool_calls=False)
    constraint = backend.constrained_writes[-1][1]
    assert (constraint.tool_choice, constraint.parallel_tool_calls) == ("required", False)


@pytest.fixture(scope="module")
def embedded():
    return GlimpRouterLLM(seed=0, max_tokens=160, reasoning_budget=32)  # short reasoning, then the answer


@pytest.mark.embedded
def test_tool_required_always_yields_a_call(embedded):
    for question in ("What is 3 times 4?", "Hello there!"):
        response = embedded.chat_with_tools(TOOLS, user_msg=question, tool_required=True)
        selections = embedded.get_tool_calls_from_response(response)
        assert len(selections) == 1 and selections[0].tool_name in ("get_weather", "multiply")


@pytest.mark.embedded
async def test_structured_predict_sync_async_and_structured_llm_return_filled_objects(embedded):
    orders = [
        embedded.structured_predict(Order, PROMPT, customer="Alice"),
        await embedded.astructured_predict(Order, PROMPT, customer="Bob"),
    ]
    structured = embedded.as_structured_llm(Order).chat(
        [ChatMessage(role="user", content=PROMPT.format(customer="Carol"))]
    )
    orders.append(structured.raw)
    for order in orders:
        assert isinstance(order, Order) and order.customer and all(i.quantity >= 0 for i in order.items)


@pytest.mark.embedded
async def test_streamed_structured_predict_grows_to_a_complete_object(embedded):
    partials = list(embedded.stream_structured_predict(Order, PROMPT, customer="Alice"))
    apartials = [p async for p in await embedded.astream_structured_predict(Order, PROMPT, customer="Bob")]
    for stream in (partials, apartials):
        assert len(stream) > 2
        filled = [len(p.model_dump(exclude_none=True)) for p in stream]
        assert filled == sorted(filled)  # objects only grow
        assert isinstance(Order.model_validate(stream[-1].model_dump()), Order)


@pytest.mark.embedded
async def test_function_agent_on_the_embedded_model_calls_the_tool_then_answers():
    """`initial_tool_choice` (LlamaIndex's way to force the first call) makes the 135M model call
    the tool; the call is valid by construction; then it answers from the result, and `output_cls`
    gets that answer as a filled object.  Plain mode: after a 32-token think step the 135M model
    keeps calling the tool until the agent's iteration cap."""
    llm = GlimpRouterLLM(seed=0, max_tokens=160, reasoning_mode="plain")
    agent = FunctionAgent(tools=[get_weather], llm=llm, initial_tool_choice="get_weather", output_cls=WeatherReport)
    handler = agent.run("What is the weather in Paris?")
    results = [e async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
    answer = await handler
    assert results and {r.tool_name for r in results} == {"get_weather"}
    assert all(r.tool_output.content.startswith("It is sunny in") for r in results)
    assert str(answer).strip()
    assert isinstance(answer.get_pydantic_model(WeatherReport), WeatherReport)


@pytest.mark.embedded
def test_the_default_llm_shows_routed_thinking_then_the_answer():
    response = GlimpRouterLLM(seed=0, max_tokens=40).chat(
        [ChatMessage(role="user", content="Tom has 3 apples and buys 4 more. How many?")]
    )
    thinking = [b for b in response.message.blocks if isinstance(b, ThinkingBlock)]
    assert thinking and all(b.additional_information["h_init"] is not None for b in thinking)
    assert response.message.content and response.raw["glimp"]["mode"] == "think"
