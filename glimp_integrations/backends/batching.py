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

import atexit
import logging
import threading
import weakref
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a worker thread waits for work before it exits (the next submission starts another).
IDLE_SECONDS = 2.0


class Row(Protocol):
    """Work on one session that the worker drives: a step being written, or a probe's reading."""

    max_batch_size: int
    """Most rows this row may be fed with (its backend's `max_batch_size`)."""
    cancelled: bool
    """Set from any thread: the worker drops the row before its next forward pass."""
    session: Any
    """The `TransformersSession` the row works on: its `_cache`, `_cached_ids`, `_next_logits`."""
    feeding: list[int]
    """Tokens to feed next (after its cached ones); one while decoding."""

    def start(self) -> bool:
        """Set `feeding` (cropping the cache to what it keeps); False when the row is already done."""

    def fed(self) -> bool:
        """`feeding` is in the cache and `_next_logits` follows it; False when the row is done."""

    def leave(self, error: BaseException | None) -> None:
        """The row is out of the worker (done, cancelled, or failed with `error`)."""


class ModelWorker:
    """Runs a model's forward passes on one thread, feeding concurrent runs' rows together.

    Each round: start the rows waiting (while the batch has room), feed the rows that need several
    tokens (prefills) in one batch, then every row that needs one token in another, and let each row
    take its logits.
    """

    def __init__(self, model: Any, torch: Any) -> None:
        self._model = model
        self._torch = torch
        self._lock = threading.Condition()
        self._waiting: list[Row] = []
        """Rows submitted and not yet started (they start when the batch has room)."""
        self._rows: list[Row] = []
        """Rows started, in the order they joined."""
        self._thread: threading.Thread | None = None
        """The thread serving, or the last one to serve: one that ended idle may still be tearing down
        torch's thread-local state, which must finish before the interpreter does (`close` joins it)."""
        self._serving = False
        self._batch: _Batch | None = None
        self._closing = False
        self.largest_batch = 0
        """Most rows fed together so far (for tests and benchmarks)."""
        _workers.add(self)

    def submit(self, row: Row) -> None:
        """Drive `row` on the worker until it leaves."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the model's worker is closed: the interpreter is exiting")
            self._waiting.append(row)
            if not self._serving:
                if self._thread is not None:
                    self._thread.join()  # ended idle: out of `_serve` already, only its teardown is left
                self._thread = threading.Thread(target=self._serve, name="glimp-model-worker", daemon=True)
                self._serving = True
                self._thread.start()
            self._lock.notify()

    def _serve(self) -> None:
        with self._torch.inference_mode():
            while self._has_work():
                self._admit_rows()
                self._feed_rows()

    def _has_work(self) -> bool:
        """Wait for work; False (and the thread ends) after `IDLE_SECONDS` without any."""
        with self._lock:
            while not (self._waiting or self._rows) or self._closing:
                if self._closing or (not self._lock.wait(IDLE_SECONDS) and not (self._waiting or self._rows)):
                    self._serving = False
                    self._batch = None
                    return False
            return True

    def close(self) -> None:
        """Stop for good (at exit) after the forward pass in progress, dropping the rows in flight."""
        with self._lock:
            self._closing = True
            thread = self._thread
            self._lock.notify()
        if thread is not None:
            thread.join(timeout=30)

    def _admit_rows(self) -> None:
        """Start waiting rows while the batch has room (the smallest cap among the rows counts)."""
        while True:
            with self._lock:
                if not self._waiting:
                    return
                row = self._waiting[0]
                if len(self._rows) >= min([row.max_batch_size, *(r.max_batch_size for r in self._rows)]):
                    return
                self._waiting.pop(0)
            if row.cancelled:
                row.leave(None)
                continue
            try:
                going_on = row.start()
            except BaseException as error:  # this row's own failure (its grammar, say)
                row.leave(error)
                continue
            if going_on:
                self._rows.append(row)
            else:
                row.leave(None)

    def _feed_rows(self) -> None:
        for row in [r for r in self._rows if r.cancelled]:
            self._remove(row, None)
        prefilling = [r for r in self._rows if len(r.feeding) > 1]
        decoding = [r for r in self._rows if len(r.feeding) == 1]
        for rows in (prefilling, decoding):
            if rows:
                self._feed(rows)
                self.largest_batch = max(self.largest_batch, len(rows))

    def _feed(self, rows: list[Row]) -> None:
        """Feed `rows` (one alone, as outside a batch; several in one batch), then let each take its
        logits (a failed forward pass fails them all)."""
        try:
            if self._batch is not None and self._batch.rows != rows and set(rows) & set(self._batch.rows):
                self._take_back()
            if len(rows) == 1:
                rows[0].session._feed(rows[0].feeding)
            elif self._batch is not None and self._batch.rows == rows:
                self._batch.feed(self._model, self._torch)
            else:
                batch = _Batch(rows, self._model.config, self._torch)
                batch.feed(self._model, self._torch)
                if batch.decoding:
                    self._take_back()
                    self._batch = batch  # kept while the same rows decode
                else:
                    batch.take_back()
        except BaseException as error:
            for row in rows:
                self._remove(row, error)
            return
        for row in rows:
            try:
                going_on = row.fed()
            except BaseException as error:
                self._remove(row, error)
                continue
            if not going_on:
                self._remove(row, None)

    def _remove(self, row: Row, error: BaseException | None) -> None:
        if self._batch is not None and row in self._batch.rows:
            self._take_back()
        self._rows.remove(row)
        row.leave(error)

    def _take_back(self) -> None:
        """Give each row of the kept batch its part of the batched cache (views), and drop the batch."""
        if self._batch is not None:
            self._batch.take_back()
            self._batch = None


class _Batch:
    """Rows fed together: their caches left-padded to end in the same column, then each row's new
    tokens, right-padded to the longest (so each row's part stays one slice: no copy to take it
    back).  A batch of one token per row can be fed again as it is (`decoding`)."""

    def __init__(self, rows: list[Row], config: Any, torch: Any) -> None:
        import transformers

        self.rows = rows
        self.decoding = all(len(row.feeding) == 1 for row in rows)
        """Every row feeds one token: the batch can be fed again while the same rows decode."""
        lengths = [len(row.session._cached_ids) for row in rows]
        longest = max(lengths)
        self._padding = [longest - length for length in lengths]
        self._lengths = lengths
        """Tokens of each row in the cache (after its padding)."""
        self._cache: Any = transformers.DynamicCache(config=config)
        cached = [row for row in rows if row.session._cache is not None]
        for index, layer in enumerate(self._cache.layers if longest else ()):
            first = cached[0].session._cache.layers[index].keys  # [1, kv_heads, tokens, head_dim]
            keys = first.new_zeros((len(rows), first.shape[1], longest, first.shape[3]))
            values = keys.clone()
            for row_index, (row, padding) in enumerate(zip(rows, self._padding)):
                if row.session._cache is not None:
                    keys[row_index, :, padding:] = row.session._cache.layers[index].keys[0]
                    values[row_index, :, padding:] = row.session._cache.layers[index].values[0]
            _fill_layer(layer, keys, values)
        device = rows[0].session._loaded.device
        self._mask = torch.ones((len(rows), longest), dtype=torch.long, device=device)  # [rows, tokens]
        for row_index, padding in enumerate(self._padding):
            self._mask[row_index, :padding] = 0

    def feed(self, model: Any, torch: Any) -> None:
        """Feed each row its `feeding`; each session's `_next_logits` then follows its last token."""
        counts = [len(row.feeding) for row in self.rows]
        width, device = max(counts), self._mask.device
        new_mask = [[1] * count + [0] * (width - count) for count in counts]
        self._mask = torch.cat([self._mask, torch.tensor(new_mask, device=device)], dim=1)  # [rows, tokens]
        input_ids = torch.tensor([row.feeding + row.feeding[-1:] * (width - len(row.feeding)) for row in self.rows])
        positions = torch.tensor([[length + i for i in range(width)] for length in self._lengths])
        last = sorted(set(counts))  # the columns whose logits some row needs
        output = model(
            input_ids=input_ids.to(device),  # [rows, width]
            past_key_values=self._cache,
            attention_mask=self._mask,
            position_ids=positions.to(device),  # [rows, width]
            use_cache=True,
            logits_to_keep=1 if width == 1 else torch.tensor([count - 1 for count in last], device=device),
        )
        logits = output.logits.float()  # [rows, len(last), vocab]
        for row_index, row in enumerate(self.rows):
            session = row.session
            session._cached_ids.extend(row.feeding)
            session._next_logits = logits[row_index, last.index(counts[row_index])]
            session._cache = None  # held by the batch until `take_back`
            self._lengths[row_index] += counts[row_index]

    def take_back(self) -> None:
        """Each row's session gets its part of the batched cache back as views (no copy)."""
        import transformers

        for row_index, (row, padding, length) in enumerate(zip(self.rows, self._padding, self._lengths)):
            cache = transformers.DynamicCache(config=row.session._loaded.model.config)
            for layer, batched in zip(cache.layers, self._cache.layers):
                part = slice(padding, padding + length)
                _fill_layer(
                    layer,
                    batched.keys[row_index : row_index + 1, :, part],
                    batched.values[row_index : row_index + 1, :, part],
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


_workers: weakref.WeakSet[ModelWorker] = weakref.WeakSet()


@atexit.register
def _close_workers() -> None:
    """A torch call still running in a worker while the interpreter tears down aborts the process."""
    for worker in list(_workers):
        worker.close()
