"""Quantization-aware fine-tuning: the model computes on the quantized grid and differentiates
straight through it, combines with LoRA, reports its stored bytes, and refuses misfits."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from experiments import finetune
from lmreuse.compression import quantize

# The relative gradient error of weight-only QAT against the float model at the grid point.
GRADIENT_BOUND = {"int8": 0.05, "int4": 0.5}


def kernels_quantized(params, weights):
  """`params` with only the projection kernels on the `weights` grid (QAT's view of them: the
  embedding tables are read by a gather, which QAT leaves in float)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  kernels = {p: v for p, v in flat.items() if p.endswith("/kernel")}
  quantized, _ = quantize.quantize_weights(traverse_util.unflatten_dict(kernels, sep="/"), weights)
  flat.update(traverse_util.flatten_dict(quantized, sep="/"))
  return traverse_util.unflatten_dict(flat, sep="/")


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_weight_only_qat_is_the_float_model_on_quantized_kernels_with_straight_through_grads(
    weights, finetune_config, tmp_path
):
  keys = {"strategy.qat_weights": weights, "strategy.qat_activations": ""}
  qat = finetune.build(finetune_config("bert", **{"strategy.name": "qat", **keys}), str(tmp_path))
  dense = finetune.build(finetune_config("bert"), str(tmp_path))
  params = jax.device_get(qat.state.params)
  on_grid = kernels_quantized(params, weights)
  batch = qat.first_train_batch(4)
  rng = jax.random.PRNGKey(0)

  def loss_and_grads(setup, p):
    loss_fn = lambda p: setup.trainer.program.loss_fn(p, batch, rng, False)[0]
    return jax.value_and_grad(loss_fn)(p)

  qat_loss, qat_grads = loss_and_grads(qat, params)
  grid_loss, grid_grads = loss_and_grads(dense, on_grid)
  float_loss, _ = loss_and_grads(dense, params)
  np.testing.assert_allclose(qat_loss, grid_loss, rtol=5e-5)
  assert abs(float(qat_loss) - float(float_loss)) > 1e-6  # quantization is not a no-op
  # Straight through: the gradient of each float weight is the float model's at the grid point.
  # Nearly so for the classifier, whose weight gradient passes through no other matmul (it
  # differs by the forward's own rounding only); below it, qwix propagates input gradients
  # through the float weights (its `use_original_residuals` when only the forward is
  # quantized), which differ from the grid by the rounding, so the bound grows with its step.
  flat_qat = traverse_util.flatten_dict(qat_grads, sep="/")
  flat_grid = traverse_util.flatten_dict(grid_grads, sep="/")
  # A key bias shifts every logit of a query alike, which softmax ignores: its gradient is
  # rounding noise in both, so it is left out.
  errors = {
      p: float(np.linalg.norm(g - flat_grid[p]) / np.linalg.norm(flat_grid[p]))
      for p, g in flat_qat.items()
      if not p.endswith("key/bias")
  }
  top = [p for p in errors if p.startswith("classifier/") and p.endswith("kernel")]
  assert top and max(errors[p] for p in top) < GRADIENT_BOUND[weights] / 10, top
  assert max(errors.values()) < GRADIENT_BOUND[weights], errors


def test_qat_with_lora_trains_the_factors_under_int8_and_reports_its_bytes(
    finetune_config, tmp_path
):
  config = finetune_config(
      "bert", **{"strategy.name": "qat,lora", "strategy.rank": 4, "strategy.targets": "all_linear"}
  )
  results = finetune.run(config, str(tmp_path))
  assert results["strategy"] == "qat,lora"
  assert results["parameters"]["trainable_fraction"] < 0.2
  qat = results["qat"]
  assert (qat["weights"], qat["activations"]) == ("int8", "int8")
  assert qat["model_bytes"] <= 0.3 * qat["float_bytes"]
  assert results["model_bytes"] == qat["model_bytes"]  # what a study's tables show
  assert np.isfinite(results["metrics"]["test/loss"])


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"strategy.qat_weights": "int3"}, r"config.strategy.qat_weights='int3' is not one of"),
        ({"strategy.qat_activations": "int4"}, r"config.strategy.qat_activations='int4' is not"),
    ],
)
def test_qat_misfits_fail_before_training(keys, message, finetune_config, tmp_path):
  config = finetune_config("bert", **{"strategy.name": "qat", **keys})
  with pytest.raises(ValueError, match=message):
    finetune.build(config, str(tmp_path))
  assert not (tmp_path / "config.json").exists()
