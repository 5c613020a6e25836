"""DoRA (Liu et al. 2024): each target kernel splits into a magnitude and a direction; LoRA
updates the direction, W' = m ⊙ (W + ΔW) / ‖W + ΔW‖_c, and m (one value per output) trains with
the factors. m starts at the column norms of the loaded kernel, so training starts from the
pretrained function. `merge` folds it into plain kernels; `unmerge` needs the column norms that
`merge` returns (the normalisation cannot be undone without them, as PEFT also caches them)."""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import traverse_util

from lmreuse.models import lora as lora_lib
from lmreuse.strategies import lora


class DoRA(lora.LoRA):
  name = "dora"

  def model(self, model_cfg):
    return dataclasses.replace(super().model(model_cfg), dora=True)

  def init_pretrained(self, params: dict, seed: int) -> dict:
    """Magnitudes from the loaded kernels (init ran before the pretrained weights came in),
    after `quantize_base` has quantized them."""
    flat = traverse_util.flatten_dict(super().init_pretrained(params, seed), sep="/")
    for path in [p for p in flat if p.endswith("/lora_magnitude")]:
      kernel = np.asarray(flat[lora_lib.merged_name(path)])
      norms = lora_lib.column_norms(kernel.reshape(-1, flat[path].shape[0]).astype(np.float32))
      flat[path] = norms.astype(np.asarray(flat[path]).dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def merge(params: dict, alpha: float) -> tuple[dict, dict]:
  """(params of the same model without DoRA, every target's ‖W + ΔW‖_c by kernel path)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  out, norms = dict(flat), {}
  for path in [p for p in flat if p.endswith("/lora_magnitude")]:
    module = path.rsplit("/", 1)[0]
    kernel_path = lora_lib.merged_name(path)
    kernel = np.asarray(flat[kernel_path])
    magnitude = np.asarray(flat[path])
    direction = kernel + lora_lib.delta(
        np.asarray(flat[f"{module}/lora_a"]),
        np.asarray(flat[f"{module}/lora_b"]),
        alpha,
        kernel.shape,
    )
    columns = direction.reshape(-1, magnitude.shape[0])  # [fan_in, fan_out], as the model's
    norms[kernel_path] = lora_lib.column_norms(columns)
    out[kernel_path] = (columns * (magnitude / norms[kernel_path])).reshape(kernel.shape)
    out[kernel_path] = out[kernel_path].astype(kernel.dtype)
  out = {p: v for p, v in out.items() if "_lora/" not in p}
  return traverse_util.unflatten_dict(out, sep="/"), norms


def unmerge(merged: dict, factors: dict, norms: dict, alpha: float) -> dict:
  """Undoes `merge`: `factors` are the lora_a/lora_b/lora_magnitude leaves, `norms` what
  `merge` returned; W = W'·‖V‖_c / m − ΔW."""
  flat = traverse_util.flatten_dict(merged, sep="/")
  factor_leaves = traverse_util.flatten_dict(factors, sep="/")
  flat.update(factor_leaves)
  for path in [p for p in factor_leaves if p.endswith("/lora_magnitude")]:
    module = path.rsplit("/", 1)[0]
    kernel_path = lora_lib.merged_name(path)
    kernel, magnitude = np.asarray(flat[kernel_path]), np.asarray(flat[path])
    direction = kernel.reshape(-1, magnitude.shape[0]) * (norms[kernel_path] / magnitude)
    update = lora_lib.delta(
        np.asarray(flat[f"{module}/lora_a"]),
        np.asarray(flat[f"{module}/lora_b"]),
        alpha,
        kernel.shape,
    )
    flat[kernel_path] = (direction.reshape(kernel.shape) - update).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat, sep="/")


STRATEGY = DoRA
