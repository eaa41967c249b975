"""Hugging Face transformers backend (torch, CPU or CUDA).

Each session keeps its model's KV cache across the steps that model writes.  Before a model
writes, the cache is brought up to date with the context: the longest common prefix with what
the cache holds is kept, and only the tokens after it are prefilled.  A switch therefore costs
the prefill of the tokens the model has not seen yet, not of the whole context.  The probe is
the logits at the end of the context: the exact entropy over the whole vocabulary comes from
them, and the token sampled from them is the step's first token when the small model delegates.

Concurrent runs on one model decode together: each model's forward passes all go through its
`ModelWorker` (`batching.py`), which feeds the steps being written in one batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy

from glimp_integrations import _sync
from glimp_integrations._sync import on_a_passing_thread
from glimp_integrations.backends.base import (
    Backend,
    ModelSession,
    SessionSpec,
    StepWriter,
    StopScanner,
    TokenDistribution,
    check_prompt_fits,
    knows_think_tags,
    rendered_prompt,
    resolve_model_name,
)
from glimp_integrations.backends.batching import ModelWorker, batches_rows
from glimp_integrations.backends.step_spans import token_texts
from glimp_integrations.config import Role
from glimp_integrations.errors import GlimpConfigError, invalid, require_module

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Most steps decoded together on one model when `max_batch_size` is not given.
DEFAULT_MAX_BATCH_SIZE = 16
#: Tokens nucleus sampling looks at first (`keep_top_p`); sorting the whole vocabulary took most of a
#: token's sampling time.
TOP_P_FIRST_LOOK = 64
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
        config = self.model.config
        self.worker = ModelWorker(self.model, torch)
        """Runs every forward pass of this model, batching concurrent runs' steps."""
        self.batchable = batches_rows(transformers.DynamicCache(config=config).layers)
        """False for caches that are not plain per-layer tensors (sliding windows): one row at a time."""
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
            model = on_a_passing_thread(lambda: LoadedModel(name, device))
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

    def __init__(
        self, small: str, large: str, *, device: str = "auto", max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    ) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise invalid(
                "backend_options.max_batch_size",
                max_batch_size,
                "must be a whole number of 1 or more (the most steps decoded together on one model)",
                f"Pass e.g. backend_options={{'max_batch_size': {DEFAULT_MAX_BATCH_SIZE}}}; 1 decodes one run at a time.",
            )
        self.max_batch_size = max_batch_size
        names: dict[Role, str] = {
            "small": resolve_model_name("small", small),
            "large": resolve_model_name("large", large),
        }
        device = _resolve_device(device)
        self.models: dict[Role, LoadedModel] = {role: load_model(name, device) for role, name in names.items()}

    async def open_session(self, role: Role, spec: SessionSpec) -> TransformersSession:
        loaded = self.models[role]
        prompt_ids = await _sync.on_the_tokenizer_thread(
            lambda: loaded.tokenizer(
                rendered_prompt(loaded.tokenizer, spec, role, loaded.name, loaded.context_window),
                add_special_tokens=False,
            )["input_ids"]
        )
        check_prompt_fits(role, loaded.name, len(prompt_ids), loaded.context_window)
        return TransformersSession(loaded, role, prompt_ids, spec, self.max_batch_size)

    def close(self) -> None:
        self.models.clear()


