"""`POST /v1/responses`: OpenAI's Responses API (what the OpenAI Agents SDK, Codex-style clients
and `ChatOpenAI(use_responses_api=True)` speak) over the same routed runs as chat completions.

In: `input` as text or items (messages with text parts, `function_call` and
`function_call_output` turns, earlier `reasoning` items), `instructions`, function `tools`,
`tool_choice`, `parallel_tool_calls`, `text.format` (a JSON schema or JSON object, constrained as
`response_format` is), `max_output_tokens`, `temperature`, `top_p`, and the run settings as extra
fields: a typed model (`ResponsesRequest`, sharing `RunRequest`'s fields with chat completions)
translated straight to the engine's arguments; errors name the Responses field.  Glimp keeps no
state between requests: `store` true, `previous_response_id`, `conversation` and `background` are
refused with a 400.

Out: a `reasoning` item per routed reasoning step (its text, and its routing under `glimp`), then
the answer as a `message` item or `function_call` items; usage with reasoning tokens; `glimp` on
the response as on a chat completion.  Streamed, the events OpenAI's clients parse:
`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.reasoning_text.delta` / `.done`,
`response.output_text.delta` / `.done`, `response.function_call_arguments.delta` / `.done`,
`response.content_part.done`, `response.output_item.done`, then `response.completed` (or
`response.incomplete` when the budget ran out, `response.failed` when a run failed).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from glimp_integrations.constraints import read_tool_choice
from glimp_integrations.errors import GlimpConfigError
from glimp_integrations.serve.chat import TOOL_NAME, tool_call_reader
from glimp_integrations.serve.protocol import RequestError, shown
from glimp_integrations.serve.responses_writer import ResponseWriter
from glimp_integrations.serve.runs import ParsedRequest, ServerState, answer
from glimp_integrations.serve.wire import (
    BOOLEAN,
    MAX_MESSAGES,
    MAX_TOOLS,
    RunRequest,
    WireError,
    WireModel,
    bounded_json,
    wire_field,
)

STATEFUL = {"previous_response_id": None, "conversation": None, "store": False, "background": False}
"""Fields that need state kept between requests: Glimp keeps none, so only these values pass."""
ENGINE_NAMES = {"max_tokens": "max_output_tokens", "response_format": "text.format"}
"""The engine's parameters that a Responses request names otherwise (any message is `input`)."""


class ResponsesFunctionTool(WireModel):
    """A function tool as the Responses API writes it (flat: `name` beside `type`)."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str = "function"
    name: str = wire_field("must be 1-64 of A-Z a-z 0-9 _ -", "Rename the function.", ..., pattern=TOOL_NAME)
    description: str | None = wire_field("must be a string", "Describe the function in text.")
    parameters: dict[str, Any] | None = wire_field("must be a JSON schema object", 'Pass e.g. {"type": "object"}.')
    strict: bool | None = wire_field(*BOOLEAN)

    @model_validator(mode="before")
    @classmethod
    def _a_function(cls, value: Any) -> Any:
        if not (isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str)):
            raise WireError(
                'A tool must be a function tool {"type": "function", "name": ..., "parameters": ...} '
                f"(Glimp runs no hosted tools); got {shown(value)}."
            )
        bounded_json(f"tools: {value['name']}'s parameters", value.get("parameters") or {})
        return value

    def chat_tool(self) -> dict[str, Any]:
        """The tool in the engine's (chat) form."""
        function = self.model_dump(exclude_none=True, exclude={"type", "strict"})
        return {"type": "function", "function": function}


