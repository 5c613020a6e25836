"""Random but well-formed batches for each objective (no tokenizer or corpus needed)."""

import numpy as np

VOCAB = 128


def exact_selection(rng: np.random.Generator, batch_size: int, length: int) -> np.ndarray:
  """round(15%) of the real positions per row, as mlm.mask_tokens selects (never padding)."""
  count = max(1, round(0.15 * length))
  weights = np.zeros((batch_size, length + 3), np.float32)
  for row in weights:
    row[rng.permutation(length)[:count]] = 1.0
  return weights


def batch(
    objective: str, *, batch_size: int, seq_len: int, seed: int = 0, vocab: int = VOCAB
) -> dict:
  rng = np.random.default_rng(seed)
  tokens = lambda length: rng.integers(6, vocab, (batch_size, length)).astype(np.int32)
  positions = lambda length: np.tile(np.arange(length, dtype=np.int32), (batch_size, 1))
  segments = (
      lambda length: np.where(np.arange(length) < length - 3, 1, 0)
      .astype(np.int32)[None]
      .repeat(batch_size, 0)
  )
  if objective in ("mlm", "electra"):
    return dict(
        inputs=tokens(seq_len),
        token_types=(positions(seq_len) >= seq_len // 2).astype(np.int32),
        segment_ids=segments(seq_len),
        positions=positions(seq_len),
        mlm_targets=tokens(seq_len),
        mlm_weights=exact_selection(rng, batch_size, seq_len - 3),
        nsp_labels=rng.integers(0, 2, (batch_size,)).astype(np.int32),
    )
  if objective in ("clm", "prefix_lm"):
    rows = dict(
        inputs=tokens(seq_len),
        targets=tokens(seq_len),
        weights=segments(seq_len).astype(np.float32),
        segment_ids=segments(seq_len),
        positions=positions(seq_len),
    )
    if objective == "prefix_lm":  # a random prefix of 1..n-1 of each row's n real tokens
      lengths = rng.integers(1, seq_len - 3, (batch_size, 1))
      rows["prefix"] = (positions(seq_len) < lengths).astype(np.int32)
    return rows
  target_len = seq_len // 4
  return dict(
      encoder_inputs=tokens(seq_len),
      encoder_segment_ids=segments(seq_len),
      encoder_positions=positions(seq_len),
      decoder_inputs=tokens(target_len),
      decoder_targets=tokens(target_len),
      decoder_weights=segments(target_len).astype(np.float32),
      decoder_segment_ids=segments(target_len),
      decoder_positions=positions(target_len),
  )
