"""Constrained runs that any real backend must answer validly: (run arguments, check of the trace)."""

from __future__ import annotations

import json
import re
from enum import Enum

import jsonschema
from pydantic import BaseModel, Field

from glimp_integrations.tool_formats import parse_tool_calls


class Colour(str, Enum):
    red = "red"
    green = "green"


class Item(BaseModel):
    name: str = Field(max_length=30)
    quantity: int = Field(ge=0)


class Order(BaseModel):
    """An order of items (the adapters' structured-output tests parse answers into it).  Lists and
    strings are bounded so that a small model's answer always fits its token budget."""

    customer: str = Field(max_length=30)
    colour: Colour
    items: list[Item] = Field(max_length=3)


class WeatherReport(BaseModel):
    """An agent's final answer (the adapters' and the server's agent tests)."""

    location: str = Field(max_length=40)
    conditions: str = Field(max_length=40)


ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "customer": {"type": "string", "maxLength": 30},
        "colour": {"enum": ["red", "green"]},
        "items": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 30},
                    "quantity": {"type": "integer", "minimum": 0},
                },
                "required": ["name", "quantity"],
            },
        },
    },
    "required": ["customer", "colour", "items"],
}
ORDER_QUESTION = "Alice orders 2 red apples and 1 red pear. Write the order."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather at a location.",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
        },
    },
    {
        "type": "function",
        "function": {"name": "place_order", "description": "Place an order.", "parameters": ORDER_SCHEMA},
    },
]


def check_order(trace) -> None:
    jsonschema.validate(json.loads(trace.answer), ORDER_SCHEMA)


def check_forced_order_call(trace) -> None:
    text, calls = parse_tool_calls(trace.answer, ["get_weather", "place_order"])
    assert [c.name for c in calls] == ["place_order"] and text == ""
    jsonschema.validate(calls[0].arguments, ORDER_SCHEMA)


def check_choice(trace) -> None:
    assert trace.answer in ("yes", "no")


def check_regex(trace) -> None:
    assert re.fullmatch(r"[0-9]{2}-[a-z]{3}", trace.answer), trace.answer


def check_calls_or_order(trace) -> None:
    """Tools with a response format: valid calls to the tools, or the order's JSON; never free text."""
    text, calls = parse_tool_calls(trace.answer, ["get_weather", "place_order"])
    if not calls:
        return check_order(trace)
    assert text == ""
    parameters = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
    for call in calls:
        jsonschema.validate(call.arguments, parameters[call.name])


def check_grammar(trace) -> None:
    assert re.fullmatch(r"Alice: [1-9] items?", trace.answer), trace.answer


CASES = [
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER_SCHEMA}}},
        check_order,
    ),
    ({"tools": TOOLS, "tool_choice": "place_order", "parallel_tool_calls": False}, check_forced_order_call),
    ({"response_format": {"type": "choice", "choice": ["yes", "no"]}}, check_choice),
    ({"response_format": {"type": "regex", "regex": r"[0-9]{2}-[a-z]{3}"}}, check_regex),
    (
        {"response_format": {"type": "grammar", "grammar": 'start: "Alice: " COUNT " item" "s"?\nCOUNT: /[1-9]/'}},
        check_grammar,
    ),
    (
        {
            "tools": TOOLS,
            "response_format": {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER_SCHEMA}},
        },
        check_calls_or_order,
    ),
]
CASE_IDS = ["json_schema", "forced_tool", "choice", "regex", "grammar", "tools_or_json_schema"]


def run_and_check(router, arguments, check) -> None:
    """Answer the order question under `arguments`; the large model's forced answer must pass `check`."""
    trace = router.run(ORDER_QUESTION, max_tokens=200, **arguments)
    assert trace.steps[-1].model == "large" and trace.steps[-1].decision == "forced"
    check(trace)
