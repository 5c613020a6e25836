"""Encoder (BERT), Decoder (GPT) and EncoderDecoder (T5) from one TransformerConfig.

Norm placement decides the embedding/final norms: post-norm models (BERT) normalise the
embeddings; pre-norm models (GPT-2, T5) normalise the last layer's output instead.
Attention-probability dropout is deliberately absent: fused kernels (cuDNN flash) do not support it,
and residual/embedding dropout carries the regularisation.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmreuse.models.config import TransformerConfig
from lmreuse.models.dropout import Dropout
from lmreuse.models.layers import (
    MLP,
    Adapter,
    Attention,
    Embed,
    Norm,
    RelativePositionBias,
    attention_mask,
    constrain,
    dense_init,
    sinusoidal_table,
)

Array = jax.Array


class Block(nn.Module):
  """One Transformer layer: self-attention, optional cross-attention, MLP."""

  cfg: TransformerConfig
  causal: bool = False
  cross: bool = False
  decode: bool = False

  @nn.compact
  def __call__(
      self,
      x_BxLxD,
      deterministic,
      mask,
      bias,
      positions_BxL,
      encoded_BxSxD=None,
      cross_mask=None,
      enc_positions_BxS=None,
      key_valid_BxL=None,
      prefix_BxL=None,
  ):
    cfg = self.cfg
    pre_norm = cfg.norm_placement == "pre"
    use_rope = cfg.position == "rope"

    def residual(name, x, fn):
      h = fn(Norm(cfg, name=f"{name}_norm")(x) if pre_norm else x)
      if cfg.adapter_size:
        h = Adapter(cfg, name=f"{name}_adapter")(h)
      h = Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
      x = x + h
      return x if pre_norm else Norm(cfg, name=f"{name}_norm")(x)

    x_BxLxD = residual(
        "self_attention",
        x_BxLxD,
        lambda h: Attention(cfg, causal=self.causal, decode=self.decode, name="self_attention")(
            h,
            mask=mask,
            bias_BxNxTxS=bias,
            q_positions_BxT=positions_BxL,
            k_positions_BxS=positions_BxL,
            use_rope=use_rope,
            key_valid_BxS=key_valid_BxL,
            key_prefix_BxS=prefix_BxL,
        ),
    )
    if self.cross:
      x_BxLxD = residual(
          "cross_attention",
          x_BxLxD,
          lambda h: Attention(cfg, name="cross_attention")(h, encoded_BxSxD, mask=cross_mask),
      )
    x_BxLxD = residual("mlp", x_BxLxD, lambda h: MLP(cfg, name="mlp")(h, deterministic))
    return constrain(x_BxLxD, ("batch", "length", "act_embed"))


def _block_class(cfg: TransformerConfig):
  if cfg.remat == "none":
    return Block
  policy = (
      jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims if cfg.remat == "dots" else None
  )
  return nn.remat(Block, static_argnums=(2,), policy=policy)  # self=0, x=1, deterministic=2


class KeyPositionCache(nn.Module):
  """Positions of the keys in a KV cache, for the relative bias while decoding.

  Keys then span the cache, whose length need not be cfg.max_len, and left-padded prompts give
  real tokens positions that are not their slots.
  """

  @nn.compact
  def __call__(self, positions_BxT: Array) -> Array:
    is_initialized = self.has_variable("cache", "cached_positions")
    cached = self.variable("cache", "cached_positions", jnp.zeros, positions_BxT.shape, jnp.int32)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:
      return positions_BxT
    cached.value = jax.lax.dynamic_update_slice(
        cached.value, positions_BxT.astype(jnp.int32), (0, index.value)
    )
    index.value = index.value + positions_BxT.shape[1]
    return cached.value


def _default_positions(ids_BxL: Array) -> Array:
  return jnp.broadcast_to(jnp.arange(ids_BxL.shape[1], dtype=jnp.int32), ids_BxL.shape)


class Stack(nn.Module):
  """Embeddings + layers + final norm, shared by the encoder and the decoder side."""

  cfg: TransformerConfig
  num_layers: int
  causal: bool = False
  cross: bool = False
  decode: bool = False
  shared_embed: Embed | None = None  # T5 shares one token table across both stacks.

  def setup(self):
    cfg = self.cfg
    self.token_embed = (
        self.shared_embed if self.shared_embed is not None else Embed(cfg.vocab_size, cfg)
    )
    if cfg.position == "learned":
      self.position_embed = Embed(cfg.max_len, cfg, axes=(None, "embed"))
    if cfg.num_token_types and not self.causal:
      self.token_type_embed = Embed(cfg.num_token_types, cfg, axes=(None, "embed"))
    if cfg.position == "relative_bias":
      self.relative_bias = RelativePositionBias(cfg, bidirectional=not self.causal)
      if self.decode:
        self.key_positions = KeyPositionCache()
    if self.num_prompt:
      self.prompt = self.param(
          "prompt",
          dense_init(cfg, (None, "embed")),
          (self.num_prompt, cfg.d_model),
          cfg.params_dtype,
      )
    self.embed_dropout = Dropout(cfg.dropout_rate)
    self.norm = Norm(cfg)  # after the embeddings (post-norm) or after the last layer (pre-norm)
    block = _block_class(cfg)
    self.layers = [
        block(cfg, causal=self.causal, cross=self.cross, decode=self.decode, name=f"layers_{i}")
        for i in range(self.num_layers)
    ]

  @property
  def num_prompt(self) -> int:
    """Soft-prompt slots: the encoder side or a decoder-only model reads them, a T5 decoder not."""
    return 0 if self.cross else self.cfg.prompt_length

  def __call__(
      self,
      ids_BxL: Array,
      *,
      segment_ids_BxL: Array | None = None,
      positions_BxL: Array | None = None,
      token_types_BxL: Array | None = None,
      encoded_BxSxD: Array | None = None,
      enc_segment_ids_BxS: Array | None = None,
      enc_positions_BxS: Array | None = None,
      prefix_BxL: Array | None = None,
      embedded_BxLxD: Array | None = None,
      deterministic: bool = True,
  ) -> Array:
    """`prefix_BxL` (a prefix LM, causal stacks only) marks the tokens every token of their
    segment attends to: the prefix is bidirectional, the rest causal. `embedded_BxLxD` replaces
    the stack's own embedding of `ids_BxL` (ELECTRA's generator reads the discriminator's
    `embed`), so its embedding tables are never created."""
    cfg = self.cfg
    self._check_options(prefix_BxL)
    if positions_BxL is None:
      positions_BxL = _default_positions(ids_BxL)
    x_BxLxD = embedded_BxLxD
    if x_BxLxD is None:
      x_BxLxD = self.embed(ids_BxL, positions_BxL, token_types_BxL)
    if self.num_prompt:
      x_BxLxD, segment_ids_BxL, positions_BxL = self._prepend_prompt(
          x_BxLxD, segment_ids_BxL, positions_BxL
      )
      if prefix_BxL is not None:  # the prompt is seen by every query already
        prefix_BxL = jnp.pad(prefix_BxL, ((0, 0), (self.num_prompt, 0)))
    if cfg.norm_placement == "post":
      x_BxLxD = self.norm(x_BxLxD)
    x_BxLxD = self.embed_dropout(x_BxLxD, deterministic=deterministic)
    mask, key_valid_BxL, bias = self._self_attention_masks(
        segment_ids_BxL, positions_BxL, prefix_BxL
    )
    cross_mask = None
    if self.cross:
      cross_mask = attention_mask(segment_ids_BxL, enc_segment_ids_BxS, False)
    for layer in self.layers:
      x_BxLxD = layer(
          x_BxLxD,
          deterministic,
          mask,
          bias,
          positions_BxL,
          encoded_BxSxD,
          cross_mask,
          enc_positions_BxS,
          key_valid_BxL,
          prefix_BxL,
      )
    if cfg.norm_placement == "pre":
      x_BxLxD = self.norm(x_BxLxD)
      x_BxLxD = self.embed_dropout(x_BxLxD, deterministic=deterministic)
    return x_BxLxD[:, self.num_prompt :]

  def _check_options(self, prefix_BxL: Array | None) -> None:
    if prefix_BxL is not None and not self.causal:
      raise ValueError("prefix_BxL is a causal stack's option (a prefix LM decoder)")
    if self.decode and self.num_prompt:
      raise ValueError(
          f"config.model.prompt_length={self.cfg.prompt_length}: prompt tuning does not "
          "support KV-cache generation on decoder-only models; use prefix tuning"
      )

  def _self_attention_masks(
      self, segment_ids_BxL: Array | None, positions_BxL: Array, prefix_BxL: Array | None
  ) -> tuple[Array | None, Array | None, Array | None]:
    """The self-attention mask, the keys' validity (decode only) and the relative position
    bias. With a KV cache, causality and padding come from the cache: keys enter it with their
    validity."""
    mask = key_valid_BxL = None
    if not self.decode:
      mask = attention_mask(
          segment_ids_BxL, segment_ids_BxL, self.causal, positions_BxL, positions_BxL, prefix_BxL
      )
    elif segment_ids_BxL is not None:
      key_valid_BxL = segment_ids_BxL > 0
    bias = None
    if self.cfg.position == "relative_bias":
      k_positions = self.key_positions(positions_BxL) if self.decode else positions_BxL
      bias = self.relative_bias(positions_BxL, k_positions)
    return mask, key_valid_BxL, bias

  def embed(self, ids_BxL: Array, positions_BxL: Array, token_types_BxL: Array | None) -> Array:
    """Token embeddings plus the absolute position and token-type embeddings the model has."""
    cfg = self.cfg
    x_BxLxD = self.token_embed(ids_BxL)
    if cfg.position == "learned":
      x_BxLxD = x_BxLxD + self.position_embed(positions_BxL)
    elif cfg.position == "sinusoidal":
      table_LxD = jnp.asarray(sinusoidal_table(cfg.max_len, cfg.d_model), cfg.compute_dtype)
      x_BxLxD = x_BxLxD + jnp.take(table_LxD, positions_BxL, axis=0)
    if cfg.num_token_types and not self.causal:
      if token_types_BxL is None:
        token_types_BxL = jnp.zeros_like(ids_BxL)
      x_BxLxD = x_BxLxD + self.token_type_embed(token_types_BxL)
    return x_BxLxD

  def _prepend_prompt(
      self, x_BxLxD: Array, segment_ids_BxL: Array | None, positions_BxL: Array
  ) -> tuple[Array, Array, Array]:
    """Prompt tuning (Lester et al. 2021): soft-prompt vectors before the embedded tokens.

    The prompt takes no position embedding but shares the embeddings' norm (post-norm) and
    dropout; its slots sit at positions -P..-1, before every packed segment's start, which the
    causal mask, RoPE and the relative bias read. Its segment (-1) is visible to every query,
    while its own queries see only the prompt, so its states never depend on the input: packed
    segments and padding stay isolated as without a prompt (Lester et al. let an encoder's prompt
    read the input too).
    """
    b, p = x_BxLxD.shape[0], self.num_prompt
    if segment_ids_BxL is None:  # spelled out, or the prompt's queries would read the input
      segment_ids_BxL = jnp.ones(positions_BxL.shape, jnp.int32)
    segment_ids_BxL = jnp.concatenate(
        [jnp.full((b, p), -1, segment_ids_BxL.dtype), segment_ids_BxL], axis=1
    )
    prompt_positions_BxP = jnp.broadcast_to(jnp.arange(-p, 0, dtype=positions_BxL.dtype), (b, p))
    positions_BxL = jnp.concatenate([prompt_positions_BxP, positions_BxL], axis=1)
    prompt_BxPxD = jnp.broadcast_to(self.prompt.astype(x_BxLxD.dtype), (b, p, self.cfg.d_model))
    x_BxLxD = jnp.concatenate([prompt_BxPxD, x_BxLxD], axis=1)
    return x_BxLxD, segment_ids_BxL, positions_BxL

  def attend(self, x_BxLxD: Array) -> Array:
    return self.token_embed.attend(x_BxLxD)


class Encoder(nn.Module):
  """Bidirectional encoder (BERT): hidden states for every token."""

  cfg: TransformerConfig

  def setup(self):
    self.stack = Stack(self.cfg, self.cfg.num_layers)

  def __call__(
      self,
      ids_BxL,
      *,
      segment_ids_BxL=None,
      positions_BxL=None,
      token_types_BxL=None,
      deterministic=True,
  ):
    return self.stack(
        ids_BxL,
        segment_ids_BxL=segment_ids_BxL,
        positions_BxL=positions_BxL,
        token_types_BxL=token_types_BxL,
        deterministic=deterministic,
    )

  def attend(self, x_BxLxD):
    return self.stack.attend(x_BxLxD)


class LMHead(nn.Module):
  """Vocabulary logits: the tied token table, or an untied projection."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: Array, embed: Embed) -> Array:
    cfg = self.cfg
    if cfg.tie_embeddings:
      if cfg.position == "relative_bias":  # T5 v1.0 rescales before its tied projection
        x_BxLxD = x_BxLxD * cfg.d_model**-0.5
      return embed.attend(x_BxLxD)
    kernel_DxV = self.param(
        "kernel",
        dense_init(cfg, ("embed", "vocab")),
        (cfg.d_model, cfg.vocab_size),
        cfg.params_dtype,
    )
    logits_BxLxV = jnp.einsum("bld,dv->blv", x_BxLxD, kernel_DxV.astype(cfg.compute_dtype))
    return constrain(logits_BxLxV, ("batch", "length", "act_vocab"))


