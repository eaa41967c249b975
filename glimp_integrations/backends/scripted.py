"""A deterministic backend whose steps, tokens and distributions are written out by the caller.

For exact, fast tests of the routing loop and for examples; it runs no model.  Each role has a
script: a list of `ScriptedStep`s.  Every run starts at the top of the script; each time a
session of that role starts a step (a probe, or a write without a probe) it takes the next
entry; when the script is exhausted the model ends the text.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from glimp_integrations.backends.base import (
    Backend,
    ModelSession,
    SessionSpec,
    StepWriter,
    StopScanner,
    TokenDistribution,
    check_prompt_fits,
    render_think_suffix,
)
from glimp_integrations.config import Role
from glimp_integrations.constraints import AnswerConstraint
from glimp_integrations.tools import prepare_messages


def peaked_logprobs(top_probability: float, vocab_size: int) -> list[float]:
    """Log-probabilities (sorted descending) with one token at `top_probability` and the rest of
    the mass spread evenly over the other tokens; handy for building a known entropy."""
    rest = (1.0 - top_probability) / (vocab_size - 1)
    return [math.log(top_probability)] + [math.log(rest) if rest > 0 else -math.inf] * (vocab_size - 1)


@dataclass
class ScriptedStep:
    """What a scripted model writes for one step, and its first token's distribution."""

    tokens: list[str]
    """Token texts in order; the step ends at the first stop string, so include the separator."""
    first_logprobs: Sequence[float] = field(default_factory=lambda: peaked_logprobs(0.99, 100))
    """Distribution of the first token at temperature 1 (whole vocabulary, sorted descending)."""
    token_entropies: Sequence[float] | None = None
    """Entropy at each token, reported when measured (default: 0.1 each)."""
    token_logprobs: Sequence[float] | None = None
    """Log-probability of each token, reported when measured (default: -0.1 each)."""
    judge_logprobs: dict[str, float] | None = None
    """What this role answers when asked to score candidates right after this step (SpecReason)."""


@dataclass
class ScriptedModel:
    name: str
    steps: list[ScriptedStep] | Callable[[str], list[ScriptedStep]]
    """The script, or a function of the rendered prompt that returns the run's script."""
    knows_think_tags: bool = False
    context_window: int = 4096
    top_k_only: bool = False
    """Answer probes with only the `top_k` asked for, to exercise the escalation ladder."""
    max_top_k: int | None = None
    """Give probes at most this many logprobs, as a server with `--max-logprobs` does."""
    tokenizer: Any = None
    """An HF tokenizer whose chat template and added tokens stand for the model's (tool-call formats)."""


class ScriptedBackend(Backend):
    """Both roles scripted.  Prompt tokens are counted as whitespace-separated words."""

    name = "scripted"
    supports_constraints = True
    """Recorded, not applied: a script's text is what it is (see `constrained_writes`)."""

    def __init__(self, small: ScriptedModel, large: ScriptedModel) -> None:
        self.models: dict[Role, ScriptedModel] = {"small": small, "large": large}
        self.steps_taken = {"small": 0, "large": 0}
        """Script entries consumed so far, per role, over all runs."""
        self.probe_requests: list[tuple[Role, int | None]] = []
        """Every probe asked for, in order: (role, top_k)."""
        self.prompts: list[str] = []
        """Every prompt rendered, in order (both roles)."""
        self.open_sessions = 0
        """Sessions opened and not yet closed (a cancelled run must leave none)."""
        self.judge_requests: list[tuple[Role, str]] = []
        """Every `candidate_logprobs` call, in order: (role, suffix)."""
        self.constrained_writes: list[tuple[Role, AnswerConstraint]] = []
        """Every write asked to apply the answer constraint, in order: (role, the constraint)."""

    async def open_session(self, role: Role, spec: SessionSpec) -> ScriptedSession:
        messages = prepare_messages(
            spec.messages,
            spec.tools,
            template_renders_tools=False,
            tool_choice=spec.tool_choice,
            tool_call_parser=spec.tool_call_parser,
        )
        prompt = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        prompt = render_think_suffix(prompt, spec.open_think, spec.reasoning_markers[0])
        model = self.models[role]
        self.prompts.append(prompt)
        prompt_tokens = len(prompt.split())
        check_prompt_fits(role, model.name, prompt_tokens, model.context_window)
        self.open_sessions += 1
        return ScriptedSession(self, role, model, prompt, prompt_tokens, spec)


