"""Checkpoint safety: a step that does not restore is skipped (with one warning, no traceback
flood), a kill -9 during an async save leaves the previous step, and a failed restore leaves
the data iterator where it was."""

import glob
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import pretrain
from lmreuse.train.checkpoint import UNRESTORABLE, Checkpointer, abstract_like
from lmreuse.train.writers import read_metrics
from tests.train import async_save_target

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def truncate_arrays(step_dir: str) -> None:
  """Cuts every OCDBT data file of a step to 10 bytes, as a full disk or a bad copy would."""
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  assert files
  for path in files:
    os.truncate(path, 10)


def test_kill_9_during_an_async_save_leaves_the_previous_step(tmp_path):
  directory = str(tmp_path / "checkpoints")
  proc = subprocess.Popen(
      [sys.executable, "-m", "tests.train.async_save_target", directory],
      cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert proc.stdout.readline().strip() == "SAVING"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
  finally:
    proc.kill()
    proc.stdout.close()
  # What orbax leaves: step 1, and step 2 half-written under its temporary name.
  left = sorted(os.listdir(directory))
  assert left[0] == "1" and len(left) == 2 and left[1].startswith("2.orbax-checkpoint-tmp"), left

  checkpointer = Checkpointer(directory, max_to_keep=5)
  try:
    assert checkpointer.latest_step() == 1
    iterator = async_save_target.data_iterator()
    step, state = checkpointer.restore_latest(
        abstract_like(async_save_target.small_state()), iterator
    )
    assert step == 1
    jax.tree.map(np.testing.assert_array_equal, state, async_save_target.small_state())
    assert next(iterator) == 3  # the iterator is where step 1 left it

    # The run goes on: it saves step 2 again, over orbax's leftover.
    checkpointer.save(2, state, iterator)
    checkpointer.wait()
    assert sorted(os.listdir(directory)) == ["1", "2"]
    assert checkpointer.restore_latest(abstract_like(state), iterator)[0] == 2
  finally:
    checkpointer.close()


def test_a_failed_restore_leaves_the_data_iterator_where_it_was(tmp_path):
  checkpointer = Checkpointer(str(tmp_path), max_to_keep=5)
  state = {"w": jax.random.normal(jax.random.key(0), (128, 128))}
  saved = async_save_target.data_iterator()
  for _ in range(9):
    next(saved)
  checkpointer.save(1, state, saved)
  checkpointer.wait()
  truncate_arrays(str(tmp_path / "1"))
  iterator = async_save_target.data_iterator()
  next(iterator)
  # orbax restores the (intact) data item even though the state fails.
  with pytest.raises(Exception, match="OUT_OF_RANGE"):
    checkpointer.restore(1, abstract_like(state), iterator)
  assert next(iterator) == 1
  with pytest.raises(
      RuntimeError,
      match=r"no checkpoint in .* restores \(.*\); tried step 1: " r"ValueError: OUT_OF_RANGE",
  ):
    checkpointer.restore_latest(abstract_like(state), iterator)
  assert os.listdir(tmp_path) == ["1"]  # nothing moved or deleted when nothing restores
  checkpointer.close()


@pytest.mark.slow
def test_a_truncated_latest_checkpoint_is_skipped_quietly(tiny_config, tmp_path):
  """The issue's case: the resume crashed with OUT_OF_RANGE and ~200 'Event loop is closed'
  tracebacks, and never tried the complete checkpoint before it. The resume runs in a process
  of its own: part of the flood came from TensorStore's threads, part at interpreter exit."""
  config = tiny_config("bert", total_steps=4, checkpoint_every=2, eval_steps=1)
  workdir = str(tmp_path)
  pretrain.run(config, workdir)
  straight = read_metrics(workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  truncate_arrays(os.path.join(checkpoints, "4"))

  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
  )
  proc = subprocess.run(
      [sys.executable, "-m", "tests.train.resume_target", workdir],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr[
      -4000:
  ]
  bad, aside = os.path.join(checkpoints, "4"), os.path.join(checkpoints, UNRESTORABLE, "4")
  warnings = re.findall(r"^WARNING:absl:(.*checkpoint.*)$", proc.stderr, re.MULTILINE)
  assert len(warnings) == 2, warnings
  assert warnings[0].startswith(
      f"checkpoint step 4 in {bad} does not restore (ValueError: " "OUT_OF_RANGE"
  ) and warnings[0].endswith("trying the previous one")
  assert warnings[1] == f"moved unrestorable checkpoint step 4 to {aside}"

  # Resumed from step 2: steps 3-4 again, bitwise as the first time.
  resumed = read_metrics(workdir)
  assert [r["step"] for r in resumed] == [1, 2, 3, 4]
  assert [r["train/loss"] for r in resumed] == [r["train/loss"] for r in straight]
  assert resumed[-1]["eval/loss"] == straight[-1]["eval/loss"]
  # The truncated step is kept for inspection; step 4 was saved anew.
  assert {os.path.getsize(p) for p in glob.glob(f"{aside}/state/**/d/*", recursive=True)} == {10}
  assert sorted(os.listdir(checkpoints)) == ["2", "4", UNRESTORABLE]
