"""The single entrypoint: parse --config/--workdir, then hand over to experiments/<kind>.py.

  python run.py --config=configs/pretrain.py:bert,size=tiny --workdir=/tmp/bert \
      --config.total_steps=200 --config.batch_size=16
"""

import importlib
import logging as py_logging

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file, optionally with an argument: configs/pretrain.py:gpt,size=mini",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host TPU pods / GPU clusters).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Keeps orbax's and TFDS's per-save INFO chatter off the console; warnings still pass."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    chatty = any(part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/"))
    return record.levelno >= py_logging.WARNING or not chatty


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  experiment = importlib.import_module(f"experiments.{config.experiment}")
  experiment.run(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
