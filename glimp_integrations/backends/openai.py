"""OpenAI-compatible servers backend: the small and the large model each behind a base URL.

Each server is typically a `vllm serve` deployment (any size: tensor or pipeline parallel across
GPUs and nodes), started with prefix caching on and `--max-logprobs -1` so that a probe whose
top-k bounds straddle the threshold can be settled over the whole vocabulary.  Requests use the
completions endpoint with the prompt rendered from each model's own chat template (a tokenizer
loaded locally: the served model's path or id, or the one given), then the steps so far.

As with the in-process vLLM backend, a probe only measures: a one-token request with
`top_logprobs`, whose token is not kept; the step, by whichever model, is one streamed request
without logprobs (a whole step streamed with logprobs would carry k of them per token, each to be
detokenized by the server and sent as JSON).  Connection errors, timeouts and
5xx answers are retried with backoff by the `openai` client; a server that stays unreachable
raises `ServerError` naming it, and the router turns that into a `GlimpRunError` carrying the
trace written so far.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from glimp_integrations import _sync
from glimp_integrations.backends.base import (
    MEASURE_TOP_K,
    Backend,
    ModelSession,
    SessionSpec,
    StepWriter,
    TokenDistribution,
    check_prompt_fits,
    health_problem,
    knows_think_tags,
    render_chat_prompt,
)
from glimp_integrations.config import Role
from glimp_integrations.errors import GlimpConfigError, require_module

logger = logging.getLogger(__name__)


SESSION_HEADER = "X-Session-Id"
"""Sent with every request to the model servers: the same value for all requests of a conversation,
so that a load balancer in front of a vLLM fleet that hashes on it keeps them on the replica that
holds their prefix cache (see the README's scale-out section)."""


def conversation_key(messages: Sequence[dict[str, Any]]) -> str:
    """A stable key of a conversation: a hash of its opening (system and first user message), the
    part that later turns share."""
    opening = [m for m in messages if m.get("role") == "system"][:1] + [
        m for m in messages if m.get("role") == "user"][:1]
    return hashlib.sha256(json.dumps(opening, sort_keys=True, default=str).encode()).hexdigest()[:32]


class ServerError(RuntimeError):
    """A model server failed or stayed unreachable after the client's retries."""


class _Server:
    """One OpenAI-compatible server and what sessions need from it."""

    def __init__(self, role: Role, url: str, model: str | None, tokenizer: str | None, api_key: str,
                 timeout: float, max_retries: int) -> None:
        openai = require_module("openai", "openai", "The OpenAI-compatible servers backend")
        transformers = require_module("transformers", "openai", "Rendering chat templates for the servers backend")
        require_module("jinja2", "openai", "Rendering chat templates for the servers backend")  # transformers' optional
        self.role, self.url = role, url.rstrip("/")
        self._client_args = {"base_url": self.url, "api_key": api_key, "timeout": timeout, "max_retries": max_retries}
        client = openai.OpenAI(**self._client_args)
        try:
            card = next(m for m in client.models.list().data if model is None or m.id == model)
        except StopIteration as error:
            raise GlimpConfigError(f"The {role} model's server at {self.url} does not serve `{model}`. "
                                   f"Pass `{role}_model` as one of the ids at {self.url}/models.") from error
        except openai.APIError as error:
            raise GlimpConfigError(self.unreachable(error)) from error
        self.name = card.id
        extra = card.model_extra or {}
        source = tokenizer or extra.get("root") or card.id
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source)
            config_vocab = getattr(transformers.AutoConfig.from_pretrained(source), "vocab_size", 0) or 0
        except (OSError, ValueError) as error:
            raise GlimpConfigError(
                f"Could not load the tokenizer `{source}` of the {role} model served at {self.url} ({error}). "
                f"Pass `{role}_tokenizer` (a local folder or HF id of the same model).") from error
        self.vocab_size = max(len(self.tokenizer), config_vocab)
        """Logits per position (the model's vocabulary may be padded past the tokenizer's)."""
        self.context_window = int(extra.get("max_model_len") or getattr(self.tokenizer, "model_max_length", 4096))
        self.knows_think_tags = knows_think_tags(self.tokenizer)
        self.max_logprobs = _logprobs_cap(openai, client, self.name, self.vocab_size)
        """The server's cap on logprobs per token (vLLM's `--max-logprobs`); None: no cap below the vocabulary."""
        self.measure_top_k = min(MEASURE_TOP_K, self.max_logprobs or MEASURE_TOP_K)
        if self.max_logprobs is not None and role == "small":
            logger.warning(
                "The small model's server at %s caps logprobs at %d (--max-logprobs): a probe whose top-%d entropy "
                "bounds straddle the threshold is decided from their midpoint (basis 'capped'). Start it with "
                "--max-logprobs -1 for decisions equal to the exact entropy's.", self.url, self.max_logprobs,
                self.max_logprobs)
        self._client: Any = None
        self.open_streams = 0
        """Streamed requests of this process running on the server now."""

    def unreachable(self, error: Exception) -> str:
        return (f"The {self.role} model's server at {self.url} failed or is unreachable "
                f"({type(error).__name__}: {error}). Check that the server is running and reachable from "
                f"here (curl {self.url}/models), that the URL ends in /v1, and its logs.")

    @property
    def client(self) -> Any:
        """The async client, created on the background loop that all requests run on."""
        if self._client is None:
            openai = require_module("openai", "openai", "The OpenAI-compatible servers backend")
            self._client = openai.AsyncOpenAI(**self._client_args)
        return self._client

    async def health(self) -> str | None:
        """None when the server answers its model list at once (no retries), else the problem."""
        client = self.client.with_options(max_retries=0, timeout=5.0)
        problem = await health_problem(_sync.on_background_loop(client.models.list()))
        return None if problem is None else f"the {self.role} model's server at {self.url}: {problem}"

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def create(self, **request: Any) -> Any:
        """`completions.create` on the background loop; errors after retries name this server."""
        openai = require_module("openai", "openai", "The OpenAI-compatible servers backend")
        try:
            response = await _sync.on_background_loop(self.client.completions.create(model=self.name, **request))
        except openai.APIError as error:
            raise ServerError(self.unreachable(error)) from error
        return _CountedStream(self, response) if request.get("stream") else response


