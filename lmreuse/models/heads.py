"""Output heads that sit on a backbone's hidden states (pretraining and task heads)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmreuse.models.config import TransformerConfig
from lmreuse.models.layers import Embed, Norm, constrain, dense_init, zeros_init

Array = jax.Array


def dense(cfg: TransformerConfig, features: int, axes: tuple, name: str | None = None) -> nn.Dense:
  """A Dense layer in the model's dtypes whose kernel and bias carry logical `axes`."""
  return nn.Dense(
      features,
      dtype=cfg.compute_dtype,
      param_dtype=cfg.params_dtype,
      kernel_init=dense_init(cfg, axes),
      bias_init=zeros_init(axes[-1:]),
      name=name,
  )


class MLMHead(nn.Module):
  """BERT's masked-LM head: transform (dense, GELU, norm), tied decoder, output bias."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, hidden_BxLxD: Array, embed: Embed) -> Array:
    cfg = self.cfg
    h_BxLxD = dense(cfg, cfg.d_model, ("embed", "embed_out"), "transform")(hidden_BxLxD)
    h_BxLxD = Norm(cfg, name="transform_norm")(nn.gelu(h_BxLxD, approximate=False))
    logits_BxLxV = embed.attend(h_BxLxD)
    bias_V = self.param("bias", zeros_init(("vocab",)), (cfg.vocab_size,), cfg.params_dtype)
    return constrain(
        logits_BxLxV + bias_V.astype(logits_BxLxV.dtype), ("batch", "length", "act_vocab")
    )


class Pooler(nn.Module):
  """BERT pooler: tanh(dense(hidden of the first, [CLS], token))."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, hidden_BxLxD: Array) -> Array:
    return jnp.tanh(
        dense(self.cfg, self.cfg.d_model, ("embed", "embed_out"), "dense")(hidden_BxLxD[:, 0])
    )


class Classifier(nn.Module):
  """Linear classifier over pooled features (NSP, sequence classification)."""

  cfg: TransformerConfig
  num_classes: int

  @nn.compact
  def __call__(self, pooled_BxD: Array) -> Array:
    logits_BxC = dense(self.cfg, self.num_classes, ("embed", None), "dense")(pooled_BxD)
    return logits_BxC.astype(jnp.float32)
