"""ChatGlimpRouter's tools and structured output: every form reaches the engine as a constraint, and
on the real embedded model the answers parse and validate."""

import asyncio
from typing import TypedDict

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_glimp import ChatGlimpRouter
from langchain_glimp.chat_models import _to_engine_message
from tests.constrained_cases import Order, WeatherReport
from tests.scripted_pairs import scripted_pair


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return f"It is sunny in {location}."


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class OrderDict(TypedDict):
    customer: str
    total: float


def test_every_tool_choice_form_becomes_the_engines_constraint():
    backend = scripted_pair()
    llm = ChatGlimpRouter(backend=backend)
    forms = [
        (None, "auto"),
        ("auto", "auto"),
        ("any", "required"),
        (True, "required"),
        ("required", "required"),
        ("multiply", "multiply"),
        ({"type": "function", "function": {"name": "multiply"}}, "multiply"),
        ("none", "none"),
    ]
    for given, expected in forms:
        before = len(backend.constrained_writes)
        message = llm.bind_tools([get_weather, multiply], tool_choice=given).invoke("What is 3 times 3?")
        role, constraint = backend.constrained_writes[before]
        assert role == "large" and len(backend.constrained_writes) == before + 1
        assert (constraint.kind, constraint.tool_choice, constraint.tool_names) == (
            "tools",
            expected,
            ["get_weather", "multiply"],
        )
        if expected == "none":
            assert "%json" not in constraint.grammar and message.tool_calls == []


def test_strict_and_parallel_tool_calls_shape_the_grammar():
    backend = scripted_pair()
    llm = ChatGlimpRouter(backend=backend)
    llm.bind_tools([multiply], tool_choice="any", strict=True, parallel_tool_calls=False).invoke("3 times 3?")
    single = backend.constrained_writes[-1][1]
    llm.bind_tools([multiply], tool_choice="any").invoke("3 times 3?")
    parallel = backend.constrained_writes[-1][1]
    assert (parallel.parallel_tool_calls, single.parallel_tool_calls) == (True, False)
    assert '"required": ["a", "b"]' in single.grammar


def test_a_bad_tool_choice_names_the_tools_and_the_model_stays_usable():
    llm = ChatGlimpRouter(backend=scripted_pair())
    with pytest.raises(ValueError, match=r"tool_choice.*get_weather, multiply.*'divide'"):
        llm.bind_tools([get_weather, multiply], tool_choice="divide").invoke("hi")
    assert llm.bind_tools([multiply]).invoke("3 times 3?").tool_calls[0]["args"] == {"a": 3, "b": 3}


def test_structured_output_methods_on_the_scripted_pair_keep_the_raw_message():
    for method in ("json_schema", "function_calling", "json_mode"):
        schema = (
            OrderDict
            if method == "function_calling"
            else {
                "title": "Joke",
                "type": "object",
                "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
                "required": ["setup", "punchline"],
            }
        )
        out = (
            ChatGlimpRouter(backend=scripted_pair())
            .with_structured_output(schema, method=method, include_raw=True)
            .invoke("Answer in JSON.")
        )
        assert out["parsing_error"] is None and out["parsed"], method
        raw = out["raw"]
        assert [b["type"] for b in raw.content_blocks][:2] == ["reasoning", "reasoning"]
        assert raw.response_metadata["glimp"]["steps"][-1]["decision"] == "forced"


def test_a_multi_turn_tool_loop_round_trips_ids_results_and_reasoning():
    backend = scripted_pair()
    llm = ChatGlimpRouter(backend=backend).bind_tools([multiply])
    question = HumanMessage("What is 3 times 3?")
    call = llm.invoke([question])
    assert call.tool_calls and call.content_blocks[0]["type"] == "reasoning"
    result = ToolMessage(str(multiply.invoke(call.tool_calls[0]["args"])), tool_call_id=call.tool_calls[0]["id"])
    answer = llm.invoke([question, call, result])
    assert answer.tool_calls == [] and answer.text
    engine_call, engine_result = _to_engine_message(call, 1), _to_engine_message(result, 2)
    assert engine_call["tool_calls"][0]["id"] == call.tool_calls[0]["id"] == engine_result["tool_call_id"]
    assert engine_call["reasoning_content"].startswith("Let me think about it.")
    assert '"name": "multiply"' in backend.prompts[-1] and "tool: 9" in backend.prompts[-1]


# --- the real embedded model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    return ChatGlimpRouter(seed=0, max_tokens=160, reasoning_budget=32)  # short reasoning, then the answer


