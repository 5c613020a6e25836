"""Per-parameter learning-rate scales and start steps as one optax transformation.

Placed around the base optimizer: before it, gradients of parameters that have not started are
zeroed (so Adam's moments stay at zero until they do); after it, updates are multiplied by the
parameter's LR scale, or by 0 before its start step (which also stops AdamW's decoupled weight
decay from touching it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class GateState(NamedTuple):
  count: jax.Array


def _gate(scales: Any, starts: Any, use_scale: bool) -> optax.GradientTransformation:
  def init(params):
    del params
    return GateState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params

    def apply(u, scale, start):
      factor = jnp.where(state.count >= start, scale if use_scale else 1.0, 0.0)
      return u * factor.astype(u.dtype)

    return jax.tree.map(apply, updates, scales, starts), GateState(state.count + 1)

  return optax.GradientTransformation(init, update)


def wrap(
    tx: optax.GradientTransformation, scales: Any, starts: Any
) -> optax.GradientTransformation:
  """`tx` with per-parameter LR `scales` and `starts` (pytrees shaped like the trainables)."""
  if all(float(x) == 1.0 for x in jax.tree.leaves(scales)) and not any(
      int(x) for x in jax.tree.leaves(starts)
  ):
    return tx  # plain fine-tuning: no extra state, no extra work
  return optax.chain(
      _gate(scales, starts, use_scale=False), tx, _gate(scales, starts, use_scale=True)
  )
