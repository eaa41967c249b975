"""What a run did, step by step, and the events emitted while it happens.

Vocabulary (used throughout Glimp):
- step: a span of the response that ends at the step separator (a blank line by default);
- probe: the small model's distribution of a step's first token; H_init is its entropy in nats;
- delegate: the small model writes the step, its first token drawn from that distribution;
- intervene: the large model writes the step from the same context;
- intervention rate: the share of routed steps written by the large model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from glimp_integrations.config import Role
from glimp_integrations.version import __version__

Phase = Literal["reasoning", "answer"]
ProbeBasis = Literal["full", "bounds", "capped", "gate"]
"""How a probe settled its decision: `full` (exact entropy over the whole vocabulary), `bounds`
(certified by top-k entropy bounds), `capped` (from the bounds' midpoint: they still straddled
the threshold at the most logprobs the backend gives, e.g. a server's `--max-logprobs`), `gate`
(proven by the entropy gate on a model server, which measures H_init but cannot return it: the
bounds are [0, threshold] and `h_init` is None)."""
Decision = Literal["delegate", "intervene", "forced"]
"""Who a step went to: the small model (`delegate`), the large one (`intervene`), or the large one
without routing (`forced`: the final answer)."""
RunFinish = Literal["stop", "budget", "repetition"]
"""Why a run ended: its text ended (or a stop sequence), a budget ran out, or (`plain` mode) its steps
repeated (`RouterConfig.max_repeated_steps`)."""
StepFinish = Literal["separator", "end_of_reasoning", "stop", "budget", "step_limit", "repetition"]
DecisionBasis = Literal["full", "bounds", "capped", "gate", "policy", "forced", "degraded"]
"""How a step's writer was chosen: a `ProbeBasis`, `policy` (a policy that needs no probe),
`forced` (not routed: the large model's final answer), or `degraded` (the small model's server had
failed: the large model writes; `RouterConfig.small_model_failure`)."""


@dataclass
class ProbeTrace:
    """The probe at the start of a routed step."""

    h_init: float | None
    """Entropy in nats; exact when `basis` is `full`, else the midpoint of the bounds; None for `gate`."""
    h_lower: float
    h_upper: float
    basis: ProbeBasis
    top_k: int | None
    """Logprobs that settled the decision (None: the whole vocabulary)."""
    escalations: int
    """How many times more logprobs had to be requested."""
    seconds: float


@dataclass
class StepTrace:
    """One step of the response."""

    index: int
    model: Role
    phase: Phase
    text: str
    tokens: int
    """Tokens in the step."""
    prefill_tokens: int
    """Context tokens the writer had to process before writing (what it had not seen yet)."""
    decision: Decision
    basis: DecisionBasis
    probe: ProbeTrace | None
    seconds: float
    """Wall time of the step, its probe included."""
    finish_reason: StepFinish
    discarded_tokens: int = 0
    """Tokens the small model wrote for this step that a policy threw away (wasted work)."""
    drafted_tokens: int | None = None
    """Speculative decoding: draft tokens proposed to the writer (None: no drafting, or unreported)."""
    accepted_tokens: int | None = None
    """Speculative decoding: of `drafted_tokens`, those the writer accepted."""
    retries: int = 0
    """Requests of this step (its probes included) sent again after a model server failed them."""

    @property
    def h_init(self) -> float | None:
        return self.probe.h_init if self.probe else None

    def routing(self) -> dict[str, Any]:
        """Who wrote the step and why, without its text: what framework callbacks receive."""
        probe = self.probe
        return {
            "index": self.index,
            "model": self.model,
            "phase": self.phase,
            "decision": self.decision,
            "basis": self.basis,
            "h_init": self.h_init,
            "h_lower": probe.h_lower if probe else None,
            "h_upper": probe.h_upper if probe else None,
            "escalations": probe.escalations if probe else 0,
            "tokens": self.tokens,
            "prefill_tokens": self.prefill_tokens,
            "discarded_tokens": self.discarded_tokens,
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
            "retries": self.retries,
            "probe_seconds": probe.seconds if probe else 0.0,
            "seconds": self.seconds,
            "finish_reason": self.finish_reason,
        }


@dataclass
class RunTrace:
    """A whole run: every step, the answer and the totals."""

    answer: str
    reasoning: str
    steps: list[StepTrace]
    mode: Literal["think", "plain"]
    policy: str
    threshold: float
    small_model: str
    large_model: str
    prompt_tokens: int
    wall_seconds: float
    finish_reason: RunFinish
    tokens_by_model: dict[str, int] = field(default_factory=dict)
    """Tokens of the response each model wrote."""
    tool_call_parser: str | None = None
    """The format of the answer's tool calls (vLLM's `--tool-call-parser` name); None: no tools."""
    usage_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    """What each model computed: {"small": {"input_tokens", "output_tokens"}, "large": {...}}, input
    being the prompt and the text it had not seen (prefix-cache hits excluded), output every token
    it generated (probes and discarded steps included)."""
    degraded: str | None = None
    """Why the large model wrote the steps from some point on without routing: the small model's
    server failed (`RouterConfig.small_model_failure="large"`); None: every step was routed."""
    glimp_version: str = __version__
    """The Glimp that ran it (a bug report's first line)."""

    @property
    def routed_steps(self) -> list[StepTrace]:
        return [s for s in self.steps if s.decision != "forced"]

    @property
    def intervention_rate(self) -> float:
        routed = self.routed_steps
        return sum(s.model == "large" for s in routed) / len(routed) if routed else 0.0

    @property
    def discarded_tokens(self) -> int:
        return sum(s.discarded_tokens for s in self.steps)

    @property
    def probe_count(self) -> int:
        return sum(s.probe is not None for s in self.steps)

    @property
    def escalations(self) -> int:
        return sum(s.probe.escalations for s in self.steps if s.probe)

    @property
    def drafted_tokens(self) -> int | None:
        """Draft tokens proposed over the run (None: no step was drafted)."""
        drafted = [s.drafted_tokens for s in self.steps if s.drafted_tokens is not None]
        return sum(drafted) if drafted else None

    @property
    def accepted_tokens(self) -> int | None:
        accepted = [s.accepted_tokens for s in self.steps if s.accepted_tokens is not None]
        return sum(accepted) if accepted else None

    @property
    def acceptance_rate(self) -> float | None:
        """Share of draft tokens the writers accepted (None: nothing was drafted)."""
        drafted, accepted = self.drafted_tokens, self.accepted_tokens
        return accepted / drafted if drafted and accepted is not None else None

    @property
    def input_tokens(self) -> int:
        """Context tokens both models processed (see `usage_by_model`)."""
        return sum(usage["input_tokens"] for usage in self.usage_by_model.values())

    @property
    def output_tokens(self) -> int:
        """Tokens both models generated, probes and discarded steps included (see `usage_by_model`)."""
        return sum(usage["output_tokens"] for usage in self.usage_by_model.values())

    @property
    def completion_tokens(self) -> int:
        return sum(s.tokens for s in self.steps)

    @property
    def reasoning_tokens(self) -> int:
        return sum(s.tokens for s in self.steps if s.phase == "reasoning")

    def summary(self) -> dict[str, Any]:
        """The run's totals, without the step texts."""
        return {
            "steps": len(self.steps),
            "routed_steps": len(self.routed_steps),
            "intervention_rate": self.intervention_rate,
            "tokens_by_model": dict(self.tokens_by_model),
            "usage_by_model": {model: dict(usage) for model, usage in self.usage_by_model.items()},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "probe_count": self.probe_count,
            "escalations": self.escalations,
            "discarded_tokens": self.discarded_tokens,
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance_rate": self.acceptance_rate,
            "wall_seconds": self.wall_seconds,
            "finish_reason": self.finish_reason,
            "mode": self.mode,
            "policy": self.policy,
            "threshold": self.threshold,
            "small_model": self.small_model,
            "large_model": self.large_model,
            "tool_call_parser": self.tool_call_parser,
            "degraded": self.degraded,
            "glimp_version": self.glimp_version,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update({k: v for k, v in self.summary().items() if k not in data})
        for step, raw in zip(self.steps, data["steps"]):
            raw["h_init"] = step.h_init
        return json_safe(data)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def json_safe(data: Any) -> Any:
    """A copy of `data` (dicts, lists, numbers, strings) that JSON can hold: infinities, such as
    an infinite threshold, become the strings "inf" and "-inf"."""
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list):
        return [json_safe(v) for v in data]
    if isinstance(data, float) and math.isinf(data):
        return str(data)
    return data


# --- Events, emitted while a run happens -----------------------------------------------------


@dataclass
class StepStarted:
    """The writer of step `index` has been chosen; its tokens follow as `TokenDelta`s."""

    index: int
    model: Role
    phase: Phase
    decision: Decision
    probe: ProbeTrace | None


@dataclass
class TokenDelta:
    """New text of step `index`."""

    index: int
    model: Role
    phase: Phase
    text: str


@dataclass
class StepDiscarded:
    """A policy threw away the small model's step `index`; the large model writes it again."""

    index: int
    model: Role
    text: str
    tokens: int


@dataclass
class StepFinished:
    step: StepTrace


@dataclass
class RunFinished:
    trace: RunTrace


RouterEvent = StepStarted | TokenDelta | StepDiscarded | StepFinished | RunFinished
