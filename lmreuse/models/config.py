"""One configuration for every Transformer in lmreuse (BERT-, GPT- and T5-style).

Variants are options of one model, never copies of it: the architecture (encoder, decoder,
encoder-decoder) picks the module, the rest picks positions, norms, activations and dtypes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

ARCHITECTURES = ("encoder", "decoder", "encoder_decoder")
POSITIONS = ("learned", "sinusoidal", "rope", "relative_bias")
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post")
# 'geglu' is T5 v1.1's gated GELU (tanh approximation); 'gelu' is BERT's exact erf GELU.
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu", "geglu")
REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")
# The modules fine-tuning strategies insert: the field that switches each on (a size, or ia3's
# True) and a regex of the parameter names it adds. The one list of them: such parameters train
# under every parameter-efficient strategy and are new in every init report, and a model with
# any of them on has no Hugging Face form.
STRATEGY_MODULES = {
    "adapter_size": r"adapter",
    "ia3": r"(^|/)ia3_",
    "prefix_length": r"(^|/)prefix_(key|value)$",
    "prompt_length": r"(^|/)prompt$",
    "lora_rank": r"(^|/)lora_(a|b|magnitude)$",  # DoRA (lora_rank with dora) adds magnitudes
    "vera_rank": r"(^|/)vera_(d|b)$",
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of a Transformer; `validate()` names the field at fault."""

  architecture: str = "encoder"
  vocab_size: int = 8192
  d_model: int = 64
  num_heads: int = 2
  num_kv_heads: int = 0  # 0 = num_heads (multi-head); fewer = grouped-query attention.
  head_dim: int = 0  # 0 = d_model // num_heads.
  d_ff: int = 256
  num_layers: int = 2
  num_decoder_layers: int = 0  # encoder_decoder only; 0 = num_layers.
  max_len: int = 128
  dropout_rate: float = 0.1
  mlp_hidden_dropout: bool = False  # T5 also drops the FFN hidden units; BERT and GPT-2 do not
  position: str = "learned"
  relative_num_buckets: int = 32
  relative_max_distance: int = 128
  norm: str = "layernorm"
  norm_placement: str = "post"
  norm_eps: float = 1e-12
  activation: str = "gelu"
  use_bias: bool = True
  num_token_types: int = 0  # 2 for BERT's sentence A/B embeddings.
  tie_embeddings: bool = True
  scale_attention: bool = True  # T5 folds 1/sqrt(d) into its init and uses scale 1.
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: str = "none"
  attention_impl: str = "auto"
  # Decoder only: attention is bidirectional over each row's prefix (what a prefix LM conditions
  # on: a random span in pretraining, the whole input of a task, a seq2seq task's source) and
  # causal after it; the model then takes a `prefix_BxL` mask (lmreuse/objectives/prefix_lm.py).
  prefix_lm: bool = False
  # Parameter-efficient fine-tuning modules; all off by default, leaving the param tree unchanged.
  adapter_size: int = 0  # Houlsby bottleneck adapters after every sublayer; 0 = none.
  ia3: bool = False  # (IA)^3 rescaling of attention keys/values and of the FFN hidden units.
  prefix_length: int = 0  # prefix tuning: trainable key/value slots in every self-attention.
  prompt_length: int = 0  # prompt tuning: soft-prompt vectors before the (encoder) input.
  lora_rank: int = 0  # LoRA branches beside the projections matching lora_targets; 0 = none.
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  lora_targets: str = "attention/(query|value)/kernel"  # regexes over kernel paths | all_linear
  dora: bool = False  # DoRA: the LoRA-updated kernels renormalised to trained column magnitudes.
  vera_rank: int = 0  # VeRA: shared frozen random factors, trained scalings, on lora_targets.
  vera_seed: int = 0  # the seed of VeRA's shared random factors (not saved: regenerated)

  @classmethod
  def from_config(cls, model: Mapping[str, Any], vocab_size: int) -> TransformerConfig:
    """A config's model section (config.model, a saved one); the tokenizer fixes the vocabulary."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(model.keys()) - fields)
    if unknown:
      raise ValueError(f"config.model has unknown keys {unknown}; known: {sorted(fields)}")
    return cls(**{**dict(model.items()), "vocab_size": vocab_size})

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers

  @property
  def stack_depth(self) -> int:
    """Layers in the deepest stack; layer-wise strategies give encoder and decoder layers of one
    index one depth."""
    return max(self.num_layers, self.decoder_layers)

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> Any:
    return jnp.dtype(self.param_dtype)

  def validate(self, prefix: str = "config.model") -> None:
    """Raises ValueError naming the offending key before anything is compiled."""
    choices = {
        "architecture": ARCHITECTURES,
        "position": POSITIONS,
        "norm": NORMS,
        "norm_placement": NORM_PLACEMENTS,
        "activation": ACTIVATIONS,
        "remat": REMAT_POLICIES,
        "attention_impl": ATTENTION_IMPLEMENTATIONS,
        "dtype": ("float32", "bfloat16", "float16"),
        "param_dtype": ("float32", "bfloat16"),
    }
    for key, allowed in choices.items():
      if getattr(self, key) not in allowed:
        raise ValueError(f"{prefix}.{key}={getattr(self, key)!r} is not one of {allowed}")
    for key in ("vocab_size", "d_model", "num_heads", "d_ff", "num_layers", "max_len"):
      if getattr(self, key) <= 0:
        raise ValueError(f"{prefix}.{key}={getattr(self, key)} must be positive")
    # Prompt slots read no position table, so prompt_length needs no room within max_len.
    for key in STRATEGY_MODULES:  # sizes, and ia3's switch (a bool, never negative)
      if getattr(self, key) < 0:
        raise ValueError(f"{prefix}.{key}={getattr(self, key)} must be >= 0 (0 = off)")
    if self.prefix_lm and self.architecture != "decoder":
      raise ValueError(
          f"{prefix}.prefix_lm=True is a decoder's attention mask, not an {self.architecture}'s"
      )
    if self.dora and not self.lora_rank:
      raise ValueError(f"{prefix}.dora renormalises LoRA's update: set {prefix}.lora_rank too")
    if not self.head_dim and self.d_model % self.num_heads:
      raise ValueError(
          f"{prefix}.d_model={self.d_model} is not divisible by {prefix}.num_heads="
          f"{self.num_heads}; change one of them or set {prefix}.head_dim"
      )
    if self.num_heads % self.kv_heads:
      raise ValueError(
          f"{prefix}.num_heads={self.num_heads} is not divisible by "
          f"{prefix}.num_kv_heads={self.kv_heads}"
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"{prefix}.dropout_rate={self.dropout_rate} must be in [0, 1)")
    if self.position == "rope" and self.dim_per_head % 2:
      raise ValueError(f"{prefix}.position='rope' needs an even head dim, got {self.dim_per_head}")
