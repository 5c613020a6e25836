"""LoRA (Hu et al. 2022): a low-rank update B·A, scaled by alpha / rank, beside chosen frozen
projections (`targets`: comma-separated regexes over parameter paths, or 'all_linear'). B starts
at zero, so training starts from the pretrained function. `merge` folds the update into the
kernels for inference (a plain model, no extra matmuls); `unmerge` takes it out again.

`quantize_base=int8|int4` is QLoRA's recipe (Dettmers et al. 2023, with qwix's symmetric
per-channel types in place of NF4): the frozen backbone's weights of two or more dimensions are
quantized once, before training, and the factors train in float on top. The base is held as
its dequantized values, which is what QLoRA's matmuls see; results.json reports the bytes the
quantized base takes (values + scales) under `quantized_base`."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from flax import traverse_util

from lmreuse.compression import quantize
from lmreuse.models import lora as lora_lib
from lmreuse.strategies import base


class LoRA(base.Strategy):
  name = "lora"
  learning_rate_scale = 3.0
  defaults = {
      "rank": 8,
      "alpha": 16.0,
      "lora_dropout": 0.0,
      "targets": "attention/(query|value)/kernel",
      "quantize_base": "",  # '', int8 or int4
  }

  def model(self, model_cfg):
    return dataclasses.replace(
        model_cfg,
        lora_rank=self.cfg.rank,
        lora_alpha=self.cfg.alpha,
        lora_dropout=self.cfg.lora_dropout,
        lora_targets=self.cfg.targets,
    )

  def trainable(self, path: str) -> bool:
    return base.frozen_backbone(path)

  def init_pretrained(self, params: dict, seed: int) -> dict:
    """The frozen backbone quantized, with `quantize_base`."""
    if not self.cfg.quantize_base:
      return params
    flat = traverse_util.flatten_dict(params, sep="/")
    frozen = {p: v for p, v in flat.items() if not self.trainable(p)}
    quantized, self.base_bytes = quantize.quantize_weights(
        traverse_util.unflatten_dict(frozen, sep="/"), self.cfg.quantize_base
    )
    flat.update(traverse_util.flatten_dict(quantized, sep="/"))
    return traverse_util.unflatten_dict(flat, sep="/")

  def report(self, params, to_host) -> dict:
    if not self.cfg.quantize_base:
      return {}
    return {
        "quantized_base": {
            "weights": self.cfg.quantize_base,
            "model_bytes": self.base_bytes["quantized"],
            "float_bytes": self.base_bytes["float"],
        }
    }

  def check(self, paths: list[str]) -> None:
    if self.cfg.quantize_base:
      quantize.validate(self.cfg.quantize_base, "", ("config.strategy.quantize_base", ""))
    if self.cfg.rank <= 0:
      raise ValueError(f"config.strategy.rank={self.cfg.rank} must be positive")
    if not 0.0 <= self.cfg.lora_dropout < 1.0:
      raise ValueError(f"config.strategy.lora_dropout={self.cfg.lora_dropout} must be in [0, 1)")
    require_targets(paths, "lora_a", self.cfg.targets)


def require_targets(paths: list[str], leaf: str, targets: str) -> None:
  """Raises, naming config.strategy.targets, when no parameter `leaf` was added: the target
  regexes matched no projection kernel (LoRA, DoRA, VeRA)."""
  if not any(re.search(rf"(^|/){leaf}$", p) for p in paths):
    kernels = [p for p in paths if p.endswith("/kernel") and p.startswith("backbone/")]
    raise ValueError(
        f"config.strategy.targets={targets!r} matches no projection "
        f"kernel; kernels look like {kernels[:4]}"
    )


def merge(params: dict, alpha: float) -> dict:
  """Params of the same model without LoRA: every kernel with LoRA factors gets W + s·A·B."""
  return _fold(params, alpha, +1)


def unmerge(merged: dict, factors: dict, alpha: float) -> dict:
  """Undoes `merge`: puts the factors back (`factors` = the lora_a/lora_b leaves) and subtracts
  their product from the kernels."""
  flat = traverse_util.flatten_dict(merged, sep="/")
  flat.update(traverse_util.flatten_dict(factors, sep="/"))
  return _fold(traverse_util.unflatten_dict(flat, sep="/"), alpha, -1, keep_factors=True)


def _fold(params: dict, alpha: float, sign: int, keep_factors: bool = False) -> dict:
  flat = traverse_util.flatten_dict(params, sep="/")
  out = dict(flat)
  for path in [p for p in flat if p.endswith("/lora_a")]:
    b_path = path[: -len("lora_a")] + "lora_b"
    kernel_path = lora_lib.merged_name(path)
    a, b = np.asarray(flat[path]), np.asarray(flat[b_path])
    kernel = np.asarray(flat[kernel_path])
    out[kernel_path] = (kernel + sign * lora_lib.delta(a, b, alpha, kernel.shape)).astype(
        kernel.dtype
    )
    if not keep_factors:
      del out[path], out[b_path]
  if not keep_factors:  # drop the now-empty {name}_lora modules
    out = {p: v for p, v in out.items() if "_lora/" not in p}
  return traverse_util.unflatten_dict(out, sep="/")


STRATEGY = LoRA
