"""`GlimpRouterLLM`: the Glimp routing engine as a LlamaIndex function-calling LLM.

The adapter only translates: LlamaIndex messages and tools in; engine events out as
`ChatResponse`s (each reasoning step a `ThinkingBlock` with its routing in
`additional_information`, streamed as `additional_kwargs["thinking_delta"]`; the answer as text;
tool calls as `ToolCallBlock`s), `GlimpStepEvent` instrumentation events, and usage and the run
summary in `raw`.  Chat is implemented once as a stream of responses; the non-streaming and
completion methods are derived from it.  All routing happens in `glimp_integrations`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Generator, Sequence
from contextlib import closing
from typing import Any

from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, model_validator
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.program.function_program import FunctionCallingProgram, get_function_tool

from glimp_integrations import (
    Backend,
    GlimpInputError,
    GlimpRouter,
    RouterEvent,
    RunFinished,
    StepFinished,
    TokenDelta,
    check_adapter_settings,
    check_router_settings,
    router_settings,
)
from glimp_integrations.adapters import adapter_router, call_overrides, unsupported_call_arguments
from glimp_integrations.config import RouterConfig
from glimp_integrations.constraints import callable_tools
from glimp_integrations.embedded import EMBEDDED_CONTEXT_WINDOW, EMBEDDED_MODEL_NAME
from glimp_integrations.settings import adapter_settings_model
from glimp_integrations.tool_formats import ToolCallReader
from glimp_integrations.trace import json_safe

dispatcher = get_dispatcher(__name__)


class GlimpStepEvent(BaseEvent):
    """A step has been written: who wrote it and why (`StepTrace.routing()`), and its text."""

    routing: dict[str, Any]
    text: str

    @classmethod
    def class_name(cls) -> str:
        return "GlimpStepEvent"


CALL_ARGUMENTS = ("tools", "tool_choice", "tool_required", "allow_parallel_tool_calls", "response_format")
"""LlamaIndex's call arguments for tools and structured answers that a call may pass."""


