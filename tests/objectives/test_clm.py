import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.objectives import clm


def test_shift_targets_respects_documents_padding_and_row_end():
  tokens = np.array([[10, 11, 12, 5, 20, 21, 5, 0, 0]], np.int32)
  segments = np.array([[1, 1, 1, 1, 2, 2, 2, 0, 0]], np.int32)
  out = clm.shift_targets(tokens, segments)
  np.testing.assert_array_equal(out["inputs"], tokens)
  np.testing.assert_array_equal(out["targets"], [[11, 12, 5, 20, 21, 5, 0, 0, 0]])
  # Position 3 (EOS of doc 1) would predict doc 2's first token: no loss there.
  np.testing.assert_array_equal(out["weights"], [[1, 1, 1, 0, 1, 1, 0, 0, 0]])
  assert out["weights"].dtype == np.float32 and out["targets"].dtype == np.int32


def test_full_row_last_position_has_no_target():
  tokens = np.arange(1, 7, dtype=np.int32)[None]
  out = clm.shift_targets(tokens, np.ones_like(tokens))
  np.testing.assert_array_equal(out["weights"], [[1, 1, 1, 1, 1, 0]])


def test_loss_uniform_and_confident():
  vocab = 16
  targets = jnp.array([[3, 4, 5]], jnp.int32)
  weights = jnp.array([[1.0, 1.0, 0.0]])
  value, pairs = clm.loss(jnp.zeros((1, 3, vocab)), targets, weights)
  np.testing.assert_allclose(value, np.log(vocab), rtol=1e-6)
  assert set(pairs) == {"clm_loss", "clm_accuracy"}
  np.testing.assert_allclose(pairs["clm_loss"], (2 * np.log(vocab), 2.0), rtol=1e-6)
  value, _ = clm.loss(jax.nn.one_hot(targets, vocab) * 50.0, targets, weights)
  assert value < 1e-6
