"""GPT-2: pre-norm decoder with a fused QKV projection in Conv1D ([in, out]) layout."""

from __future__ import annotations

from lmreuse.interop.rules import Family, activation, expect, fused_qkv, linear, norm, same


class GPT2(Family):
  model_type = "gpt2"
  prefixes = ("transformer.",)

  def ignored(self, cfg):
    return (r"lm_head\.weight", r"h\.\d+\.attn\.(bias|masked_bias)")

  requirements = dict(
      architecture="decoder",
      position="learned",
      norm="layernorm",
      norm_placement="pre",
      use_bias=True,
      tie_embeddings=True,
      scale_attention=True,
      num_token_types=0,
  )
  hf_names = dict(
      vocab_size="vocab_size",
      d_model="n_embd",
      num_heads="n_head",
      num_layers="n_layer",
      max_len="n_positions",
      dropout_rate="resid_pdrop",
      norm_eps="layer_norm_epsilon",
      init_std="initializer_range",
  )
  hf_defaults = dict(resid_pdrop=0.1, layer_norm_epsilon=1e-5, initializer_range=0.02)

  def model_fields(self, hf):
    expect(hf, "scale_attn_by_inverse_layer_idx", (False,), False)
    expect(hf, "add_cross_attention", (False,), False)
    expect(hf, "scale_attn_weights", (True,), True)
    return dict(
        super().model_fields(hf),
        d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
        activation=activation(hf.get("activation_function", "gelu_new"), "activation_function"),
    )

  def hf_config(self, cfg, groups):
    return dict(
        super().hf_config(cfg, groups),
        architectures=["GPT2LMHeadModel"],
        n_inner=cfg.d_ff,
        embd_pdrop=cfg.dropout_rate,
        attn_pdrop=0.0,
        activation_function=self.exported_activations[cfg.activation],
        tie_word_embeddings=True,
    )

  def rules(self, cfg):
    d, n, h, s = cfg.d_model, cfg.num_heads, cfg.dim_per_head, "backbone/stack"
    rules = [
        same("wte.weight", f"{s}/token_embed/embedding"),
        same("wpe.weight", f"{s}/position_embed/embedding"),
        *norm("ln_f", f"{s}/norm"),
    ]
    for i in range(cfg.num_layers):
      hf, ours = f"h.{i}", f"{s}/layers_{i}"
      rules += [
          *norm(f"{hf}.ln_1", f"{ours}/self_attention_norm"),
          *fused_qkv(f"{hf}.attn.c_attn", f"{ours}/self_attention", d, n, h),
          *linear(f"{hf}.attn.c_proj", f"{ours}/self_attention/out", (n, h), (d,), conv1d=True),
          *norm(f"{hf}.ln_2", f"{ours}/mlp_norm"),
          *linear(f"{hf}.mlp.c_fc", f"{ours}/mlp/wi", (d,), (cfg.d_ff,), conv1d=True),
          *linear(f"{hf}.mlp.c_proj", f"{ours}/mlp/wo", (cfg.d_ff,), (d,), conv1d=True),
      ]
    return rules
