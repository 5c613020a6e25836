"""Train the parameters whose paths match regexes (e.g. attention only: 'attention/'; norms
only: '_norm/|/norm/'); the task head always trains."""

from __future__ import annotations

from lmreuse.strategies import base


class Modules(base.Strategy):
  name = "modules"
  defaults = {"patterns": ""}  # comma-separated regexes over parameter paths

  def __init__(self, cfg, ctx):
    super().__init__(cfg, ctx)
    self.pattern = base.compile_regexes(cfg.patterns, "patterns")

  def trainable(self, path: str) -> bool:
    return base.is_head(path) or bool(self.pattern and self.pattern.search(path))

  def check(self, paths: list[str]) -> None:
    if self.pattern is None:
      raise ValueError("strategy 'modules' needs config.strategy.patterns, e.g. 'attention/'")
    backbone = [p for p in paths if not base.is_head(p)]
    if not any(self.pattern.search(p) for p in backbone):
      raise ValueError(
          f"config.strategy.patterns={self.cfg.patterns!r} matches no parameter of "
          f"the backbone; paths look like {backbone[:3]}"
      )


STRATEGY = Modules
