"""Tool calling for chat templates, shared by the backends and both framework adapters.

Tools are OpenAI function schemas ({"type": "function", "function": {"name", "description",
"parameters"}}).  A model whose chat template renders `tools` gets them through its template;
for one whose template does not, the schemas and the expected call format (the family's, see
`tool_formats`) are put in a system message, and earlier calls are written inline in that format.
Calls are read back by `tool_formats.ToolCallReader`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from glimp_integrations.tool_formats import HERMES, render_call

Message = dict[str, Any]
"""A chat message in the OpenAI shape: {"role": ..., "content": ...}."""


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