class ResponsesRequest(RunRequest):
    """A Responses API request (`POST /v1/responses`)."""

    input: str | Annotated[list[Any], Field(max_length=MAX_MESSAGES)] = wire_field(
        f"must be text or a non-empty list of at most {MAX_MESSAGES} items",
        'Pass e.g. "What is 3 x 3?".',
        ...,
        min_length=1,
    )
    instructions: str | None = wire_field("must be a string", "Pass the system instructions as text.")
    max_output_tokens: int | None = wire_field("must be an integer >= 1", "Pass e.g. 256.", ge=1)
    tools: list[ResponsesFunctionTool] | None = wire_field(
        f"must be a list of at most {MAX_TOOLS} function tools", "See OpenAI's `tools`.", max_length=MAX_TOOLS
    )
    tool_choice: str | dict[str, Any] | None = wire_field(
        "must be a string or a function choice", 'Pass auto, required, none or {"type": "function", "name": ...}.'
    )
    text: dict[str, Any] | None = wire_field(
        "must be an object with `format`", 'Pass e.g. {"format": {"type": "json_object"}}.'
    )
    store: bool | None = wire_field("must be true or false", "Pass false.")
    previous_response_id: Any = None
    conversation: Any = None
    background: Any = None
    truncation: Literal["disabled", "auto"] | None = wire_field("must be disabled or auto", "Pass disabled.")
    include: list[Any] | None = wire_field(
        "must be empty: Glimp adds no optional output", "Leave it out.", max_length=0
    )
    reasoning: dict[str, Any] | None = wire_field(
        "cannot set `effort`: the routing decides who reasons", "Use `reasoning_budget` (tokens) instead."
    )
    top_logprobs: int | None = wire_field("must be 0: Glimp returns no logprobs", "Leave it out.", ge=0, le=0)
    prompt_cache_key: str | None = wire_field("must be a string", "Pass a key, or leave it out.")
    safety_identifier: str | None = wire_field("must be a string", "Pass an id, or leave it out.")
    stream_options: dict[str, Any] | None = wire_field("must be an object", "Leave it out.")

    @field_validator(*STATEFUL)
    @classmethod
    def _stateless(cls, value: Any, info: ValidationInfo) -> Any:
        name = str(info.field_name)
        if value not in (None, STATEFUL[name]):
            raise WireError(
                f"`{name}` needs responses stored between requests, and glimp serve stores none; got "
                f"{shown(value)}. Send the whole conversation in `input`."
            )
        return value

    @field_validator("text")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if value is not None and not set(value) <= {"format", "verbosity"}:
            raise WireError(
                f"`text` must be an object with `format`; got {shown(value)}. "
                'Pass e.g. {"format": {"type": "json_object"}}.'
            )
        return bounded_json("text", value)

    @field_validator("reasoning")
    @classmethod
    def _no_effort(cls, value: Any) -> Any:
        if value is not None and (value.get("effort") is not None or not set(value) <= {"effort", "summary"}):
            raise WireError(
                f"`reasoning` cannot set `effort`: the routing decides who reasons; got {shown(value)}. "
                "Use `reasoning_budget` (tokens) instead."
            )
        return value

    def check(self, served_model: str, max_model_len: int | None) -> None:
        self.check_model(served_model)
        if max_model_len is not None and self.max_output_tokens is not None and self.max_output_tokens > max_model_len:
            raise RequestError(
                400,
                f"`max_output_tokens` must be at most {max_model_len}, this model's context window; got "
                f"{self.max_output_tokens}. Ask for fewer tokens.",
                "max_output_tokens",
            )

    def reported(self) -> dict[str, Any]:
        """The request's settings as a `response` reports them: `tool_choice` as a mode or
        {"type": "function", "name": ...}, `text.format` with a JSON schema's name (default
        `response`), the flags at their defaults."""
        choice = read_tool_choice(self.tool_choice) or "auto"
        response_format = _response_format((self.text or {}).get("format"))
        if response_format is not None and response_format["type"] == "json_schema":
            text_format = {
                "type": "json_schema",
                **{k: v for k, v in response_format["json_schema"].items() if v is not None},
            }
        else:
            text_format = response_format or {"type": "text"}
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "tool_choice": choice if choice in ("auto", "none", "required") else {"type": "function", "name": choice},
            "tools": [
                {"parameters": None, "strict": None, **t.model_dump(exclude_none=True)} for t in self.tools or []
            ],
            "text": {"format": text_format},
            "truncation": self.truncation or "disabled",
            "metadata": self.metadata or {},
            "user": self.user,
        }

    def run_arguments(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and `GlimpRouter.astream` keyword arguments of this request."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        messages += _messages_of(self.input)
        arguments = self.run_settings()
        if self.max_output_tokens is not None:
            arguments["max_tokens"] = self.max_output_tokens
        if self.tools is not None:
            arguments["tools"] = [tool.chat_tool() for tool in self.tools]
        if self.tool_choice is not None:
            arguments["tool_choice"] = self.tool_choice  # {"type": "function", "name": ...} too: the engine reads it
        response_format = _response_format((self.text or {}).get("format"))
        if response_format is not None:
            arguments["response_format"] = response_format
        return messages, arguments


def responses_param(parameter: str | None) -> str | None:
    """An engine error's parameter as a Responses request names it."""
    if parameter is None:
        return None
    if parameter.startswith("prompt"):
        return "input"  # items do not map one to one onto messages
    root = parameter.split("[")[0]
    return ENGINE_NAMES[root] + parameter[len(root) :] if root in ENGINE_NAMES else parameter


async def responses(state: ServerState, request: Any) -> Any:
    """`POST /v1/responses`: a routed run, answered as a `response` or streamed as its events."""

    def parse(body: Any) -> ParsedRequest:
        parsed = ResponsesRequest.parse(body)
        parsed.check(state.served_model, state.max_model_len)
        messages, arguments = parsed.run_arguments()
        try:  # reading the settings back reads `tool_choice` before the engine would
            reported = parsed.reported()
        except GlimpConfigError as error:
            raise RequestError(400, str(error), responses_param(error.parameter)) from error
        writer = ResponseWriter(state.served_model, reported, tool_call_reader(state, arguments))
        return ParsedRequest(messages, arguments, writer, bool(parsed.stream), responses_param)

    return await answer(state, request, parse)


def _messages_of(given: str | list) -> list[dict[str, Any]]:
    """Chat messages from `input`: consecutive function calls become one assistant message's
    `tool_calls`, their outputs tool messages, an earlier reasoning item the next assistant
    message's `reasoning`."""
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    messages: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for index, item in enumerate(given):
        where = f"input[{index}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message" and item.get("role") in ("user", "system", "developer", "assistant"):
            role = "system" if item["role"] == "developer" else item["role"]
            message: dict[str, Any] = {"role": role, "content": _text_of(item.get("content"), where)}
            if role == "assistant" and reasoning:
                message["reasoning"] = "".join(reasoning)
                reasoning = []
            messages.append(message)
        elif kind == "function_call" and all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant" and previous.get("tool_calls") is not None:
                previous["tool_calls"].append(call)
            else:
                messages.append(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [call],
                        **({"reasoning": "".join(reasoning)} if reasoning else {}),
                    }
                )
                reasoning = []
        elif (
            kind == "function_call_output"
            and isinstance(item.get("call_id"), str)
            and item["call_id"]
            and isinstance(item.get("output"), (str, list))
        ):
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": _text_of(item["output"], where)}
            )
        elif kind == "reasoning" and isinstance(item.get("content") or [], list):
            reasoning += [part.get("text", "") for part in item.get("content") or [] if isinstance(part, dict)]
        else:
            raise RequestError(
                400,
                f'`{where}` must be a message ({{"role": user|system|developer|assistant, '
                f'"content": ...}}), a function_call (call_id, name, arguments), a '
                f"function_call_output (a non-empty call_id, output) or a reasoning item; got {shown(item)}.",
                where,
            )
    return messages


def _text_of(content: Any, where: str) -> str:
    """Text content, or its text parts (input_text, output_text, text) joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict)
        and part.get("type") in ("input_text", "output_text", "text")
        and isinstance(part.get("text"), str)
        for part in content
    ):
        return "\n".join(part["text"] for part in content)
    raise RequestError(
        400,
        f"`{where}['content']` must be text or a list of input_text parts; got {shown(content)}. "
        "Glimp's models read text only.",
        f"{where}['content']",
    )


def _response_format(spec: Any) -> dict[str, Any] | None:
    """`text.format` as a chat `response_format` (None for free text)."""
    if spec is None or spec == {"type": "text"}:
        return None
    if isinstance(spec, dict) and spec.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(spec, dict) and spec.get("type") == "json_schema" and isinstance(spec.get("schema"), dict):
        return {
            "type": "json_schema",
            "json_schema": {
                "name": spec.get("name") or "response",
                "schema": spec["schema"],
                "strict": spec.get("strict"),
            },
        }
    raise RequestError(
        400,
        f"`text.format` must be text, json_object, or json_schema with a `schema` object; got {shown(spec)}.",
        "text.format",
    )
