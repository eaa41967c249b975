"""`glimp serve`: the OpenAI-compatible API, on 127.0.0.1, with real clients.

The scripted pair checks the wire format exactly (fast); the embedded SmolLM2 pair is what the
official `openai` client, LangChain's ChatOpenAI / ChatDeepSeek and LlamaIndex's OpenAILike talk to."""

import json
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from glimp_integrations import GlimpConfigError, GlimpRouter, UpstreamError, Verdict
from glimp_integrations.serve import running_server, scrape
from tests.conftest import ScriptedChoices
from tests.constrained_cases import WeatherReport
from tests.otlp import running_otlp_receiver
from tests.scripted_pairs import PLAIN_ANSWER, scripted_pair

QUESTION = [{"role": "user", "content": "What is 3 x 3?"}]
MULTIPLY = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def sse_chunks(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url + "/chat/completions", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.fixture(scope="module")
def spans():
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def scripted_url(spans):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with running_server(GlimpRouter(backend=scripted_pair()), tracer_provider=provider) as url:
        yield url


def test_a_response_and_its_stream_carry_the_same_reasoning_answer_steps_and_usage(scripted_url):
    response = httpx.post(scripted_url + "/chat/completions", json={"model": "glimp", "messages": QUESTION}).json()
    message = response["choices"][0]["message"]
    assert message["content"] == PLAIN_ANSWER
    assert message["reasoning"] == "Let me think about it.\n\nI know what to do."  # (`</think>` not shown)
    assert message["reasoning_content"] == message["reasoning"]  # vLLM's name, and the DeepSeek API's
    steps = response["glimp"]["steps"]
    assert [s["model"] for s in steps] == ["small", "small", "large"] and steps[0]["h_init"] is not None
    usage = response["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == sum(s["tokens"] for s in steps[:2])
    assert set(usage["by_model"]) == {"small", "large"}

    chunks = sse_chunks(
        scripted_url, {"model": "glimp", "messages": QUESTION, "stream_options": {"include_usage": True}}
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning", "") for d in deltas).strip() == message["reasoning"]
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)
    assert "".join(d.get("content", "") for d in deltas) == PLAIN_ANSWER
    started = [c["glimp"]["step_started"] for c in chunks if "step_started" in c.get("glimp", {})]
    finished = [c["glimp"]["step_finished"] for c in chunks if "step_finished" in c.get("glimp", {})]
    assert [s["model"] for s in started] == [s["model"] for s in finished] == ["small", "small", "large"]
    assert [s["tokens"] for s in finished] == [s["tokens"] for s in steps]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == usage["completion_tokens"]


def test_tool_calls_arrive_whole_in_a_response_and_as_deltas_in_a_stream(scripted_url):
    body = {
        "model": "glimp",
        "messages": QUESTION,
        "tools": [MULTIPLY],
        "tool_choice": {"type": "function", "function": {"name": "multiply"}},
    }
    response = httpx.post(scripted_url + "/chat/completions", json=body).json()
    choice = response["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "multiply" and json.loads(call["arguments"]) == {"a": 3, "b": 3}

    client = openai.OpenAI(base_url=scripted_url, api_key="unused")
    stream = client.chat.completions.create(
        model="glimp", messages=QUESTION, tools=[MULTIPLY], tool_choice="required", stream=True
    )
    name, arguments, ids, finish = "", "", set(), None
    for chunk in stream:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            ids.add(delta_call.id) if delta_call.id else None
            name += delta_call.function.name or ""
            arguments += delta_call.function.arguments or ""
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
    assert (name, json.loads(arguments), len(ids), finish) == ("multiply", {"a": 3, "b": 3}, 1, "tool_calls")


def test_tools_with_a_response_format_give_a_call_then_an_answer_in_that_format(scripted_url):
    """OpenAI's tools plus response_format, as agents send them for a structured final answer."""
    product = {
        "type": "json_schema",
        "json_schema": {
            "name": "product",
            "schema": {"type": "object", "properties": {"product": {"type": "integer"}}, "required": ["product"]},
        },
    }
    body = {"model": "glimp", "messages": QUESTION, "tools": [MULTIPLY], "response_format": product}
    first = httpx.post(scripted_url + "/chat/completions", json=body).json()["choices"][0]
    assert first["finish_reason"] == "tool_calls"
    call = first["message"]["tool_calls"][0]
    result = {"role": "tool", "tool_call_id": call["id"], "content": "9"}
    body["messages"] = [*QUESTION, first["message"], result]
    second = httpx.post(scripted_url + "/chat/completions", json=body).json()["choices"][0]
    assert second["finish_reason"] == "stop" and "tool_calls" not in second["message"]
    assert json.loads(second["message"]["content"]) == {"product": 3}


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [
        ("thresold", 1.0, 400),  # misspelt routing setting
        ("threshold", -1, 400),  # rejected by the engine's validation
        ("logprobs", True, 400),  # an OpenAI field glimp cannot honour
        ("n", 2, 400),
        ("tool_choice", "divide", 400),  # no such tool
        ("structured_outputs", {"regex": "a+", "choice": ["a"]}, 400),  # vLLM's field: one form at a time
        ("structured_outputs", {"json": "{not json"}, 400),
        ("structured_outputs", {"grammar": "start: nothing_defined"}, 400),  # rejected by the grammar engine
        ("model", "gpt-4o", 404),
    ],
)
def test_a_bad_field_is_an_openai_error_that_names_it_and_the_server_keeps_serving(scripted_url, field, value, status):
    body = {"model": "glimp", "messages": QUESTION, "tools": [MULTIPLY], field: value}
    response = httpx.post(scripted_url + "/chat/completions", json=body)
    error = response.json()["error"]
    assert (response.status_code, error["param"]) == (status, field) and repr(value) in error["message"]
    assert (
        httpx.post(scripted_url + "/chat/completions", json={"model": "glimp", "messages": QUESTION}).status_code == 200
    )


def test_a_bad_message_is_an_error_naming_its_place_in_messages(scripted_url):
    body = {"model": "glimp", "messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Hi"}]}
    response = httpx.post(scripted_url + "/chat/completions", json=body)
    error = response.json()["error"]
    assert (response.status_code, error["param"]) == (400, "messages[1]['role']") and "'robot'" in error["message"]


