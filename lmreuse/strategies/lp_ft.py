"""LP-FT (Kumar et al. 2022): a linear probe for `probe_steps` steps, then full fine-tuning from
that head, so the pretrained features are not distorted by a random head's early gradients.
`probe_steps=0` probes for PROBE_FRACTION of the run."""

from __future__ import annotations

from lmreuse.strategies import base

PROBE_FRACTION = 1 / 3  # of total_steps, when probe_steps is 0


class LPFT(base.Strategy):
  name = "lp_ft"
  defaults = {"probe_steps": 0}

  def __init__(self, cfg, ctx):
    super().__init__(cfg, ctx)
    self.probe_steps = cfg.probe_steps or max(1, round(PROBE_FRACTION * ctx.total_steps))

  def start_step(self, path: str) -> int:
    return 0 if base.frozen_backbone(path) else self.probe_steps

  def check(self, paths: list[str]) -> None:
    if not any(base.is_head(p) for p in paths):
      raise ValueError(
          f"strategy 'lp_ft' needs a task head to probe; a {self.ctx.task_type} "
          "model has no task head (its LM head is part of the backbone)"
      )
    if 0 < self.probe_steps < self.ctx.total_steps:
      return
    if self.cfg.probe_steps:
      raise ValueError(
          f"config.strategy.probe_steps={self.cfg.probe_steps} must lie in "
          f"(0, total_steps={self.ctx.total_steps})"
      )
    raise ValueError(
        f"strategy 'lp_ft' needs config.total_steps >= 2 (a probe step, then a fine-tuning "
        f"step), got {self.ctx.total_steps}"
    )


STRATEGY = LPFT