class Decoder(nn.Module):
  """Causal decoder (GPT) with a KV cache for generation (`decode=True`).

  Left-padded prompts decode like unpadded ones given segment ids (0 on padding) and positions
  that start at each first real token.
  """

  cfg: TransformerConfig
  decode: bool = False

  def setup(self):
    self.stack = Stack(self.cfg, self.cfg.num_layers, causal=True, decode=self.decode)
    self.lm_head = LMHead(self.cfg)

  def __call__(
      self,
      ids_BxL,
      *,
      segment_ids_BxL=None,
      positions_BxL=None,
      prefix_BxL=None,
      deterministic=True,
  ):
    """Returns (logits_BxLxV, hidden_BxLxD). `prefix_BxL`: the bidirectional prefix of a prefix
    LM (cfg.prefix_lm), which a plain decoder refuses."""
    if prefix_BxL is not None and not self.cfg.prefix_lm:
      raise ValueError("prefix_BxL needs a prefix LM (config.model.prefix_lm=True)")
    hidden = self.stack(
        ids_BxL,
        segment_ids_BxL=segment_ids_BxL,
        positions_BxL=positions_BxL,
        prefix_BxL=prefix_BxL,
        deterministic=deterministic,
    )
    return self.lm_head(hidden, self.stack.token_embed), hidden


