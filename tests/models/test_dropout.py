"""lmreuse's dropout: a quarter of the threefry evaluations, the right keep rate and scaling,
masks that do not depend on the sharding, and rbg keys served as nn.Dropout serves them."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lmreuse.models import dropout
from tests import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def draws(fn, *args) -> list[tuple[str, tuple[int, ...]]]:
  """Each random-bit primitive `fn` traces to (nested jaxprs included) and its output shape."""

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ("threefry2x32", "random_bits"):
        yield eqn.primitive.name, eqn.outvars[0].aval.shape
      for value in eqn.params.values():
        inner = getattr(value, "jaxpr", value)
        if hasattr(inner, "eqns"):
          yield from walk(inner)

  return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def test_one_threefry_evaluation_serves_four_elements():
  key = jax.random.PRNGKey(0)
  ours = lambda k: dropout.keep_mask(k, 0.9, (4, 8, 64))
  assert draws(ours, key) == [("threefry2x32", (4, 8, 16))]
  # nn.Dropout's mask: 32 random bits per element, one evaluation each (partitionable threefry).
  flax_mask = lambda k: jax.random.bernoulli(k, 0.9, (4, 8, 64))
  assert draws(flax_mask, key) == [("random_bits", (4, 8, 64))]


@pytest.mark.parametrize("keep_prob", [0.9, 0.5])
def test_the_keep_rate_and_the_lanes_are_uniform(keep_prob):
  mask = np.asarray(dropout.keep_mask(jax.random.PRNGKey(1), keep_prob, (64, 32, 64)))
  n = mask.size
  assert stats.binomtest(int(mask.sum()), n, keep_prob).pvalue > 1e-3
  lanes = np.asarray(dropout.threefry_lanes(jax.random.PRNGKey(2), (256, 256)))
  assert lanes.min() >= 0 and lanes.max() < 2**16
  counts, _ = np.histogram(lanes, bins=16, range=(0, 2**16))
  assert stats.chisquare(counts).pvalue > 1e-3
  # The four lanes of one evaluation are not alike: neighbours are uncorrelated.
  flat = lanes.reshape(-1, 4).astype(np.float64)
  for a in range(4):
    for b in range(a + 1, 4):
      assert abs(np.corrcoef(flat[:, a], flat[:, b])[0, 1]) < 0.02, (a, b)


def test_a_last_axis_not_divisible_by_four_and_rank_one():
  key = jax.random.PRNGKey(3)
  assert dropout.threefry_lanes(key, (5, 7)).shape == (5, 7)
  assert dropout.threefry_lanes(key, (10,)).shape == (10,)
  # Different rows and positions get different counters.
  hi, lo = dropout._counters((3, 4, 5))  # pylint: disable=protected-access
  pairs = set(zip(np.asarray(hi).ravel().tolist(), np.asarray(lo).ravel().tolist()))
  assert len(pairs) == 60


def test_the_module_scales_what_it_keeps_and_is_the_identity_when_deterministic():
  x = jnp.arange(1.0, 1.0 + 8 * 64).reshape(8, 64)
  layer = dropout.Dropout(0.25)
  y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(4)})
  kept = np.asarray(y) != 0
  np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert 0.6 < kept.mean() < 0.9
  assert layer.apply({}, x, deterministic=True) is x
  assert dropout.Dropout(0.0).apply({}, x, deterministic=False) is x


def test_rbg_keys_get_the_bernoulli_mask_of_nn_dropout():
  with jax.default_prng_impl("unsafe_rbg"):
    key = jax.random.PRNGKey(5)
    x = jnp.ones((4, 16))
    ours = dropout.Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key})
    theirs = nn.Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key})
  np.testing.assert_array_equal(ours, theirs)


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from lmreuse.models import dropout
mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
key = jax.random.PRNGKey(7)
one = np.asarray(dropout.keep_mask(key, 0.9, (8, 12, 64)))
for spec in (P("data", None, "tensor"), P(("data", "fsdp")), P(None, "data", ("fsdp", "tensor"))):
  sharding = NamedSharding(mesh, spec)
  fn = jax.jit(lambda k, x: jnp.where(dropout.keep_mask(k, 0.9, x.shape), x, 0.0),
               out_shardings=sharding)
  x = jax.device_put(jnp.ones((8, 12, 64)), sharding)
  assert np.array_equal(np.asarray(fn(key, x)) > 0, one), spec
  hlo = fn.lower(key, x).compile().as_text()
  assert not any(op in hlo for op in ("all-gather", "all-to-all", "collective-permute")), spec
print("ok")
"""


def test_masks_are_the_same_on_every_sharding_and_need_no_communication():
  env = dict(
      os.environ,
      PYTHONPATH=ROOT,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=xla_flags.with_host_devices(8),
  )
  proc = subprocess.run(
      [sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
