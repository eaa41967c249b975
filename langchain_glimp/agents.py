"""Middleware for LangChain's `create_agent` (needs the `langchain` package: `pip install "glimp[langchain]"`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import ToolMessage

from glimp_integrations.errors import require_module

_middleware = require_module("langchain.agents.middleware", "langchain", "langchain_glimp.agents")


class CallToolThenAnswer(_middleware.AgentMiddleware):
    """For a model too small to decide when to call a tool (such as the embedded default): a call
    is required until a tool result is in the conversation, and after that none, so the next
    answer is text, or the agent's response format.  Models that decide well need no middleware.

    >>> from langchain.agents import create_agent
    >>> agent = create_agent(ChatGlimpRouter(), [get_weather], middleware=[CallToolThenAnswer()])  # doctest: +SKIP
    """

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return handler(_with_tool_choice(request))

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        return await handler(_with_tool_choice(request))


def _with_tool_choice(request: Any) -> Any:
    choice = "none" if any(isinstance(m, ToolMessage) for m in request.messages) else "required"
    if request.response_format is None:
        return request.override(tool_choice=choice)
    # with a response format, create_agent (langchain 1.5) binds the tools without
    # `request.tool_choice` but with the model settings
    return request.override(model_settings={**request.model_settings, "tool_choice": choice})
