"""BitFit (Ben Zaken et al. 2022): only the bias terms of the backbone train, plus the head."""

from __future__ import annotations

from lmreuse.strategies import base


class BitFit(base.Strategy):
  name = "bitfit"
  learning_rate_scale = 3.0

  def trainable(self, path: str) -> bool:
    return base.frozen_backbone(path) or path.endswith("/bias")

  def check(self, paths: list[str]) -> None:
    if not any(p.endswith("/bias") and not base.is_head(p) for p in paths):
      raise ValueError(
          "strategy 'bitfit' needs a backbone with biases; this one has none "
          "(config.model.use_bias=False, as in T5)"
      )


STRATEGY = BitFit
