"""T5 span corruption, ported to numpy from t5/data/preprocessors.py.

`random_spans_noise_mask`, `random_spans_helper` and
`noise_span_to_unique_sentinel` follow the T5 code line by line (its
`_random_segmentation` shuffle becomes `rng.permutation`). Sentinels are taken
from `tok.sentinel_ids` in order (span k -> sentinel_ids[k]) instead of T5's
"count down from the last vocabulary id". Inputs and targets both end with EOS:

    tokens   a b c d e f g h
    mask     . . X X . . . X
    inputs   a b <s0> e f g <s1> EOS
    targets  <s0> c d <s1> h EOS
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.models.config import TransformerConfig
from lmreuse.models.transformer import EncoderDecoder
from lmreuse.objectives import base
from lmreuse.train import losses
from lmreuse.train.trainer import Program

if TYPE_CHECKING:
  import grain


def random_spans_helper(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
  """Returns (tokens_length, targets_length) so a raw chunk fills `inputs_length` exactly.

  Counts one sentinel per noise span in both inputs and targets and one EOS
  each, as T5's `random_spans_helper` with extra_tokens_per_span_* = 1.
  """
  if inputs_length < 2:
    raise ValueError(f"inputs_length={inputs_length} must be >= 2 (tokens plus EOS)")
  if not 0.0 < noise_density < 1.0:
    raise ValueError(f"noise_density={noise_density} must be in (0, 1)")
  if mean_noise_span_length < 1.0:
    raise ValueError(f"mean_noise_span_length={mean_noise_span_length} must be >= 1")

  def lengths(tokens_length: int) -> tuple[int, int]:
    num_noise_tokens = round(tokens_length * noise_density)
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    num_noise_spans = round(num_noise_tokens / mean_noise_span_length)
    return (
        num_nonnoise_tokens + num_noise_spans + 1,
        num_noise_tokens + num_noise_spans + 1,
    )

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  inputs_length, targets_length = lengths(tokens_length)
  # T5's hack: with density 0.5 prefer targets no longer than the (round) inputs length.
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def num_noise_spans(length: int, noise_density: float, mean_noise_span_length: float) -> int:
  """How many noise spans `random_spans_noise_mask` makes for a sequence of `length`."""
  length = max(length, 2)
  num_noise_tokens = min(max(round(length * noise_density), 1), length - 1)
  return max(round(num_noise_tokens / mean_noise_span_length), 1)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
  """Splits num_items into num_segments non-empty parts; all splits equally likely."""
  first_in_segment = np.concatenate(
      [[0], rng.permutation(np.arange(num_items - 1) < num_segments - 1)]
  ).astype(np.int64)
  segment_id = np.cumsum(first_in_segment)
  return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(
    length: int,
    rng: np.random.Generator,
    *,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> np.ndarray:
  """Boolean [length] mask of random noise spans, alternating non-noise then noise.

  The number of noise tokens and spans is deterministic (round(length *
  density), round(noise / mean_span)); only where the spans fall is random.
  """
  if noise_density == 0.0:
    return np.zeros(length, bool)
  orig_length = length
  length = max(length, 2)  # Avoid degeneracy, as T5.
  num_noise_tokens = min(max(round(length * noise_density), 1), length - 1)
  num_nonnoise_tokens = length - num_noise_tokens
  spans = num_noise_spans(length, noise_density, mean_noise_span_length)
  # T5 assumes enough non-noise tokens for the spans; clamp so tiny inputs cannot fail.
  spans = min(spans, num_nonnoise_tokens)
  noise_span_lengths = _random_segmentation(num_noise_tokens, spans, rng)
  nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, spans, rng)
  interleaved_lengths = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).reshape(-1)
  is_noise = np.repeat(np.tile([False, True], spans), interleaved_lengths)
  return is_noise[:orig_length]


def noise_span_to_unique_sentinel(
    tokens: np.ndarray, noise_mask: np.ndarray, sentinel_ids: Sequence[int]
) -> np.ndarray:
  """Replaces the k-th run of noise tokens with sentinel_ids[k]."""
  prev_token_is_noise = np.concatenate([[False], noise_mask[:-1]])
  first_noise_tokens = noise_mask & ~prev_token_is_noise
  subsequent_noise_tokens = noise_mask & prev_token_is_noise
  span_index = np.cumsum(first_noise_tokens) - 1
  num_spans = int(first_noise_tokens.sum())
  if num_spans > len(sentinel_ids):
    raise ValueError(
        f"{num_spans} noise spans need more sentinels than len(sentinel_ids)={len(sentinel_ids)}"
    )
  sentinels = np.asarray(sentinel_ids, tokens.dtype)[np.clip(span_index, 0, None)]
  tokens = np.where(first_noise_tokens, sentinels, tokens)
  return tokens[~subsequent_noise_tokens]


def nonnoise_span_to_unique_sentinel(
    tokens: np.ndarray, noise_mask: np.ndarray, sentinel_ids: Sequence[int]
) -> np.ndarray:
  return noise_span_to_unique_sentinel(tokens, ~noise_mask, sentinel_ids)


def corrupt_spans(
    tokens: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    *,
    sentinel_ids: Sequence[int],
    eos_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> dict[str, np.ndarray]:
  """Returns 1-D int32 `inputs` and `targets` (both ending in EOS) for one raw chunk."""
  tokens = np.asarray(tokens, np.int32)
  noise_mask = random_spans_noise_mask(
      tokens.size, rng, noise_density=noise_density, mean_noise_span_length=mean_noise_span_length
  )
  eos = np.array([eos_id], np.int32)
  inputs = noise_span_to_unique_sentinel(tokens, noise_mask, sentinel_ids)
  targets = nonnoise_span_to_unique_sentinel(tokens, noise_mask, sentinel_ids)
  return {"inputs": np.concatenate([inputs, eos]), "targets": np.concatenate([targets, eos])}


def _pad(values: np.ndarray, length: int, pad_id: int) -> tuple[np.ndarray, ...]:
  """Returns (padded values, segment ids 1/0, positions) as int32 [length] arrays."""
  n = values.size
  padded = np.full(length, pad_id, np.int32)
  padded[:n] = values
  segment_ids = (np.arange(length) < n).astype(np.int32)
  positions = np.where(segment_ids, np.arange(length), 0).astype(np.int32)
  return padded, segment_ids, positions


def target_length(objective: Any, data: Any) -> int:
  """The decoder length: config.data.target_len, else the longest targets seq_len can give."""
  if data.target_len:
    return data.target_len
  return random_spans_helper(
      data.seq_len, objective.noise_density, objective.mean_noise_span_length
  )[1]


def _check_lengths(
    data: Any, target_len: int, min_target_len: int, spans: int, sentinels: int
) -> None:
  if target_len < min_target_len:
    raise ValueError(
        f"config.data.target_len={target_len} is shorter than the {min_target_len} tokens"
        f" span corruption can produce for seq_len={data.seq_len}"
    )
  if spans > sentinels:
    raise ValueError(
        f"config.data.seq_len={data.seq_len} gives {spans} noise spans but the tokenizer has"
        f" only {sentinels} sentinel_ids"
    )


def dataset(docs: base.Documents, objective: Any, data: Any) -> grain.IterDataset:
  """Raw chunks of each document (several for a long one, as T5's split_tokens), corrupted."""
  tok, seq_len = docs.tokenizer, data.seq_len
  density, mean = objective.noise_density, objective.mean_noise_span_length
  tokens_length, min_target_len = random_spans_helper(seq_len, density, mean)
  target_len = target_length(objective, data)
  spans = num_noise_spans(tokens_length, density, mean)
  _check_lengths(data, target_len, min_target_len, spans, len(tok.sentinel_ids))
  sentinel_ids: Sequence[int] = tuple(tok.sentinel_ids)

  def example(tokens: np.ndarray, rng: np.random.Generator) -> base.Example:
    pair = corrupt_spans(
        tokens,
        rng,
        sentinel_ids=sentinel_ids,
        eos_id=tok.eos_id,
        noise_density=density,
        mean_noise_span_length=mean,
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

  def make_examples(doc_index: int, rng: np.random.Generator) -> list[base.Example]:
    tokens = np.asarray(docs.tokens(doc_index), np.int32)
    return [
        example(tokens[i : i + tokens_length], rng) for i in range(0, tokens.size, tokens_length)
    ]

  return docs.example_lists(make_examples)


# Decoder cross-entropy over real target tokens: a token-weighted mean in fp32, with
# {"span_loss", "span_accuracy"} pairs.
loss = functools.partial(losses.weighted_cross_entropy, prefix="span")


class T5Pretrainer(nn.Module):
  """Encoder-decoder with its LM head: T5's pretraining model."""

  cfg: TransformerConfig

  def setup(self):
    self.backbone = EncoderDecoder(self.cfg)

  def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
    logits_BxTxV, _ = self.backbone(
        batch["encoder_inputs"],
        batch["decoder_inputs"],
        enc_segment_ids_BxS=batch["encoder_segment_ids"],
        enc_positions_BxS=batch["encoder_positions"],
        dec_segment_ids_BxT=batch["decoder_segment_ids"],
        dec_positions_BxT=batch["decoder_positions"],
        deterministic=deterministic,
    )
    return logits_BxTxV


def program(model_cfg: TransformerConfig, objective: Any, data: Any) -> Program:
  model = T5Pretrainer(model_cfg)
  target_len = target_length(objective, data)
  example = {
      **{
          k: jnp.zeros((1, data.seq_len), jnp.int32)
          for k in ("encoder_inputs", "encoder_segment_ids", "encoder_positions")
      },
      **{
          k: jnp.zeros((1, target_len), jnp.int32)
          for k in ("decoder_inputs", "decoder_segment_ids", "decoder_positions")
      },
  }

  return base.token_loss_program(
      model,
      example,
      loss=loss,
      targets="decoder_targets",
      weights="decoder_weights",
      tokens_per_example=data.seq_len + target_len,
  )


OBJECTIVE = base.Objective(
    name="span_corruption", architecture="encoder_decoder", program=program, dataset=dataset
)
