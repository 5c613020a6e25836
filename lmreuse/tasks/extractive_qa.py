"""Extractive question answering (SQuAD): start/end logits over the context's tokens.

A context longer than the row is read in overlapping windows (`doc_stride` tokens apart), as in
BERT's run_squad. A window that does not contain the whole answer is trained to point at
position 0. Decoding keeps the `n_best` start and end positions per window, scores valid spans
by start + end logit, and answers with the best span over all windows of the example, cut from
the original context through SentencePiece's character offsets (exact text, no detokenizing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lmreuse.eval import metrics
from lmreuse.tasks import base, encoding
from lmreuse.tasks.tagging import TokenModel
from lmreuse.train import losses

QUERY_FRACTION = 0.5  # of max_len: the question's cap when config.task.max_query_len is 0


def windows(num_tokens: int, window: int, stride: int) -> list[int]:
  """Start offsets of windows covering `num_tokens` tokens, `stride` apart."""
  starts, start = [], 0
  while True:
    starts.append(start)
    if start + window >= num_tokens:
      return starts
    start += stride


class ExtractiveQA(base.TaskType):
  name = "extractive_qa"
  gold_fields = ("answers",)

  def __init__(self, ctx: base.TaskContext):
    super().__init__(ctx)
    task = ctx.task
    self.max_query_len = task.max_query_len or int(QUERY_FRACTION * ctx.max_len)
    self.doc_stride = task.doc_stride
    self.n_best, self.max_answer_len = task.n_best, task.max_answer_len
    if self.max_query_len + 8 > ctx.max_len:
      raise ValueError(
          f"config.task.max_query_len={self.max_query_len} leaves no room for the "
          f"context in config.max_len={ctx.max_len}"
      )

  def features(self, example: dict, rng: np.random.Generator | None) -> list[base.Feature]:
    tok, arch = self.ctx.tokenizer, self.ctx.model_cfg.architecture
    question = tok.encode(example["question"])[: self.max_query_len]
    context, offsets = tok.encode_with_offsets(example["context"])
    prefix = ([tok.cls_id] if arch == "encoder" else []) + question + [tok.sep_id]
    window = self.ctx.max_len - len(prefix) - 1
    stride = min(self.doc_stride, window)
    answer = example["answers"][0] if example.get("answers") else None
    out = []
    for start in windows(len(context), window, stride):
      piece = context[start : start + window]
      ids = prefix + piece + [tok.sep_id if arch == "encoder" else tok.eos_id]
      types = [0] * len(prefix) + [1] * (len(piece) + 1)
      row = encoding.pad_row(ids, self.ctx.max_len, types)
      # Character span of each row position (None outside the context).
      spans = [None] * len(prefix) + offsets[start : start + window]
      row["start"], row["end"] = self._target(spans, answer)
      row["weight"] = np.float32(1.0)
      out.append(base.Feature(row, meta=spans))
    return out

  @staticmethod
  def _target(spans: list, answer: dict | None) -> tuple[np.int32, np.int32]:
    if answer is None:
      return np.int32(0), np.int32(0)
    lo, hi = answer["start"], answer["start"] + len(answer["text"])
    inside = [i for i, s in enumerate(spans) if s is not None and s[1] > lo and s[0] < hi]
    covered = [s for s in spans if s is not None]
    if not inside or covered[0][0] > lo or covered[-1][1] < hi:
      return np.int32(0), np.int32(0)  # the answer is not (wholly) in this window
    return np.int32(inside[0]), np.int32(inside[-1])

  def model(self) -> nn.Module:
    return TokenModel(self.ctx.model_cfg, 2)

  def _logits(self, outputs_BxLx2, batch):
    pad_BxL = batch["segment_ids"] == 0
    logits = jnp.where(pad_BxL[..., None], -1e9, outputs_BxLx2.astype(jnp.float32))
    return logits[..., 0], logits[..., 1]

  def loss(self, outputs_BxLx2, batch):
    start_BxL, end_BxL = self._logits(outputs_BxLx2, batch)
    weight_B = batch["weight"]
    ce_B = 0.5 * (
        base.cross_entropy(start_BxL, batch["start"], self.ctx.label_smoothing)
        + base.cross_entropy(end_BxL, batch["end"], self.ctx.label_smoothing)
    )
    exact_B = (
        (jnp.argmax(start_BxL, -1) == batch["start"]) & (jnp.argmax(end_BxL, -1) == batch["end"])
    ).astype(jnp.float32)
    return losses.weighted_loss(ce_B, weight_B, span_accuracy=exact_B)

  def soft_targets(self, outputs_BxLx2, batch):
    start_BxL, end_BxL = self._logits(outputs_BxLx2, batch)
    return [(start_BxL, batch["weight"]), (end_BxL, batch["weight"])]

  def predict(self, module, params, batch):
    start_BxL, end_BxL = self._logits(module.apply({"params": params}, batch), batch)
    return {"start_logits": start_BxL, "end_logits": end_BxL}

  def postprocess(self, examples, example_index, metas, outputs) -> list[Any]:
    best: dict[int, tuple[float, str]] = {}
    for i, spans in enumerate(metas):
      e = int(example_index[i])
      context = examples[e]["context"]
      start_L, end_L = outputs["start_logits"][i], outputs["end_logits"][i]
      for s in np.argsort(-start_L)[: self.n_best]:
        for t in np.argsort(-end_L)[: self.n_best]:
          if (
              s >= len(spans)
              or t >= len(spans)
              or spans[s] is None
              or spans[t] is None
              or t < s
              or t - s + 1 > self.max_answer_len
          ):
            continue
          score = float(start_L[s] + end_L[t])
          if e not in best or score > best[e][0]:
            best[e] = (score, context[spans[s][0] : spans[t][1]].strip())
    return [best.get(e, (0.0, ""))[1] for e in range(len(examples))]

  @staticmethod
  def _answers(examples: Sequence[dict]) -> list[list[str]]:
    return [[a["text"] for a in e["answers"]] for e in examples]

  @classmethod
  def _metrics(cls, examples, predictions, positive_label, metric):
    return metrics.squad(predictions, cls._answers(examples))

  @classmethod
  def per_example(cls, examples, predictions):
    return metrics.squad_per_example(predictions, cls._answers(examples))


TASK_TYPE = ExtractiveQA
