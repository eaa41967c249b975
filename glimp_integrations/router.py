"""`GlimpRouter`, the engine's facade: a pair of models loaded once, and runs of the routing loop
(`routing_loop`, the paper's algorithm) with the router's settings, a call's overrides, its tools
or answer format, and its reasoning markers; as a trace, as events, sync or async."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from typing import Any

from glimp_integrations import _sync
from glimp_integrations.backends.base import Backend
from glimp_integrations.backends.loading import check_backend_settings, load_backend
from glimp_integrations.config import (
    CONFIG_FIELDS,
    RouterConfig,
    check_setting_names,
)
from glimp_integrations.constraints import AnswerConstraint, ToolChoice, answer_constraint
from glimp_integrations.errors import (
    invalid,
)
from glimp_integrations.messages import Prompt, normalize_messages
from glimp_integrations.policies import (
    RoutingPolicy,
    make_policy,
)
from glimp_integrations.routing_loop import RoutedRun, SmallModelBreaker, resolve_mode
from glimp_integrations.tool_formats import (
    TOOL_FAMILIES,
    ToolCallReader,
    check_tool_call_parser,
    detect_tool_call_parser,
    reasoning_markers,
)
from glimp_integrations.tools import add_system_text
from glimp_integrations.trace import (
    RouterEvent,
    RunFinished,
    RunTrace,
)


class GlimpRouter:
    """Routes each step of a response between a small and a large model.

    With no model arguments both roles run the embedded SmolLM2-135M-Instruct on the CPU (it
    shows the mechanics, not the quality), in `think` mode with its own calibrated threshold
    (`embedded.EMBEDDED_DEFAULTS`; any setting given explicitly wins).  Name real models (HF ids or local folders) with
    `small=` and `large=`; with `backend="openai"` they are the base URLs of two
    OpenAI-compatible servers.  `backend` is `transformers`, `vllm` (both models in this
    process) or `openai`; `speculative=True` drafts the large model's tokens with the small
    model (vLLM; a dict of vLLM's `speculative_config` picks another drafting method, see
    `backends.speculative.speculative_config`); `backend_options` go to the backend's constructor.  Other keyword
    arguments are `RouterConfig` fields (`threshold`, `policy`, `temperature`, `seed`, ...).

    >>> from glimp_integrations import GlimpRouter
    >>> router = GlimpRouter(seed=0)                      # doctest: +SKIP
    >>> trace = router.run("What is 12 + 30?")            # doctest: +SKIP
    >>> trace.answer, trace.intervention_rate             # doctest: +SKIP
    """

    def __init__(
        self,
        small: str | None = None,
        large: str | None = None,
        *,
        backend: str | Backend = "transformers",
        policy: str | RoutingPolicy = "glimpse",
        config: RouterConfig | None = None,
        device: str = "auto",
        speculative: bool | Mapping[str, Any] = False,
        backend_options: Mapping[str, Any] | None = None,
        **config_fields: Any,
    ) -> None:
        base = config or RouterConfig()
        self._custom_policy = policy if isinstance(policy, RoutingPolicy) else None
        self.small_model_breaker = SmallModelBreaker()
        """Whether the small model's server failed in a recent run (`small_model_failure="large"`)."""
        config_fields.setdefault("policy", "glimpse" if self._custom_policy else policy)
        check_setting_names("GlimpRouter", config_fields, CONFIG_FIELDS)
        if small is None and large is None and config is None and not isinstance(backend, Backend):
            from glimp_integrations.embedded import EMBEDDED_DEFAULTS

            config_fields = {**EMBEDDED_DEFAULTS, **config_fields}
        self.config = base.with_overrides(**config_fields)
        check_backend_settings(backend, speculative, backend_options)
        self.backend = (
            backend
            if isinstance(backend, Backend)
            else load_backend(backend, small, large, device=device, speculative=speculative, options=backend_options)
        )
        self._large_added_tokens: tuple[str, ...] | None = None
        self._markers: dict[tuple[str | None, bool], tuple[str, str]] = {}
        """Reasoning markers by (reasoning parser, whether the caller chose it), read from vLLM once."""

    # --- public API -----------------------------------------------------------------------

    def run(self, prompt: Prompt, **overrides: Any) -> RunTrace:
        """Answer `prompt`; returns the trace.  Keyword overrides change `RouterConfig` fields
        for this run only."""
        return _sync.run_sync(self.arun(prompt, **overrides))

    async def arun(self, prompt: Prompt, **overrides: Any) -> RunTrace:
        async for event in self.astream(prompt, **overrides):
            if isinstance(event, RunFinished):
                return event.trace
        raise AssertionError("the run ended without a RunFinished event")

    def stream(self, prompt: Prompt, **overrides: Any) -> Generator[RouterEvent, None, None]:
        """Events as they happen: StepStarted, TokenDelta, StepFinished, ..., RunFinished."""
        return _sync.iterate_sync(self.astream(prompt, **overrides))

    async def astream(
        self,
        prompt: Prompt,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: ToolChoice = None,
        parallel_tool_calls: bool | None = None,
        response_format: Mapping[str, Any] | AnswerConstraint | None = None,
        max_tokens: int | None = None,
        **overrides: Any,
    ) -> AsyncGenerator[RouterEvent, None]:
        """Async form of `stream`.  Closing the iterator early cancels the run.

        `tools` (OpenAI function schemas) are rendered into each model's chat prompt, and the
        answer is constrained to free text or well-formed calls under `tool_choice` (`auto`,
        `required`/`any`, `none` or a tool name; several calls unless `parallel_tool_calls` is
        False); `GlimpRouter.tool_call_reader` reads them back.  `response_format`
        (OpenAI's json_schema / json_object forms, vLLM's regex / choice, or an
        `AnswerConstraint`) constrains the answer instead.  A constrained answer is always written
        by the large model: after the routed reasoning in `think` mode, alone in `plain` mode.
        `max_tokens` caps the answer as chat APIs do: the final answer in `think` mode or when
        constrained, else the whole (routed) response."""
        messages = normalize_messages(prompt)
        tool_call_parser = self._tool_call_parser(overrides.get("tool_call_parser", self.config.tool_call_parser))
        constraint = answer_constraint(
            tools, tool_choice, parallel_tool_calls, response_format, tool_call_parser, self._added_tokens()
        )
        if constraint is not None and not self.backend.supports_constraints:
            raise invalid(
                "tools/response_format",
                constraint.kind,
                f"needs a backend that constrains decoding; {type(self.backend).__name__} does not",
                "Use the transformers, vllm or openai backend, or drop the constraint.",
            )
        if constraint is not None and (instructions := constraint.instructions()):
            messages = add_system_text(messages, instructions)
        if max_tokens is not None:
            mode = resolve_mode(overrides.get("reasoning_mode", self.config.reasoning_mode), self.backend)
            answers_apart = mode == "think" or constraint is not None
            overrides["answer_budget" if answers_apart else "reasoning_budget"] = max_tokens
        config = self._config_for(overrides)
        markers = self._reasoning_markers(config.reasoning_parser, tool_call_parser)
        custom = self._custom_policy if "policy" not in overrides else None
        policy = custom or make_policy(config)
        events = RoutedRun(
            self.backend, config, policy, messages, constraint, max_tokens, markers, self.small_model_breaker
        ).events()
        try:
            async for event in events:
                yield event
        finally:  # close the run now (its sessions, their requests), not whenever it is collected
            await events.aclose()

    def tool_call_reader(self, tools: Sequence[dict[str, Any]], tool_call_parser: str | None = None) -> ToolCallReader:
        """Reads the calls to `tools` out of an answer, in the large model's format (the
        `tool_call_parser` given, else this router's; see `tool_formats.ToolCallReader`)."""
        parser = self._tool_call_parser(tool_call_parser or self.config.tool_call_parser)
        return ToolCallReader(parser, tools, self.backend.tokenizer("large"))

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> GlimpRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tool_call_parser(self, setting: str | None) -> str:
        """The large model's tool-call format: the setting, else read from its chat template."""
        check_tool_call_parser(setting)
        return setting or detect_tool_call_parser(getattr(self.backend.tokenizer("large"), "chat_template", None))

    def _added_tokens(self) -> tuple[str, ...]:
        """The large model's added tokens (a tool-call format's fixed strings match them as tokens)."""
        if self._large_added_tokens is None:
            tokenizer = self.backend.tokenizer("large")
            self._large_added_tokens = tuple(tokenizer.get_added_vocab()) if tokenizer is not None else ()
        return self._large_added_tokens

    def _reasoning_markers(self, reasoning_parser: str | None, tool_call_parser: str) -> tuple[str, str]:
        """The reasoning's markers: from the named reasoning parser, else from the family's own."""
        key = (reasoning_parser or TOOL_FAMILIES[tool_call_parser].reasoning_parser, reasoning_parser is not None)
        if key not in self._markers:
            self._markers[key] = reasoning_markers(key[0], self.backend.tokenizer("large"), chosen=key[1])
        return self._markers[key]

    def _config_for(self, overrides: dict[str, Any]) -> RouterConfig:
        if not overrides:
            return self.config
        check_setting_names("run", overrides, CONFIG_FIELDS)
        return self.config.with_overrides(**overrides)
