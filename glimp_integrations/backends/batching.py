"""Concurrent runs on one transformers model share its forward passes.

A `ModelWorker` is the one thread that runs a model's forward passes.  Runs hand it two kinds of
work:

- a *task*: one session's own forward pass (a probe's prefill, catching up with the other model's
  step, scoring candidates), run alone between batches;
- a *row*: one step being written (`DecodingRow`).  The row starts alone (its prefill and first
  token), then joins the decoding batch: every batch feeds each row its last token in one forward
  pass, and each row samples its next token from its own logits (its own temperature, seed, grammar
  mask and stop strings).  A row leaves when its step ends or is cancelled.

Each session keeps its own KV cache (a `DynamicCache` of [1, kv_heads, tokens, head_dim] tensors per
layer).  For a batch the rows' caches are left-padded into one [rows, kv_heads, longest, head_dim]
tensor per layer, with an attention mask over the padding and each row's own positions; while the
same rows decode together the batched cache is kept and grows in place of theirs, and a row that
leaves takes its part back as views.  One row alone is fed exactly as it would be outside a batch.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a worker thread waits for work before it exits (the next submission starts another).
IDLE_SECONDS = 2.0


class DecodingRow(Protocol):
    """One step being written, as the worker drives it."""

    max_batch_size: int
    """Most rows this row may decode with (its backend's `max_batch_size`)."""
    cancelled: bool
    """Set from any thread: the worker drops the row before its next forward pass."""
    session: Any
    """The `TransformersSession` writing the step: its `_cache`, `_cached_ids`, `_next_logits`."""
    next_input: int
    """The token to feed next (the last one the row sampled)."""

    def begin(self) -> bool:
        """Prefill if needed and take the first token; False when the step already ended."""

    def advance(self) -> bool:
        """Sample the next token from the session's `_next_logits`; False when the step ended."""

    def leave(self, error: BaseException | None) -> None:
        """The row is out of the batch (ended, cancelled, or failed with `error`)."""


class ModelWorker:
    """Runs a model's forward passes on one thread, batching the decoding rows of concurrent runs."""

    def __init__(self, model: Any, torch: Any) -> None:
        self._model = model
        self._torch = torch
        self._lock = threading.Condition()
        self._tasks: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []
        self._waiting: list[DecodingRow] = []
        """Rows submitted and not yet started (they start when the batch has room)."""
        self._rows: list[DecodingRow] = []
        """Rows decoding, in the order they joined."""
        self._thread: threading.Thread | None = None
        self._batch: _Batch | None = None
        self.largest_batch = 0
        """Most rows fed together so far (for tests and benchmarks)."""

    def run(self, task: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `task` on the worker between batches; its result or error comes back in the future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            self._tasks.append((task, future))
            self._wake()
        return future

    def join(self, row: DecodingRow) -> None:
        """Start `row` on the worker and decode it with the others until it leaves."""
        with self._lock:
            self._waiting.append(row)
            self._wake()

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="glimp-model-worker", daemon=True)
            self._thread.start()
        self._lock.notify()

    def _serve(self) -> None:
        with self._torch.inference_mode():
            while self._take_work():
                self._run_tasks()
                self._admit_rows()
                self._decode_once()

    def _take_work(self) -> bool:
        """Wait for work; False (and the thread ends) after `IDLE_SECONDS` without any."""
        with self._lock:
            while not (self._tasks or self._waiting or self._rows):
                if not self._lock.wait(IDLE_SECONDS) and not (self._tasks or self._waiting or self._rows):
                    self._thread = None
                    self._batch = None
                    return False
            return True

    def _run_tasks(self) -> None:
        with self._lock:
            tasks, self._tasks = self._tasks, []
        for task, future in tasks:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(task())
                except BaseException as error:  # the caller gets the error; the worker goes on
                    future.set_exception(error)

    def _admit_rows(self) -> None:
        """Start waiting rows while the batch has room (the smallest cap among the rows counts)."""
        while True:
            with self._lock:
                if not self._waiting:
                    return
                row = self._waiting[0]
                cap = min([row.max_batch_size, *(r.max_batch_size for r in self._rows)])
                if len(self._rows) >= cap:
                    return
                self._waiting.pop(0)
            if row.cancelled:
                row.leave(None)
                continue
            try:
                if row.begin():
                    self._rows.append(row)
                else:
                    row.leave(None)
            except BaseException as error:  # this row's own failure (its grammar, its prefill)
                row.leave(error)

    def _decode_once(self) -> None:
        """Feed every decoding row its last token in one forward pass, then let each sample."""
        for row in [r for r in self._rows if r.cancelled]:
            self._remove(row, None)
        rows = list(self._rows)
        if not rows:
            return
        try:
            if len(rows) == 1:
                self._take_back()
                rows[0].session._feed([rows[0].next_input])
            else:
                self._feed_batch(rows)
        except BaseException as error:  # the forward pass failed: every row in it fails
            for row in rows:
                self._remove(row, error)
            return
        self.largest_batch = max(self.largest_batch, len(rows))
        for row in rows:
            try:
                going_on = row.advance()
            except BaseException as error:
                self._remove(row, error)
                continue
            if not going_on:
                self._remove(row, None)

    def _remove(self, row: DecodingRow, error: BaseException | None) -> None:
        if self._batch is not None and row in self._batch.rows:
            self._take_back()
        self._rows.remove(row)
        row.leave(error)

    def _take_back(self) -> None:
        """Give each row of the kept batch its part of the batched cache (views), and drop the batch."""
        if self._batch is not None:
            self._batch.take_back()
            self._batch = None

    def _feed_batch(self, rows: list[DecodingRow]) -> None:
        if self._batch is None or self._batch.rows != rows:
            self._take_back()
            self._batch = _Batch(rows, self._torch, self._model.config)
        self._batch.feed(self._model)


class _Batch:
    """Rows decoding together, their caches left-padded into one batched cache."""

    def __init__(self, rows: list[DecodingRow], torch: Any, config: Any) -> None:
        import transformers

        self.rows = rows
        self._torch = torch
        lengths = [len(row.session._cached_ids) for row in rows]
        longest = max(lengths)
        self._padding = [longest - length for length in lengths]
        self._positions = list(lengths)
        self._cache: Any = transformers.DynamicCache(config=config)
        for index, layer in enumerate(self._cache.layers):
            parts = [row.session._cache.layers[index] for row in rows]
            keys = parts[0].keys.new_zeros((len(rows), parts[0].keys.shape[1], longest, parts[0].keys.shape[3]))
            values = keys.clone()
            for row_index, (part, padding) in enumerate(zip(parts, self._padding)):
                keys[row_index, :, padding:] = part.keys[0]
                values[row_index, :, padding:] = part.values[0]
            _fill_layer(layer, keys, values)
        self._mask = torch.ones((len(rows), longest), dtype=torch.long, device=keys.device)  # [rows, tokens]
        for row_index, padding in enumerate(self._padding):
            self._mask[row_index, :padding] = 0

    def feed(self, model: Any) -> None:
        torch = self._torch
        device = self._mask.device
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=1)
        input_ids = torch.tensor([[row.next_input] for row in self.rows], device=device)  # [rows, 1]
        positions = torch.tensor([[p] for p in self._positions], device=device)  # [rows, 1]
        output = model(
            input_ids=input_ids,
            past_key_values=self._cache,
            attention_mask=self._mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = output.logits[:, -1].float()  # [rows, vocab]
        for row_index, row in enumerate(self.rows):
            session = row.session
            session._cached_ids.append(row.next_input)
            session._next_logits = logits[row_index]
            session._cache = None  # held by the batch until `take_back`
            self._positions[row_index] += 1

    def take_back(self) -> None:
        """Each row's session gets its part of the batched cache back as views (no copy)."""
        import transformers

        for row_index, (row, padding) in enumerate(zip(self.rows, self._padding)):
            cache = transformers.DynamicCache(config=row.session._loaded.model.config)
            for layer, batched in zip(cache.layers, self._cache.layers):
                _fill_layer(
                    layer,
                    batched.keys[row_index : row_index + 1, :, padding:],
                    batched.values[row_index : row_index + 1, :, padding:],
                )
            row.session._cache = cache


def _fill_layer(layer: Any, keys: Any, values: Any) -> None:
    """Set a `DynamicLayer`'s keys and values ([batch, kv_heads, tokens, head_dim]) without copying."""
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values


def batches_rows(cache_layers: Any) -> bool:
    """Whether caches with these layers can be batched here: plain `DynamicLayer`s only (a sliding
    window or a quantized cache is fed one row at a time)."""
    import transformers

    return all(type(layer) is transformers.cache_utils.DynamicLayer for layer in cache_layers)
