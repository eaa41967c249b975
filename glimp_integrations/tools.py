"""Tool calling for chat templates, shared by the backends and both framework adapters.

Tools are OpenAI function schemas ({"type": "function", "function": {"name", "description",
"parameters"}}).  A model whose chat template renders `tools` gets them through its template;
for one whose template does not, the schemas and the expected call format (the family's, see
`tool_formats`) are put in a system message, and earlier calls are written inline in that format.
`parse_tool_calls` is Glimp's own reader of the Hermes format, for where vLLM's parsers are not
installed (`tool_formats.ToolCallReader` reads every family with them).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from glimp_integrations.tool_formats import HERMES, render_call

Message = dict[str, Any]
"""A chat message in the OpenAI shape: {"role": ..., "content": ...}."""

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")


def tool_instructions(
    tools: Sequence[dict[str, Any]], tool_choice: str | None = None, tool_call_parser: str = HERMES
) -> str:
    """A system prompt describing `tools` and how to call them in the family's format (for
    templates without tools)."""
    schemas = "\n".join(json.dumps(t.get("function", t)) for t in tools)
    rule = {
        None: "Call a tool only when it helps; otherwise answer directly.",
        "auto": "Call a tool only when it helps; otherwise answer directly.",
        "required": "You must call one of the tools.",
        "none": "Do not call a tool now; answer directly.",
    }.get(tool_choice, f"You must call the tool `{tool_choice}`.")
    example = render_call(tool_call_parser, "TOOL_NAME", "{...}")
    return f"You can call these tools:\n{schemas}\n\nTo call a tool, reply with exactly {example} {rule}"


def prepare_messages(
    messages: Sequence[Message],
    tools: Sequence[dict[str, Any]] | None,
    template_renders_tools: bool,
    tool_choice: str | None = None,
    tool_call_parser: str = HERMES,
) -> list[Message]:
    """Messages ready for a chat template: earlier calls' arguments as objects (OpenAI sends them as
    JSON text; templates and the inline format expect objects, as vLLM's server also converts them),
    and when the template cannot render tools, the tools described in a system message and earlier
    calls written inline in the family's format."""
    prepared: list[Message] = []
    for message in messages:
        message = dict(message)
        calls = [_with_object_arguments(call) for call in message.pop("tool_calls", None) or []]
        if calls and template_renders_tools:
            message["tool_calls"] = calls
        elif calls:
            inline = "".join(
                render_call(tool_call_parser, c["function"]["name"], _json_text(c["function"]["arguments"]))
                for c in calls
            )
            message["content"] = (message.get("content") or "") + inline
        prepared.append(message)
    return (
        add_system_text(prepared, tool_instructions(tools, tool_choice, tool_call_parser))
        if tools and not template_renders_tools
        else prepared
    )


def _json_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _with_object_arguments(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call["function"].get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return call  # not JSON: the model sees the text it was given
    return {**call, "function": {**call["function"], "arguments": arguments}}


def add_system_text(messages: Sequence[Message], text: str) -> list[Message]:
    """`messages` with `text` at the end of the system message (one is added first if none)."""
    messages = [dict(m) for m in messages]
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = messages[0]["content"] + "\n\n" + text
    else:
        messages.insert(0, {"role": "system", "content": text})
    return messages


def parse_tool_calls(text: str, tool_names: Sequence[str]) -> tuple[str, list[ToolCall]]:
    """Split an answer into its plain text and the calls it makes to tools named `tool_names`.
    Text that names no known tool, or is not valid JSON, stays text."""
    calls: list[ToolCall] = []
    spans: list[tuple[int, int]] = []
    for match in _TOOL_CALL.finditer(text):
        call = _as_call(match.group(1), tool_names)
        if call:
            calls.append(call)
            spans.append(match.span())
    if not calls:
        stripped = text.strip()
        call = _as_call(stripped, tool_names) if stripped.startswith("{") else None
        return ("", [call]) if call else (text, [])
    remaining = text
    for start, end in reversed(spans):
        remaining = remaining[:start] + remaining[end:]
    return remaining.strip(), calls


def _as_call(payload: str, tool_names: Sequence[str]) -> ToolCall | None:
    payload = payload.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("name") not in tool_names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return ToolCall(data["name"], arguments if isinstance(arguments, dict) else {})
