"""Middleware for LangChain's `create_agent` (needs the `langchain` package: `pip install "glimp[langchain]"`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import ToolMessage

from glimp_integrations.errors import require_module

_middleware = require_module("langchain.agents.middleware", "langchain", "langchain_glimp.agents")


class CallToolThenAnswer(_middleware.AgentMiddleware):  # type: ignore[name-defined]  # imported when used
    """For a model too small to decide when to call a tool (such as the embedded default): until a
    tool result is in the conversation the model must call one of the agent's tools, and after
    that it answers: text with no call, or the agent's response format (whichever strategy
    create_agent picks for the model).  Models that decide well need no middleware.

    >>> from langchain.agents import create_agent
    >>> agent = create_agent(ChatGlimpRouter(), [get_weather], middleware=[CallToolThenAnswer()])  # doctest: +SKIP
    """

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return handler(_call_then_answer(request))

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        return await handler(_call_then_answer(request))


def _call_then_answer(request: Any) -> Any:
    if any(isinstance(message, ToolMessage) for message in request.messages):
        # text with no call; or, with the tools withdrawn, the response format (either strategy)
        return request.override(tool_choice="none") if request.response_format is None else request.override(tools=[])
    # no response format on this call: its tools could otherwise be called first (create_agent's
    # ToolStrategy), and with one create_agent does not pass `request.tool_choice` on
    return request.override(tool_choice="required", response_format=None)
