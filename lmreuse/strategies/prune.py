"""Magnitude pruning while fine-tuning: Zhu & Gupta (2017)'s gradual schedule, or one shot.

The backbone's layer kernels are pruned by magnitude, unstructured (the smallest weights over
all of them, `scope=global`, or within each kernel, `scope=layer`) or N:M (`granularity=n_m`:
the `n` largest of every `m` consecutive weights along a kernel's input axes, the 2:4 pattern
sparse tensor cores run). Sparsity rises as s_f · (1 − (1 − t / t_end)³) over the first
`prune_end` of the updates, the mask refreshed every `prune_every` updates; `schedule=oneshot`
prunes to s_f at the first update. A weight once pruned stays pruned.

The masks live in the optimizer state (one transformation after the base optimizer), so they
are checkpointed, restored and resumed with it, and every update sets a masked weight to exactly
zero. Checkpoints are only selected once the final sparsity is reached. Written here because
jaxpruner, which offers this, is not on PyPI for this stack.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from lmreuse.models import layers
from lmreuse.strategies import base

SCHEDULES = ("gradual", "oneshot")
GRANULARITIES = ("unstructured", "n_m")
SCOPES = ("global", "layer")
_TARGET = re.compile(r"^backbone/.*/layers_\d+/.*kernel$")
_LAYER_INDEX = re.compile(r"/layers_\d+/")
# Mask refreshes over the gradual ramp when config.strategy.prune_every is 0.
DEFAULT_REFRESHES = 10


def is_target(path: str) -> bool:
  """The backbone's layer kernels (attention and MLP projections), not the strategies' own."""
  return bool(_TARGET.match(path)) and not base.is_strategy_param(path)


def fan_in(path: str, shape: tuple[int, ...]) -> int:
  """The size of a kernel's input axes (kernels are [inputs..., outputs...])."""
  return math.prod(shape[: layers.kernel_input_axes(path, shape)])


class PruneState(NamedTuple):
  count: jax.Array  # updates so far
  masks: Any  # per trainable leaf: bools shaped like it (True = kept), or a scalar True


def _ranks(scores: jax.Array, axis: int) -> jax.Array:
  """Each score's rank along `axis` (0 = smallest), ties broken by position: cutting at rank k
  prunes exactly k weights even where magnitudes tie (the zeros of already pruned weights)."""
  order = jnp.argsort(scores, axis=axis, stable=True)
  return jnp.argsort(order, axis=axis, stable=True)


class _Plan(NamedTuple):
  """What the masking transformation needs of the strategy's config."""

  sparsity: float
  end: int  # the update after which the final sparsity holds
  every: int
  granularity: str
  scope: str
  m: int


def _sparsity_at(plan: _Plan, t: jax.Array) -> jax.Array:
  progress = jnp.minimum(t / max(plan.end, 1), 1.0)
  return plan.sparsity * (1.0 - (1.0 - progress) ** 3)