class TransformersSession(ModelSession):
    def __init__(
        self, loaded: LoadedModel, role: Role, prompt_ids: list[int], spec: SessionSpec, max_batch_size: int
    ) -> None:
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
        self._probe: tuple[int, TokenDistribution] | None = None
        """The probe's token and the distribution it was drawn from, until the step commits or is discarded."""
        self._last_prefill = 0
        """Tokens prefilled by the last probe, reported by the step that keeps its token."""
        self._max_batch_size = max_batch_size if loaded.batchable else 1
        self._writing: _TransformersWriter | None = None
        """The step being written on the model's worker, until it leaves the batch."""

    @property
    def context_tokens(self) -> int:
        return len(self._committed)

    # --- cache -----------------------------------------------------------------------------

    def _plan_sync(self, ids: list[int]) -> list[int]:
        """Crop the cache to its longest prefix of `ids` and return the tokens to feed after it so
        that it holds exactly `ids` (none when it does and `_next_logits` follows them)."""
        common = 0
        limit = min(len(ids), len(self._cached_ids))
        while common < limit and ids[common] == self._cached_ids[common]:
            common += 1
        if common == len(ids) == len(self._cached_ids) and self._next_logits is not None:
            return []
        common = min(common, len(ids) - 1)  # at least one token must be fed to get its logits
        surplus = len(self._cached_ids) - common
        if surplus and common == 0:
            self._cache = None
        elif surplus:
            self._cache.crop(-surplus)  # transformers 5: a negative count of tokens to drop
        del self._cached_ids[common:]
        self.input_tokens += len(ids) - common
        return ids[common:]

    def _feed(self, new_ids: list[int]) -> None:
        """Run the model on `new_ids` after the cached tokens."""
        torch, loaded = self._torch, self._loaded
        transformers = require_module("transformers", "hf", "The transformers backend")
        if self._cache is None:
            self._cache = transformers.DynamicCache(config=loaded.model.config)
        input_ids = torch.tensor([new_ids], device=loaded.device)  # [1, new]
        with torch.inference_mode():
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
            probs = keep_top_p(probs, sampling.top_p)
        # a draw over the whole vocabulary (0.7 ms of a token's time on a CPU): a draw among the kept
        # tokens alone takes a tenth of it, but gives seeded runs other tokens than before
        return int(torch.multinomial(probs, 1, generator=self._generator))

    # --- ModelSession --------------------------------------------------------------------------

    async def probe(self, top_k: int | None) -> TokenDistribution:
        if self._probe is None:
            self._pending.clear()
            reading = _Reading(self, self._committed, lambda: (self._sample(), self._distribution()))
            self._probe = await reading.result()
            self._last_prefill = reading.prefilled
        return self._probe[1]

    def _distribution(self) -> TokenDistribution:
        """The distribution of `_next_logits` at temperature 1 (on the worker, like every torch op)."""
        logprobs = self._torch.log_softmax(self._next_logits, dim=-1)  # [vocab]
        entropy = float(-(logprobs.exp() * logprobs).sum())
        top = logprobs.topk(min(RECORDED_TOP_K, logprobs.shape[0])).values
        return TokenDistribution(tuple(top.tolist()), vocab_size=logprobs.shape[0], exact_entropy=entropy)

    def write(
        self, max_tokens: int, stop: Sequence[str], measure: bool = False, constrained: bool = False
    ) -> StepWriter:
        matcher = self._loaded.grammar_matcher(self._constraint.grammar) if constrained and self._constraint else None
        return _TransformersWriter(self, max_tokens, stop, measure, matcher)

    async def candidate_logprobs(self, suffix: str, candidates: Sequence[str]) -> dict[str, float]:
        tokenizer = self._loaded.tokenizer
        context = self._committed + tokenizer(suffix, add_special_tokens=False)["input_ids"]
        logprobs = await _Reading(self, context, lambda: self._torch.log_softmax(self._next_logits, dim=-1)).result()
        ids = {c: tokenizer(c, add_special_tokens=False)["input_ids"] for c in candidates}
        return {c: float(logprobs[i[0]]) for c, i in ids.items() if len(i) == 1}

    def commit(self) -> None:
        self._committed.extend(self._pending)
        self._pending.clear()
        self._probe = None

    async def discard(self) -> None:
        await self._stop_writing()
        self._pending.clear()
        self._probe = None

    async def _stop_writing(self) -> None:
        """Take the step being written out of the batch, and wait until the worker let it go."""
        if self._writing is not None:
            await self._writing.cancel()

    async def append_text(self, text: str) -> None:
        await self.discard()
        self._committed.extend(self._loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def aclose(self) -> None:
        await self._stop_writing()
        self._cache = None
        self._next_logits = None


def keep_top_p(probs: Any, top_p: float) -> Any:
    """`probs` ([vocab]) with every token zeroed but the likeliest ones whose total reaches `top_p`
    (nucleus sampling).  The likeliest `TOP_P_FIRST_LOOK` tokens usually hold it: the whole
    vocabulary is sorted only when they do not."""
    look = min(TOP_P_FIRST_LOOK, probs.shape[0])
    largest, order = probs.topk(look)  # [look], descending
    if float(largest.sum()) < top_p and look < probs.shape[0]:
        largest, order = probs.sort(descending=True)  # [vocab]
    outside = largest.cumsum(0) - largest >= top_p
    return probs.new_zeros(probs.shape).scatter_(0, order, largest.masked_fill(outside, 0.0))


class _TransformersWriter(StepWriter):
    """A step written on the model's worker, as one row of its decoding batch (`DecodingRow`): the
    worker calls `begin` then `advance` per token; text deltas come back through a queue."""

    def __init__(
        self, session: TransformersSession, max_tokens: int, stop: Sequence[str], measure: bool, matcher: Any
    ) -> None:
        super().__init__(max_tokens, stop, measure)
        self.session = session
        self.max_batch_size = session._max_batch_size
        self.cancelled = False
        self.feeding: list[int] = []
        self._matcher = matcher
        """llguidance matcher of the answer constraint (None: unconstrained)."""
        self._scanner = StopScanner(stop)
        self._text = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deltas: asyncio.Queue[str | _Left] = asyncio.Queue()
        self._left: asyncio.Future[None] | None = None

    # --- on the worker -------------------------------------------------------------------------

    def start(self) -> bool:
        session = self.session
        if session._probe is not None:  # keep the probe token as the step's first token
            self.prefill_tokens = session._last_prefill
            return self._take(session._probe[0])
        session._pending.clear()
        self.feeding = session._plan_sync(session._committed)
        self.prefill_tokens = len(self.feeding)
        return True if self.feeding else self._take(self._sample())

    def fed(self) -> bool:
        return self._take(self._sample())

    def leave(self, error: BaseException | None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._left_batch, _Left(error))

    def _sample(self) -> int:
        reserve = min(CLOSING_RESERVE, self.max_tokens // 4)  # a short answer keeps most of its budget
        closing = self._matcher is not None and self.max_tokens - self.tokens <= reserve
        token = self.session._sample(self._matcher, closing)
        if self._matcher is not None and not self._matcher.consume_token(token):
            raise RuntimeError(f"the grammar matcher refused token {token}: {self._matcher.get_error()}")
        return token

    def _take(self, token: int) -> bool:
        """Add `token` to the step and send its text; False when the step ends with it."""
        session = self.session
        if token in session._loaded.eos_ids:
            self.end = "end_of_text"
            return False
        session._pending.append(token)
        self.tokens += 1
        if self.measure:
            self._record(token)
        decoded = session._loaded.tokenizer.decode(session._pending, skip_special_tokens=False)
        if not decoded.endswith("\ufffd"):  # hold back a partial UTF-8 character
            delta, self._text = decoded[len(self._text) :], decoded
            if delta:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._deltas.put_nowait, delta)
        if self._scanner.found(self._text):
            self.end = "stop_string"
            return False
        if self.tokens >= self.max_tokens:
            self.end = "max_tokens"
            return False
        self.feeding = [token]
        return True

    def _record(self, token: int) -> None:
        """Entropy of the distribution `token` was drawn from, and the token's logprob (temperature 1)."""
        logprobs = self.session._torch.log_softmax(self.session._next_logits, dim=-1)  # [vocab]
        self.token_entropies.append(float(-(logprobs.exp() * logprobs).sum()))
        self.token_logprobs.append(float(logprobs[token]))

    # --- on the run's event loop ---------------------------------------------------------------

    def _left_batch(self, left: _Left) -> None:
        self._deltas.put_nowait(left)
        if self._left is not None and not self._left.done():
            self._left.set_result(None)
        if self.session._writing is self:
            self.session._writing = None

    async def cancel(self) -> None:
        """Cancel the step and wait until the worker no longer touches the session."""
        self.cancelled = True
        if self._left is not None:
            await asyncio.shield(self._left)

    async def __aiter__(self) -> AsyncIterator[str]:
        self._loop = asyncio.get_running_loop()
        self._left = self._loop.create_future()
        self.session._writing = self
        self.session._loaded.worker.submit(self)
        try:
            while not isinstance(item := await self._deltas.get(), _Left):
                yield item
            if item.error is not None:
                raise item.error
        finally:
            self.cancelled = True  # a no-op once the step ended; else the worker drops it


class _Left:
    """The row left the batch (with the error that ended it, if any): no more deltas follow."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class _Reading(Generic[T]):
    """A row that brings a session's cache to `ids` on the model's worker, then reads `read()` from
    the logits after them (a probe samples its token; scoring takes the logprobs)."""

    def __init__(self, session: TransformersSession, ids: list[int], read: Callable[[], T]) -> None:
        self.session = session
        self.max_batch_size = session._max_batch_size
        self.cancelled = False
        self.feeding: list[int] = []
        self.prefilled = 0
        """Tokens the reading fed."""
        self._ids = ids
        self._read = read
        self._value: T | None = None
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[T] = self._loop.create_future()

    async def result(self) -> T:
        self.session._loaded.worker.submit(self)
        try:
            return await asyncio.shield(self._done)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def start(self) -> bool:
        self.feeding = self.session._plan_sync(self._ids)
        self.prefilled = len(self.feeding)
        return bool(self.feeding) or self.fed()

    def fed(self) -> bool:
        self._value = self._read()
        return False

    def leave(self, error: BaseException | None) -> None:
        self._loop.call_soon_threadsafe(self._settle, error)

    def _settle(self, error: BaseException | None) -> None:
        if self._done.done():
            return
        if error is not None:
            self._done.set_exception(error)
        elif self.cancelled and self._value is None:
            self._done.cancel()
        else:
            self._done.set_result(self._value)  # type: ignore[arg-type]
