"""Transformer building blocks with logical axis names on every parameter and activation.

Parameter axes: vocab, embed, heads, kv_heads, kv (per-head dim), mlp, relpos_buckets, adapter.
Activation axes: batch, length, act_embed, act_heads, act_mlp, act_vocab. The mapping of these
names to mesh axes lives in the config (`config.mesh.rules`), never here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.models import lora
from lmreuse.models.config import TransformerConfig
from lmreuse.models.dropout import Dropout

Array = jax.Array


def dense_init(cfg: TransformerConfig, axes: tuple[str | None, ...]) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), axes)


def zeros_init(axes: tuple[str | None, ...]) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones_init(axes: tuple[str | None, ...]) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def constrain(x: Array, axes: tuple[str | None, ...]) -> Array:
  return nn.with_logical_constraint(x, axes)


# Projections that contract more than one kernel axis, by module name: the attention output,
# whose kernel is [heads, kv, embed].
MULTI_INPUT_PROJECTIONS = {"out": 2}


def kernel_input_axes(path: str, shape: tuple[int, ...]) -> int:
  """How many leading axes of the Projection kernel at `path` are its inputs (the rest are its
  outputs): what pruning's N:M blocks run along and quantization's per-channel scales span."""
  parts = path.split("/")
  num_in = MULTI_INPUT_PROJECTIONS.get(parts[-2] if len(parts) > 1 else "", 1)
  return num_in if len(shape) > num_in else 1


class Projection(nn.Module):
  """x · kernel contracting the last `num_in` axes; parameters named like nn.DenseGeneral.

  Written out because DenseGeneral initialises a flattened kernel, which cannot carry the
  3-D logical axes (embed, heads, kv) that shard attention weights.
  """

  cfg: TransformerConfig
  features: tuple[int, ...]
  axes: tuple[str | None, ...]  # logical names of the kernel: input axes, then output axes
  num_in: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    in_shape = x.shape[x.ndim - self.num_in :]
    kernel = self.param(
        "kernel", dense_init(cfg, self.axes), in_shape + self.features, cfg.params_dtype
    )
    # One 2-D matmul on row-major reshapes (free bitcasts): contracting several kernel axes made
    # XLA:CPU write a transposed copy of every attention kernel on every step for the backward
    # pass (benchmarks/README.md, "Layout choices", has the measured cost).
    batch_shape = x.shape[: x.ndim - self.num_in]
    size_in, size_out = math.prod(in_shape), math.prod(self.features)
    y = jnp.dot(
        x.reshape(batch_shape + (size_in,)).astype(cfg.compute_dtype),
        kernel.reshape(size_in, size_out).astype(cfg.compute_dtype),
    )
    y = y.reshape(batch_shape + self.features)
    if cfg.use_bias:
      bias = self.param(
          "bias", zeros_init(self.axes[self.num_in :]), self.features, cfg.params_dtype
      )
      y = y + bias.astype(cfg.compute_dtype)
    return y


def ia3_rescale(module: nn.Module, name: str, x: Array, axes: tuple[str | None, ...]) -> Array:
  """(IA)^3 (Liu et al. 2022): learned rescaling of the last axes, ones so it starts as identity."""
  scale = module.param(
      name, ones_init(axes), x.shape[x.ndim - len(axes) :], module.cfg.params_dtype
  )
  return x * scale.astype(x.dtype)


class Adapter(nn.Module):
  """Houlsby et al. (2019) bottleneck h + up(gelu(down(h))) after a sublayer.

  `up` starts at zero (kernel and bias), so an adapter inserted into a pretrained model is the
  identity until trained. Biases are always on, whatever cfg.use_bias says of the base model.
  """

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, h_BxLxD: Array) -> Array:
    cfg = self.cfg
    kwargs = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
    # On [tokens, d]: kernel gradients then contract one axis, which XLA:CPU does without
    # transposed copies of the activation gradients, as it made over [batch, length]
    # (benchmarks/README.md, "Layout choices").
    h_TxD = h_BxLxD.reshape((-1, h_BxLxD.shape[-1]))
    z_TxA = nn.Dense(
        cfg.adapter_size,
        kernel_init=dense_init(cfg, ("embed", "adapter")),
        bias_init=zeros_init(("adapter",)),
        name="down",
        **kwargs,
    )(h_TxD)
    z_TxA = nn.gelu(z_TxA, approximate=False)
    up_TxD = nn.Dense(
        cfg.d_model,
        kernel_init=zeros_init(("adapter", "embed")),
        bias_init=zeros_init(("embed",)),
        name="up",
        **kwargs,
    )(z_TxA)
    return constrain(h_BxLxD + up_TxD.reshape(h_BxLxD.shape), ("batch", "length", "act_embed"))


class Norm(nn.Module):
  """LayerNorm (BERT, GPT-2) or RMSNorm (T5); statistics always in float32."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: Array) -> Array:
    cfg = self.cfg
    scale_init = ones_init(("embed",))
    if cfg.norm == "rmsnorm":
      return nn.RMSNorm(
          epsilon=cfg.norm_eps,
          dtype=cfg.compute_dtype,
          param_dtype=cfg.params_dtype,
          scale_init=scale_init,
          name="norm",
      )(x_BxLxD)
    return nn.LayerNorm(
        epsilon=cfg.norm_eps,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype,
        use_bias=cfg.use_bias,
        scale_init=scale_init,
        bias_init=zeros_init(("embed",)),
        name="norm",
    )(x_BxLxD)


