"""Trainer pieces: gradient accumulation, optimizer schedule and decay mask, Adafactor."""

import jax
import ml_collections
import numpy as np
import pytest

from configs import common, pretrain
from lmreuse import components, objectives
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.train import optim
from lmreuse.train.trainer import Trainer, split_microbatches
from tests.parallel import synthetic


def make_trainer(preset="gpt", optimizer="adamw", learning_rate=1e-3):
  config = pretrain.get_config(f"{preset},size=tiny")
  config.optimizer.update(dict(warmup_steps=0, schedule="constant", learning_rate=learning_rate))
  config.model.dropout_rate = 0.0
  config.data.seq_len = 16
  config.optimizer.name = optimizer
  model_cfg = components.model_config(config.model, synthetic.VOCAB)
  program = objectives.get(config.objective.name).program(model_cfg, config.objective,
                                                          config.data)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                            jax.devices()[:1])
  return Trainer(program, tx, schedule, mesh, sharding_lib.DEFAULT_RULES), config


def test_gradient_accumulation_equals_the_full_batch_step():
  trainer, config = make_trainer()
  # clm rows with equal token counts: the mean of micro-batch means is the full-batch mean.
  batch = synthetic.batch("clm", batch_size=8, seq_len=config.data.seq_len)
  results = []
  for accum in (1, 4):
    state = trainer.init_state(seed=0)
    state, metrics = trainer.train_step(
        state, trainer.device_batch(split_microbatches(batch, accum), leading_axes=1))
    results.append((float(metrics["train/loss"]), jax.device_get(state.params)))
  (loss1, params1), (loss4, params4) = results
  assert loss1 == pytest.approx(loss4, rel=1e-6)
  # Adam's first update is ~lr·g/(|g|+eps): gradients near eps amplify float noise, so the
  # bound is absolute, 0.5% of the learning rate (1e-3).
  for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params4)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6)


def test_adafactor_trains():
  trainer, config = make_trainer(optimizer="adafactor", learning_rate=1e-2)
  state = trainer.init_state(seed=0)
  batch = trainer.device_batch(split_microbatches(
      synthetic.batch("clm", batch_size=4, seq_len=config.data.seq_len), 1), leading_axes=1)
  losses = []
  for _ in range(30):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["train/loss"]))
  assert losses[-1] < losses[0] - 0.3  # memorising one batch


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedule_warms_up_linearly_then_decays(schedule):
  opt = common.optimizer_config(learning_rate=1e-3, warmup_steps=10)
  opt.schedule = schedule
  opt.end_lr_factor = 0.1
  fn = optim.make_schedule(opt, total_steps=110)
  assert float(fn(0)) == 0.0
  assert float(fn(5)) == pytest.approx(5e-4)
  assert float(fn(10)) == pytest.approx(1e-3)
  expected_end = 1e-3 if schedule == "constant" else 1e-4
  assert float(fn(110)) == pytest.approx(expected_end, rel=1e-5)
  if schedule == "linear":
    assert float(fn(60)) == pytest.approx(5.5e-4)


def test_weight_decay_skips_biases_and_norms():
  params = {"dense": {"kernel": np.ones((3, 3)), "bias": np.ones(3)},
            "norm": {"scale": np.ones(3)}}
  mask = optim.decay_mask(params)
  assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}
  opt = common.optimizer_config(learning_rate=0.0, warmup_steps=0)
  opt.weight_decay, opt.clip_norm, opt.schedule = 0.5, 0.0, "constant"
  opt.learning_rate = 1.0
  tx, _ = optim.make_optimizer(opt, total_steps=1)
  zero_grads = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert np.all(updates["dense"]["kernel"] == -0.5)  # decoupled decay: -lr * wd * param
  assert np.all(updates["dense"]["bias"] == 0) and np.all(updates["norm"]["scale"] == 0)
