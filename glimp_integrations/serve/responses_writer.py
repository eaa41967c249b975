"""A Responses API run as OpenAI's clients read it: the `response` object (openai's `Response`, with
Glimp's `glimp` field) and, streamed, the events that build it item by item (openai's
`ResponseStreamEvent`): a `reasoning` item per routed reasoning step, then the answer as a
`message` item or `function_call` items."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from glimp_integrations import RouterEvent, RunTrace, StepFinished, StepStarted, TokenDelta
from glimp_integrations.serve.protocol import RequestError, usage, wire_dict
from glimp_integrations.tool_formats import ToolCallReader

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
"""Every event of a Responses stream, by its `type`."""


class ResponseWriter:
    """A run's `response` object, and the stream of events that builds it item by item."""

    def __init__(self, model: str, reported: dict[str, Any], reader: ToolCallReader | None) -> None:
        """`reported`: the request's settings as the response reports them (`ResponsesRequest.reported`)."""
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model, self.reported, self.reader = model, reported, reader
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
        """The `response` object (openai's `Response`, with Glimp's `glimp` field) as JSON data."""
        if trace is not None:
            self.output = [*self._reasoning_items(trace), *self._answer_items(trace)]
            status = "incomplete" if trace.finish_reason == "budget" else status
        response = {
            **self.reported,
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "model": self.model,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "output": self.output,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "previous_response_id": None,
            "usage": None if trace is None else _usage(trace),
        }
        if trace is not None:
            response["glimp"] = {"steps": [s.routing() for s in trace.steps], "summary": trace.summary()}
        return wire_dict(Response.model_validate(response))

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
        """A stream event of type `kind` (openai's `ResponseStreamEvent`), as a server-sent event."""
        payload = STREAM_EVENT.validate_python({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(wire_dict(payload))}\n\n"

    def start(self) -> list[str]:
        shell = self.response(None, status="in_progress")
        return [self.event("response.created", response=shell), self.event("response.in_progress", response=shell)]

    def on_event(self, event: RouterEvent) -> list[str]:
        """The events of one router event (long: one branch per kind of event, in OpenAI's order)."""
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
        """The answer's closing events (a streamed message, or the parsed calls), then the response.
        (Long: OpenAI's event sequence for each item, written out in the order clients read it.)"""
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
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": chat["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": trace.reasoning_tokens},
        "total_tokens": chat["total_tokens"],
        "by_model": chat["by_model"],
    }
