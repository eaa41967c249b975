"""`ChatGlimpRouter`: the Glimp routing engine as a LangChain chat model.

The adapter only translates: LangChain messages and tools in; engine events out as message
chunks (reasoning content blocks with each step's routing in `extras`, the answer as text),
`glimp_step` custom events, usage and the run summary.  All routing happens in
`glimp_integrations`.  `invoke` and `ainvoke` aggregate the same chunk stream that `stream` and
`astream` yield, so every path reports the same thing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import closing
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.callbacks.manager import ahandle_event, handle_event
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import (
    LangSmithParams,
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import (
    RunnableConfig,
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    get_config_list,
    patch_config,
)
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from langchain_core.utils.utils import secret_from_env
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

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
from glimp_integrations.constraints import callable_tools
from glimp_integrations.settings import adapter_settings_model
from glimp_integrations.tool_formats import ToolCallReader
from glimp_integrations.trace import json_safe

STEP_EVENT = "glimp_step"
"""Name of the custom event sent for every finished step (data: `StepTrace.routing()` + text)."""

StructuredOutputMethod = Literal["json_schema", "function_calling", "json_mode"]

_NOT_IN_OUTPUT = frozenset(
    {
        "cache",
        "verbose",
        "callbacks",
        "tags",
        "metadata",
        "custom_get_token_ids",
        "rate_limiter",
        "disable_streaming",
        "profile",
        "streaming",
        "timeout",
        "max_retries",
        "api_key",
        "backend",
        "name",
    }
)
"""Fields that do not change what the model answers (left out of the cache key; `backend` goes in by name)."""


class ChatGlimpRouter(BaseChatModel, adapter_settings_model()):  # type: ignore[misc]
    """A chat model whose response is written step by step by a small and a large model.

    With no arguments both roles run the embedded SmolLM2-135M-Instruct on the CPU (mechanics,
    not quality).  Name real models with `small` and `large` (HF ids or local folders).  Every
    setting of the engine is a field of the same name (`glimp_integrations.settings`).

    Reasoning steps appear as standard reasoning content blocks, each with its routing (model,
    H_init, tokens, time) in `extras`, and as `glimp_step` custom events; the answer is the
    message text; the run summary is in `response_metadata["glimp"]`.

    >>> from langchain_glimp import ChatGlimpRouter
    >>> llm = ChatGlimpRouter(threshold=0.9, seed=0)      # doctest: +SKIP
    >>> llm.invoke("What is 12 + 30?").text               # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    small: str | None = None
    """Small model (HF id or local folder); None with `large` None: the embedded default."""
    large: str | None = None
    """Large model (HF id or local folder); it also writes the final answer."""
    max_tokens: int | None = Field(default=None, gt=0)
    """Most tokens of the answer: after `</think>` for reasoning models, else of the whole
    (routed) response.  None: the engine's budgets."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = Field(default=None, gt=0)
    """Seconds: with backend="openai" the limit of each request to a server (as in ChatOpenAI);
    with a local backend the limit of one whole call."""
    max_retries: int = Field(default=2, ge=0)
    """Retries of a failed request with backend="openai" (with backoff, as in ChatOpenAI); local
    backends make no requests to retry."""
    api_key: SecretStr | None = Field(default_factory=secret_from_env("GLIMP_API_KEY", default=None))
    """The servers' API key with backend="openai" (default: $GLIMP_API_KEY; kept secret when serialized)."""
    streaming: bool = False

    _engine: GlimpRouter | None = PrivateAttr(default=None)

    # --- batching ----------------------------------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Every input in flight at once unless `max_concurrency` says otherwise: the engine decodes
        concurrent runs together (on every backend), so a thread per input costs a thread, where
        LangChain's default pool (cores + 4 threads) would hold the rest back."""
        configs = [
            c if c.get("max_concurrency") is not None else patch_config(c, max_concurrency=len(inputs))
            for c in get_config_list(config, len(inputs))
        ]
        return super().batch(inputs, configs, return_exceptions=return_exceptions, **kwargs)

    # --- LangChain metadata ------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "glimp-router"

    @property
    def model_name(self) -> str:
        """Both models, small first: `small+large`."""
        if isinstance(self.backend, Backend):
            return f"{self.backend.model_name('small')}+{self.backend.model_name('large')}"
        if self.small is None and self.large is None:
            return "SmolLM2-135M-Instruct+SmolLM2-135M-Instruct"
        return f"{self.small}+{self.large}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """Every setting that changes the output: LangChain's cache key is built from these."""
        params = {name: getattr(self, name) for name in type(self).model_fields if name not in _NOT_IN_OUTPUT}
        params["backend"] = self.backend if isinstance(self.backend, str) else self.backend.name
        return {**params, "model_name": self.model_name}

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_glimp", "chat_models"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "GLIMP_API_KEY"}

    def _resolve_model_profile(self) -> ModelProfile:
        return ModelProfile(
            text_inputs=True,
            text_outputs=True,
            reasoning_output=True,
            tool_calling=True,
            tool_choice=True,
            tool_call_streaming=False,
            structured_output=True,
            temperature=True,
            image_inputs=False,
            audio_inputs=False,
            pdf_inputs=False,
            video_inputs=False,
        )

    @model_validator(mode="before")
    @classmethod
    def _known_settings_only(cls, values: Any) -> Any:
        """A misspelt or unsupported setting fails here instead of being ignored."""
        if isinstance(values, dict):
            fields = cls.model_fields
            check_adapter_settings(
                "ChatGlimpRouter", values, set(fields) | {f.alias for f in fields.values() if f.alias}
            )
        return values

    @model_validator(mode="after")
    def _valid_settings(self) -> ChatGlimpRouter:
        check_router_settings(router_settings(self))
        return self

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="glimp",
            ls_model_name=kwargs.get("model", self.model_name),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )  # noqa: B009 (a generated field)
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # --- the one request builder ------------------------------------------------------------

    def router(self) -> GlimpRouter:
        """The engine (built on first use, so constructing the chat model loads nothing)."""
        if self._engine is None:
            self._engine = adapter_router(self, self.api_key.get_secret_value() if self.api_key else None)
        return self._engine

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments of `GlimpRouter.astream` for one call."""
        engine_messages = [_to_engine_message(m, position) for position, m in enumerate(messages)]
        if not engine_messages:
            raise GlimpInputError("`messages` is empty; got []. Pass at least one HumanMessage.")
        overrides = call_overrides(self, kwargs, stop or self.stop)
        model = kwargs.pop("model", None)
        if model is not None and model != self.model_name:
            raise GlimpInputError(
                f"`model` names {model!r}, but this ChatGlimpRouter runs the pair {self.model_name!r}; a call "
                "cannot swap the pair. Create another ChatGlimpRouter(small=..., large=...) instead."
            )
        kwargs.pop("stream", None)
        constraint = {
            "tools": kwargs.pop("tools", None),
            "tool_choice": kwargs.pop("tool_choice", None),
            "parallel_tool_calls": kwargs.pop("parallel_tool_calls", None),
            "response_format": kwargs.pop("response_format", None),
        }
        if kwargs:
            raise unsupported_call_arguments("ChatGlimpRouter", kwargs, list(constraint))
        return {"prompt": engine_messages, **constraint, **overrides}

    # --- generation ---------------------------------------------------------------------------

    def _chunk_builder(self, request: dict[str, Any]) -> _ChunkBuilder:
        tools = callable_tools(request["tools"], request["tool_choice"])
        return _ChunkBuilder(self.router().tool_call_reader(tools) if tools else None, self.model_name)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        chunks = self._chunk_builder(request)
        emit = _sync_step_emitter(run_manager)
        with closing(self.router().stream(**request)) as stream:  # closing the chunks stops the run
            for event in stream:
                if isinstance(event, StepFinished):
                    emit(chunks.step_event(event))
                if (chunk := chunks.convert(event)) is not None:
                    yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        chunks = self._chunk_builder(request)
        emit = _async_step_emitter(run_manager)
        stream = self.router().astream(**request)
        try:
            async for event in stream:
                if isinstance(event, StepFinished):
                    await emit(chunks.step_event(event))
                if (chunk := chunks.convert(event)) is not None:
                    yield chunk
        finally:
            await stream.aclose()  # a closed or cancelled consumer stops the run

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop=stop, run_manager=run_manager, **kwargs))

    # --- tools ----------------------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | Literal["auto", "any", "required", "none"] | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Render `tools` into both models' chat prompts and constrain the answer to them:
        `tool_choice` "auto" (default: text, or text then calls), "any"/"required"/True (at least
        one call), a tool's name or {"type": "function", "function": {"name": ...}} (that tool),
        "none" (text only).  `strict=True` makes every argument required; `parallel_tool_calls=False`
        allows one call.  Calls are parsed into `AIMessage.tool_calls`."""
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        return super().bind(tools=formatted, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: StructuredOutputMethod = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """A runnable whose answer is parsed into `schema` (a pydantic model, a TypedDict or a JSON
        schema dict), valid by construction: `json_schema` (default) constrains the answer to the
        schema's JSON, `function_calling` to a call of a tool shaped like it, `json_mode` to any
        JSON object (say in the prompt what it should hold).  `include_raw=True` returns
        {"raw": AIMessage (reasoning blocks and routing included), "parsed": ..., "parsing_error": ...}."""
        if kwargs:
            raise GlimpInputError(
                f"`with_structured_output` got unsupported arguments {sorted(kwargs)}. "
                "Pass only method, include_raw and strict."
            )
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        traced = {"kwargs": {"method": method, "strict": strict}, "schema": convert_to_json_schema(schema)}
        parser: Runnable
        if method == "function_calling":
            tool_name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema],
                tool_choice=tool_name,
                strict=strict,
                parallel_tool_calls=False,
                ls_structured_output_format=traced,
            )
            tools_parser = PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            parser = tools_parser if is_pydantic else JsonOutputKeyToolsParser(key_name=tool_name, first_tool_only=True)
        elif method in ("json_schema", "json_mode"):
            response_format = (
                {"type": "json_object"}
                if method == "json_mode"
                else {
                    "type": "json_schema",
                    "json_schema": {
                        "name": convert_to_openai_tool(schema)["function"]["name"],
                        "schema": traced["schema"],
                        "strict": bool(strict),
                    },
                }
            )
            llm = self.bind(response_format=response_format, ls_structured_output_format=traced)
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
        else:
            raise GlimpInputError(
                f"`method` must be json_schema, function_calling or json_mode; got {method!r}. "
                "Use json_schema (the default)."
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")


def _to_engine_message(message: BaseMessage, position: int) -> dict[str, Any]:
    """A LangChain message as an engine (OpenAI-shaped) message; text only."""
    role = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}.get(message.type)
    if role is None:
        raise GlimpInputError(
            f"`messages[{position}]` is a {type(message).__name__} (type {message.type!r}); ChatGlimpRouter "
            "takes system, human, AI and tool messages."
        )
    content = message.content
    if isinstance(content, list):
        unsupported = [
            b.get("type")
            for b in content
            if isinstance(b, dict)
            and b.get("type") not in ("text", "reasoning", "tool_call", "tool_use", "function_call")
        ]
        if unsupported:
            raise GlimpInputError(
                f"`messages[{position}]` has content of type {unsupported}; Glimp routes text only. "
                "Remove images, audio and files, or describe them in text."
            )
    engine: dict[str, Any] = {"role": role, "content": message.text}
    reasoning = (
        "".join(b.get("reasoning", "") for b in message.content_blocks if b["type"] == "reasoning")
        if isinstance(message, AIMessage)
        else ""
    )
    if reasoning:  # chat templates that render earlier reasoning (e.g. in a tool loop) read this key
        engine["reasoning_content"] = reasoning
    if isinstance(message, AIMessage) and message.tool_calls:
        engine["tool_calls"] = [
            {"id": c.get("id"), "type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
            for c in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        engine["tool_call_id"] = message.tool_call_id
    return engine


class _ChunkBuilder:
    """Engine events -> `ChatGenerationChunk`s, for one call.

    Reasoning steps become reasoning blocks (index `lc_step_<i>`) whose `extras` carry the
    routing once the step is finished; answer text is a plain string for models without think
    tags, else a text block after the reasoning.  With tools bound, the answer is held back and
    sent at the end with its parsed tool calls.  Usage and the summary go in the last chunk only.
    """

    def __init__(self, reader: ToolCallReader | None, model_name: str) -> None:
        self.reader = reader
        self.model_name = model_name
        self.held_answer = ""
        self.has_reasoning = False

    def step_event(self, event: StepFinished) -> dict[str, Any]:
        return {**event.step.routing(), "text": event.step.text}

    def convert(self, event: RouterEvent) -> ChatGenerationChunk | None:
        if isinstance(event, TokenDelta):
            if event.phase == "reasoning":
                self.has_reasoning = True
                return _chunk(
                    content=[{"type": "reasoning", "reasoning": event.text, "index": _block_index(event.index)}],
                    additional_kwargs={"reasoning_content": event.text},
                )
            if self.reader:
                self.held_answer += event.text
                return None
            return _chunk(content=self._answer_content(event.text))
        if isinstance(event, StepFinished) and event.step.phase == "reasoning":
            return _chunk(
                content=[
                    {
                        "type": "reasoning",
                        "reasoning": "",
                        "index": _block_index(event.step.index),
                        "extras": {"glimp": json_safe(event.step.routing())},
                    }
                ]
            )
        if isinstance(event, RunFinished):
            return self._last(event)
        return None

    def _answer_content(self, text: str) -> str | list[dict[str, Any]]:
        return [{"type": "text", "text": text, "index": ANSWER_BLOCK_INDEX}] if self.has_reasoning else text

    def _last(self, event: RunFinished) -> ChatGenerationChunk:
        trace = event.trace
        content: str | list[dict[str, Any]] = [] if self.has_reasoning else ""
        tool_call_chunks = []
        if self.reader:
            text, calls = self.reader.read(self.held_answer)
            if text:
                content = self._answer_content(text)
            tool_call_chunks = [
                {"type": "tool_call_chunk", "name": c.name, "args": json.dumps(c.arguments), "id": c.id, "index": i}
                for i, c in enumerate(calls)
            ]
        summary = json_safe({**trace.summary(), "steps": [s.routing() for s in trace.steps]})
        # per model under "by_model": LangChain reads the other detail keys as disjoint parts of the total
        by_model = trace.usage_by_model
        usage = {
            "input_tokens": trace.input_tokens,
            "output_tokens": trace.output_tokens,
            "total_tokens": trace.input_tokens + trace.output_tokens,
            "input_token_details": {"by_model": {role: u["input_tokens"] for role, u in by_model.items()}},
            "output_token_details": {
                "reasoning": trace.reasoning_tokens,
                "by_model": {role: u["output_tokens"] for role, u in by_model.items()},
            },
        }
        finish = "tool_calls" if tool_call_chunks else ("length" if trace.finish_reason == "budget" else "stop")
        return _chunk(
            content=content,
            tool_call_chunks=tool_call_chunks,
            usage_metadata=usage,
            chunk_position="last",
            response_metadata={"model_name": self.model_name, "finish_reason": finish, "glimp": summary},
        )


ANSWER_BLOCK_INDEX = "lc_answer"
"""Block indexes are `lc_`-prefixed strings: LangChain merges chunks by index, and numbers it
assigns itself to blocks that have none (tool calls under output_version="v1") must not collide."""


def _block_index(step_index: int) -> str:
    return f"lc_step_{step_index}"


def _chunk(**fields: Any) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(**fields))


def _sync_step_emitter(run_manager: CallbackManagerForLLMRun | None) -> Callable[[dict[str, Any]], None]:
    """Send `glimp_step` to the model's own run (invoke), else to a parent run if there is one
    (`stream()` gives `_stream` no run manager; inside a chain the chain's run receives it)."""
    if run_manager is not None:

        def emit(data: dict[str, Any]) -> None:
            handle_event(
                run_manager.handlers,
                "on_custom_event",
                "ignore_custom_event",
                STEP_EVENT,
                data,
                run_id=run_manager.run_id,
                tags=run_manager.tags,
                metadata=run_manager.metadata,
            )

        return emit
    manager = get_callback_manager_for_config(ensure_config())
    if manager.parent_run_id is None:
        return lambda data: None
    return lambda data: manager.on_custom_event(STEP_EVENT, data, run_id=manager.parent_run_id)


def _async_step_emitter(run_manager: AsyncCallbackManagerForLLMRun | None) -> Callable[[dict[str, Any]], Any]:
    """Async form of `_sync_step_emitter`."""
    if run_manager is not None:

        async def emit(data: dict[str, Any]) -> None:
            await ahandle_event(
                run_manager.handlers,
                "on_custom_event",
                "ignore_custom_event",
                STEP_EVENT,
                data,
                run_id=run_manager.run_id,
                tags=run_manager.tags,
                metadata=run_manager.metadata,
            )

        return emit
    manager = get_async_callback_manager_for_config(ensure_config())
    parent = manager.parent_run_id

    async def emit_to_parent(data: dict[str, Any]) -> None:
        if parent is not None:
            await manager.on_custom_event(STEP_EVENT, data, run_id=parent)

    return emit_to_parent
