"""Device mesh with axes (data, fsdp, tensor) sized from `config.mesh`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_config: Any, num_devices: int) -> tuple[int, ...]:
  """Resolves `config.mesh.{data,fsdp,tensor}` (-1 = the remaining devices) to a shape."""
  sizes = [int(getattr(mesh_config, axis)) for axis in MESH_AXES]
  wildcards = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"config.mesh.{axis}={size} must be a positive size or -1 (the rest)")
  if len(wildcards) > 1:
    raise ValueError(
        f"only one of config.mesh.{{{','.join(MESH_AXES)}}} may be -1; " f"got -1 for {wildcards}"
    )
  known = math.prod(size for size in sizes if size != -1)
  if wildcards:
    if num_devices % known:
      raise ValueError(
          f"config.mesh={dict(zip(MESH_AXES, sizes))}: the fixed axes (product {known}) do not "
          f"divide the {num_devices} available devices"
      )
    sizes = [num_devices // known if size == -1 else size for size in sizes]
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"config.mesh={dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices but "
        f"{num_devices} are available; set one axis to -1 or make the product {num_devices}"
    )
  return tuple(sizes)


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axis types: explicit sharding mode is not needed and changes jit semantics.
  return jax.make_mesh(
      shape,
      MESH_AXES,
      axis_types=(AxisType.Auto,) * len(MESH_AXES),
      devices=np.asarray(devices).ravel().tolist(),
  )
