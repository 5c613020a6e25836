"""Trainer pieces: gradient accumulation, optimizer schedule and decay mask, Adafactor, and the
compute accounting (FLOPs, phases, timers)."""

import collections
import math

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs import common, pretrain
from lmreuse import objectives
from lmreuse.models.config import TransformerConfig
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.train import compute, optim
from lmreuse.train.trainer import Trainer, split_microbatches
from tests.parallel import synthetic


def make_trainer(preset="gpt", optimizer="adamw", learning_rate=1e-3):
  config = pretrain.get_config(f"{preset},size=tiny")
  config.optimizer.update(dict(warmup_steps=0, schedule="constant", learning_rate=learning_rate))
  config.model.dropout_rate = 0.0
  config.data.seq_len = 16
  config.optimizer.name = optimizer
  model_cfg = TransformerConfig.from_config(config.model, synthetic.VOCAB)
  program = objectives.get(config.objective.name).program(model_cfg, config.objective, config.data)
  mesh = mesh_lib.make_mesh(
      ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1]
  )
  optimizer = optim.make_optimizer(config.optimizer, config.total_steps)
  return Trainer(program, optimizer, mesh, sharding_lib.DEFAULT_RULES), config


def test_gradient_accumulation_equals_the_full_batch_step():
  trainer, config = make_trainer()
  # clm rows with equal token counts: the mean of micro-batch means is the full-batch mean.
  batch = synthetic.batch("clm", batch_size=8, seq_len=config.data.seq_len)
  results = []
  for accum in (1, 4):
    state = trainer.init_state(seed=0)
    state, metrics = trainer.train_step(
        state, trainer.device_batch(split_microbatches(batch, accum), leading_axes=1)
    )
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
  batch = trainer.device_batch(
      split_microbatches(synthetic.batch("clm", batch_size=4, seq_len=config.data.seq_len), 1),
      leading_axes=1,
  )
  losses = []
  for _ in range(30):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["train/loss"]))
  assert losses[-1] < losses[0] - 0.3  # memorising one batch


def test_learning_rates_share_one_compiled_step_and_each_applies():
  """A learning-rate sweep compiles one train step: the peak is the step's argument, not a
  constant inside it, yet each trainer steps at its own rate."""
  batch = synthetic.batch("clm", batch_size=4, seq_len=16)
  lowered, moved = [], []
  for rate in (1e-3, 3e-3):
    trainer, _ = make_trainer(learning_rate=rate)
    state = trainer.init_state(seed=0)
    device_batch = trainer.train_batch(batch, 1)
    lowered.append(trainer.lower_train_step(state, device_batch).as_text())
    before = jax.device_get(state.params)
    state, metrics = trainer.train_step(state, device_batch)
    assert float(metrics["train/learning_rate"]) == pytest.approx(rate)
    after = jax.device_get(state.params)
    moved.append(jax.tree.map(lambda a, b: np.abs(a - b).sum(), after, before))
  assert lowered[0] == lowered[1]
  # Adam's first update is lr · g / (|g| + eps) ≈ lr · sign(g): three times the rate, three
  # times the step (decoupled weight decay scales with the rate too).
  total = [sum(jax.tree.leaves(m)) for m in moved]
  assert total[1] / total[0] == pytest.approx(3.0, rel=1e-3)


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
  # A quarter into the 100 decay steps (step 35), from the peak 1e-3 towards the end 1e-4:
  # linear 1e-3 - 0.25 * 9e-4; cosine 1e-4 + 9e-4 * (1 + cos(pi/4)) / 2; constant stays.
  quarter = {"linear": 7.75e-4, "cosine": 1e-4 + 9e-4 * (1 + math.sqrt(0.5)) / 2, "constant": 1e-3}
  assert float(fn(35)) == pytest.approx(quarter[schedule], rel=1e-5)
  if schedule == "linear":
    assert float(fn(60)) == pytest.approx(5.5e-4)


def test_weight_decay_skips_biases_and_norms():
  params = {"dense": {"kernel": np.ones((3, 3)), "bias": np.ones(3)}, "norm": {"scale": np.ones(3)}}
  mask = optim.decay_mask(params)
  assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}
  opt = common.optimizer_config(learning_rate=0.0, warmup_steps=0)
  opt.weight_decay, opt.clip_norm, opt.schedule = 0.5, 0.0, "constant"
  opt.learning_rate = 1.0
  tx = optim.make_optimizer(opt, total_steps=1).transformation()
  zero_grads = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert np.all(updates["dense"]["kernel"] == -0.5)  # decoupled decay: -lr * wd * param
  assert np.all(updates["dense"]["bias"] == 0) and np.all(updates["norm"]["scale"] == 0)


def test_train_flops_count_every_micro_batch_of_gradient_accumulation():
  trainer, config = make_trainer()
  state = trainer.init_state(seed=0)
  batch = synthetic.batch("clm", batch_size=8, seq_len=config.data.seq_len)
  one, two = (trainer.train_batch(batch, accum) for accum in (1, 2))
  raw_one, raw_two = (compute.flops(trainer.compiled_train_step(state, b)) for b in (one, two))
  if compute.loop_bodies_counted_once("cpu"):  # XLA's CPU analysis, as of jax 0.10
    assert raw_two < 0.75 * raw_one  # the scan's body, half the batch, counted once
  else:
    assert raw_two == pytest.approx(raw_one, rel=0.02)
  # The same global batch is the same work, however it is split.
  assert trainer.train_step_flops(state, two) == pytest.approx(
      trainer.train_step_flops(state, one), rel=0.02
  )
  assert trainer.train_step_flops(state, one) == raw_one  # one device, no loop to correct


@pytest.mark.parametrize("steps", [0, 2, 3, 4, 5, 9])
def test_steps_per_phase_counts_the_updates_each_phase_runs(steps):
  phases = (0, 3, 5)
  expected = collections.Counter(max(p for p in phases if p <= s) for s in range(steps))
  assert compute.steps_per_phase(phases, steps) == {p: expected[p] for p in phases}


def test_six_nd_leaves_out_exactly_the_embedding_tables():
  trainer, _ = make_trainer("bert")
  flat = traverse_util.flatten_dict(trainer.abstract_params, sep="/")
  tables = {p for p in flat if p.endswith("/embedding")}
  assert {p.split("/")[-2] for p in tables} == {"token_embed", "position_embed", "token_type_embed"}
  assert compute.non_embedding_param_count(trainer.abstract_params) == (
      trainer.param_count() - sum(int(np.prod(flat[p].shape)) for p in tables)
  )


def test_timers_charge_nested_time_to_the_inner_part_only():
  now = [0.0]
  timers = compute.Timers(clock=lambda: now[0])

  def wait(seconds):
    now[0] += seconds

  with timers("train"):
    wait(1)
    with timers("compile"):
      wait(10)
    wait(2)
    with timers("eval"):
      wait(3)
      with timers("compile"):
        wait(20)
    wait(4)
  with timers("checkpoint"):
    wait(5)
  assert timers.seconds == {"train": 7, "compile": 30, "eval": 3, "checkpoint": 5}
  with pytest.raises(ValueError, match="'training'"):
    with timers("training"):
      pass
