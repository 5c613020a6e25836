import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmreuse.objectives import span_corruption as sc

SENTINELS = tuple(range(6, 106))
EOS = 5


def _reconstruct(inputs, targets):
  """Interleaves inputs and targets at the sentinels (EOS stripped) to recover the tokens."""
  inputs, targets = list(inputs[:-1]), list(targets[:-1])
  pieces, current = {}, None
  for t in targets:
    if t in SENTINELS:
      current = t
      pieces[current] = []
    else:
      pieces[current].append(t)
  out = []
  for t in inputs:
    out.extend(pieces[t] if t in SENTINELS else [t])
  return out


@pytest.mark.parametrize("inputs_length", [16, 64, 114, 128, 512, 568])
def test_helper_matches_t5_and_fills_inputs_exactly(inputs_length):
  tokens_length, targets_length = sc.random_spans_helper(inputs_length, 0.15, 3.0)
  rng = np.random.default_rng(0)
  out = sc.corrupt_spans(
      np.arange(200, 200 + tokens_length), rng, sentinel_ids=SENTINELS, eos_id=EOS
  )
  assert out["inputs"].size == inputs_length
  assert out["targets"].size == targets_length


def test_helper_known_values():
  # T5's standard setting: inputs 512 -> raw tokens 568, targets 114.
  assert sc.random_spans_helper(512, 0.15, 3.0) == (568, 114)


def test_mask_statistics():
  rng = np.random.default_rng(0)
  masks = [sc.random_spans_noise_mask(500, rng) for _ in range(200)]
  density = np.mean([m.mean() for m in masks])
  assert abs(density - 0.15) < 1e-9  # round(500 * 0.15) = 75 noise tokens, always
  span_lengths = []
  for m in masks:
    assert not m[0]  # spans alternate beginning with non-noise
    edges = np.diff(np.concatenate([[0], m.astype(int), [0]]))
    span_lengths.extend(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
  assert abs(np.mean(span_lengths) - 3.0) < 0.01  # 75 tokens / 25 spans
  assert len(span_lengths) == 200 * 25
  # Positions are random: every non-first position is noise sometimes.
  assert np.all(np.mean(masks, axis=0)[1:] > 0)


def test_exact_reconstruction_and_sentinel_order():
  rng = np.random.default_rng(1)
  for length in [1, 2, 3, 7, 30, 113, 400]:
    tokens = rng.integers(200, 1000, size=length)
    out = sc.corrupt_spans(tokens, rng, sentinel_ids=SENTINELS, eos_id=EOS)
    assert out["inputs"][-1] == EOS and out["targets"][-1] == EOS
    assert out["inputs"].dtype == np.int32
    used = [t for t in out["inputs"] if t in SENTINELS]
    assert used == list(SENTINELS[: len(used)])
    assert _reconstruct(out["inputs"], out["targets"]) == tokens.tolist()


def test_example_from_docstring():
  tokens = np.array([10, 11, 12, 13, 14, 15, 16, 17])
  mask = np.array([0, 0, 1, 1, 0, 0, 0, 1], bool)
  np.testing.assert_array_equal(
      sc.noise_span_to_unique_sentinel(tokens, mask, SENTINELS), [10, 11, 6, 14, 15, 16, 7]
  )
  np.testing.assert_array_equal(
      sc.nonnoise_span_to_unique_sentinel(tokens, mask, SENTINELS), [6, 12, 13, 7, 17]
  )


def test_too_few_sentinels_is_an_error():
  with pytest.raises(ValueError, match="sentinel_ids"):
    sc.corrupt_spans(np.arange(200, 400), np.random.default_rng(0), sentinel_ids=(6, 7), eos_id=EOS)


def test_loss():
  vocab = 8
  targets = jnp.array([[1, 2, 0]], jnp.int32)
  weights = jnp.array([[1.0, 1.0, 0.0]])
  value, _ = sc.loss(jnp.zeros((1, 3, vocab)), targets, weights)
  np.testing.assert_allclose(value, np.log(vocab), rtol=1e-6)
  value, _ = sc.loss(jax.nn.one_hot(targets, vocab) * 50.0, targets, weights)
  assert value < 1e-6
