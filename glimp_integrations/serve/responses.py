"""`POST /v1/responses`: OpenAI's Responses API (what the OpenAI Agents SDK, Codex-style clients
and `ChatOpenAI(use_responses_api=True)` speak) over the same routed runs as chat completions.

In: `input` as text or items (messages with text parts, `function_call` and
`function_call_output` turns, earlier `reasoning` items), `instructions`, function `tools`,
`tool_choice`, `parallel_tool_calls`, `text.format` (a JSON schema or JSON object, constrained as
`response_format` is), `max_output_tokens`, `temperature`, `top_p`, and the run settings as extra
fields.  The request is translated into a chat request and checked there, so both APIs take the
same values; errors name the Responses field.  Glimp keeps no state between requests: `store`
true, `previous_response_id`, `conversation` and `background` are refused with a 400.

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

import json
import time
import uuid
from typing import Any

from glimp_integrations.serve.chat import run_arguments, tool_call_reader
from glimp_integrations.serve.protocol import (
    COMMON_RULES,
    ROUTING_FIELDS,
    RequestError,
    check_fields,
    is_int,
    shown,
    usage,
)
from glimp_integrations.serve.runs import ServerState, answer
from glimp_integrations.tool_formats import ToolCallReader
from glimp_integrations.trace import RouterEvent, RunTrace, StepFinished, StepStarted, TokenDelta

RESPONSES_FIELDS = (
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "stream",
    "store",
    "metadata",
    "user",
    "service_tier",
    "truncation",
    "include",
    "reasoning",
    "previous_response_id",
    "conversation",
    "background",
    "top_logprobs",
    "prompt_cache_key",
    "safety_identifier",
    "stream_options",
)
"""The Responses fields `glimp serve` knows (some only at their "off" values)."""
STATEFUL = {"previous_response_id": None, "conversation": None, "store": False, "background": False}
"""Fields that need state kept between requests: Glimp keeps none, so only these values pass."""
FIELD_RULES: dict[str, tuple[Any, str, str]] = {
    **COMMON_RULES,
    "input": (
        lambda v: isinstance(v, (str, list)) and bool(v),
        "must be text or a non-empty list of items",
        'Pass e.g. "What is 3 x 3?".',
    ),
    "instructions": (lambda v: isinstance(v, str), "must be a string", "Pass the system instructions as text."),
    "max_output_tokens": (lambda v: is_int(v, 1), "must be an integer >= 1", "Pass e.g. 256."),
    "tools": (lambda v: isinstance(v, list), "must be a list of function tools", "See OpenAI's `tools`."),
    "tool_choice": (
        lambda v: isinstance(v, (str, dict)),
        "must be a string or a function choice",
        'Pass auto, required, none or {"type": "function", "name": ...}.',
    ),
    "text": (
        lambda v: isinstance(v, dict) and set(v) <= {"format", "verbosity"},
        "must be an object with `format`",
        'Pass e.g. {"format": {"type": "json_object"}}.',
    ),
    "store": (lambda v: isinstance(v, bool), "must be true or false", "Pass false."),
    "truncation": (lambda v: v in ("disabled", "auto"), "must be disabled or auto", "Pass disabled."),
    "include": (lambda v: v == [], "must be empty: Glimp adds no optional output", "Leave it out."),
    "reasoning": (
        lambda v: isinstance(v, dict) and v.get("effort") is None and set(v) <= {"effort", "summary"},
        "cannot set `effort`: the routing decides who reasons",
        "Use `reasoning_budget` (tokens) instead.",
    ),
    "top_logprobs": (lambda v: v == 0, "must be 0: Glimp returns no logprobs", "Leave it out."),
    "prompt_cache_key": (lambda v: isinstance(v, str), "must be a string", "Pass a key, or leave it out."),
    "safety_identifier": (lambda v: isinstance(v, str), "must be a string", "Pass an id, or leave it out."),
    "stream_options": (lambda v: isinstance(v, dict), "must be an object", "Leave it out."),
}
"""Types and ranges of the Responses fields (the chat fields they become are checked again there)."""
CHAT_NAMES = {"max_tokens": "max_output_tokens", "response_format": "text", "messages": "input"}
"""A chat field's name in a Responses request, for errors found once the request is a chat one."""


