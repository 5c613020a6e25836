"""Fine-tuning strategies by name: one file each, one registry line each.

`config.strategy.name` is one name or a comma-separated combination ("lora,llrd",
"adapters,modules"): model changes compose; a parameter trains if any strategy trains it (if
none has an opinion, it trains); LR scales multiply; the latest start step wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax
from flax import traverse_util

from lmreuse.strategies import base, gates
from lmreuse.strategies.base import StrategyContext, is_strategy_param
from lmreuse.train.trainer import select_trainable

__all__ = [
    "Plan",
    "StrategyContext",
    "config_defaults",
    "is_strategy_param",
    "learning_rate_scale",
    "names",
    "own_keys",
]


def _registry() -> dict[str, type[base.Strategy]]:
  from lmreuse.strategies import (
      adapters,
      bitfit,
      dora,
      frozen,
      full,
      gradual_unfreeze,
      ia3,
      llrd,
      lora,
      lp_ft,
      modules,
      prefix_tuning,
      prompt_tuning,
      prune,
      qat,
      top_k,
      vera,
  )

  classes = [
      full.STRATEGY,
      frozen.STRATEGY,
      frozen.LinearProbe,
      top_k.STRATEGY,
      modules.STRATEGY,
      gradual_unfreeze.STRATEGY,
      llrd.STRATEGY,
      lp_ft.STRATEGY,
      bitfit.STRATEGY,
      adapters.STRATEGY,
      lora.STRATEGY,
      dora.STRATEGY,
      vera.STRATEGY,
      ia3.STRATEGY,
      prompt_tuning.STRATEGY,
      prefix_tuning.STRATEGY,
      prune.STRATEGY,
      qat.STRATEGY,
  ]
  return {cls.name: cls for cls in classes}


def names() -> list[str]:
  return sorted(_registry())


def _components(name: str) -> list[type[base.Strategy]]:
  registry = _registry()
  requested = [n.strip() for n in name.split(",") if n.strip()]
  unknown = [n for n in requested if n not in registry]
  if not requested or unknown:
    raise ValueError(
        f"config.strategy.name={name!r}: unknown strategy {unknown or ''}; "
        f"choose from {sorted(registry)}, or combine them with commas"
    )
  return [registry[n] for n in requested]


def learning_rate_scale(name: str) -> float:
  """The strategy's typical best learning rate relative to full fine-tuning's; a combination
  takes its largest (a frozen backbone's small trainable part sets the pace)."""
  return max(cls.learning_rate_scale for cls in _components(name))


def own_keys(name: str) -> tuple[str, ...]:
  """The config.strategy keys the strategy (or each part of a combination) reads."""
  return tuple(key for cls in _components(name) for key in cls.defaults)


def config_defaults() -> dict[str, Any]:
  """config.strategy: the name plus every strategy's own keys (names are unique across them)."""
  out: dict[str, Any] = {"name": "full"}
  for cls in _registry().values():
    for key, value in cls.defaults.items():
      if key in out and out[key] != value:
        raise ValueError(f"strategy key {key!r} is declared twice with different defaults")
      out[key] = value
  return out


class Plan:
  """The combination of strategies a run uses, answering per parameter path."""

  def __init__(self, cfg: Any, ctx: StrategyContext):
    classes = _components(cfg.name)
    self.name = ",".join(cls.name for cls in classes)
    self.strategies = [cls(cfg, ctx) for cls in classes]

  def _fold(self, method: str, value: Any, *args) -> Any:
    for strategy in self.strategies:
      value = getattr(strategy, method)(value, *args)
    return value

  def model(self, model_cfg):
    return self._fold("model", model_cfg)

  def optimizer(self, opt):
    return self._fold("optimizer", opt)

  def module(self, module):
    return self._fold("module", module)

  def init_pretrained(self, params: dict, seed: int) -> dict:
    return self._fold("init_pretrained", params, seed)

  def trainable(self, path: str) -> bool:
    votes = [s.trainable(path) for s in self.strategies]
    return any(votes) or all(v is None for v in votes)

  def lr_scale(self, path: str) -> float:
    scale = 1.0
    for strategy in self.strategies:
      scale *= strategy.lr_scale(path)
    return scale

  def start_step(self, path: str) -> int:
    return max(s.start_step(path) for s in self.strategies)

  def first_selectable_step(self) -> int:
    return max(s.first_selectable_step() for s in self.strategies)

  def report(self, params: Any, to_host: Callable[[Any], Any]) -> dict:
    return {k: v for s in self.strategies for k, v in s.report(params, to_host).items()}

  def sparse(self, path: str) -> bool:
    return any(s.sparse(path) for s in self.strategies)

  def check(self, paths: list[str]) -> None:
    for strategy in self.strategies:
      strategy.check(paths)
      frozen = [p for p in paths if strategy.must_train(p) and not self.trainable(p)]
      if frozen:
        raise ValueError(
            f"strategy {strategy.name!r} changes {frozen[0]} (and {len(frozen) - 1} more) while "
            f"training, but {self.name!r} freezes it"
        )
    if not any(self.trainable(p) for p in paths):
      raise ValueError(f"strategy {self.name!r} leaves no parameter to train")

  def by_path(self, params: Any, value_of: Callable[[str], Any]) -> Any:
    """A tree shaped like `params` holding `value_of(path)` at each leaf, e.g.
    `plan.by_path(params, plan.trainable)` (the trainable mask) or `plan.start_step`."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict({p: value_of(p) for p in flat}, sep="/")

  def wrap_optimizer(
      self, tx: optax.GradientTransformation, params: Any, mask: Any
  ) -> optax.GradientTransformation:
    """Adds per-parameter LR scales and start steps to `tx` (a no-op when all are trivial),
    then the strategies' own transformations."""
    tx = gates.wrap(
        tx,
        select_trainable(self.by_path(params, self.lr_scale), mask),
        select_trainable(self.by_path(params, self.start_step), mask),
    )
    for strategy in self.strategies:
      tx = strategy.wrap_optimizer(tx, select_trainable(params, mask))
    return tx
