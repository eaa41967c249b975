"""A run's prompt checked and put in one shape: a question or OpenAI-style chat messages become the
message list the backends render (text content only; earlier reasoning under both of its names)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from glimp_integrations.errors import GlimpInputError
from glimp_integrations.tools import Message

Prompt = str | Sequence[Mapping[str, Any]]
"""A question, or chat messages in the OpenAI shape ({"role": ..., "content": ...})."""


def normalize_messages(prompt: Prompt) -> list[Message]:
    """Check a question or a message list and return it as a message list."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise GlimpInputError("`prompt` is an empty question; got ''. Pass the question text.", parameter="prompt")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, Sequence) or isinstance(prompt, (bytes, bytearray)):
        raise GlimpInputError(
            f"`prompt` must be a question (str) or a list of chat messages; got {type(prompt).__name__}. "
            'Pass e.g. [{"role": "user", "content": "..."}].',
            parameter="prompt",
        )
    messages: list[Message] = []
    for position, message in enumerate(prompt):
        if not isinstance(message, Mapping) or message.get("role") not in ("system", "user", "assistant", "tool"):
            role = message.get("role") if isinstance(message, Mapping) else None
            raise GlimpInputError(
                f"`prompt[{position}]['role']` must be system, user, assistant or tool; got {role!r}. "
                "Fix the message's role.",
                parameter=f"prompt[{position}]['role']",
            )
        messages.append(_with_reasoning({**message, "content": _message_text(message, position)}, position))
    if not messages:
        raise GlimpInputError(
            "`prompt` is an empty message list; got []. Pass at least one user message.", parameter="prompt"
        )
    if not any(m["role"] == "user" for m in messages):
        roles = [m["role"] for m in messages]
        raise GlimpInputError(
            f"`prompt` has no user message; got roles {roles}. Add the user's question.", parameter="prompt"
        )
    return messages


def _with_reasoning(message: dict[str, Any], position: int) -> dict[str, Any]:
    """An assistant message's earlier reasoning under both names chat templates read (vLLM takes
    `reasoning`, older clients and the DeepSeek API send `reasoning_content`)."""
    given = {name: message[name] for name in ("reasoning", "reasoning_content") if message.get(name) is not None}
    if not given:
        return message
    for name, text in given.items():
        if not isinstance(text, str):
            raise GlimpInputError(
                f"`prompt[{position}]['{name}']` must be text; got {type(text).__name__}. "
                "Pass the earlier reasoning as a string, or leave it out.",
                parameter=f"prompt[{position}]['{name}']",
            )
    if len(set(given.values())) > 1:
        raise GlimpInputError(
            f"`prompt[{position}]` has `reasoning` and `reasoning_content` with different texts. "
            "Send one of them (they name the same thing).",
            parameter=f"prompt[{position}]['reasoning']",
        )
    text = next(iter(given.values()))
    return {**message, "reasoning": text, "reasoning_content": text}


def _message_text(message: Mapping[str, Any], position: int) -> str:
    """A message's content as text, as OpenAI's API takes it: a string, a list of text parts (joined
    by newlines, as vLLM does), or None for an assistant message that only calls tools."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant" and message.get("tool_calls"):
        return ""
    if (
        isinstance(content, list)
        and content
        and all(
            isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
            for part in content
        )
    ):
        return "\n".join(part["text"] for part in content)
    kinds = (
        sorted({str(part.get("type")) for part in content if isinstance(part, Mapping)})
        if isinstance(content, list)
        else type(content).__name__
    )
    raise GlimpInputError(
        f"`prompt[{position}]['content']` must be text or a list of text parts; got {kinds}. "
        "Glimp routes text only: pass the text content (images and audio are not supported).",
        parameter=f"prompt[{position}]['content']",
    )
