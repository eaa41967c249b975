"""What a request for the entropy gate carries (see `vllm_gate`), importable without vLLM: the
servers backend sends these as `vllm_xargs`, the in-process vLLM backend as `extra_args`."""

from __future__ import annotations

from typing import Any

GATE_PROCESSOR = "glimp_integrations.backends.vllm_gate:EntropyGate"
"""The gate's qualified name, as `vllm serve --logits-processors` and `LLM(logits_processors=...)` take it."""
THRESHOLD, END_TOKEN = "glimp_gate_threshold", "glimp_gate_end_token"
"""Keys of every gated request: the threshold (nats) and the token to force above it.  Flat keys
with numbers and strings: `vllm serve` accepts nothing nested in `vllm_xargs`."""
SEPARATOR, STEP_TOKENS = "glimp_gate_separator", "glimp_gate_step_tokens"
"""Keys of a gated request that spans steps (`step_spans`): the step separator, and the most
tokens of a step (0: no limit).  Without them the gate acts at the first position only."""
PATH, SLOT, SLOTS, TAG = "glimp_gate_path", "glimp_gate_slot", "glimp_gate_slots", "glimp_gate_tag"
"""Further keys of a gated request whose entropies go to a mapped file (`vllm_gate.GateSlots`): its
first slot, how many slots it has (step k of a span writes slot `SLOT + k % SLOTS`, tagged
`TAG + k`) and its tag."""


def gate_arguments(
    threshold: float, end_token: int, separator: str | None = None, step_tokens: int | None = None
) -> dict[str, Any]:
    """The arguments of a gated request whose outcome alone tells the decision (an infinite
    threshold is sent as the largest float: JSON has no infinity, and no entropy reaches either).
    With a `separator`, the request spans steps: the gate acts at every step start."""
    arguments: dict[str, Any] = {THRESHOLD: min(float(threshold), MAX_THRESHOLD), END_TOKEN: int(end_token)}
    if separator is not None:
        arguments.update({SEPARATOR: separator, STEP_TOKENS: int(step_tokens or 0)})
    return arguments


MAX_THRESHOLD = 1.0e308
