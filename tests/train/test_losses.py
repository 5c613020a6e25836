import jax
import jax.numpy as jnp
import numpy as np

from lmreuse.train import losses
from lmreuse.train.trainer import reduce_pairs


def test_weighted_loss_names_and_weights():
  value, pairs = losses.weighted_loss(
      jnp.array([1.0, 3.0, 100.0]), jnp.array([1.0, 1.0, 0.0]), accuracy=jnp.array([1.0, 0.0, 1.0])
  )
  assert float(value) == 2.0
  assert {k: (float(s), float(c)) for k, (s, c) in pairs.items()} == {
      "loss": (4.0, 2.0),
      "accuracy": (1.0, 2.0),
  }
  _, prefixed = losses.weighted_loss(jnp.ones(2), jnp.ones(2), prefix="mlm", accuracy=jnp.ones(2))
  assert set(prefixed) == {"mlm_loss", "mlm_accuracy"}
  zero, _ = jax.jit(losses.weighted_loss)(jnp.ones(2), jnp.zeros(2))
  assert float(zero) == 0.0


def test_cross_entropy_pairs_of_two_batches_add_up_to_the_whole():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 6, 3)), jnp.bfloat16)
  targets = jnp.asarray(rng.integers(0, 3, (4, 6)), jnp.int32)
  weights = jnp.asarray(rng.random((4, 6)) < 0.5, jnp.float32)
  whole, pairs = losses.weighted_cross_entropy(logits, targets, weights, prefix="clm")
  halves = [
      losses.weighted_cross_entropy(logits[s], targets[s], weights[s], prefix="clm")[1]
      for s in (slice(0, 1), slice(1, 4))
  ]
  reduced = reduce_pairs(jax.tree.map(lambda a, b: a + b, *halves))
  assert reduced.keys() == reduce_pairs(pairs).keys() == {"clm_loss", "clm_accuracy"}
  np.testing.assert_allclose(reduced["clm_loss"], float(whole), rtol=1e-6)
  correct = np.asarray(jnp.argmax(logits.astype(jnp.float32), -1) == targets)
  expected = (correct * np.asarray(weights)).sum() / np.asarray(weights).sum()
  assert 0 < expected < 1
  np.testing.assert_allclose(reduced["clm_accuracy"], expected, rtol=1e-6)
