"""Attention maps of one input row: which tokens each head of each layer reads.

`Attention` sows its probabilities only when the 'intermediates' collection is mutable
(lmreuse/models/layers.py), so training and evaluation never pay for them.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from matplotlib.figure import Figure


@functools.partial(jax.jit, static_argnums=0)
def _intermediates(module: nn.Module, params: Any, batch: dict[str, jax.Array]) -> dict:
  _, state = module.apply({"params": params}, batch, mutable=["intermediates"])
  return state.get("intermediates", {})


def attention_maps(
    module: nn.Module, params: Any, batch_1: dict[str, jax.Array]
) -> dict[str, np.ndarray]:
  """Module path of each attention layer → its [N, T, S] probabilities, in forward order.

  Axes cover every slot the layer saw: prompt-tuning slots lead both, prefix-tuning slots the
  keys; cross-attention maps are [N, T_target, S_source].
  """
  sizes = {np.shape(v)[0] for v in batch_1.values()}
  if sizes != {1}:
    raise ValueError(f"attention maps take a batch of one row, got leading sizes {sizes}")
  flat = traverse_util.flatten_dict(_intermediates(module, params, batch_1))
  return {
      "/".join(path[:-1]): np.asarray(sown[0][0], np.float32)
      for path, sown in flat.items()
      if path[-1] == "attention_probs"
  }


def plot_attention(
    maps: dict[str, np.ndarray], tokens: list[str], path: str, max_tokens: int = 32
) -> str:
  """PNG grid of heatmaps, one row per layer and one column per head, over the row's first
  `max_tokens` real tokens (queries down, keys across; each cell's colours scaled to its max).

  The first len(tokens) slots must be the tokens: pass self-attention maps, less any
  prompt/prefix slots, and leave out cross-attention.
  """
  n = min(len(tokens), max_tokens)
  labels = tokens[:n]
  num_heads = next(iter(maps.values())).shape[0]
  cell = max(2.0, 0.15 * n)
  fig = Figure(figsize=(cell * num_heads, cell * len(maps)))
  axes = fig.subplots(len(maps), num_heads, squeeze=False)
  for row, (name, probs_NxTxS) in enumerate(maps.items()):
    for head in range(num_heads):
      ax = axes[row, head]
      ax.imshow(probs_NxTxS[head, :n, :n], cmap="viridis", vmin=0.0)
      ax.set_xticks(range(n), labels, rotation=90, fontsize=5)
      ax.set_yticks(range(n), labels, fontsize=5)
      ax.set_title(f"{name}\nhead {head}", fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path
