"""Magnitude pruning: exact sparsity per granularity, the gradual schedule, masks that keep
pruned weights at zero through training, checkpoints and selection, and clear misfits."""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from experiments import finetune
from lmreuse import workdir as workdir_lib
from lmreuse.compression import sparse
from lmreuse.strategies import prune
from lmreuse.train import restore

# Kernel paths: c is an attention output, [heads, kv, embed].
SHAPES = {"l/a/kernel": (8, 12), "l/b/kernel": (16, 4), "l/out/kernel": (4, 2, 8)}


def toy_plan(**kw):
  fields = dict(sparsity=0.5, end=1, every=1, granularity="unstructured", scope="global", m=4)
  return prune._Plan(**{**fields, **kw})  # pylint: disable=protected-access


def run_masking(plan, steps, seed=0):
  """`steps` random updates through the masking transformation; the params after each."""
  rng = np.random.default_rng(seed)
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
  fans = [prune.fan_in(k, s) for k, s in sorted(SHAPES.items())]
  tx = prune.masking(plan, fans)
  state = tx.init(params)
  history, dense = [], []
  for _ in range(steps):
    updates = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
    dense.append(jax.tree.map(jnp.add, params, updates))
    updates, state = tx.update(updates, state, params)
    params = jax.tree.map(jnp.add, params, updates)
    history.append(params)
  return history, state, dense


def zeros(tree):
  return {k: int(np.sum(np.asarray(v) == 0)) for k, v in tree.items()}


def test_global_and_per_layer_unstructured_sparsity_is_exact():
  def kept_and_dense(tree, dense):
    kept = {k: np.asarray(v) != 0 for k, v in tree.items()}
    return kept, {k: np.abs(np.asarray(v)) for k, v in dense.items()}

  (params,), _, (dense,) = run_masking(toy_plan(sparsity=0.3), 1)
  total = sum(np.prod(s) for s in SHAPES.values())
  assert sum(zeros(params).values()) == round(0.3 * total)
  # Global: one threshold over all kernels, on the updated weights.
  kept, magnitude = kept_and_dense(params, dense)
  assert min(magnitude[k][kept[k]].min() for k in SHAPES) >= max(
      magnitude[k][~kept[k]].max() for k in SHAPES
  )
  for k in SHAPES:
    np.testing.assert_array_equal(np.asarray(params[k])[kept[k]], np.asarray(dense[k])[kept[k]])
  (params,), _, (dense,) = run_masking(toy_plan(sparsity=0.3, scope="layer"), 1)
  assert zeros(params) == {k: round(0.3 * np.prod(s)) for k, s in SHAPES.items()}
  kept, magnitude = kept_and_dense(params, dense)
  for k in SHAPES:  # a threshold per kernel
    assert magnitude[k][kept[k]].min() >= magnitude[k][~kept[k]].max(), k


