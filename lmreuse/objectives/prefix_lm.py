"""Prefix language modelling (Raffel et al. 2020; Wang et al. 2022): a decoder that attends
bidirectionally over a random prefix of each row and causally after it, trained to continue the
prefix.

One document per row (its first seq_len tokens, EOS included): the prefix length is drawn
uniformly from 1..n-1 for a row of n tokens, and only the tokens after the prefix are predicted,
so the prefix is context, as a task's input is when the model is fine-tuned
(cfg.prefix_lm: lmreuse/tasks/encoding.py marks the whole input, seq2seq its source).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from lmreuse.models.config import TransformerConfig
from lmreuse.objectives import base, clm
from lmreuse.train import losses
from lmreuse.train.trainer import Program

if TYPE_CHECKING:
  import grain

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions", "prefix")


def make_row(
    tokens: list[int], seq_len: int, pad_id: int, rng: np.random.Generator
) -> base.Example:
  """One row of `tokens` (cut to seq_len): a random prefix (`prefix` 1) and next-token targets
  weighted 1 only where the predicted token lies after the prefix."""
  tokens = tokens[:seq_len]
  n = len(tokens)
  prefix_len = int(rng.integers(1, n)) if n >= 2 else n
  row = {k: np.zeros(seq_len, np.float32 if k == "weights" else np.int32) for k in BATCH_KEYS}
  row["inputs"][:] = pad_id
  row["inputs"][:n] = tokens
  row["targets"][: max(n - 1, 0)] = tokens[1:]
  row["weights"][max(prefix_len - 1, 0) : n - 1] = 1.0  # targets at positions prefix_len..n-1
  row["segment_ids"][:n] = 1
  row["positions"][:n] = np.arange(n)
  row["prefix"][:prefix_len] = 1
  return row


def dataset(docs: base.Documents, objective: Any, data: Any) -> grain.IterDataset:
  del objective  # prefix_lm has no options of its own
  tok, seq_len = docs.tokenizer, data.seq_len
  return docs.examples(
      lambda index, rng: make_row(docs.tokens(index) + [tok.eos_id], seq_len, tok.pad_id, rng)
  )


# Continuation cross-entropy: (token-weighted mean in fp32, {"prefix_lm_loss", ..._accuracy}).
loss = functools.partial(losses.weighted_cross_entropy, prefix="prefix_lm")


def program(model_cfg: TransformerConfig, objective: Any, data: Any) -> Program:
  del objective  # prefix_lm has no options of its own
  inputs = ("inputs", "segment_ids", "positions", "prefix")
  return clm.decoder_program(model_cfg, data, loss=loss, inputs=inputs)


OBJECTIVE = base.Objective(
    name="prefix_lm",
    architecture="decoder",
    program=program,
    dataset=dataset,
    model={"prefix_lm": True},
)
