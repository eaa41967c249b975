"""`POST /v1/responses` against `glimp serve`: the official `openai` client (`responses.create`,
`responses.stream`) on the scripted pair, then LangChain's `ChatOpenAI(use_responses_api=True)`
and an OpenAI Agents SDK agent with a tool on the embedded model."""

import json

import httpx
import openai
import pytest

from glimp_integrations import GlimpRouter
from glimp_integrations.serve import running_server
from tests.scripted_pairs import PLAIN_ANSWER, scripted_pair

MULTIPLY = {
    "type": "function",
    "name": "multiply",
    "description": "Multiply two integers.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}


@pytest.fixture(scope="module")
def client():
    with running_server(GlimpRouter(backend=scripted_pair())) as url:
        yield openai.OpenAI(base_url=url, api_key="unused")


def test_a_response_carries_each_routed_step_as_a_reasoning_item_then_the_answer(client):
    response = client.responses.create(model="glimp", input="What is 3 x 3?", instructions="Answer briefly.")
    assert response.status == "completed" and response.output_text == PLAIN_ANSWER
    steps = response.model_extra["glimp"]["steps"]
    reasoning = [item for item in response.output if item.type == "reasoning"]
    assert [item.type for item in response.output] == ["reasoning"] * len(reasoning) + ["message"]
    assert len(reasoning) == sum(step["phase"] == "reasoning" for step in steps) == 2
    for item, step in zip(reasoning, steps):  # each step's text, and its routing under `glimp`
        assert item.model_extra["glimp"] == step and item.content[0].type == "reasoning_text"
        assert item.content[0].text and step["model"] == "small"
    assert response.usage.output_tokens_details.reasoning_tokens == sum(s["tokens"] for s in steps[:2])
    assert response.usage.input_tokens > 0


def test_the_stream_builds_the_same_response_event_by_event(client):
    whole = client.responses.create(model="glimp", input="What is 3 x 3?")
    with client.responses.stream(model="glimp", input="What is 3 x 3?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
    assert kinds.count("response.reasoning_text.done") == 2 and kinds.count("response.output_item.done") == 3
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text
    assert [item.type for item in final.output] == [item.type for item in whole.output]
    assert [item.content[0].text for item in final.output if item.type == "reasoning"] == [
        item.content[0].text for item in whole.output if item.type == "reasoning"
    ]


def test_function_tools_and_their_turns(client):
    first = client.responses.create(model="glimp", input="What is 3 x 3?", tools=[MULTIPLY])
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "multiply" and json.loads(call.arguments) == {"a": 3, "b": 3} and call.call_id
    with client.responses.stream(model="glimp", input="What is 3 x 3?", tools=[MULTIPLY]) as stream:
        kinds = [event.type for event in stream]
    assert "response.function_call_arguments.done" in kinds and "response.output_text.delta" not in kinds
    turn = [
        {"role": "user", "content": "What is 3 x 3?"},
        *[item.model_dump() for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "9"},
    ]
    second = client.responses.create(model="glimp", input=turn, tools=[MULTIPLY])
    assert second.output_text == PLAIN_ANSWER and not [i for i in second.output if i.type == "function_call"]


@pytest.mark.parametrize(
    "field, value, param",
    [
        ("previous_response_id", "resp_123", "previous_response_id"),
        ("store", True, "store"),
        ("conversation", "conv_1", "conversation"),
        ("tools", [{"type": "web_search"}], "tools[0]"),
        ("max_output_tokens", 0, "max_output_tokens"),
        ("max_output_tokens", 10**9, "max_output_tokens"),
        ("max_output_tokens", 4090, "max_output_tokens"),  # more than the prompt leaves of the 4096-token window
        ("input", [{"type": "image", "url": "x"}], "input[0]"),
        ("input", [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "input[0]['content']"),
        ("text", {"format": {"type": "json_schema"}}, "text.format"),
        ("reasoning", {"effort": "high"}, "reasoning"),
        ("temperature", "warm", "temperature"),
        ("threshold", -1, "threshold"),
        ("tool_choice", {}, "tool_choice"),  # it was a 500 (found by the generated requests)
    ],
)
def test_what_the_responses_api_cannot_take_is_a_400_naming_the_field(client, field, value, param):
    body = {"model": "glimp", "input": "What is 3 x 3?", field: value}
    response = httpx.post(str(client.base_url) + "responses", json=body, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


@pytest.fixture(scope="module")
def embedded_url():
    with running_server(GlimpRouter(seed=0, temperature=0.0, reasoning_budget=24, answer_budget=40)) as url:
        yield url


@pytest.mark.embedded
def test_responses_and_chat_completions_give_the_same_greedy_answer(embedded_url):
    client = openai.OpenAI(base_url=embedded_url, api_key="unused")
    response = client.responses.create(model="glimp", input="What is 3 x 3?")
    chat = client.chat.completions.create(model="glimp", messages=[{"role": "user", "content": "What is 3 x 3?"}])
    assert response.output_text == chat.choices[0].message.content
    reasoning = "".join(item.content[0].text for item in response.output if item.type == "reasoning")
    assert reasoning.strip() == chat.choices[0].message.model_extra["reasoning"].strip()


@pytest.mark.embedded
def test_text_format_json_schema_constrains_the_answer(embedded_url):
    client = openai.OpenAI(base_url=embedded_url, api_key="unused")
    schema = {
        "type": "object",
        "properties": {"total": {"type": "integer"}},
        "required": ["total"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model="glimp",
        input="Tom has 3 apples and buys 4. How many?",
        text={"format": {"type": "json_schema", "name": "count", "schema": schema}},
    )
    assert isinstance(json.loads(response.output_text)["total"], int)


@pytest.mark.embedded
def test_langchain_chat_openai_on_the_responses_api(embedded_url):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="glimp", base_url=embedded_url, api_key="unused", use_responses_api=True)
    answer = llm.invoke("What is 3 x 3?")
    assert answer.text and answer.usage_metadata["output_token_details"]["reasoning"] > 0
    assert "".join(chunk.text for chunk in llm.stream("What is 3 x 3?"))


@pytest.mark.embedded
def test_an_agents_sdk_agent_calls_its_tool_then_answers(embedded_url):
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    calls = []

    @function_tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        calls.append((a, b))
        return a * b

    model = OpenAIResponsesModel("glimp", openai.AsyncOpenAI(base_url=embedded_url, api_key="unused"))
    # the 135M model does not choose a tool by itself: the first turn must call one, the SDK then
    # resets the choice to auto and the model answers
    agent = Agent(
        name="calculator",
        instructions="Use the multiply tool.",
        model=model,
        tools=[multiply],
        model_settings=ModelSettings(tool_choice="required"),
    )
    result = Runner.run_sync(agent, "What is 3 x 3?", max_turns=4)
    assert calls and all(isinstance(a, int) and isinstance(b, int) for a, b in calls)
    assert isinstance(result.final_output, str) and result.final_output
