"""Evaluating a task model on a whole split: every example counts, predictions come back.

Features are built once per split; batches are padded to the training batch size with
zero-weight rows, so the last partial batch is evaluated too and shapes stay static (one
compilation, ahead of time and counted as the trainer's compile time). The step returns the
task's per-feature outputs and the loss pairs, replicated: with several processes each feeds its
rows of every batch and all get every prediction, so all compute the same metrics (and take the
same early-stopping decision).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from lmreuse.parallel import sharding as sharding_lib
from lmreuse.tasks.base import Feature, TaskType
from lmreuse.train import compute
from lmreuse.train.trainer import LossFn, Trainer, reduce_pairs


@dataclasses.dataclass
class EvalSet:
  """One split's examples and their features (`example_index[i]` = example of feature i)."""

  name: str
  examples: Sequence[dict]
  features: list[Feature]
  example_index: np.ndarray


def featurize(task: TaskType, name: str, examples: Sequence[dict], origin: str = "") -> EvalSet:
  """Features of every example; a bad example's error names the split and its index."""
  features, index = [], []
  for i in tqdm.trange(
      len(examples), desc=f"featurize {name}", leave=False, disable=len(examples) < 5000
  ):
    try:
      out = task.features(examples[i], None)
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{origin or name}: example {i}: {e}") from e
    features.extend(out)
    index.extend([i] * len(out))
  if not features:
    raise ValueError(f"{origin or name}: the {name} split has no usable examples")
  return EvalSet(name, examples, features, np.asarray(index, np.int64))


def padded_batches(features: list[Feature], batch_size: int) -> Iterator[tuple[dict, int]]:
  """(batch, number of real rows); padding rows copy row 0 with weight 0."""
  for start in range(0, len(features), batch_size):
    rows = [f.arrays for f in features[start : start + batch_size]]
    real = len(rows)
    rows += [{**rows[0], "weight": np.float32(0.0)}] * (batch_size - real)
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}, real


class Evaluator:
  """Runs a task's `predict` and loss over EvalSets with one compiled step.

  By default the step evaluates the trainer's program; a multi-task run evaluates each task with
  its own `loss_fn` on `params_of(params)`, the task's view of the shared tree (taken inside the
  step, so nothing is copied).
  """

  def __init__(
      self,
      trainer: Trainer,
      task: TaskType,
      module: Any,
      batch_size: int,
      loss_fn: LossFn | None = None,
      params_of: Callable[[Any], Any] = lambda params: params,
  ):
    self.trainer, self.task, self.batch_size = trainer, task, batch_size
    self._rows = np.asarray(trainer.host_rows(batch_size))
    loss_fn = loss_fn or trainer.program.loss_fn

    def step(params, batch):
      params = params_of(params)
      _, pairs = loss_fn(params, batch, jax.random.PRNGKey(0), False)
      return task.predict(module, params, batch), pairs

    self._step = compute.AheadOfTime(
        jax.jit(step, out_shardings=trainer.replicated).lower, trainer.timers
    )

  def __call__(self, params: Any, eval_set: EvalSet) -> tuple[dict[str, float], list]:
    """(metrics without prefix, one prediction per example)."""
    outputs: dict[str, list[np.ndarray]] = {}
    totals = None
    with sharding_lib.mesh_context(self.trainer.mesh, self.trainer.rules):
      for batch, real in padded_batches(eval_set.features, self.batch_size):
        local = {k: v[self._rows] for k, v in batch.items()}
        out, pairs = self._step(params, self.trainer.device_batch(local))
        for key, value in jax.device_get(out).items():
          outputs.setdefault(key, []).append(np.asarray(value)[:real])
        totals = pairs if totals is None else jax.tree.map(np.add, totals, pairs)
    merged = {k: np.concatenate(v) for k, v in outputs.items()}
    metas = [f.meta for f in eval_set.features]
    predictions = self.task.postprocess(eval_set.examples, eval_set.example_index, metas, merged)
    scores = reduce_pairs(jax.device_get(totals))
    scores.update(self.task.metrics(eval_set.examples, predictions))
    return scores, predictions
