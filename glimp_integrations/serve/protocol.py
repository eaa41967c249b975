"""What every API of `glimp serve` shares on the wire: errors in OpenAI's shape (`RequestError`,
with the `param` it names), usage with the routing's token counts, and server-sent events."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from glimp_integrations import RunTrace
from glimp_integrations.config import CONFIG_FIELDS, SAMPLING_FIELDS

OPENAI_NAMED_SETTINGS = (*SAMPLING_FIELDS, "stop")
"""Run settings every API takes under OpenAI's own names."""
ROUTING_FIELDS: tuple[str, ...] = tuple(f for f in CONFIG_FIELDS if f not in OPENAI_NAMED_SETTINGS)
"""Run settings accepted as extra body fields (`threshold`, `policy`, ...)."""


class RequestError(Exception):
    """A request the server answers with an OpenAI-style error (`status`, `param`, `code`);
    `reason` counts a refusal in `/metrics` (`glimp_rejected_requests`), `headers` go with it."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | int | None = None,
        reason: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind
        self.code = status if code is None else code
        self.reason = reason or ("bad_request" if 400 <= status < 500 else None)
        self.headers = dict(headers or {})
        self.request_id: str | None = None
        """The request's id, once known (the body carries it)."""

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        if self.request_id is not None:
            error["request_id"] = self.request_id
        return {"error": error}


def chat_param(parameter: str | None) -> str | None:
    """An engine error's parameter as a chat request names it: the router's `prompt` is `messages`."""
    if parameter and parameter.startswith("prompt"):
        return "messages" + parameter.removeprefix("prompt")
    return parameter


def usage(trace: RunTrace) -> dict[str, Any]:
    """OpenAI's usage object for a run, with `by_model` (what each model computed) added."""
    return {
        "prompt_tokens": trace.prompt_tokens,
        "completion_tokens": trace.completion_tokens,
        "total_tokens": trace.prompt_tokens + trace.completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": trace.reasoning_tokens},
        "by_model": {model: dict(counts) for model, counts in trace.usage_by_model.items()},
    }


FAILURE_STATUS = {"upstream": 502, "input": 400, "internal": 500}
"""The status a failed run answers with, by what failed (`GlimpRunError.failure`)."""


def sse_data(payload: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def wire_dict(model: Any) -> dict[str, Any]:
    """A response model (openai's types, with Glimp's extra fields) as JSON data: the fields set."""
    return model.model_dump(mode="json", exclude_unset=True)


def sse_model(model: Any) -> str:
    """A server-sent event carrying a response model."""
    return sse_data(wire_dict(model))


def is_int(value: Any, low: int = -(2**63), high: int = 2**63 - 1) -> bool:
    """An integer (not a bool) within [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_number(value: Any, low: float, high: float, low_open: bool = False) -> bool:
    """A finite number (not a bool) within [low, high] ((low, high] when `low_open`)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and value <= high
    )


def is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def check_fields(body: Mapping[str, Any], rules: Mapping[str, tuple[Callable[[Any], bool], str, str]]) -> None:
    """Each field of `body` that `rules` names ({field: (test, rule, fix)}) and is not None passes
    its test, else a 400 naming it."""
    for name, (test, rule, fix) in rules.items():
        value = body.get(name)
        if value is not None and not test(value):
            raise RequestError(400, f"`{name}` {rule}; got {shown(value)}. {fix}", name)


def shown(value: Any, limit: int = 200) -> str:
    """A value as an error message quotes it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


COMMON_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "model": (lambda v: isinstance(v, str), "must be a string", "Pass the id /v1/models lists."),
    "stream": (lambda v: isinstance(v, bool), "must be true or false", "Pass a JSON boolean."),
    "temperature": (lambda v: is_number(v, 0, 2), "must be a number from 0 to 2", "Pass e.g. 0.6 (0: greedy)."),
    "top_p": (lambda v: is_number(v, 0, 1, low_open=True), "must be a number in (0, 1]", "Pass e.g. 0.95."),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "must be true or false", "Pass a JSON boolean."),
    "user": (lambda v: isinstance(v, str), "must be a string", "Pass an end-user id."),
    "metadata": (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "must be an object of strings",
        'Pass e.g. {"team": "search"}.',
    ),
    "service_tier": (lambda v: isinstance(v, str), "must be a string", "Pass e.g. auto."),
}
"""Types and ranges of the fields both APIs take, as OpenAI documents them (`check_fields`)."""
