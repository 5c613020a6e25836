"""Parameter-efficient fine-tuning modules: adapters, (IA)^3, prefix and prompt tuning."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lmreuse.models import lora
from lmreuse.models.config import TransformerConfig
from lmreuse.models.transformer import Decoder, Encoder, EncoderDecoder
from tests.models import test_decoding as dec
from tests.models.test_dropout import draws

MODELS = {"encoder": Encoder, "decoder": Decoder, "encoder_decoder": EncoderDecoder}
PEFT_NAMES = ("adapter", "ia3", "prefix", "prompt")
ALL_PEFT = dict(adapter_size=8, ia3=True, prefix_length=3, prompt_length=2)


def config(architecture: str, **overrides) -> TransformerConfig:
  if architecture == "encoder":  # BERT: post-norm, learned positions
    overrides = {"norm_placement": "post", **overrides}
  return dec.config(architecture, **overrides)


ALL_DECODER = config("decoder", position="relative_bias", **ALL_PEFT)


def inputs(cfg: TransformerConfig, seed: int = 0) -> tuple[jax.Array, ...]:
  """One shape per architecture: eager ops compile once per shape, at init."""
  ids_BxL = jax.random.randint(jax.random.key(seed), (2, dec.MAX_LEN), 6, dec.V)
  return (ids_BxL, ids_BxL[:, :6]) if cfg.architecture == "encoder_decoder" else (ids_BxL,)


@functools.cache  # initialising is the slow part of these tests
def init_params(cfg: TransformerConfig, seed: int = 0) -> dict:
  model = MODELS[cfg.architecture](cfg)
  return nn.unbox(model.init(jax.random.key(seed), *inputs(cfg))["params"])


def forward(cfg: TransformerConfig, params: dict, *args, **kwargs) -> jax.Array:
  """Encoder hidden states or logits, run op by op: jit's fusions would round differently."""
  out = MODELS[cfg.architecture](cfg).apply({"params": params}, *args, **kwargs)
  return out if cfg.architecture == "encoder" else out[0]


def flat(params: dict) -> dict[str, jax.Array]:
  return traverse_util.flatten_dict(params, sep="/")


def with_base(params: dict, base: dict) -> dict:
  """`params` with every parameter the base model has replaced by the base model's value."""
  merged = flat(params)
  assert set(flat(base)) <= set(merged)
  merged.update(flat(base))
  return traverse_util.unflatten_dict(merged, sep="/")


def perturb_peft(params: dict, seed: int) -> dict:
  """Random PEFT parameters, as after training (adapters and (IA)^3 start as the identity)."""
  keys = iter(jax.random.split(jax.random.key(seed), len(flat(params))))
  return traverse_util.unflatten_dict(
      {
          path: x + 0.3 * jax.random.normal(next(keys), x.shape)
          if any(name in path for name in PEFT_NAMES)
          else x
          for path, x in flat(params).items()
      },
      sep="/",
  )


def test_adapters_and_ia3_start_as_the_identity():
  base_cfg = config("encoder_decoder")  # adapters after self-attention, cross-attention and MLP
  cfg = dataclasses.replace(base_cfg, adapter_size=8, ia3=True)
  base = init_params(base_cfg, 0)
  params = with_base(init_params(cfg, 1), base)
  new = set(flat(params)) - set(flat(base))
  assert new and all("adapter" in path or "ia3" in path for path in new)
  np.testing.assert_allclose(
      forward(cfg, params, *inputs(cfg)), forward(base_cfg, base, *inputs(cfg)), atol=1e-6
  )