class GlimpRouterLLM(FunctionCallingLLM, adapter_settings_model()):  # type: ignore[misc]
    """A LlamaIndex LLM whose response is written step by step by a small and a large model.

    With no arguments both roles run the embedded SmolLM2-135M-Instruct on the CPU (mechanics,
    not quality).  Name real models with `small` and `large` (HF ids or local folders).

    >>> from llama_index.core import Settings
    >>> from llamaindex_glimp import GlimpRouterLLM
    >>> Settings.llm = GlimpRouterLLM(threshold=0.9, seed=0)   # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    small: str | None = Field(default=None, description="Small model (HF id or local folder); None: embedded.")
    large: str | None = Field(default=None, description="Large model (HF id or local folder); writes the answer.")
    max_tokens: int | None = Field(
        default=None, gt=0, description="Most tokens of the answer (the whole response for models without think tags)."
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds: with backend='openai' the limit of each request to a server (as in "
        "LlamaIndex's OpenAI LLM); with a local backend the limit of one whole call.",
    )
    max_retries: int = Field(default=3, ge=0, description="Retries of a failed request with backend='openai'.")
    stop: list[str] | None = Field(
        default=None,
        description="Stop sequences: the answer ends before the first one (as in LlamaIndex's Vllm LLM); a call's "
        "`stop` replaces them.",
    )

    _engine: GlimpRouter | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "GlimpRouterLLM"

    # --- metadata ------------------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _known_settings_only(cls, values: Any) -> Any:
        """A misspelt or unsupported setting fails here instead of being ignored."""
        if isinstance(values, dict):
            check_adapter_settings("GlimpRouterLLM", values, set(cls.model_fields))
        return values

    @model_validator(mode="after")
    def _valid_settings(self) -> GlimpRouterLLM:
        check_router_settings(router_settings(self))
        return self

    def router(self) -> GlimpRouter:
        """The engine (built on first use)."""
        if self._engine is None:
            self._engine = adapter_router(self)
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        """What LlamaIndex plans with; it loads no model (the limits come from the models once loaded)."""
        if self._engine is not None:
            backend = self._engine.backend
            context_window = min(backend.context_window("small"), backend.context_window("large"))
            model_name = f"{backend.model_name('small')}+{backend.model_name('large')}"
        elif isinstance(self.backend, Backend):
            context_window = min(self.backend.context_window("small"), self.backend.context_window("large"))
            model_name = f"{self.backend.model_name('small')}+{self.backend.model_name('large')}"
        elif self.small is None:
            context_window, model_name = EMBEDDED_CONTEXT_WINDOW, f"{EMBEDDED_MODEL_NAME}+{EMBEDDED_MODEL_NAME}"
        else:
            context_window, model_name = DEFAULT_CONTEXT_WINDOW, f"{self.small}+{self.large}"
        return LLMMetadata(
            context_window=context_window,
            num_output=self.max_tokens or RouterConfig().answer_budget,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=model_name,
        )

    # --- the one request builder and converter ------------------------------------------------

    def _request(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        engine_messages = [_to_engine_message(m, position) for position, m in enumerate(messages)]
        if not engine_messages:
            raise GlimpInputError("`messages` is empty; got []. Pass at least one user ChatMessage.")
        overrides = call_overrides(self, kwargs, kwargs.pop("stop", None) or self.stop)
        tool_choice = kwargs.pop("tool_choice", None)  # any form; the engine reads it (`read_tool_choice`)
        if kwargs.pop("tool_required", False):
            tool_choice = tool_choice or "required"
        kwargs.pop("formatted", None)
        request = {
            "prompt": engine_messages,
            "tools": kwargs.pop("tools", None),
            "tool_choice": tool_choice,
            "parallel_tool_calls": kwargs.pop("allow_parallel_tool_calls", None),
            "response_format": kwargs.pop("response_format", None),
            **overrides,
        }
        if kwargs:
            raise unsupported_call_arguments("GlimpRouterLLM", kwargs, CALL_ARGUMENTS)
        return request

    def _on_event(self, event: RouterEvent, builder: _ResponseBuilder) -> ChatResponse | None:
        """Send a finished step to instrumentation; convert the event to a response, if any."""
        if isinstance(event, StepFinished):
            dispatcher.event(GlimpStepEvent(routing=event.step.routing(), text=event.step.text))
        return builder.convert(event)

    def _response_builder(self, request: dict[str, Any]) -> _ResponseBuilder:
        tools = callable_tools(request["tools"], request["tool_choice"])
        return _ResponseBuilder(self.router().tool_call_reader(tools) if tools else None)

    def _chat_stream(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Generator[ChatResponse, None, None]:
        request = self._request(messages, kwargs)
        builder = self._response_builder(request)
        with closing(self.router().stream(**request)) as stream:  # closing the responses stops the run
            for event in stream:
                if (response := self._on_event(event, builder)) is not None:
                    yield response

    async def _achat_stream(self, messages: Sequence[ChatMessage], **kwargs: Any) -> AsyncGenerator[ChatResponse, None]:
        request = self._request(messages, kwargs)
        builder = self._response_builder(request)
        stream = self.router().astream(**request)
        try:
            async for event in stream:
                if (response := self._on_event(event, builder)) is not None:
                    yield response
        finally:
            await stream.aclose()

    # --- chat ----------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        last = None
        for last in self._chat_stream(messages, **kwargs):
            pass
        assert last is not None, "a run always ends with its final response"
        return last

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._chat_stream(messages, **kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        last = None
        async for last in self._achat_stream(messages, **kwargs):
            pass
        assert last is not None, "a run always ends with its final response"
        return last

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return self._achat_stream(messages, **kwargs)

    # --- completion, derived from chat --------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_to_completion_decorator(self.chat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await achat_to_completion_decorator(self.achat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self.astream_chat)(prompt, **kwargs)

    # --- tools ----------------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg
            )
        specs = [tool.metadata.to_openai_tool() for tool in tools]
        return {
            "messages": messages,
            "tools": specs or None,
            "tool_required": tool_required,
            "allow_parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    # --- structured prediction: the answer is a call of the output class's tool --------------

    def _structured_program(self, output_cls: type, prompt: Any) -> FunctionCallingProgram:
        """A function-calling program that names its one tool as `tool_choice`.  LlamaIndex's
        streaming programs drop `tool_required`, which leaves the call to the model's choice."""
        name = get_function_tool(output_cls).metadata.name
        return FunctionCallingProgram.from_defaults(output_cls=output_cls, prompt=prompt, llm=self, tool_choice=name)

    def _structured_stream_call(
        self, output_cls: type, prompt: Any, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        return self._structured_program(output_cls, prompt).stream_call(llm_kwargs=llm_kwargs, **prompt_args)

    async def _structured_astream_call(
        self, output_cls: type, prompt: Any, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        return await self._structured_program(output_cls, prompt).astream_call(llm_kwargs=llm_kwargs, **prompt_args)

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        selections = [
            ToolSelection(
                tool_id=b.tool_call_id or f"call_{i}",
                tool_name=b.tool_name,
                tool_kwargs=b.tool_kwargs if isinstance(b.tool_kwargs, dict) else {},
            )
            for i, b in enumerate(response.message.blocks)
            if isinstance(b, ToolCallBlock)
        ]
        if not selections and error_on_no_tool_call:
            raise ValueError(f"Expected at least one tool call, but the answer has none: {response.message.content!r}")
        return selections


def _to_engine_message(message: ChatMessage, position: int) -> dict[str, Any]:
    """A LlamaIndex message as an engine (OpenAI-shaped) message; text and tool calls only."""
    role = {"chatbot": "assistant", "model": "assistant", "developer": "system", "function": "tool"}.get(
        message.role.value, message.role.value
    )
    unsupported = [
        type(b).__name__ for b in message.blocks if not isinstance(b, (TextBlock, ThinkingBlock, ToolCallBlock))
    ]
    if unsupported:
        raise GlimpInputError(
            f"`messages[{position}]` holds {unsupported}; Glimp routes text only. Remove images, audio and "
            "documents, or describe them in text."
        )
    engine: dict[str, Any] = {"role": role, "content": message.content or ""}
    calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
    if calls:
        engine["tool_calls"] = [
            {"id": b.tool_call_id, "type": "function", "function": {"name": b.tool_name, "arguments": b.tool_kwargs}}
            for b in calls
        ]
    if "tool_call_id" in message.additional_kwargs:
        engine["tool_call_id"] = message.additional_kwargs["tool_call_id"]
    return engine


class _ResponseBuilder:
    """Engine events -> `ChatResponse`s, for one call.

    Each response carries the message so far (`ThinkingBlock`s of finished steps, the answer
    text) and its delta: answer text in `delta`, reasoning text in
    `additional_kwargs["thinking_delta"]`.  With tools, the answer is streamed as the calls it
    holds so far (`ToolCallBlock`s with the arguments written yet, and the OpenAI-shaped
    `additional_kwargs["tool_calls"]` that LlamaIndex's streaming programs read), and the text
    around them comes at the end.  The last response carries usage and the summary in `raw`.
    """

    def __init__(self, reader: ToolCallReader | None) -> None:
        self.reader = reader
        self.thinking: list[ThinkingBlock] = []
        self.answer = ""
        self.call_ids: list[str] = []
        """One id per call, the same in every response of the stream."""

    def _response(
        self,
        delta: str = "",
        thinking_delta: str | None = None,
        calls: Sequence[tuple[str, dict]] = (),
        raw: Any = None,
    ) -> ChatResponse:
        text = [] if self.reader and raw is None else [TextBlock(text=self.answer)] if self.answer else []
        while len(self.call_ids) < len(calls):
            self.call_ids.append(f"call_{uuid.uuid4().hex[:12]}")
        blocks = [
            ToolCallBlock(tool_call_id=i, tool_name=name, tool_kwargs=arguments)
            for i, (name, arguments) in zip(self.call_ids, calls)
        ]
        message = ChatMessage(role=MessageRole.ASSISTANT, blocks=[*self.thinking, *text, *blocks])
        if blocks:
            message.additional_kwargs["tool_calls"] = [
                {
                    "id": b.tool_call_id,
                    "type": "function",
                    "function": {"name": b.tool_name, "arguments": json.dumps(b.tool_kwargs)},
                }
                for b in blocks
            ]
        extra = {"thinking_delta": thinking_delta} if thinking_delta is not None else {}
        return ChatResponse(message=message, delta=delta, additional_kwargs=extra, raw=raw)

    def convert(self, event: RouterEvent) -> ChatResponse | None:
        if isinstance(event, TokenDelta):
            if event.phase == "reasoning":
                return self._response(thinking_delta=event.text)
            self.answer += event.text
            if not self.reader:
                return self._response(delta=event.text)
            self.reader.feed(event.text)
            so_far = self.reader.calls_so_far()
            return self._response(calls=so_far) if so_far else None
        if isinstance(event, StepFinished) and event.step.phase == "reasoning":
            step = event.step
            self.thinking.append(
                ThinkingBlock(content=step.text, num_tokens=step.tokens, additional_information=step.routing())
            )
            return None
        if isinstance(event, RunFinished):
            trace = event.trace
            calls: list[tuple[str, dict]] = []
            if self.reader:
                self.answer, parsed = self.reader.read(self.answer)
                calls = [(c.name, c.arguments) for c in parsed]
            self.answer = self.answer.strip()
            usage = {
                "prompt_tokens": trace.input_tokens,
                "completion_tokens": trace.output_tokens,
                "total_tokens": trace.input_tokens + trace.output_tokens,
                "reasoning_tokens": trace.reasoning_tokens,
                "by_model": trace.usage_by_model,
            }
            raw = {"usage": usage, "glimp": json_safe({**trace.summary(), "steps": [s.routing() for s in trace.steps]})}
            return self._response(calls=calls, raw=raw)
        return None
