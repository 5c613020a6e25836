"""One process of a run launched by test_multiprocess.py: the jobs of a JSON plan, in order.

  python -m tests.parallel.multiprocess_check PLAN OUT [run.py's distributed flags]

Started as 2 processes × 2 fake CPU devices and as 1 process × 4, on the same global mesh. It
initialises JAX through run.py's own flags, runs each job (an experiment on a workdir, after
copying another workdir there when asked: a checkpoint restored under another process count;
then truncating the files of one of its checkpoints when asked: the fallback to the step
before, taken alike by every process),
and writes OUT/process_<i>.json: each job's results and every file this process opened for
writing outside the collectively written checkpoint directories.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import json
import os
import shutil
import signal
import sys

import jax
import ml_collections
from absl import flags
from jax.experimental import multihost_utils

import run
from lmreuse.train import preemption, trainer as trainer_lib
from tests.train.test_checkpoint import truncate_arrays

COLLECTIVE_DIRS = ("checkpoints", "best", "trainable")  # orbax: every process writes its part


def record_writes(root: str) -> list[str]:
  """Paths under `root` that this process opens for writing from Python (orbax's TensorStore
  writes are C++ and land in COLLECTIVE_DIRS only)."""
  writes: list[str] = []
  root = os.path.realpath(root)

  def note(path, writing: bool) -> None:
    if not writing or not isinstance(path, (str, os.PathLike)):
      return
    path = os.path.realpath(os.fspath(path))
    if path.startswith(root + os.sep):
      relative = os.path.relpath(path, root)
      directory, name = os.path.split(relative)
      if name.startswith(".tmp-"):  # workdir.write_atomically's temporary file for `name`
        relative = os.path.join(directory, name[len(".tmp-") :].rsplit("-", 1)[0])
      if not set(relative.split(os.sep)[1:-1]) & set(COLLECTIVE_DIRS):  # study cells nest
        writes.append(relative)

  original_open, original_os_open = builtins.open, os.open

  def audited_open(file, mode="r", *args, **kwargs):
    note(file, any(c in mode for c in "wax+"))
    return original_open(file, mode, *args, **kwargs)

  def audited_os_open(path, flags_, *args, **kwargs):
    note(path, bool(flags_ & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
    return original_os_open(path, flags_, *args, **kwargs)

  builtins.open = io.open = audited_open
  os.open = audited_os_open
  return writes


@contextlib.contextmanager
def sigterm_after(step: int, process: int):
  """Process `process` sends itself a real SIGTERM right after the update of (1-based) `step`:
  JAX's preemption service must then stop every process at one common step."""
  original = trainer_lib.Trainer.train_step

  def train_step(self, state, batch, index=None):
    out = original(self, state, batch, index)
    if jax.process_index() == process and index == step - 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  trainer_lib.Trainer.train_step = train_step
  try:
    yield
  finally:
    trainer_lib.Trainer.train_step = original


def main(argv: list[str]) -> None:
  plan_path, out_dir, distributed_flags = argv[1], argv[2], argv[3:]
  flags.FLAGS([argv[0], "--config=configs/pretrain.py", "--workdir=unused", *distributed_flags])
  run._initialize_distributed()  # pylint: disable=protected-access
  with open(plan_path) as f:
    plan = json.load(f)
  writes = record_writes(plan["root"])
  results = {}
  for job in plan["jobs"]:
    if job.get("copy_from"):
      if jax.process_index() == 0:
        shutil.copytree(job["copy_from"], job["workdir"])
        if job.get("truncate"):
          step_dir = os.path.join(job["workdir"], "checkpoints", str(job["truncate"]["step"]))
          truncate_arrays(step_dir)
        if job.get("corrupt_data"):  # one process's data position: only that process fails
          corrupt = job["corrupt_data"]
          name = f"process_{corrupt['process']}-of-{jax.process_count()}.json"
          path = os.path.join(job["workdir"], "checkpoints", str(corrupt["step"]), "data", name)
          with open(path, "w") as f:
            f.write("{not json")
      multihost_utils.sync_global_devices(f"copied {job['workdir']}")
    config = ml_collections.ConfigDict(job["config"])
    experiment = importlib.import_module(f"experiments.{config.experiment}")
    preempted = None
    if job.get("sigterm"):  # a preemption notice to one process, then the same run again
      try:
        with sigterm_after(**job["sigterm"]):
          experiment.run(config, job["workdir"])
      except preemption.Preempted as stopped:
        preempted = {
            "step": stopped.step,
            "checkpoints": sorted(os.listdir(os.path.join(job["workdir"], "checkpoints"))),
        }
    out = experiment.run(config, job["workdir"])
    results[job["name"]] = {
        k: out.get(k) for k in ("metrics", "steps", "best_step", "stopped_early")
    }
    results[job["name"]]["preempted"] = preempted
    checkpoints = os.path.join(job["workdir"], "checkpoints")
    if os.path.isdir(checkpoints):
      results[job["name"]]["checkpoints"] = sorted(os.listdir(checkpoints))
  report = {
      "results": results,
      "writes": sorted(set(writes)),
      "processes": jax.process_count(),
      "devices": jax.device_count(),
  }
  with open(os.path.join(out_dir, f"process_{jax.process_index()}.json"), "w") as f:
    json.dump(report, f)


if __name__ == "__main__":
  main(sys.argv)
