"""Generation on the KV cache against full forward passes: greedy, beam search, padded prompts."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmreuse.models import decoding
from lmreuse.models.config import TransformerConfig
from lmreuse.models.transformer import Decoder, EncoderDecoder

V, MAX_LEN, NEVER = 50, 16, -1  # NEVER: an eos id no token matches
SEARCH = ("beam_size", "eos_id", "length_penalty")
generate_encoder_decoder = jax.jit(
    decoding.generate_encoder_decoder,
    static_argnums=0,
    static_argnames=("max_len", "start_id") + SEARCH,
)
generate_decoder = jax.jit(
    decoding.generate_decoder, static_argnums=0, static_argnames=("max_new_tokens",) + SEARCH
)


def config(architecture: str, **overrides) -> TransformerConfig:
  # A large init makes next-token distributions peaked, as in a trained model.
  base = dict(
      architecture=architecture,
      vocab_size=V,
      d_model=32,
      num_heads=4,
      d_ff=64,
      num_layers=2,
      max_len=MAX_LEN,
      dropout_rate=0.0,
      norm_placement="pre",
      init_std=0.3,
  )
  if architecture == "encoder_decoder":  # T5
    base.update(
        position="relative_bias",
        norm="rmsnorm",
        activation="geglu",
        use_bias=False,
        scale_attention=False,
    )
  return TransformerConfig(**{**base, **overrides})


def encoder_inputs(seed: int, lengths=(8, 5, 3)):
  ids = np.asarray(jax.random.randint(jax.random.key(seed), (len(lengths), 8), 6, V))
  segments = (np.arange(8)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
  return jnp.asarray(ids * segments), jnp.asarray(segments)


def prompts(seed: int, lengths=(6, 3)):
  """Real prompts, and the same LEFT-padded into one batch (random ids under the padding)."""
  p = max(lengths)
  ids = np.asarray(jax.random.randint(jax.random.key(seed), (len(lengths), p), 6, V))
  alone = [ids[i, p - n :] for i, n in enumerate(lengths)]
  segments = (np.arange(p)[None, :] >= p - np.array(lengths)[:, None]).astype(np.int32)
  return alone, jnp.asarray(ids), jnp.asarray(segments)


def enc_dec_params(cfg, seed):
  return EncoderDecoder(cfg).init(
      jax.random.key(seed), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 2), jnp.int32)
  )["params"]


def decoder_params(cfg, seed):
  return Decoder(cfg).init(jax.random.key(seed), jnp.ones((1, 4), jnp.int32))["params"]


@functools.partial(jax.jit, static_argnums=0)
def enc_dec_logits(cfg, params, enc, enc_seg, dec):
  return EncoderDecoder(cfg).apply({"params": params}, enc, dec, enc_segment_ids_BxS=enc_seg)[0]


@functools.partial(jax.jit, static_argnums=0)
def decoder_logits(cfg, params, ids):
  return Decoder(cfg).apply({"params": params}, ids)[0]


def until_eos(tokens_L, eos_id):
  """1 on tokens up to and including the first EOS."""
  ended_before = np.concatenate([[0], np.cumsum(np.asarray(tokens_L) == eos_id)[:-1]])
  return (ended_before == 0).astype(np.float32)


def full_greedy(logits_at, batch, length, eos_id):
  """Greedy decoding that re-runs the full forward pass (no cache) every step.

  `logits_at(out, t)` scores the outputs so far (zeros beyond t: causality hides them, and one
  input shape compiles once) and returns the logits that predict output t.
  """
  out = np.zeros((batch, length), np.int32)
  done = np.zeros(batch, bool)
  for t in range(length):
    token = np.where(done, 0, np.argmax(logits_at(out, t), axis=-1))
    out[:, t] = token
    done |= token == eos_id
  return out


def full_greedy_enc_dec(cfg, params, enc, enc_seg, length, eos_id):
  def logits_at(out_BxL, t):
    dec = np.concatenate([np.zeros((len(out_BxL), 1), np.int32), out_BxL[:, :-1]], axis=1)
    return enc_dec_logits(cfg, params, enc, enc_seg, dec)[:, t]

  return full_greedy(logits_at, enc.shape[0], length, eos_id)


def full_greedy_decoder(cfg, params, prompt_P, length, eos_id):
  def logits_at(out_1xL, t):
    ids = np.concatenate([prompt_P[None], out_1xL, np.zeros((1, MAX_LEN), np.int32)], axis=1)
    return decoder_logits(cfg, params, ids[:, :MAX_LEN])[:, len(prompt_P) - 1 + t]

  return full_greedy(logits_at, 1, length, eos_id)[0]


def score_enc_dec(cfg, params, enc, enc_seg, out_BxL, eos_id):
  """Total log-prob of each output (through its first EOS) under a full forward pass."""
  dec = np.concatenate([np.zeros((out_BxL.shape[0], 1), np.int32), out_BxL[:, :-1]], axis=1)
  logits = enc_dec_logits(cfg, params, enc, enc_seg, dec)
  logp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), out_BxL[..., None], -1)[..., 0]
  return np.array([(logp[i] * until_eos(out_BxL[i], eos_id)).sum() for i in range(len(out_BxL))])


def score_decoder(cfg, params, prompts_alone, out_BxL, eos_id):
  scores = []
  for prompt, out in zip(prompts_alone, out_BxL):
    ids = np.concatenate([prompt, out])[None]
    logits = decoder_logits(cfg, params, ids)
    logp = np.asarray(jax.nn.log_softmax(logits[0, len(prompt) - 1 : -1]))
    scores.append((logp[np.arange(len(out)), out] * until_eos(out, eos_id)).sum())
  return np.array(scores)


def assert_pad_after_eos(out_BxL, eos_id):
  for row in np.asarray(out_BxL):
    hits = np.flatnonzero(row == eos_id)
    if hits.size:
      assert (row[hits[0] + 1 :] == 0).all(), row


def early_eos(out_BxL) -> tuple[int, int, int]:
  """A decoded token (not pad, from position 2 on) to serve as EOS, with its row and position.

  Decoding again with it as EOS must end that row there at the latest.
  """
  out = np.asarray(out_BxL)
  rows, ts = np.nonzero(out[:, 2:])
  return int(out[rows[0], ts[0] + 2]), int(rows[0]), int(ts[0] + 2)


@pytest.mark.parametrize("max_len", [10, 20])  # shorter and longer than cfg.max_len
def test_encoder_decoder_greedy_matches_full_forward(max_len):
  cfg = config("encoder_decoder")
  params = enc_dec_params(cfg, 0)
  enc, enc_seg = encoder_inputs(1)
  first = generate_encoder_decoder(cfg, params, enc, enc_seg, max_len=max_len, eos_id=NEVER)
  eos_id, row, end = early_eos(first)
  out = np.asarray(
      generate_encoder_decoder(cfg, params, enc, enc_seg, max_len=max_len, eos_id=eos_id)
  )
  assert out.shape == (3, max_len) and out.dtype == np.int32
  np.testing.assert_array_equal(
      out, full_greedy_enc_dec(cfg, params, enc, enc_seg, max_len, eos_id)
  )
  assert (out[row, end + 1 :] == 0).all()
  assert_pad_after_eos(out, eos_id)


@pytest.mark.parametrize("position", ["learned", "rope", "relative_bias"])
def test_decoder_greedy_on_left_padded_prompts_matches_each_prompt_alone(position):
  cfg = config("decoder", position=position)
  params = decoder_params(cfg, 0)
  alone, ids, segments = prompts(2)
  new = MAX_LEN - ids.shape[1]
  first = generate_decoder(cfg, params, ids, segments, max_new_tokens=new, eos_id=NEVER)
  eos_id, row, end = early_eos(first)
  out = np.asarray(generate_decoder(cfg, params, ids, segments, max_new_tokens=new, eos_id=eos_id))
  assert out.shape == (2, new)
  for out_L, prompt in zip(out, alone):
    np.testing.assert_array_equal(out_L, full_greedy_decoder(cfg, params, prompt, new, eos_id))
  assert (out[row, end + 1 :] == 0).all()
  assert_pad_after_eos(out, eos_id)


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_search_scores_at_least_greedy(seed):
  cfg = config("encoder_decoder")
  params = enc_dec_params(cfg, seed)
  enc, enc_seg = encoder_inputs(seed + 10)
  first = generate_encoder_decoder(cfg, params, enc, enc_seg, max_len=8, eos_id=NEVER)
  eos_id, _, _ = early_eos(first)
  kwargs = dict(max_len=8, eos_id=eos_id, length_penalty=0.0)
  greedy = np.asarray(generate_encoder_decoder(cfg, params, enc, enc_seg, **kwargs))
  beam = np.asarray(generate_encoder_decoder(cfg, params, enc, enc_seg, beam_size=4, **kwargs))
  assert_pad_after_eos(beam, eos_id)
  assert (
      score_enc_dec(cfg, params, enc, enc_seg, beam, eos_id)
      >= score_enc_dec(cfg, params, enc, enc_seg, greedy, eos_id) - 1e-5
  ).all()
  one_beam = generate_encoder_decoder(cfg, params, enc, enc_seg, beam_size=1, **kwargs)
  np.testing.assert_array_equal(one_beam, greedy)

  cfg = config("decoder")
  params = decoder_params(cfg, seed)
  alone, ids, segments = prompts(seed + 20)
  kwargs = dict(max_new_tokens=8, eos_id=eos_id, length_penalty=0.0)
  greedy = np.asarray(generate_decoder(cfg, params, ids, segments, **kwargs))
  beam = np.asarray(generate_decoder(cfg, params, ids, segments, beam_size=4, **kwargs))
  assert_pad_after_eos(beam, eos_id)
  assert (
      score_decoder(cfg, params, alone, beam, eos_id)
      >= score_decoder(cfg, params, alone, greedy, eos_id) - 1e-5
  ).all()
  np.testing.assert_array_equal(
      generate_decoder(cfg, params, ids, segments, beam_size=1, **kwargs), greedy
  )


def test_beam_search_with_length_penalty_ends_with_pad_after_eos():
  cfg = config("encoder_decoder")
  params = enc_dec_params(cfg, 3)
  enc, enc_seg = encoder_inputs(4)
  first = generate_encoder_decoder(cfg, params, enc, enc_seg, max_len=10, eos_id=NEVER)
  eos_id, _, _ = early_eos(first)
  beam = generate_encoder_decoder(
      cfg, params, enc, enc_seg, max_len=10, beam_size=3, eos_id=eos_id, length_penalty=0.6
  )
  assert beam.shape == (3, 10)
  assert (np.asarray(beam) == eos_id).any()
  assert_pad_after_eos(beam, eos_id)


@pytest.mark.parametrize("position", ["learned", "rope", "relative_bias"])
def test_left_padded_prompt_in_cache_gives_the_logits_of_the_prompt_alone(position):
  cfg = config("decoder", position=position)
  params = decoder_params(cfg, 0)
  alone, ids, segments = prompts(5, lengths=(6, 3))
  positions = jnp.maximum(jnp.arange(6)[None, :] - (6 - segments.sum(1))[:, None], 0)
  decoder = Decoder(cfg, decode=True)
  cache = decoder.apply({"params": params}, jnp.zeros((2, 8), jnp.int32), mutable=["cache"])[1][
      "cache"
  ]
  (logits, _), mutated = decoder.apply(
      {"params": params, "cache": cache},
      ids,
      segment_ids_BxL=segments,
      positions_BxL=positions,
      mutable=["cache"],
  )
  assert np.isfinite(np.asarray(logits)).all()  # padding queries included
  nxt = jnp.array([[7], [9]])
  (step, _), _ = decoder.apply(
      {"params": params, "cache": mutated["cache"]},
      nxt,
      positions_BxL=positions[:, -1:] + 1,
      mutable=["cache"],
  )
  for i, prompt in enumerate(alone):
    full, _ = Decoder(cfg).apply({"params": params}, np.concatenate([prompt, nxt[i]])[None])
    np.testing.assert_allclose(logits[i, -1], full[0, -2], atol=1e-5)
    np.testing.assert_allclose(step[i, -1], full[0, -1], atol=1e-5)


def test_outputs_beyond_the_position_table_are_an_error():
  cfg = config("decoder")
  _, ids, segments = prompts(0)
  with pytest.raises(ValueError, match="max_len"):
    decoding.generate_decoder(cfg, decoder_params(cfg, 0), ids, segments, max_new_tokens=MAX_LEN)
  cfg = config("encoder_decoder", position="learned")
  enc, enc_seg = encoder_inputs(0)
  with pytest.raises(ValueError, match="max_len"):
    decoding.generate_encoder_decoder(
        cfg, enc_dec_params(cfg, 0), enc, enc_seg, max_len=MAX_LEN + 1
    )


@functools.partial(jax.jit, static_argnums=0)
def prefix_lm_logits(cfg, params, ids, prefix):
  return Decoder(cfg).apply({"params": params}, ids, prefix_BxL=prefix)[0]


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_a_prefix_lm_decodes_as_its_full_forward_with_the_prompt_as_prefix(position):
  """The prompt but its last token fills the cache bidirectionally, as a prefix-LM task row is
  read (the source, then causal from [SEP] on), and greedy search then equals re-running the
  full forward with that prefix; the prefix changes the outputs."""
  cfg = config("decoder", position=position, prefix_lm=True)
  params = decoder_params(cfg, 0)
  alone, ids, segments = prompts(3)
  new = MAX_LEN - ids.shape[1]
  out = np.asarray(generate_decoder(cfg, params, ids, segments, max_new_tokens=new, eos_id=NEVER))
  for out_L, prompt in zip(out, alone):

    def logits_at(out_1xL, t, prompt=prompt):
      row = np.concatenate([prompt[None], out_1xL, np.zeros((1, MAX_LEN), np.int32)], axis=1)
      prefix = (np.arange(MAX_LEN) < len(prompt) - 1)[None].astype(np.int32)
      return prefix_lm_logits(cfg, params, row[:, :MAX_LEN], prefix)[:, len(prompt) - 1 + t]

    np.testing.assert_array_equal(out_L, full_greedy(logits_at, 1, new, NEVER)[0])
  causal = [full_greedy_decoder(cfg, params, prompt, new, NEVER) for prompt in alone]
  assert not np.array_equal(out, np.stack(causal))
