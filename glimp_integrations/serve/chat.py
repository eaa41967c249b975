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
from typing import Any

from glimp_integrations.config import did_you_mean
from glimp_integrations.constraints import AnswerConstraint
from glimp_integrations.serve.protocol import (
    COMMON_RULES,
    OPENAI_NAMED_SETTINGS,
    ROUTING_FIELDS,
    RequestError,
    check_fields,
    is_int,
    is_text_list,
    shown,
    sse_data,
    usage,
)
from glimp_integrations.serve.runs import ServerState, answer
from glimp_integrations.tool_formats import ToolCallReader
from glimp_integrations.trace import RouterEvent, RunTrace, StepFinished, StepStarted, TokenDelta

OPENAI_FIELDS: tuple[str, ...] = (
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "user",
)
"""The chat-completion fields `glimp serve` honours."""
STRUCTURED_OUTPUT_KINDS = ("json", "json_object", "regex", "choice", "grammar")
"""The forms of vLLM's `structured_outputs` field that `glimp serve` takes (one per request)."""
UNSUPPORTED_FIELDS: dict[str, Any] = {
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
"""OpenAI fields accepted only at their "off" values (a request may carry them unset)."""
IGNORED_FIELDS = ("store", "metadata", "service_tier", "include_reasoning")
"""Fields that do not change the answer (storage, billing tier, labels): accepted and not used."""


async def chat_completions(state: ServerState, request: Any) -> Any:
    """`POST /v1/chat/completions`: a routed run, streamed as chunks or answered whole."""

    def parse(body: Any) -> tuple[list[dict[str, Any]], dict[str, Any], ChunkWriter]:
        messages, arguments = run_arguments(body, state.served_model, state.max_model_len)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return messages, arguments, ChunkWriter(state.served_model, tool_call_reader(state, arguments), include_usage)

    return await answer(state, request, parse)


FIELD_RULES: dict[str, tuple[Any, str, str]] = {
    **COMMON_RULES,
    "stream_options": (
        lambda v: (
            isinstance(v, dict)
            and set(v) <= {"include_usage", "continuous_usage_stats"}
            and all(isinstance(x, bool) for x in v.values())
        ),
        'must be {"include_usage": true|false}',
        "Pass a JSON object with boolean values.",
    ),
    "max_tokens": (lambda v: is_int(v, 1), "must be an integer >= 1", "Pass e.g. 256."),
    "max_completion_tokens": (lambda v: is_int(v, 1), "must be an integer >= 1", "Pass e.g. 256."),
    "seed": (is_int, "must be an integer (64-bit)", "Pass e.g. 0."),
    "stop": (
        lambda v: isinstance(v, str) or is_text_list(v),
        "must be a string or a list of strings",
        'Pass e.g. ["\\n\\n"].',
    ),
    "n": (lambda v: v == 1 and is_int(v), "must be 1 (one routed answer per request)", "Leave it out or pass 1."),
    "tools": (lambda v: isinstance(v, list), "must be a list of function tools", "See OpenAI's `tools`."),
    "tool_choice": (
        lambda v: isinstance(v, (str, dict)),
        "must be a string or a function choice",
        'Pass auto, required, none or {"type": "function", "function": {"name": ...}}.',
    ),
    "response_format": (lambda v: isinstance(v, dict), "must be an object", 'Pass e.g. {"type": "json_object"}.'),
    "store": (lambda v: isinstance(v, bool), "must be true or false", "Pass a JSON boolean."),
    "include_reasoning": (lambda v: isinstance(v, bool), "must be true or false", "Pass a JSON boolean."),
}
"""Types and ranges of the chat fields, as OpenAI documents them (a field set to null is unset)."""
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What OpenAI allows as a function's name."""


def run_arguments(
    body: Any, served_model: str, max_model_len: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and `GlimpRouter.astream` keyword arguments of a chat-completion request body;
    RequestError naming the field for anything that is unknown, of the wrong type or range, or
    cannot be honoured (a token budget beyond `max_model_len`, the context window)."""
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    check_fields(body, FIELD_RULES)
    _check_messages(body.get("messages"))
    _check_tools(body.get("tools"))
    for name in ("max_tokens", "max_completion_tokens"):
        if max_model_len is not None and body.get(name) is not None and body[name] > max_model_len:
            raise RequestError(
                400,
                f"`{name}` must be at most {max_model_len}, this model's context window; got "
                f"{body[name]}. Ask for fewer tokens.",
                name,
            )
    for name, value in body.items():
        if name in UNSUPPORTED_FIELDS and value not in UNSUPPORTED_FIELDS[name]:
            raise RequestError(
                400, f"`{name}` is not supported by glimp serve; got {shown(value)}. Leave it unset.", name
            )
        if (
            name not in OPENAI_FIELDS
            and name not in UNSUPPORTED_FIELDS
            and name not in IGNORED_FIELDS
            and name not in ROUTING_FIELDS
            and name != "structured_outputs"
        ):
            raise RequestError(
                400,
                f"Unknown field `{name}`; got {shown(value)}. "
                f"{did_you_mean(name, [*OPENAI_FIELDS, *ROUTING_FIELDS])}Accepted: OpenAI's "
                f"chat fields and the routing settings {', '.join(ROUTING_FIELDS)}.",
                name,
            )
    if body.get("model") not in (None, served_model):
        raise RequestError(
            404,
            f"`model` must be `{served_model}`, the model this server serves; got {shown(body['model'])}.",
            "model",
            kind="not_found_error",
        )
    messages = body["messages"]
    arguments: dict[str, Any] = {name: body[name] for name in ROUTING_FIELDS if body.get(name) is not None}
    for name in (*OPENAI_NAMED_SETTINGS, "tools", "parallel_tool_calls", "response_format"):
        if body.get(name) is not None:
            arguments[name] = body[name]
    if body.get("structured_outputs") is not None:
        if "response_format" in arguments:
            raise RequestError(
                400, "Pass either `response_format` or `structured_outputs`, not both.", "structured_outputs"
            )
        arguments["response_format"] = _structured_outputs(body["structured_outputs"])
    if isinstance(arguments.get("stop"), str):
        arguments["stop"] = [arguments["stop"]]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        arguments["max_tokens"] = max_tokens
    if body.get("tool_choice") is not None:
        arguments["tool_choice"] = body["tool_choice"]  # any form; the engine reads it (`read_tool_choice`)
    return messages, arguments


MESSAGE_ROLES = ("system", "user", "assistant", "tool")


def _check_messages(messages: Any) -> None:
    """The shapes OpenAI requires of `messages` (their text is the engine's to check)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "`messages` must be a non-empty list of chat messages.", "messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"`{where}` must be an object with a `role`; got {shown(message)}.", where)
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            raise RequestError(
                400,
                f"`{where}['role']` must be one of {', '.join(MESSAGE_ROLES)}; got {shown(role)}.",
                f"{where}['role']",
            )
        for name in ("name", "tool_call_id", "reasoning", "reasoning_content"):
            if message.get(name) is not None and not isinstance(message[name], str):
                raise RequestError(
                    400, f"`{where}['{name}']` must be a string; got {shown(message[name])}.", f"{where}['{name}']"
                )
        if role == "tool" and not message.get("tool_call_id"):
            raise RequestError(
                400,
                f"`{where}` is a tool result without `tool_call_id`. Name the call it answers.",
                f"{where}['tool_call_id']",
            )
        calls = message.get("tool_calls")
        if calls is None:
            continue
        if role != "assistant" or not isinstance(calls, list):
            raise RequestError(
                400,
                f"`{where}['tool_calls']` must be a list, on an assistant message; got "
                f"{shown(calls)} on a {role} message.",
                f"{where}['tool_calls']",
            )
        for number, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not (
                isinstance(function, dict)
                and isinstance(function.get("name"), str)
                and isinstance(function.get("arguments"), (str, dict))
                and isinstance(call.get("id", ""), str)
            ):
                raise RequestError(
                    400,
                    f'`{where}[\'tool_calls\'][{number}]` must be {{"id": ..., "type": '
                    f'"function", "function": {{"name": ..., "arguments": "<JSON>"}}}}; '
                    f"got {shown(call)}.",
                    f"{where}['tool_calls'][{number}]",
                )


def _check_tools(tools: Any) -> None:
    for index, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        if not (
            isinstance(tool, dict)
            and tool.get("type", "function") == "function"
            and isinstance(name, str)
            and TOOL_NAME.match(name)
            and isinstance(function.get("description", ""), str)
            and isinstance(function.get("parameters", {}), dict)
        ):
            raise RequestError(
                400,
                f'`tools[{index}]` must be {{"type": "function", "function": {{"name": '
                f'<1-64 of A-Z a-z 0-9 _ ->, "description": <text>, "parameters": <JSON '
                f"schema>}}}}; got {shown(tool)}.",
                f"tools[{index}]",
            )


def _structured_outputs(spec: Any) -> AnswerConstraint:
    """vLLM's `structured_outputs` field ({"json": schema}, {"json_object": true}, {"regex": ...},
    {"choice": [...]} or {"grammar": ...}) as the engine's constraint, checked here so that an
    error names this field."""
    given = {key: value for key, value in spec.items() if value not in (None, False)} if isinstance(spec, dict) else {}
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

    def chunk(
        self, delta: dict[str, Any] | None = None, finish_reason: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        choices = (
            [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )
        return {**self.base, "choices": choices, **extra}

    def start(self) -> list[str]:
        return [sse_data(self.chunk({"role": "assistant", "content": ""}))]

    def on_event(self, event: RouterEvent) -> list[str]:
        return [sse_data(chunk) for chunk in self._chunks(event)]

    def finish(self, trace: RunTrace) -> list[str]:
        chunks = self._answer_chunks(None)
        chunks.append(self.chunk({}, finish_reason=_finish_reason(trace, bool(self.announced))))
        chunks.append(self.chunk(glimp={"summary": trace.summary()}))
        if self.include_usage:
            chunks.append(self.chunk(usage=usage(trace)))
        return [*map(sse_data, chunks), "data: [DONE]\n\n"]

    def failed(self, failure: RequestError) -> list[str]:
        """An `error` event, as vLLM sends it, then the end of the stream."""
        return [sse_data(failure.body()), "data: [DONE]\n\n"]

    def whole(self, trace: RunTrace) -> dict[str, Any]:
        return completion(trace, self.id, self.model, self.reader)

    def _chunks(self, event: RouterEvent) -> list[dict[str, Any]]:
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

    def _answer_chunks(self, delta: str | None) -> list[dict[str, Any]]:
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
    return {
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
