"""Prompt tuning (Lester et al. 2021): a trainable soft prompt prepended to the (encoder) input;
with `init_from_vocab`, initialised from the embeddings of random vocabulary tokens, as the paper
found best. Generation on a decoder-only model would need the prompt in the KV cache: use
prefix_tuning there."""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from lmreuse.strategies import base


class PromptTuning(base.InsertedModules):
  name = "prompt_tuning"
  learning_rate_scale = 10.0
  size_key = "prompt_length"
  defaults = {"prompt_length": 16, "init_from_vocab": True}

  def init_pretrained(self, params: dict, seed: int) -> dict:
    """Copies embeddings of random non-special tokens into the prompt (after the pretrained
    weights are loaded, so the prompt starts in the pretrained embedding space)."""
    if not self.cfg.init_from_vocab:
      return params
    flat = traverse_util.flatten_dict(params, sep="/")
    tables = [p for p in flat if p.endswith("token_embed/embedding")]
    rng = np.random.default_rng(seed)
    for path in [p for p in flat if p.endswith("/prompt")]:
      table = np.asarray(flat[tables[0]])
      ids = rng.integers(min(200, table.shape[0] // 2), table.shape[0], flat[path].shape[0])
      flat[path] = table[ids].astype(np.asarray(flat[path]).dtype)
    return traverse_util.unflatten_dict(flat, sep="/")

  def check(self, paths: list[str]) -> None:
    super().check(paths)
    if self.ctx.task_type == "seq2seq" and self.ctx.model_cfg.architecture == "decoder":
      raise ValueError(
          "prompt_tuning cannot serve seq2seq generation on a decoder-only model "
          "(the soft prompt is not in the KV cache); use prefix_tuning"
      )


STRATEGY = PromptTuning
