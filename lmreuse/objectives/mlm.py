"""Masked language modelling (BERT): host-side batches (NSP pairs, masking), the model, the loss.

Selection is exactly proportional per row, as in BERT's
`create_masked_lm_predictions`: a row with `n` maskable tokens gets
`max(1, round(n * mask_prob))` predictions (0 when `n == 0` or `mask_prob == 0`). Unlike BERT we
count only non-special tokens (so [CLS]/[SEP]/padding never inflate the
budget). Exact counts keep the loss denominator steady from batch to batch,
which Bernoulli selection would not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.models.config import TransformerConfig
from lmreuse.models.heads import Classifier, MLMHead, Pooler
from lmreuse.models.transformer import Encoder
from lmreuse.objectives import base, nsp
from lmreuse.train import losses
from lmreuse.train.trainer import MetricPairs, Program

if TYPE_CHECKING:
  import grain


def _sorted_specials(special_ids: np.ndarray, mask_id: int, vocab_size: int) -> np.ndarray:
  specials = np.unique(np.append(np.asarray(special_ids, np.int64), mask_id))
  if specials.size and (specials[0] < 0 or specials[-1] >= vocab_size):
    raise ValueError(f"special_ids={specials.tolist()} must lie in [0, vocab_size={vocab_size})")
  if specials.size >= vocab_size:
    raise ValueError(
        f"vocab_size={vocab_size} leaves no non-special ids to sample from"
        f" ({specials.size} specials)"
    )
  return specials


def _nth_non_special(rank: np.ndarray, sorted_specials: np.ndarray) -> np.ndarray:
  """Maps r in [0, V - n_specials) to the r-th non-special id, vectorised.

  The r-th non-special id is r plus the number of specials s_j with
  s_j - j <= r (specials sorted, unique), so no table of size V is needed.
  """
  shifted = sorted_specials - np.arange(sorted_specials.size)
  return rank + np.searchsorted(shifted, rank, side="right")


def mask_tokens(
    tokens_BxL: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: np.ndarray,
    mask_prob: float = 0.15,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
) -> dict[str, np.ndarray]:
  """Selects tokens to predict and corrupts them 80/10/10 (mask/random/keep).

  Returns `inputs` (int32, corrupted), `mlm_targets` (int32, the original ids
  everywhere) and `mlm_weights` (float32, 1.0 exactly at selected positions).
  Special ids (padding included) are never selected and random replacements
  are drawn uniformly from the non-special ids.
  """
  tokens_BxL = np.asarray(tokens_BxL)
  _check_mask_args(tokens_BxL, mask_prob, mask_token_prob, random_token_prob)
  specials = _sorted_specials(special_ids, mask_id, vocab_size)
  selected_BxL = _select(~np.isin(tokens_BxL, specials), mask_prob, rng)
  inputs_BxL = _corrupt(
      tokens_BxL,
      selected_BxL,
      rng,
      mask_id=mask_id,
      vocab_size=vocab_size,
      specials=specials,
      mask_token_prob=mask_token_prob,
      random_token_prob=random_token_prob,
  )
  return {
      "inputs": inputs_BxL.astype(np.int32),
      "mlm_targets": tokens_BxL.astype(np.int32),
      "mlm_weights": selected_BxL.astype(np.float32),
  }


def _check_mask_args(
    tokens_BxL: np.ndarray, mask_prob: float, mask_token_prob: float, random_token_prob: float
) -> None:
  if tokens_BxL.ndim != 2:
    raise ValueError(f"tokens_BxL must be 2-D, got shape {tokens_BxL.shape}")
  if not 0.0 <= mask_prob <= 1.0:
    raise ValueError(f"mask_prob={mask_prob} must be in [0, 1]")
  if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1:
    raise ValueError(
        f"mask_token_prob={mask_token_prob} and random_token_prob={random_token_prob}"
        " must be non-negative and sum to at most 1"
    )


def _select(maskable_BxL: np.ndarray, mask_prob: float, rng: np.random.Generator) -> np.ndarray:
  """Exactly max(1, round(n * mask_prob)) of each row's n maskable positions, uniformly."""
  batch, length = maskable_BxL.shape
  num_maskable_B = maskable_BxL.sum(axis=1)
  num_select_B = np.where(
      (num_maskable_B > 0) & (mask_prob > 0), np.maximum(1, np.round(num_maskable_B * mask_prob)), 0
  ).astype(np.int64)
  # Rank maskable positions by a random score; the lowest `num_select` win.
  scores_BxL = np.where(maskable_BxL, rng.random((batch, length)), 2.0)
  order_BxL = np.argsort(scores_BxL, axis=1, kind="stable")
  selected_BxL = np.zeros((batch, length), bool)
  np.put_along_axis(
      selected_BxL, order_BxL, np.arange(length)[None, :] < num_select_B[:, None], axis=1
  )
  return selected_BxL