class ScriptedSession(ModelSession):
    def __init__(
        self,
        backend: ScriptedBackend,
        role: Role,
        model: ScriptedModel,
        prompt: str,
        prompt_tokens: int,
        spec: SessionSpec,
    ) -> None:
        self._backend = backend
        self._constraint = spec.constraint
        self.role = role
        self.model_name = model.name
        self.prompt_tokens = self.input_tokens = prompt_tokens
        self.context_window = model.context_window
        self.max_probe_top_k = model.max_top_k
        self._model = model
        self.context_text = prompt
        self._context_tokens = prompt_tokens
        self._seen_tokens = prompt_tokens
        """Context tokens this model has processed (a stand-in for its KV cache)."""
        self._script = model.steps(prompt) if callable(model.steps) else model.steps
        self._cursor = 0
        self._step: ScriptedStep | None = None
        self._pending: list[str] = []

    @property
    def context_tokens(self) -> int:
        return self._context_tokens

    def _take_step(self) -> ScriptedStep | None:
        """The entry of the current step, taking the next one from the script if none is open."""
        if self._step is None:
            script = self._script
            self._step = script[self._cursor] if self._cursor < len(script) else None
            self._cursor += 1
            self._backend.steps_taken[self.role] += 1
        return self._step

    async def probe(self, top_k: int | None) -> TokenDistribution:
        self._backend.probe_requests.append((self.role, top_k))
        step = self._take_step()
        logprobs = tuple(sorted(step.first_logprobs, reverse=True)) if step else (0.0,)
        given = min(top_k or len(logprobs), self.max_probe_top_k or len(logprobs))
        if self._model.top_k_only or self.max_probe_top_k is not None:
            return TokenDistribution(logprobs[:given], vocab_size=len(logprobs))
        return TokenDistribution(logprobs, vocab_size=len(logprobs))

    def write(
        self, max_tokens: int, stop: Sequence[str], measure: bool = False, constrained: bool = False
    ) -> StepWriter:
        if constrained:
            assert self._constraint is not None, "a constrained write needs the session's constraint"
            self._backend.constrained_writes.append((self.role, self._constraint))
        return _ScriptedWriter(self, max_tokens, stop, measure)

    async def candidate_logprobs(self, suffix: str, candidates: Sequence[str]) -> dict[str, float]:
        """The `judge_logprobs` of this role's next script entry (consumed, as a step would be)."""
        self._backend.judge_requests.append((self.role, suffix))
        step = self._take_step()
        await self.discard()
        judged = (step.judge_logprobs if step else None) or {}
        return {c: judged[c] for c in candidates if c in judged}

    def commit(self) -> None:
        self.context_text += "".join(self._pending)
        self._context_tokens += len(self._pending)
        self._seen_tokens = self._context_tokens
        self._reset_step()

    async def discard(self) -> None:
        self._reset_step()

    async def append_text(self, text: str) -> None:
        await self.discard()
        self.context_text += text
        self._context_tokens += len(text.split()) or 1

    async def aclose(self) -> None:
        self._backend.open_sessions -= 1

    def _reset_step(self) -> None:
        self._pending = []
        self._step = None


class _ScriptedWriter(StepWriter):
    def __init__(self, session: ScriptedSession, max_tokens: int, stop: Sequence[str], measure: bool) -> None:
        super().__init__(max_tokens, stop, measure)
        self._session = session

    async def __aiter__(self) -> AsyncIterator[str]:
        session = self._session
        step = session._take_step()
        self.prefill_tokens = session._context_tokens - session._seen_tokens
        session.input_tokens += self.prefill_tokens
        session._seen_tokens = session._context_tokens
        scanner = StopScanner(self.stop)
        text = ""
        for position, token in enumerate(step.tokens if step else []):
            session._pending.append(token)
            session.output_tokens += 1
            self.tokens += 1
            if self.measure and step is not None:
                self.token_entropies.append(step.token_entropies[position] if step.token_entropies else 0.1)
                self.token_logprobs.append(step.token_logprobs[position] if step.token_logprobs else -0.1)
            text += token
            yield token
            if scanner.found(text):
                self.end = "stop_string"
                return
            if self.tokens >= self.max_tokens:
                self.end = "max_tokens"
                return
        self.end = "end_of_text"
