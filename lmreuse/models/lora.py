"""LoRA branches beside frozen projections: y = x·W + (alpha / r) · x·A·B (Hu et al. 2022).

A projection named `name` in a module gets a sibling `{name}_lora` holding `lora_a`
[inputs, r] and `lora_b` [r, outputs] when its kernel path matches `cfg.lora_targets`
(comma-separated regexes, or 'all_linear' for every projection of the Transformer). B starts at
zero, so the model starts as the pretrained one. Dropout on the branch's input is active when a
'dropout' RNG is given (training), as everywhere else in the model.
"""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import numpy as np

from lmreuse.models.config import TransformerConfig

ALL_LINEAR = "all_linear"


def targets(cfg: TransformerConfig, kernel_path: str) -> bool:
  if not cfg.lora_rank:
    return False
  if cfg.lora_targets.strip() == ALL_LINEAR:
    return True
  return any(re.search(p.strip(), kernel_path) for p in cfg.lora_targets.split(",") if p.strip())


def delta(a, b, alpha: float, kernel_shape: tuple[int, ...]):
  """The kernel-shaped update (alpha / r) · A·B that `merge` folds in."""
  rank = a.shape[1]
  return (alpha / rank) * np.asarray(a @ b).reshape(kernel_shape)


class LoRA(nn.Module):
  """The low-rank branch of one projection; output shaped like the projection's."""

  cfg: TransformerConfig
  num_in: int
  features: tuple[int, ...]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, r = self.cfg, self.cfg.lora_rank
    in_shape = x.shape[x.ndim - self.num_in :]
    fan_in, fan_out = math.prod(in_shape), math.prod(self.features)
    a = self.param(
        "lora_a",
        nn.with_logical_partitioning(nn.initializers.normal(fan_in**-0.5), (None, None)),
        (fan_in, r),
        cfg.params_dtype,
    )
    b = self.param(
        "lora_b",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, None)),
        (r, fan_out),
        cfg.params_dtype,
    )
    # Tokens flattened to one axis: B's gradient then contracts one axis of the output gradient,
    # which XLA:CPU reads in place; over [batch, length] it wrote a transposed copy first, with
    # the MLP's GELU backward recomputed into it (benchmarks/README.md, "Layout choices").
    # The scale multiplies B, not the [tokens, outputs] product: no pass over activations.
    lead = x.shape[: x.ndim - self.num_in]
    x = x.reshape((-1, fan_in)).astype(cfg.compute_dtype)
    x = nn.Dropout(cfg.lora_dropout)(x, deterministic=not self.has_rng("dropout"))
    h = (x @ a.astype(cfg.compute_dtype)) @ ((cfg.lora_alpha / r) * b.astype(cfg.compute_dtype))
    return h.reshape(lead + self.features)


def branch(
    parent: nn.Module, name: str, x: jax.Array, num_in: int, features: tuple[int, ...]
) -> jax.Array | float:
  """`parent`'s LoRA update for its projection `name`, or 0 when that kernel is not a target.
  Call from `parent`'s compact method."""
  kernel_path = "/".join((*parent.scope.path, name, "kernel"))
  if not targets(parent.cfg, kernel_path):
    return 0.0
  return LoRA(parent.cfg, num_in, features, name=f"{name}_lora")(x)


def merged_name(path: str) -> str:
  """…/query_lora/lora_a → …/query/kernel: the kernel a factor belongs to."""
  module = path.rsplit("/", 1)[0]
  return module[: -len("_lora")] + "/kernel"
