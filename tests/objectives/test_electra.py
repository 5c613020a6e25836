"""ELECTRA's replaced-token detection: its labels, its loss, its shared embeddings, and what a
fine-tuning run keeps of it."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

from experiments import finetune, pretrain
from lmreuse.interop import hf
from lmreuse.models.config import TransformerConfig
from lmreuse.objectives import electra
from lmreuse.train.writers import read_metrics


def test_labels_mark_exactly_the_positions_whose_token_the_sample_changed():
  tokens = jnp.array([[5, 6, 7, 8, 9, 0]], jnp.int32)
  positions = jnp.array([[1, 3, 4, 0]], jnp.int32)
  weights = jnp.array([[1.0, 1.0, 1.0, 0.0]])  # the last slot is padding: its sample is ignored
  # Position 1 samples its own token back (original); 3 and 4 get new ones.
  sampled = jnp.array([[6, 20, 21, 99]], jnp.int32)
  inputs, replaced = electra.replace_tokens(tokens, positions, weights, sampled)
  np.testing.assert_array_equal(inputs, [[5, 6, 7, 20, 21, 0]])
  np.testing.assert_array_equal(replaced, [[0, 0, 0, 1, 1, 0]])
  assert inputs.dtype == jnp.int32 and replaced.dtype == jnp.float32


def test_loss_is_the_generators_cross_entropy_plus_the_weighted_detection_loss():
  vocab = 16
  targets, weights = jnp.array([[3, 4]]), jnp.array([[1.0, 0.0]])
  replaced, real = jnp.array([[1.0, 0.0, 0.0]]), jnp.array([[1, 1, 0]])
  rtd_logits = jnp.array([[0.0, 0.0, 7.0]])  # the padding's logit does not count
  value, pairs = electra.loss(
      jnp.zeros((1, 2, vocab)), targets, weights, rtd_logits, replaced, real, rtd_weight=50.0
  )
  np.testing.assert_allclose(value, np.log(vocab) + 50 * np.log(2), rtol=1e-6)
  assert set(pairs) == {
      "generator_loss",
      "generator_accuracy",
      "rtd_loss",
      "rtd_accuracy",
      "rtd_replaced",
  }
  np.testing.assert_allclose(pairs["rtd_loss"], (2 * np.log(2), 2.0), rtol=1e-6)
  np.testing.assert_allclose(pairs["rtd_replaced"], (1.0, 2.0))
  confident, _ = electra.loss(
      jnp.zeros((1, 2, vocab)),
      targets,
      weights,
      jnp.array([[30.0, -30.0, 7.0]]),
      replaced,
      real,
      rtd_weight=50.0,
  )
  np.testing.assert_allclose(confident, np.log(vocab), rtol=1e-5)


CFG = TransformerConfig(vocab_size=64, d_model=32, num_heads=4, d_ff=64, max_len=16)
MASK_PROB = 0.25


def _program(rtd_weight=50.0):
  objective = ml_collections.ConfigDict(
      dict(generator_size=0.25, mask_prob=MASK_PROB, rtd_weight=rtd_weight)
  )
  return electra.program(CFG, objective, ml_collections.ConfigDict(dict(seq_len=CFG.max_len)))


def _batch(batch=4, seed=0):
  """Random rows with MASK_PROB of their tokens selected and [MASK]ed (id 3), as mask_tokens
  selects them."""
  rng = np.random.default_rng(seed)
  shape = (batch, CFG.max_len)
  targets = rng.integers(8, CFG.vocab_size, shape).astype(np.int32)
  weights = np.zeros(shape, np.float32)
  for row in weights:
    row[rng.permutation(CFG.max_len)[: int(MASK_PROB * CFG.max_len)]] = 1.0
  return {
      "inputs": np.where(weights > 0, 3, targets).astype(np.int32),
      "mlm_targets": targets,
      "mlm_weights": weights,
      "segment_ids": np.ones(shape, np.int32),
      "positions": np.broadcast_to(np.arange(CFG.max_len, dtype=np.int32), shape),
      "token_types": np.zeros(shape, np.int32),
  }


def test_the_generator_is_smaller_and_reads_the_discriminators_embeddings():
  params = nn.unbox(jax.jit(_program().init_params)(jax.random.PRNGKey(0)))
  shapes = {p: v.shape for p, v in traverse_util.flatten_dict(params, sep="/").items()}
  embeddings = [p for p in shapes if "embed/" in p]
  assert embeddings and all(p.startswith("backbone/") for p in embeddings), embeddings
  assert shapes["generator_project/kernel"] == (32, 8)  # a quarter of the width
  assert shapes["generator/layers_1/mlp/wi/kernel"] == (8, 16)  # and of the FFN, at full depth
  assert shapes["generator_head/transform/kernel"] == (8, 32)  # back to the shared table
  # The generator's loss alone reaches the shared table, and none of the discriminator's layers.
  generator_only = _program(rtd_weight=0.0)
  loss = lambda p: generator_only.loss_fn(p, _batch(), jax.random.PRNGKey(1), True)[0]
  grads = jax.jit(jax.grad(loss))(params)
  flat = traverse_util.flatten_dict(grads, sep="/")
  assert np.abs(flat["backbone/stack/token_embed/embedding"]).sum() > 0
  assert np.abs(flat["generator/layers_0/mlp/wi/kernel"]).sum() > 0
  for path, grad in flat.items():
    if path.startswith(("backbone/stack/layers_", "rtd_head/")):
      assert not np.abs(grad).any(), path


def test_the_discriminator_sees_the_generators_samples_at_the_selected_positions_only():
  model = electra.ElectraPretrainer(
      CFG,
      electra.generator_config(CFG, 0.25),
      num_predictions=electra.mlm.max_predictions(CFG.max_len, MASK_PROB),
  )
  params = nn.unbox(jax.jit(_program().init_params)(jax.random.PRNGKey(0)))
  batch = _batch()
  apply = lambda p, b: model.apply({"params": p}, b, rngs={"sample": jax.random.PRNGKey(3)})
  out = jax.jit(apply)(params, batch)
  replaced = np.asarray(out["replaced"])
  assert not replaced[batch["mlm_weights"] == 0].any()
  # An untrained generator samples nearly uniformly from 64 ids: almost every selection changes.
  assert replaced[batch["mlm_weights"] > 0].mean() > 0.8


@pytest.mark.parametrize(
    "overrides,message",
    [
        # 51 wide with 2 heads; then larger than the discriminator.
        ({"objective.generator_size": 0.8}, r"config\.objective\.generator_size=0\.8 gives"),
        ({"objective.generator_size": 1.5}, r"config\.objective\.generator_size=1\.5 gives"),
        ({"objective.rtd_weight": 0.0}, r"config\.objective\.rtd_weight=0\.0 must be > 0"),
        ({"objective.nsp": True}, r"config\.objective\.nsp=True only applies to"),
    ],
)
def test_bad_electra_configs_fail_before_anything_is_written(
    tiny_config, tmp_path, overrides, message
):
  with pytest.raises(ValueError, match=message):
    pretrain.run(tiny_config("electra", **overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_electra_learns_and_fine_tuning_keeps_the_discriminator_and_drops_the_generator(
    tiny_config, finetune_config, tmp_path
):
  config = tiny_config(
      "electra",
      total_steps=40,
      log_every=5,
      checkpoint_every=40,
      eval_steps=1,
      **{"optimizer.warmup_steps": 5, "optimizer.learning_rate": 3e-3},
  )
  results = pretrain.run(config, str(tmp_path / "electra"))
  assert {"eval/generator_loss", "eval/rtd_loss", "eval/rtd_accuracy"} <= set(results["metrics"])
  records = read_metrics(str(tmp_path / "electra"))
  generator = [r["train/generator_loss"] for r in records if "train/generator_loss" in r]
  detection = [r["train/rtd_loss"] for r in records if "train/rtd_loss" in r]
  assert generator[-1] < generator[0] - 0.3, generator  # ~ln(1024) at the start
  assert detection[-1] < detection[0] - 0.1, detection  # ~ln(2) at the start
  tuned = finetune.run(
      finetune_config(init_from=str(tmp_path / "electra"), total_steps=1, checkpoint_every=1),
      str(tmp_path / "tuned"),
  )
  assert np.isfinite(tuned["metrics"]["test/accuracy"])
  report = json.loads((tmp_path / "tuned" / "init_report.json").read_text())
  assert report["loaded"] and all(p.startswith("backbone/") for p in report["loaded"])
  dropped = {p.split("/")[0] for p in report["dropped"]}
  assert dropped == {"generator", "generator_project", "generator_head", "rtd_head"}, dropped
  assert not any(p.startswith("backbone/") for p in report["new"])
  # Exported to Hugging Face, the discriminator is a BertModel: encoder weights, no MLM head.
  hf.export_workdir(str(tmp_path / "electra"), str(tmp_path / "hf"))
  tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
  saved = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert saved["architectures"] == ["BertModel"]
  assert "encoder.layer.0.attention.self.query.weight" in tensors
  assert not any(name.startswith("cls.") for name in tensors)