def test_models_health_and_metrics(scripted_url):
    models = openai.OpenAI(base_url=scripted_url, api_key="unused").models.list().data
    assert [m.id for m in models] == ["glimp"] and models[0].model_extra["large_model"] == "scripted-large"
    assert httpx.get(scripted_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    before = (
        scrape(scripted_url, "glimp_requests_total", status="200"),
        scrape(scripted_url, "glimp_steps_total", model="small", phase="reasoning"),
        scrape(scripted_url, "glimp_h_init_nats_count"),
    )
    httpx.post(scripted_url + "/chat/completions", json={"model": "glimp", "messages": QUESTION})
    after = (
        scrape(scripted_url, "glimp_requests_total", status="200"),
        scrape(scripted_url, "glimp_steps_total", model="small", phase="reasoning"),
        scrape(scripted_url, "glimp_h_init_nats_count"),
    )
    assert [b - a for a, b in zip(before, after)] == [1, 2, 2]  # one request, two probed small steps
    assert scrape(scripted_url, "glimp_runs_running") == 0
    assert scrape(scripted_url, "glimp_time_to_first_token_seconds_count") >= 1


def test_each_run_is_a_span_with_a_child_span_per_step(scripted_url, spans):
    spans.clear()
    httpx.post(scripted_url + "/chat/completions", json={"model": "glimp", "messages": QUESTION, "threshold": 0.5})
    finished = spans.get_finished_spans()
    runs = [s for s in finished if s.name == "glimp.run"]
    steps = [s for s in finished if s.name == "glimp.step"]
    assert len(runs) == 1 and runs[0].attributes["glimp.threshold"] == 0.5
    assert len(steps) == 3 and all(s.parent.span_id == runs[0].context.span_id for s in steps)
    assert [s.attributes["glimp.step.model"] for s in steps] == ["small", "small", "large"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "failure, status",
    [
        (ZeroDivisionError("division by zero"), 500),  # inside Glimp
        (UpstreamError("the large model's server at http://10.0.0.7:8000/v1 failed"), 502),
        (UpstreamError("the large model's server at http://10.0.0.7:8000/v1 refused the request", "input"), 400),
    ],
)
def test_a_failed_run_answers_with_the_status_of_what_failed(stream, failure, status, caplog):
    """The status comes from the engine's `GlimpRunError.failure`: a model server that failed is a
    502, one that refused the request as invalid a 400, anything else a 500.  The body says what
    failed and the request's id, never the exception's text or an internal URL: those go to the log."""
    # the failure comes from routing, where a small model's would degrade the run: here it must end it
    router = GlimpRouter(
        backend=scripted_pair(), policy=ScriptedChoices(Verdict.DELEGATE, failure), small_model_failure="fail"
    )
    with running_server(router) as url:
        body = {"model": "glimp", "messages": QUESTION, "stream": stream}
        response = httpx.post(url + "/chat/completions", json=body)
        if stream:
            lines = response.text.rstrip().splitlines()
            error = next(json.loads(line.removeprefix("data: "))["error"] for line in lines if '"error"' in line)
            assert lines[-1] == "data: [DONE]"
            assert scrape(url, "glimp_requests_total", status=str(status)) == 1
        else:
            assert response.status_code == status
            error = response.json()["error"]
    assert error["code"] == status and error["type"] == ("invalid_request_error" if status == 400 else "server_error")
    assert error["request_id"] == response.headers["x-request-id"] and error["request_id"] in error["message"]
    assert str(failure) not in error["message"] and "10.0.0.7" not in error["message"]
    logged = [r for r in caplog.records if error["request_id"] in r.getMessage()]
    assert logged and str(failure) in str(logged[0].exc_info[1])


# --- the embedded pair, real clients --------------------------------------------------------------


class Order(BaseModel):
    customer: str
    quantity: int


KEY = "sk-glimp-test-9f8e7d"


def test_openapi_describes_what_each_api_takes_and_answers():
    """/openapi.json carries each API's wire model (its fields, the run settings among them) and
    openai's response types, and every reference in it resolves."""
    with running_server(GlimpRouter(backend=scripted_pair())) as url:
        schema = httpx.get(url.removesuffix("/v1") + "/openapi.json").json()
    components = schema["components"]["schemas"]
    chat = components["ChatCompletionRequest"]
    assert {"messages", "temperature", "tools", "threshold", "reasoning_budget"} <= set(chat["properties"])
    assert chat["required"] == ["messages"] and chat["additionalProperties"] is False
    assert "must be a number from 0 to 2" in chat["properties"]["temperature"]["description"].lower()
    responses = components["ResponsesRequest"]
    assert {"input", "max_output_tokens", "text", "threshold"} <= set(responses["properties"])
    for path, request, answer in (
        ("/v1/chat/completions", "ChatCompletionRequest", "ChatCompletion"),
        ("/v1/responses", "ResponsesRequest", "Response"),
    ):
        operation = schema["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + request)
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + answer)
    references = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(schema)))
    assert references and references <= set(components)


