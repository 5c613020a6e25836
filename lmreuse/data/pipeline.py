"""grain input pipelines: documents → tokens → objective examples → batches (pretraining), and
task examples → features → batches (fine-tuning).

    ds = make_pretrain_dataset("mlm", source, tok, seq_len=128, batch_size=32, seed=0,
                               train=True, nsp=True)
    it = iter(ds)            # it.get_state() / it.set_state(...) resume exactly;
    batch = next(it)         # orbax: grain.checkpoint.CheckpointSave(it) in a Composite.

Every pipeline walks document indices (`MapDataset.range`), so per-example
randomness is `random_map`'s generator seeded from (seed, position in the
stream): reproducible, resumable, and fresh every epoch in training (the
shuffle and the corruption are re-drawn per epoch). Eval makes one unshuffled
pass whose corruption depends only on (seed, index), so every eval sees the
same batches.

Batches are global and do not depend on how many processes share them: the
documents are shuffled (with the seed) over the whole source, the examples of
that one global stream are cut into global batches, and each process keeps the
rows of every batch that its devices hold (`rows`, from Trainer.host_rows). MLM
builds one example per document, so a process reads and processes only its own
rows' documents; where one document gives a variable number of rows (CLM
packing, span corruption's long documents, windowed task features), every
process runs the same global stream and keeps its rows, since which rows a
document lands in depends on every document before it. Either way the iterator
state counts global batches, the same in every process and for any process
count.

CLM packs with `FirstFitPackIterDataset`, not concat-then-split: a document
stays whole inside one row (only documents longer than seq_len are cut into
seq_len chunks first), so no document starts mid-sentence in a row without
its context, and segment ids keep attention inside each document.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from lmreuse.objectives import clm, mlm, nsp as nsp_lib, span_corruption

OBJECTIVES = ("mlm", "clm", "span_corruption")
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


def _document_indices(num_docs: int, *, seed: int, train: bool) -> grain.MapDataset:
  """The global order of the documents: one shuffle over all of them, whatever the processes."""
  if num_docs == 0:
    raise ValueError("the source has no documents")
  ds = grain.MapDataset.range(num_docs).seed(seed)
  return ds.shuffle().repeat(None) if train else ds


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


def _fill_greedily(
    segments: list[list[int]], max_tokens: int, rng: np.random.Generator
) -> list[int]:
  """Whole document if it fits; else max_tokens consecutive tokens from a random segment start.

  Starts are limited to segments with at least max_tokens tokens after them, so
  every row of a long document is full (the last segment may be cut).
  """
  tokens = [t for segment in segments for t in segment]
  if len(tokens) <= max_tokens:
    return tokens
  starts = np.cumsum([0] + [len(s) for s in segments[:-1]])
  valid = starts[len(tokens) - starts >= max_tokens]
  start = int(valid[rng.integers(valid.size)])
  return tokens[start : start + max_tokens]


def _mlm_examples(
    indices, docs: _Documents, tok: Any, *, seq_len: int, nsp: bool, mask_prob: float
) -> grain.MapDataset:
  special_ids = np.asarray(tok.special_ids)
  if nsp and len(docs) < 2:
    raise ValueError(f"nsp=True needs a source with >= 2 documents, got {len(docs)}")
  max_pair_tokens = seq_len - 3

  def random_segments(rng: np.random.Generator, doc_index: int) -> list[int]:
    other = int(rng.integers(len(docs) - 1))
    other += other >= doc_index
    segments = [s for s in docs.segments(other) if s]
    if not segments:
      return []
    start, out = int(rng.integers(len(segments))), []
    for segment in segments[start:]:
      out.extend(segment)
      if len(out) >= max_pair_tokens:
        break
    return out

  def make_example(doc_index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    segments = docs.segments(doc_index)
    if nsp:
      a, b, is_next = nsp_lib.make_pair(
          segments, doc_index, rng, random_segment_fn=random_segments, max_tokens=max_pair_tokens
      )
    else:
      a, b = _fill_greedily(segments, seq_len - 2, rng), []
    row = nsp_lib.pack_pair(
        a, b, cls_id=tok.cls_id, sep_id=tok.sep_id, pad_id=tok.pad_id, seq_len=seq_len
    )
    masked = mlm.mask_tokens(
        row["tokens"][None],
        rng,
        mask_id=tok.mask_id,
        vocab_size=tok.vocab_size,
        special_ids=special_ids,
        mask_prob=mask_prob,
    )
    example = {
        "inputs": masked["inputs"][0],
        "token_types": row["token_types"],
        "segment_ids": row["segment_ids"],
        "positions": row["positions"],
        "mlm_targets": masked["mlm_targets"][0],
        "mlm_weights": masked["mlm_weights"][0],
    }
    if nsp:
      example["nsp_labels"] = np.int32(is_next)
    return example

  # Seeded by the position in the global stream: a row's masking is the same for any process
  # count.
  return indices.random_map(make_example)


def _clm_dataset(
    indices,
    docs: _Documents,
    tok: Any,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    train: bool,
    rows: Sequence[int],
) -> grain.IterDataset:
  def chunks(doc_index: int) -> list[dict[str, np.ndarray]]:
    tokens = docs.tokens(doc_index)
    if not tokens:
      return []
    tokens = np.asarray(tokens + [tok.eos_id], np.int32)
    return [{"tokens": tokens[i : i + seq_len]} for i in range(0, tokens.size, seq_len)]

  ds = indices.map(chunks).to_iter_dataset(_READ_OPTIONS)
  ds = grain.experimental.FlatMapIterDataset(ds, _Unlist())
  # Bins = batch_size: each packing round fills about one batch of rows.
  ds = grain.experimental.FirstFitPackIterDataset(
      ds,
      length_struct={"tokens": seq_len},
      num_packing_bins=batch_size,
      seed=seed,
      shuffle_bins=train,
      padding_struct={"tokens": tok.pad_id},
  )
  return _rows_of_batches(ds, batch_size, rows).map(_clm_batch)


def _clm_batch(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  segment_ids_BxL = packed["tokens_segment_ids"].astype(np.int32)
  batch = clm.shift_targets(packed["tokens"], segment_ids_BxL)
  batch["segment_ids"] = segment_ids_BxL
  batch["positions"] = packed["tokens_positions"].astype(np.int32)
  return batch


def _pad(values: np.ndarray, length: int, pad_id: int) -> tuple[np.ndarray, ...]:
  """Returns (padded values, segment ids 1/0, positions) as int32 [length] arrays."""
  n = values.size
  padded = np.full(length, pad_id, np.int32)
  padded[:n] = values
  segment_ids = (np.arange(length) < n).astype(np.int32)
  positions = np.where(segment_ids, np.arange(length), 0).astype(np.int32)
  return padded, segment_ids, positions


def _span_dataset(
    indices,
    docs: _Documents,
    tok: Any,
    *,
    seq_len: int,
    target_len: int | None,
    noise_density: float,
    mean_noise_span_length: float,
) -> grain.IterDataset:
  tokens_length, min_target_len = span_corruption.random_spans_helper(
      seq_len, noise_density, mean_noise_span_length
  )
  if target_len is None:
    target_len = min_target_len
  elif target_len < min_target_len:
    raise ValueError(
        f"target_len={target_len} is shorter than the {min_target_len} tokens"
        f" span corruption can produce for seq_len={seq_len}"
    )
  spans = span_corruption.num_noise_spans(tokens_length, noise_density, mean_noise_span_length)
  if spans > len(tok.sentinel_ids):
    raise ValueError(
        f"seq_len={seq_len} gives {spans} noise spans but the tokenizer has only"
        f" {len(tok.sentinel_ids)} sentinel_ids"
    )
  sentinel_ids: Sequence[int] = tuple(tok.sentinel_ids)

  def example(tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    pair = span_corruption.corrupt_spans(
        tokens,
        rng,
        sentinel_ids=sentinel_ids,
        eos_id=tok.eos_id,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
    )
    enc, enc_seg, enc_pos = _pad(pair["inputs"], seq_len, tok.pad_id)
    dec_targets, dec_seg, dec_pos = _pad(pair["targets"], target_len, tok.pad_id)
    dec_inputs = np.concatenate([[tok.pad_id], dec_targets[:-1]]).astype(np.int32)
    dec_inputs[dec_seg == 0] = tok.pad_id
    return {
        "encoder_inputs": enc,
        "encoder_segment_ids": enc_seg,
        "encoder_positions": enc_pos,
        "decoder_inputs": dec_inputs,
        "decoder_targets": dec_targets,
        "decoder_weights": dec_seg.astype(np.float32),
        "decoder_segment_ids": dec_seg,
        "decoder_positions": dec_pos,
    }

  def make_examples(doc_index: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    tokens = np.asarray(docs.tokens(doc_index), np.int32)
    # As T5's split_tokens: long documents become several raw chunks of tokens_length.
    return [
        example(tokens[i : i + tokens_length], rng) for i in range(0, tokens.size, tokens_length)
    ]

  ds = indices.random_map(make_examples).to_iter_dataset(_READ_OPTIONS)
  return grain.experimental.FlatMapIterDataset(ds, _Unlist())


def make_pretrain_dataset(
    objective: str,
    source: Any,
    tokenizer: Any,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    train: bool,
    nsp: bool = False,
    mask_prob: float = 0.15,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    target_len: int | None = None,
    rows: Sequence[int] | None = None,
) -> grain.IterDataset:
  """Fixed-shape numpy batches for `objective`: `rows` (default all) of each global batch of
  `batch_size`, this process's share (Trainer.host_rows).

  Train repeats forever with fresh shuffling and corruption each epoch; eval is
  one pass with fixed, seeded corruption and drops the last partial batch.
  `iter(...)` gives a checkpointable grain DatasetIterator.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")
  if nsp and objective != "mlm":
    raise ValueError(f"nsp=True only applies to objective='mlm', not {objective!r}")
  if seq_len < 4:
    raise ValueError(f"seq_len={seq_len} must be >= 4")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be positive")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed={seed} must be in [0, 2**32)")
  rows = _check_rows(rows, batch_size)
  docs = _Documents(source, tokenizer)
  indices = _document_indices(len(docs), seed=seed, train=train)
  if objective == "clm":
    return _clm_dataset(
        indices,
        docs,
        tokenizer,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        train=train,
        rows=rows,
    )
  if objective == "mlm":
    examples = _mlm_examples(
        indices, docs, tokenizer, seq_len=seq_len, nsp=nsp, mask_prob=mask_prob
    )
    # One element per batch: prefetch about as many examples as the per-example pipelines.
    options = grain.ReadOptions(
        num_threads=_READ_OPTIONS.num_threads,
        prefetch_buffer_size=max(2, _READ_OPTIONS.prefetch_buffer_size // len(rows)),
    )
    return _BatchRows(examples, batch_size, rows).to_iter_dataset(options)
  ds = _span_dataset(
      indices,
      docs,
      tokenizer,
      seq_len=seq_len,
      target_len=target_len,
      noise_density=noise_density,
      mean_noise_span_length=mean_noise_span_length,
  )
  return _rows_of_batches(ds, batch_size, rows)


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
