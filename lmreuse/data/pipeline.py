"""grain input pipelines: documents → tokens → objective examples → batches (pretraining), and
task examples → features → batches (fine-tuning).

    ds = make_pretrain_dataset(config.objective, config.data, source, tok, batch_size=32,
                               seed=0, train=True)
    it = iter(ds)            # it.get_state() / it.set_state(...) resume exactly;
    batch = next(it)         # orbax: grain.checkpoint.CheckpointSave(it) in a Composite.

How documents become examples is the objective's (`dataset` in lmreuse/objectives/<name>.py);
reading, shuffling and batching are here, behind objectives.base.Documents.

Every pipeline walks document indices (`MapDataset.range`), so per-example
randomness is `random_map`'s generator seeded from (seed, position in the
stream): reproducible, resumable, and fresh every epoch in training (the
shuffle and the corruption are re-drawn per epoch). Eval makes one unshuffled
pass whose corruption depends only on (seed, index), so every eval sees the
same batches.

Batches are global and do not depend on how many processes share them: the
documents are shuffled (with the seed) over the whole source, the examples of
that one global stream are cut into global batches, and each process keeps the
rows of every batch that its devices hold (`rows`, from Trainer.host_rows). With
one example per document (MLM), a process reads and processes only its own
rows' documents; where one document gives a variable number of rows (CLM
packing, span corruption's long documents, windowed task features), every
process runs the same global stream and keeps its rows, since which rows a
document lands in depends on every document before it. Either way the iterator
state counts global batches, the same in every process and for any process
count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from lmreuse import objectives
from lmreuse.objectives.base import Documents, Example

# One thread builds examples while the caller runs its step (more threads only fight over
# the GIL: this work is Python + small numpy calls; measured on 1 and 2 CPU cores).
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=128)


class _Documents:
  """Tokenized access to a random-access source of {"segments": [str | bytes, ...]}."""

  def __init__(self, source: Any, tokenizer: Any):
    self.source = source
    self.tokenizer = tokenizer

  def __len__(self) -> int:
    return len(self.source)

  def segments(self, index: int) -> list[list[int]]:
    record = self.source[int(index)]
    try:
      texts = record["segments"]
    except (KeyError, TypeError, IndexError) as e:
      raise ValueError(
          f"source[{index}] has no 'segments' (a list of sentences); got {type(record).__name__}"
          f" with keys {list(record) if isinstance(record, dict) else '?'}"
      ) from e
    texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
    return [list(ids) for ids in self.tokenizer.encode_batch(texts)] if texts else []

  def tokens(self, index: int) -> list[int]:
    return [t for segment in self.segments(index) for t in segment]


class _Unlist(grain.experimental.FlatMapTransform):
  """Emits each element of a list; the lists are built (and seeded) upstream."""

  max_fan_out = 1 << 20

  def flat_map(self, element: list) -> list:
    return element


def _document_indices(
    num_docs: int, *, seed: int, train: bool, cycle: bool = False
) -> grain.MapDataset:
  """The global order of the documents: one shuffle over all of them, whatever the processes.
  Eval passes once, in order, or again and again with `cycle`."""
  if num_docs == 0:
    raise ValueError("the source has no documents")
  ds = grain.MapDataset.range(num_docs).seed(seed)
  if train:
    return ds.shuffle().repeat(None)
  return ds.repeat(None) if cycle else ds


def _stack(elements: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


class _BatchRows(grain.MapDataset):
  """Element k: rows `rows` of global batch k (parent elements k*B .. k*B+B-1), stacked.

  grain's MapDataset.batch takes whole batches; this takes one process's rows of each and
  computes only those elements of the (lazy) parent, so processes never build each other's rows.
  """

  def __init__(self, parent: grain.MapDataset, batch_size: int, rows: Sequence[int]):
    super().__init__(parent)
    self._batch_size, self._rows = batch_size, tuple(rows)

  def __len__(self) -> int:
    return len(self._parent) // self._batch_size

  def __str__(self) -> str:
    return f"_BatchRows(batch_size={self._batch_size}, rows={len(self._rows)})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    start = index * self._batch_size
    return _stack([self._parent[start + row] for row in self._rows])


def _rows_of_batches(
    ds: grain.IterDataset, batch_size: int, rows: Sequence[int]
) -> grain.IterDataset:
  """Global batches of `ds`, of which this process keeps `rows`."""
  ds = ds.batch(batch_size, drop_remainder=True)
  if tuple(rows) == tuple(range(batch_size)):
    return ds
  index = np.asarray(rows)
  return ds.map(lambda batch: {k: v[index] for k, v in batch.items()})


def _check_rows(rows: Sequence[int] | None, batch_size: int) -> tuple[int, ...]:
  if rows is None:
    return tuple(range(batch_size))
  rows = tuple(int(r) for r in rows)
  if not rows or len(set(rows)) != len(rows) or not all(0 <= r < batch_size for r in rows):
    raise ValueError(f"rows={rows} must be distinct row indices in [0, batch_size={batch_size})")
  return rows


class _Split(_Documents, Documents):
  """objectives.base.Documents: one split's documents in their global order, batched into
  `rows` of each global batch of `batch_size` (the methods' contracts are the protocol's)."""

  def __init__(
      self,
      source: Any,
      tokenizer: Any,
      *,
      batch_size: int,
      seed: int,
      train: bool,
      rows: Sequence[int],
      cycle: bool = False,
  ):
    super().__init__(source, tokenizer)
    self.indices = _document_indices(len(source), seed=seed, train=train, cycle=cycle)
    self.batch_size, self.seed, self.train, self.rows = batch_size, seed, train, rows

  def examples(self, make: Callable[[int, np.random.Generator], Example]) -> grain.IterDataset:
    # Seeded by the position in the global stream: a row is the same for any process count.
    examples = self.indices.random_map(make)
    # One element per batch: prefetch about as many examples as the per-example pipelines.
    options = grain.ReadOptions(
        num_threads=_READ_OPTIONS.num_threads,
        prefetch_buffer_size=max(2, _READ_OPTIONS.prefetch_buffer_size // len(self.rows)),
    )
    return _BatchRows(examples, self.batch_size, self.rows).to_iter_dataset(options)

  def example_lists(
      self, make: Callable[[int, np.random.Generator], list[Example]]
  ) -> grain.IterDataset:
    ds = self.indices.random_map(make).to_iter_dataset(_READ_OPTIONS)
    ds = grain.experimental.FlatMapIterDataset(ds, _Unlist())
    return _rows_of_batches(ds, self.batch_size, self.rows)

  def packed(self, chunks, *, length, pad_id, finish):
    """`FirstFitPackIterDataset`, not concat-then-split: a chunk stays whole inside one row, so
    none starts mid-sentence without its context, and segment ids keep attention inside it."""
    ds = self.indices.map(lambda i: [{"tokens": c} for c in chunks(i)])
    ds = grain.experimental.FlatMapIterDataset(ds.to_iter_dataset(_READ_OPTIONS), _Unlist())
    # Bins = batch_size: each packing round fills about one batch of rows.
    ds = grain.experimental.FirstFitPackIterDataset(
        ds,
        length_struct={"tokens": length},
        num_packing_bins=self.batch_size,
        seed=self.seed,
        shuffle_bins=self.train,
        padding_struct={"tokens": pad_id},
    )
    return _rows_of_batches(ds, self.batch_size, self.rows).map(lambda b: finish(_unpack(b)))


def _unpack(packed: Example) -> Example:
  return {
      "tokens": packed["tokens"],
      "segment_ids": packed["tokens_segment_ids"].astype(np.int32),
      "positions": packed["tokens_positions"].astype(np.int32),
  }


def make_pretrain_dataset(
    objective: ml_collections.ConfigDict,
    data: ml_collections.ConfigDict,
    source: Any,
    tokenizer: Any,
    *,
    batch_size: int,
    seed: int,
    train: bool,
    rows: Sequence[int] | None = None,
    cycle_eval: bool = False,
) -> grain.IterDataset:
  """Fixed-shape numpy batches for config.objective and config.data (`seq_len`, and what the
  objective reads): `rows` (default all) of each global batch of `batch_size`, this process's
  share (Trainer.host_rows).

  Train repeats forever with fresh shuffling and corruption each epoch; eval is
  one pass with fixed, seeded corruption and drops the last partial batch, or with
  `cycle_eval` passes again and again (a small corpus's validation split: any number of eval
  batches from however few documents).
  `iter(...)` gives a checkpointable grain DatasetIterator.
  """
  dataset = objectives.from_config(objective).dataset
  if data.seq_len < 4:
    raise ValueError(f"config.data.seq_len={data.seq_len} must be >= 4")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be positive")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed={seed} must be in [0, 2**32)")
  rows = _check_rows(rows, batch_size)
  split = _Split(
      source, tokenizer, batch_size=batch_size, seed=seed, train=train, rows=rows, cycle=cycle_eval
  )
  return dataset(split, objective, data)


def make_task_dataset(
    examples: Sequence[dict],
    features_fn: Any,
    *,
    batch_size: int,
    seed: int,
    rows: Sequence[int] | None = None,
    random_features: bool = True,
) -> grain.IterDataset:
  """Endless shuffled training batches of a downstream task: `rows` (default all) of each
  global batch of `batch_size`, this process's share.

  `features_fn(example, rng)` returns a list of feature dicts (several for windowed QA, with
  `rng` for augmentation). With `random_features` the examples are re-featurized with fresh
  randomness each epoch; without, each example's features are computed once and reused in
  later epochs (tokenizing every example on every step can cost as much as a small model's
  step).
  """
  rows = _check_rows(rows, batch_size)
  indices = _document_indices(len(examples), seed=seed, train=True)
  if random_features:
    ds = indices.random_map(lambda i, rng: features_fn(examples[int(i)], rng))
  else:
    cache: dict[int, list] = {}

    def cached(i: int) -> list:
      if i not in cache:
        cache[i] = features_fn(examples[i], None)
      return cache[i]

    ds = indices.map(lambda i: cached(int(i)))
  ds = grain.experimental.FlatMapIterDataset(ds.to_iter_dataset(_READ_OPTIONS), _Unlist())
  return _rows_of_batches(ds, batch_size, rows)
