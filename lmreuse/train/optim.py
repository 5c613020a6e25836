"""optax optimizer and schedule from `config.optimizer`, as functions of the peak learning rate."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import optax

SCHEDULES = ("linear", "cosine", "constant")
OPTIMIZERS = ("adamw", "adafactor")


Peak = float | jax.Array  # the peak learning rate: a number, or a traced scalar in the step


def make_schedule(opt: Any, total_steps: int, peak: Peak | None = None) -> optax.Schedule:
  """Linear warmup from 0, then linear/cosine decay to `end_lr_factor` × peak (or constant);
  `peak` is `opt.learning_rate` unless given (it may be traced: nothing branches on it)."""
  peak = opt.learning_rate if peak is None else peak
  warmup = opt.warmup_steps
  decay_steps = max(total_steps - warmup, 1)
  if opt.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.end_lr_factor)
  elif opt.schedule == "constant":
    after = optax.constant_schedule(peak)
  else:
    after = optax.linear_schedule(peak, peak * opt.end_lr_factor, decay_steps)
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices only: biases and norm scales (1-D) are never decayed."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """The optimizer as a function of its peak learning rate, and that rate.

  The jitted train step takes the peak as an argument (lmreuse/train/trainer.py) rather than
  closing over it, so runs that differ only in the rate, such as a study's learning-rate sweep,
  share one compiled step and its persistent-cache entry instead of compiling one each. The
  optimizer state does not depend on the peak, so checkpoints are the same either way.
  """

  transformation_at: Callable[[Peak], optax.GradientTransformation]
  schedule_at: Callable[[Peak], optax.Schedule]
  learning_rate: float

  def transformation(self, peak: Peak | None = None) -> optax.GradientTransformation:
    return self.transformation_at(self.learning_rate if peak is None else peak)

  def schedule(self, peak: Peak | None = None) -> optax.Schedule:
    return self.schedule_at(self.learning_rate if peak is None else peak)

  def wrapped(
      self, wrap: Callable[[optax.GradientTransformation], optax.GradientTransformation]
  ) -> Optimizer:
    """This optimizer with `wrap` applied to its transformation at every peak."""
    inner = self.transformation_at
    return dataclasses.replace(self, transformation_at=lambda peak: wrap(inner(peak)))


def make_optimizer(opt: Any, total_steps: int) -> Optimizer:
  return Optimizer(
      transformation_at=functools.partial(_transformation, opt, total_steps),
      schedule_at=functools.partial(make_schedule, opt, total_steps),
      learning_rate=opt.learning_rate,
  )


def _transformation(opt: Any, total_steps: int, peak: Peak) -> optax.GradientTransformation:
  schedule = make_schedule(opt, total_steps, peak)
  if opt.name == "adamw":
    core = optax.adamw(
        schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask
    )
  else:
    core = optax.adafactor(
        schedule, weight_decay_rate=opt.weight_decay or None, weight_decay_mask=decay_mask
    )
  parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm > 0 else []
  return optax.chain(*parts, core)


def validate(opt: Any) -> None:
  """Warmup may exceed total_steps (short smoke runs): the LR then never reaches its peak."""
  if opt.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={opt.name!r} is not one of {OPTIMIZERS}")
  if opt.schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r} is not one of {SCHEDULES}")
  if opt.learning_rate <= 0:
    raise ValueError(f"config.optimizer.learning_rate={opt.learning_rate} must be positive")
  if opt.warmup_steps < 0:
    raise ValueError(f"config.optimizer.warmup_steps={opt.warmup_steps} must be >= 0")
  if opt.end_lr_factor < 0:
    raise ValueError(f"config.optimizer.end_lr_factor={opt.end_lr_factor} must be >= 0")
  if opt.clip_norm < 0:
    raise ValueError(f"config.optimizer.clip_norm={opt.clip_norm} must be >= 0 (0 = off)")
