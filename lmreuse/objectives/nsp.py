"""Next-sentence prediction (BERT): segment pairs on the host, a 2-way loss on device.

`make_pair` follows BERT's `create_instances_from_document` for one instance:
A is a prefix of consecutive segments from a random start, B is the true
continuation with probability 0.5, else text from another document; the pair
is then cut by `truncate_seq_pair` (one token at a time from the front or back
of the longer side). One deviation: a one-segment document is split at a
random token so it can still give positives; BERT always makes it a negative,
which skews the labels on corpora of short documents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.train import losses
from lmreuse.train.trainer import MetricPairs

RandomSegmentFn = Callable[[np.random.Generator, int], list[int]]


def truncate_seq_pair(
    a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
  """Removes tokens from the longer side, at its front or back at random, until it fits."""
  excess = len(a) + len(b) - max_tokens
  if excess <= 0:
    return a, b
  from_front = rng.random(excess) < 0.5
  a_lo, a_hi, b_lo, b_hi = 0, len(a), 0, len(b)
  for front in from_front:
    if a_hi - a_lo > b_hi - b_lo:
      a_lo, a_hi = (a_lo + 1, a_hi) if front else (a_lo, a_hi - 1)
    else:
      b_lo, b_hi = (b_lo + 1, b_hi) if front else (b_lo, b_hi - 1)
  return a[a_lo:a_hi], b[b_lo:b_hi]


def _concat(segments: Sequence[Sequence[int]]) -> list[int]:
  return [t for segment in segments for t in segment]


def make_pair(
    doc_segments: Sequence[Sequence[int]],
    doc_index: int,
    rng: np.random.Generator,
    *,
    random_segment_fn: RandomSegmentFn,
    max_tokens: int,
) -> tuple[list[int], list[int], int]:
  """Builds one (A, B, is_next) pair from a tokenized document.

  `random_segment_fn(rng, doc_index)` must return token ids of consecutive
  segments from a random document other than `doc_index` (it is only called
  for negatives). `max_tokens` bounds len(A) + len(B), i.e. seq_len - 3 for
  `[CLS] A [SEP] B [SEP]`. `is_next` is 1 when B continues A, else 0.
  """
  if max_tokens < 2:
    raise ValueError(f"max_tokens={max_tokens} must be >= 2 to hold both segments")
  segments = [list(s) for s in doc_segments if len(s)]
  if len(segments) >= 2:
    # Start where at least one segment follows, so a true continuation exists.
    start = int(rng.integers(0, len(segments) - 1))
    end, length = start, 0
    while end < len(segments) and (length < max_tokens or end - start < 2):
      length += len(segments[end])
      end += 1
    chunk = segments[start:end]
    a_end = int(rng.integers(1, len(chunk)))
    a, continuation = _concat(chunk[:a_end]), _concat(chunk[a_end:])
  elif segments and len(segments[0]) >= 2:
    cut = int(rng.integers(1, len(segments[0])))
    a, continuation = segments[0][:cut], segments[0][cut:]
  else:
    a, continuation = _concat(segments), []
  if continuation and rng.random() >= 0.5:
    b, is_next = continuation, 1
  else:
    b, is_next = list(random_segment_fn(rng, doc_index)), 0
  a, b = truncate_seq_pair(a, b, max_tokens, rng)
  return a, b, is_next


def pack_pair(
    a: Sequence[int], b: Sequence[int], *, cls_id: int, sep_id: int, pad_id: int, seq_len: int
) -> dict[str, np.ndarray]:
  """Lays out `[CLS] a [SEP] b [SEP]` (or `[CLS] a [SEP]` when b is empty), padded to seq_len.

  Returns int32 `tokens`, `token_types` (0 for CLS/A/SEP, 1 for B/SEP),
  `segment_ids` (1 real, 0 padding) and `positions` (0.. on real tokens, 0 on padding).
  """
  first = [cls_id, *a, sep_id]
  second = [*b, sep_id] if len(b) else []
  length = len(first) + len(second)
  if length > seq_len:
    raise ValueError(
        f"seq_len={seq_len} is too short for len(a)={len(a)} + len(b)={len(b)}"
        f" plus {length - len(a) - len(b)} special tokens"
    )
  tokens = np.full(seq_len, pad_id, np.int32)
  tokens[:length] = first + second
  token_types = np.zeros(seq_len, np.int32)
  token_types[len(first) : length] = 1
  segment_ids = np.zeros(seq_len, np.int32)
  segment_ids[:length] = 1
  positions = np.zeros(seq_len, np.int32)
  positions[:length] = np.arange(length, dtype=np.int32)
  return {
      "tokens": tokens,
      "token_types": token_types,
      "segment_ids": segment_ids,
      "positions": positions,
  }


def loss(nsp_logits_Bx2: jax.Array, labels_B: jax.Array) -> tuple[jax.Array, MetricPairs]:
  """Mean 2-way cross-entropy in fp32 over the batch, plus accuracy, each example weighing 1."""
  return losses.weighted_cross_entropy(
      nsp_logits_Bx2, labels_B, jnp.ones(labels_B.shape, jnp.float32), prefix="nsp"
  )
