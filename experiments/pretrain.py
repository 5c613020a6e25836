"""Pretraining: tokenizer → corpus pipeline → sharded model → trainer loop → results.json."""

from __future__ import annotations

import itertools
import os
import time

import ml_collections
from absl import logging

from lmreuse import objectives, workdir as workdir_lib
from lmreuse.data import pipeline, tokenizer as tokenizer_lib
from lmreuse.data.corpus import wordnet
from lmreuse.models.config import TransformerConfig
from lmreuse.parallel import mesh as mesh_lib, sharding as sharding_lib
from lmreuse.train import compute as compute_lib, optim
from lmreuse.train.checkpoint import Checkpointer, abstract_like
from lmreuse.train.trainer import (
    LoopConfig,
    Trainer,
    check_batch,
    prng_impl,
    run_loop,
    validate_loop,
)
from lmreuse.train.writers import MetricWriter


def validate(config: ml_collections.ConfigDict) -> None:
  """Every check that needs no compilation, so bad configs fail in seconds."""
  validate_loop(
      config,
      (
          "total_steps",
          "batch_size",
          "grad_accum_steps",
          "log_every",
          "eval_steps",
          "checkpoint_every",
          "keep_checkpoints",
      ),
  )
  if config.data.corpus != "wordnet":
    raise ValueError(f"config.data.corpus={config.data.corpus!r}: only 'wordnet' is bundled")
  objective = objectives.get(config.objective.name)
  if config.model.architecture != objective.architecture:
    raise ValueError(
        f"config.objective.name={config.objective.name!r} trains a {objective.architecture}, "
        f"but config.model.architecture={config.model.architecture!r}"
    )
  objectives.check_flags(config.objective)
  if config.data.seq_len > config.model.max_len:
    raise ValueError(
        f"config.data.seq_len={config.data.seq_len} exceeds "
        f"config.model.max_len={config.model.max_len}"
    )
  TransformerConfig.from_config(config.model, config.tokenizer.vocab_size).validate()
  optim.validate(config.optimizer)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  with prng_impl(config):
    return _pretrain(config, workdir)


def _pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
  start_time = time.time()
  validate(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  check_batch(config, mesh, rules)
  workdir_lib.prepare(workdir, config)

  tokenizer = tokenizer_lib.from_config(config.tokenizer, workdir)
  tokenizer_lib.save_trained(tokenizer, config.tokenizer, workdir)
  model_cfg = TransformerConfig.from_config(config.model, tokenizer.vocab_size)
  objective = objectives.get(config.objective.name)
  program = objective.program(model_cfg, config.objective, config.data)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  trainer = Trainer(program, tx, schedule, mesh, rules, skip_nonfinite=config.nonfinite == "skip")
  logging.info("model: %s, %s parameters", model_cfg, f"{trainer.param_count():,}")

  def dataset(split: str, train: bool):
    source = wordnet.data_source("documents", split, config.data.tfds_dir or None)
    return pipeline.make_pretrain_dataset(
        config.objective,
        config.data,
        source,
        tokenizer,
        batch_size=config.batch_size,
        seed=config.seed,
        train=train,  # this process's rows of each global batch:
        rows=trainer.host_rows(config.batch_size, config.grad_accum_steps if train else 1),
    )

  train_iter = iter(dataset("train", train=True))
  eval_ds = dataset("validation", train=False)
  eval_batches = lambda: itertools.islice(iter(eval_ds), config.eval_steps)

  checkpointer = Checkpointer(
      os.path.join(workdir, workdir_lib.CHECKPOINTS), max_to_keep=config.keep_checkpoints
  )
  state = trainer.init_state(config.seed)
  latest, restored = checkpointer.restore_latest(abstract_like(state), train_iter)
  if latest is not None:
    state = restored
  writer = MetricWriter(workdir, resume_step=latest or 0)
  loop = LoopConfig.from_config(config)
  try:
    evaluate = lambda params: trainer.evaluate(params, eval_batches())
    state, eval_metrics = run_loop(trainer, state, train_iter, evaluate, loop, checkpointer, writer)
  finally:
    checkpointer.close()
    writer.close()
  compute = compute_lib.summary(trainer, state, lambda: next(train_iter), config.grad_accum_steps)
  return workdir_lib.write_results(
      workdir,
      config,
      eval_metrics,
      start_time=start_time,
      steps=int(state.step),
      parameters=trainer.param_count(),
      tokenizer=tokenizer.model_path,
      compute=compute,
  )