def test_an_api_key_admits_only_its_holders_to_the_v1_routes():
    with running_server(GlimpRouter(backend=scripted_pair()), api_key=KEY) as url:
        base = url.removesuffix("/v1")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):  # none, wrong, no "Bearer"
            for method, path in (("GET", "/models"), ("POST", "/chat/completions")):
                response = httpx.request(method, url + path, headers=headers, json={"messages": QUESTION})
                error = response.json()["error"]
                assert response.status_code == 401 and error["code"] == "invalid_api_key"
                assert error["type"] == "authentication_error" and KEY not in response.text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong").chat.completions.create(model="glimp", messages=QUESTION)
        client = openai.OpenAI(base_url=url, api_key=KEY)
        assert client.chat.completions.create(model="glimp", messages=QUESTION).choices[0].message.content
        assert [m.id for m in client.models.list()] == ["glimp"]
        for path in ("/health", "/readyz", "/livez", "/metrics"):  # for the orchestrator: no key, keep them internal
            assert httpx.get(base + path).status_code == 200
        metrics = httpx.get(base + "/metrics").text
        assert KEY not in metrics and scrape(url, "glimp_requests_total", status="401") == 7


def test_an_empty_api_key_is_refused_at_start():
    from glimp_integrations.serve import create_app

    with pytest.raises(GlimpConfigError, match="`api_key`") as error:
        create_app(GlimpRouter(backend=scripted_pair()), api_key=" ")
    assert "<hidden>" in str(error.value)


@pytest.fixture(scope="module")
def embedded_url():
    with running_server(GlimpRouter(seed=0, reasoning_budget=24, answer_budget=40)) as url:
        yield url


