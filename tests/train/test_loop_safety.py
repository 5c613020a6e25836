"""The loop's safety nets on a tiny linear model: NaN/Inf policy (abort names the step and the
last good checkpoint; skip drops the update and aborts after too many in a row) and the
SIGTERM/SIGINT watcher."""

import os
import signal

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.train import optim, preemption
from lmreuse.train.checkpoint import Checkpointer
from lmreuse.train.trainer import LoopConfig, Program, Trainer, run_loop
from lmreuse.train.writers import MetricWriter, read_metrics


def linear_trainer(skip_nonfinite: bool) -> Trainer:
  """Least squares on 4 features; a batch with poison=1 has a NaN loss (and gradient)."""

  def loss_fn(params, batch, rng, train):
    error = batch["x"] @ params["w"] - batch["y"]
    loss = jnp.mean(error**2) * jnp.where(jnp.any(batch["poison"] > 0), jnp.nan, 1.0)
    return loss, {}

  program = Program(
      init_params=lambda rng: {"w": jax.random.normal(rng, (4,))},
      loss_fn=loss_fn,
      tokens_per_example=1,
  )
  mesh = mesh_lib.make_mesh(
      ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1]
  )
  optimizer = optim.Optimizer(optax.adam, optax.constant_schedule, learning_rate=0.1)
  return Trainer(
      program,
      optimizer,
      mesh,
      sharding_lib.DEFAULT_RULES,
      skip_nonfinite=skip_nonfinite,
  )


def batches(count: int, poisoned: set[int]):
  """A checkpointable grain iterator of `count` batches; step s (1-based) gets batch s - 1."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(count, 4, 4)).astype(np.float32)
  data = [
      dict(
          x=x[i],
          y=x[i] @ np.arange(4, dtype=np.float32),
          poison=np.full((4,), float(i + 1 in poisoned), np.float32),
      )
      for i in range(count)
  ]
  return iter(grain.MapDataset.source(data).to_iter_dataset())


def train(
    tmp_path, *, nonfinite: str, poisoned: set[int], total_steps: int = 6, max_skips: int = 3
):
  trainer = linear_trainer(nonfinite == "skip")
  loop = LoopConfig(
      total_steps=total_steps,
      log_every=4,
      eval_every=0,
      checkpoint_every=2,
      grad_accum_steps=1,
      nonfinite=nonfinite,
      max_nonfinite_skips=max_skips,
  )
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=5)
  writer = MetricWriter(str(tmp_path))
  evaluate = lambda params: {"eval/w0": float(params["w"][0])}
  try:
    state, _ = run_loop(
        trainer,
        trainer.init_state(0),
        batches(total_steps, poisoned),
        evaluate,
        loop,
        checkpointer,
        writer,
    )
  finally:
    checkpointer.close()
    writer.close()
  return state, checkpointer


def test_abort_names_the_step_and_the_last_good_checkpoint(tmp_path):
  with pytest.raises(FloatingPointError, match=r"at step 3 .*last good checkpoint is step 2"):
    train(tmp_path, nonfinite="abort", poisoned={3})
  # The step-4 log row and the step-4 checkpoint never happened: nothing non-finite is kept.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  assert not (tmp_path / "metrics.jsonl").exists() or not read_metrics(str(tmp_path))


def test_skip_drops_the_update_and_counts_it(tmp_path):
  trainer = linear_trainer(skip_nonfinite=True)
  state = trainer.init_state(0)
  good, bad = (trainer.train_batch(b, 1) for b in list(batches(2, poisoned={2})))
  state, _ = trainer.train_step(state, good)
  before = jax.device_get(state)
  after, metrics = trainer.train_step(state, bad)
  assert int(metrics["train/nonfinite"]) == 1
  np.testing.assert_array_equal(jax.device_get(after.params["w"]), before.params["w"])
  for a, b in zip(
      jax.tree.leaves(jax.device_get(after.opt_state)), jax.tree.leaves(before.opt_state)
  ):
    np.testing.assert_array_equal(a, b)

  state, _ = train(tmp_path, nonfinite="skip", poisoned={3})
  assert np.all(np.isfinite(jax.device_get(state.params["w"])))
  rows = read_metrics(str(tmp_path))
  assert [(r["step"], r["train/skipped_updates"]) for r in rows] == [(4, 1.0), (6, 0.0)]
  assert np.isfinite(rows[0]["train/loss"])  # the mean of the three finite steps


def test_skip_aborts_after_too_many_in_a_row(tmp_path):
  with pytest.raises(FloatingPointError, match=r"3 updates in a row up to step 4"):
    train(tmp_path, nonfinite="skip", poisoned={2, 3, 4}, max_skips=3)


def test_a_signal_asks_to_stop_and_a_second_sigint_interrupts():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.Watcher() as watcher:
    assert not watcher.requested(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.requested(2) and "SIGTERM" in watcher.reason
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored on exit
