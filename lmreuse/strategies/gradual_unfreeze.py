"""ULMFiT's gradual unfreezing (Howard & Ruder 2018): the head trains from the start and one more
layer, from the top down, joins every `unfreeze_every` steps; the embeddings join last.
`unfreeze_every=0` spaces the joins so that the embeddings join UNFREEZE_SPAN into the run.
`slanted_triangular` swaps in ULMFiT's schedule shape: a short linear rise over `cut_frac` of
the steps, then a linear fall to 1/32 of the peak. The rise starts from 0, as every warmup here
does, where ULMFiT's starts from 1/32 of the peak."""

from __future__ import annotations

from lmreuse.strategies import base

UNFREEZE_SPAN = 0.5  # of total_steps: when everything has joined, if unfreeze_every is 0


class GradualUnfreeze(base.Strategy):
  name = "gradual_unfreeze"
  defaults = {"unfreeze_every": 0, "slanted_triangular": False, "cut_frac": 0.1}

  def __init__(self, cfg, ctx):
    super().__init__(cfg, ctx)
    joins = base.top_depth(ctx.model_cfg)  # each layer, then the embeddings
    self.unfreeze_every = cfg.unfreeze_every or max(1, int(UNFREEZE_SPAN * ctx.total_steps / joins))

  def start_step(self, path: str) -> int:
    cfg = self.ctx.model_cfg
    return (base.top_depth(cfg) - base.depth(path, cfg)) * self.unfreeze_every

  def optimizer(self, opt):
    if not self.cfg.slanted_triangular:
      return opt
    opt = opt.copy_and_resolve_references()
    opt.schedule, opt.end_lr_factor = "linear", 1 / 32
    opt.warmup_steps = max(1, int(self.cfg.cut_frac * self.ctx.total_steps))
    return opt

  def check(self, paths: list[str]) -> None:
    if self.cfg.unfreeze_every < 0:
      raise ValueError(
          f"config.strategy.unfreeze_every={self.cfg.unfreeze_every} must be >= 0 (0 = spaced "
          "over the run)"
      )
    if not 0.0 < self.cfg.cut_frac < 1.0:
      raise ValueError(f"config.strategy.cut_frac={self.cfg.cut_frac} must be in (0, 1)")


STRATEGY = GradualUnfreeze
