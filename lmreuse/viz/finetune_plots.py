"""The figures a fine-tuning run writes when `config.viz.enabled`: representation projections
before/after fine-tuning and one example's attention maps, to W/plots/ and TensorBoard."""

from __future__ import annotations

import os
from typing import Any

import matplotlib.image
import numpy as np
from tensorboardX import SummaryWriter

from lmreuse import workdir as workdir_lib
from lmreuse.tasks.evaluation import EvalSet
from lmreuse.viz import attention, representations


def write(
    workdir: str,
    module: Any,
    params_before: Any,
    params_after: Any,
    eval_set: EvalSet,
    tokenizer: Any,
    *,
    example: int,
    seed: int,
    step: int,
) -> dict[str, Any]:
  """Writes the plots; returns their paths and the silhouette scores (before/after)."""
  out_dir = os.path.join(workdir, workdir_lib.PLOTS)
  os.makedirs(out_dir, exist_ok=True)
  labels = representations.feature_labels(eval_set)  # None: one colour (QA, seq2seq)
  paths, silhouette = representations.write_representation_plots(
      out_dir, module, params_before, params_after, eval_set, labels, seed=seed
  )
  if not 0 <= example < len(eval_set.features):
    raise ValueError(
        f"config.viz.example={example} is not a validation feature index "
        f"(0..{len(eval_set.features) - 1})"
    )
  arrays = eval_set.features[example].arrays
  batch = {k: np.asarray(v)[None] for k, v in arrays.items()}
  maps = attention.attention_maps(module, params_after, batch)
  maps = {name: m for name, m in maps.items() if "cross_attention" not in name}
  ids = [int(i) for i, s in zip(arrays["inputs"], arrays["segment_ids"]) if s > 0]
  tokens = [tokenizer.id_to_piece(i) for i in ids]
  paths.append(attention.plot_attention(maps, tokens, os.path.join(out_dir, "attention.png")))
  with SummaryWriter(os.path.join(workdir, workdir_lib.TENSORBOARD)) as tb:
    for path in paths:
      image = matplotlib.image.imread(path)[..., :3]
      tb.add_image(f"plots/{os.path.basename(path)[:-4]}", image, step, dataformats="HWC")
  return {"plots": paths, "silhouette": silhouette}
