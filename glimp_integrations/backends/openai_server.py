"""One OpenAI-compatible model server as the servers backend's sessions reach it: its connection
(client, tokenizer, context window, logprobs cap, whether it runs the entropy gate), requests sent
once and counted while they stream, failures as `ServerError` naming the server, and the retry
policy that paces them."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from glimp_integrations import _sync
from glimp_integrations.backends.base import MEASURE_TOP_K, health_problem, knows_think_tags
from glimp_integrations.backends.gate_arguments import GATE_PROCESSOR, gate_arguments
from glimp_integrations.backends.step_spans import token_texts
from glimp_integrations.config import Role
from glimp_integrations.errors import GlimpConfigError, UpstreamError, require_module

logger = logging.getLogger(__name__)


class ServerError(UpstreamError):
    """A model server failed or stayed unreachable (after the session's retries, when `retryable`);
    its `failure` is `input` when the server refused the request as invalid (400, 413, 422)."""

    def __init__(self, message: str, retryable: bool = True, status: int | None = None) -> None:
        super().__init__(message, "input" if status in (400, 413, 422) else "upstream")
        self.retryable = retryable
        """True for failures a second try may not meet: the connection, a timeout, a 5xx, a 429."""


GATE_CHECK_PROMPT = "1, 2, 3, 4,"
"""A prompt whose next token is not the end of text, for the start-up check of the entropy gate."""


class ModelServer:
    """One OpenAI-compatible server and what sessions need from it."""

    def __init__(
        self,
        role: Role,
        url: str,
        model: str | None,
        tokenizer: str | None,
        api_key: str,
        timeout: float,
        retry: RetryPolicy,
        entropy_gate: bool | None,
    ) -> None:
        """Connect, and read what sessions need of the server, one question after the other (long:
        its model card, tokenizer, context window, logprobs cap and entropy gate, each with the
        error or warning that names the fix)."""
        openai = require_module("openai", "openai", "The OpenAI-compatible servers backend")
        transformers = require_module("transformers", "openai", "Rendering chat templates for the servers backend")
        require_module("jinja2", "openai", "Rendering chat templates for the servers backend")  # transformers' optional
        self.role, self.url = role, url.rstrip("/")
        self.retry = retry
        # The sessions retry (and count) failed requests themselves; the client sends each once.
        self._client_args = {"base_url": self.url, "api_key": api_key, "timeout": timeout, "max_retries": 0}
        client = openai.OpenAI(**self._client_args)
        try:
            card = next(m for m in client.models.list().data if model is None or m.id == model)
        except StopIteration as error:
            raise GlimpConfigError(
                f"The {role} model's server at {self.url} does not serve `{model}`. "
                f"Pass `{role}_model` as one of the ids at {self.url}/models."
            ) from error
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
                f"Pass `{role}_tokenizer` (a local folder or HF id of the same model)."
            ) from error
        self.vocab_size = max(len(self.tokenizer), config_vocab)
        """Logits per position (the model's vocabulary may be padded past the tokenizer's)."""
        context_window: Any = extra.get("max_model_len") or getattr(self.tokenizer, "model_max_length", 4096)
        self.context_window = int(context_window)
        self.knows_think_tags = knows_think_tags(self.tokenizer)
        self.max_logprobs = logprobs_cap(openai, client, self.name, self.vocab_size)
        """The server's cap on logprobs per token (vLLM's `--max-logprobs`); None: no cap below the vocabulary."""
        self.measure_top_k = min(MEASURE_TOP_K, self.max_logprobs or MEASURE_TOP_K)
        if self.max_logprobs is not None and role == "small":
            logger.warning(
                "The small model's server at %s caps logprobs at %d (--max-logprobs): a probe whose top-%d entropy "
                "bounds straddle the threshold is decided from their midpoint (basis 'capped'). Start it with "
                "--max-logprobs -1 for decisions equal to the exact entropy's.",
                self.url,
                self.max_logprobs,
                self.max_logprobs,
            )
        self.gate = role == "small" and entropy_gate is not False and self._has_gate(openai, client)
        """True when the server runs the entropy gate (`vllm serve --logits-processors ...EntropyGate`)."""
        if role == "small" and entropy_gate is None and not self.gate:
            logger.warning(
                "The small model's server at %s does not run the entropy gate: each step starts with a probe request. "
                "Start it with --logits-processors %s (pip install glimp there) for one request per delegated step.",
                self.url,
                GATE_PROCESSOR,
            )
        if role == "small" and entropy_gate and not self.gate:
            raise GlimpConfigError(
                f"`entropy_gate=True` but the small model's server at {self.url} does not run the gate. Start it "
                f"with --logits-processors {GATE_PROCESSOR} (after pip install glimp in its image), or pass "
                "entropy_gate=None to probe with requests where it is missing."
            )
        self._client: Any = None
        self._texts_by_id: list[str] | None = None
        self.open_streams = 0
        """Streamed requests of this process running on the server now."""

    def _has_gate(self, openai: Any, client: Any) -> bool:
        """Whether a gated request with a threshold below every entropy ends at its first token, as
        only the gate makes it (greedy, on a prompt whose next token is not the end of text)."""
        eos = self.tokenizer.eos_token_id
        try:
            response = client.completions.create(
                model=self.name,
                prompt=GATE_CHECK_PROMPT,
                max_tokens=2,
                temperature=0.0,
                extra_body={"vllm_xargs": gate_arguments(-1.0, eos), "return_token_ids": True},
            )
        except openai.APIError:
            return False  # a server that refuses vllm_xargs has no gate
        return (response.choices[0].model_extra or {}).get("token_ids") == [eos]

    def unreachable(self, error: Exception) -> str:
        if getattr(error, "status_code", None) in (401, 403):
            return (
                f"The {self.role} model's server at {self.url} refused the API key ({type(error).__name__}: "
                f"{error}). Pass its key as `{self.role}_api_key` (or `api_key`) in backend_options; glimp serve "
                f"reads GLIMP_{self.role.upper()}_API_KEY."
            )
        return (
            f"The {self.role} model's server at {self.url} failed or is unreachable "
            f"({type(error).__name__}: {error}). Check that the server is running and reachable from "
            f"here (curl {self.url}/models), that the URL ends in /v1, and its logs."
        )

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

    @property
    def texts_by_id(self) -> list[str]:
        """Each token's text (decoded once, at first use), to find step ends in a request that spans steps."""
        if self._texts_by_id is None:
            self._texts_by_id = token_texts(self.tokenizer)
        return self._texts_by_id

    async def create(self, **request: Any) -> Any:
        """`completions.create` on the background loop, sent once; a failure is a `ServerError`
        naming this server, `retryable` unless the server refused the request (a 4xx but 408/429)."""
        openai = require_module("openai", "openai", "The OpenAI-compatible servers backend")
        try:
            response = await _sync.on_background_loop(self.client.completions.create(model=self.name, **request))
        except openai.APIError as error:
            status = getattr(error, "status_code", None)
            retryable = status is None or status >= 500 or status in (408, 429)
            raise ServerError(self.unreachable(error), retryable, status) from error
        return CountedStream(self, response) if request.get("stream") else response


