"""OpenAI-compatible servers backend: the small and the large model each behind a base URL.

Each server is typically a `vllm serve` deployment (any size: tensor or pipeline parallel across
GPUs and nodes), started with prefix caching on and `--max-logprobs -1` so that a probe whose
top-k bounds straddle the threshold can be settled over the whole vocabulary.  Requests use the
completions endpoint with the prompt rendered from each model's own chat template (a tokenizer
loaded locally: the served model's path or id, or the one given), then the steps so far.

As with the in-process vLLM backend, a probe only measures: a one-token request with
`top_logprobs`, whose token is not kept; the step, by whichever model, is one streamed request
without logprobs (a whole step streamed with logprobs would carry k of them per token, each to be
detokenized by the server and sent as JSON).  On a small model's server started with the entropy
gate (`vllm_gate`) a delegated step is one request too: the step's own request ends at once when
H_init is above the threshold, and it goes on to write the delegated steps after it (`step_spans`).
Requests send the context as token ids where they are known (the server's own tokens of the last
prompt sent as text, and the tokens this model wrote since), so the model goes on from its tokens.

A fleet (replicas behind a router) loses no run to one replica: a request that fails (connection
refused or reset, a timeout, a 5xx, a stream cut mid-step) is sent again with bounded backoff, and
a step cut mid-way goes on from the tokens already received: the new request's prompt is the old
one's token ids followed by the step's tokens so far, so a greedy step reads as one server would
have written it (a sampled one goes on with a fresh sample of the same distribution).  Each
session counts its `retries`; once they run out the server is named in a `ServerError`, and the
router turns that into a `GlimpRunError` carrying the trace written so far.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from glimp_integrations import _sync
from glimp_integrations.backends.base import (
    Backend,
    SessionSpec,
    StepSpanning,
    StepWriter,
    StopScanner,
    TokenContextSession,
    TokenDistribution,
    check_prompt_fits,
    rendered_prompt,
)
from glimp_integrations.backends.gate_arguments import gate_arguments
from glimp_integrations.backends.openai_server import ModelServer, RetryPolicy, ServerError
from glimp_integrations.backends.step_spans import STEP_ENDS, SpanBuffer, StepScanner
from glimp_integrations.config import Role
from glimp_integrations.entropy import EntropyBounds
from glimp_integrations.propagation import with_trace_headers

SESSION_HEADER = "X-Session-Id"
"""Sent with every request to the model servers: the same value for all requests of a conversation,
so that a load balancer in front of a vLLM fleet that hashes on it keeps them on the replica that
holds their prefix cache (see the scale-out section of docs/serving.md)."""


def conversation_key(messages: Sequence[dict[str, Any]]) -> str:
    """A stable key of a conversation: a hash of its opening (system and first user message), the
    part that later turns share."""
    opening = [m for m in messages if m.get("role") == "system"][:1] + [m for m in messages if m.get("role") == "user"][
        :1
    ]
    return hashlib.sha256(json.dumps(opening, sort_keys=True, default=str).encode()).hexdigest()[:32]


class OpenAIServersBackend(Backend):
    """Two OpenAI-compatible servers (`vllm serve`, SGLang, or routers in front of fleets of them), one per role."""

    name = "openai"
    supports_constraints = True

    def __init__(
        self,
        small_url: str,
        large_url: str,
        *,
        small_model: str | None = None,
        large_model: str | None = None,
        small_tokenizer: str | None = None,
        large_tokenizer: str | None = None,
        api_key: str = "EMPTY",
        small_api_key: str | None = None,
        large_api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        retry_backoff: float = 0.25,
        entropy_gate: bool | None = None,
    ) -> None:
        """`*_model`: the served model id (default: the server's first); `*_tokenizer`: where to
        load the chat template from (default: the served model's path, then its id); `*_api_key`:
        each server's key (default: `api_key`).  `max_retries`: how often one step's failed
        requests are sent again, `retry_backoff` seconds apart at first, doubling.  `entropy_gate`:
        None uses the small model's server's gate where it runs one (checked at start, with a
        warning where not), True requires it, False always probes with requests."""
        retry = RetryPolicy(_count_of("max_retries", max_retries), _seconds_of("retry_backoff", retry_backoff))
        keys = {"small": small_api_key or api_key, "large": large_api_key or api_key}
        self.models: dict[Role, ModelServer] = {
            "small": ModelServer(
                "small", small_url, small_model, small_tokenizer, keys["small"], timeout, retry, entropy_gate
            ),
            "large": ModelServer(
                "large", large_url, large_model, large_tokenizer, keys["large"], timeout, retry, entropy_gate
            ),
        }

    async def open_session(self, role: Role, spec: SessionSpec) -> OpenAISession:
        server = self.models[role]

        def render_and_count() -> tuple[str, int]:
            prompt = rendered_prompt(server.tokenizer, spec, role, server.name, server.context_window)
            return prompt, server.count(prompt)

        prompt, prompt_tokens = await _sync.on_the_tokenizer_thread(render_and_count)
        check_prompt_fits(role, server.name, prompt_tokens, server.context_window)
        return OpenAISession(server, role, prompt, prompt_tokens, spec)

    async def health(self) -> dict[Role, str | None]:
        return {role: await server.health() for role, server in self.models.items()}

    def running_requests(self) -> dict[Role, int]:
        return {role: server.open_streams for role, server in self.models.items()}

    def close(self) -> None:
        for server in self.models.values():
            if server._client is not None:
                _sync.run_sync(server._client.close())


def _count_of(parameter: str, value: Any) -> int:
    from glimp_integrations.errors import invalid

    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(parameter, value, "must be a whole number >= 0", f"Pass e.g. {parameter}=3 (0: never retry).")
    return value


def _seconds_of(parameter: str, value: Any) -> float:
    from glimp_integrations.errors import invalid

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 60:
        raise invalid(parameter, value, "must be a number of seconds from 0 to 60", f"Pass e.g. {parameter}=0.25.")
    return float(value)


class OpenAISession(TokenContextSession):
    def __init__(self, server: ModelServer, role: Role, prompt: str, prompt_tokens: int, spec: SessionSpec) -> None:
        seed = spec.seed
        self._server = server
        self.role = role
        self.model_name = server.name
        self.prompt_tokens = prompt_tokens
        self.context_window = server.context_window
        self.max_probe_top_k = server.max_logprobs
        self.retries = 0
        self._sampling = spec.sampling
        self._constraint = spec.constraint
        self._seeds = itertools.count(seed) if seed is not None else None
        self._conversation = conversation_key(spec.messages)
        self._context = prompt
        self._context_tokens = prompt_tokens
        self._pending = ""
        self._pending_ids: list[int] = []
        """Token ids of the pending step, where the server returns them (vLLM's `return_token_ids`)."""
        self._pending_tokens = 0
        self.tokenizer = server.tokenizer
        self._step_retries = 0
        """Requests of the coming step sent again so far (bounded by the server's retry policy)."""
        self._probed_tokens = 0
        """Context tokens the probes of the coming step prefilled (the step's `prefill_tokens` include them)."""
        self._stream: Any = None
        """The streamed request writing the step (and, when it spans steps, the steps after it)."""
        self._context_ids: list[int] | None = None
        """The context as token ids, where known exactly: the server's tokens of the last prompt
        sent as text, then the tokens this model wrote after it.  Requests send these rather than
        the text, so the model goes on from its own tokens (as in one request, and as the
        in-process backends do) rather than from the text tokenized again; text from the other
        model makes them unknown until the next request's prompt ids."""
        self._read: SpanBuffer | None = None
        """What `_stream` sent that no step has taken yet; `finish` holds (finish_reason, stop_reason)."""

    @property
    def context_tokens(self) -> int:
        return self._context_tokens

    @property
    def _spanning(self) -> bool:
        """True while `_stream` is a gated request that spans steps."""
        return self._read is not None and self._read.scanner is not None

    def _prompt(self) -> str | list[int]:
        """The context and the pending step: token ids where all are known, else text."""
        if self._context_ids is not None and len(self._pending_ids) == self._pending_tokens:
            return self._context_ids + self._pending_ids
        return self._context + self._pending

    def _request(
        self, max_tokens: int, stop: Sequence[str], logprobs: int | None, stream: bool = True, constrained: bool = False
    ) -> dict:
        request: dict[str, Any] = {
            "prompt": self._prompt(),
            "max_tokens": max_tokens,
            "temperature": self._sampling.temperature,
            "top_p": self._sampling.top_p,
            "stream": stream,
            "extra_body": {"include_stop_str_in_output": True, "return_tokens_as_token_ids": True},
            "extra_headers": with_trace_headers({SESSION_HEADER: self._conversation}),
        }
        if stop:
            request["stop"] = list(stop)
        if constrained and self._constraint:  # vLLM's field; its `guidance` backend reads the Lark grammar
            request["extra_body"]["structured_outputs"] = {"grammar": self._constraint.grammar}
        if logprobs is not None:
            request["logprobs"] = logprobs
        if self._seeds is not None:
            request["seed"] = next(self._seeds)
        if stream:
            request["stream_options"] = {"include_usage": True}
            request["extra_body"]["return_token_ids"] = True  # to go on from the tokens received, after a failure
        return request

    async def _send(self, request: dict[str, Any]) -> Any:
        """A request, sent again (unchanged, so a seeded one samples the same) while it fails and
        the retry policy allows."""
        while True:
            try:
                return await self._server.create(**request)
            except ServerError as error:
                await self._retry_after(error)

    async def _retry_after(self, error: ServerError) -> None:
        await self._server.retry.pause(error, self._step_retries)
        self._step_retries += 1
        self.retries += 1

    def _count(self, usage: Any) -> None:
        """Add a server's usage report to this model's totals (prefix-cache hits excluded)."""
        self.input_tokens += _uncached(usage)
        self.output_tokens += usage.completion_tokens

    async def probe(self, top_k: int | None) -> TokenDistribution:
        response = await self._send(self._request(1, (), top_k or -1, stream=False))
        self._count(response.usage)
        self._probed_tokens += _uncached(response.usage)
        logprobs = response.choices[0].logprobs
        if logprobs is None or not logprobs.top_logprobs:
            return TokenDistribution((0.0,), vocab_size=self._server.vocab_size)  # ended at once
        return _distribution(logprobs.top_logprobs[0], top_k, self._server.vocab_size)

    async def gated_probe(
        self, threshold: float, max_tokens: int, stop: Sequence[str], span: StepSpanning | None = None
    ) -> TokenDistribution | None:
        """The step's own request, gated: a first token other than the end of text proves H_init <=
        threshold (the request goes on as the small model's step).  The end of text first is the
        gate's intervention or, rarely, the model's own choice: it cannot tell which, so it says
        None and the router probes, keeping every decision exact.  With `span`, the request goes on
        past the step's end, and the next call reads the next step's first token from it."""
        if not self._server.gate:
            return None
        if self._spanning:
            return await self._gate_verdict(threshold)
        eos = self._server.tokenizer.eos_token_id
        if span is None:
            request = self._request(max_tokens, stop, None)
            request["extra_body"]["vllm_xargs"] = gate_arguments(threshold, eos)
        else:
            request = self._request(span.max_tokens, [s for s in stop if s != span.separator], None)
            request["extra_body"]["vllm_xargs"] = gate_arguments(threshold, eos, span.separator, span.step_tokens)
        while True:
            try:
                self._stream = await self._server.create(**request)
                self._read = SpanBuffer(
                    StepScanner(span.separator, self._server.texts_by_id, span.step_tokens) if span else None
                )
                return await self._gate_verdict(threshold)
            except ServerError as error:
                await self._close_stream()
                self._read = None
                await self._retry_after(error)

    async def _gate_verdict(self, threshold: float) -> TokenDistribution | None:
        """What the gated request's next token proves of H_init (None: ended there, so ambiguous)."""
        read = self._read
        assert read is not None
        while not read.ids and read.finish is None:
            await self._read_chunk()
        if read.ids[:1] in ([], [self._server.tokenizer.eos_token_id]):
            while self._stream is not None:  # to the usage report that follows the end
                chunk = await self._read_chunk()
                if chunk is not None and chunk.usage is not None:
                    self._probed_tokens += _uncached(chunk.usage)
            await self.discard()
            return None
        return TokenDistribution(
            (), vocab_size=self._server.vocab_size, proven=EntropyBounds(0.0, threshold, exact=True)
        )

    async def _read_chunk(self) -> Any | None:
        """Read the stream's next chunk into `_read`, the usage into this model's totals; the chunk
        (None once the stream has ended).  A stream that ends before its finish is a `ServerError`."""
        read = self._read
        assert read is not None
        try:
            chunk = await _sync.on_background_loop(self._stream.__anext__())
        except StopAsyncIteration:
            self._stream = None
            if read.finish is None:
                raise ServerError(
                    self._server.unreachable(ConnectionError("the stream ended before the step did"))
                ) from None
            return None
        if chunk.choices:
            choice = chunk.choices[0]
            extra = choice.model_extra or {}
            if extra.get("prompt_token_ids") and self._context_ids is None:
                self._context_ids = list(extra["prompt_token_ids"])
            ids = _token_ids(choice)
            read.add(ids, choice.text or "")
            if not ids:  # a server that sends no token ids: estimated, corrected by the usage report
                self._pending_tokens += max(1, len(choice.logprobs.tokens)) if choice.logprobs else 1
            if choice.finish_reason:
                read.finish = (choice.finish_reason, extra.get("stop_reason"))
        if chunk.usage is not None:
            self._count(chunk.usage)
        return chunk

    def write(
        self, max_tokens: int, stop: Sequence[str], measure: bool = False, constrained: bool = False
    ) -> StepWriter:
        return _OpenAIWriter(self, max_tokens, stop, measure, constrained)

    async def candidate_logprobs(self, suffix: str, candidates: Sequence[str]) -> dict[str, float]:
        request = self._request(1, (), self._server.measure_top_k, stream=False)
        request["prompt"] = self._context + suffix
        request["extra_body"] = {}  # token strings, not ids, to match the candidates
        response = await self._send(request)
        self._count(response.usage)
        seen = {token.strip(): lp for token, lp in response.choices[0].logprobs.top_logprobs[0].items()}
        return {c: seen[c] for c in candidates if c in seen}

    def commit(self) -> None:
        self._context += self._pending
        self.last_step_ids = self._pending_ids if len(self._pending_ids) == self._pending_tokens else None
        exact = self._context_ids is not None and self.last_step_ids is not None
        self._context_ids = self._context_ids + self._pending_ids if exact else None  # type: ignore[operator]
        self._context_tokens += self._pending_tokens
        if self._spanning and self._stream is not None:  # the request goes on into the next step
            self._pending, self._pending_ids, self._pending_tokens, self._probed_tokens = "", [], 0, 0
            self._step_retries = 0
            return
        self._forget_step()

    def _forget_step(self) -> None:
        self._pending, self._pending_ids, self._pending_tokens, self._probed_tokens = "", [], 0, 0
        self._stream, self._read, self._step_retries = None, None, 0

    async def _close_stream(self) -> None:
        if self._stream is not None:
            await _sync.on_background_loop(self._stream.close())
            self._stream = None

    async def discard(self) -> None:
        """Drop the pending step; close its stream if open (the server aborts the request).  An
        aborted stream reports no usage: count its whole context and the tokens it sent."""
        if self._stream is not None:
            await self._close_stream()
            self.input_tokens += self._context_tokens
            self.output_tokens += self._pending_tokens
        self._forget_step()

    async def append_text(self, text: str, ids: list[int] | None = None) -> None:
        """`ids`: the text's tokens in this model's vocabulary where known (the context's ids then
        stay known; else the next request sends text, and its prompt ids say them again)."""
        await self.discard()
        self._context += text
        known = self._context_ids is not None and ids is not None
        self._context_ids = self._context_ids + ids if known else None  # type: ignore[operator]
        self._context_tokens += len(ids) if ids is not None else self._server.count(text)

    async def aclose(self) -> None:
        await self.discard()


def _token_ids(choice: Any) -> list[int]:
    """Token ids a streamed choice carries (vLLM's `return_token_ids`), else none."""
    return list((choice.model_extra or {}).get("token_ids") or ())


def _distribution(top_logprobs: dict[str, float], top_k: int | None, vocab_size: int) -> TokenDistribution:
    """The k largest logprobs of a position (the server may add the sampled token, which is never
    larger than the k-th), or all of them when the whole vocabulary was asked for."""
    values = sorted(top_logprobs.values(), reverse=True)
    return TokenDistribution(tuple(values if top_k is None else values[:top_k]), vocab_size=vocab_size)


class _OpenAIWriter(StepWriter):
    """A step streamed from the server.  A failed request or a stream cut mid-step is sent again
    from where it stopped: the prompt's token ids and the step's tokens so far (the server's
    `return_token_ids`; text where a server gives no ids), with the tokens still allowed."""

    def __init__(
        self, session: OpenAISession, max_tokens: int, stop: Sequence[str], measure: bool, constrained: bool
    ) -> None:
        super().__init__(max_tokens, stop, measure)
        self._session = session
        self._constrained = constrained

    async def __aiter__(self) -> AsyncIterator[str]:
        session = self._session
        across: StopScanner | None = None  # after a resumption the server cannot see a stop string across the cut
        self.prefill_tokens = session._probed_tokens
        while True:
            try:
                async for text in self._stream_once(across):
                    yield text
                break
            except ServerError as error:
                await session._close_stream()
                session._read = None  # a resumed step is a request of its own
                if self._constrained and session._pending_tokens:
                    raise  # a grammar cannot go on from the middle of its text in a new request
                await session._retry_after(error)
                across = StopScanner(self.stop)
        self.tokens = session._pending_tokens

    def _resumed_request(self) -> dict[str, Any]:
        """The request that writes the step, or goes on with it after a failure (from the step's
        tokens so far, where the server sent their ids)."""
        session = self._session
        return session._request(
            self.max_tokens - session._pending_tokens,
            self.stop,
            session._server.measure_top_k if self.measure else None,
            constrained=self._constrained,
        )

    async def _stream_once(self, across: StopScanner | None) -> AsyncIterator[str]:
        """One request's part of the step; a `ServerError` when it fails before its end."""
        session = self._session
        written_before = session._pending_tokens
        if session._read is None:  # no gated request has started the step
            session._stream = await session._server.create(**self._resumed_request())
            session._read = SpanBuffer(None)
        read = session._read
        while True:
            if read.empty and read.finish is None:
                chunk = await session._read_chunk()
                if chunk is not None:
                    self._measure_chunk(chunk, written_before)
            ids, delta, ended = read.take(session._pending, self.max_tokens - session._pending_tokens)
            session._pending_ids += ids
            session._pending_tokens += len(ids)
            if across is not None and across.found(session._pending + delta):
                delta = _through_stop(session._pending, delta, self.stop)
                read.finish, ended = ("stop", "a stop string across the resumption"), None
                await session._close_stream()
                read.ids, read.text = [], ""
            if delta:
                session._pending += delta
                yield delta
            if not read.ends_step(ended):
                continue
            if read.cut_short(ended):
                await session._close_stream()
                session._read = None
            elif read.empty and read.finish is not None:  # the request has ended: read its usage report
                while session._stream is not None:
                    chunk = await session._read_chunk()
                    if chunk is not None:
                        self._measure_chunk(chunk, written_before)
            # the step ends here; a request that spans steps goes on unless it ended or was cut short
            self.end = _end(*read.finish) if ended is None else STEP_ENDS[ended]  # type: ignore[misc,assignment]
            return

    def _measure_chunk(self, chunk: Any, written_before: int) -> None:
        """What a chunk says of the step besides its tokens: per-token entropies and logprobs when
        measuring; in the usage report, the exact count of tokens (a request of one step) and
        prefill, and the drafting counts of a `vllm serve` started with
        --per-request-spec-decode-metrics."""
        if chunk.choices:
            self._measure(chunk.choices[0].logprobs)
        if chunk.usage is None:
            return
        self.prefill_tokens += _uncached(chunk.usage)
        if not self._session._spanning:
            self._session._pending_tokens = written_before + chunk.usage.completion_tokens
        drafting = ((chunk.model_extra or {}).get("metrics") or {}).get("speculative_decoding")
        if drafting:
            self.drafted_tokens = (self.drafted_tokens or 0) + drafting["num_draft_tokens"]
            self.accepted_tokens = (self.accepted_tokens or 0) + drafting["num_accepted_draft_tokens"]

    def _measure(self, logprobs: Any) -> None:
        """Record each token's entropy (midpoint of its bounds) and logprob, when measuring."""
        if not (self.measure and logprobs):
            return
        server = self._session._server
        for top, logprob in zip(logprobs.top_logprobs, logprobs.token_logprobs):
            bounds = _distribution(top, server.measure_top_k, server.vocab_size).bounds()
            self.token_entropies.append((bounds.lower + bounds.upper) / 2)
            self.token_logprobs.append(logprob)


def _through_stop(pending: str, text: str, stop: Sequence[str]) -> str:
    """The part of `text` (following `pending`) up to the end of the first stop string in both."""
    joined = pending + text
    end = min(joined.find(s) + len(s) for s in stop if s and s in joined)
    return joined[len(pending) : end]


def _end(finish: str | None, stop_reason: Any) -> str:
    return "max_tokens" if finish == "length" else "stop_string" if isinstance(stop_reason, str) else "end_of_text"


def _uncached(usage: Any) -> int:
    """Prompt tokens a request's usage says the server computed (prefix-cache hits excluded)."""
    details = usage.prompt_tokens_details
    return usage.prompt_tokens - ((details.cached_tokens or 0) if details else 0)
