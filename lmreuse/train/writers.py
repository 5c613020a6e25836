"""Where metrics go: metrics.jsonl, TensorBoard (tensorboardX) and absl logging; process 0 only."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging

from lmreuse import workdir as workdir_lib


def _tensorboard_writer(logdir: str, purge_step: int | None) -> Any:
  """tensorboardX's SummaryWriter, imported with torch hidden.

  tensorboardX imports torch whenever it is installed (it is, beside lmreuse, for the Hugging
  Face reference tests), only to accept torch tensors; lmreuse logs Python numbers, and torch's
  import would be the slowest part of a run's start-up. A None entry in sys.modules makes
  `import torch` raise ImportError, which tensorboardX catches; torch imports normally after.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter(logdir, purge_step=purge_step)


def _jsonable(value: Any) -> Any:
  value = float(value) if hasattr(value, "__float__") else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricWriter:
  """Appends one JSON object per logged step; on resume, drops lines past the restored step.

  Dropping the tail keeps metrics.jsonl identical to an uninterrupted run's.
  """

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, workdir_lib.METRICS)
    if not self.enabled:
      return
    self._truncate_after(resume_step)
    self.tb = _tensorboard_writer(
        os.path.join(workdir, workdir_lib.TENSORBOARD),
        purge_step=resume_step + 1 if resume_step else None,
    )

  def _truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    workdir_lib.write_atomically(self.path, "".join(kept))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _jsonable(v) for k, v in sorted(metrics.items())}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self.tb.add_scalar(key, value, step)
    # Training rows go to the console only at --verbosity=1 (the progress bar shows the loss;
    # a line per log step would break it); rows with evaluation metrics always do.
    level = logging.INFO if any(not k.startswith("train/") for k in metrics) else logging.DEBUG
    logging.log(
        level,
        "step %d: %s",
        step,
        ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in record.items()
            if k != "step"
        ),
    )

  def flush(self) -> None:
    if self.enabled:
      self.tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, workdir_lib.METRICS)) as f:
    return [json.loads(line) for line in f if line.strip()]
