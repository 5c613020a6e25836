"""Single-sentence and sentence-pair classification over a pooled representation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.data import augment
from lmreuse.eval import metrics
from lmreuse.models.config import TransformerConfig
from lmreuse.models.dropout import Dropout
from lmreuse.models.heads import Classifier, Pooler
from lmreuse.tasks import base, encoding
from lmreuse.train import losses


class PooledModel(nn.Module):
  """Backbone → pooled vector → dropout → linear head with `num_outputs` outputs."""

  cfg: TransformerConfig
  num_outputs: int
  pooling: str

  def setup(self):
    self.backbone = encoding.make_backbone(self.cfg)
    self.pooler = Pooler(self.cfg) if self.pooling == "cls" else None
    self.head_dropout = Dropout(self.cfg.dropout_rate)
    self.classifier = Classifier(self.cfg, num_classes=self.num_outputs)

  def pooled(self, batch: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
    """[B, D] pooled vector the head reads; its own method so analyses can look at it."""
    hidden_BxLxD = encoding.hidden_states(self.backbone, self.cfg, batch, deterministic)
    return encoding.pool(hidden_BxLxD, batch["segment_ids"], self.pooling, self.pooler)

  def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
    pooled_BxD = self.pooled(batch, deterministic)
    return self.classifier(self.head_dropout(pooled_BxD, deterministic=deterministic))


class TextTask(base.TaskType):
  """Shared by classification and regression: (pair of) text(s) → one row, training-time
  augmentation of the words (off by default)."""

  def __init__(self, ctx: base.TaskContext):
    super().__init__(ctx)
    self.pooling = encoding.resolve_pooling(ctx.task.pooling, ctx.model_cfg.architecture)
    self.augmenter = augment.from_config(ctx.task.augment)

  @property
  def random_features(self) -> bool:
    return self.augmenter is not None

  def row(self, example: dict, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    texts = [example["text"], example.get("text_pair") or ""]
    if rng is not None and self.augmenter is not None:
      texts = [self.augmenter(t, rng) if t else t for t in texts]
    tok = self.ctx.tokenizer
    a, b = tok.encode_batch(texts)
    row = encoding.encode_pair(tok, self.ctx.model_cfg.architecture, a, b, self.ctx.max_len)
    return {**row, "weight": np.float32(1.0)}


class Classification(TextTask):
  name = "classification"
  gold_fields = ("label",)

  def __init__(self, ctx: base.TaskContext):
    super().__init__(ctx)
    if not ctx.labels or len(ctx.labels) < 2:
      raise ValueError(
          f"classification needs at least 2 labels in the training data, got " f"{ctx.labels}"
      )
    self.label_ids = {label: i for i, label in enumerate(ctx.labels)}
    self.positive_label = None
    wanted = ctx.task.positive_label or ctx.positive_label
    if wanted is not None and wanted != "":
      matches = [label for label in ctx.labels if str(label) == str(wanted)]
      if not matches:
        raise ValueError(
            f"config.task.positive_label={wanted!r} is not one of the labels " f"{ctx.labels[:20]}"
        )
      self.positive_label = matches[0]

  def features(self, example: dict, rng: np.random.Generator | None) -> list[base.Feature]:
    label = self.label_ids.get(example["label"])
    if label is None:
      raise ValueError(
          f"label {example['label']!r} is not one of the training labels " f"{self.ctx.labels[:20]}"
      )
    return [base.Feature({**self.row(example, rng), "label": np.int32(label)})]

  def model(self) -> nn.Module:
    return PooledModel(self.ctx.model_cfg, len(self.ctx.labels), self.pooling)

  def loss(self, logits_BxC, batch):
    weight_B = batch["weight"]
    ce_B = base.cross_entropy(logits_BxC, batch["label"], self.ctx.label_smoothing)
    correct_B = (jnp.argmax(logits_BxC, -1) == batch["label"]).astype(jnp.float32)
    return losses.weighted_loss(ce_B, weight_B, accuracy=correct_B)

  def soft_targets(self, logits_BxC, batch):
    return [(logits_BxC, batch["weight"])]

  def outputs_for_decoding(self, logits_BxC):
    probs_BxC = jax.nn.softmax(logits_BxC.astype(jnp.float32))
    return {"label_id": jnp.argmax(probs_BxC, -1), "confidence": jnp.max(probs_BxC, -1)}

  def postprocess(self, examples, example_index, metas, outputs) -> list[Any]:
    return [self.ctx.labels[int(i)] for i in outputs["label_id"]]

  @staticmethod
  def _labels(examples: Sequence[dict], predictions: Sequence[Any]) -> tuple[list, list]:
    """Gold labels and predictions as one type: mixed sides (a NumPy int that write_jsonl's
    `default=str` wrote as text, beside JSON ints) are compared as text, which sklearn refuses
    to mix with numbers."""
    labels, predictions = [e["label"] for e in examples], list(predictions)
    if len({type(x) for x in labels + predictions}) > 1:
      labels, predictions = [str(x) for x in labels], [str(x) for x in predictions]
    return labels, predictions

  @classmethod
  def _metrics(cls, examples, predictions, positive_label, metric):
    labels, predictions = cls._labels(examples, predictions)
    if positive_label is not None and positive_label != "":
      # Matched as text, as `config.task.positive_label` is matched to the training labels.
      seen = {str(x): x for x in predictions + labels}
      positive_label = seen.get(str(positive_label), positive_label)
    else:
      positive_label = None
    return metrics.classification(labels, predictions, positive_label=positive_label, only=metric)

  @classmethod
  def per_example(cls, examples, predictions):
    return metrics.classification_per_example(*cls._labels(examples, predictions))

  def metrics(self, examples: Sequence[dict], predictions: Sequence[Any]) -> dict[str, float]:
    return self.score(examples, predictions, self.positive_label)


TASK_TYPE = Classification
