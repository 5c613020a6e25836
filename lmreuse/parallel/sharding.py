"""Logical axis names → mesh shardings, from the one rule table in `config.mesh.rules`.

Changing the parallelism changes the rule table, never the model (t5x's partitioning idea).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]

# Parameters: embed → fsdp (ZeRO-3 style), heads/mlp/vocab → tensor (Megatron style).
# Activations: batch over data × fsdp, hidden sizes over tensor where the weights are.
# `fsdp` splits both a weight's embed axis and the batch, so an op must never leave a result
# split over embed by fsdp: XLA can move it to the batch split only by replicating it whole (an
# "involuntary full rematerialization"). Matmuls all-gather such weights by themselves; lookups
# do not, so layers.Embed gathers its table's embed axis first (tests/parallel checks all meshes).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("relpos_buckets", None),
    ("adapter", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_vocab", "tensor"),
)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Normalises rules read from a config (lists from JSON/CLI become tuples)."""
  normalised = []
  for entry in rules:
    logical, mesh_axes = entry
    if isinstance(mesh_axes, list):
      mesh_axes = tuple(mesh_axes)
    normalised.append((logical, mesh_axes))
  return tuple(normalised)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree whose leaves carry logical names (nn.Partitioned boxes)."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def placed_shapes(boxed_tree: Any, shardings: Any) -> Any:
  """The tree's shapes and dtypes carrying `shardings`: what a restore or a lowering needs, with
  nothing allocated."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.meta.unbox(boxed_tree),
      shardings,
  )


def check_divisible(boxed_tree: Any, mesh: Mesh, rules: Rules) -> None:
  """Fails before compiling when a parameter dimension does not split over its mesh axes."""
  specs = nn.get_partition_spec(boxed_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(boxed_tree))
  logical = jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
  )
  for (path, logical_spec), spec, shape in zip(
      logical,
      jax.tree.leaves(mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
      jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)),
  ):
    for dim, (size, axes) in enumerate(zip(shape, spec)):
      if axes is None:
        continue
      axes = axes if isinstance(axes, tuple) else (axes,)
      parts = math.prod(mesh.shape[a] for a in axes)
      if size % parts:
        name = jax.tree_util.keystr(path)
        raise ValueError(
            f"parameter {name} dim {dim} (logical axis {logical_spec[dim]!r}, size {size}) "
            f"does not divide over mesh axes {axes} of total size {parts}; change the model "
            f"size or config.mesh (data/fsdp/tensor) or config.mesh.rules"
        )


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int, leading_axes: int = 0) -> NamedSharding:
  """Sharding of a host batch array: `leading_axes` unsharded dims, then the batch dim."""
  batch_axes = nn.logical_to_mesh_axes(("batch",), rules)[0]
  spec = (None,) * leading_axes + (batch_axes,) + (None,) * (ndim - leading_axes - 1)
  return NamedSharding(mesh, PartitionSpec(*spec))


def batch_divisor(mesh: Mesh, rules: Rules) -> int:
  """How many ways the batch dimension is split; batch sizes must be multiples of it."""
  axes = nn.logical_to_mesh_axes(("batch",), rules)[0]
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return math.prod(mesh.shape[a] for a in axes)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Activates the mesh and the logical rules, so logical constraints in modules resolve."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