@pytest.mark.embedded
def test_the_openai_client_gets_routed_reasoning_then_the_answer(embedded_url):
    client = openai.OpenAI(base_url=embedded_url, api_key="unused")
    response = client.chat.completions.create(model="glimp", messages=QUESTION)
    message = response.choices[0].message
    assert message.content and message.model_extra["reasoning"] == message.model_extra["reasoning_content"]
    steps = response.model_extra["glimp"]["steps"]
    assert steps[-1]["phase"] == "answer" and any(s["h_init"] is not None for s in steps)
    assert response.usage.completion_tokens_details.reasoning_tokens > 0

    chunks = list(client.chat.completions.create(model="glimp", messages=QUESTION, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas)
    assert "".join(d.content or "" for d in deltas)
    # the reasoning sent back in the next turn, under either name, is read (and checked)
    for name in ("reasoning", "reasoning_content"):
        turn = [
            *QUESTION,
            {"role": "assistant", "content": message.content, name: message.model_extra["reasoning"]},
            {"role": "user", "content": "And with 2 more?"},
        ]
        assert client.chat.completions.create(model="glimp", messages=turn, max_tokens=4).choices[0].message.content
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model="glimp",
            messages=[
                *QUESTION,
                {"role": "assistant", "content": "7", "reasoning": "a", "reasoning_content": "b"},
                {"role": "user", "content": "Sure?"},
            ],
        )
    assert error.value.body["param"] == "messages[1]['reasoning']"


@pytest.mark.embedded
def test_langchain_chat_openai_and_chat_deepseek_answer_call_tools_and_fill_schemas(embedded_url):
    from langchain_deepseek import ChatDeepSeek
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="glimp", base_url=embedded_url, api_key="unused", max_tokens=40)
    answer = llm.invoke("What is 3 x 3?")
    assert answer.content and answer.usage_metadata["output_token_details"]["reasoning"] > 0
    assert "".join(chunk.content for chunk in llm.stream("What is 3 x 3?"))
    called = llm.bind_tools([MULTIPLY], tool_choice="multiply").invoke("What is 3 x 3?")
    assert called.tool_calls[0]["name"] == "multiply" and set(called.tool_calls[0]["args"]) == {"a", "b"}
    order = llm.with_structured_output(Order, method="json_schema").invoke("Alice orders 2 pears. Write the order.")
    assert isinstance(order, Order)
    # ChatOpenAI drops non-OpenAI fields; ChatDeepSeek (a ChatOpenAI) reads `reasoning_content`
    thinking = ChatDeepSeek(model="glimp", api_base=embedded_url, api_key="unused").invoke("What is 3 x 3?")
    assert thinking.additional_kwargs["reasoning_content"] and thinking.content


