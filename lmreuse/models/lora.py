"""Low-rank updates of frozen projections: LoRA, DoRA and VeRA.

  LoRA (Hu et al. 2022)          y = x·W + (alpha / r) · x·A·B
  DoRA (Liu et al. 2024)         y = m ⊙ x·(W + ΔW) / ‖W + ΔW‖_c, ΔW = LoRA's (alpha / r)·A·B
  VeRA (Kopiczko et al. 2024)    y = x·W + ((x·A ⊙ d)·B) ⊙ b, A and B random, shared, frozen

A projection named `name` in a module gets a sibling `{name}_lora` holding `lora_a`
[inputs, r] and `lora_b` [r, outputs] (and DoRA's `lora_magnitude` [outputs]), or `{name}_vera`
holding `vera_d` [r] and `vera_b` [outputs], when its kernel path matches `cfg.lora_targets`
(comma-separated regexes, or 'all_linear' for every projection of the Transformer). B (VeRA: b)
starts at zero and DoRA's m at the kernel's column norms, so the model starts as the pretrained
one. Dropout on LoRA's input is active when a 'dropout' RNG is given (training), as everywhere
else in the model.
"""

from __future__ import annotations

import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.models.config import TransformerConfig
from lmreuse.models.dropout import Dropout

ALL_LINEAR = "all_linear"
# VeRA's d starts here (the paper's and PEFT's d_initial); b starts at zero.
VERA_D_INIT = 0.1


def targets(cfg: TransformerConfig, kernel_path: str) -> bool:
  if not (cfg.lora_rank or cfg.vera_rank):
    return False
  if cfg.lora_targets.strip() == ALL_LINEAR:
    return True
  return any(re.search(p.strip(), kernel_path) for p in cfg.lora_targets.split(",") if p.strip())


def delta(a, b, alpha: float, kernel_shape: tuple[int, ...]):
  """The kernel-shaped update (alpha / r) · A·B that `merge` folds in."""
  rank = a.shape[1]
  return (alpha / rank) * np.asarray(a @ b).reshape(kernel_shape)


def column_norms(kernel) -> np.ndarray | jax.Array:
  """‖W‖_c, DoRA's per-output norm: over the input axes of a [inputs..., outputs...] kernel
  flattened to [fan_in, fan_out] (the rows of a PyTorch [out, in] weight)."""
  xp = jnp if isinstance(kernel, jax.Array) else np
  return xp.sqrt(xp.sum(xp.square(kernel), axis=0))


def _flat_tokens(x: jax.Array, num_in: int) -> tuple[jax.Array, tuple[int, ...], int]:
  """Tokens flattened to one axis: B's gradient then contracts one axis of the output gradient,
  which XLA:CPU reads in place; over [batch, length] it wrote a transposed copy first, with
  the MLP's GELU backward recomputed into it (benchmarks/README.md, "Layout choices")."""
  fan_in = math.prod(x.shape[x.ndim - num_in :])
  return x.reshape((-1, fan_in)), x.shape[: x.ndim - num_in], fan_in


class LoRA(nn.Module):
  """The low-rank branch of one projection; with `kernel` (DoRA) also the output scale m/‖V‖_c."""

  cfg: TransformerConfig
  num_in: int
  features: tuple[int, ...]

  @nn.compact
  def __call__(
      self, x: jax.Array, kernel: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array | None]:
    cfg, r = self.cfg, self.cfg.lora_rank
    x, lead, fan_in = _flat_tokens(x, self.num_in)
    fan_out = math.prod(self.features)
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
    # The scale multiplies B, not the [tokens, outputs] product: no pass over activations.
    scaled_b = (cfg.lora_alpha / r) * b
    x = Dropout(cfg.lora_dropout)(
        x.astype(cfg.compute_dtype), deterministic=not self.has_rng("dropout")
    )
    h = (x @ a.astype(cfg.compute_dtype)) @ scaled_b.astype(cfg.compute_dtype)
    h = h.reshape(lead + self.features)
    if kernel is None:
      return h, None
    w = kernel.reshape((fan_in, fan_out)).astype(jnp.float32)
    m = self.param(
        "lora_magnitude",  # ‖W‖_c of the initial kernel; init_pretrained resets it after loading
        nn.with_logical_partitioning(lambda *_: column_norms(w).astype(cfg.params_dtype), (None,)),
    )
    # ‖V‖_c is treated as a constant in the backward pass, as DoRA's section 4.3 (and PEFT) do:
    # the gradient then needs no [fan_in, fan_out] intermediate per step.
    norm = jax.lax.stop_gradient(column_norms(w + a.astype(jnp.float32) @ scaled_b))
    return h, (m / norm).reshape(self.features).astype(cfg.compute_dtype)


