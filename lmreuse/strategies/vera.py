"""VeRA (Kopiczko et al. 2024): one pair of frozen random low-rank matrices A, B shared by every
target projection (slices of it where widths differ), and per projection two trained vectors:
ΔW = A·diag(d)·B·diag(b), d starting at 0.1 and b at zero. Far fewer trained parameters than
LoRA at a higher rank (the paper's 256). A and B are regenerated from `projection_seed`, never
stored. `merge` folds ΔW into the kernels; `unmerge` takes it out again."""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import traverse_util

from lmreuse.models import lora as lora_lib
from lmreuse.models.config import TransformerConfig
from lmreuse.strategies import base, lora


class VeRA(base.Strategy):
  name = "vera"
  # The paper's rates are ten times LoRA's for the same models (few, vector-shaped parameters).
  learning_rate_scale = 10.0
  defaults = {
      "vera_rank": 256,
      "projection_seed": 0,
      "targets": "attention/(query|value)/kernel",
  }

  def model(self, model_cfg):
    return dataclasses.replace(
        model_cfg,
        vera_rank=self.cfg.vera_rank,
        vera_seed=self.cfg.projection_seed,
        lora_targets=self.cfg.targets,
    )

  def trainable(self, path: str) -> bool:
    return base.frozen_backbone(path)

  def check(self, paths: list[str]) -> None:
    if self.cfg.vera_rank <= 0:
      raise ValueError(f"config.strategy.vera_rank={self.cfg.vera_rank} must be positive")
    lora.require_targets(paths, "vera_d", self.cfg.targets)


def merge(params: dict, model_cfg: TransformerConfig) -> dict:
  """Params of the same model without VeRA: every target kernel gets W + A·diag(d)·B·diag(b)."""
  return _fold(params, model_cfg, +1)


def unmerge(merged: dict, factors: dict, model_cfg: TransformerConfig) -> dict:
  """Undoes `merge`: puts the vectors back (`factors` = the vera_d/vera_b leaves)."""
  flat = traverse_util.flatten_dict(merged, sep="/")
  flat.update(traverse_util.flatten_dict(factors, sep="/"))
  return _fold(traverse_util.unflatten_dict(flat, sep="/"), model_cfg, -1, keep_factors=True)


def _fold(params: dict, model_cfg: TransformerConfig, sign: int, keep_factors: bool = False):
  flat = traverse_util.flatten_dict(params, sep="/")
  out = dict(flat)
  for path in [p for p in flat if p.endswith("/vera_d")]:
    module = path.rsplit("/", 1)[0]
    kernel_path = lora_lib.merged_name(path)
    kernel, d, b = (np.asarray(flat[p]) for p in (kernel_path, path, f"{module}/vera_b"))
    shared_a, shared_b = lora_lib.vera_factors(model_cfg, kernel.size // b.size, b.size)
    update = ((shared_a * d) @ shared_b * b).reshape(kernel.shape)
    out[kernel_path] = (kernel + sign * update).astype(kernel.dtype)
    if not keep_factors:
      del out[path], out[f"{module}/vera_b"]
  return traverse_util.unflatten_dict(out, sep="/")


STRATEGY = VeRA
