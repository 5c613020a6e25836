"""Replaced-token detection (ELECTRA, Clark et al. 2020): a small masked-LM generator fills the
masked positions with its samples, and the discriminator, the model kept for fine-tuning, tells
for every token whether it was replaced.

As in Clark et al. (and their code's defaults):
- 15% of the tokens are selected (`mask_prob`); 85% of them become [MASK] and the rest stay as
  they are, with no random tokens (the generator supplies the replacements);
- the generator is `generator_size` times the discriminator's width, heads and FFN, at the same
  depth; it reads the discriminator's token, position and token-type embeddings through a
  projection to its width, and predicts through the same tied token table;
- replacements are sampled from the generator's softmax without a gradient, and a sample equal
  to the original token counts as original;
- loss = generator MLM + `rtd_weight` (λ = 50) × the discriminator's binary cross-entropy over
  every real token, trained jointly.

The discriminator is `params["backbone"]`, the path a task model loads; the generator and the
detection head stay in the pretraining checkpoint, and a fine-tuning run's init_report.json
lists them under "dropped".
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from lmreuse.models.config import TransformerConfig
from lmreuse.models.heads import MLMHead, dense
from lmreuse.models.transformer import Encoder, Stack
from lmreuse.objectives import base, mlm
from lmreuse.train import losses
from lmreuse.train.trainer import MetricPairs, Program

if TYPE_CHECKING:
  import grain

MASK_TOKEN_PROB = 0.85  # the rest of the selected tokens stay unchanged (ELECTRA's masking)


def generator_config(cfg: TransformerConfig, size: float) -> TransformerConfig:
  """The generator: `size` × the discriminator's width, heads and FFN width, at its depth."""
  heads = max(1, round(cfg.num_heads * size))
  width = round(cfg.d_model * size)
  if not 0 < size <= 1 or width < heads or width % heads:
    raise ValueError(
        f"config.objective.generator_size={size} gives a generator {width} wide with {heads}"
        f" heads from the discriminator's d_model={cfg.d_model}, num_heads={cfg.num_heads};"
        " it must lie in (0, 1] and give a width that divides by the heads"
    )
  return dataclasses.replace(
      cfg,
      d_model=width,
      num_heads=heads,
      num_kv_heads=0,
      head_dim=0,
      d_ff=max(1, round(cfg.d_ff * size)),
  )


def check(config: ml_collections.ConfigDict) -> None:
  """The pretraining config's ELECTRA options, before anything is built."""
  if config.objective.rtd_weight <= 0:
    raise ValueError(f"config.objective.rtd_weight={config.objective.rtd_weight} must be > 0")
  cfg = TransformerConfig.from_config(config.model, config.tokenizer.vocab_size)
  generator_config(cfg, config.objective.generator_size)