@functools.lru_cache(maxsize=8)
def _drawn_factors(seed: int, widest: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
  """The full A [widest, r] and B [r, widest], drawn eagerly once per process, even when asked
  for inside a trace: a step then holds them as constants instead of hashing threefry for them
  on every step. Always threefry keys, so `config.prng_impl` does not change them."""
  with jax.ensure_compile_time_eval():
    key_a, key_b = jax.random.split(jax.random.key(seed, impl="threefry2x32"))
    a = jax.random.uniform(key_a, (widest, rank), minval=-1, maxval=1) / math.sqrt(widest)
    b = jax.random.uniform(key_b, (rank, widest), minval=-1, maxval=1) / math.sqrt(rank)
  return np.asarray(a), np.asarray(b)


def _shared_factors(cfg: TransformerConfig, fan_in: int, fan_out: int) -> tuple[jax.Array, ...]:
  """VeRA's frozen random A [fan_in, r] and B [r, fan_out]: slices of one pair drawn from
  `cfg.vera_seed` at the largest width, so every layer shares them (and no checkpoint stores
  them). Kaiming-uniform bounds of the full matrices, as PEFT draws them. The slices are taken
  in jax from the same two arrays, so a traced step holds each as one constant."""
  widest = max(cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.dim_per_head)
  a, b = (jnp.asarray(f) for f in _drawn_factors(cfg.vera_seed, widest, cfg.vera_rank))
  return a[:fan_in], b[:, :fan_out]


def vera_factors(cfg: TransformerConfig, fan_in: int, fan_out: int) -> tuple[np.ndarray, ...]:
  """The shared factors as numpy (merge, unmerge)."""
  return tuple(np.asarray(f) for f in _shared_factors(cfg, fan_in, fan_out))


class VeRA(nn.Module):
  """The update ((x·A ⊙ d)·B) ⊙ b of one projection: only d [r] and b [outputs] train."""

  cfg: TransformerConfig
  num_in: int
  features: tuple[int, ...]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    x, lead, fan_in = _flat_tokens(x, self.num_in)
    fan_out = math.prod(self.features)
    d = self.param(
        "vera_d",
        nn.with_logical_partitioning(nn.initializers.constant(VERA_D_INIT), (None,)),
        (cfg.vera_rank,),
        cfg.params_dtype,
    )
    b = self.param(
        "vera_b",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
        (fan_out,),
        cfg.params_dtype,
    )
    shared_a, shared_b = (
        f.astype(cfg.compute_dtype) for f in _shared_factors(cfg, fan_in, fan_out)
    )
    h = ((x.astype(cfg.compute_dtype) @ shared_a) * d.astype(cfg.compute_dtype)) @ shared_b
    return (h * b.astype(cfg.compute_dtype)).reshape(lead + self.features)


def branch(
    parent: nn.Module, name: str, x: jax.Array, num_in: int, features: tuple[int, ...], y: jax.Array
) -> jax.Array:
  """`y`, the output of `parent`'s projection `name` on `x`, with that projection's LoRA, DoRA
  or VeRA update when its kernel is a target. Call from `parent`'s compact method, after the
  projection (DoRA reads its kernel and bias)."""
  cfg = parent.cfg
  if not targets(cfg, "/".join((*parent.scope.path, name, "kernel"))):
    return y
  if cfg.vera_rank:
    y = y + VeRA(cfg, num_in, features, name=f"{name}_vera")(x)
  if not cfg.lora_rank:
    return y
  if not cfg.dora:
    return y + LoRA(cfg, num_in, features, name=f"{name}_lora")(x)[0]
  projection = nn.unbox(parent.variables["params"][name])
  h, scale = LoRA(cfg, num_in, features, name=f"{name}_lora")(x, projection["kernel"])
  bias = projection["bias"].astype(y.dtype) if "bias" in projection else 0.0
  return scale * (y - bias + h) + bias


def merged_name(path: str) -> str:
  """…/query_lora/lora_a (or …/query_vera/vera_d) → …/query/kernel: the kernel it updates."""
  module = path.rsplit("/", 1)[0]
  return module.rsplit("_", 1)[0] + "/kernel"