def _masks_at(plan: _Plan, weights: list[jax.Array], fans: list[int], s: jax.Array) -> list:
  """Keep-masks for the candidate `weights` (pruned ones already zero) at sparsity `s`."""
  if plan.granularity == "n_m":
    masks = []
    for w, fan in zip(weights, fans):
      blocks = jnp.abs(w).reshape(fan // plan.m, plan.m, -1)
      pruned_per_block = jnp.round(s * plan.m).astype(jnp.int32)
      masks.append((_ranks(blocks, 1) >= pruned_per_block).reshape(w.shape))
    return masks
  if plan.scope == "layer":
    return [
        (_ranks(jnp.abs(w).ravel(), 0) >= jnp.round(s * w.size)).reshape(w.shape) for w in weights
    ]
  flat = jnp.concatenate([jnp.abs(w).ravel().astype(jnp.float32) for w in weights])
  keep = _ranks(flat, 0) >= jnp.round(s * flat.size)
  sizes = np.cumsum([w.size for w in weights])[:-1]
  return [k.reshape(w.shape) for k, w in zip(jnp.split(keep, sizes), weights)]


def masking(plan: _Plan, fans: list[int | None]) -> optax.GradientTransformation:
  """Applies the masks to the updated weights, refreshing them on the schedule. `fans` holds,
  per trainable leaf in tree order, its fan-in when it is pruned and None when it is not."""
  pruned = [i for i, fan in enumerate(fans) if fan is not None]

  def init(params):
    leaves, treedef = jax.tree.flatten(params)
    masks = [
        jnp.ones(jnp.shape(x), bool) if fans[i] is not None else jnp.ones((), bool)
        for i, x in enumerate(leaves)
    ]
    return PruneState(count=jnp.zeros([], jnp.int32), masks=jax.tree.unflatten(treedef, masks))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("pruning needs the parameters in the optimizer update")
    u_leaves, treedef = jax.tree.flatten(updates)
    p_leaves, m_leaves = jax.tree.leaves(params), jax.tree.leaves(state.masks)
    t = state.count + 1
    candidates = [jnp.where(m_leaves[i], p_leaves[i] + u_leaves[i], 0) for i in pruned]
    refresh = (t <= plan.end) & ((t % plan.every == 0) | (t == plan.end))
    kept = jax.lax.cond(
        refresh,
        lambda c: _masks_at(plan, c, [fans[i] for i in pruned], _sparsity_at(plan, t)),
        lambda c: [m_leaves[i] for i in pruned],
        candidates,
    )
    masks, out = list(m_leaves), list(u_leaves)
    for i, candidate, keep in zip(pruned, candidates, kept):
      masks[i] = keep
      out[i] = jnp.where(keep, candidate, 0) - p_leaves[i]
    return jax.tree.unflatten(treedef, out), PruneState(
        count=t, masks=jax.tree.unflatten(jax.tree.structure(state.masks), masks)
    )

  return optax.GradientTransformation(init, update)


def _group(path: str) -> str:
  return _LAYER_INDEX.sub("/layers_*/", path)


class Prune(base.Strategy):
  name = "prune"
  defaults = {
      "sparsity": 0.5,
      "schedule": "gradual",
      "granularity": "unstructured",
      "scope": "global",
      "n": 2,
      "m": 4,
      "prune_end": 0.7,  # of the updates: when the gradual ramp reaches the final sparsity
      "prune_every": 0,  # updates between mask refreshes; 0 = DEFAULT_REFRESHES over the ramp
  }

  def _plan(self) -> _Plan:
    cfg = self.cfg
    if cfg.schedule == "oneshot":
      end, every = 1, 1
    else:
      end = max(1, round(cfg.prune_end * self.ctx.total_steps))
      every = cfg.prune_every or max(1, end // DEFAULT_REFRESHES)
    return _Plan(cfg.sparsity, end, every, cfg.granularity, cfg.scope, cfg.m)

  def must_train(self, path: str) -> bool:
    return is_target(path)

  def first_selectable_step(self) -> int:
    return self._plan().end

  def wrap_optimizer(self, tx: optax.GradientTransformation, trainables: Any):
    fans = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(trainables)[0]:
      path, shape = "/".join(str(getattr(k, "key", k)) for k in key_path), tuple(leaf.shape)
      fans.append(fan_in(path, shape) if is_target(path) else None)
      if self.cfg.granularity == "n_m" and fans[-1] is not None and fans[-1] % self.cfg.m:
        raise ValueError(
            f"config.strategy.granularity='n_m': {path} {shape} has {fans[-1]} inputs, not a "
            f"multiple of config.strategy.m={self.cfg.m}"
        )
    return optax.chain(tx, masking(self._plan(), fans))

  def report(self, params: Any, to_host: Callable[[Any], Any]) -> dict:
    """The sparsity each group of kernels (the same kernel across layers) and all of them
    reached, in the parameters given (the selected checkpoint's)."""
    targets = {p: v for p, v in traverse_util.flatten_dict(params, sep="/").items() if is_target(p)}
    flat = to_host(targets)
    zeros, sizes = {}, {}
    for path, value in flat.items():
      group = _group(path)
      zeros[group] = zeros.get(group, 0) + int(np.sum(value == 0))
      sizes[group] = sizes.get(group, 0) + value.size
    return {
        "pruning": {
            "target": self.cfg.sparsity,
            "schedule": self.cfg.schedule,
            "granularity": (
                f"{self.cfg.n}:{self.cfg.m}"
                if self.cfg.granularity == "n_m"
                else f"unstructured ({self.cfg.scope})"
            ),
            "sparsity": sum(zeros.values()) / max(sum(sizes.values()), 1),
            "pruned_parameters": sum(sizes.values()),
            "groups": {g: zeros[g] / sizes[g] for g in sorted(sizes)},
        }
    }

  def sparse(self, path: str) -> bool:
    return is_target(path)

  def check(self, paths: list[str]) -> None:
    cfg = self.cfg
    if not 0.0 < cfg.sparsity < 1.0:
      raise ValueError(f"config.strategy.sparsity={cfg.sparsity} must be in (0, 1)")
    for key, allowed in (
        ("schedule", SCHEDULES),
        ("granularity", GRANULARITIES),
        ("scope", SCOPES),
    ):
      if cfg[key] not in allowed:
        raise ValueError(f"config.strategy.{key}={cfg[key]!r} is not one of {allowed}")
    if cfg.granularity == "n_m":
      if not 0 < cfg.n < cfg.m:
        raise ValueError(f"config.strategy.n={cfg.n}, m={cfg.m}: N:M pruning needs 0 < n < m")
      if not math.isclose(cfg.sparsity, 1 - cfg.n / cfg.m):
        raise ValueError(
            f"config.strategy.sparsity={cfg.sparsity} must be 1 - n/m = {1 - cfg.n / cfg.m} "
            f"for granularity='n_m' (n={cfg.n}, m={cfg.m})"
        )
    if not 0.0 < cfg.prune_end <= 1.0:
      raise ValueError(f"config.strategy.prune_end={cfg.prune_end} must be in (0, 1]")
    if cfg.prune_every < 0:
      raise ValueError(f"config.strategy.prune_every={cfg.prune_every} must be >= 0")
    if not any(is_target(p) for p in paths):
      raise ValueError("strategy 'prune' found no backbone layer kernels to prune")


STRATEGY = Prune
