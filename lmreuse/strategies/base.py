"""What a fine-tuning strategy may do, and the parameter-path vocabulary strategies share.

A strategy can (a) change the model through TransformerConfig switches (adapters, LoRA, IA3,
prefixes, prompts); (b) say which parameters train; (c) scale the learning rate per parameter; (d)
let a parameter start training only from some step (gradual unfreezing, LP-FT); (e) wrap the
optimizer (pruning's masks); (f) wrap the task module (QAT's quantized computation). Each answers
per parameter path ("backbone/stack/layers_3/mlp/wi/kernel"), so the same strategy serves encoders,
decoders and encoder-decoders, and strategies combine (see lmreuse/strategies/__init__.py).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections
import optax

from lmreuse.models.config import STRATEGY_MODULES, TransformerConfig

# Parameters that strategies add to the model: adapters, IA3 vectors, prefixes, soft prompts,
# LoRA factors.
STRATEGY_PARAM = re.compile("|".join(STRATEGY_MODULES.values()))
_LAYER = re.compile(r"/layers_(\d+)/")
_EMBEDDING = re.compile(r"(token_embed|position_embed|token_type_embed|relative_bias)/")


@dataclasses.dataclass(frozen=True)
class StrategyContext:
  """What strategies see of the run."""

  model_cfg: TransformerConfig
  task_type: str
  total_steps: int


def is_strategy_param(path: str) -> bool:
  return bool(STRATEGY_PARAM.search(path))


def is_head(path: str) -> bool:
  """Task-head parameters: everything outside the pretrained Transformer (and its additions)."""
  return not path.startswith("backbone/")


def top_depth(cfg: TransformerConfig) -> int:
  """The depth above the top layer: final norms, LM head, task heads."""
  return cfg.stack_depth + 1


def depth(path: str, cfg: TransformerConfig) -> int:
  """0 for embeddings, i + 1 for layer i of any stack, `top_depth` above the top layer. Encoder
  and decoder layers of the same index share a depth."""
  top = top_depth(cfg)
  if is_head(path):
    return top
  layer = _LAYER.search(path)
  if layer:
    return int(layer.group(1)) + 1
  if _EMBEDDING.search(path) or path.endswith("/prompt"):
    return 0
  if re.search(r"(^|/)norm/", path):  # the stack norm: after the embeddings when post-norm
    return 0 if cfg.norm_placement == "post" else top
  return top  # lm_head


class Strategy:
  """Defaults say nothing: every parameter trains at the base learning rate from step 0."""

  name = ""
  defaults: dict[str, Any] = {}  # this strategy's config.strategy keys and their defaults
  # How much higher this strategy's best learning rate typically is than full fine-tuning's:
  # training few parameters from a frozen backbone wants larger steps (the LoRA, adapter and
  # BitFit papers all tune higher rates). Study presets centre each strategy's default
  # learning-rate sweep on the full fine-tuning range times this factor.
  learning_rate_scale: float = 1.0

  def __init__(self, cfg: ml_collections.ConfigDict, ctx: StrategyContext):
    self.cfg, self.ctx = cfg, ctx

  def model(self, model_cfg: TransformerConfig) -> TransformerConfig:
    """(a) Switch on modules the strategy inserts."""
    return model_cfg

  def init_pretrained(self, params: dict, seed: int) -> dict:
    """(a) Initialise added parameters from the loaded weights (prompt tuning from vocabulary)."""
    return params

  def trainable(self, path: str) -> bool | None:
    """(b) True / False, or None for no opinion (another strategy decides, else it trains)."""
    return None

  def lr_scale(self, path: str) -> float:
    """(c) Multiplier on the learning rate of this parameter."""
    return 1.0

  def start_step(self, path: str) -> int:
    """(d) The step from which this parameter trains."""
    return 0

  def optimizer(self, opt: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Changes to the optimizer config (e.g. ULMFiT's slanted triangular schedule)."""
    return opt

  def module(self, module: nn.Module) -> nn.Module:
    """(f) The task module as trained and evaluated (QAT computes it quantized)."""
    return module

  def must_train(self, path: str) -> bool:
    """True for parameters the strategy changes while training (pruning's kernels): another
    strategy of the combination freezing one is an error."""
    return False

  def wrap_optimizer(
      self, tx: optax.GradientTransformation, trainables: Any
  ) -> optax.GradientTransformation:
    """(e) A transformation around the optimizer (pruning's masks); `trainables` is the
    trainable part of the abstract params."""
    return tx

  def first_selectable_step(self) -> int:
    """The first step whose evaluation may select the checkpoint (pruning: once the final
    sparsity is reached)."""
    return 0

  def report(self, params: Any, to_host: Callable[[Any], Any]) -> dict:
    """Entries for results.json about the selected parameters; `to_host` fetches a subtree of
    them (a collective with several processes: every process reports)."""
    return {}

  def sparse(self, path: str) -> bool:
    """Whether the strategy leaves the parameter mostly zeros, so the run stores it sparse
    (lmreuse/compression/sparse.py)."""
    del path
    return False

  def check(self, paths: list[str]) -> None:
    """Raises ValueError, before training, when the strategy does not fit the model."""


class InsertedModules(Strategy):
  """Inserts modules sized by one config key (`size_key`, also the TransformerConfig field) and
  trains only them and the head: the shape of adapters, prefix and prompt tuning."""

  size_key = ""

  def model(self, model_cfg: TransformerConfig) -> TransformerConfig:
    return dataclasses.replace(model_cfg, **{self.size_key: self.cfg[self.size_key]})

  def trainable(self, path: str) -> bool:
    return frozen_backbone(path)

  def check(self, paths: list[str]) -> None:
    if self.cfg[self.size_key] <= 0:
      raise ValueError(
          f"config.strategy.{self.size_key}={self.cfg[self.size_key]} must be " "positive"
      )


def frozen_backbone(path: str, also: re.Pattern | None = None) -> bool:
  """Train strategy parameters, the task head and paths matching `also`; freeze the rest."""
  return is_head(path) or is_strategy_param(path) or bool(also and also.search(path))


def compile_regexes(value: str, key: str) -> re.Pattern | None:
  """A comma-separated list of regexes (config strings cannot hold lists) as one pattern."""
  parts = [p.strip() for p in value.split(",") if p.strip()]
  if not parts:
    return None
  for part in parts:
    try:
      re.compile(part)
    except re.error as e:
      raise ValueError(f"config.strategy.{key}: {part!r} is not a regex: {e}") from e
  return re.compile("|".join(f"(?:{p})" for p in parts))