def replace_tokens(
    tokens_BxL: jax.Array, positions_BxP: jax.Array, weights_BxP: jax.Array, sampled_BxP: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The discriminator's inputs and labels: `tokens_BxL` (the original ids) with each selected
  position (weight > 0) holding its sample, and 1.0 where that leaves a different token."""
  length = tokens_BxL.shape[1]
  hit_BxPxL = (positions_BxP[..., None] == jnp.arange(length)) & (weights_BxP[..., None] > 0)
  sample_at_BxL = jnp.sum(jnp.where(hit_BxPxL, sampled_BxP[..., None], 0), axis=1)
  inputs_BxL = jnp.where(hit_BxPxL.any(axis=1), sample_at_BxL, tokens_BxL).astype(tokens_BxL.dtype)
  return inputs_BxL, (inputs_BxL != tokens_BxL).astype(jnp.float32)


class ReplacedTokenHead(nn.Module):
  """The discriminator's head: dense, GELU, one logit per token (replaced vs original)."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, hidden_BxLxD: jax.Array) -> jax.Array:
    cfg = self.cfg
    dense_BxLxD = dense(cfg, cfg.d_model, ("embed", "embed_out"), "dense")(hidden_BxLxD)
    h_BxLxD = nn.gelu(dense_BxLxD, approximate=False)
    return dense(cfg, 1, ("embed", None), "logit")(h_BxLxD)[..., 0].astype(jnp.float32)


class ElectraPretrainer(nn.Module):
  """Generator and discriminator, sharing the discriminator's embeddings.

  The generator's logits are computed only at the (at most `num_predictions`) selected
  positions, as BERT's MLM head is; its samples come from the `sample` rng stream.
  """

  cfg: TransformerConfig
  generator_cfg: TransformerConfig
  num_predictions: int

  def setup(self):
    self.backbone = Encoder(self.cfg)  # the discriminator
    self.rtd_head = ReplacedTokenHead(self.cfg)
    self.generator_project = dense(
        self.generator_cfg, self.generator_cfg.d_model, ("embed", "embed_out")
    )
    self.generator = Stack(self.generator_cfg, self.generator_cfg.num_layers)
    self.generator_head = MLMHead(self.cfg)  # back to the shared table's width

  def __call__(self, batch: dict[str, jax.Array], deterministic: bool = True) -> dict:
    stack, masked_BxL = self.backbone.stack, batch["inputs"]
    context = dict(segment_ids_BxL=batch["segment_ids"], positions_BxL=batch["positions"])
    embedded_BxLxD = stack.embed(masked_BxL, batch["positions"], batch["token_types"])
    generated_BxLxG = self.generator(
        masked_BxL,
        **context,
        embedded_BxLxD=self.generator_project(embedded_BxLxD),
        deterministic=deterministic,
    )
    positions_BxP = mlm.selected_positions(batch["mlm_weights"], self.num_predictions)
    generator_logits_BxPxV = self.generator_head(
        mlm.gather_predictions(generated_BxLxG, positions_BxP), stack.token_embed
    )
    sampled_BxP = jax.random.categorical(
        self.make_rng("sample"), jax.lax.stop_gradient(generator_logits_BxPxV.astype(jnp.float32))
    )
    inputs_BxL, replaced_BxL = replace_tokens(
        batch["mlm_targets"],
        positions_BxP,
        mlm.gather_predictions(batch["mlm_weights"], positions_BxP),
        sampled_BxP,
    )
    hidden_BxLxD = self.backbone(
        inputs_BxL, **context, token_types_BxL=batch["token_types"], deterministic=deterministic
    )
    return {
        "generator_logits": generator_logits_BxPxV,
        "mlm_positions": positions_BxP,
        "rtd_logits": self.rtd_head(hidden_BxLxD),
        "replaced": replaced_BxL,
    }


def loss(
    generator_logits_BxPxV: jax.Array,
    targets_BxP: jax.Array,
    weights_BxP: jax.Array,
    rtd_logits_BxL: jax.Array,
    replaced_BxL: jax.Array,
    real_BxL: jax.Array,
    *,
    rtd_weight: float,
) -> tuple[jax.Array, MetricPairs]:
  """Generator cross-entropy over the selected positions + rtd_weight × the discriminator's
  binary cross-entropy over the real tokens; pairs for both, and the replaced fraction."""
  total, pairs = losses.weighted_cross_entropy(
      generator_logits_BxPxV, targets_BxP, weights_BxP, prefix="generator"
  )
  bce_BxL = optax.sigmoid_binary_cross_entropy(rtd_logits_BxL, replaced_BxL)
  correct_BxL = ((rtd_logits_BxL > 0) == (replaced_BxL > 0.5)).astype(jnp.float32)
  rtd, rtd_pairs = losses.weighted_loss(
      bce_BxL,
      real_BxL.astype(jnp.float32),
      prefix="rtd",
      accuracy=correct_BxL,
      replaced=replaced_BxL,
  )
  return total + rtd_weight * rtd, {**pairs, **rtd_pairs}


def dataset(docs: base.Documents, objective: Any, data: Any) -> grain.IterDataset:
  """BERT's single-segment rows, masked as ELECTRA masks them."""
  return mlm.masked_dataset(
      docs,
      data,
      with_nsp=False,
      mask_prob=objective.mask_prob,
      mask_token_prob=MASK_TOKEN_PROB,
      random_token_prob=0.0,
  )


def program(model_cfg: TransformerConfig, objective: Any, data: Any) -> Program:
  model = ElectraPretrainer(
      model_cfg,
      generator_config(model_cfg, objective.generator_size),
      num_predictions=mlm.max_predictions(data.seq_len, objective.mask_prob),
  )
  example = {
      k: jnp.zeros((1, data.seq_len), jnp.int32)
      for k in ("inputs", "segment_ids", "positions", "token_types", "mlm_targets")
  }
  example["mlm_weights"] = jnp.zeros((1, data.seq_len), jnp.float32)

  def init_params(rng):
    return model.init({**base.init_rngs(rng), "sample": rng}, example)["params"]

  def loss_fn(params, batch, rng, train):
    sample_rng, rng = jax.random.split(rng)
    rngs = {**base.apply_rngs(rng, train), "sample": sample_rng}
    out = model.apply({"params": params}, batch, deterministic=not train, rngs=rngs)
    positions = out["mlm_positions"]
    return loss(
        out["generator_logits"],
        mlm.gather_predictions(batch["mlm_targets"], positions),
        mlm.gather_predictions(batch["mlm_weights"], positions),
        out["rtd_logits"],
        out["replaced"],
        batch["segment_ids"] > 0,
        rtd_weight=objective.rtd_weight,
    )

  return Program(init_params=init_params, loss_fn=loss_fn, tokens_per_example=data.seq_len)


OBJECTIVE = base.Objective(
    name="electra", architecture="encoder", program=program, dataset=dataset, check=check
)
