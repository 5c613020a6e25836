"""Best-checkpoint selection and early stopping on a validation metric.

The history of (step, value) is saved beside the best checkpoint, so a resumed run knows its
best so far and how long it has gone without improving; entries past the step a run resumes
from are dropped, as MetricWriter drops metrics.jsonl lines, because they will be replayed.
"""

from __future__ import annotations

import dataclasses
import json
import os

from lmreuse import workdir as workdir_lib

LOWER_IS_BETTER = ("loss", "mse")


def default_mode(metric: str) -> str:
  return "min" if metric in LOWER_IS_BETTER else "max"


@dataclasses.dataclass
class EarlyStopping:
  metric: str
  mode: str
  patience: int  # evaluations without improvement before stopping; 0 = never stop
  history: list[tuple[int, float]] = dataclasses.field(default_factory=list)
  best_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  stopped_at: int = 0

  def __post_init__(self):
    if self.mode not in ("max", "min"):
      raise ValueError(f"config.early_stopping.mode={self.mode!r} must be 'max' or 'min'")
    if self.patience < 0:
      raise ValueError(f"config.early_stopping.patience={self.patience} must be >= 0")

  def _better(self, a: float, b: float) -> bool:
    return a > b if self.mode == "max" else a < b

  @property
  def best(self) -> tuple[int, float] | None:
    best = None
    for step, value in self.history:
      if best is None or self._better(value, best[1]):
        best = (step, value)
    return best

  @property
  def evals_without_improvement(self) -> int:
    best = self.best
    return 0 if best is None else sum(step > best[0] for step, _ in self.history)

  def update(self, step: int, metrics: dict[str, float]) -> tuple[bool, bool]:
    """Records one evaluation; returns (is the new best, should training stop)."""
    if self.metric not in metrics:
      raise ValueError(
          f"config.early_stopping.metric={self.metric!r} is not among the "
          f"validation metrics {sorted(metrics)}"
      )
    previous = self.best
    value = float(metrics[self.metric])
    self.history.append((step, value))
    improved = previous is None or self._better(value, previous[1])
    if improved:
      self.best_metrics = dict(metrics)
    stop = bool(self.patience) and self.evals_without_improvement >= self.patience
    if stop:
      self.stopped_at = step
    return improved, stop

  def save(self, path: str) -> None:
    workdir_lib.write_json(path, dataclasses.asdict(self))

  @classmethod
  def restore(
      cls, path: str, metric: str, mode: str, patience: int, resume_step: int
  ) -> EarlyStopping:
    """The saved state up to `resume_step`, or a fresh one; the configured rule always wins."""
    tracker = cls(metric, mode, patience)
    if os.path.exists(path) and resume_step:
      with open(path) as f:
        saved = json.load(f)
      if saved["metric"] == metric and saved["mode"] == mode:
        tracker.history = [(s, v) for s, v in saved["history"] if s <= resume_step]
        tracker.best_metrics = saved["best_metrics"]
        tracker.stopped_at = saved["stopped_at"] if saved["stopped_at"] <= resume_step else 0
    return tracker