@pytest.mark.embedded
@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_structured_output_on_the_embedded_model_validates(embedded, method):
    if method == "json_mode":  # any JSON object, parsed as a dict
        cat = embedded.with_structured_output({"title": "Cat", "type": "object"}, method=method).invoke(
            "Describe a cat as a JSON object."
        )
        assert isinstance(cat, dict)
        return
    order = embedded.with_structured_output(Order, method=method).invoke(
        "Alice orders 2 red apples and 1 red pear. Write the order."
    )
    assert isinstance(order, Order) and all(item.quantity >= 0 for item in order.items)


@pytest.mark.embedded
def test_tool_choice_none_and_a_named_tool_on_the_embedded_model(embedded):
    text = embedded.bind_tools([get_weather, multiply], tool_choice="none").invoke("What is 3 times 4?")
    assert text.tool_calls == [] and "<tool_call>" not in text.text
    named = embedded.bind_tools([get_weather, multiply], tool_choice="multiply", parallel_tool_calls=False).invoke(
        "What is 3 times 4?"
    )
    assert [c["name"] for c in named.tool_calls] == ["multiply"]
    assert set(named.tool_calls[0]["args"]) == {"a", "b"} and all(
        isinstance(v, int) for v in named.tool_calls[0]["args"].values()
    )


def test_create_agent_with_a_response_format_calls_tools_then_answers_in_that_format():
    """create_agent gives a model whose profile declares structured output its tools and the
    response format together (ProviderStrategy): the engine constrains each answer to calls or
    that format, and the agent's structured_response is parsed from the final answer."""
    from langchain.agents import create_agent

    backend = scripted_pair()
    agent = create_agent(ChatGlimpRouter(backend=backend), tools=[get_weather], response_format=WeatherReport)
    result = agent.invoke({"messages": [HumanMessage("What is the weather in 'Paris'?")]})
    assert [m.type for m in result["messages"]] == ["human", "ai", "tool", "ai"]
    assert result["messages"][1].tool_calls[0]["args"] == {"location": "Paris"}
    assert result["structured_response"] == WeatherReport(location="Paris", conditions="Paris")
    constraints = [constraint for _, constraint in backend.constrained_writes]
    assert len(constraints) == 2 and all(
        c.answer_format.kind == "json_schema"
        and c.tool_choice == "auto"
        and c.grammar.startswith("start: answer | calls")
        for c in constraints
    )
    assert "Unless you call a tool, reply with a single JSON value" in backend.prompts[-1]


@pytest.mark.embedded
@pytest.mark.parametrize("response_format", [None, WeatherReport], ids=["text", "structured"])
def test_create_agent_on_the_embedded_model_calls_the_tool_then_answers(response_format):
    from langchain.agents import create_agent

    from langchain_glimp.agents import CallToolThenAnswer

    model = ChatGlimpRouter(seed=0, max_tokens=160, reasoning_mode="plain")  # the answer follows the tool result
    agent = create_agent(model, tools=[get_weather], response_format=response_format, middleware=[CallToolThenAnswer()])
    question = {"messages": [HumanMessage("What is the weather in Paris?")]}
    # the middleware's sync and async hooks: one run each way
    result = agent.invoke(question) if response_format is None else asyncio.run(agent.ainvoke(question))
    messages = result["messages"]
    assert [m.type for m in messages] == ["human", "ai", "tool", "ai"]
    call = messages[1].tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"]["location"], str)
    assert messages[2].content.startswith("It is sunny in") and messages[3].tool_calls == []
    assert messages[3].response_metadata["glimp"]["mode"] == "plain"
    if response_format is None:
        assert messages[3].text and "<tool_call>" not in messages[3].text
    else:
        assert isinstance(result["structured_response"], WeatherReport)
        assert WeatherReport.model_validate_json(messages[3].text) == result["structured_response"]


@pytest.mark.embedded
def test_the_default_chat_model_shows_routed_reasoning_then_the_answer():
    message = ChatGlimpRouter(seed=0, max_tokens=40).invoke("Tom has 3 apples and buys 4 more. How many?")
    reasoning = [b for b in message.content_blocks if b["type"] == "reasoning"]
    routing = [b["extras"]["glimp"] for b in reasoning if "extras" in b]
    assert len(routing) == len(reasoning) and all(r["h_init"] is not None for r in routing)
    assert message.text and message.response_metadata["glimp"]["mode"] == "think"
    assert message.response_metadata["glimp"]["steps"][-1]["model"] == "large"
