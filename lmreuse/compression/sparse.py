"""Sparse storage of a pruned model: each pruned kernel as a bitmap of its nonzero weights (one
bit per weight, `np.packbits`) and those weights' values in row-major order; every other
parameter dense. One safetensors file holds the arrays, its metadata the shapes and dtypes.

At a sparsity s a float32 kernel takes 1/8 + 4·(1 − s) bytes per weight instead of 4, so it
shrinks once s > 1/32. Written here: no library on this stack stores it (jax.experimental.sparse's
BCOO keeps an int32 index per dimension for every nonzero, more than the value itself).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

_BITMAP, _VALUES = "/__bitmap", "/__values"
_META = "lmreuse_sparse"


def encode(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(bitmap of the nonzero entries, packed 8 to a byte; the nonzero values, in order)."""
  flat = np.asarray(dense).reshape(-1)
  kept = flat != 0
  return np.packbits(kept), flat[kept]


def decode(bitmap: np.ndarray, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  size = int(np.prod(shape))
  kept = np.unpackbits(bitmap, count=size).astype(bool)
  flat = np.zeros(size, values.dtype)
  flat[kept] = values
  return flat.reshape(shape)


def nbytes(dense: np.ndarray) -> int:
  """The bytes `encode` stores for `dense`: its bitmap and its nonzero values."""
  dense = np.asarray(dense)
  return -(-dense.size // 8) + int(np.count_nonzero(dense)) * dense.dtype.itemsize


def stored_bytes(params: Any, is_sparse: Callable[[str], bool]) -> int:
  """The bytes of `params` as `save` stores them (arrays only, not the file's header). Only the
  sparse leaves are read (host arrays); the dense ones count by shape and dtype, so they may be
  device arrays."""
  flat = traverse_util.flatten_dict(params, sep="/")
  return sum(nbytes(v) if is_sparse(p) else v.size * v.dtype.itemsize for p, v in flat.items())


def save(path: str, params: Any, is_sparse: Callable[[str], bool]) -> None:
  """Writes `params` (host arrays) to `path`, the parameters `is_sparse` names encoded."""
  tensors, shapes = {}, {}
  for name, value in traverse_util.flatten_dict(params, sep="/").items():
    value = np.asarray(value)
    if is_sparse(name):
      tensors[name + _BITMAP], tensors[name + _VALUES] = encode(value)
      shapes[name] = list(value.shape)
    else:
      tensors[name] = np.ascontiguousarray(value)
  save_file(tensors, path, metadata={_META: json.dumps(shapes)})


def load(path: str) -> dict:
  """The dense parameter tree `save` wrote."""
  with safe_open(path, framework="np") as f:
    shapes = json.loads(f.metadata()[_META])
  tensors = load_file(path)
  flat = {n: v for n, v in tensors.items() if not n.endswith((_BITMAP, _VALUES))}
  for name, shape in shapes.items():
    flat[name] = decode(tensors[name + _BITMAP], tensors[name + _VALUES], tuple(shape))
  return traverse_util.unflatten_dict(flat, sep="/")