class Embed(nn.Module):
  """Token embedding table; `attend` reuses it as the tied output projection."""

  num_embeddings: int
  cfg: TransformerConfig
  axes: tuple[str | None, str] = ("vocab", "embed")

  def setup(self):
    self.embedding = self.param(
        "embedding",
        dense_init(self.cfg, self.axes),
        (self.num_embeddings, self.cfg.d_model),
        self.cfg.params_dtype,
    )

  def __call__(self, ids_BxL: Array) -> Array:
    # Rows are looked up whole: the table's `embed` axis is gathered first (FSDP's all-gather),
    # else XLA yields rows split over embed and cannot move them to the batch sharding without
    # replicating them. A split `vocab` axis stays split (local lookup, then a sum over it).
    table_VxD = constrain(jnp.asarray(self.embedding, self.cfg.compute_dtype), (self.axes[0], None))
    return constrain(jnp.take(table_VxD, ids_BxL, axis=0), ("batch", "length", "act_embed"))

  def attend(self, x_BxLxD: Array) -> Array:
    table_VxD = jnp.asarray(self.embedding, self.cfg.compute_dtype)
    logits_BxLxV = jnp.einsum("bld,vd->blv", x_BxLxD, table_VxD)
    return constrain(logits_BxLxV, ("batch", "length", "act_vocab"))


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
  """Fixed sin/cos positions (Vaswani et al. 2017): sin on the first half, cos on the second."""
  positions_L = np.arange(max_len)[:, None]
  inv_freq = np.exp(-math.log(10000.0) * np.arange(0, d_model // 2) / max(d_model // 2 - 1, 1))
  angles_LxH = positions_L * inv_freq[None, :]
  table = np.zeros((max_len, d_model), np.float32)
  table[:, : d_model // 2] = np.sin(angles_LxH)
  table[:, d_model // 2 : 2 * (d_model // 2)] = np.cos(angles_LxH)
  return table


def apply_rope(x_BxLxNxH: Array, positions_BxL: Array, base: float = 10000.0) -> Array:
  """Rotary embeddings (Su et al. 2021), rotate-half convention as in GPT-NeoX/LLaMA."""
  half = x_BxLxNxH.shape[-1] // 2
  inv_freq_H = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles_BxLxH = positions_BxL[..., None].astype(jnp.float32) * inv_freq_H
  sin, cos = jnp.sin(angles_BxLxH)[:, :, None, :], jnp.cos(angles_BxLxH)[:, :, None, :]
  x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxNxH.dtype)


def relative_position_bucket(
    relative_position: Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
  """T5's log-spaced buckets of (key position - query position)."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
      / math.log(max_distance / max_exact)
      * (num_buckets - max_exact)
  ).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  """T5 relative attention bias, computed once per stack and shared by all its layers."""

  cfg: TransformerConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions_BxT: Array, k_positions_BxS: Array) -> Array:
    cfg = self.cfg
    table_KxN = self.param(
        "rel_embedding",
        dense_init(cfg, ("relpos_buckets", "heads")),
        (cfg.relative_num_buckets, cfg.num_heads),
        cfg.params_dtype,
    )
    relative_BxTxS = k_positions_BxS[:, None, :] - q_positions_BxT[:, :, None]
    buckets_BxTxS = relative_position_bucket(
        relative_BxTxS,
        bidirectional=self.bidirectional,
        num_buckets=cfg.relative_num_buckets,
        max_distance=cfg.relative_max_distance,
    )
    bias_BxTxSxN = jnp.take(jnp.asarray(table_KxN, jnp.float32), buckets_BxTxS, axis=0)
    return jnp.transpose(bias_BxTxSxN, (0, 3, 1, 2))


def attention_mask(
    q_segments_BxT: Array | None,
    k_segments_BxS: Array | None,
    causal: bool,
    q_positions_BxT: Array | None = None,
    k_positions_BxS: Array | None = None,
    k_prefix_BxS: Array | None = None,
) -> Array | None:
  """Boolean [B, 1, T, S] mask: same packed segment, key not padding (segment 0), causal.

  Keys of a negative segment (a soft prompt) are shared: every query may see them. A causal
  mask also shows the keys `k_prefix_BxS` marks (a prefix LM's prefix) to every query of their
  segment, so the prefix attends bidirectionally within itself.
  """
  mask = None
  if k_segments_BxS is not None:
    mask = (k_segments_BxS != 0)[:, None, None, :]
    if q_segments_BxT is not None:
      same_BxTxS = q_segments_BxT[:, :, None] == k_segments_BxS[:, None, :]
      mask = mask & (same_BxTxS | (k_segments_BxS < 0)[:, None, :])[:, None]
  if causal:
    if q_positions_BxT is None:
      raise ValueError("a causal mask needs query and key positions")
    causal_mask = k_positions_BxS[:, None, None, :] <= q_positions_BxT[:, None, :, None]
    if k_prefix_BxS is not None:
      causal_mask = causal_mask | k_prefix_BxS.astype(bool)[:, None, None, :]
    mask = causal_mask if mask is None else mask & causal_mask
  return mask


class Attention(nn.Module):
  """Multi-/grouped-query attention through `jax.nn.dot_product_attention`.

  `decode=True` keeps a KV cache in the 'cache' collection: initialise it by calling the model
  once with decode=True on [batch, max_len] inputs, then feed one or more tokens per call.
  `key_valid_BxS` (decode only) says which fed tokens are real; padding stays hidden for good.
  """

  cfg: TransformerConfig
  causal: bool = False
  decode: bool = False

  @nn.compact
  def __call__(
      self,
      x_BxTxD: Array,
      kv_BxSxD: Array | None = None,
      *,
      mask: Array | None = None,
      bias_BxNxTxS: Array | None = None,
      q_positions_BxT: Array | None = None,
      k_positions_BxS: Array | None = None,
      use_rope: bool = False,
      key_valid_BxS: Array | None = None,
      key_prefix_BxS: Array | None = None,
  ) -> Array:
    """`key_prefix_BxS` (a prefix LM's self-attention) marks the prefix keys: `mask` already
    shows them (`attention_mask`), or with a KV cache the cache's mask does."""
    cfg = self.cfg
    is_self = kv_BxSxD is None
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH = self._project(
        x_BxTxD,
        x_BxTxD if is_self else kv_BxSxD,
        (q_positions_BxT, k_positions_BxS) if use_rope else None,
    )

    # A prefix mask is causal except over the prefix: no slot-causal kernel can apply it.
    is_causal = self.causal and key_prefix_BxS is None
    if self.decode and is_self:
      k_BxSxKxH, v_BxSxKxH, mask = self._update_cache(
          k_BxSxKxH, v_BxSxKxH, mask, key_valid_BxS, key_prefix_BxS
      )
      is_causal = False  # the cache mask already hides the future
    if cfg.prefix_length and is_self:
      k_BxSxKxH, v_BxSxKxH, mask, bias_BxNxTxS = self._prepend_prefix(
          k_BxSxKxH, v_BxSxKxH, mask, bias_BxNxTxS, is_causal
      )
      is_causal = False  # now part of the mask: the prefix shifts the key slots

    scale = 1.0 / math.sqrt(cfg.dim_per_head) if cfg.scale_attention else 1.0
    self._sow_probs(q_BxTxNxH, k_BxSxKxH, bias_BxNxTxS, mask, scale, is_causal)
    out_BxTxNxH = dot_product_attention(
        q_BxTxNxH,
        k_BxSxKxH,
        v_BxSxKxH,
        bias=bias_BxNxTxS,
        mask=mask,
        scale=scale,
        is_causal=is_causal,
        implementation=cfg.attention_impl,
    )
    num_in = MULTI_INPUT_PROJECTIONS["out"]
    out_BxTxD = Projection(
        cfg, (cfg.d_model,), ("heads", "kv", "embed"), num_in=num_in, name="out"
    )(out_BxTxNxH)
    out_BxTxD = lora.branch(self, "out", out_BxTxNxH, num_in, (cfg.d_model,), out_BxTxD)
    return constrain(out_BxTxD, ("batch", "length", "act_embed"))

  def _project(
      self,
      x_BxTxD: Array,
      kv_BxSxD: Array,
      rope_positions: tuple[Array, Array] | None,
  ) -> tuple[Array, Array, Array]:
    """Queries, keys and values, each with its LoRA branch and IA3 rescaling where on, rotated
    by RoPE at `rope_positions` (the queries', the keys') where given."""
    cfg = self.cfg
    n, k, h = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head

    def proj(name, features, axes, x):
      y = Projection(cfg, features, ("embed",) + axes, name=name)(x)
      return lora.branch(self, name, x, 1, features, y)

    q_BxTxNxH = proj("query", (n, h), ("heads", "kv"), x_BxTxD)
    k_BxSxKxH = proj("key", (k, h), ("kv_heads", "kv"), kv_BxSxD)
    v_BxSxKxH = proj("value", (k, h), ("kv_heads", "kv"), kv_BxSxD)
    if cfg.ia3:
      k_BxSxKxH = ia3_rescale(self, "ia3_key", k_BxSxKxH, ("kv_heads", "kv"))
      v_BxSxKxH = ia3_rescale(self, "ia3_value", v_BxSxKxH, ("kv_heads", "kv"))
    if rope_positions is not None:
      q_BxTxNxH = apply_rope(q_BxTxNxH, rope_positions[0])
      k_BxSxKxH = apply_rope(k_BxSxKxH, rope_positions[1])
    return constrain(q_BxTxNxH, ("batch", "length", "act_heads", "kv")), k_BxSxKxH, v_BxSxKxH

  def _sow_probs(self, q_BxTxNxH, k_BxSxKxH, bias_BxNxTxS, mask, scale, is_causal) -> None:
    """The attention probabilities for the viz maps, only when asked for: fused attention
    kernels never materialise them."""
    if self.is_mutable_collection("intermediates"):
      self.sow(
          "intermediates",
          "attention_probs",
          attention_probs(q_BxTxNxH, k_BxSxKxH, bias_BxNxTxS, mask, scale, is_causal),
      )

  def _prepend_prefix(
      self,
      k_BxSxKxH: Array,
      v_BxSxKxH: Array,
      mask: Array | None,
      bias_BxNxTxS: Array | None,
      is_causal: bool,
  ):
    """Prefix tuning (Li & Liang 2021): trainable key/value slots in front of the keys.

    Prefixes carry no position (zero relative bias, no RoPE) and every query sees them, padding
    and packed segments included. With a KV cache they are prepended at each call, never cached.
    """
    cfg = self.cfg
    p, (b, s, k, h) = cfg.prefix_length, k_BxSxKxH.shape

    def prepend(name, x_BxSxKxH):
      slots_PxKxH = self.param(
          name, dense_init(cfg, (None, "kv_heads", "kv")), (p, k, h), cfg.params_dtype
      )
      slots_BxPxKxH = jnp.broadcast_to(slots_PxKxH.astype(x_BxSxKxH.dtype), (b, p, k, h))
      return jnp.concatenate([slots_BxPxKxH, x_BxSxKxH], axis=1)

    if is_causal:  # self-attention without a cache: as many queries as keys
      causal_SxS = jnp.tril(jnp.ones((s, s), jnp.bool_))
      mask = causal_SxS if mask is None else mask & causal_SxS
    if mask is not None:
      mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (p,), jnp.bool_), mask], axis=-1)
    if bias_BxNxTxS is not None:
      bias_BxNxTxS = jnp.pad(bias_BxNxTxS, [(0, 0)] * 3 + [(p, 0)])
    return prepend("prefix_key", k_BxSxKxH), prepend("prefix_value", v_BxSxKxH), mask, bias_BxNxTxS

  def _update_cache(
      self,
      k_BxTxKxH: Array,
      v_BxTxKxH: Array,
      mask: Array | None,
      key_valid_BxT: Array | None,
      key_prefix_BxT: Array | None = None,
  ):
    """Writes new keys/values and their validity at the cache index; returns the cache and mask.

    The mask is causal over cache slots and hides invalid (padding) keys, except that every slot
    sees itself: a padding query then attends to something and stays finite. Keys this call marks
    as prefix (`key_prefix_BxT`: a prefix LM's prompt, filled in one call) are seen by all of its
    queries; later calls see every earlier slot anyway.
    """
    b, t = k_BxTxKxH.shape[:2]
    is_initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k_BxTxKxH.shape, k_BxTxKxH.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v_BxTxKxH.shape, v_BxTxKxH.dtype)
    cached_valid = self.variable("cache", "cached_valid", jnp.zeros, (b, t), jnp.bool_)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:
      return k_BxTxKxH, v_BxTxKxH, mask
    if key_valid_BxT is None:
      key_valid_BxT = jnp.ones((b, t), jnp.bool_)
    start = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxKxH, (0, start, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxKxH, (0, start, 0, 0))
    cached_valid.value = jax.lax.dynamic_update_slice(cached_valid.value, key_valid_BxT, (0, start))
    index.value = start + t
    q_slots_Tx1 = (start + jnp.arange(t))[:, None]
    k_slots_1xS = jnp.arange(cached_k.value.shape[1])[None, :]
    causal_BxTxS = (k_slots_1xS <= q_slots_Tx1)[None]
    if key_prefix_BxT is not None:
      prefix_BxS = jax.lax.dynamic_update_slice(
          jnp.zeros(cached_valid.value.shape, jnp.bool_), key_prefix_BxT.astype(bool), (0, start)
      )
      causal_BxTxS = causal_BxTxS | prefix_BxS[:, None, :]
    own_TxS = k_slots_1xS == q_slots_Tx1
    cache_mask = (causal_BxTxS & (cached_valid.value[:, None, :] | own_TxS))[:, None]
    return cached_k.value, cached_v.value, cache_mask if mask is None else mask & cache_mask


def attention_probs(
    q_BxTxNxH: Array,
    k_BxSxKxH: Array,
    bias_BxNxTxS: Array | None,
    mask: Array | None,
    scale: float,
    is_causal: bool,
) -> Array:
  """[B, N, T, S] float32 softmax weights as `jax.nn.dot_product_attention` computes them.

  Keys are those attention saw: the KV cache's slots while decoding, prefix-tuning slots first.
  A query with no visible key (padding) spreads uniformly, as the XLA kernel does.
  """
  groups = q_BxTxNxH.shape[2] // k_BxSxKxH.shape[2]
  k_BxSxNxH = jnp.repeat(k_BxSxKxH, groups, axis=2)  # query head n reads kv head n // groups
  logits_BxNxTxS = (
      jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH.astype(jnp.float32), k_BxSxNxH.astype(jnp.float32))
      * scale
  )
  if bias_BxNxTxS is not None:
    logits_BxNxTxS = logits_BxNxTxS + bias_BxNxTxS.astype(jnp.float32)
  t, s = logits_BxNxTxS.shape[2:]
  if is_causal:
    causal_TxS = jnp.tril(jnp.ones((t, s), jnp.bool_))
    mask = causal_TxS if mask is None else mask & causal_TxS
  if mask is not None:
    logits_BxNxTxS = jnp.where(mask, logits_BxNxTxS, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits_BxNxTxS, axis=-1)


def dot_product_attention(q, k, v, *, bias, mask, scale, is_causal, implementation):
  """Picks cuDNN flash attention on GPU when its constraints hold, else XLA.

  `implementation='auto'` avoids relying on JAX's default, which may silently choose XLA.
  """
  if implementation == "auto":
    head_dim = q.shape[-1]
    cudnn_ok = (
        jax.default_backend() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and head_dim <= 128
        and head_dim % 8 == 0
    )
    implementation = "cudnn" if cudnn_ok else "xla"
  return jax.nn.dot_product_attention(
      q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal, implementation=implementation
  )


class MLP(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD: Array, deterministic: bool) -> Array:
    cfg = self.cfg

    def dense(name, features, axes, x):
      y = nn.Dense(
          features,
          use_bias=cfg.use_bias,
          dtype=cfg.compute_dtype,
          param_dtype=cfg.params_dtype,
          kernel_init=dense_init(cfg, axes),
          bias_init=zeros_init(axes[-1:]),
          name=name,
      )(x)
      return lora.branch(self, name, x, 1, (features,), y)

    if cfg.activation in ("swiglu", "geglu"):
      gate = nn.silu if cfg.activation == "swiglu" else (lambda z: nn.gelu(z, approximate=True))
      h_BxLxF = gate(dense("wi_0", cfg.d_ff, ("embed", "mlp"), x_BxLxD)) * dense(
          "wi_1", cfg.d_ff, ("embed", "mlp"), x_BxLxD
      )
    else:
      act = {
          "gelu": lambda z: nn.gelu(z, approximate=False),
          "gelu_tanh": lambda z: nn.gelu(z, approximate=True),
          "relu": nn.relu,
      }[cfg.activation]
      h_BxLxF = act(dense("wi", cfg.d_ff, ("embed", "mlp"), x_BxLxD))
    if cfg.ia3:
      h_BxLxF = ia3_rescale(self, "ia3_mlp", h_BxLxF, ("mlp",))
    h_BxLxF = constrain(h_BxLxF, ("batch", "length", "act_mlp"))
    if cfg.mlp_hidden_dropout:
      h_BxLxF = Dropout(cfg.dropout_rate)(h_BxLxF, deterministic=deterministic)
    out_BxLxD = dense("wo", cfg.d_model, ("mlp", "embed"), h_BxLxF)
    return constrain(out_BxLxD, ("batch", "length", "act_embed"))
