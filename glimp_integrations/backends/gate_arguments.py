"""What a request for the entropy gate carries (see `vllm_gate`), importable without vLLM: the
servers backend sends these as `vllm_xargs`, the in-process vLLM backend as `extra_args`."""

from __future__ import annotations

from typing import Any

GATE_PROCESSOR = "glimp_integrations.backends.vllm_gate:EntropyGate"
"""The gate's qualified name, as `vllm serve --logits-processors` and `LLM(logits_processors=...)` take it."""
THRESHOLD, END_TOKEN = "glimp_gate_threshold", "glimp_gate_end_token"
"""Keys of every gated request: the threshold (nats) and the token to force above it.  Flat keys
with numbers: `vllm serve` accepts nothing nested in `vllm_xargs`."""
PATH, SLOT, TAG = "glimp_gate_path", "glimp_gate_slot", "glimp_gate_tag"
"""Further keys of a gated request whose entropy goes to a mapped file (`vllm_gate.GateSlots`)."""


def gate_arguments(threshold: float, end_token: int) -> dict[str, Any]:
    """The arguments of a gated request whose outcome alone tells the decision (an infinite
    threshold is sent as the largest float: JSON has no infinity, and no entropy reaches either)."""
    return {THRESHOLD: min(float(threshold), MAX_THRESHOLD), END_TOKEN: int(end_token)}


MAX_THRESHOLD = 1.0e308