class EncoderDecoder(nn.Module):
  """T5-style encoder-decoder; both stacks share one token embedding."""

  cfg: TransformerConfig
  decode: bool = False

  def setup(self):
    cfg = self.cfg
    self.token_embed = Embed(cfg.vocab_size, cfg)
    self.encoder = Stack(cfg, cfg.num_layers, shared_embed=self.token_embed)
    self.decoder = Stack(
        cfg,
        cfg.decoder_layers,
        causal=True,
        cross=True,
        decode=self.decode,
        shared_embed=self.token_embed,
    )
    self.lm_head = LMHead(cfg)

  def encode(self, ids_BxS, *, segment_ids_BxS=None, positions_BxS=None, deterministic=True):
    return self.encoder(
        ids_BxS,
        segment_ids_BxL=segment_ids_BxS,
        positions_BxL=positions_BxS,
        deterministic=deterministic,
    )

  def decode_logits(
      self,
      encoded_BxSxD,
      enc_segment_ids_BxS,
      dec_ids_BxT,
      *,
      dec_segment_ids_BxT=None,
      dec_positions_BxT=None,
      deterministic=True,
  ):
    hidden = self.decoder(
        dec_ids_BxT,
        segment_ids_BxL=dec_segment_ids_BxT,
        positions_BxL=dec_positions_BxT,
        encoded_BxSxD=encoded_BxSxD,
        enc_segment_ids_BxS=enc_segment_ids_BxS,
        deterministic=deterministic,
    )
    return self.lm_head(hidden, self.token_embed)

  def __call__(
      self,
      enc_ids_BxS,
      dec_ids_BxT,
      *,
      enc_segment_ids_BxS=None,
      enc_positions_BxS=None,
      dec_segment_ids_BxT=None,
      dec_positions_BxT=None,
      deterministic=True,
  ):
    """Returns (logits_BxTxV, encoded_BxSxD)."""
    encoded = self.encode(
        enc_ids_BxS,
        segment_ids_BxS=enc_segment_ids_BxS,
        positions_BxS=enc_positions_BxS,
        deterministic=deterministic,
    )
    logits = self.decode_logits(
        encoded,
        enc_segment_ids_BxS,
        dec_ids_BxT,
        dec_segment_ids_BxT=dec_segment_ids_BxT,
        dec_positions_BxT=dec_positions_BxT,
        deterministic=deterministic,
    )
    return logits, encoded
