"""Sequence-to-sequence generation (translation, summarization, definition modelling).

Encoder-decoders read the source in the encoder and are trained with teacher forcing on the
target (decoder start token = [PAD], as T5). Decoders read `source [SEP] target [EOS]` as one
row and are trained on the target positions only (a prefix LM loss); a prefix-LM decoder
(cfg.prefix_lm) also attends bidirectionally over the source. Evaluation generates
with greedy or beam search on the KV cache (lmreuse/models/decoding.py) and scores BLEU
(sacrebleu) and ROUGE (rouge-score).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.eval import metrics
from lmreuse.models import decoding
from lmreuse.models.config import TransformerConfig
from lmreuse.tasks import base, encoding
from lmreuse.train import losses


class Seq2SeqModel(nn.Module):
  """The backbone with its LM head: vocabulary logits at every target position."""

  cfg: TransformerConfig

  def setup(self):
    self.backbone = encoding.make_backbone(self.cfg)

  def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
    if self.cfg.architecture == "decoder":
      return self.backbone(
          batch["inputs"],
          segment_ids_BxL=batch["segment_ids"],
          positions_BxL=batch["positions"],
          prefix_BxL=batch["prefix"] if self.cfg.prefix_lm else None,
          deterministic=deterministic,
      )[0]
    return self.backbone(
        batch["inputs"],
        batch["decoder_inputs"],
        enc_segment_ids_BxS=batch["segment_ids"],
        enc_positions_BxS=batch["positions"],
        dec_segment_ids_BxT=batch["decoder_segment_ids"],
        dec_positions_BxT=batch["decoder_positions"],
        deterministic=deterministic,
    )[0]


class Seq2Seq(base.TaskType):
  name = "seq2seq"
  gold_fields = ("target",)
  architectures = ("decoder", "encoder_decoder")

  def __init__(self, ctx: base.TaskContext):
    super().__init__(ctx)
    self.target_len = ctx.task.max_target_len
    self.beam_size = ctx.task.beam_size
    self.length_penalty = ctx.task.length_penalty
    needed = (
        ctx.max_len + self.target_len if self.decoder_only else max(ctx.max_len, self.target_len)
    )
    if needed > ctx.model_cfg.max_len:
      raise ValueError(
          f"config.max_len={ctx.max_len} (source) and config.task.max_target_len="
          f"{self.target_len} need {needed} positions, but the model embeds only "
          f"{ctx.model_cfg.max_len} (model max_len)"
      )

  @property
  def decoder_only(self) -> bool:
    return self.ctx.model_cfg.architecture == "decoder"

  def features(self, example: dict, rng: np.random.Generator | None) -> list[base.Feature]:
    tok = self.ctx.tokenizer
    source, target = tok.encode_batch([example["source"], example["target"]])
    target = target[: self.target_len - 1] + [tok.eos_id]
    if self.decoder_only:
      prompt = source[: self.ctx.max_len - 1] + [tok.sep_id]
      row = encoding.pad_row(prompt + target, self.ctx.max_len + self.target_len)
      weights = np.zeros_like(row["inputs"], np.float32)
      weights[len(prompt) - 1 : len(prompt) - 1 + len(target)] = 1.0  # positions predicting target
      targets = np.zeros_like(row["inputs"])
      targets[:-1] = row["inputs"][1:]
      left = np.zeros(self.ctx.max_len, np.int32)  # the prompt, left-padded, for generation
      left[self.ctx.max_len - len(prompt) :] = prompt
      left_segments = np.zeros(self.ctx.max_len, np.int32)
      left_segments[self.ctx.max_len - len(prompt) :] = 1
      arrays = {
          **row,
          "targets": targets,
          "target_weights": weights,
          "prompt": left,
          "prompt_segment_ids": left_segments,
      }
      if self.ctx.model_cfg.prefix_lm:  # the source is the bidirectional prefix; from [SEP] on,
        # causal, as generation feeds [SEP] after filling the cache with the source
        arrays["prefix"] = np.zeros_like(row["inputs"])
        arrays["prefix"][: len(prompt) - 1] = 1
    else:
      enc = encoding.pad_row(source[: self.ctx.max_len - 1] + [tok.eos_id], self.ctx.max_len)
      dec = encoding.pad_row(target, self.target_len)
      inputs = np.concatenate([[tok.pad_id], dec["inputs"][:-1]]).astype(np.int32)
      inputs[dec["segment_ids"] == 0] = tok.pad_id
      arrays = {
          **enc,
          "decoder_inputs": inputs,
          "decoder_segment_ids": dec["segment_ids"],
          "decoder_positions": dec["positions"],
          "targets": dec["inputs"],
          "target_weights": dec["segment_ids"].astype(np.float32),
      }
    arrays.pop("token_types", None)
    return [base.Feature({**arrays, "weight": np.float32(1.0)})]

  def model(self) -> nn.Module:
    return Seq2SeqModel(self.ctx.model_cfg)

  def loss(self, logits_BxTxV, batch):
    weights_BxT = batch["target_weights"] * batch["weight"][:, None]
    vocab = logits_BxTxV.shape[-1]
    ce_BxT = base.cross_entropy(
        logits_BxTxV.reshape(-1, vocab), batch["targets"].reshape(-1), self.ctx.label_smoothing
    ).reshape(weights_BxT.shape)
    correct_BxT = (jnp.argmax(logits_BxTxV, -1) == batch["targets"]).astype(jnp.float32)
    return losses.weighted_loss(ce_BxT, weights_BxT, token_accuracy=correct_BxT)

  def soft_targets(self, logits_BxTxV, batch):
    return [(logits_BxTxV, batch["target_weights"] * batch["weight"][:, None])]

  def predict(self, module, params, batch):
    cfg, tok = self.ctx.model_cfg, self.ctx.tokenizer
    search = dict(beam_size=self.beam_size, eos_id=tok.eos_id, length_penalty=self.length_penalty)
    if self.decoder_only:
      tokens = decoding.generate_decoder(
          cfg,
          params["backbone"],
          batch["prompt"],
          batch["prompt_segment_ids"],
          max_new_tokens=self.target_len,
          **search,
      )
    else:
      tokens = decoding.generate_encoder_decoder(
          cfg,
          params["backbone"],
          batch["inputs"],
          batch["segment_ids"],
          max_len=self.target_len,
          start_id=tok.pad_id,
          **search,
      )
    return {"tokens": tokens}

  def postprocess(self, examples, example_index, metas, outputs) -> list[Any]:
    eos = self.ctx.tokenizer.eos_id
    texts = []
    for row in outputs["tokens"]:
      row = list(row)
      texts.append(self.ctx.tokenizer.decode(row[: row.index(eos)] if eos in row else row))
    return texts

  @staticmethod
  def _references(examples: Sequence[dict]) -> list[str]:
    return [e["target"] for e in examples]

  @classmethod
  def _metrics(cls, examples, predictions, positive_label, metric):
    references = cls._references(examples)
    result = {}
    if metric != "bleu":  # re-scoring BLEU on resamples should not pay for ROUGE too
      result.update(metrics.rouge(predictions, references))
    if metric is None or metric not in result:
      result = {**metrics.bleu(predictions, references), **result}
    return result

  @classmethod
  def per_example(cls, examples, predictions):
    """ROUGE is a mean over examples; corpus BLEU is not (its n-gram counts pool first)."""
    return metrics.rouge_per_example(predictions, cls._references(examples))

  @classmethod
  def sufficient_statistics(cls, examples, predictions):
    """Corpus BLEU pools each sentence's n-gram counts: a resample's BLEU is that of their sum."""
    return metrics.bleu_statistics(predictions, cls._references(examples))


TASK_TYPE = Seq2Seq
