"""Hugging Face transformers backend (torch, CPU or CUDA).

Each session keeps its model's KV cache across the steps that model writes.  Before a model
writes, the cache is brought up to date with the context: the longest common prefix with what
the cache holds is kept, and only the tokens after it are prefilled.  A switch therefore costs
the prefill of the tokens the model has not seen yet, not of the whole context.  The probe is
the logits at the end of the context: the exact entropy over the whole vocabulary comes from
them, and the token sampled from them is the step's first token when the small model delegates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy

from glimp_integrations.backends.base import (
    Backend,
    ModelSession,
    SessionSpec,
    StepWriter,
    StopScanner,
    TokenDistribution,
    check_prompt_fits,
    knows_think_tags,
    render_chat_prompt,
    resolve_model_name,
)
from glimp_integrations.backends.step_spans import token_texts
from glimp_integrations.config import Role
from glimp_integrations.errors import GlimpConfigError, invalid, require_module

logger = logging.getLogger(__name__)

#: Logprobs kept in a probe's record next to the exact entropy (for traces and debugging).
RECORDED_TOP_K = 20
#: Tokens before the end of a constrained answer's budget from which it is steered to close (a
#: grammar keeps each token valid but cannot make a model stop: a string it repeats would be cut).
#: Enough for an object's remaining required fields, the closing brackets and `</tool_call>`; at
#: most a quarter of the answer's budget.
CLOSING_RESERVE = 40


class LoadedModel:
    """A model and tokenizer in memory, shared by every backend that names the same folder."""

    def __init__(self, name: str, device: str) -> None:
        torch = require_module("torch", "hf", "The transformers backend")
        transformers = require_module("transformers", "hf", "The transformers backend")
        self.torch = torch
        self.name = name
        self.device = device
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(name)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as error:
            raise GlimpConfigError(
                f"Could not load the model `{name}` ({error}). Pass a local model folder "
                "(config.json, weights, tokenizer) or an HF model id already in the local HF cache; "
                "this machine may have no network to download it."
            ) from error
        self.lock = threading.RLock()
        """Serialises each token's work (forward pass and sampling): sessions of concurrent runs share
        the weights, and torch already spreads one token's work over the cores, so concurrent runs
        take turns token by token instead of competing for the cores."""
        config = self.model.config
        self.context_window = int(getattr(config, "max_position_embeddings", None) or 4096)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        eos_ids.append(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(i for i in eos_ids if i is not None)
        self.knows_think_tags = knows_think_tags(self.tokenizer)
        self._grammar_tokenizer: Any = None
        self._closing_tiers: Any = None

    @property
    def closing_tiers(self) -> tuple[Any, Any, Any]:
        """Three [vocab] bool masks, in the order a closing answer prefers them: the end-of-text
        tokens; tokens that only close (`"`, `]`, `}`, spaces); tokens that only separate (`,`), for
        when nothing may close yet (an object still missing a required field, an integer)."""
        if self._closing_tiers is None:
            texts = [text.strip() for text in token_texts(self.tokenizer)]
            end_of_text = self.torch.zeros(self.vocab_size, dtype=self.torch.bool)
            end_of_text[sorted(self.eos_ids)] = True
            tiers = [end_of_text]
            for characters in ('"]}', ","):
                tier = self.torch.zeros(self.vocab_size, dtype=self.torch.bool)
                tier[: len(texts)] = self.torch.tensor([bool(text) and set(text) <= set(characters) for text in texts])
                tiers.append(tier)
            self._closing_tiers = tuple(tier.to(self.device) for tier in tiers)
        return self._closing_tiers

    def grammar_matcher(self, grammar: str) -> Any:
        """An llguidance matcher of `grammar` over this model's tokens (EOS allowed once it is complete)."""
        llguidance = require_module("llguidance", "hf", "Constrained decoding with the transformers backend")
        if self._grammar_tokenizer is None:
            import llguidance.hf

            self._grammar_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=self.vocab_size, eos_token=sorted(self.eos_ids)
            )
        matcher = llguidance.LLMatcher(self._grammar_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GlimpConfigError(f"The answer constraint does not compile for `{self.name}`: {matcher.get_error()}")
        return matcher


_loaded: weakref.WeakValueDictionary[tuple[str, str], LoadedModel] = weakref.WeakValueDictionary()
_loaded_lock = threading.Lock()


def load_model(name: str, device: str) -> LoadedModel:
    """Load `name` once per process and device; routers naming the same model share it."""
    with _loaded_lock:
        model = _loaded.get((name, device))
        if model is None:
            model = LoadedModel(name, device)
            _loaded[(name, device)] = model
        return model


def _resolve_device(device: str) -> str:
    torch = require_module("torch", "hf", "The transformers backend")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise invalid("device", device, "names a CUDA device but torch sees none", "Use device='cpu' (or 'auto').")
    return device


class TransformersBackend(Backend):
    """Both models as transformers causal LMs in this process."""

    name = "transformers"
    supports_constraints = True

    def __init__(self, small: str, large: str, *, device: str = "auto") -> None:
        names: dict[Role, str] = {
            "small": resolve_model_name("small", small),
            "large": resolve_model_name("large", large),
        }
        device = _resolve_device(device)
        self.models: dict[Role, LoadedModel] = {role: load_model(name, device) for role, name in names.items()}

    async def open_session(self, role: Role, spec: SessionSpec) -> TransformersSession:
        loaded = self.models[role]
        prompt = render_chat_prompt(loaded.tokenizer, spec)
        prompt_ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        check_prompt_fits(role, loaded.name, len(prompt_ids), loaded.context_window)
        return TransformersSession(loaded, role, prompt_ids, spec)

    def close(self) -> None:
        self.models.clear()


class TransformersSession(ModelSession):
    def __init__(self, loaded: LoadedModel, role: Role, prompt_ids: list[int], spec: SessionSpec) -> None:
        torch, seed = loaded.torch, spec.seed
        self._loaded = loaded
        self._torch = torch
        self.role = role
        self.model_name = loaded.name
        self.prompt_tokens = len(prompt_ids)
        self.context_window = loaded.context_window
        self._sampling = spec.sampling
        self._constraint = spec.constraint
        self._generator = torch.Generator(device=loaded.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self._committed: list[int] = list(prompt_ids)
        self._pending: list[int] = []
        self._cache: Any = None
        self._cached_ids: list[int] = []
        """Tokens whose keys and values are in `_cache`, in order."""
        self._next_logits: Any = None  # [vocab], after the last cached token
        self._probe_token: int | None = None
        self._last_prefill = 0
        """Tokens prefilled by the last probe, reported by the step that keeps its token."""

    @property
    def context_tokens(self) -> int:
        return len(self._committed)

    # --- cache -----------------------------------------------------------------------------

    def _sync_cache(self, ids: list[int]) -> int:
        """Bring the cache to exactly `ids` and set `_next_logits`; returns the tokens prefilled."""
        common = 0
        limit = min(len(ids), len(self._cached_ids))
        while common < limit and ids[common] == self._cached_ids[common]:
            common += 1
        if common == len(ids) == len(self._cached_ids) and self._next_logits is not None:
            return 0
        common = min(common, len(ids) - 1)  # at least one token must be fed to get its logits
        surplus = len(self._cached_ids) - common
        if surplus and common == 0:
            self._cache = None
        elif surplus:
            self._cache.crop(-surplus)  # transformers 5: a negative count of tokens to drop
        del self._cached_ids[common:]
        self._feed(ids[common:])
        self.input_tokens += len(ids) - common
        return len(ids) - common

    def _feed(self, new_ids: list[int]) -> None:
        """Run the model on `new_ids` after the cached tokens."""
        torch, loaded = self._torch, self._loaded
        transformers = require_module("transformers", "hf", "The transformers backend")
        if self._cache is None:
            self._cache = transformers.DynamicCache(config=loaded.model.config)
        input_ids = torch.tensor([new_ids], device=loaded.device)  # [1, new]
        with loaded.lock, torch.inference_mode():
            output = loaded.model(input_ids=input_ids, past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        self._cache = output.past_key_values
        self._cached_ids.extend(new_ids)
        self._next_logits = output.logits[0, -1].float()  # [vocab]

    def _sample(self, matcher: Any = None, closing: bool = False) -> int:
        """Draw the next token from `_next_logits` with the run's temperature and top-p, among the
        tokens `matcher` (an llguidance grammar matcher) allows, if given.  `closing`: the budget is
        nearly spent, so end the text if the grammar allows it, else take the likeliest allowed
        token that closes something (a string, a list, an object), else one that separates (to the
        next required field), else the likeliest allowed token: the answer ends complete."""
        torch, sampling = self._torch, self._sampling
        logits = self._next_logits
        self.output_tokens += 1
        if matcher is not None:
            packed = numpy.frombuffer(matcher.compute_bitmask(), dtype=numpy.uint8)
            allowed = torch.from_numpy(numpy.unpackbits(packed, bitorder="little")[: logits.shape[0]].astype(bool)).to(
                logits.device
            )
            for tier in self._loaded.closing_tiers if closing else ():
                if bool((allowed & tier).any()):
                    allowed &= tier
                    break
            logits = logits.masked_fill(~allowed, -math.inf)  # [vocab]
        if sampling.temperature == 0 or closing:
            return int(logits.argmax())
        probs = torch.softmax(logits / sampling.temperature, dim=-1)  # [vocab]
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self._generator))

    # --- ModelSession --------------------------------------------------------------------------

    async def probe(self, top_k: int | None) -> TokenDistribution:
        return await asyncio.to_thread(self._probe_sync)

    def _probe_sync(self) -> TokenDistribution:
        with self._loaded.lock:
            return self._probe_locked()

    def _probe_locked(self) -> TokenDistribution:
        torch = self._torch
        if self._probe_token is None:
            self._pending.clear()
            self._last_prefill = self._sync_cache(self._committed)
            self._probe_token = self._sample()
        logprobs = torch.log_softmax(self._next_logits, dim=-1)  # [vocab], temperature 1
        entropy = float(-(logprobs.exp() * logprobs).sum())
        top = logprobs.topk(min(RECORDED_TOP_K, logprobs.shape[0])).values
        return TokenDistribution(tuple(top.tolist()), vocab_size=logprobs.shape[0], exact_entropy=entropy)

    def write(
        self, max_tokens: int, stop: Sequence[str], measure: bool = False, constrained: bool = False
    ) -> StepWriter:
        matcher = self._loaded.grammar_matcher(self._constraint.grammar) if constrained and self._constraint else None
        return _TransformersWriter(self, max_tokens, stop, measure, matcher)

    async def candidate_logprobs(self, suffix: str, candidates: Sequence[str]) -> dict[str, float]:
        return await asyncio.to_thread(self._candidate_logprobs, suffix, candidates)

    def _candidate_logprobs(self, suffix: str, candidates: Sequence[str]) -> dict[str, float]:
        tokenizer = self._loaded.tokenizer
        with self._loaded.lock:
            self._sync_cache(self._committed + tokenizer(suffix, add_special_tokens=False)["input_ids"])
            logprobs = self._torch.log_softmax(self._next_logits, dim=-1)  # [vocab]
        ids = {c: tokenizer(c, add_special_tokens=False)["input_ids"] for c in candidates}
        return {c: float(logprobs[i[0]]) for c, i in ids.items() if len(i) == 1}

    def commit(self) -> None:
        self._committed.extend(self._pending)
        self._pending.clear()
        self._probe_token = None

    async def discard(self) -> None:
        self._pending.clear()
        self._probe_token = None

    async def append_text(self, text: str) -> None:
        await self.discard()
        self._committed.extend(self._loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def aclose(self) -> None:
        self._cache = None
        self._next_logits = None


class _TransformersWriter(StepWriter):
    def __init__(
        self, session: TransformersSession, max_tokens: int, stop: Sequence[str], measure: bool, matcher: Any
    ) -> None:
        super().__init__(max_tokens, stop, measure)
        self._session = session
        self._matcher = matcher
        """llguidance matcher of the answer constraint (None: unconstrained)."""

    def _record(self, token: int) -> None:
        """Entropy of the distribution `token` was drawn from, and the token's logprob (temperature 1)."""
        logprobs = self._session._torch.log_softmax(self._session._next_logits, dim=-1)  # [vocab]
        self.token_entropies.append(float(-(logprobs.exp() * logprobs).sum()))
        self.token_logprobs.append(float(logprobs[token]))

    def _first_token(self) -> int:
        with self._session._loaded.lock:
            return self._first_token_locked()

    def _first_token_locked(self) -> int:
        session = self._session
        if session._probe_token is not None:  # keep the probe token as the step's first token
            self.prefill_tokens = session._last_prefill
            return session._probe_token
        session._pending.clear()
        self.prefill_tokens = session._sync_cache(session._committed)
        return self._sample()

    def _next_token(self, token: int) -> int:
        with self._session._loaded.lock:
            self._session._feed([token])
            return self._sample()

    def _sample(self) -> int:
        reserve = min(CLOSING_RESERVE, self.max_tokens // 4)  # a short answer keeps most of its budget
        closing = self._matcher is not None and self.max_tokens - self.tokens <= reserve
        token = self._session._sample(self._matcher, closing)
        if self._matcher is not None and not self._matcher.consume_token(token):
            raise RuntimeError(f"the grammar matcher refused token {token}: {self._matcher.get_error()}")
        return token

    async def __aiter__(self) -> AsyncIterator[str]:
        session = self._session
        tokenizer = session._loaded.tokenizer
        scanner = StopScanner(self.stop)
        step_ids = session._pending
        text = ""
        token = await asyncio.to_thread(self._first_token)
        while True:
            if token in session._loaded.eos_ids:
                self.end = "end_of_text"
                return
            step_ids.append(token)
            self.tokens += 1
            if self.measure:
                self._record(token)
            decoded = tokenizer.decode(step_ids, skip_special_tokens=False)
            if not decoded.endswith("\ufffd"):  # hold back a partial UTF-8 character
                delta, text = decoded[len(text) :], decoded
                if delta:
                    yield delta
            if scanner.found(text):
                self.end = "stop_string"
                return
            if self.tokens >= self.max_tokens:
                self.end = "max_tokens"
                return
            token = await asyncio.to_thread(self._next_token, token)
