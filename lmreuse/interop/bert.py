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

  def model_fields(self, hf):
    expect(hf, "position_embedding_type", ("absolute",), "absolute")
    expect(hf, "is_decoder", (False,), False)
    return dict(
        architecture="encoder",
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        num_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        max_len=hf["max_position_embeddings"],
        dropout_rate=hf.get("hidden_dropout_prob", 0.1),
        position="learned",
        norm="layernorm",
        norm_placement="post",
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=activation(hf.get("hidden_act", "gelu"), "hidden_act"),
        use_bias=True,
        num_token_types=hf.get("type_vocab_size", 2),
        tie_embeddings=True,
        scale_attention=True,
        init_std=hf.get("initializer_range", 0.02),
    )

  def requirements(self):
    return dict(
        architecture="encoder",
        position="learned",
        norm="layernorm",
        norm_placement="post",
        use_bias=True,
        tie_embeddings=True,
        scale_attention=True,
    )

  def hf_config(self, cfg, groups):
    heads = (
        "BertForPreTraining"
        if {"mlm", "nsp"} <= groups
        else "BertForMaskedLM"
        if "mlm" in groups
        else "BertModel"
    )
    return dict(
        architectures=[heads],
        model_type="bert",
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.num_layers,
        max_position_embeddings=cfg.max_len,
        hidden_dropout_prob=cfg.dropout_rate,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=cfg.norm_eps,
        hidden_act=self.exported_activations[cfg.activation],
        type_vocab_size=cfg.num_token_types,
        initializer_range=cfg.init_std,
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
