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

  def model_fields(self, hf):
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in T5_FEED_FORWARD:
      raise ValueError(
          f"HF config feed_forward_proj={proj!r} is not supported; supported: "
          f"{sorted(T5_FEED_FORWARD)}"
      )
    return dict(
        architecture="encoder_decoder",
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        num_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        d_ff=hf["d_ff"],
        num_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        max_len=hf.get("n_positions", 512),
        dropout_rate=hf.get("dropout_rate", 0.1),
        mlp_hidden_dropout=True,
        position="relative_bias",
        relative_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        norm="rmsnorm",
        norm_placement="pre",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        activation=T5_FEED_FORWARD[proj],
        use_bias=False,
        num_token_types=0,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        scale_attention=False,
    )

  def requirements(self):
    return dict(
        architecture="encoder_decoder",
        position="relative_bias",
        norm="rmsnorm",
        norm_placement="pre",
        use_bias=False,
        scale_attention=False,
        num_token_types=0,
    )

  def hf_config(self, cfg, groups):
    proj = self.exported_activations[cfg.activation]
    return dict(
        architectures=["T5ForConditionalGeneration"],
        model_type="t5",
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.dim_per_head,
        d_ff=cfg.d_ff,
        num_heads=cfg.num_heads,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.decoder_layers,
        n_positions=cfg.max_len,
        dropout_rate=cfg.dropout_rate,
        relative_attention_num_buckets=cfg.relative_num_buckets,
        relative_attention_max_distance=cfg.relative_max_distance,
        layer_norm_epsilon=cfg.norm_eps,
        feed_forward_proj=proj,
        tie_word_embeddings=cfg.tie_embeddings,
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
