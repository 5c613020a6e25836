"""Model tests that catch real bugs: causality, padding, packing, KV cache, dtypes, errors."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from lmreuse.models.config import TransformerConfig
from lmreuse.models.transformer import Decoder, Encoder, EncoderDecoder

B, L, V = 2, 12, 97


def tiny(**overrides) -> TransformerConfig:
  base = dict(
      vocab_size=V, d_model=32, num_heads=4, d_ff=64, num_layers=2, max_len=L, dropout_rate=0.0
  )
  return TransformerConfig(**{**base, **overrides})


def ids(seed=0, shape=(B, L)):
  return jax.random.randint(jax.random.key(seed), shape, 6, V)


def init_apply(model, *args, **kwargs):
  variables = model.init(jax.random.key(1), *args, **kwargs)
  return variables, model.apply(variables, *args, **kwargs)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "relative_bias"])
def test_decoder_is_causal(position):
  model = Decoder(tiny(architecture="decoder", position=position, norm_placement="pre"))
  tokens = ids()
  variables, (logits, _) = init_apply(model, tokens)
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1 - 6) % (V - 6) + 6)
  logits2, _ = model.apply(variables, changed)
  np.testing.assert_allclose(logits[:, :7], logits2[:, :7], atol=1e-6)
  assert np.abs(np.asarray(logits[:, 7:] - logits2[:, 7:])).max() > 1e-4


@pytest.mark.parametrize("position", ["learned", "rope", "relative_bias"])
def test_encoder_padding_never_changes_real_tokens(position):
  model = Encoder(tiny(position=position, num_token_types=2))
  tokens = ids()
  segments = jnp.ones_like(tokens).at[:, 8:].set(0)
  variables, hidden = init_apply(model, tokens, segment_ids_BxL=segments)
  other_padding = tokens.at[:, 8:].set(0)
  hidden2 = model.apply(variables, other_padding, segment_ids_BxL=segments)
  np.testing.assert_allclose(hidden[:, :8], hidden2[:, :8], atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rope", "relative_bias"])
def test_packed_segments_do_not_attend_to_each_other(position):
  model = Decoder(tiny(architecture="decoder", position=position, norm_placement="pre"))
  a, b = ids(1, (1, 5)), ids(2, (1, 7))
  packed = jnp.concatenate([a, b], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 7])
  positions = jnp.array([list(range(5)) + list(range(7))])
  variables, (logits, _) = init_apply(
      model, packed, segment_ids_BxL=segments, positions_BxL=positions
  )
  alone_b, _ = model.apply(variables, b)
  alone_a, _ = model.apply(variables, a)
  np.testing.assert_allclose(logits[:, 5:], alone_b, atol=1e-5)
  np.testing.assert_allclose(logits[:, :5], alone_a, atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rope", "relative_bias"])
def test_kv_cache_decoding_matches_full_forward(position):
  cfg = tiny(architecture="decoder", position=position, norm_placement="pre", num_kv_heads=2)
  tokens = ids()
  params = Decoder(cfg).init(jax.random.key(1), tokens)["params"]
  full, _ = Decoder(cfg).apply({"params": params}, tokens)
  decoder = Decoder(cfg, decode=True)
  cache = decoder.init(jax.random.key(1), tokens)["cache"]
  prompt = 4  # a multi-token prompt first, then one token at a time
  steps = [(0, prompt)] + [(t, t + 1) for t in range(prompt, L)]
  outputs = []
  for start, end in steps:
    positions = jnp.broadcast_to(jnp.arange(start, end), (B, end - start))
    (logits, _), mutated = decoder.apply(
        {"params": params, "cache": cache},
        tokens[:, start:end],
        positions_BxL=positions,
        mutable=["cache"],
    )
    cache = mutated["cache"]
    outputs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=1e-5)


def test_encoder_decoder_shapes_and_cross_attention_uses_encoder():
  cfg = tiny(
      architecture="encoder_decoder",
      position="relative_bias",
      norm="rmsnorm",
      norm_placement="pre",
      activation="geglu",
      use_bias=False,
      scale_attention=False,
  )
  model = EncoderDecoder(cfg)
  enc, dec = ids(0), ids(1, (B, 5))
  variables, (logits, encoded) = init_apply(model, enc, dec)
  assert logits.shape == (B, 5, V) and encoded.shape == (B, L, 32)
  logits2, _ = model.apply(variables, ids(3), dec)
  assert np.abs(np.asarray(logits - logits2)).max() > 1e-4


def test_bf16_compute_keeps_fp32_params():
  model = Encoder(tiny(dtype="bfloat16"))
  variables, hidden = init_apply(model, ids())
  assert hidden.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def test_parameters_carry_logical_axes():
  model = Encoder(tiny(num_token_types=2))
  boxed = jax.eval_shape(model.init, jax.random.key(0), ids())["params"]
  specs = nn.get_partition_spec(boxed)
  stack = specs["stack"]
  assert tuple(stack["token_embed"]["embedding"]) == ("vocab", "embed")
  assert tuple(stack["layers_0"]["self_attention"]["query"]["kernel"]) == ("embed", "heads", "kv")
  assert tuple(stack["layers_0"]["mlp"]["wi"]["kernel"]) == ("embed", "mlp")


# HF BertModel without its pooler: bert-base-uncased and bert-large-uncased.
@pytest.mark.parametrize("size,count", [("base", 108_891_648), ("large", 334_092_288)])
def test_bert_size_presets_are_the_published_architectures(size, count):
  """The presets are what papers call BERT-base and BERT-large: at BERT's vocabulary and
  length the encoder has exactly the published number of parameters."""
  model = Encoder(
      TransformerConfig.from_config(
          common.model_config("bert", size, max_len=512), vocab_size=30522
      )
  )
  shapes = jax.eval_shape(model.init, jax.random.key(0), ids())["params"]
  assert sum(p.size for p in jax.tree.leaves(nn.unbox(shapes))) == count


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_same_gradients(remat):
  tokens = ids()

  def grads(cfg):
    model = Encoder(cfg)
    params = model.init(jax.random.key(1), tokens)["params"]
    return jax.grad(lambda p: model.apply({"params": p}, tokens).sum())(params)

  base = grads(tiny())
  other = grads(tiny(remat=remat))
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(other)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("num_heads", 3, "num_heads"),
        ("position", "alibi", "position"),
        ("activation", "tanh", "activation"),
        ("num_kv_heads", 3, "num_kv_heads"),
        ("dropout_rate", 1.5, "dropout_rate"),
    ],
)
def test_config_errors_name_the_key(field, value, message):
  cfg = dataclasses.replace(tiny(), **{field: value})
  with pytest.raises(ValueError, match=f"config.model.{message}"):
    cfg.validate()
