"""The single entrypoint: parse --config/--workdir, then hand over to experiments/<kind>.py.

  python run.py --config=configs/pretrain.py:bert,size=tiny --workdir=/tmp/bert \
      --config.total_steps=200 --config.batch_size=16

Several processes (one per host) run the same command with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I, or with --distributed alone on TPU VMs and under SLURM.
"""

import importlib
import logging as py_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lmreuse import lock
from lmreuse.train import preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Recipe file, optionally with an argument: configs/pretrain.py:gpt,size=mini",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize(), which finds the coordinator and "
    "this process's id itself on TPU VMs and under SLURM; implied by the three flags below.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator (multi-process runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes run together.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0 .. num_processes-1.")
_JAX_CACHE = flags.DEFINE_string(
    "jax_cache_dir",
    None,
    "Persistent XLA compilation cache: a program compiled once is read back by later runs on "
    "this machine. Default: $XDG_CACHE_HOME/lmreuse/jax (~/.cache/lmreuse/jax), and for a study "
    "W/jax_cache, shared by its workers; '' turns it off. JAX_COMPILATION_CACHE_DIR, if set, "
    "wins.",
)
flags.mark_flags_as_required(["config", "workdir"])
# The user-wide cache evicts its least recently used programs beyond this size.
_USER_CACHE_BYTES = 4 << 30


class _QuietLibraries(py_logging.Filter):
  """Keeps orbax's and TFDS's per-save INFO chatter off the console; warnings still pass."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    chatty = any(part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/"))
    return record.levelno >= py_logging.WARNING or not chatty


def _initialize_distributed() -> None:
  """jax.distributed.initialize with the explicit flags, if any; gloo collectives on CPU."""
  explicit = {
      "coordinator_address": _COORDINATOR.value,
      "num_processes": _NUM_PROCESSES.value,
      "process_id": _PROCESS_ID.value,
  }
  given = {k: v for k, v in explicit.items() if v is not None}
  if not given and not _DISTRIBUTED.value:
    return
  if given and len(given) < len(explicit):
    missing = sorted(f"--{k}" for k in explicit if k not in given)
    raise app.UsageError(
        f"{', '.join(f'--{k}' for k in sorted(given))} also needs "
        f"{', '.join(missing)} (or pass --distributed alone where JAX finds "
        "them itself: TPU VMs, SLURM)"
    )
  if given and _NUM_PROCESSES.value < 1:
    raise app.UsageError(f"--num_processes={_NUM_PROCESSES.value} must be >= 1")
  if given and not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
    raise app.UsageError(
        f"--process_id={_PROCESS_ID.value} must be in [0, --num_processes="
        f"{_NUM_PROCESSES.value})"
    )
  # Must be set before the CPU backend starts: without it a computation spanning CPU processes
  # fails. It only concerns the CPU client, so accelerator runs are unaffected.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**given)


def _use_compilation_cache(is_study: bool) -> None:
  """On by default: every run re-compiles the same few programs (train and eval steps), which
  costs seconds to minutes each time on CPU. A study sets its own (experiments/study.py)."""
  if jax.config.jax_compilation_cache_dir is not None:  # JAX_COMPILATION_CACHE_DIR
    return
  if _JAX_CACHE.value == "":
    jax.config.update("jax_enable_compilation_cache", False)
  elif _JAX_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(_JAX_CACHE.value))
  elif not is_study:
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(home, "lmreuse", "jax"))
    jax.config.update("jax_compilation_cache_max_size", _USER_CACHE_BYTES)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _initialize_distributed()
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  logging.info(
      "process %d/%d, %d local / %d global devices (%s)",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
      jax.devices()[0].device_kind,
  )
  experiment = importlib.import_module(f"experiments.{config.experiment}")
  _use_compilation_cache(getattr(experiment, "SHARED_WORKDIR", False))
  if getattr(experiment, "SHARED_WORKDIR", False):  # a study: it locks each cell it runs
    experiment.run(config, _WORKDIR.value)
  else:
    with lock.hold(_WORKDIR.value):  # one writer per workdir
      experiment.run(config, _WORKDIR.value)


if __name__ == "__main__":
  try:
    app.run(main)
  except preemption.Preempted as stopped:  # checkpoint saved: a re-run resumes
    logging.warning("%s (exit status %d)", stopped, preemption.EXIT_STATUS)
    sys.exit(preemption.EXIT_STATUS)
