"""Regression on a pooled representation (semantic similarity scores such as STS-B)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lmreuse.eval import metrics
from lmreuse.tasks import base
from lmreuse.tasks.classification import PooledModel, TextTask
from lmreuse.train import losses


class Regression(TextTask):
  name = "regression"
  gold_fields = ("label",)

  def features(self, example: dict, rng: np.random.Generator | None) -> list[base.Feature]:
    return [base.Feature({**self.row(example, rng), "label": np.float32(example["label"])})]

  def model(self) -> nn.Module:
    return PooledModel(self.ctx.model_cfg, 1, self.pooling)

  def loss(self, outputs_Bx1, batch):
    weight_B = batch["weight"]
    se_B = jnp.square(outputs_Bx1[:, 0].astype(jnp.float32) - batch["label"])
    return losses.weighted_loss(se_B, weight_B)

  soft_target_kind = "values"

  def soft_targets(self, outputs_Bx1, batch):
    return [(outputs_Bx1, batch["weight"])]

  def outputs_for_decoding(self, outputs_Bx1):
    return {"score": outputs_Bx1[:, 0].astype(jnp.float32)}

  def postprocess(self, examples, example_index, metas, outputs) -> list[Any]:
    return [float(s) for s in outputs["score"]]

  @staticmethod
  def _targets(examples: Sequence[dict]) -> list[float]:
    return [float(e["label"]) for e in examples]

  @classmethod
  def _metrics(cls, examples, predictions, positive_label, metric):
    return metrics.regression(cls._targets(examples), predictions)

  @classmethod
  def per_example(cls, examples, predictions):
    return metrics.regression_per_example(cls._targets(examples), predictions)


TASK_TYPE = Regression
