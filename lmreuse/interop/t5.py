"""T5 v1.0 and v1.1: RMS-norm encoder-decoder with relative position bias and no biases."""

from __future__ import annotations

from lmreuse.interop.rules import Family, attention, linear, norm, same

T5_FEED_FORWARD = {"relu": "relu", "gated-gelu": "geglu", "gated-silu": "swiglu", "gelu": "gelu"}


class T5(Family):
  """T5 v1.0 (ReLU, tied embeddings with the d^-0.5 rescale) and v1.1 (gated GELU, untied)."""

  model_type = "t5"
  exported_activations = {ours: name for name, ours in T5_FEED_FORWARD.items()}
  free_head_dim = True

  def ignored(self, cfg):
    tied = (r"lm_head\.weight",) if cfg.tie_embeddings else ()
    return (r"(encoder|decoder)\.embed_tokens\.weight",) + tied

  requirements = dict(
      architecture="encoder_decoder",
      position="relative_bias",
      norm="rmsnorm",
      norm_placement="pre",
      use_bias=False,
      scale_attention=False,
      num_token_types=0,
  )
  hf_names = dict(
      vocab_size="vocab_size",
      d_model="d_model",
      num_heads="num_heads",
      d_ff="d_ff",
      num_layers="num_layers",
      max_len="n_positions",
      dropout_rate="dropout_rate",
      relative_num_buckets="relative_attention_num_buckets",
      relative_max_distance="relative_attention_max_distance",
      norm_eps="layer_norm_epsilon",
      tie_embeddings="tie_word_embeddings",
  )
  hf_defaults = dict(
      n_positions=512,
      dropout_rate=0.1,
      relative_attention_num_buckets=32,
      relative_attention_max_distance=128,
      layer_norm_epsilon=1e-6,
      tie_word_embeddings=True,
  )

  def model_fields(self, hf):
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in T5_FEED_FORWARD:
      raise ValueError(
          f"HF config feed_forward_proj={proj!r} is not supported; supported: "
          f"{sorted(T5_FEED_FORWARD)}"
      )
    return dict(
        super().model_fields(hf),
        head_dim=hf["d_kv"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        mlp_hidden_dropout=True,
        activation=T5_FEED_FORWARD[proj],
    )

  def hf_config(self, cfg, groups):
    return dict(
        super().hf_config(cfg, groups),
        architectures=["T5ForConditionalGeneration"],
        d_kv=cfg.dim_per_head,
        num_decoder_layers=cfg.decoder_layers,
        feed_forward_proj=self.exported_activations[cfg.activation],
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )

  def rules(self, cfg):
    d, f = cfg.d_model, cfg.d_ff
    names = ("q", "k", "v", "o")
    rules = [same("shared.weight", "backbone/token_embed/embedding")]
    if not cfg.tie_embeddings:
      rules += linear("lm_head", "backbone/lm_head", (d,), (cfg.vocab_size,), bias=False)
    for side, depth in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
      stack = f"backbone/{side}"
      rules += [
          same(
              f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
              f"{stack}/relative_bias/rel_embedding",
          ),
          *norm(f"{side}.final_layer_norm", f"{stack}/norm", bias=False),
      ]
      for i in range(depth):
        hf, ours = f"{side}.block.{i}.layer", f"{stack}/layers_{i}"
        sublayers = [("SelfAttention", "self_attention")]
        if side == "decoder":
          sublayers.append(("EncDecAttention", "cross_attention"))
        for j, (hf_name, our_name) in enumerate(sublayers):
          rules += [
              *attention(f"{hf}.{j}.{hf_name}", f"{ours}/{our_name}", names, cfg, bias=False),
              *norm(f"{hf}.{j}.layer_norm", f"{ours}/{our_name}_norm", bias=False),
          ]
        mlp = f"{hf}.{len(sublayers)}"
        wi = ("wi_0", "wi_1") if cfg.activation in ("geglu", "swiglu") else ("wi",)
        for name in wi:
          rules += linear(
              f"{mlp}.DenseReluDense.{name}", f"{ours}/mlp/{name}", (d,), (f,), bias=False
          )
        rules += [
            *linear(f"{mlp}.DenseReluDense.wo", f"{ours}/mlp/wo", (f,), (d,), bias=False),
            *norm(f"{mlp}.layer_norm", f"{ours}/mlp_norm", bias=False),
        ]
    return rules
