"""(IA)^3 (Liu et al. 2022): learned vectors rescale keys, values and FFN activations; they
start at one (the pretrained model) and are, with the head, all that trains."""

from __future__ import annotations

import dataclasses

from lmreuse.strategies import base


class IA3(base.Strategy):
  name = "ia3"
  learning_rate_scale = 3.0

  def model(self, model_cfg):
    return dataclasses.replace(model_cfg, ia3=True)

  def trainable(self, path: str) -> bool:
    return base.frozen_backbone(path)


STRATEGY = IA3
