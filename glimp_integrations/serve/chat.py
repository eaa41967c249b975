"""`POST /v1/chat/completions`: OpenAI's chat-completion fields in, a routed run out, as a
`chat.completion` or as `chat.completion.chunk` server-sent events.

Request fields: OpenAI's chat fields that map onto the engine (`messages`, `max_tokens` /
`max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`, `tools`, `tool_choice`,
`parallel_tool_calls`, `response_format`, `stream`, `stream_options`, `n`=1, `user`), vLLM's
`structured_outputs` (one of `json`, `json_object`, `regex`, `choice`, `grammar`), and any run
setting of `RouterConfig` as an extra body field (`threshold`, `policy`, `reasoning_mode`,
`reasoning_budget`, ...).  An unknown field, or a value the engine rejects, is a 400 error in
OpenAI's shape naming the field.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Literal

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from glimp_integrations.constraints import AnswerConstraint
from glimp_integrations.serve.protocol import (
    RequestError,
    shown,
    sse_data,
    sse_model,
    usage,
    wire_dict,
)
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
from glimp_integrations.tool_formats import ToolCallReader
from glimp_integrations.trace import RouterEvent, RunTrace, StepFinished, StepStarted, TokenDelta

STRUCTURED_OUTPUT_KINDS = ("json", "json_object", "regex", "choice", "grammar")
"""The forms of vLLM's `structured_outputs` field that `glimp serve` takes (one per request)."""
OFF_VALUES: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
}
"""OpenAI fields glimp serve cannot honour: accepted only at their "off" values (unset)."""
TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"
"""What OpenAI allows as a function's name."""


class CalledFunction(WireModel):
    """The function an earlier assistant message called."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = wire_field("must be the function's name", "Pass the name the call used.", ...)
    arguments: str | dict[str, Any] = wire_field("must be the call's arguments as JSON text", 'Pass e.g. "{}".', ...)


class MessageToolCall(WireModel):
    """A call an earlier assistant message made."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _a_call(cls, call: Any) -> Any:
        function = call.get("function") if isinstance(call, dict) else None
        if not (
            isinstance(function, dict)
            and isinstance(function.get("name"), str)
            and isinstance(function.get("arguments"), (str, dict))
            and isinstance(call.get("id", ""), str)
        ):
            raise WireError(
                'A tool call must be {"id": ..., "type": "function", "function": {"name": ..., "arguments": '
                f'"<JSON>"}}}}; got {shown(call)}.'
            )
        return call

    id: str = wire_field("must be the call's id", "Pass the id the call was given.", "")
    type: str = "function"
    function: CalledFunction = wire_field(
        'must be {"name": ..., "arguments": "<JSON>"}', "Pass the function the call named.", ...
    )


class ChatMessage(WireModel):
    """A chat message in OpenAI's shape; its text content is the engine's to check."""

    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "user", "assistant", "tool"] = wire_field(
        "must be one of system, user, assistant, tool", "Fix the message's role.", ...
    )
    content: Any = Field(None, description="Text, or a list of text parts (an assistant's calls may leave it null).")
    name: str | None = wire_field("must be a string", "Pass the author's name as text.")
    tool_call_id: str | None = wire_field("must be a string", "Pass the id of the call this result answers.")
    reasoning: str | None = wire_field("must be a string", "Pass the earlier reasoning as text.")
    reasoning_content: str | None = wire_field("must be a string", "Pass the earlier reasoning as text.")
    tool_calls: list[MessageToolCall] | None = wire_field(
        "must be a list of calls", 'Pass e.g. [{"id": ..., "type": "function", "function": {...}}].'
    )