class _CountedStream:
    """A streamed response, counted in its server's `open_streams` until it ends or is closed."""

    def __init__(self, server: _Server, stream: Any) -> None:
        self._server, self._stream, self._open = server, stream, True
        server.open_streams += 1

    def __aiter__(self) -> _CountedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            self._forget()
            raise
        except Exception as error:  # the server went away mid-stream: say which one
            self._forget()
            raise ServerError(self._server.unreachable(error)) from error
        except BaseException:  # cancelled
            self._forget()
            raise

    async def close(self) -> None:
        self._forget()
        await self._stream.close()

    def _forget(self) -> None:
        if self._open:
            self._open = False
            self._server.open_streams -= 1


_CAP_MESSAGE = re.compile(r"max allowed: (\d+)")


def _logprobs_cap(openai: Any, client: Any, model: str, vocab_size: int) -> int | None:
    """The server's cap on logprobs per token, or None where it allows the whole vocabulary or
    does not say.  Asking for one more than the vocabulary makes vLLM answer with its cap."""
    try:
        client.with_options(max_retries=0).completions.create(model=model, prompt="a", max_tokens=1,
                                                              logprobs=vocab_size + 1)
    except openai.BadRequestError as error:
        found = _CAP_MESSAGE.search(str(error))
        if found and int(found.group(1)) < vocab_size:
            return int(found.group(1))
    except openai.APIError:
        pass  # the server will name its own trouble on the first real request
    return None


