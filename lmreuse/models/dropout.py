"""Dropout whose threefry masks cost a quarter of the hash evaluations of `flax.linen.Dropout`'s.

`nn.Dropout` draws one 32-bit uniform per element, and partitionable threefry (jax's default)
evaluates the 20-round threefry2x32 hash once per element for it, keeping 32 of its 64 bits.
The masks then take a large share of a small model's step on CPU. Here each hash evaluation
gives four 16-bit lanes, one per element: a quarter of the evaluations for the same shape.

The bits stay a function of the key and of each element's global index only, exactly as in
partitionable threefry: counters come from iotas over the mask's own axes, which XLA's SPMD
partitioner splits like any elementwise op, so a run gives the same masks on every mesh and
process count. The keep probability is rounded to a multiple of 2**-16 (16-bit lanes).

With `config.prng_impl` set to rbg or unsafe_rbg (4-word keys), masks come from
`jax.random.bernoulli` as in `nn.Dropout`: those generators are cheap per element already.

No library offers this (flax and jax draw one hash per element), hence the small piece here.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import random as jex_random

LANE_BITS = 16
LANES = 64 // LANE_BITS  # lanes per threefry2x32 evaluation (two 32-bit words)


def _counters(shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Two uint32 words unique per element: the index along axis 0, and the flat index over
  the remaining axes. Built from iotas, so each shard computes its own part."""
  if len(shape) == 1:
    return jnp.zeros(shape, jnp.uint32), lax.iota(jnp.uint32, shape[0])
  rest = int(np.prod(shape[1:]))
  if rest >= 2**32:
    raise ValueError(f"dropout over {shape}: over 2**32 elements per row of axis 0")
  hi = lax.broadcasted_iota(jnp.uint32, shape, 0)
  lo = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(1, len(shape))):
    lo = lo + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  return hi, lo


def threefry_lanes(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 values in [0, 2**16) of `shape`, four per threefry2x32 evaluation, along the last
  axis (padded up to a multiple of four, then cut back)."""
  *lead, last = shape
  words = (*lead, -(-last // LANES))
  hi, lo = _counters(words)
  bits = jex_random.threefry2x32_p.bind(key[0], key[1], hi, lo)
  mask = jnp.uint32(2**LANE_BITS - 1)
  lanes = [(word >> jnp.uint32(shift)) & mask for word in bits for shift in (0, LANE_BITS)]
  out = jnp.stack(lanes, axis=-1).reshape(*lead, words[-1] * LANES)
  return out[..., :last] if out.shape[-1] != last else out


def keep_mask(key: jax.Array, keep_prob: float, shape: tuple[int, ...]) -> jax.Array:
  """Booleans of `shape`, each True with probability `keep_prob` (to 2**-16 for threefry)."""
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  if data.shape != (2,):  # rbg / unsafe_rbg: cheap per element already
    return jax.random.bernoulli(key, keep_prob, shape)
  threshold = round(keep_prob * 2**LANE_BITS)
  return threefry_lanes(data.astype(jnp.uint32), shape) < jnp.uint32(threshold)


class Dropout(nn.Module):
  """`nn.Dropout`'s interface and scaling, with `keep_mask`'s masks."""

  rate: float
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep_prob = 1.0 - self.rate
    mask = keep_mask(self.make_rng(self.rng_collection), keep_prob, x.shape)
    return lax.select(mask, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))