def test_two_four_sparsity_holds_block_by_block_along_the_input_axes():
  (params,), _, _ = run_masking(toy_plan(sparsity=0.5, granularity="n_m"), 1)
  for key, shape in SHAPES.items():
    fan = 8 if "out" in key else shape[0]  # [heads, kv, embed] projects from heads × kv
    blocks = np.asarray(params[key]).reshape(fan // 4, 4, -1)
    assert np.all(np.sum(blocks != 0, axis=1) == 2), key


def test_gradual_schedule_ramps_to_the_target_and_pruned_weights_stay_zero():
  plan = toy_plan(sparsity=0.8, end=6, every=2)
  history, state, _ = run_masking(plan, 9)
  total = sum(np.prod(s) for s in SHAPES.values())
  counts = [sum(zeros(p).values()) for p in history]
  # Refreshes at updates 2, 4 and 6 (the end); between them the mask holds.
  expected = [0.0, *[0.8 * (1 - (1 - t / 6) ** 3) for t in (2, 2, 4, 4, 6, 6, 6, 6)]]
  assert counts == [round(s * total) for s in expected]
  for before, after in itertools.pairwise(history):  # once pruned, always pruned
    for k in SHAPES:
      assert np.all(np.asarray(after[k])[np.asarray(before[k]) == 0] == 0), k
  masks = state.masks
  for k in SHAPES:  # the optimizer state's mask is exactly the zero pattern
    np.testing.assert_array_equal(np.asarray(masks[k]), np.asarray(history[-1][k]) != 0)


def pruned_counts(params):
  flat = traverse_util.flatten_dict(params, sep="/")
  return {
      p: (int(np.sum(np.asarray(v) == 0)), np.asarray(v).size)
      for p, v in flat.items()
      if prune.is_target(p)
  }


@pytest.mark.slow
def test_a_pruned_fine_tuning_run_saves_and_reports_its_exact_sparsity(
    bert_pretrained, finetune_config, tmp_path
):
  config = finetune_config(
      "bert",
      init_from=bert_pretrained[0],
      total_steps=6,
      eval_every=2,
      checkpoint_every=3,
      **{"strategy.name": "prune", "strategy.sparsity": 0.75, "strategy.prune_end": 0.5},
  )
  results = finetune.run(config, str(tmp_path))
  report = results["pruning"]
  assert report["target"] == 0.75 and report["granularity"] == "unstructured (global)"
  # Selection waits for the final sparsity: the ramp ends at update 3, evaluations are at 2, 4, 6.
  history = json.load(open(tmp_path / "early_stopping.json"))["history"]
  assert [s for s, _ in history] == [4, 6] and results["best_step"] in (4, 6)
  best = tmp_path / "best" / str(results["best_step"]) / "state"
  for saved in (restore.load_params(str(tmp_path)), ocp.PyTreeCheckpointer().restore(str(best))):
    counts = pruned_counts(saved)
    pruned, size = (sum(c[i] for c in counts.values()) for i in (0, 1))
    assert pruned == round(0.75 * size), (pruned, size)
  assert report["sparsity"] == pytest.approx(round(0.75 * size) / size)
  assert report["pruned_parameters"] == size
  assert "backbone/stack/layers_*/mlp/wi/kernel" in report["groups"]
  # Embeddings and heads are not pruned.
  flat = traverse_util.flatten_dict(restore.load_params(str(tmp_path)), sep="/")
  assert not np.any(np.asarray(flat["backbone/stack/token_embed/embedding"]) == 0)
  # The selected model, stored sparse: it loads back bitwise, and its bytes are results.json's.
  selected = ocp.PyTreeCheckpointer().restore(str(best))
  stored = sparse.load(str(tmp_path / workdir_lib.SPARSE_MODEL))
  flat_selected, flat_stored = (traverse_util.flatten_dict(t, sep="/") for t in (selected, stored))
  assert flat_stored.keys() == flat_selected.keys()
  for path, value in flat_selected.items():
    np.testing.assert_array_equal(flat_stored[path], value, err_msg=path)
  assert results["model_bytes"] == sparse.stored_bytes(selected, prune.is_target)
  dense = sum(np.asarray(v).nbytes for v in flat_selected.values())
  # float32 kernels at 75% sparsity: 1/8 + 4/4 bytes a weight instead of 4.
  assert dense - results["model_bytes"] == pytest.approx(size * (4 - 1 / 8 - 1), abs=size * 0.01)


def test_sparse_storage_round_trips_and_counts_a_bit_a_weight_plus_the_kept_values(tmp_path):
  kernel = np.array([[0.0, 1.5, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
  bitmap, values = sparse.encode(kernel)
  np.testing.assert_array_equal(np.unpackbits(bitmap)[:9], [0, 1, 0, 1, 0, 0, 0, 0, 1])
  np.testing.assert_array_equal(values, [1.5, -2.0, 3.0])
  np.testing.assert_array_equal(sparse.decode(bitmap, values, kernel.shape), kernel)
  assert sparse.nbytes(kernel) == 2 + 3 * 4  # 9 bits in 2 bytes, 3 float32 values
  params = {"layer": {"kernel": kernel, "bias": np.array([0.0, 1.0], np.float32)}}
  is_kernel = lambda path: path.endswith("kernel")
  sparse.save(str(tmp_path / "m.safetensors"), params, is_kernel)
  loaded = sparse.load(str(tmp_path / "m.safetensors"))
  np.testing.assert_array_equal(loaded["layer"]["kernel"], kernel)
  np.testing.assert_array_equal(loaded["layer"]["bias"], params["layer"]["bias"])
  assert loaded["layer"]["kernel"].dtype == np.float32
  assert sparse.stored_bytes(params, is_kernel) == 14 + 8  # the bias stays dense


def test_misfits_fail_before_training(finetune_config, tmp_path):
  for overrides, message in (
      ({"strategy.sparsity": 1.0}, r"sparsity=1.0 must be in \(0, 1\)"),
      ({"strategy.sparsity": 0.0}, r"sparsity=0.0 must be in \(0, 1\)"),
      ({"strategy.granularity": "n_m", "strategy.sparsity": 0.3}, r"must be 1 - n/m = 0.5"),
      ({"strategy.granularity": "blocks"}, "granularity='blocks' is not one of"),
      (
          {
              "strategy.granularity": "n_m",
              "strategy.n": 1,
              "strategy.m": 3,
              "strategy.sparsity": 2 / 3,
          },
          r"has 64 inputs, not a multiple of config.strategy.m=3",
      ),
      ({"strategy.name": "prune,frozen"}, "'prune' changes backbone/.* but 'prune,frozen' freezes"),
  ):
    with pytest.raises(ValueError, match=message):
      finetune.build(
          finetune_config("bert", **{"strategy.name": "prune", **overrides}), str(tmp_path)
      )
  assert not os.listdir(tmp_path)
