"""Token classification (NER, POS) with BIO tags; each word is labelled at its first subword.

Words are tokenized one by one so subwords never straddle a word boundary; the loss and the
prediction use the first subword of each word, as in BERT's CoNLL recipe. Words cut off by
`max_len` are predicted as "O" so metrics still count every gold entity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.eval import metrics
from lmreuse.models.config import TransformerConfig
from lmreuse.models.dropout import Dropout
from lmreuse.models.heads import Classifier
from lmreuse.tasks import base, encoding
from lmreuse.train import losses

OUTSIDE = "O"


class TokenModel(nn.Module):
  """Backbone → dropout → per-token linear head."""

  cfg: TransformerConfig
  num_tags: int

  def setup(self):
    self.backbone = encoding.make_backbone(self.cfg)
    self.head_dropout = Dropout(self.cfg.dropout_rate)
    self.classifier = Classifier(self.cfg, num_classes=self.num_tags)

  def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
    hidden_BxLxD = encoding.hidden_states(self.backbone, self.cfg, batch, deterministic)
    return self.classifier(self.head_dropout(hidden_BxLxD, deterministic=deterministic))


class Tagging(base.TaskType):
  name = "tagging"
  gold_fields = ("tags",)

  def __init__(self, ctx: base.TaskContext):
    super().__init__(ctx)
    if not ctx.labels:
      raise ValueError("tagging needs the tag set of the training data")
    self.tag_ids = {tag: i for i, tag in enumerate(ctx.labels)}
    self.outside = self.tag_ids.get(OUTSIDE, 0)

  def features(self, example: dict, rng: np.random.Generator | None) -> list[base.Feature]:
    tok, arch = self.ctx.tokenizer, self.ctx.model_cfg.architecture
    words, tags = example["tokens"], example["tags"]
    prefix = [tok.cls_id] if arch == "encoder" else []
    budget = self.ctx.max_len - len(prefix) - 1  # [SEP] or [EOS] closes the row
    ids, first_subword = list(prefix), []
    for pieces in tok.encode_batch(list(words)):
      pieces = pieces or [tok.unk_id]
      if len(ids) - len(prefix) + len(pieces) > budget:
        break
      first_subword.append(len(ids))
      ids.extend(pieces)
    ids.append(tok.sep_id if arch == "encoder" else tok.eos_id)
    row = encoding.pad_row(ids, self.ctx.max_len)
    labels = np.zeros(self.ctx.max_len, np.int32)
    label_weights = np.zeros(self.ctx.max_len, np.float32)
    for position, tag in zip(first_subword, tags):
      labels[position] = self.tag_ids.get(tag, self.outside)
      label_weights[position] = 1.0
    arrays = {**row, "labels": labels, "label_weights": label_weights, "weight": np.float32(1.0)}
    return [base.Feature(arrays, meta=np.asarray(first_subword, np.int32))]

  def model(self) -> nn.Module:
    return TokenModel(self.ctx.model_cfg, len(self.ctx.labels))

  def loss(self, logits_BxLxC, batch):
    weights_BxL = batch["label_weights"] * batch["weight"][:, None]
    ce_BxL = base.cross_entropy(logits_BxLxC, batch["labels"], self.ctx.label_smoothing)
    correct_BxL = (jnp.argmax(logits_BxLxC, -1) == batch["labels"]).astype(jnp.float32)
    return losses.weighted_loss(ce_BxL, weights_BxL, token_accuracy=correct_BxL)

  def soft_targets(self, logits_BxLxC, batch):
    return [(logits_BxLxC, batch["label_weights"] * batch["weight"][:, None])]

  def outputs_for_decoding(self, logits_BxLxC):
    return {"tag_ids": jnp.argmax(logits_BxLxC, -1)}

  def postprocess(self, examples, example_index, metas, outputs) -> list[Any]:
    predictions = []
    for example, first_subword, tag_ids in zip(examples, metas, outputs["tag_ids"]):
      tags = [self.ctx.labels[int(i)] for i in tag_ids[first_subword]]
      predictions.append(tags + [OUTSIDE] * (len(example["tokens"]) - len(tags)))
    return predictions

  @staticmethod
  def _tags(examples: Sequence[dict]) -> list[list[str]]:
    return [list(e["tags"]) for e in examples]

  # Entity F1/precision/recall are ratios of corpus counts and `accuracy` is a mean over tokens,
  # not over examples: none has per-example values (the default `per_example`), but all are
  # functions of per-sentence counts (`sufficient_statistics`).
  @classmethod
  def _metrics(cls, examples, predictions, positive_label, metric):
    return metrics.tagging(cls._tags(examples), predictions)

  @classmethod
  def sufficient_statistics(cls, examples, predictions):
    """Token and entity counts per sentence (entities only where seqeval reads each sentence
    the same wherever it sits; see `metrics.tagging_statistics`)."""
    return metrics.tagging_statistics(cls._tags(examples), predictions)


TASK_TYPE = Tagging
