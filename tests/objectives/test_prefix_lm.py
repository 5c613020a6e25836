"""The prefix-LM objective: its rows, its loss and its bidirectional-prefix attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmreuse.models.config import TransformerConfig
from lmreuse.models.transformer import Decoder
from lmreuse.objectives import prefix_lm


def test_a_row_predicts_only_the_tokens_after_its_prefix():
  row = prefix_lm.make_row([10, 11, 12, 13, 5], seq_len=8, pad_id=0, rng=_Fixed(2))
  np.testing.assert_array_equal(row["inputs"], [10, 11, 12, 13, 5, 0, 0, 0])
  np.testing.assert_array_equal(row["prefix"], [1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(row["targets"][:4], [11, 12, 13, 5])
  # Positions 1..3 predict tokens 2..4, the ones after the two-token prefix.
  np.testing.assert_array_equal(row["weights"], [0, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(row["positions"][:5], np.arange(5))
  assert row["weights"].dtype == np.float32 and row["inputs"].dtype == np.int32


class _Fixed:
  """An rng whose integers() is always `value`."""

  def __init__(self, value):
    self.value = value

  def integers(self, low, high):
    assert low <= self.value < high
    return self.value


def test_prefix_lengths_are_uniform_and_every_row_predicts_something():
  rng = np.random.default_rng(0)
  n, lengths = 9, []
  for _ in range(4000):
    row = prefix_lm.make_row(list(range(6, 6 + n)), seq_len=12, pad_id=0, rng=rng)
    p = int(row["prefix"].sum())
    lengths.append(p)
    assert row["prefix"][:p].all() and not row["prefix"][p:].any()  # one leading span
    assert row["weights"].sum() == n - p  # each token after the prefix, once
  counts = np.bincount(lengths, minlength=n)[1:n]
  assert min(lengths) == 1 and max(lengths) == n - 1
  assert counts.min() > 0.8 * 4000 / (n - 1) and counts.max() < 1.2 * 4000 / (n - 1)
  long = prefix_lm.make_row(list(range(6, 40)), seq_len=8, pad_id=0, rng=rng)
  assert long["segment_ids"].all()  # cut to seq_len


def test_loss_is_the_continuations_cross_entropy():
  vocab = 16
  targets = jnp.array([[3, 4, 5, 6]], jnp.int32)
  weights = jnp.array([[0.0, 1.0, 1.0, 0.0]])
  value, pairs = prefix_lm.loss(jnp.zeros((1, 4, vocab)), targets, weights)
  np.testing.assert_allclose(value, np.log(vocab), rtol=1e-6)
  assert set(pairs) == {"prefix_lm_loss", "prefix_lm_accuracy"}
  np.testing.assert_allclose(pairs["prefix_lm_loss"], (2 * np.log(vocab), 2.0), rtol=1e-6)
  # The prefix's logits do not count.
  logits = jax.nn.one_hot(targets, vocab) * 50.0
  moved, _ = prefix_lm.loss(logits.at[0, 0].set(-logits[0, 0]), targets, weights)
  np.testing.assert_allclose(moved, prefix_lm.loss(logits, targets, weights)[0], atol=1e-6)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_attention_is_bidirectional_only_inside_the_prefix(position):
  cfg = TransformerConfig(
      architecture="decoder", vocab_size=50, position=position, prefix_lm=True, dropout_rate=0.0
  )
  ids = jnp.array([[11, 12, 13, 14, 15, 16, 0]])
  segments = jnp.array([[1, 1, 1, 1, 1, 1, 0]])
  prefix = jnp.array([[1, 1, 1, 0, 0, 0, 0]])
  decoder = Decoder(cfg)
  params = decoder.init(jax.random.key(0), ids, prefix_BxL=prefix)

  def hidden(ids):
    return decoder.apply(params, ids, segment_ids_BxL=segments, prefix_BxL=prefix)[1][0]

  def reached(position):  # which real tokens' states change when token `position` changes
    changed = np.abs(hidden(ids.at[0, position].set(40)) - hidden(ids)).max(axis=-1)[:6]
    return [int(i) for i in np.flatnonzero(changed > 1e-6)]

  assert reached(2) == [0, 1, 2, 3, 4, 5]  # a prefix token: the whole prefix and after
  assert reached(4) == [4, 5]  # after the prefix: causal
  assert reached(6) == []  # padding
  with pytest.raises(ValueError, match="needs a prefix LM"):
    Decoder(TransformerConfig(architecture="decoder", vocab_size=50)).init(
        jax.random.key(0), ids, prefix_BxL=prefix
    )