def test_parameter_names_and_logical_axes():
  cfg = config("encoder_decoder", **ALL_PEFT)
  boxed = jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0), *inputs(cfg))["params"]
  specs = flat(nn.get_partition_spec(boxed))
  base_cfg = config("encoder_decoder")
  base = jax.eval_shape(EncoderDecoder(base_cfg).init, jax.random.key(0), *inputs(base_cfg))
  new = set(specs) - set(flat(base["params"]))
  layer = {
      "self_attention/ia3_key",
      "self_attention/ia3_value",
      "mlp/ia3_mlp",
      "self_attention/prefix_key",
      "self_attention/prefix_value",
  }
  layer |= {
      f"{sub}_adapter/{dense}/{p}"
      for sub in ("self_attention", "mlp")
      for dense in ("down", "up")
      for p in ("kernel", "bias")
  }
  cross = {"cross_attention/ia3_key", "cross_attention/ia3_value"}
  cross |= {
      f"cross_attention_adapter/{dense}/{p}" for dense in ("down", "up") for p in ("kernel", "bias")
  }
  expected = {"encoder/prompt"}  # the decoder stack of an encoder-decoder takes no prompt
  expected |= {f"encoder/layers_{i}/{path}" for i in range(2) for path in layer}
  expected |= {f"decoder/layers_{i}/{path}" for i in range(2) for path in layer | cross}
  assert new == expected
  axes = {
      "encoder/prompt": (None, "embed"),
      "encoder/layers_0/mlp_adapter/down/kernel": ("embed", "adapter"),
      "encoder/layers_0/mlp_adapter/up/kernel": ("adapter", "embed"),
      "decoder/layers_1/cross_attention/ia3_value": ("kv_heads", "kv"),
      "decoder/layers_0/mlp/ia3_mlp": ("mlp",),
      "encoder/layers_1/self_attention/prefix_key": (None, "kv_heads", "kv"),
  }
  for path, names in axes.items():
    assert tuple(specs[path]) == names, path


def test_all_modules_together_train_and_the_prefix_is_read():
  cfg = ALL_DECODER
  params = init_params(cfg)
  (tokens_BxL,) = inputs(cfg)
  grads = flat(jax.jit(jax.grad(lambda p: forward(cfg, p, tokens_BxL).sum()))(params))
  for path, grad in grads.items():
    if any(name in path for name in ("prefix", "prompt", "ia3", "up/")):  # `down` waits for `up`
      assert np.abs(np.asarray(grad)).max() > 0, path
  layer = dict(params["stack"]["layers_0"])
  layer["self_attention"] = dict(
      layer["self_attention"], prefix_value=-layer["self_attention"]["prefix_value"]
  )
  other_prefix = dict(params, stack=dict(params["stack"], layers_0=layer))
  changed = forward(cfg, other_prefix, tokens_BxL)
  assert np.abs(np.asarray(forward(cfg, params, tokens_BxL) - changed)[:, 0]).max() > 1e-3


# Everything but the prompt, which cannot decode on a cache; GQA for the prefix's kv heads.
CACHED_DECODER = config(
    "decoder", position="relative_bias", num_kv_heads=2, **dict(ALL_PEFT, prompt_length=0)
)


def test_prefix_greedy_decoding_on_left_padded_prompts_matches_full_forward():
  cfg = CACHED_DECODER
  params = perturb_peft(init_params(cfg), 1)
  alone, ids, segments = dec.prompts(2)
  new = dec.MAX_LEN - ids.shape[1]
  out = np.asarray(
      dec.generate_decoder(cfg, params, ids, segments, max_new_tokens=new, eos_id=dec.NEVER)
  )
  for out_L, prompt in zip(out, alone):
    np.testing.assert_array_equal(
        out_L, dec.full_greedy_decoder(cfg, params, prompt, new, dec.NEVER)
    )


def test_prefix_kv_cache_logits_match_full_forward():
  cfg = CACHED_DECODER
  params = perturb_peft(init_params(cfg), 1)
  tokens_BxL = inputs(cfg)[0]
  full = forward(cfg, params, tokens_BxL)
  apply = jax.jit(functools.partial(Decoder(cfg, decode=True).apply, mutable="cache"))
  cache = apply({"params": params}, tokens_BxL)[1]["cache"]
  outputs = []
  prompt = 12  # a multi-token prompt first, then one token at a time
  for start, end in [(0, prompt)] + [(t, t + 1) for t in range(prompt, tokens_BxL.shape[1])]:
    positions = jnp.broadcast_to(jnp.arange(start, end), (2, end - start))
    (logits, _), mutated = apply(
        {"params": params, "cache": cache}, tokens_BxL[:, start:end], positions_BxL=positions
    )
    cache = mutated["cache"]
    outputs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=1e-5)


