"""LP-FT (Kumar et al. 2022): a linear probe for `probe_steps` steps, then full fine-tuning from
that head, so the pretrained features are not distorted by a random head's early gradients."""

from __future__ import annotations

from lmreuse.strategies import base


class LPFT(base.Strategy):
  name = "lp_ft"
  defaults = {"probe_steps": 100}

  def start_step(self, path: str) -> int:
    return 0 if base.frozen_backbone(path) else self.cfg.probe_steps

  def check(self, paths: list[str]) -> None:
    if not any(base.is_head(p) for p in paths):
      raise ValueError(
          f"strategy 'lp_ft' needs a task head to probe; a {self.ctx.task_type} "
          "model has no task head (its LM head is part of the backbone)"
      )
    if not 0 < self.cfg.probe_steps < self.ctx.total_steps:
      raise ValueError(
          f"config.strategy.probe_steps={self.cfg.probe_steps} must lie in "
          f"(0, total_steps={self.ctx.total_steps})"
      )


STRATEGY = LPFT
