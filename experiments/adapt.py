"""Continued pretraining before fine-tuning (config.adapt): "Don't Stop Pretraining"
(Gururangan et al. 2020) as a phase of a fine-tuning run.

init_from's own objective goes on for config.adapt.steps, on the task's training inputs
(corpus='task': task-adaptive) or on a text file (domain-adaptive), in W/adapt: an ordinary
pretraining workdir, so it resumes as any pretraining does and a finished one is reused as it
is. Fine-tuning then loads its weights in place of init_from's. The phase's config is derived
from the one init_from was pretrained with: its objective, model, tokenizer and data layout;
the fine-tuning run's seed, mesh, batch size and loop settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils

from experiments import pretrain
from lmreuse import pretrained as pretrained_lib, workdir as workdir_lib
from lmreuse.data.corpus import text_file
from lmreuse.data.sources import TaskData
from lmreuse.tasks import types as task_types

TASK_CORPUS = "task"


def steps(config: ml_collections.ConfigDict) -> int:
  """config.adapt.steps; 0 also for configs saved before adaptation existed."""
  return (config.get("adapt") or {}).get("steps", 0)


def validate(config: ml_collections.ConfigDict) -> None:
  """Every check of config.adapt and of the pretraining it derives, reading only config.json
  files: a bad adaptation fails before the workdir is touched."""
  adapt = config.get("adapt")
  if adapt is None:
    return
  for key in ("steps", "learning_rate", "batch_size"):
    if adapt[key] < 0:
      raise ValueError(f"config.adapt.{key}={adapt[key]} must be >= 0")
  if not adapt.steps:
    return
  if not config.init_from or config.from_scratch:
    raise ValueError(
        f"config.adapt.steps={adapt.steps} continues the pretraining of config.init_from, so it "
        "needs init_from set and from_scratch=False"
    )
  if adapt.corpus != TASK_CORPUS:
    text_file.check_path(adapt.corpus, "config.adapt.corpus")
  pretrain.validate(pretrain.continued(pretrain_config(config, corpus="wordnet")))


def pretrain_config(config: ml_collections.ConfigDict, corpus: str) -> ml_collections.ConfigDict:
  """The continued pretraining's config: init_from's own, continued from its weights on
  `corpus` for config.adapt.steps, with this run's seed, mesh and loop settings."""
  if config.init_from.startswith(pretrained_lib.HF_PREFIX):
    raise ValueError(
        f"config.adapt.steps needs config.init_from={config.init_from!r} to be an lmreuse "
        "pretraining workdir, whose config.json names the objective to continue; pretrain "
        "from the import with configs/pretrain.py first"
    )
  saved = ml_collections.ConfigDict(pretrained_lib.saved_config(config.init_from)[1])
  if saved.get("experiment") != "pretrain":
    raise ValueError(
        f"config.adapt.steps: config.init_from={config.init_from!r} is a "
        f"{saved.get('experiment')!r} run; adaptation continues a pretraining run's objective"
    )
  adapt, total = config.adapt, config.adapt.steps
  saved.init_from = config.init_from
  saved.overwrite = False  # a fine-tuning overwrite has removed W/adapt already
  saved.data.corpus = corpus
  for key in ("seed", "prng_impl", "log_every", "nonfinite", "max_nonfinite_skips", "mesh"):
    saved[key] = config[key]
  saved.total_steps = total
  saved.batch_size = adapt.batch_size or config.batch_size
  saved.grad_accum_steps = 1 if adapt.batch_size else config.grad_accum_steps
  saved.eval_every = 0  # evaluated before the first step and after the last
  saved.checkpoint_every = min(config.checkpoint_every, total)
  saved.keep_checkpoints = 1
  if adapt.learning_rate:
    saved.optimizer.learning_rate = adapt.learning_rate
  # A short continuation warms up over a tenth of its steps at most, not the pretraining's own.
  saved.optimizer.warmup_steps = min(saved.optimizer.warmup_steps, total // 10)
  return saved


def run(
    config: ml_collections.ConfigDict, workdir: str, task_data: Sequence[TaskData]
) -> dict | None:
  """Runs (or resumes, or reuses) the adaptation of a fine-tuning run in `workdir` on the
  training inputs of its task (of each task, in a multi-task run); returns its record for
  results.json (where its weights are, its corpus, its validation loss before and after), or
  None when config.adapt.steps is 0."""
  if not steps(config):
    return None
  corpus = config.adapt.corpus
  if corpus == TASK_CORPUS:
    corpus = os.path.join(workdir, workdir_lib.ADAPT_CORPUS)
    # Written once (atomically): a rerun's config equals the first run's, so its task too.
    if jax.process_index() == 0 and not os.path.exists(corpus):
      text_file.write_documents(
          corpus,
          (
              task_types.TASK_TYPES[data.task_type].input_text(e)
              for data in task_data
              for e in data.splits["train"]
          ),
      )
    if jax.process_count() > 1:  # the others read the file process 0 wrote
      multihost_utils.sync_global_devices("lmreuse adapt corpus")
  adapt_dir = os.path.join(workdir, workdir_lib.ADAPT)
  phase = pretrain.continued(pretrain_config(config, corpus))
  results = workdir_lib.finished_results(adapt_dir, phase) or pretrain.run(phase, adapt_dir)
  return {
      "init_from": adapt_dir,
      "steps": results["steps"],
      "corpus": config.adapt.corpus,
      "documents": {s: len(text_file.data_source(corpus, s)) for s in text_file.SPLITS},
      "loss_before": results["metrics_before"]["eval/loss"],
      "loss_after": results["metrics"]["eval/loss"],
      "validation_before": results["metrics_before"],
      "validation_after": results["metrics"],
  }