class FunctionDefinition(WireModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: str = wire_field("must be 1-64 of A-Z a-z 0-9 _ -", "Rename the function.", ..., pattern=TOOL_NAME)
    description: str | None = wire_field("must be a string", "Describe the function in text.")
    parameters: dict[str, Any] | None = wire_field("must be a JSON schema object", 'Pass e.g. {"type": "object"}.')


class ChatTool(WireModel):
    """A function tool, as OpenAI's chat API takes it."""

    @model_validator(mode="before")
    @classmethod
    def _a_function(cls, tool: Any) -> Any:
        function = tool.get("function") if isinstance(tool, dict) else None
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        if not (
            isinstance(tool, dict)
            and tool.get("type", "function") == "function"
            and isinstance(name, str)
            and re.match(TOOL_NAME, name)
            and isinstance(function.get("description", ""), str)
            and isinstance(function.get("parameters", {}), dict)
        ):
            raise WireError(
                'A tool must be {"type": "function", "function": {"name": <1-64 of A-Z a-z 0-9 _ ->, '
                f'"description": <text>, "parameters": <JSON schema>}}}}; got {shown(tool)}.'
            )
        bounded_json(f"tools: {name}'s parameters", function.get("parameters", {}))
        return tool

    type: Literal["function"] = wire_field("must be function", "Glimp runs function tools only.", "function")
    function: FunctionDefinition = wire_field(
        'must be {"name": ..., "description": ..., "parameters": <JSON schema>}', "See OpenAI's `tools`.", ...
    )


class StreamOptions(WireModel):
    include_usage: bool | None = wire_field(*BOOLEAN)
    continuous_usage_stats: bool | None = wire_field(*BOOLEAN)


class ChatCompletionRequest(RunRequest):
    """A chat-completion request: OpenAI's fields that map onto the engine, vLLM's
    `structured_outputs`, and Glimp's run settings (`threshold`, `policy`, ...) as extra fields."""

    messages: list[ChatMessage] = wire_field(
        f"must be a non-empty list of at most {MAX_MESSAGES} chat messages",
        'Pass e.g. [{"role": "user", "content": "..."}].',
        ...,
        min_length=1,
        max_length=MAX_MESSAGES,
    )
    stream_options: StreamOptions | None = wire_field(
        'must be {"include_usage": true|false}', "Pass a JSON object with boolean values."
    )
    max_tokens: int | None = wire_field("must be an integer >= 1", "Pass e.g. 256.", ge=1)
    max_completion_tokens: int | None = wire_field("must be an integer >= 1", "Pass e.g. 256.", ge=1)
    n: int | None = wire_field("must be 1 (one routed answer per request)", "Leave it out or pass 1.", ge=1, le=1)
    tools: list[ChatTool] | None = wire_field(
        f"must be a list of at most {MAX_TOOLS} function tools", "See OpenAI's `tools`.", max_length=MAX_TOOLS
    )
    tool_choice: str | dict[str, Any] | None = wire_field(
        "must be a string or a function choice",
        'Pass auto, required, none or {"type": "function", "function": {"name": ...}}.',
    )
    response_format: dict[str, Any] | None = wire_field("must be an object", 'Pass e.g. {"type": "json_object"}.')
    structured_outputs: dict[str, Any] | None = wire_field(
        f"must set one of {', '.join(STRUCTURED_OUTPUT_KINDS)}", 'Pass e.g. {"regex": "[0-9]+"}.'
    )
    # accepted and not used
    store: bool | None = wire_field(*BOOLEAN)
    include_reasoning: bool | None = wire_field(*BOOLEAN)
    # accepted only "off" (OFF_VALUES)
    logprobs: Any = None
    top_logprobs: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None

    @field_validator("response_format", "structured_outputs")
    @classmethod
    def _bounded(cls, value: Any, info: ValidationInfo) -> Any:
        return bounded_json(str(info.field_name), value)

    @field_validator(*OFF_VALUES)
    @classmethod
    def _off(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in OFF_VALUES[str(info.field_name)]:
            raise WireError(f"`{info.field_name}` is not supported by glimp serve; got {shown(value)}. Leave it unset.")
        return value

    def check(self, served_model: str, max_model_len: int | None) -> None:
        """What the fields' types cannot say: the served model, budgets within the context window,
        the rules across a message's fields."""
        self.check_model(served_model)
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(self, name)
            if max_model_len is not None and value is not None and value > max_model_len:
                raise RequestError(
                    400,
                    f"`{name}` must be at most {max_model_len}, this model's context window; got {value}. "
                    "Ask for fewer tokens.",
                    name,
                )
        for index, message in enumerate(self.messages):
            where = f"messages[{index}]"
            if message.role == "tool" and not message.tool_call_id:
                raise RequestError(
                    400,
                    f"`{where}` is a tool result without `tool_call_id`. Name the call it answers.",
                    f"{where}['tool_call_id']",
                )
            if message.tool_calls is not None and message.role != "assistant":
                raise RequestError(
                    400,
                    f"`{where}['tool_calls']` must be on an assistant message; got them on a {message.role} message.",
                    f"{where}['tool_calls']",
                )
        if self.structured_outputs is not None and self.response_format is not None:
            raise RequestError(
                400, "Pass either `response_format` or `structured_outputs`, not both.", "structured_outputs"
            )

    def run_arguments(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and `GlimpRouter.astream` keyword arguments of this request."""
        messages = [message.model_dump(exclude_none=True) for message in self.messages]
        arguments = self.run_settings()
        for name in ("response_format", "tool_choice"):
            if getattr(self, name) is not None:
                arguments[name] = getattr(self, name)  # tool_choice in any form: the engine reads it
        if self.tools is not None:
            arguments["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
        if self.structured_outputs is not None:
            arguments["response_format"] = _structured_outputs(self.structured_outputs)
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            arguments["max_tokens"] = max_tokens
        return messages, arguments


async def chat_completions(state: ServerState, request: Any) -> Any:
    """`POST /v1/chat/completions`: a routed run, streamed as chunks or answered whole."""

    def parse(body: Any) -> ParsedRequest:
        chat = ChatCompletionRequest.parse(body)
        chat.check(state.served_model, state.max_model_len)
        messages, arguments = chat.run_arguments()
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        writer = ChunkWriter(state.served_model, tool_call_reader(state, arguments), include_usage)
        return ParsedRequest(messages, arguments, writer, bool(chat.stream))

    return await answer(state, request, parse)


def _structured_outputs(spec: dict[str, Any]) -> AnswerConstraint:
    """vLLM's `structured_outputs` field ({"json": schema}, {"json_object": true}, {"regex": ...},
    {"choice": [...]} or {"grammar": ...}) as the engine's constraint, checked here so that an
    error names this field."""
    given = {key: value for key, value in spec.items() if value not in (None, False)}
    if len(given) != 1 or next(iter(given)) not in STRUCTURED_OUTPUT_KINDS:
        raise RequestError(
            400,
            f"`structured_outputs` must set one of {', '.join(STRUCTURED_OUTPUT_KINDS)}; got {spec!r}.",
            "structured_outputs",
        )
    kind, value = next(iter(given.items()))
    try:
        if kind == "json":
            schema = json.loads(value) if isinstance(value, str) else value
            return AnswerConstraint.json_schema(schema, name="structured_outputs")
        return (
            AnswerConstraint.json_object()
            if kind == "json_object"
            else AnswerConstraint.from_response_format({"type": kind, kind: value})
        )
    except ValueError as error:  # the engine's GlimpConfigError, or a `json` string that is not JSON
        raise RequestError(
            400, f"`structured_outputs` {spec!r} cannot be applied: {error}", "structured_outputs"
        ) from error


class ChunkWriter:
    """Turns a run's events into `chat.completion.chunk` payloads.  Reasoning deltas go out as
    `reasoning` (vLLM's name since 0.30) and `reasoning_content` (the DeepSeek API's, which many
    clients still read), the same text; the answer as `content`, or, when the request has tools, as
    `tool_calls` as the family's parser reads them from the stream (a call's name, then its arguments
    piece by piece), as vLLM's server streams them."""

    def __init__(self, model: str, reader: ToolCallReader | None, include_usage: bool = False) -> None:
        self.id, self.model = f"chatcmpl-{uuid.uuid4().hex}", model
        self.base = {"id": self.id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        self.reader = reader
        self.include_usage = include_usage
        self.announced: list[str] = []
        """Ids of the tool calls whose name has been sent, in order."""

    def chunk(self, delta: dict[str, Any] | None = None, finish_reason: str | None = None, **extra: Any) -> Any:
        """A `chat.completion.chunk` (openai's model, with Glimp's fields: `glimp`, a delta's `reasoning`)."""
        choices = (
            [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )
        return ChatCompletionChunk.model_validate({**self.base, "choices": choices, **extra})

    def start(self) -> list[str]:
        return [sse_model(self.chunk({"role": "assistant", "content": ""}))]

    def on_event(self, event: RouterEvent) -> list[str]:
        return [sse_model(chunk) for chunk in self._chunks(event)]

    def finish(self, trace: RunTrace) -> list[str]:
        chunks = self._answer_chunks(None)
        chunks.append(self.chunk({}, finish_reason=_finish_reason(trace, bool(self.announced))))
        chunks.append(self.chunk(glimp={"summary": trace.summary()}))
        if self.include_usage:
            chunks.append(self.chunk(usage=usage(trace)))
        return [*map(sse_model, chunks), "data: [DONE]\n\n"]

    def failed(self, failure: RequestError) -> list[str]:
        """An `error` event, as vLLM sends it, then the end of the stream."""
        return [sse_data(failure.body()), "data: [DONE]\n\n"]

    def whole(self, trace: RunTrace) -> dict[str, Any]:
        return completion(trace, self.id, self.model, self.reader)

    def _chunks(self, event: RouterEvent) -> list[Any]:
        if isinstance(event, StepStarted):
            probe = event.probe
            return [
                self.chunk(
                    glimp={
                        "step_started": {
                            "index": event.index,
                            "model": event.model,
                            "phase": event.phase,
                            "decision": event.decision,
                            "h_init": probe.h_init if probe else None,
                        }
                    }
                )
            ]
        if isinstance(event, StepFinished):
            return [self.chunk(glimp={"step_finished": event.step.routing()})]
        if isinstance(event, TokenDelta) and event.text:
            if event.phase == "reasoning":
                return [self.chunk({"reasoning": event.text, "reasoning_content": event.text})]
            return self._answer_chunks(event.text)
        return []

    def _answer_chunks(self, delta: str | None) -> list[Any]:
        """Chunks for the next piece of the answer (None: the answer is complete)."""
        if self.reader is None:
            return [self.chunk({"content": delta})] if delta else []
        text, parts = self.reader.feed(delta) if delta is not None else self.reader.finish()[:2]
        chunks = [self.chunk({"content": text})] if text else []
        for part in parts:
            call: dict[str, Any] = {"index": part.index, "function": {"arguments": part.arguments}}
            if part.name:
                self.announced.append(f"call_{uuid.uuid4().hex[:12]}")
                call.update(
                    id=self.announced[-1], type="function", function={"name": part.name, "arguments": part.arguments}
                )
            chunks.append(self.chunk({"tool_calls": [call]}))
        return chunks


def tool_call_reader(state: ServerState, arguments: dict[str, Any]) -> ToolCallReader | None:
    """The reader of the calls in a run's answer, in the large model's format; None without tools."""
    tools = arguments.get("tools")
    return state.router.tool_call_reader(tools, arguments.get("tool_call_parser")) if tools else None


def _finish_reason(trace: RunTrace, called: bool) -> str:
    return "tool_calls" if called else "length" if trace.finish_reason == "budget" else "stop"


def completion(trace: RunTrace, completion_id: str, model: str, reader: ToolCallReader | None) -> dict[str, Any]:
    """The `chat.completion` response for a finished run."""
    text, calls = reader.read(trace.answer) if reader else (trace.answer, [])
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text or (None if calls else ""),
        "reasoning": trace.reasoning or None,
        "reasoning_content": trace.reasoning or None,
    }
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in calls
        ]
    response = ChatCompletion.model_validate(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(trace, bool(calls))}
            ],
            "usage": usage(trace),
            "glimp": {"steps": [step.routing() for step in trace.steps], "summary": trace.summary()},
        }
    )
    return wire_dict(response)
