"""Train only the top k layers (of every stack) plus what sits above them and the head."""

from __future__ import annotations

from lmreuse.strategies import base


class TopK(base.Strategy):
  name = "top_k"
  defaults = {"k": 2}

  def trainable(self, path: str) -> bool:
    cfg = self.ctx.model_cfg
    return base.is_strategy_param(path) or base.depth(path, cfg) > cfg.stack_depth - self.cfg.k

  def check(self, paths: list[str]) -> None:
    depth = self.ctx.model_cfg.stack_depth
    if not 0 <= self.cfg.k <= depth:
      raise ValueError(
          f"config.strategy.k={self.cfg.k} must be in [0, {depth}]: the model "
          f"has {depth} layers"
      )


STRATEGY = TopK
