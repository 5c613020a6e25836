"""What a downstream task type provides: features, a model (backbone + head), a loss, decoding
of the model's outputs into predictions, and metrics over those predictions.

Every task model keeps the pretrained Transformer under `params["backbone"]`, exactly where the
pretraining models keep it, so a pretraining checkpoint loads into it by path (see
lmreuse/train/restore.py). Heads are new parameters.

Data flow for one task:
  canonical example (its fields: the task type's row in lmreuse/tasks/types.py)
    → `features(example, rng)`: fixed-shape numpy arrays per feature + host-side `meta`
    → batches → model (`loss` in training; `predict` at evaluation, jitted)
    → `postprocess(examples, metas, outputs)` → one prediction per example → `metrics`.

`metrics` is the classmethod `score` on the examples' gold fields, so a study can re-score
predictions.jsonl records (which carry those fields) without building a model or a tokenizer.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lmreuse.data.tokenizer import Tokenizer
from lmreuse.eval.metrics import SufficientStatistics
from lmreuse.models.config import TransformerConfig
from lmreuse.train.trainer import MetricPairs

Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Feature:
  """One model input: `arrays` go to the device, `meta` stays on the host for decoding."""

  arrays: Arrays
  meta: Any = None


@dataclasses.dataclass(frozen=True)
class TaskContext:
  """Everything a task type is built from."""

  model_cfg: TransformerConfig
  tokenizer: Tokenizer
  task: ml_collections.ConfigDict  # config.task
  labels: list | None  # classification labels / tagging tags (sorted)
  max_len: int  # input length in tokens
  label_smoothing: float = 0.0
  positive_label: Any = None  # the dataset's binary-F1 class (config.task.positive_label
  # overrides it)


class TaskType(abc.ABC):
  """A kind of downstream problem (classification, tagging, ...); one subclass per file."""

  name: str = ""
  architectures: tuple[str, ...] = ("encoder", "decoder", "encoder_decoder")
  gold_fields: tuple[str, ...] = ()  # the example fields `score` reads the answers from

  def __init__(self, ctx: TaskContext):
    self.ctx = ctx
    arch = ctx.model_cfg.architecture
    if arch not in self.architectures:
      raise ValueError(
          f"task type {self.name!r} cannot run on the {arch} architecture; it needs "
          f"one of {self.architectures}"
      )

  @property
  def random_features(self) -> bool:
    """Whether training features depend on the `rng` (augmentation); if not, the training
    pipeline featurizes each example once."""
    return False

  @abc.abstractmethod
  def features(self, example: dict, rng: np.random.Generator | None) -> list[Feature]:
    """Model inputs for one example; `rng` is given in training (augmentation), else None."""

  @abc.abstractmethod
  def model(self) -> nn.Module:
    """A module whose `__call__(batch, deterministic)` returns the head's outputs."""

  @abc.abstractmethod
  def loss(self, outputs: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, MetricPairs]:
    """Scalar training loss and metric pairs; padding examples have batch['weight'] == 0."""

  # How distillation (lmreuse/compression/distill.py) matches a teacher's `soft_targets`:
  # 'logits' by the KL divergence of temperature-softened distributions, 'values' (regression)
  # by squared error.
  soft_target_kind = "logits"

  @abc.abstractmethod
  def soft_targets(
      self, outputs: Any, batch: dict[str, jax.Array]
  ) -> list[tuple[jax.Array, jax.Array]]:
    """(outputs [..., C], weights [...]) pairs that a student matches to its teacher's, weighted
    as `loss` weighs the labels (padding weighs 0)."""

  def predict(
      self, module: nn.Module, params: Any, batch: dict[str, jax.Array]
  ) -> dict[str, jax.Array]:
    """Per-example outputs at evaluation (jitted); generation overrides this."""
    return self.outputs_for_decoding(module.apply({"params": params}, batch))

  def outputs_for_decoding(self, outputs: Any) -> dict[str, jax.Array]:
    return outputs

  @abc.abstractmethod
  def postprocess(
      self,
      examples: Sequence[dict],
      example_index: np.ndarray,
      metas: Sequence[Any],
      outputs: dict[str, np.ndarray],
  ) -> list[Any]:
    """One prediction per example from the per-feature outputs (host side); feature i came
    from examples[example_index[i]] (one feature per example except in windowed QA)."""

  @classmethod
  def score(
      cls,
      examples: Sequence[dict],
      predictions: Sequence[Any],
      positive_label: Any = None,
      *,
      metric: str | None = None,
  ) -> dict[str, float]:
    """Task metrics from maintained libraries (lmreuse/eval/metrics.py), from the gold answers in
    `examples` alone (examples or predictions.jsonl records). With `metric`, only that entry:
    a bootstrap re-scores thousands of resamples and should not pay for the other metrics."""
    result = cls._metrics(examples, predictions, positive_label, metric)
    if metric is None:
      return result
    if metric not in result:
      raise ValueError(f"metric {metric!r} is not one of the {cls.name} metrics {sorted(result)}")
    return {metric: result[metric]}

  @classmethod
  @abc.abstractmethod
  def _metrics(
      cls,
      examples: Sequence[dict],
      predictions: Sequence[Any],
      positive_label: Any,
      metric: str | None,
  ) -> dict[str, float]:
    """The metrics `score` selects from: all of them, or with `metric` given at least that one
    (a type may skip the others' cost)."""

  @classmethod
  def per_example(
      cls, examples: Sequence[dict], predictions: Sequence[Any]
  ) -> dict[str, np.ndarray]:
    """One value per example for the metrics that are means over examples (their mean is
    `score`'s value), so resampling the test set needs no re-scoring; the others are absent."""
    return {}

  @classmethod
  def sufficient_statistics(
      cls, examples: Sequence[dict], predictions: Sequence[Any]
  ) -> dict[str, SufficientStatistics]:
    """Metric -> (per-example counts [n_examples, k], the function of their sum [..., k] that
    gives the metric) for corpus metrics built from counts that add up over examples (corpus
    BLEU, entity F1): a resample's value is then a sum and one call, not a re-scoring. The
    function of the full set's sum is `score`'s value exactly; other metrics are absent."""
    return {}

  def metrics(self, examples: Sequence[dict], predictions: Sequence[Any]) -> dict[str, float]:
    """`score` with what this instance knows beyond the examples (a positive label)."""
    return self.score(examples, predictions)

  def record(self, example: dict, prediction: Any) -> dict:
    """One line of predictions.jsonl: the example's inputs, its gold answer, the prediction."""
    return {**example, "prediction": prediction}


def cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array, smoothing: float) -> jax.Array:
  """Per-row cross-entropy in fp32 against (optionally label-smoothed) one-hot targets."""
  logits_BxC = logits_BxC.astype(jnp.float32)
  targets = jax.nn.one_hot(labels_B, logits_BxC.shape[-1])
  if smoothing:
    targets = optax.smooth_labels(targets, smoothing)
  return optax.softmax_cross_entropy(logits_BxC, targets)
