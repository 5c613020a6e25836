"""Layer-wise learning-rate decay (discriminative fine-tuning, Howard & Ruder 2018; ELECTRA):
lr(depth d) = lr · decay^(L + 1 − d), so the head trains at the full rate, each layer below at
`decay` times the one above, and the embeddings lowest."""

from __future__ import annotations

from lmreuse.strategies import base


class LLRD(base.Strategy):
  name = "llrd"
  defaults = {"decay": 0.9}

  def lr_scale(self, path: str) -> float:
    cfg = self.ctx.model_cfg
    return float(self.cfg.decay) ** (base.top_depth(cfg) - base.depth(path, cfg))

  def check(self, paths: list[str]) -> None:
    if not 0.0 < self.cfg.decay <= 1.0:
      raise ValueError(f"config.strategy.decay={self.cfg.decay} must be in (0, 1]")


STRATEGY = LLRD
