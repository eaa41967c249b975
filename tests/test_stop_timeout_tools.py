"""Stop sequences, the run timeout, and tool-call rendering and parsing."""

import pytest

from glimp_integrations import GlimpRunError, TokenDelta
from glimp_integrations.errors import GlimpTimeoutError
from glimp_integrations.tool_formats import parse_tool_calls
from glimp_integrations.tools import prepare_messages
from tests.conftest import scripted_router, step

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_stop_sequence_ends_the_run_before_it_and_is_never_streamed():
    router, _ = scripted_router(
        [step("Thought: add.\n\n"), step("It is 7. Observation: done"), step("more")], [], stop=["Observation:"]
    )
    events = list(router.stream("q"))
    trace = events[-1].trace
    assert trace.answer == "Thought: add.\n\nIt is 7."
    assert trace.finish_reason == "stop" and len(trace.steps) == 2
    streamed = "".join(e.text for e in events if isinstance(e, TokenDelta))
    assert "Observation" not in streamed and streamed == "Thought: add.\n\nIt is 7. "


def test_stop_sequences_apply_to_the_answer_not_the_reasoning_in_think_mode():
    router, _ = scripted_router(
        [step("I should STOP thinking. </think>")], [step("Answer STOP ignored")], think=True, stop=["STOP"]
    )
    trace = router.run("q")
    assert trace.reasoning == "I should STOP thinking."
    assert trace.answer == "Answer"


def test_timeout_raises_with_the_partial_trace():
    router, _backend = scripted_router([step("a\n\n")] * 50, [], timeout=1e-9)
    with pytest.raises(GlimpTimeoutError, match="`timeout`") as info:
        router.run("q")
    assert isinstance(info.value, GlimpRunError) and isinstance(info.value, TimeoutError)
    assert info.value.partial_trace is not None


def test_tools_are_described_to_templates_that_cannot_render_them():
    router, backend = scripted_router(
        [step("x")],
        [],
    )
    router.run("weather in Paris?", tools=[WEATHER], tool_choice="get_weather")
    assert all(
        "get_weather" in p and "<tool_call>" in p and "must call the tool `get_weather`" in p for p in backend.prompts
    )


def test_prepare_messages_inlines_earlier_tool_calls():
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "rain"},
    ]
    prepared = prepare_messages(messages, [WEATHER], template_renders_tools=False)
    assert prepared[0]["role"] == "system"
    assert prepared[2]["content"] == '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    assert "tool_calls" not in prepared[2]
    assert prepare_messages(messages, [WEATHER], template_renders_tools=True) == messages


@pytest.mark.parametrize(
    "text, content, calls",
    [
        (
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
            "",
            [("get_weather", {"city": "Paris"})],
        ),
        (
            'Let me check. <tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}\n</tool_call>',
            "Let me check.",
            [("get_weather", {"city": "Rome"})],
        ),
        ('{"name": "get_weather", "arguments": {"city": "Oslo"}}', "", [("get_weather", {"city": "Oslo"})]),
        (
            '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>',
            '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>',
            [],
        ),
        ("<tool_call>not json</tool_call>", "<tool_call>not json</tool_call>", []),
        ("Plain answer.", "Plain answer.", []),
    ],
)
def test_parse_tool_calls(text, content, calls):
    parsed_content, parsed = parse_tool_calls(text, ["get_weather"])
    assert parsed_content == content
    assert [(c.name, c.arguments) for c in parsed] == calls
    assert len({c.id for c in parsed}) == len(parsed)
