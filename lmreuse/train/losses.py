"""Losses with their metrics as (sum, count) pairs, which add up exactly across micro-batches,
batches and devices (Trainer reduces them), where averaging per-batch means would not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lmreuse.train.trainer import MetricPairs


def weighted_loss(
    loss: jax.Array, weights: jax.Array, *, prefix: str = "", **metrics: jax.Array
) -> tuple[jax.Array, MetricPairs]:
  """The weighted mean of per-row (or per-token) `loss` values, and (sum, count) pairs for it
  and for each of `metrics` under the same weights, named `{prefix}_{name}` (or `name`).

  Padding weighs 0, so it never counts; all-zero weights give loss 0, not NaN.
  """
  named = lambda name: f"{prefix}_{name}" if prefix else name
  total = jnp.sum(weights)
  pairs = {
      named(name): (jnp.sum(values * weights), total)
      for name, values in {"loss": loss, **metrics}.items()
  }
  return pairs[named("loss")][0] / jnp.maximum(total, 1e-8), pairs


def weighted_cross_entropy(
    logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array, *, prefix: str
) -> tuple[jax.Array, MetricPairs]:
  """Weighted mean cross-entropy of integer targets in fp32, with `{prefix}_accuracy`; any
  leading shape ([B, L] tokens, [B] rows)."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  correct_BxL = (jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL).astype(jnp.float32)
  weights_BxL = weights_BxL.astype(jnp.float32)
  return weighted_loss(ce_BxL, weights_BxL, prefix=prefix, accuracy=correct_BxL)