def _corrupt(
    tokens_BxL: np.ndarray,
    selected_BxL: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    specials: np.ndarray,
    mask_token_prob: float,
    random_token_prob: float,
) -> np.ndarray:
  """The inputs: each selected token becomes [MASK], a random non-special id, or stays."""
  batch, length = tokens_BxL.shape
  action_BxL = rng.random((batch, length))
  use_mask_BxL = selected_BxL & (action_BxL < mask_token_prob)
  use_random_BxL = (
      selected_BxL
      & (action_BxL >= mask_token_prob)
      & (action_BxL < mask_token_prob + random_token_prob)
  )
  random_ids_BxL = _nth_non_special(
      rng.integers(0, vocab_size - specials.size, size=(batch, length)), specials
  )
  inputs_BxL = np.where(use_mask_BxL, mask_id, tokens_BxL)
  return np.where(use_random_BxL, random_ids_BxL, inputs_BxL)


def loss(
    logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array
) -> tuple[jax.Array, MetricPairs]:
  """MLM loss: cross-entropy averaged over the selected (weighted) positions."""
  return losses.weighted_cross_entropy(logits_BxLxV, targets_BxL, weights_BxL, prefix="mlm")


def max_predictions(seq_len: int, mask_prob: float) -> int:
  """Most positions `mask_tokens` selects in a row of seq_len: max(1, round(n · mask_prob))."""
  return max(1, int(np.round(seq_len * mask_prob)))


def selected_positions(weights_BxL: jax.Array, num_predictions: int) -> jax.Array:
  """[B, P] positions of each row's selected tokens (weight 1) first, in order; the rest of the
  P slots point at weight-0 positions."""
  return jnp.argsort(-weights_BxL, axis=1, stable=True)[:, :num_predictions]


def gather_predictions(values_BxL: jax.Array, positions_BxP: jax.Array) -> jax.Array:
  index = positions_BxP.reshape(positions_BxP.shape + (1,) * (values_BxL.ndim - 2))
  return jnp.take_along_axis(values_BxL, index, axis=1)


class BertPretrainer(nn.Module):
  """Encoder + MLM head (+ pooler and NSP classifier): BERT's pretraining model.

  The MLM head runs only on the (at most `num_predictions`) selected positions of each row,
  as BERT's gather_indexes does: the vocabulary projection is the largest matmul, and ~85% of
  its rows would carry zero loss weight.
  """

  cfg: TransformerConfig
  nsp: bool
  num_predictions: int

  def setup(self):
    self.backbone = Encoder(self.cfg)
    self.mlm_head = MLMHead(self.cfg)
    if self.nsp:
      self.pooler = Pooler(self.cfg)
      self.nsp_head = Classifier(self.cfg, num_classes=2)

  def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> dict:
    hidden_BxLxD = self.backbone(
        batch["inputs"],
        segment_ids_BxL=batch["segment_ids"],
        positions_BxL=batch["positions"],
        token_types_BxL=batch["token_types"],
        deterministic=deterministic,
    )
    positions_BxP = selected_positions(batch["mlm_weights"], self.num_predictions)
    out = {
        "mlm_logits": self.mlm_head(
            gather_predictions(hidden_BxLxD, positions_BxP), self.backbone.stack.token_embed
        ),
        "mlm_positions": positions_BxP,
    }
    if self.nsp:
      out["nsp_logits"] = self.nsp_head(self.pooler(hidden_BxLxD))
    return out


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


