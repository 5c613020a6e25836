"""Causal language modelling on packed rows: packed batches, next-token targets and loss.

Rows hold several documents (segment ids 1, 2, ... and 0 for padding). A
position predicts the next token only when that token belongs to the same
document, so no loss crosses a document boundary, padding, or the row end.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.models.config import TransformerConfig
from lmreuse.models.transformer import Decoder
from lmreuse.objectives import base
from lmreuse.train import losses
from lmreuse.train.trainer import Program

if TYPE_CHECKING:
  import grain


def shift_targets(tokens_BxL: np.ndarray, segment_ids_BxL: np.ndarray) -> dict[str, np.ndarray]:
  """Returns `inputs`, `targets` (tokens[t + 1]) and float32 `weights` for packed rows."""
  tokens_BxL = np.asarray(tokens_BxL)
  segment_ids_BxL = np.asarray(segment_ids_BxL)
  if tokens_BxL.ndim != 2 or tokens_BxL.shape != segment_ids_BxL.shape:
    raise ValueError(
        f"tokens_BxL {tokens_BxL.shape} and segment_ids_BxL {segment_ids_BxL.shape}"
        " must be 2-D with equal shapes"
    )
  batch = tokens_BxL.shape[0]
  targets_BxL = np.concatenate([tokens_BxL[:, 1:], np.zeros((batch, 1), tokens_BxL.dtype)], axis=1)
  same_doc_BxLm1 = (segment_ids_BxL[:, 1:] == segment_ids_BxL[:, :-1]) & (
      segment_ids_BxL[:, :-1] > 0
  )
  weights_BxL = np.concatenate([same_doc_BxLm1, np.zeros((batch, 1), bool)], axis=1)
  return {
      "inputs": tokens_BxL.astype(np.int32),
      "targets": targets_BxL.astype(np.int32),
      "weights": weights_BxL.astype(np.float32),
  }


def dataset(docs: base.Documents, objective: Any, data: Any) -> grain.IterDataset:
  """Documents (+ EOS) first-fit packed into rows; one longer than seq_len is cut into chunks."""
  del objective  # clm has no options of its own
  tok, seq_len = docs.tokenizer, data.seq_len

  def chunks(doc_index: int) -> list[np.ndarray]:
    tokens = docs.tokens(doc_index)
    if not tokens:
      return []
    tokens = np.asarray(tokens + [tok.eos_id], np.int32)
    return [tokens[i : i + seq_len] for i in range(0, tokens.size, seq_len)]

  return docs.packed(chunks, length=seq_len, pad_id=tok.pad_id, finish=_batch)


def _batch(packed: base.Example) -> base.Example:
  batch = shift_targets(packed["tokens"], packed["segment_ids"])
  batch["segment_ids"] = packed["segment_ids"]
  batch["positions"] = packed["positions"]
  return batch


# Next-token cross-entropy: (token-weighted mean in fp32, {"clm_loss", "clm_accuracy"} pairs).
loss = functools.partial(losses.weighted_cross_entropy, prefix="clm")


class GptPretrainer(nn.Module):
  """Causal decoder with its LM head: GPT's pretraining model, and a prefix LM's (which reads
  batch["prefix"])."""

  cfg: TransformerConfig

  def setup(self):
    self.backbone = Decoder(self.cfg)

  def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
    logits_BxLxV, _ = self.backbone(
        batch["inputs"],
        segment_ids_BxL=batch["segment_ids"],
        positions_BxL=batch["positions"],
        prefix_BxL=batch.get("prefix"),
        deterministic=deterministic,
    )
    return logits_BxLxV


def decoder_program(
    model_cfg: TransformerConfig,
    data: Any,
    *,
    loss: Callable,
    inputs: tuple[str, ...] = ("inputs", "segment_ids", "positions"),
) -> Program:
  """A decoder LM's Program: next-token `loss` on batch targets/weights, reading `inputs`."""
  example = {k: jnp.zeros((1, data.seq_len), jnp.int32) for k in inputs}
  return base.token_loss_program(
      GptPretrainer(model_cfg),
      example,
      loss=loss,
      targets="targets",
      weights="weights",
      tokens_per_example=data.seq_len,
  )


def program(model_cfg: TransformerConfig, objective: Any, data: Any) -> Program:
  del objective  # clm has no options of its own
  return decoder_program(model_cfg, data, loss=loss)


OBJECTIVE = base.Objective(
    name="clm",
    architecture="decoder",
    program=program,
    dataset=dataset,
    model={"prefix_lm": False},  # a causal LM: its fine-tuning must not open a prefix
)
