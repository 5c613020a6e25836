import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmreuse.objectives import nsp

# Document d's tokens lie in [1000 * d, 1000 * d + 1000), numbered in reading order, so a
# continuation is recognisable by its ids and a random segment by its document.
NUM_DOCS = 50


def _doc(d, rng):
  lengths = rng.integers(3, 12, size=int(rng.integers(2, 7)))
  ids = 1000 * d + np.arange(lengths.sum())
  return [s.tolist() for s in np.split(ids, np.cumsum(lengths)[:-1])]


def _random_segment_fn(docs):
  def fn(rng, doc_index):
    other = int(rng.integers(len(docs) - 1))
    other += other >= doc_index
    start = int(rng.integers(len(docs[other])))
    return [t for s in docs[other][start:] for t in s]

  return fn


def test_pairs_are_balanced_and_positives_continue():
  rng = np.random.default_rng(0)
  docs = [_doc(d, rng) for d in range(NUM_DOCS)]
  fn = _random_segment_fn(docs)
  labels = []
  for i in range(2000):
    d = i % NUM_DOCS
    a, b, is_next = nsp.make_pair(docs[d], d, rng, random_segment_fn=fn, max_tokens=200)
    labels.append(is_next)
    assert a and b
    assert {t // 1000 for t in a} == {d}
    if is_next:
      # No truncation at this max_tokens: B starts exactly where A ends, at a segment start.
      np.testing.assert_array_equal(np.diff(a + b), 1)
      starts = {s[0] for s in docs[d]}
      assert a[0] in starts and b[0] in starts
    else:
      assert d not in {t // 1000 for t in b}
  assert abs(np.mean(labels) - 0.5) < 0.04


def test_truncation_fits_and_trims_the_longer_side():
  rng = np.random.default_rng(1)
  docs = [_doc(d, rng) for d in range(NUM_DOCS)]
  fn = _random_segment_fn(docs)
  for i in range(300):
    a, b, _ = nsp.make_pair(
        docs[i % NUM_DOCS], i % NUM_DOCS, rng, random_segment_fn=fn, max_tokens=13
    )
    assert len(a) + len(b) <= 13 and a and b
  a, b = nsp.truncate_seq_pair(list(range(10)), [100, 101], 6, rng)
  assert len(a) == 4 and b == [100, 101]
  np.testing.assert_array_equal(np.diff(a), 1)  # cut only at the ends


def test_single_segment_document_can_be_positive():
  rng = np.random.default_rng(2)
  seen = set()
  for _ in range(50):
    a, b, is_next = nsp.make_pair(
        [[7, 8, 9, 10]], 0, rng, random_segment_fn=lambda r, d: [99], max_tokens=10
    )
    seen.add(is_next)
    if is_next:
      assert a + b == [7, 8, 9, 10]
    else:
      assert b == [99]
  assert seen == {0, 1}


def test_pack_pair_layout():
  out = nsp.pack_pair([11, 12], [21], cls_id=2, sep_id=3, pad_id=0, seq_len=8)
  np.testing.assert_array_equal(out["tokens"], [2, 11, 12, 3, 21, 3, 0, 0])
  np.testing.assert_array_equal(out["token_types"], [0, 0, 0, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(out["segment_ids"], [1, 1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(out["positions"], [0, 1, 2, 3, 4, 5, 0, 0])
  assert all(v.dtype == np.int32 for v in out.values())
  single = nsp.pack_pair([11], [], cls_id=2, sep_id=3, pad_id=0, seq_len=4)
  np.testing.assert_array_equal(single["tokens"], [2, 11, 3, 0])
  with pytest.raises(ValueError, match="seq_len"):
    nsp.pack_pair([1, 2, 3], [4], cls_id=2, sep_id=3, pad_id=0, seq_len=6)


def test_loss():
  labels = jnp.array([1, 0, 1, 1], jnp.int32)
  value, pairs = nsp.loss(jnp.zeros((4, 2), jnp.bfloat16), labels)
  np.testing.assert_allclose(value, np.log(2), rtol=1e-6)
  np.testing.assert_allclose(pairs["nsp_loss"], (4 * np.log(2), 4.0), rtol=1e-6)
  value, pairs = jax.jit(nsp.loss)(jax.nn.one_hot(labels, 2) * 50.0, labels)
  assert value < 1e-6 and pairs["nsp_accuracy"] == (4.0, 4.0)
