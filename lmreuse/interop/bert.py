"""BERT-family encoders (BERT, MiniLM, ...): post-norm, learned positions, token types."""

from __future__ import annotations

from lmreuse.interop.rules import Family, activation, attention, expect, linear, norm, same


class Bert(Family):
  model_type = "bert"
  prefixes = ("bert.",)

  def ignored(self, cfg):
    return (r"embeddings\.position_ids", r"cls\.predictions\.decoder\.(weight|bias)")

  def export_name(self, name, groups):
    # With pretraining heads (BertForPreTraining) the encoder sits under `bert.`.
    heads = groups & {"mlm", "nsp"}
    return f"bert.{name}" if heads and not name.startswith("cls.") else name

  requirements = dict(
      architecture="encoder",
      position="learned",
      norm="layernorm",
      norm_placement="post",
      use_bias=True,
      tie_embeddings=True,
      scale_attention=True,
  )
  hf_names = dict(
      vocab_size="vocab_size",
      d_model="hidden_size",
      num_heads="num_attention_heads",
      d_ff="intermediate_size",
      num_layers="num_hidden_layers",
      max_len="max_position_embeddings",
      dropout_rate="hidden_dropout_prob",
      norm_eps="layer_norm_eps",
      num_token_types="type_vocab_size",
      init_std="initializer_range",
  )
  hf_defaults = dict(
      hidden_dropout_prob=0.1, layer_norm_eps=1e-12, type_vocab_size=2, initializer_range=0.02
  )

  def model_fields(self, hf):
    expect(hf, "position_embedding_type", ("absolute",), "absolute")
    expect(hf, "is_decoder", (False,), False)
    activation_name = activation(hf.get("hidden_act", "gelu"), "hidden_act")
    return {**super().model_fields(hf), "activation": activation_name}

  def hf_config(self, cfg, groups):
    heads = (
        "BertForPreTraining"
        if {"mlm", "nsp"} <= groups
        else "BertForMaskedLM"
        if "mlm" in groups
        else "BertModel"
    )
    return dict(
        super().hf_config(cfg, groups),
        architectures=[heads],
        attention_probs_dropout_prob=0.0,
        hidden_act=self.exported_activations[cfg.activation],
        position_embedding_type="absolute",
        pad_token_id=0,
    )

  def rules(self, cfg):
    d, s = cfg.d_model, "backbone/stack"
    rules = [
        same("embeddings.word_embeddings.weight", f"{s}/token_embed/embedding"),
        same("embeddings.position_embeddings.weight", f"{s}/position_embed/embedding"),
        same("embeddings.token_type_embeddings.weight", f"{s}/token_type_embed/embedding"),
        *norm("embeddings.LayerNorm", f"{s}/norm"),
    ]
    for i in range(cfg.num_layers):
      hf, ours = f"encoder.layer.{i}", f"{s}/layers_{i}"
      rules += [
          *attention(
              f"{hf}.attention",
              f"{ours}/self_attention",
              ("self.query", "self.key", "self.value", "output.dense"),
              cfg,
              bias=True,
          ),
          *norm(f"{hf}.attention.output.LayerNorm", f"{ours}/self_attention_norm"),
          *linear(f"{hf}.intermediate.dense", f"{ours}/mlp/wi", (d,), (cfg.d_ff,)),
          *linear(f"{hf}.output.dense", f"{ours}/mlp/wo", (cfg.d_ff,), (d,)),
          *norm(f"{hf}.output.LayerNorm", f"{ours}/mlp_norm"),
      ]
    rules += linear("pooler.dense", "pooler/dense", (d,), (d,), group="pooler")
    rules += [
        *linear("cls.predictions.transform.dense", "mlm_head/transform", (d,), (d,), group="mlm"),
        *norm("cls.predictions.transform.LayerNorm", "mlm_head/transform_norm", group="mlm"),
        same("cls.predictions.bias", "mlm_head/bias", group="mlm"),
    ]
    rules += linear("cls.seq_relationship", "nsp_head/dense", (d,), (2,), group="nsp")
    return rules
