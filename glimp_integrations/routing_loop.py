"""The routing loop of the paper (arXiv 2601.05110, Algorithm 1) for one run, in one place.

For every step of the response:
1. probe: the small model (SLM) computes the distribution of the step's first token; H_init is
   its entropy (nats) at temperature 1.  Backends that return only top-k logprobs give entropy
   bounds; more logprobs are asked for only while the bounds straddle the threshold, so every
   decision equals the one the exact entropy would give;
2. route: H_init <= threshold -> delegate, the SLM writes the step, its first token drawn from
   that distribution (transformers keeps the token the probe sampled; vLLM and servers sample it
   again in the step's request); H_init > threshold -> intervene, the large model (LLM) writes
   the step from the same context;
3. commit: the writer keeps its tokens (and their KV cache); the other model is handed the step
   as text and processes it only when it next writes (a switch costs the prefill of the tokens
   that model has not seen, not of the whole context).
A step ends at the separator (a blank line).  For reasoning models the steps are the `<think>`
reasoning; when the SLM closes it, or the reasoning budget runs out, the LLM writes the final
answer after `</think>`.  Models without think tags have their whole response routed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from glimp_integrations.backends.base import Backend, Message, ModelSession, SessionSpec, StepSpanning
from glimp_integrations.config import (
    ReasoningMode,
    Role,
    RouterConfig,
)
from glimp_integrations.constraints import AnswerConstraint
from glimp_integrations.entropy import EntropyBounds, Verdict
from glimp_integrations.errors import (
    GlimpError,
    GlimpInputError,
    GlimpRunError,
    GlimpTimeoutError,
    UpstreamError,
)
from glimp_integrations.policies import (
    SCORE_DIGITS,
    RoutingPolicy,
    SmallStepDraft,
)
from glimp_integrations.trace import (
    Decision,
    DecisionBasis,
    Phase,
    ProbeBasis,
    ProbeTrace,
    RouterEvent,
    RunFinish,
    RunFinished,
    RunTrace,
    StepDiscarded,
    StepFinish,
    StepFinished,
    StepStarted,
    StepTrace,
    TokenDelta,
)

logger = logging.getLogger(__name__)


class SmallModelBreaker:
    """A router's memory of its small model's server failing: for `cooldown` seconds after a run
    degraded, new runs start without the small model (not each waiting out the retries); after
    that the next run tries it again, and a run it serves closes the breaker."""

    def __init__(self, cooldown: float = 10.0) -> None:
        self.cooldown = cooldown
        self.reason: str | None = None
        self._until = 0.0

    def is_open(self) -> bool:
        return self.reason is not None and time.monotonic() < self._until

    def trip(self, reason: str) -> None:
        self.reason, self._until = reason, time.monotonic() + self.cooldown

    def close(self) -> None:
        self.reason, self._until = None, 0.0


def _retries(*sessions: ModelSession) -> int:
    return sum(session.retries for session in sessions)


@dataclass
class _Written:
    """What `RoutedRun._write` leaves behind once a step is written."""

    text: str = ""
    """Raw text as the model wrote it."""
    visible: str = ""
    """The text shown and recorded: cut before `</think>` or a user stop sequence."""
    tokens: int = 0
    prefill_tokens: int = 0
    end: str = "end_of_text"
    hit_step_limit: bool = False
    stopped: bool = False
    """True when the text reached one of the user's stop sequences (cut before it)."""
    token_entropies: list[float] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    drafted_tokens: int | None = None
    accepted_tokens: int | None = None


