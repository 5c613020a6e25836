"""Pieces shared by every recipe: model sizes, architecture presets, optimizer, mesh, tokenizer."""

from __future__ import annotations

import ml_collections

from lmreuse.parallel.sharding import DEFAULT_RULES

# Sizes follow BERT's miniatures (Turc et al. 2019), then BERT-base and BERT-large.
SIZES = {
    "tiny": dict(d_model=64, num_heads=2, d_ff=256, num_layers=2),
    "mini": dict(d_model=256, num_heads=4, d_ff=1024, num_layers=4),
    "small": dict(d_model=512, num_heads=8, d_ff=2048, num_layers=4),
    "base": dict(d_model=768, num_heads=12, d_ff=3072, num_layers=12),
    "large": dict(d_model=1024, num_heads=16, d_ff=4096, num_layers=24),
}

# Architecture presets: the published recipe of each family, as options of one Transformer.
ARCHITECTURES = {
    "bert": dict(
        architecture="encoder",
        position="learned",
        norm="layernorm",
        norm_placement="post",
        norm_eps=1e-12,
        activation="gelu",
        use_bias=True,
        num_token_types=2,
        tie_embeddings=True,
        scale_attention=True,
        mlp_hidden_dropout=False,
    ),
    "gpt": dict(
        architecture="decoder",
        position="learned",
        norm="layernorm",
        norm_placement="pre",
        norm_eps=1e-5,
        activation="gelu_tanh",
        use_bias=True,
        num_token_types=0,
        tie_embeddings=True,
        scale_attention=True,
        mlp_hidden_dropout=False,
    ),
    "t5": dict(
        architecture="encoder_decoder",
        position="relative_bias",
        norm="rmsnorm",
        norm_placement="pre",
        norm_eps=1e-6,
        activation="relu",
        use_bias=False,
        num_token_types=0,
        tie_embeddings=True,
        scale_attention=False,
        mlp_hidden_dropout=True,
    ),
}

# GPT's decoder with a bidirectional prefix (configs/pretrain.py:prefix_lm); ELECTRA's
# discriminator is BERT's encoder.
ARCHITECTURES["electra"] = ARCHITECTURES["bert"]
ARCHITECTURES["prefix_lm"] = {**ARCHITECTURES["gpt"], "prefix_lm": True}


def parse_arg(arg: str | None, defaults: dict) -> dict:
  """'bert,size=tiny' → {'preset': 'bert', 'size': 'tiny'}: the first bare word is the preset."""
  out = dict(defaults)
  for part in filter(None, (arg or "").split(",")):
    if "=" in part:
      key, value = part.split("=", 1)
      if key not in out:
        raise ValueError(f"config argument {key!r} in {arg!r} is unknown; known: {sorted(out)}")
      out[key] = value
    else:
      out["preset"] = part
  return out


def model_config(preset: str, size: str, max_len: int) -> ml_collections.ConfigDict:
  if preset not in ARCHITECTURES:
    raise ValueError(f"config preset {preset!r} is unknown; choose one of {sorted(ARCHITECTURES)}")
  if size not in SIZES:
    raise ValueError(f"config size={size!r} is unknown; choose one of {sorted(SIZES)}")
  return ml_collections.ConfigDict(
      dict(
          **ARCHITECTURES[preset],
          **SIZES[size],
          num_kv_heads=0,  # 0 = num_heads; fewer = grouped-query attention
          head_dim=0,  # 0 = d_model // num_heads
          num_decoder_layers=0,  # encoder_decoder only; 0 = num_layers
          max_len=max_len,  # longest position the model can embed
          dropout_rate=0.1,
          relative_num_buckets=32,
          relative_max_distance=128,
          init_std=0.02,
          dtype="float32",  # compute dtype; bfloat16 on GPU/TPU
          param_dtype="float32",
          remat="none",  # none | full | dots: rematerialise each layer on the backward pass
          attention_impl="auto",  # auto picks cuDNN flash attention on GPU when shapes allow
      )
  )


def tokenizer_config(vocab_size: int = 8000) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      dict(
          vocab_size=vocab_size,  # SentencePiece vocabulary incl. specials and sentinels
          model_type="unigram",  # unigram | bpe
          num_sentinels=100,  # T5 <extra_id_N> tokens
          max_sentences=300_000,  # SentencePiece training sample (the whole corpus fits)
          path="",  # '' = <workdir>/tokenizer/spm.model, trained when missing
      )
  )


def optimizer_config(learning_rate: float, warmup_steps: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      dict(
          name="adamw",  # adamw | adafactor
          learning_rate=learning_rate,
          warmup_steps=warmup_steps,
          schedule="linear",  # linear | cosine | constant (after the linear warmup)
          end_lr_factor=0.0,  # final LR = factor × peak
          weight_decay=0.01,  # matrices only; biases and norms are never decayed
          b1=0.9,
          b2=0.999,
          eps=1e-6,
          clip_norm=1.0,  # global-norm clipping; 0 = off
      )
  )


def mesh_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      dict(
          data=-1,  # -1 = all devices not used by the other axes
          fsdp=1,
          tensor=1,
          rules=DEFAULT_RULES,  # logical axis → mesh axes; the only place parallelism is chosen
      )
  )