class RetryPolicy:
    """How often and how soon a failed request is sent again: `max_retries` times per step, after
    `backoff` seconds doubling each time (at most `max_backoff`)."""

    def __init__(self, max_retries: int, backoff: float, max_backoff: float = 4.0) -> None:
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff

    async def pause(self, error: ServerError, retries_so_far: int) -> None:
        """Wait before retry number `retries_so_far + 1`; raise `error` when it may not be retried."""
        if not error.retryable or retries_so_far >= self.max_retries:
            raise error
        delay = min(self.backoff * 2**retries_so_far, self.max_backoff)
        logger.warning("Retrying in %.2f s (%d of %d): %s", delay, retries_so_far + 1, self.max_retries, error)
        await asyncio.sleep(delay)


class CountedStream:
    """A streamed response, counted in its server's `open_streams` until it ends or is closed."""

    def __init__(self, server: ModelServer, stream: Any) -> None:
        self._server, self._stream, self._open = server, stream, True
        server.open_streams += 1

    def __aiter__(self) -> CountedStream:
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


def logprobs_cap(openai: Any, client: Any, model: str, vocab_size: int) -> int | None:
    """The server's cap on logprobs per token, or None where it allows the whole vocabulary or
    does not say.  Asking for one more than the vocabulary makes vLLM answer with its cap."""
    try:
        client.with_options(max_retries=0).completions.create(
            model=model, prompt="a", max_tokens=1, logprobs=vocab_size + 1
        )
    except openai.BadRequestError as error:
        found = _CAP_MESSAGE.search(str(error))
        if found and int(found.group(1)) < vocab_size:
            return int(found.group(1))
    except openai.APIError:
        pass  # the server will name its own trouble on the first real request
    return None
