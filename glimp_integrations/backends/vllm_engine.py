"""One vLLM `AsyncLLM` engine as the vLLM backend's sessions reach it: started on Glimp's
background loop, its tokenizer and token texts, and each request's outputs read one at a time
(`EngineRequest`), aborted when a session lets go of it."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any

from glimp_integrations import _sync
from glimp_integrations.backends.base import ModelSession, knows_think_tags
from glimp_integrations.backends.step_spans import token_texts
from glimp_integrations.errors import GlimpConfigError


class Engine:
    """One AsyncLLM and what the sessions need from it."""

    def __init__(self, name: str, llm: Any) -> None:
        self.name = name
        self.llm = llm
        self.tokenizer = llm.tokenizer
        self.context_window = llm.model_config.max_model_len
        self.vocab_size = llm.model_config.get_vocab_size()
        self.knows_think_tags = knows_think_tags(self.tokenizer)
        self._token_texts: list[str] | None = None
        self._tokens_holding_one = functools.lru_cache(maxsize=256)(self._scan_for)

    def tokens_holding(self, stop: Sequence[str]) -> list[int]:
        """The ids of the single tokens whose text contains one of the `stop` strings.  Stopping
        on them in the engine core, as well as on the strings in vLLM's front end, makes the engine
        finish the request itself, and only such a finish carries the request's speculative-decoding
        counts (a front-end stop aborts the request without them).  The vocabulary is decoded once;
        each stop string's scan is kept for the 256 most recent (a server sees arbitrary ones)."""
        return sorted({index for string in stop for index in self._tokens_holding_one(string)})

    @property
    def texts_by_id(self) -> list[str]:
        """Each token's text (decoded once, at first use)."""
        if self._token_texts is None:
            self._token_texts = token_texts(self.tokenizer)
        return self._token_texts

    def _scan_for(self, string: str) -> tuple[int, ...]:
        return tuple(index for index, text in enumerate(self.texts_by_id) if string in text)

    @classmethod
    async def start(cls, name: str, args: dict[str, Any]) -> Engine:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        try:  # (no local for the engine: vLLM keeps this frame alive, which would keep the engine too)
            return cls(name, AsyncLLM.from_engine_args(AsyncEngineArgs(**args)))
        except (OSError, ValueError) as error:
            raise GlimpConfigError(f"vLLM could not start an engine for `{name}`: {error}") from error

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream(self, ids: list[int], params: Any, session: ModelSession | None = None) -> EngineRequest:
        return EngineRequest(self, ids, params, session)


class EngineRequest:
    """One generate request, advanced on the background loop; aborted if closed early.  The
    tokens it computes are added to `session`'s usage (if any) as its outputs arrive."""

    def __init__(self, engine: Engine, ids: list[int], params: Any, session: ModelSession | None) -> None:
        from vllm.inputs import TokensPrompt

        self.engine = engine
        self.session = session
        self.id = f"glimp-{uuid.uuid4().hex}"
        self.prompt_len = len(ids)
        self.prefill_tokens: int | None = None
        """Prompt tokens the engine computed (not from its prefix cache); known from the first output."""
        self._outputs = engine.llm.generate(TokensPrompt(prompt_token_ids=ids), params, request_id=self.id)
        self.done = False

    async def next(self) -> Any | None:
        """The next output (a delta), or None when the request has finished."""
        if self.done:
            return None
        try:
            output = await _sync.on_background_loop(self._outputs.__anext__())
        except StopAsyncIteration:
            self.done = True
            return None
        if self.prefill_tokens is None:  # the first output says how much of the prompt was cached
            self.prefill_tokens = self.prompt_len - (output.num_cached_tokens or 0)
            if self.session is not None:
                self.session.input_tokens += self.prefill_tokens
        if self.session is not None:
            self.session.output_tokens += len(output.outputs[0].token_ids)
        return output

    async def abort(self) -> None:
        if not self.done:
            self.done = True
            await _sync.on_background_loop(self._close())

    async def _close(self) -> None:
        await self._outputs.aclose()
        await self.engine.llm.abort(self.id)