def test_encoder_decoder_greedy_decoding_with_all_modules_matches_full_forward():
  cfg = config("encoder_decoder", **ALL_PEFT)
  params = perturb_peft(init_params(cfg), 1)
  enc, enc_seg = dec.encoder_inputs(1)
  out = np.asarray(
      dec.generate_encoder_decoder(cfg, params, enc, enc_seg, max_len=10, eos_id=dec.NEVER)
  )
  np.testing.assert_array_equal(
      out, dec.full_greedy_enc_dec(cfg, params, enc, enc_seg, 10, dec.NEVER)
  )


def test_prompt_keeps_shapes_and_padding_stays_masked():
  cfg = config("encoder", prompt_length=4)  # learned positions: the prompt takes no table row
  params = init_params(cfg)
  (tokens_BxL,) = inputs(cfg, 3)  # as long as the position table
  segments_BxL = jnp.ones_like(tokens_BxL).at[:, 9:].set(0)
  hidden = forward(cfg, params, tokens_BxL, segment_ids_BxL=segments_BxL)
  assert hidden.shape == (2, dec.MAX_LEN, cfg.d_model)
  assert np.isfinite(np.asarray(hidden)).all()
  other_pads = forward(cfg, params, tokens_BxL.at[:, 9:].set(0), segment_ids_BxL=segments_BxL)
  np.testing.assert_allclose(hidden[:, :9], other_pads[:, :9], atol=1e-5)
  other_prompt = dict(params, stack=dict(params["stack"], prompt=-params["stack"]["prompt"]))
  changed = forward(cfg, other_prompt, tokens_BxL, segment_ids_BxL=segments_BxL)
  assert np.abs(np.asarray(hidden[:, :9] - changed[:, :9])).max() > 1e-3


def test_prompt_and_prefix_are_seen_by_every_packed_segment():
  cfg = ALL_DECODER
  params = init_params(cfg)
  a_Bx8, b_Bx8 = inputs(cfg, 1)[0][:, :8], inputs(cfg, 2)[0][:, :8]
  a_then_b = jnp.concatenate([a_Bx8, b_Bx8], axis=1)
  # Causal: the first half of a row is its sequence alone, whatever follows.
  alone_a = forward(cfg, params, a_then_b)[:, :8]
  alone_b = forward(cfg, params, jnp.concatenate([b_Bx8, a_Bx8], axis=1))[:, :8]
  packed = forward(
      cfg,
      params,
      a_then_b,
      segment_ids_BxL=jnp.array([[1] * 8 + [2] * 8] * 2),
      positions_BxL=jnp.array([list(range(8)) * 2] * 2),
  )
  np.testing.assert_allclose(packed[:, :8], alone_a, atol=1e-5)
  np.testing.assert_allclose(packed[:, 8:], alone_b, atol=1e-5)
  other_prompt = dict(params, stack=dict(params["stack"], prompt=-params["stack"]["prompt"]))
  changed = forward(cfg, other_prompt, a_then_b)
  assert np.abs(np.asarray(alone_a[:, 0] - changed[:, 0])).max() > 1e-3  # the first token sees it


def test_prompt_tuning_refuses_kv_cache_generation_on_a_decoder():
  cfg = config("decoder", prompt_length=2)
  with pytest.raises(ValueError, match=r"config.model.prompt_length.*use prefix tuning"):
    Decoder(cfg, decode=True).init(jax.random.key(0), *inputs(cfg))


@pytest.mark.parametrize("field", ["adapter_size", "prefix_length", "prompt_length"])
def test_negative_sizes_name_the_key(field):
  with pytest.raises(ValueError, match=f"config.model.{field}"):
    config("decoder", **{field: -1}).validate()


def test_vera_draws_its_shared_factors_once_not_in_every_traced_step():
  """A and B come from a per-process cache as constants: a traced forward (as in every train
  step) evaluates no threefry, and the values are those merge folds in."""
  cfg = config("encoder", vera_rank=4, lora_targets="all_linear")
  params = init_params(cfg)
  assert draws(lambda p, ids: forward(cfg, p, ids), params, *inputs(cfg)) == []
  # Outside a trace the same factors: merge's numpy copy equals the traced slices.
  traced = jax.jit(lambda: lora._shared_factors(cfg, 32, 64))()  # pylint: disable=protected-access
  for got, want in zip(traced, lora.vera_factors(cfg, 32, 64)):
    np.testing.assert_array_equal(np.asarray(got), want)