class OpenAIServersBackend(Backend):
    """Two OpenAI-compatible servers (`vllm serve`, SGLang), one per role."""

    name = "openai"
    supports_constraints = True

    def __init__(self, small_url: str, large_url: str, *, small_model: str | None = None,
                 large_model: str | None = None, small_tokenizer: str | None = None,
                 large_tokenizer: str | None = None, api_key: str = "EMPTY", timeout: float = 120.0,
                 max_retries: int = 3) -> None:
        """`*_model`: the served model id (default: the server's first); `*_tokenizer`: where to
        load the chat template from (default: the served model's path, then its id)."""
        self.models: dict[Role, _Server] = {
            "small": _Server("small", small_url, small_model, small_tokenizer, api_key, timeout, max_retries),
            "large": _Server("large", large_url, large_model, large_tokenizer, api_key, timeout, max_retries),
        }


    async def open_session(self, role: Role, spec: SessionSpec) -> OpenAISession:
        server = self.models[role]
        prompt = render_chat_prompt(server.tokenizer, spec)
        prompt_tokens = server.count(prompt)
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


class OpenAISession(ModelSession):
    def __init__(self, server: _Server, role: Role, prompt: str, prompt_tokens: int, spec: SessionSpec) -> None:
        seed = spec.seed
        self._server = server
        self.role = role
        self.model_name = server.name
        self.prompt_tokens = prompt_tokens
        self.context_window = server.context_window
        self.max_probe_top_k = server.max_logprobs
        self._sampling = spec.sampling
        self._constraint = spec.constraint
        self._seeds = itertools.count(seed) if seed is not None else None
        self._conversation = conversation_key(spec.messages)
        self._context = prompt
        self._context_tokens = prompt_tokens
        self._pending = ""
        self._pending_tokens = 0
        self._probed_tokens = 0
        """Context tokens the probes of the coming step prefilled (the step's `prefill_tokens` include them)."""
        self._stream: Any = None
        """The streamed request writing the step."""

    @property
    def context_tokens(self) -> int:
        return self._context_tokens

    def _request(self, max_tokens: int, stop: Sequence[str], logprobs: int | None, stream: bool = True,
                 constrained: bool = False) -> dict:
        request: dict[str, Any] = {
            "prompt": self._context + self._pending, "max_tokens": max_tokens, "temperature": self._sampling.temperature,
            "top_p": self._sampling.top_p, "stream": stream,
            "extra_body": {"include_stop_str_in_output": True, "return_tokens_as_token_ids": True},
            "extra_headers": {SESSION_HEADER: self._conversation},
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
        return request

    async def _next(self) -> Any | None:
        try:
            return await _sync.on_background_loop(self._stream.__anext__())
        except StopAsyncIteration:
            return None

    def _count(self, usage: Any) -> None:
        """Add a server's usage report to this model's totals (prefix-cache hits excluded)."""
        self.input_tokens += _uncached(usage)
        self.output_tokens += usage.completion_tokens

    async def probe(self, top_k: int | None) -> TokenDistribution:
        response = await self._server.create(**self._request(1, (), top_k or -1, stream=False))
        self._count(response.usage)
        self._probed_tokens += _uncached(response.usage)
        logprobs = response.choices[0].logprobs
        if logprobs is None or not logprobs.top_logprobs:
            return TokenDistribution((0.0,), vocab_size=self._server.vocab_size)  # ended at once
        return _distribution(logprobs.top_logprobs[0], top_k, self._server.vocab_size)

    def write(self, max_tokens: int, stop: Sequence[str], measure: bool = False,
              constrained: bool = False) -> StepWriter:
        return _OpenAIWriter(self, max_tokens, stop, measure, constrained)

    async def candidate_logprobs(self, suffix: str, candidates: Sequence[str]) -> dict[str, float]:
        request = self._request(1, (), self._server.measure_top_k, stream=False)
        request["prompt"] = self._context + suffix
        request["extra_body"] = {}  # token strings, not ids, to match the candidates
        response = await self._server.create(**request)
        self._count(response.usage)
        seen = {token.strip(): lp for token, lp in response.choices[0].logprobs.top_logprobs[0].items()}
        return {c: seen[c] for c in candidates if c in seen}

    def commit(self) -> None:
        self._context += self._pending
        self._context_tokens += self._pending_tokens
        self._pending, self._pending_tokens, self._probed_tokens = "", 0, 0
        self._stream = None

    async def discard(self) -> None:
        """Drop the pending step; close its stream if open (the server aborts the request).  An
        aborted stream reports no usage: count its whole context and the tokens it sent."""
        if self._stream is not None:
            await _sync.on_background_loop(self._stream.close())
            self.input_tokens += self._context_tokens
            self.output_tokens += self._pending_tokens
            self._stream = None
        self._pending, self._pending_tokens, self._probed_tokens = "", 0, 0

    async def append_text(self, text: str) -> None:
        await self.discard()
        self._context += text
        self._context_tokens += self._server.count(text)

    async def aclose(self) -> None:
        await self.discard()


def _distribution(top_logprobs: dict[str, float], top_k: int | None, vocab_size: int) -> TokenDistribution:
    """The k largest logprobs of a position (the server may add the sampled token, which is never
    larger than the k-th), or all of them when the whole vocabulary was asked for."""
    values = sorted(top_logprobs.values(), reverse=True)
    return TokenDistribution(tuple(values if top_k is None else values[:top_k]), vocab_size=vocab_size)


class _OpenAIWriter(StepWriter):
    def __init__(self, session: OpenAISession, max_tokens: int, stop: Sequence[str], measure: bool,
                 constrained: bool) -> None:
        super().__init__(max_tokens, stop, measure)
        self._session = session
        self._constrained = constrained

    async def __aiter__(self) -> AsyncIterator[str]:
        session = self._session
        session._stream = await session._server.create(**session._request(
            self.max_tokens, self.stop, session._server.measure_top_k if self.measure else None,
            constrained=self._constrained))
        chunk = await session._next()
        finish, stop_reason, streamed = None, None, 0
        while chunk is not None:
            if chunk.choices:
                choice = chunk.choices[0]
                streamed += max(1, len(choice.logprobs.tokens)) if choice.logprobs else 1
                session._pending_tokens = streamed
                self._measure(choice.logprobs)
                finish = choice.finish_reason or finish
                stop_reason = (choice.model_extra or {}).get("stop_reason", stop_reason)
                text = choice.text or ""
                if text:
                    session._pending += text
                    yield text
            if chunk.usage is not None:  # the last chunk: exact counts
                session._count(chunk.usage)
                streamed = chunk.usage.completion_tokens
                self.prefill_tokens = session._probed_tokens + _uncached(chunk.usage)
                # a vllm serve that drafts, started with --per-request-spec-decode-metrics, reports them
                drafting = ((chunk.model_extra or {}).get("metrics") or {}).get("speculative_decoding")
                if drafting:
                    self.drafted_tokens = drafting["num_draft_tokens"]
                    self.accepted_tokens = drafting["num_accepted_draft_tokens"]
            chunk = await session._next()
        self.tokens = session._pending_tokens = streamed
        session._stream = None
        self.end = _end(finish, stop_reason)

    def _measure(self, logprobs: Any) -> None:
        """Record each token's entropy (midpoint of its bounds) and logprob, when measuring."""
        if not (self.measure and logprobs):
            return
        server = self._session._server
        for top, logprob in zip(logprobs.top_logprobs, logprobs.token_logprobs):
            bounds = _distribution(top, server.measure_top_k, server.vocab_size).bounds()
            self.token_entropies.append((bounds.lower + bounds.upper) / 2)
            self.token_logprobs.append(logprob)


def _end(finish: str | None, stop_reason: Any) -> str:
    return "max_tokens" if finish == "length" else "stop_string" if isinstance(stop_reason, str) else "end_of_text"


def _uncached(usage: Any) -> int:
    """Prompt tokens a request's usage says the server computed (prefix-cache hits excluded)."""
    details = usage.prompt_tokens_details
    return usage.prompt_tokens - ((details.cached_tokens or 0) if details else 0)
