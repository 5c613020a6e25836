"""Feature extraction: the pretrained Transformer is frozen; the task head (plus any modules
named by `train_modules`) trains. `linear_probe` trains the head's final linear layer alone
(plus `train_modules`)."""

from __future__ import annotations

import re

from lmreuse.strategies import base


class Frozen(base.Strategy):
  name = "frozen"
  learning_rate_scale = 3.0
  defaults = {"train_modules": ""}  # comma-separated regexes of extra paths that train

  def __init__(self, cfg, ctx):
    super().__init__(cfg, ctx)
    self.also = base.compile_regexes(cfg.train_modules, "train_modules")

  def trainable(self, path: str) -> bool:
    return base.frozen_backbone(path, self.also)

  def check(self, paths: list[str]) -> None:
    if not any(self.trainable(p) for p in paths):
      raise ValueError(
          f"strategy {self.name!r} leaves nothing to train: a {self.ctx.task_type} model has no "
          "parameters outside its backbone (the LM head is the tied token embedding). Add "
          "config.strategy.train_modules or pick another strategy"
      )


class LinearProbe(Frozen):
  """Only the last linear layer of the head: the classic probe of representation quality."""

  name = "linear_probe"

  def trainable(self, path: str) -> bool:
    # "classifier/..." or, in a multi-task run, "<task>/classifier/..."
    head_classifier = base.is_head(path) and bool(re.search(r"(^|/)classifier/", path))
    return head_classifier or bool(self.also and self.also.search(path))


STRATEGY = Frozen
