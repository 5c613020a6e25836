"""optax optimizer and schedule from `config.optimizer`."""

from __future__ import annotations

from typing import Any

import jax
import optax

SCHEDULES = ("linear", "cosine", "constant")
OPTIMIZERS = ("adamw", "adafactor")


def make_schedule(opt: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then linear/cosine decay to `end_lr_factor` × peak (or constant)."""
  peak, warmup = opt.learning_rate, opt.warmup_steps
  end = peak * opt.end_lr_factor
  decay_steps = max(total_steps - warmup, 1)
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, warmup + decay_steps, end)
  after = (
      optax.constant_schedule(peak)
      if opt.schedule == "constant"
      else optax.linear_schedule(peak, end, decay_steps)
  )
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices only: biases and norm scales (1-D) are never decayed."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    opt: Any, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = make_schedule(opt, total_steps)
  if opt.name == "adamw":
    core = optax.adamw(
        schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask
    )
  else:
    core = optax.adafactor(
        schedule, weight_decay_rate=opt.weight_decay or None, weight_decay_mask=decay_mask
    )
  parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm > 0 else []
  return optax.chain(*parts, core), schedule


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
