import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmreuse.objectives import mlm

VOCAB = 500
PAD, CLS, SEP, MASK = 0, 2, 3, 4
SPECIALS = np.arange(106)  # pad, unk, cls, sep, mask, eos + 100 sentinels


def _rows(rng, batch=512, length=64):
  """[CLS] words [SEP] then padding, with a random number of real tokens per row."""
  tokens = np.zeros((batch, length), np.int32)
  for i in range(batch):
    n = int(rng.integers(5, length - 1))
    tokens[i, 0] = CLS
    tokens[i, 1 : n - 1] = rng.integers(106, VOCAB, size=n - 2)
    tokens[i, n - 1] = SEP
  return tokens


def _mask(tokens, seed=0, **kw):
  return mlm.mask_tokens(
      tokens,
      np.random.default_rng(seed),
      mask_id=MASK,
      vocab_size=VOCAB,
      special_ids=SPECIALS,
      **kw,
  )


def test_selection_rate_and_split():
  tokens = _rows(np.random.default_rng(0))
  out = _mask(tokens)
  assert out["inputs"].dtype == np.int32 and out["mlm_targets"].dtype == np.int32
  assert out["mlm_weights"].dtype == np.float32
  selected = out["mlm_weights"] > 0
  maskable = tokens >= 106
  # Exactly max(1, round(0.15 n)) per row.
  expected = np.maximum(1, np.round(maskable.sum(1) * 0.15))
  np.testing.assert_array_equal(selected.sum(1), expected)
  assert abs(selected.sum() / maskable.sum() - 0.15) < 0.01
  inputs = out["inputs"][selected]
  originals = tokens[selected]
  frac_mask = np.mean(inputs == MASK)
  frac_keep = np.mean(inputs == originals)
  frac_random = 1 - frac_mask - frac_keep
  assert abs(frac_mask - 0.8) < 0.02
  assert abs(frac_keep - 0.1) < 0.02  # (a random draw rarely equals the original)
  assert abs(frac_random - 0.1) < 0.02
  # Random replacements never produce special ids.
  assert np.all(inputs[(inputs != MASK)] >= 106)


def test_specials_and_pads_untouched():
  tokens = _rows(np.random.default_rng(1))
  out = _mask(tokens, mask_prob=0.5)
  special = np.isin(tokens, SPECIALS)
  assert not np.any(out["mlm_weights"][special])
  np.testing.assert_array_equal(out["inputs"][special], tokens[special])
  np.testing.assert_array_equal(out["mlm_targets"], tokens)
  unselected = out["mlm_weights"] == 0
  np.testing.assert_array_equal(out["inputs"][unselected], tokens[unselected])


def test_all_special_row_selects_nothing_and_seed_is_deterministic():
  tokens = _rows(np.random.default_rng(2), batch=4)
  tokens[0] = PAD
  a, b = _mask(tokens, seed=7), _mask(tokens, seed=7)
  assert a["mlm_weights"][0].sum() == 0
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_random_ids_skip_specials_scattered_in_vocab():
  specials = np.array([0, 1, 5, 6, 7, 9])
  tokens = np.full((64, 64), 8, np.int32)
  out = mlm.mask_tokens(
      tokens,
      np.random.default_rng(0),
      mask_id=2,
      vocab_size=12,
      special_ids=specials,
      mask_prob=1.0,
      mask_token_prob=0.0,
      random_token_prob=1.0,
  )
  assert set(np.unique(out["inputs"])) == {3, 4, 8, 10, 11}


def test_bad_probabilities_name_the_parameter():
  with pytest.raises(ValueError, match="mask_prob"):
    _mask(np.zeros((1, 4), np.int32), mask_prob=1.5)
  with pytest.raises(ValueError, match="random_token_prob"):
    _mask(np.zeros((1, 4), np.int32), mask_token_prob=0.9, random_token_prob=0.2)


def test_loss_uniform_confident_and_weights():
  vocab = 32
  targets = jnp.array([[1, 2, 3, 4]], jnp.int32)
  weights = jnp.array([[1.0, 1.0, 0.0, 0.0]], jnp.float32)
  uniform, pairs = mlm.loss(jnp.zeros((1, 4, vocab), jnp.bfloat16), targets, weights)
  np.testing.assert_allclose(uniform, np.log(vocab), rtol=1e-6)
  assert pairs["mlm_loss"][1] == pairs["mlm_accuracy"][1] == 2.0
  confident = jax.nn.one_hot(targets, vocab) * 100.0
  value, pairs = mlm.loss(confident, targets, weights)
  assert value < 1e-6 and pairs["mlm_accuracy"] == (2.0, 2.0)
  # Wrong predictions at zero-weight positions do not count.
  wrong = confident.at[0, 2:].set(jax.nn.one_hot(0, vocab) * 100.0)
  np.testing.assert_allclose(mlm.loss(wrong, targets, weights)[0], value, atol=1e-6)
  # No selected tokens: loss 0, not NaN; and jit works.
  zero, _ = jax.jit(mlm.loss)(confident, targets, jnp.zeros_like(weights))
  assert zero == 0.0


def test_max_predictions_bounds_every_row_mask_tokens_can_make():
  rng = np.random.default_rng(0)
  for seq_len in (8, 32, 128, 512):
    # Rows with every possible number of maskable tokens (the rest padding).
    tokens = np.zeros((seq_len + 1, seq_len), np.int32)
    for n in range(seq_len + 1):
      tokens[n, :n] = rng.integers(10, 50, n)
    out = mlm.mask_tokens(tokens, rng, mask_id=4, vocab_size=50, special_ids=np.arange(6))
    assert out["mlm_weights"].sum(axis=1).max() <= mlm.max_predictions(seq_len, 0.15)


def test_gathered_mlm_loss_equals_the_dense_loss():
  import jax
  import jax.numpy as jnp

  from configs import pretrain
  from lmreuse.models.config import TransformerConfig
  from lmreuse.models.heads import MLMHead
  from tests.parallel import synthetic

  config = pretrain.get_config("bert,size=tiny")
  config.data.seq_len, config.model.dropout_rate = 32, 0.0
  program = mlm.program(
      TransformerConfig.from_config(config.model, synthetic.VOCAB), config.objective, config.data
  )
  params = program.init_params(jax.random.PRNGKey(0))
  batch = {k: jnp.asarray(v) for k, v in synthetic.batch("mlm", batch_size=4, seq_len=32).items()}
  _gathered_loss, pairs = program.loss_fn(params, batch, jax.random.PRNGKey(1), False)

  model_cfg = TransformerConfig.from_config(config.model, synthetic.VOCAB)
  encoder = mlm.Encoder(model_cfg)
  hidden = encoder.apply(
      {"params": params["backbone"]},
      batch["inputs"],
      segment_ids_BxL=batch["segment_ids"],
      positions_BxL=batch["positions"],
      token_types_BxL=batch["token_types"],
  )
  embed_params = {"params": params["backbone"]}
  dense_logits = MLMHead(model_cfg).apply(
      {"params": params["mlm_head"]}, hidden, encoder.bind(embed_params).stack.token_embed
  )
  dense_loss, _ = mlm.loss(dense_logits, batch["mlm_targets"], batch["mlm_weights"])
  mlm_sum, mlm_count = pairs["mlm_loss"]
  assert float(mlm_count) == float(batch["mlm_weights"].sum())
  np.testing.assert_allclose(float(mlm_sum / mlm_count), float(dense_loss), rtol=1e-5)