class RoutedRun:
    """The state of one run; `events` is the algorithm: the routed steps, then the answer."""

    def __init__(
        self,
        backend: Backend,
        config: RouterConfig,
        policy: RoutingPolicy,
        messages: list[Message],
        constraint: AnswerConstraint | None,
        max_tokens: int | None,
        reasoning_markers: tuple[str, str],
        breaker: SmallModelBreaker,
    ) -> None:
        self.backend = backend
        self.reasoning_markers = reasoning_markers
        self.think_close = reasoning_markers[1]
        self.config = config
        self.max_tokens = max_tokens
        """The caller's `max_tokens`, when given: it must fit in what the prompt leaves of the context."""
        self.policy = policy
        self.messages = messages
        self.constraint = constraint
        self.rng = random.Random(config.sampling.seed)
        self.mode = resolve_mode(config.reasoning_mode, backend)
        self.steps: list[StepTrace] = []
        self.started = time.perf_counter()
        self.prompt_tokens = 0
        self.finish: RunFinish = "budget"
        self.sessions: dict[Role, ModelSession] = {}
        self.breaker = breaker
        self.degraded: str | None = (
            breaker.reason if breaker.is_open() and config.small_model_failure == "large" else None
        )
        """Why the small model is skipped (its server failed, in this run or a recent one); None: routing."""

    async def events(self) -> AsyncGenerator[RouterEvent, None]:
        think = self.mode == "think"
        sessions = self.sessions
        try:
            roles: tuple[Role, Role] = ("small", "large")
            for offset, role in enumerate(roles):
                seed = None if self.config.sampling.seed is None else self.config.sampling.seed * 2 + offset
                spec = SessionSpec(
                    self.messages, self.config.sampling, seed, think, self.constraint, self.reasoning_markers
                )
                sessions[role] = await self.backend.open_session(role, spec)
            small, large = sessions["small"], sessions["large"]
            self.prompt_tokens = large.prompt_tokens
            self._check_max_tokens_fit(small, large)
            reasoning_closed = False
            if think or self.constraint is None:  # plain mode with a constraint: the large model answers alone
                async for event in self._routed_steps(small, large):
                    yield event
                reasoning_closed = think and bool(self.steps) and self.steps[-1].finish_reason == "end_of_reasoning"
            if think or self.constraint is not None:
                if think and not reasoning_closed:  # the budget ran out or the writer ended its text
                    await large.append_text(f"\n{self.think_close}\n\n")
                async for event in self._answer(large):
                    yield event
        except GlimpError:
            raise
        except Exception as error:  # a backend failed mid-run: keep what was written
            raise GlimpRunError(
                f"The run failed at step {len(self.steps)} ({type(error).__name__}: {error}); "
                "`partial_trace` on this error holds the steps written so far.",
                partial_trace=self._trace("budget"),
                failure=error.failure if isinstance(error, UpstreamError) else "internal",
            ) from error
        finally:
            for session in sessions.values():
                await session.aclose()
        yield RunFinished(self._trace(self.finish))

    async def _routed_steps(self, small: ModelSession, large: ModelSession) -> AsyncIterator[RouterEvent]:
        """The paper's loop: probe, route, write and commit each step until the reasoning (in
        `think` mode) or the response (in `plain` mode) ends or its budget runs out.  (Long on
        purpose: the algorithm reads in one place, as the paper's Algorithm 1 does.)"""
        config, think = self.config, self.mode == "think"
        phase: Phase = "reasoning" if think else "answer"
        # In plain mode the routed steps are the answer, so the user's stop sequences apply to them.
        stop = [config.step_separator, *([self.think_close] if think else config.stop)]
        # One request may write consecutive small-model steps unless a stop string could match across them.
        spans = (
            config.span_steps
            and self.policy.keeps_every_step
            and not any(config.step_separator in s or s in config.step_separator for s in stop[1:])
        )
        routed_tokens = 0
        while True:
            span_room = min(config.reasoning_budget - routed_tokens, _room(small), _room(large))
            room = min(span_room, config.max_step_tokens or span_room)
            if room <= 0:
                return
            index, step_started, retried_before = len(self.steps), time.perf_counter(), _retries(small, large)
            span = StepSpanning(config.step_separator, config.max_step_tokens, span_room) if spans else None
            probe, verdict = await self._route_unless_degraded(small, room, stop, span)
            writer = small if verdict is Verdict.DELEGATE else large
            decision: Decision = "delegate" if writer is small else "intervene"
            basis: DecisionBasis = probe.basis if probe else "degraded" if self.degraded else "policy"
            written = _Written()
            try:
                async for event in self._write(writer, index, phase, decision, probe, room, stop, written):
                    yield event
                kept = writer is large or await self.policy.keep_small_step(self._draft(written, large))
            except UpstreamError as error:
                if writer is large or not self._degrade(error):
                    raise
                kept = False
            discarded = 0
            if not kept:
                await small.discard()
                discarded = written.tokens
                yield StepDiscarded(index, "small", written.visible, written.tokens)
                basis = "degraded" if self.degraded else "policy"
                writer, decision, written = large, "intervene", _Written()
                async for event in self._write(large, index, phase, decision, probe, room, stop, written):
                    yield event
            reasoning_closed = think and self.think_close in written.text
            repeated = self._repeats(written.visible)
            step = StepTrace(
                index=index,
                model=writer.role,
                phase=phase,
                text=written.visible,
                tokens=written.tokens,
                prefill_tokens=written.prefill_tokens,
                decision=decision,
                basis=basis,
                probe=probe,
                seconds=time.perf_counter() - step_started,
                finish_reason="repetition" if repeated else _step_finish(written, reasoning_closed),
                discarded_tokens=discarded,
                drafted_tokens=written.drafted_tokens,
                accepted_tokens=written.accepted_tokens,
                retries=_retries(small, large) - retried_before,
            )
            writer.commit()
            await (large if writer is small else small).append_step(written.text, writer)
            self.steps.append(step)
            routed_tokens += written.tokens
            yield StepFinished(step)
            if written.end == "end_of_text" or reasoning_closed or written.stopped:
                self.finish = "stop"
                return
            if repeated:
                self.finish = "repetition"
                return

    def _repeats(self, text: str) -> bool:
        """Whether a step of `text` after the steps so far makes `max_repeated_steps` identical in a row."""
        limit = self.config.max_repeated_steps
        return (
            limit is not None
            and len(self.steps) >= limit - 1
            and all(step.text == text for step in self.steps[len(self.steps) - limit + 1 :])
        )

    async def _answer(self, large: ModelSession) -> AsyncIterator[RouterEvent]:
        """The large model's final answer (constrained when the run has a constraint)."""
        self.finish = "budget"
        answer_started, answer, retried_before = time.perf_counter(), _Written(), large.retries
        room = min(self.config.answer_budget, _room(large))
        async for event in self._write(
            large,
            len(self.steps),
            "answer",
            "forced",
            None,
            room,
            self.config.stop,
            answer,
            constrained=self.constraint is not None,
        ):
            yield event
        large.commit()
        self.steps.append(
            StepTrace(
                index=len(self.steps),
                model="large",
                phase="answer",
                text=answer.visible.lstrip(),
                tokens=answer.tokens,
                prefill_tokens=answer.prefill_tokens,
                decision="forced",
                basis="forced",
                probe=None,
                seconds=time.perf_counter() - answer_started,
                finish_reason=_step_finish(answer, False),
                discarded_tokens=0,
                drafted_tokens=answer.drafted_tokens,
                accepted_tokens=answer.accepted_tokens,
                retries=large.retries - retried_before,
            )
        )
        yield StepFinished(self.steps[-1])
        if answer.end == "end_of_text" or answer.stopped:
            self.finish = "stop"

    async def _route_unless_degraded(
        self, small: ModelSession, max_tokens: int, stop: Sequence[str], span: StepSpanning | None
    ) -> tuple[ProbeTrace | None, Verdict]:
        """`_route`, unless the small model's server has failed: then the large model writes."""
        if not self.degraded:
            try:
                probe, verdict = await self._route(small, max_tokens, stop, span)
                self.breaker.close()
                return probe, verdict
            except UpstreamError as error:
                if not self._degrade(error):
                    raise
                await small.discard()
        return None, Verdict.INTERVENE

    def _degrade(self, error: UpstreamError) -> bool:
        """Go on without the small model after its server failed, where the config says so."""
        if self.config.small_model_failure != "large":
            return False
        self.degraded = f"the small model's server failed ({error}); the large model wrote the rest"
        self.breaker.trip(self.degraded)
        logger.warning("Run degraded: %s", self.degraded)
        return True

    async def _route(
        self, small: ModelSession, max_tokens: int, stop: Sequence[str], span: StepSpanning | None
    ) -> tuple[ProbeTrace | None, Verdict]:
        """Ask the policy who writes the next step, probing the small model if it needs to.

        Top-k probes climb `probe_ladder` (then the whole vocabulary) only while the entropy
        bounds straddle the threshold.  A backend that caps its logprobs (`max_probe_top_k`) ends
        the climb at its cap; a decision the bounds still cannot settle there is taken from their
        midpoint (basis `capped`).  For a threshold policy a backend may instead measure the exact
        entropy in the request that writes the step (`gated_probe`: no probe request at all), and
        that request may go on to write the steps after it (`span`)."""
        if not self.policy.needs_probe:
            return None, self.policy.choose(None, self.rng)
        started = time.perf_counter()
        threshold, escalations = self.policy.gate_threshold, 0
        distribution = await small.gated_probe(threshold, max_tokens, stop, span) if threshold is not None else None
        if distribution is not None:
            bounds = distribution.bounds()
            choice = self.policy.choose(bounds, self.rng)
        else:
            for escalations, top_k in enumerate(_probe_ladder(self.config.probe_ladder, small.max_probe_top_k)):
                distribution = await small.probe(top_k)
                bounds = distribution.bounds()
                choice = self.policy.choose(bounds, self.rng)
                if choice is not Verdict.UNDECIDED:
                    break
        assert distribution is not None, "the probe ladder has at least one rung"
        exact, middle = distribution.is_full, (bounds.lower + bounds.upper) / 2
        basis: ProbeBasis = "gate" if distribution.proven else "full" if exact else "bounds"
        if choice is Verdict.UNDECIDED:
            assert not exact, "the whole vocabulary gives the exact entropy"
            choice = self.policy.choose(EntropyBounds(middle, middle, exact=True), self.rng)  # a point: no margin
            basis = "capped"
        probe = ProbeTrace(
            h_init=None if distribution.proven else bounds.lower if exact else middle,
            h_lower=bounds.lower,
            h_upper=bounds.upper,
            basis=basis,
            top_k=None if exact or distribution.proven else len(distribution.top_logprobs),
            escalations=escalations,
            seconds=time.perf_counter() - started,
        )
        if choice is Verdict.INTERVENE:
            await small.discard()  # a probe token or a gated request the small model holds is not the large model's
        return probe, choice

    async def _write(
        self,
        writer: ModelSession,
        index: int,
        phase: Phase,
        decision: Decision,
        probe: ProbeTrace | None,
        max_tokens: int,
        stop: Sequence[str],
        written: _Written,
        constrained: bool = False,
    ) -> AsyncIterator[RouterEvent]:
        """Announce a step, stream its text as TokenDeltas, and fill `written`."""
        self._check_deadline()
        yield StepStarted(index, writer.role, phase, decision, probe)
        # Text after a marker is never shown: the user's stop sequences end the answer, and
        # `</think>` ends the reasoning (the raw text, tag included, still goes to the other model).
        markers = self.config.stop if phase == "answer" else (self.think_close,) if self.mode == "think" else ()
        holdback = max((len(m) for m in markers), default=1) - 1  # chars that may start a marker
        shown = 0
        # The forced answer is shown and recorded without the blank line models write after `</think>`.
        leading = decision == "forced"
        step = writer.write(
            max_tokens, stop, measure=self.policy.measures_steps and writer.role == "small", constrained=constrained
        )
        async for delta in step:
            written.text += delta
            cut = min((written.text.find(m) for m in markers if m in written.text), default=None)
            written.visible = written.text if cut is None else written.text[:cut]
            written.stopped = cut is not None and phase == "answer"
            ready = len(written.visible) if cut is not None else len(written.visible) - holdback
            if leading and written.visible[:ready].strip():
                shown, leading = len(written.visible) - len(written.visible.lstrip()), False
            if ready > shown and not leading:
                yield TokenDelta(index, writer.role, phase, written.visible[shown:ready])
                shown = ready
            self._check_deadline()
        if leading:
            shown = len(written.visible) - len(written.visible.lstrip())
        if len(written.visible) > shown:
            yield TokenDelta(index, writer.role, phase, written.visible[shown:])
        written.tokens, written.prefill_tokens, written.end = step.tokens, step.prefill_tokens, step.end
        written.token_entropies, written.token_logprobs = step.token_entropies, step.token_logprobs
        written.drafted_tokens, written.accepted_tokens = step.drafted_tokens, step.accepted_tokens
        written.hit_step_limit = self.config.max_step_tokens == max_tokens

    def _check_max_tokens_fit(self, *sessions: ModelSession) -> None:
        """A `max_tokens` beyond what the prompt leaves of a model's context is an input error, as
        vLLM answers it (the run would otherwise end short of it without saying why)."""
        left = min(session.context_window - session.prompt_tokens for session in sessions)
        if self.max_tokens is not None and self.max_tokens > left:
            raise GlimpInputError(
                f"`max_tokens` ({self.max_tokens}) is more than the context leaves after the prompt: {left} tokens "
                f"(context window {min(s.context_window for s in sessions)}, prompt "
                f"{max(s.prompt_tokens for s in sessions)} tokens). Ask for at most {left}, or shorten the messages.",
                parameter="max_tokens",
            )

    @staticmethod
    def _draft(written: _Written, large: ModelSession) -> SmallStepDraft:
        """The small model's step as a policy sees it, with the large model as its judge."""

        async def score_with_large(prompt: str) -> dict[str, float]:
            return await large.candidate_logprobs(written.text + prompt, SCORE_DIGITS)

        return SmallStepDraft(
            written.visible, written.tokens, written.token_entropies, written.token_logprobs, score_with_large
        )

    def _check_deadline(self) -> None:
        timeout = self.config.timeout
        if timeout is not None and time.perf_counter() - self.started > timeout:
            raise GlimpTimeoutError(
                f"The run went past `timeout` ({timeout} s) at step {len(self.steps)}; raise `timeout` or "
                "lower `reasoning_budget`. `partial_trace` on this error holds the steps written so far.",
                partial_trace=self._trace("budget"),
            )

    def _trace(self, finish: RunFinish) -> RunTrace:
        answer_steps = [s for s in self.steps if s.phase == "answer"]
        tokens_by_model = {"small": 0, "large": 0}
        for step in self.steps:
            tokens_by_model[step.model] += step.tokens
        return RunTrace(
            answer="".join(s.text for s in answer_steps).strip(),
            reasoning="".join(s.text for s in self.steps if s.phase == "reasoning").strip(),
            steps=list(self.steps),
            mode=self.mode,
            policy=self.policy.name,
            threshold=self.config.threshold,
            small_model=self.backend.model_name("small"),
            large_model=self.backend.model_name("large"),
            prompt_tokens=self.prompt_tokens,
            wall_seconds=time.perf_counter() - self.started,
            finish_reason=finish,
            tokens_by_model=tokens_by_model,
            tool_call_parser=self.constraint.tool_call_parser
            if self.constraint and self.constraint.kind == "tools"
            else None,
            usage_by_model={
                role: {"input_tokens": session.input_tokens, "output_tokens": session.output_tokens}
                for role, session in self.sessions.items()
            },
            degraded=self.degraded,
        )


def resolve_mode(mode: ReasoningMode, backend: Backend) -> Literal["think", "plain"]:
    """`think` or `plain`; `auto` is `think` when the large model knows `<think>`."""
    if mode != "auto":
        return mode
    return "think" if backend.knows_think_tags("large") else "plain"


def _probe_ladder(ladder: Sequence[int | None], cap: int | None) -> tuple[int | None, ...]:
    """The top-k values to probe with, in order: the configured rungs, then the whole vocabulary
    (None), or, for a backend capped at `cap` logprobs, the rungs below it, then the cap."""
    rungs = [k for k in ladder if k is not None]
    if cap is None:
        return (*rungs, None)
    return (*[k for k in rungs if k < cap], cap)


def _room(session: ModelSession) -> int:
    """Tokens the session can still write before its context window is full."""
    return session.context_window - session.context_tokens - 1


def _step_finish(written: _Written, reasoning_closed: bool) -> StepFinish:
    if reasoning_closed:
        return "end_of_reasoning"
    if written.end == "stop_string":
        return "separator"
    if written.end == "end_of_text":
        return "stop"
    return "step_limit" if written.hit_step_limit else "budget"