def responses_arguments(body: Any, state: ServerState) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and run arguments of a Responses request; RequestError naming the
    Responses field for anything unknown, of the wrong type, stateful, or that the run refuses."""
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    for name, value in body.items():
        if name not in RESPONSES_FIELDS and name not in ROUTING_FIELDS:
            raise RequestError(
                400,
                f"Unknown field `{name}`; got {shown(value)}. Accepted: the Responses fields "
                f"{', '.join(RESPONSES_FIELDS)} and the routing settings.",
                name,
            )
    for name, off in STATEFUL.items():
        if body.get(name) not in (None, off):
            raise RequestError(
                400,
                f"`{name}` needs responses stored between requests, and glimp serve stores "
                f"none; got {shown(body[name])}. Send the whole conversation in `input`.",
                name,
            )
    check_fields(body, FIELD_RULES)
    if body.get("input") is None:
        raise RequestError(400, "`input` is required: the question as text, or a list of items.", "input")
    messages = (
        [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
    ) + _messages_of(body["input"])
    chat: dict[str, Any] = {
        "messages": messages,
        **{
            name: body[name]
            for name in (
                "model",
                "temperature",
                "top_p",
                "seed",
                "stop",
                "parallel_tool_calls",
                "user",
                "metadata",
                "service_tier",
                *ROUTING_FIELDS,
            )
            if body.get(name) is not None
        },
    }
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools") is not None:
        chat["tools"] = [_chat_tool(tool, index) for index, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = body["tool_choice"]  # {"type": "function", "name": ...} too: the engine reads it
    response_format = _response_format((body.get("text") or {}).get("format"))
    if response_format is not None:
        chat["response_format"] = response_format
    messages, arguments = run_arguments(chat, state.served_model, state.max_model_len)
    return messages, arguments


def in_responses_terms(error: RequestError) -> RequestError:
    """An error found in the chat request (or by the run) that a Responses request became, naming
    the Responses field (`input` for any message: items do not map one to one onto messages)."""
    root = (error.param or "").split("[")[0]
    if root in CHAT_NAMES:
        error.param = CHAT_NAMES[root] if root == "messages" else CHAT_NAMES[root] + (error.param or "")[len(root) :]
        error.args = (str(error).replace(f"`{root}", f"`{CHAT_NAMES[root]}").replace("`prompt", "`input"),)
    return error


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
                f"function_call_output (call_id, output) or a reasoning item; got {shown(item)}.",
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


def _chat_tool(tool: Any, index: int) -> dict[str, Any]:
    """A Responses function tool ({"type": "function", "name", "description", "parameters"}) as a chat tool."""
    if not (isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str)):
        raise RequestError(
            400,
            f'`tools[{index}]` must be a function tool {{"type": "function", "name": ..., '
            f'"parameters": ...}} (Glimp runs no hosted tools); got {shown(tool)}.',
            f"tools[{index}]",
        )
    function = {key: tool[key] for key in ("name", "description", "parameters") if tool.get(key) is not None}
    return {"type": "function", "function": function}


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


async def responses(state: ServerState, request: Any) -> Any:
    """`POST /v1/responses`: a routed run, answered as a `response` or streamed as its events."""

    def parse(body: Any) -> tuple[list[dict[str, Any]], dict[str, Any], ResponseWriter]:
        messages, arguments = responses_arguments(body, state)
        return messages, arguments, ResponseWriter(state.served_model, body, tool_call_reader(state, arguments))

    return await answer(state, request, parse, in_responses_terms)


class ResponseWriter:
    """A run's `response` object, and the stream of events that builds it item by item."""

    def __init__(self, model: str, body: dict[str, Any], reader: ToolCallReader | None) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model, self.body, self.reader = model, body, reader
        self.output: list[dict[str, Any]] = []
        self.sequence = 0
        self.answer = ""
        self.message: dict[str, Any] | None = None
        """The answer's message item while it streams (not when the request has tools: then the
        answer is parsed for calls once it is whole)."""

    def whole(self, trace: RunTrace) -> dict[str, Any]:
        return self.response(trace)

    def failed(self, failure: RequestError) -> list[str]:
        return [
            self.event(
                "response.failed",
                response=self.response(None, status="failed", error={"code": "server_error", "message": str(failure)}),
            )
        ]

    def response(self, trace: RunTrace | None, status: str = "completed", error: dict | None = None) -> dict[str, Any]:
        if trace is not None:
            self.output = [*self._reasoning_items(trace), *self._answer_items(trace)]
            status = "incomplete" if trace.finish_reason == "budget" else status
        body = self.body
        text_format = (body.get("text") or {}).get("format") or {"type": "text"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "model": self.model,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "output": self.output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "text": {"format": text_format},
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "previous_response_id": None,
            "truncation": body.get("truncation", "disabled"),
            "metadata": body.get("metadata") or {},
            "user": body.get("user"),
            "usage": None if trace is None else _usage(trace),
            **(
                {}
                if trace is None
                else {"glimp": {"steps": [s.routing() for s in trace.steps], "summary": trace.summary()}}
            ),
        }

    def _reasoning_items(self, trace: RunTrace) -> list[dict[str, Any]]:
        return [
            _reasoning_item(f"rs_{self.id}_{step.index}", step.text, step.routing())
            for step in trace.steps
            if step.phase == "reasoning"
        ]

    def _answer_items(self, trace: RunTrace) -> list[dict[str, Any]]:
        text, calls = self.reader.read(trace.answer) if self.reader else (trace.answer, [])
        items = [_message_item(f"msg_{self.id}", text)] if text or not calls else []
        return items + [
            _call_item(f"fc_{self.id}_{n}", call.id, call.name, json.dumps(call.arguments))
            for n, call in enumerate(calls)
        ]

    # -- the stream --
    def event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"

    def start(self) -> list[str]:
        shell = self.response(None, status="in_progress")
        return [self.event("response.created", response=shell), self.event("response.in_progress", response=shell)]

    def on_event(self, event: RouterEvent) -> list[str]:
        if isinstance(event, StepStarted) and event.phase == "reasoning":
            item = _reasoning_item(f"rs_{self.id}_{event.index}", "", None, status="in_progress")
            self.output.append(item)
            index = len(self.output) - 1
            return [
                self.event("response.output_item.added", output_index=index, item={**item, "content": []}),
                self.event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part={"type": "reasoning_text", "text": ""},
                ),
            ]
        if isinstance(event, TokenDelta) and event.text and event.phase == "reasoning":
            item, index = self.output[-1], len(self.output) - 1
            item["content"][0]["text"] += event.text
            return [
                self.event(
                    "response.reasoning_text.delta",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    delta=event.text,
                )
            ]
        if isinstance(event, StepFinished) and event.step.phase == "reasoning":
            item, index = self.output[-1], len(self.output) - 1
            item.update(status="completed", glimp=event.step.routing())
            item["content"][0]["text"] = event.step.text
            part = item["content"][0]
            return [
                self.event(
                    "response.reasoning_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=part["text"],
                ),
                self.event(
                    "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part
                ),
                self.event("response.output_item.done", output_index=index, item=item),
            ]
        if isinstance(event, TokenDelta) and event.text and event.phase == "answer":
            self.answer += event.text
            if self.reader:
                return []  # parsed for calls once whole
            events = [] if self.message is not None else self._open_message()
            index = len(self.output) - 1
            return events + [
                self.event(
                    "response.output_text.delta",
                    item_id=f"msg_{self.id}",
                    output_index=index,
                    content_index=0,
                    delta=event.text,
                    logprobs=[],
                )
            ]
        return []

    def _open_message(self) -> list[str]:
        self.message = {**_message_item(f"msg_{self.id}", ""), "status": "in_progress", "content": []}
        self.output.append(self.message)
        index = len(self.output) - 1
        return [
            self.event("response.output_item.added", output_index=index, item=dict(self.message)),
            self.event(
                "response.content_part.added",
                item_id=self.message["id"],
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def finish(self, trace: RunTrace) -> list[str]:
        """The answer's closing events (a streamed message, or the parsed calls), then the response."""
        events: list[str] = []
        text, calls = self.reader.read(trace.answer) if self.reader else (trace.answer, [])
        if self.message is None and (text or not calls):
            events += self._open_message()
            if text:
                events.append(
                    self.event(
                        "response.output_text.delta",
                        item_id=f"msg_{self.id}",
                        output_index=len(self.output) - 1,
                        content_index=0,
                        delta=text,
                        logprobs=[],
                    )
                )
        if self.message is not None:
            index = self.output.index(self.message)
            self.message.update(_message_item(self.message["id"], text))
            part = self.message["content"][0]
            events += [
                self.event(
                    "response.output_text.done",
                    item_id=self.message["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                self.event(
                    "response.content_part.done",
                    item_id=self.message["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
                self.event("response.output_item.done", output_index=index, item=self.message),
            ]
        for number, call in enumerate(calls):
            item = _call_item(f"fc_{self.id}_{number}", call.id, call.name, json.dumps(call.arguments))
            self.output.append(item)
            index = len(self.output) - 1
            events += [
                self.event(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "arguments": "", "status": "in_progress"},
                ),
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=item["arguments"],
                ),
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                    name=item["name"],
                ),
                self.event("response.output_item.done", output_index=index, item=item),
            ]
        final = self.response(trace)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return events + [self.event(kind, response=final)]


def _reasoning_item(item_id: str, text: str, routing: dict | None, status: str = "completed") -> dict[str, Any]:
    item = {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }
    return item if routing is None else {**item, "glimp": routing}


def _message_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(item_id: str, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def _usage(trace: RunTrace) -> dict[str, Any]:
    chat = usage(trace)
    return {
        "input_tokens": chat["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": chat["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": trace.reasoning_tokens},
        "total_tokens": chat["total_tokens"],
        "by_model": chat["by_model"],
    }