@pytest.mark.embedded
@pytest.mark.parametrize(
    "structured_outputs, answer",
    [
        ({"choice": ["yes", "no"]}, r"yes|no"),
        ({"regex": r"[0-9]{2}-[a-z]{3}"}, r"[0-9]{2}-[a-z]{3}"),
        ({"grammar": 'start: "Total: " NUMBER " apples"\nNUMBER: /[1-9][0-9]?/'}, r"Total: [1-9][0-9]? apples"),
        (
            {"json": {"type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]}},
            r'\{"total": -?[0-9]+\}',
        ),
    ],
)
def test_vllm_structured_outputs_constrain_the_answer(embedded_url, structured_outputs, answer):
    """vLLM's `structured_outputs` extension field, as vLLM clients send it in `extra_body`."""
    client = openai.OpenAI(base_url=embedded_url, api_key="unused")
    response = client.chat.completions.create(
        model="glimp",
        messages=[{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many?"}],
        max_tokens=30,
        extra_body={"structured_outputs": structured_outputs, "reasoning_mode": "plain"},
    )
    assert re.fullmatch(answer, response.choices[0].message.content), response.choices[0].message.content


@pytest.mark.embedded
def test_a_langchain_agent_over_chat_openai_runs_its_tool_loop_through_the_server(embedded_url):
    """create_agent over ChatOpenAI pointed at glimp serve: the client sends its call back as an
    assistant message with `content: null` and arguments as JSON text, then gets its structured
    response as a forced call (create_agent's ToolStrategy, for a model it does not know)."""
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    from langchain_glimp.agents import CallToolThenAnswer

    @tool
    def get_weather(location: str) -> str:
        """Get the weather at a location."""
        return f"It is sunny in {location}."

    llm = ChatOpenAI(
        model="glimp", base_url=embedded_url, api_key="unused", max_tokens=100, extra_body={"reasoning_mode": "plain"}
    )
    agent = create_agent(llm, [get_weather], response_format=WeatherReport, middleware=[CallToolThenAnswer()])
    result = agent.invoke({"messages": [("user", "What is the weather in Paris?")]})
    messages = result["messages"]
    assert [m.type for m in messages] == ["human", "ai", "tool", "ai", "tool"]
    assert messages[1].tool_calls[0]["name"] == "get_weather" and messages[2].content.startswith("It is sunny in")
    assert isinstance(result["structured_response"], WeatherReport)


@pytest.mark.embedded
async def test_llamaindex_openailike_chats_and_streams_thinking(embedded_url):
    from llama_index.core.base.llms.types import ChatMessage, ThinkingBlock
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(
        model="glimp",
        api_base=embedded_url,
        api_key="unused",
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=2048,
    )
    response = await llm.achat([ChatMessage(role="user", content="What is 3 x 3?")])
    assert response.message.content
    last = None
    for last in llm.stream_chat([ChatMessage(role="user", content="What is 3 x 3?")]):
        pass
    assert last.message.content and any(isinstance(b, ThinkingBlock) and b.content for b in last.message.blocks)


@pytest.mark.embedded
def test_a_client_that_disconnects_cancels_its_run():
    """Runs long enough to leave mid-way: the operator's reasoning budget (the most a request may
    ask) is 400 tokens here."""
    with running_server(GlimpRouter(seed=0, temperature=0.0, reasoning_budget=400, answer_budget=40)) as url:
        body = {"model": "glimp", "messages": QUESTION, "stream": True}
        with httpx.stream("POST", url + "/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if "reasoning_content" in line:
                    break  # leave mid-stream
        with pytest.raises(httpx.ReadTimeout):  # a non-streamed request whose client gives up
            httpx.post(url + "/chat/completions", json={**body, "stream": False}, timeout=1.0)
        deadline = time.monotonic() + 30
        while scrape(url, "glimp_runs_running") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert scrape(url, "glimp_runs_running") == 0
        assert scrape(url, "glimp_requests_total", status="499") == 2


@pytest.fixture()
def otlp_receiver():
    with running_otlp_receiver() as receiver_and_endpoint:
        yield receiver_and_endpoint


@pytest.mark.embedded
def test_glimp_serve_from_the_command_line_exports_spans_and_drains_on_sigterm(otlp_receiver):
    receiver, endpoint = otlp_receiver
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "glimp_integrations.cli",
        "serve",
        "--port",
        str(port),
        "--reasoning-budget",
        "16",
        "--served-model-name",
        "tiny-pair",
        "--log-level",
        "warning",
        "--otlp-traces-endpoint",
        endpoint,
        "--seed",
        "0",
        "--temperature",
        "0",
    ]  # greedy: the finish reasons asserted below cannot vary
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert process.poll() is None, process.stderr.read()[-2000:]
        response = httpx.post(
            base + "/v1/chat/completions",
            timeout=120,
            json={"model": "tiny-pair", "messages": QUESTION, "max_tokens": 8},
        )
        assert response.status_code == 200 and response.json()["glimp"]["summary"]["mode"] == "think"
        # SIGTERM in the middle of a stream: the stream still ends whole, then the process exits
        with httpx.stream(
            "POST",
            base + "/v1/chat/completions",
            timeout=120,
            json={"model": "tiny-pair", "messages": QUESTION, "max_tokens": 8, "stream": True},
        ) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and '"finish_reason": "length"' in "".join(rest)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    # the spans still in the exporter's batch went out at shutdown, to the receiver
    spans = receiver.spans()
    runs = [span for resource, span in spans if span.name == "glimp.run" and resource["service.name"] == "glimp"]
    steps = [span for _, span in spans if span.name == "glimp.step"]
    assert len(runs) == 2 and steps
    assert {step.parent_span_id for step in steps} <= {run.span_id for run in runs}
    assert all(
        {a.key for a in step.attributes} >= {"glimp.step.model", "glimp.step.h_init"}
        for step in steps
        if any(a.key == "glimp.step.phase" and a.value.string_value == "reasoning" for a in step.attributes)
    )