def _random_segments_fn(docs: base.Documents, max_tokens: int) -> nsp.RandomSegmentFn:
  """NSP negatives: consecutive segments, from a random start, of a random other document."""

  def random_segments(rng: np.random.Generator, doc_index: int) -> list[int]:
    other = int(rng.integers(len(docs) - 1))
    other += other >= doc_index
    segments = [s for s in docs.segments(other) if s]
    if not segments:
      return []
    start, out = int(rng.integers(len(segments))), []
    for segment in segments[start:]:
      out.extend(segment)
      if len(out) >= max_tokens:
        break
    return out

  return random_segments


def dataset(docs: base.Documents, objective: Any, data: Any) -> grain.IterDataset:
  """BERT's rows: config.objective's nsp and mask_prob, selected tokens corrupted 80/10/10."""
  return masked_dataset(docs, data, with_nsp=objective.nsp, mask_prob=objective.mask_prob)


def masked_dataset(
    docs: base.Documents,
    data: Any,
    *,
    with_nsp: bool,
    mask_prob: float,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
) -> grain.IterDataset:
  """One masked row per document, `[CLS] A [SEP] B [SEP]` NSP pairs or else `[CLS] A [SEP]`;
  `mask_tokens` selects and corrupts its tokens at the given rates."""
  tok, seq_len = docs.tokenizer, data.seq_len
  if with_nsp and len(docs) < 2:
    raise ValueError(f"nsp=True needs a source with >= 2 documents, got {len(docs)}")
  special_ids = np.asarray(tok.special_ids)
  max_pair_tokens = seq_len - 3
  random_segments = _random_segments_fn(docs, max_pair_tokens)

  def make_example(doc_index: int, rng: np.random.Generator) -> base.Example:
    segments = docs.segments(doc_index)
    if with_nsp:
      a, b, is_next = nsp.make_pair(
          segments, doc_index, rng, random_segment_fn=random_segments, max_tokens=max_pair_tokens
      )
    else:
      a, b = _fill_greedily(segments, seq_len - 2, rng), []
    row = nsp.pack_pair(
        a, b, cls_id=tok.cls_id, sep_id=tok.sep_id, pad_id=tok.pad_id, seq_len=seq_len
    )
    masked = mask_tokens(
        row["tokens"][None],
        rng,
        mask_id=tok.mask_id,
        vocab_size=tok.vocab_size,
        special_ids=special_ids,
        mask_prob=mask_prob,
        mask_token_prob=mask_token_prob,
        random_token_prob=random_token_prob,
    )
    example = {
        "inputs": masked["inputs"][0],
        "token_types": row["token_types"],
        "segment_ids": row["segment_ids"],
        "positions": row["positions"],
        "mlm_targets": masked["mlm_targets"][0],
        "mlm_weights": masked["mlm_weights"][0],
    }
    if with_nsp:
      example["nsp_labels"] = np.int32(is_next)
    return example

  return docs.examples(make_example)


def program(model_cfg: TransformerConfig, objective: Any, data: Any) -> Program:
  model = BertPretrainer(
      model_cfg,
      nsp=objective.nsp,
      num_predictions=max_predictions(data.seq_len, objective.mask_prob),
  )
  example = {
      k: jnp.zeros((1, data.seq_len), jnp.int32)
      for k in ("inputs", "segment_ids", "positions", "token_types")
  }
  example["mlm_weights"] = jnp.zeros((1, data.seq_len), jnp.float32)

  def loss_fn(params, batch, rng, train):
    out = model.apply(
        {"params": params}, batch, deterministic=not train, rngs=base.apply_rngs(rng, train)
    )
    positions = out["mlm_positions"]
    total, pairs = loss(
        out["mlm_logits"],
        gather_predictions(batch["mlm_targets"], positions),
        gather_predictions(batch["mlm_weights"], positions),
    )
    if objective.nsp:
      nsp_loss, nsp_pairs = nsp.loss(out["nsp_logits"], batch["nsp_labels"])
      total = total + nsp_loss
      pairs.update(nsp_pairs)
    return total, pairs

  return Program(
      init_params=base.init_params_fn(model, example),
      loss_fn=loss_fn,
      tokens_per_example=data.seq_len,
  )


OBJECTIVE = base.Objective(
    name="mlm", architecture="encoder", program=program, dataset=dataset, flags=("nsp",)
)
