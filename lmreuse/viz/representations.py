"""How fine-tuning reshapes the representation the task head reads.

PCA and t-SNE projections of the pooled features before fine-tuning (initial or pretrained
parameters) and after, coloured by label where the examples have one, plus the silhouette score
of the labels in the full feature space: a number to cite, where the pictures only suggest.
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Hashable, Sequence
from typing import Any

import flax.linen as nn
import jax
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from lmreuse.tasks import encoding
from lmreuse.tasks.classification import PooledModel
from lmreuse.tasks.evaluation import EvalSet, padded_batches

PROJECTIONS = ("pca", "tsne")


def _pooled_BxD(module: nn.Module, batch: dict[str, jax.Array]) -> jax.Array:
  """The head's input on pooled tasks; elsewhere a padding-aware mean of the hidden states."""
  if isinstance(module, PooledModel):
    return module.pooled(batch)
  hidden_BxLxD = encoding.hidden_states(module.backbone, module.cfg, batch, deterministic=True)
  return encoding.pool(hidden_BxLxD, batch["segment_ids"], "mean")


@functools.partial(jax.jit, static_argnums=0)
def _features_BxD(module: nn.Module, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
  return module.apply({"params": params}, batch, method=_pooled_BxD)


def pooled_features(
    module: nn.Module, params: Any, eval_set: EvalSet, batch_size: int = 32
) -> np.ndarray:
  """[N_features, D] float32 representations of every feature of the split, in order."""
  chunks = [
      np.asarray(_features_BxD(module, params, batch), np.float32)[:real]
      for batch, real in padded_batches(eval_set.features, batch_size)
  ]
  return np.concatenate(chunks)


def feature_labels(eval_set: EvalSet, key: str = "label") -> list | None:
  """The label of each feature's example (windowed QA has several features per example); None
  where the examples have no `key` (extractive QA, seq2seq, tagging's per-token tags)."""
  if not eval_set.examples or key not in eval_set.examples[0]:
    return None
  return [eval_set.examples[i][key] for i in eval_set.example_index]


def project(features_NxD: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
  """[N, 2] points; t-SNE's perplexity shrinks on small splits, where 30 would exceed N."""
  if method == "pca":
    return PCA(n_components=2, random_state=seed).fit_transform(features_NxD)
  if method == "tsne":
    perplexity = min(30.0, (len(features_NxD) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        features_NxD
    )
  raise ValueError(f"projection method {method!r} is not one of {PROJECTIONS}")


def projection_figure(
    points_Nx2: np.ndarray, labels: Sequence[Hashable] | None, title: str, max_labels: int = 10
) -> Figure:
  """Scatter coloured by the `max_labels` most frequent labels, the rest grey as 'other'; one
  colour and no legend without labels."""
  fig = Figure(figsize=(7, 5))
  ax = fig.add_subplot()
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  if labels is None:
    ax.scatter(*points_Nx2.T, s=12, color="C0")
    return fig
  names = [str(label) for label in labels]
  top = [name for name, _ in collections.Counter(names).most_common(max_labels)]
  colours = matplotlib.colormaps["tab10" if max_labels <= 10 else "tab20"]
  names_N = np.asarray(names)
  for i, name in enumerate(top):
    ax.scatter(*points_Nx2[names_N == name].T, s=12, color=colours(i), label=name, zorder=2)
  other_N = ~np.isin(names_N, top)
  if other_N.any():  # beneath the named labels, last in the legend
    ax.scatter(*points_Nx2[other_N].T, s=12, color="lightgrey", label="other", zorder=1)
  ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
  return fig


def plot_projection(
    points_Nx2: np.ndarray, labels: Sequence[Hashable] | None, title: str, path: str
) -> str:
  """`projection_figure` as a PNG at `path`."""
  projection_figure(points_Nx2, labels, title).savefig(path, dpi=120, bbox_inches="tight")
  return path


def write_representation_plots(
    out_dir: str,
    module: nn.Module,
    params_before: Any,
    params_after: Any,
    eval_set: EvalSet,
    labels: Sequence[Hashable] | None,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[list[str], dict[str, float]]:
  """Writes {pca,tsne}_{before,after}.png; returns their paths and the silhouette scores.

  `labels` has one entry per feature (see `feature_labels`), or is None: one colour, no
  silhouettes. Silhouettes (Euclidean, in [-1, 1], higher = labels better separated) are keyed
  'before' / 'after' and left out when the labels cannot define clusters (fewer than 2 distinct
  labels, or every point its own label).
  """
  if labels is not None and len(labels) != len(eval_set.features):
    raise ValueError(
        f"{len(labels)} labels for the {len(eval_set.features)} features of "
        f"{eval_set.name}: give one label per feature"
    )
  os.makedirs(out_dir, exist_ok=True)
  paths, silhouette = [], {}
  for stage, params in (("before", params_before), ("after", params_after)):
    features_NxD = pooled_features(module, params, eval_set, batch_size)
    if labels is not None and 2 <= len(set(labels)) < len(labels):
      silhouette[stage] = float(silhouette_score(features_NxD, [str(x) for x in labels]))
    for method in PROJECTIONS:
      path = os.path.join(out_dir, f"{method}_{stage}.png")
      title = f"{eval_set.name}: {method.upper()} {stage} fine-tuning"
      paths.append(plot_projection(project(features_NxD, method, seed), labels, title, path))
  return paths, silhouette
